"""Local TF-Serving-compatible gRPC model server for laptops, tests and the demo.

It implements the parts of TF Serving's gRPC API that the serving client uses:
PredictionService ``Predict`` and ``GetModelMetadata``, and ModelService ``GetModelStatus``.
The other methods (Classify, Regress, MultiInference, HandleReloadConfigRequest) return
UNIMPLEMENTED. It serves the models that the model config file lists, from the same model
repository, and picks up new version folders every ``serving_poll_seconds``.

Run it with `serve_forever` (the CLI's ``mammo serve-models``), or in tests with
``LocalModelServer(settings, port=0).start()``.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import Callable, TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mammo.errors import ConfigurationError
from mammo.settings import Settings
from serving.model_config import load_model_sources
from serving.prediction import get_model_metadata, predict
from serving.rpc_status import RpcStatusError
from serving.servable_manager import ServableManager

logger = logging.getLogger(__name__)

#: Maximum number of requests the server handles concurrently.
DEFAULT_MAX_WORKERS = 8

#: Seconds that `serve_forever` lets running requests finish after SIGTERM or SIGINT.
DEFAULT_GRACE_SECONDS = 5.0

Response = TypeVar("Response")


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[ipv6]:port``) into host and port."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ConfigurationError(
            f"serving address {address!r} is invalid, expected host:port such as 127.0.0.1:8500"
        )
    return host, int(port)


def _handle(context: grpc.ServicerContext, method: str, run: Callable[[], Response]) -> Response:
    """Run one request handler and turn its errors into gRPC status codes."""
    try:
        return run()
    except RpcStatusError as error:
        logger.warning("%s failed with %s: %s", method, error.code.name, error.message)
        context.abort(error.code, error.message)
    except Exception as error:
        logger.exception("%s failed with an internal error", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {error}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService methods Predict and GetModelMetadata over the manager's servables."""

    def __init__(self, manager: ServableManager) -> None:
        self._manager = manager

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        return _handle(
            context, "Predict", lambda: predict(self._manager.resolve(request.model_spec), request)
        )

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ):
        def run() -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.HasField("model_spec"):
                raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            return get_model_metadata(self._manager.resolve(request.model_spec), request)

        return _handle(context, "GetModelMetadata", run)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService method GetModelStatus over the manager's version states."""

    def __init__(self, manager: ServableManager) -> None:
        self._manager = manager

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ):
        def run() -> get_model_status_pb2.GetModelStatusResponse:
            if not request.HasField("model_spec"):
                raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in self._manager.version_statuses(spec.name, version):
                entry = response.model_version_status.add()
                entry.version = status.version
                entry.state = status.state
                entry.status.error_code = status.error_code
                entry.status.error_message = status.error_message
            return response

        return _handle(context, "GetModelStatus", run)


class LocalModelServer:
    """gRPC server for the models listed in ``settings.model_config_file``.

    Args:
        settings: reads model_config_file, serving_base_path_prefix, model_repository,
            serving_address (the host to bind, and the port when ``port`` is None),
            serving_max_message_bytes, serving_poll_seconds and serving_load_retries.
        port: port to bind; None takes it from serving_address, 0 picks a free port.
        max_workers: requests handled at once (default `DEFAULT_MAX_WORKERS`).
        server_credentials: TLS credentials from `grpc.ssl_server_credentials`; None
            (the default) serves plaintext.
    """

    def __init__(
        self,
        settings: Settings,
        port: int | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._settings = settings
        self._host, configured_port = split_host_port(settings.serving_address)
        self._port = configured_port if port is None else port
        self._max_workers = max_workers
        self._server_credentials = server_credentials
        self._server: grpc.Server | None = None
        self._manager: ServableManager | None = None
        self.bound_port: int | None = None

    def start(self) -> int:
        """Load the served versions, start handling requests and return the bound port.

        Every version the policies select is loaded before the port opens, so a client that
        connects after `start` returns finds the models AVAILABLE, unless a load failed.
        """
        sources = load_model_sources(
            self._settings.model_config_file,
            self._settings.serving_base_path_prefix,
            self._settings.model_repository,
        )
        self._manager = ServableManager(sources, self._settings.serving_load_retries)
        self._manager.poll()

        limit = self._settings.serving_max_message_bytes
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="serving"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self._manager), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self._manager), server
        )

        address = f"{self._host}:{self._port}"
        try:
            if self._server_credentials is None:
                bound_port = server.add_insecure_port(address)
            else:
                bound_port = server.add_secure_port(address, self._server_credentials)
        except RuntimeError as error:
            raise ConfigurationError(
                f"cannot bind the model server to {address}: {error}"
            ) from error
        if bound_port == 0:
            raise ConfigurationError(f"cannot bind the model server to {address}")

        server.start()
        self._manager.start_polling(self._settings.serving_poll_seconds)
        self._server = server
        self.bound_port = bound_port
        logger.info(
            "Local model server listening on %s:%d (%s), serving %s from %s",
            self._host, bound_port, "plaintext" if self._server_credentials is None else "TLS",
            ", ".join(self._manager.model_names), self._settings.model_repository,
        )
        return bound_port

    def stop(self, grace: float | None = None) -> None:
        """Stop polling, then stop the server, letting requests finish for ``grace`` seconds."""
        if self._manager is not None:
            self._manager.stop_polling()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
            logger.info("Local model server on %s:%s stopped", self._host, self.bound_port)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` seconds pass. Return True on timeout."""
        if self._server is None:
            return False
        return self._server.wait_for_termination(timeout)


def serve_forever(settings: Settings, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
    """Run the local model server until SIGTERM or SIGINT, then stop it gracefully.

    Must be called from the main thread, because only that thread can install signal handlers.
    """
    server = LocalModelServer(settings)
    server.start()

    stop_requested = threading.Event()

    def request_stop(signal_number: int, _frame: object) -> None:
        signal_name = signal.Signals(signal_number).name
        logger.info("Received %s, stopping the local model server", signal_name)
        stop_requested.set()

    previous_handlers = {
        signal_number: signal.signal(signal_number, request_stop)
        for signal_number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        stop_requested.wait()
    finally:
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
        server.stop(grace_seconds)
