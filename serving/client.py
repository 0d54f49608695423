"""gRPC client of TF Serving (or the local model server) that scores canonical images.

One `ServingClient` opens one channel with the message limits from settings. Every call has
a deadline of ``serving_timeout_seconds``. A batch is split so that each request stays under
the message limit and contains at most ``serving_max_images_per_request`` images. Calls that
fail with UNAVAILABLE or DEADLINE_EXCEEDED are retried ``serving_retries`` times, after
``serving_retry_backoff_seconds`` and then twice as long on each retry. Other failures are
not retried.

`ServingClient.check_models` fails fast, naming the model, when a model is not AVAILABLE or its
signature breaks the contract in `serving.signature_contract`. `ServingClient.score` calls the
models concurrently and reports, for each model, the version that the responses name.

Predict requests name the version that `check_models` found, so every request of one scoring
call reaches the same version, with the input size read from that version's metadata. When
the server returns NOT_FOUND because it unloaded that version (a newer one replaced it), the
client checks the model again once, takes the version now served with its input size, and
scores that model's images again.

The channel uses TLS when ``serving_tls_ca_file`` is set, and mutual TLS when
``serving_tls_cert_file`` and ``serving_tls_key_file`` are set too.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import Message
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mammo.errors import ConfigurationError, ModelContractError, ModelServingError
from mammo.settings import Settings
from serving.request_batches import max_images_per_request, resize_images, split_batch
from serving.signature_contract import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_DEF_FIELD,
    SIGNATURE_NAME,
    ServedModel,
    served_model_from_metadata,
)

logger = logging.getLogger(__name__)

# NOTE: a request still running when the server shuts down may end with CANCELLED, which is
# not retried, so the run fails and the next run reclaims its files.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: Floor of the channel's reconnect backoff, because gRPC needs a positive value.
MIN_RECONNECT_BACKOFF_MS = 100

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE

Response = TypeVar("Response", bound=Message)


class _ServedVersionNotFound(ModelServingError):
    """Predict failed with NOT_FOUND for the version the client named."""


@dataclass(frozen=True)
class ModelScores:
    """Malignancy probabilities of one model, in input order, and the version that made them."""

    model_name: str
    version: int
    probabilities: np.ndarray


class ServingClient:
    """Client of the models in ``settings.model_names`` at ``settings.serving_address``.

    Use it as a context manager, or call `close`, to release the channel and the threads.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model_names = tuple(settings.model_names)
        self._timeout = settings.serving_timeout_seconds
        self._max_message_bytes = settings.serving_max_message_bytes

        # Reconnect at least as often as calls are retried. Otherwise a call made while the
        # channel waits out its own reconnect backoff fails at once with UNAVAILABLE and uses
        # up a retry. gRPC's default backoff starts at 1 s and grows to 120 s
        # (doc/connection-backoff.md in the grpc/grpc repository).
        reconnect_ms = max(
            MIN_RECONNECT_BACKOFF_MS, int(settings.serving_retry_backoff_seconds * 1000)
        )
        self._channel = open_channel(
            settings,
            [
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
                ("grpc.max_reconnect_backoff_ms", reconnect_ms),
            ],
        )
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._model_names), thread_name_prefix="serving-client"
        )
        # Scoring threads replace a model's entry when its version changes.
        self._served_lock = threading.Lock()
        self._served: dict[str, ServedModel] = {}

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._channel.close()

    # --- Contract check ------------------------------------------------------------------
    def check_models(self) -> dict[str, ServedModel]:
        """Check that every model is AVAILABLE and meets the signature contract.

        Returns the served models by name and keeps them for `score`, which requests their
        versions and uses their input sizes. Raises ModelContractError naming the model and
        the mismatch, and ModelServingError when the server cannot be reached within the
        retries.
        """
        served = {name: self._resolve_model(name) for name in self._model_names}
        with self._served_lock:
            self._served = served
        return dict(served)

    def _resolve_model(self, name: str) -> ServedModel:
        """Check one model's status and metadata and return the version it serves now."""
        self._check_available(name)
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=[SIGNATURE_DEF_FIELD]
        )
        request.model_spec.name = name
        request.model_spec.signature_name = SIGNATURE_NAME
        response = self._call(name, "GetModelMetadata", self._prediction.GetModelMetadata, request)
        model = served_model_from_metadata(name, response)
        logger.info(
            "Model %s version %d meets the serving contract, input %dx%d",
            name, model.version, model.input_height, model.input_width,
        )
        return model

    def _check_available(self, name: str) -> None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = self._call(name, "GetModelStatus", self._model_service.GetModelStatus, request)

        states = {
            status.version: get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
            for status in response.model_version_status
        }
        if AVAILABLE not in {status.state for status in response.model_version_status}:
            raise ModelContractError(
                f"model {name!r} has no AVAILABLE version, version states: {states}"
            )

    # --- Scoring -------------------------------------------------------------------------
    def score(self, images: np.ndarray) -> dict[str, ModelScores]:
        """Score canonical images with every model, calling the models concurrently.

        Args:
            images: grayscale uint8 images of shape ``[N, S, S]``, N >= 1.

        Returns:
            `ModelScores` per model name: float64 probabilities of shape ``[N]`` in input
            order, and the version that every response for this call reported.

        Raises:
            ValueError: ``images`` is not a non-empty uint8 array of shape [N, S, S].
            ModelServingError: a request failed after the retries, or the responses of one
                call reported different versions. Non-finite probabilities are returned as
                they are, for the caller to reject per image.
            ConfigurationError: a request exceeded a gRPC message limit.
            ModelContractError: from `check_models`, which runs first if it has not run yet.
        """
        _check_images(images)
        with self._served_lock:
            served = dict(self._served)
        if not served:
            served = self.check_models()

        # Resize once per distinct input size, so models of the same size share one array.
        resized: dict[tuple[int, int], np.ndarray] = {}
        for model in served.values():
            size = (model.input_height, model.input_width)
            if size not in resized:
                resized[size] = resize_images(images, *size)

        started = time.perf_counter()
        futures = {
            name: self._executor.submit(
                self._score_model_resolving_once, served[name], images, resized
            )
            for name in self._model_names
        }
        scores = {name: future.result() for name, future in futures.items()}
        logger.info(
            "Scored %d images with %d models in %.3f s",
            len(images), len(scores), time.perf_counter() - started,
        )
        return scores

    def _score_model_resolving_once(
        self, model: ServedModel, images: np.ndarray, resized: dict[tuple[int, int], np.ndarray]
    ) -> ModelScores:
        """Score with ``model``; if its version is gone, resolve the model again and retry once.

        ``resized`` contains the images at the sizes known before the call. A new version with
        another input size gets its own resized copy.
        """
        try:
            return self._score_model(model, resized[(model.input_height, model.input_width)])
        except _ServedVersionNotFound as missing:
            current = self._resolve_model(model.name)
            logger.warning(
                "Model %s version %d is no longer served (%s). Scoring again with version %d, "
                "input %dx%d",
                model.name, model.version, missing, current.version, current.input_height,
                current.input_width,
            )
            with self._served_lock:
                self._served[model.name] = current

        size = (current.input_height, current.input_width)
        current_images = resized.get(size)
        if current_images is None:
            current_images = resize_images(images, *size)
        try:
            return self._score_model(current, current_images)
        except _ServedVersionNotFound as missing:
            raise ModelServingError(
                f"model {model.name!r} version {current.version} was not found right after the "
                f"server reported it AVAILABLE: {missing}"
            ) from missing

    def _score_model(self, model: ServedModel, images: np.ndarray) -> ModelScores:
        fitting = max_images_per_request(
            model.input_height, model.input_width, self._max_message_bytes
        )
        per_request = min(fitting, self._settings.serving_max_images_per_request)
        if fitting == 0:
            raise ConfigurationError(
                f"one {model.input_height}x{model.input_width} image for model {model.name!r} "
                f"does not fit in a gRPC message of {self._max_message_bytes} bytes. Raise "
                "serving_max_message_bytes"
            )

        probabilities = []
        versions = set()
        for batch in split_batch(images, per_request):
            response = self._predict(model, batch)
            versions.add(response.model_spec.version.value)
            probabilities.append(_read_probabilities(model.name, response, len(batch)))

        if len(versions) > 1:
            raise ModelServingError(
                f"model {model.name!r} returned versions {sorted(versions)} within one scoring "
                f"call, although every request named version {model.version}. The server "
                "does not honour model_spec.version"
            )
        result = np.concatenate(probabilities).astype(np.float64)

        # A NaN or infinite probability belongs to one image, not to the call: it is returned
        # as it is, and the flow quarantines that image with reason invalid_score.
        not_finite = np.flatnonzero(~np.isfinite(result))
        if not_finite.size:
            logger.warning("Model %s version %s returned non-finite probabilities for images "
                           "at positions %s", model.name, next(iter(versions)),
                           not_finite.tolist())
        logger.debug("Model %s scored %d images", model.name, len(result))
        return ModelScores(model.name, versions.pop(), result)

    def _predict(self, model: ServedModel, batch: np.ndarray) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model.name
        request.model_spec.version.value = model.version
        request.model_spec.signature_name = SIGNATURE_NAME
        request.output_filter.append(OUTPUT_NAME)

        tensor = request.inputs[INPUT_NAME]
        tensor.dtype = types_pb2.DT_UINT8
        tensor.tensor_shape.dim.extend(
            tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in batch.shape
        )
        tensor.tensor_content = np.ascontiguousarray(batch).tobytes()
        return self._call(model.name, "Predict", self._prediction.Predict, request)

    # --- Calls with deadline and retries -------------------------------------------------
    def _call(
        self, name: str, method: str, stub_method: Callable[..., Response], request: Message
    ) -> Response:
        retries = self._settings.serving_retries
        for attempt in range(retries + 1):
            try:
                return stub_method(request, timeout=self._timeout)
            except grpc.RpcError as error:
                code = error.code()
                if code in RETRYABLE_CODES and attempt < retries:
                    delay = self._settings.serving_retry_backoff_seconds * 2**attempt
                    logger.warning(
                        "%s for model %s failed with %s (retry %d of %d in %.2f s): %s",
                        method, name, code.name, attempt + 1, retries, delay, error.details(),
                    )
                    time.sleep(delay)
                    continue
                raise _translate_error(name, method, error, request.ByteSize(), attempt) from error
        raise AssertionError("unreachable: the last attempt returns or raises")


