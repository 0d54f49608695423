"""Run Predict and GetModelMetadata requests against one loaded servable, as TF Serving does.

Status codes follow TF Serving 2.x: INVALID_ARGUMENT for inputs that do not match the
signature (names, dtype, shape) or an unknown output alias, FAILED_PRECONDITION for an unknown
signature name, INVALID_ARGUMENT for a metadata field other than ``signature_def``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from serving.rpc_status import RpcStatusError, status_code_from_number
from serving.signature_contract import SIGNATURE_DEF_FIELD

if TYPE_CHECKING:
    # Only for annotations: the servable manager imports this module to replay warmup records.
    from serving.servable_manager import Servable

#: Signature used when a request leaves model_spec.signature_name empty.
DEFAULT_SIGNATURE_NAME = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Run ``request`` through the servable's signature and return every requested output."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE_NAME
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise RpcStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'Serving signature key "{signature_name}" not found.',
        )
    inputs = _convert_inputs(signature, request)
    output_aliases = _select_outputs(signature, request)

    function = servable.saved_model.signatures[signature_name]
    try:
        outputs = function(**{alias: tf.constant(value) for alias, value in inputs.items()})
    except tf.errors.OpError as error:
        raise RpcStatusError(status_code_from_number(error.error_code), error.message) from error
    except (TypeError, ValueError) as error:
        # The concrete function rejects arguments that do not match its input signature.
        raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error

    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for alias in output_aliases:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
    return response


def get_model_metadata(
    servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """Return the servable's SignatureDefMap packed in Any under the key ``signature_def``."""
    if not request.metadata_field:
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for metadata_field in request.metadata_field:
        if metadata_field != SIGNATURE_DEF_FIELD:
            raise RpcStatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Metadata field {metadata_field} is not supported",
            )

    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.signature_defs.items():
        signature_def_map.signature_def[name].CopyFrom(signature)

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map)
    return response


def _convert_inputs(
    signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest
) -> dict[str, np.ndarray]:
    expected = set(signature.inputs)
    sent = set(request.inputs)
    if sent != expected:
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)}. "
            f"Sent extra: {sorted(sent - expected)}. Missing but required: "
            f"{sorted(expected - sent)}.",
        )

    arrays = {}
    for alias, tensor in request.inputs.items():
        info = signature.inputs[alias]
        _check_dtype(alias, info, tensor)
        try:
            array = tf.make_ndarray(tensor)
        except (TypeError, ValueError) as error:
            raise RpcStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {alias!r} is not a valid tensor: {error}"
            ) from error
        _check_shape(alias, info, array.shape)
        arrays[alias] = array
    return arrays


def _check_dtype(
    alias: str, info: meta_graph_pb2.TensorInfo, tensor: tensor_pb2.TensorProto
) -> None:
    if tensor.dtype != info.dtype:
        expected = tf.dtypes.as_dtype(info.dtype).name
        sent = tf.dtypes.as_dtype(tensor.dtype).name if tensor.dtype else "DT_INVALID"
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expects input {alias!r} to be {expected} but {sent} is provided",
        )


def _check_shape(alias: str, info: meta_graph_pb2.TensorInfo, shape: tuple[int, ...]) -> None:
    if info.tensor_shape.unknown_rank:
        return
    expected = [dim.size for dim in info.tensor_shape.dim]
    compatible = len(expected) == len(shape) and all(
        size == -1 or size == actual for size, actual in zip(expected, shape)
    )
    if not compatible:
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {alias!r} has shape {list(shape)}, which does not match the signature "
            f"shape {expected} (-1 is any size)",
        )


def _select_outputs(
    signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest
) -> list[str]:
    if not request.output_filter:
        return list(signature.outputs)

    aliases: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise RpcStatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {sorted(signature.outputs)}.",
            )
        if alias in aliases:
            raise RpcStatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        aliases.append(alias)
    return aliases
