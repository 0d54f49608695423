"""gRPC status errors raised by the local model server's request handlers."""

from __future__ import annotations

import grpc

_STATUS_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class RpcStatusError(Exception):
    """Failure of a request, with the gRPC status code the servicer aborts the call with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_code_from_number(number: int) -> grpc.StatusCode:
    """Return the gRPC status code with canonical number ``number`` (UNKNOWN if none).

    TensorFlow's error codes (``tf.errors.OpError.error_code``) use the same numbers.
    """
    return _STATUS_CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