def _translate_error(
    name: str, method: str, error: grpc.RpcError, request_bytes: int, retries_done: int
) -> Exception:
    code = error.code()
    details = error.details()
    call = f"{method} for model {name!r}"

    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ConfigurationError(
            f"{call} failed with RESOURCE_EXHAUSTED for a request of {request_bytes} bytes: "
            f"{details}. Raise the message limit of the client (serving_max_message_bytes) "
            "or of the server so that they match"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        if method == "Predict":
            return _ServedVersionNotFound(f"{call} failed with NOT_FOUND: {details}")
        return ModelContractError(f"model {name!r} is not served: {details}")
    if code in RETRYABLE_CODES:
        return ModelServingError(
            f"{call} failed with {code.name} after {retries_done} retries: {details}"
        )
    return ModelServingError(f"{call} failed with {code.name}: {details}")


def open_channel(settings: Settings, options: list[tuple[str, object]]) -> grpc.Channel:
    """Open a channel to ``settings.serving_address``, with TLS when a CA file is set.

    Raises ConfigurationError naming the setting when a certificate or key file cannot be
    read.
    """
    if settings.serving_tls_ca_file is None:
        return grpc.insecure_channel(settings.serving_address, options=options)

    root_certificates = _read_pem("serving_tls_ca_file", settings.serving_tls_ca_file)
    private_key = certificate_chain = None
    if settings.serving_tls_cert_file is not None and settings.serving_tls_key_file is not None:
        certificate_chain = _read_pem("serving_tls_cert_file", settings.serving_tls_cert_file)
        private_key = _read_pem("serving_tls_key_file", settings.serving_tls_key_file)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    if settings.serving_tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", settings.serving_tls_server_name)]
    return grpc.secure_channel(settings.serving_address, credentials, options=options)


def _read_pem(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read {setting} {path}: {error}. Set MAMMO_{setting.upper()} to a readable "
            "PEM file"
        ) from error


def _read_probabilities(
    name: str, response: predict_pb2.PredictResponse, batch_size: int
) -> np.ndarray:
    if OUTPUT_NAME not in response.outputs:
        raise ModelServingError(
            f"model {name!r} returned outputs {sorted(response.outputs)} without {OUTPUT_NAME!r}"
        )
    output = tf.make_ndarray(response.outputs[OUTPUT_NAME])
    if output.shape != (batch_size, 1):
        raise ModelServingError(
            f"model {name!r} returned {OUTPUT_NAME!r} of shape {list(output.shape)} for "
            f"{batch_size} images, expected [{batch_size}, 1]"
        )
    return output.reshape(batch_size)


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        description = (
            f"{images.dtype} array of shape {list(images.shape)}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise ValueError(f"images must be a uint8 array of shape [N, S, S], got {description}")
    if len(images) == 0:
        raise ValueError("images must contain at least one image, got an empty batch")
