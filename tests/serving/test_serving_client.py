"""Tests of serving.client against the local model server over real gRPC on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from mammo.errors import ConfigurationError, ModelContractError, ModelServingError
from serving.client import ServingClient
from serving.local_server import LocalModelServer, ModelServicer, PredictionServicer
from serving.model_config import load_model_sources
from serving.servable_manager import ServableManager
from tests.serving.tiny_models import (
    CANONICAL_SIZE,
    MODEL_SIZES,
    expected_probability,
    make_settings,
    publish_version,
)

#: The smallest message limit Settings accepts (4 MiB).
SMALL_MESSAGE_BYTES = 4 * 1024 * 1024


def constant_images(values: list[int], size: int = CANONICAL_SIZE) -> np.ndarray:
    return np.stack([np.full((size, size), value, np.uint8) for value in values])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def single_model_repository(root: Path, name: str, size: int, **model_options: object) -> Path:
    repository = root / "models"
    publish_version(repository / name, 1, size, **model_options)
    return repository


class TestCheckModels:
    def test_returns_served_models(self, client_settings) -> None:
        with ServingClient(client_settings) as client:
            served = client.check_models()

        assert list(served) == list(MODEL_SIZES)
        for name, size in MODEL_SIZES.items():
            assert served[name].name == name
            assert served[name].version == 1
            assert served[name].input_height == size
            assert served[name].input_width == size

    @pytest.mark.parametrize(
        ("model_options", "message"),
        [
            ({"input_dtype": "float32"}, "tensor 'image' has dtype DT_FLOAT, expected DT_UINT8"),
            ({"channels": 3}, r"input 'image' has shape \[-1, 32, 32, 3\]"),
            ({"output_name": "probability"}, "expected 'malignancy_probability'"),
        ],
    )
    def test_contract_mismatch_raises(self, tmp_path: Path, model_options, message: str) -> None:
        repository = single_model_repository(tmp_path, "cnn", 32, **model_options)
        settings = make_settings(repository, model_names=("cnn",))
        server = LocalModelServer(settings, port=0)
        port = server.start()
        try:
            client_settings = settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})
            with ServingClient(client_settings) as client:
                with pytest.raises(ModelContractError, match=message) as raised:
                    client.check_models()
        finally:
            server.stop(0)

        assert "model 'cnn'" in str(raised.value)

    def test_model_not_served_raises(self, client_settings) -> None:
        settings = client_settings.model_copy(update={"model_names": ("cnn", "densenet")})

        with ServingClient(settings) as client:
            with pytest.raises(ModelContractError, match="model 'densenet' is not served"):
                client.check_models()


class TestScore:
    def test_scores_every_model_exactly(self, client_settings) -> None:
        values = [0, 10, 51, 200, 255]

        with ServingClient(client_settings) as client:
            scores = client.score(constant_images(values))

        expected = [expected_probability(value) for value in values]
        assert list(scores) == list(MODEL_SIZES)
        for name, model_scores in scores.items():
            assert model_scores.model_name == name
            assert model_scores.version == 1
            assert model_scores.probabilities.dtype == np.float64
            assert model_scores.probabilities.shape == (len(values),)
            assert model_scores.probabilities.tolist() == expected

    def test_resizes_with_area_interpolation(self, client_settings) -> None:
        shape = (3, CANONICAL_SIZE, CANONICAL_SIZE)
        images = np.random.default_rng(7).integers(0, 256, shape, np.uint8)
        # Halving with area interpolation averages 2x2 blocks, which keeps the mean pixel
        # value up to the rounding of each block's average.
        expected = images.astype(np.float64).mean(axis=(1, 2)) / 255

        with ServingClient(client_settings) as client:
            scores = client.score(images)

        np.testing.assert_allclose(scores["cnn"].probabilities, expected, atol=0.5 / 255)
        np.testing.assert_allclose(scores["efficientnetb7"].probabilities, expected, rtol=1e-6)

    def test_splits_batch_under_message_limit(self, tmp_path: Path) -> None:
        # 40 images of 512x512 bytes are 10.5 MB, so a 4 MiB limit needs three requests.
        repository = single_model_repository(tmp_path, "cnn", 512)
        settings = make_settings(
            repository, model_names=("cnn",), serving_max_message_bytes=SMALL_MESSAGE_BYTES
        )
        server = LocalModelServer(settings, port=0)
        port = server.start()
        values = [index * 6 for index in range(40)]
        try:
            client_settings = settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})
            with ServingClient(client_settings) as client:
                scores = client.score(constant_images(values, size=512))
        finally:
            server.stop(0)

        assert scores["cnn"].probabilities.tolist() == [expected_probability(v) for v in values]

    def test_message_over_server_limit_raises(self, tmp_path: Path) -> None:
        repository = single_model_repository(tmp_path, "cnn", 512)
        settings = make_settings(
            repository, model_names=("cnn",), serving_max_message_bytes=SMALL_MESSAGE_BYTES
        )
        server = LocalModelServer(settings, port=0)
        port = server.start()
        try:
            # The client allows 64 MiB, so it sends all 40 images in one request of 10.5 MB.
            client_settings = settings.model_copy(
                update={
                    "serving_address": f"127.0.0.1:{port}",
                    "serving_max_message_bytes": 64 * 1024 * 1024,
                }
            )
            with ServingClient(client_settings) as client:
                with pytest.raises(ConfigurationError, match="RESOURCE_EXHAUSTED") as raised:
                    client.score(constant_images([1] * 40, size=512))
        finally:
            server.stop(0)

        assert "request of 1048" in str(raised.value)

    def test_concurrent_calls_share_one_client(self, client_settings) -> None:
        batches = [constant_images([value, 255 - value]) for value in range(0, 240, 20)]

        with ServingClient(client_settings) as client:
            with ThreadPoolExecutor(max_workers=4) as pool:
                results = list(pool.map(client.score, batches))

        for batch, scores in zip(batches, results):
            expected = [expected_probability(int(image[0, 0])) for image in batch]
            for model_scores in scores.values():
                assert model_scores.probabilities.tolist() == expected

    def test_non_finite_probability_returned_per_image(self, tmp_path: Path, caplog) -> None:
        repository = single_model_repository(tmp_path, "cnn", 32, divisor=0.0)
        settings = make_settings(repository, model_names=("cnn",))
        server = LocalModelServer(settings, port=0)
        port = server.start()
        try:
            client_settings = settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})
            with ServingClient(client_settings) as client:
                scores = client.score(constant_images([0, 9]))
        finally:
            server.stop(0)

        probabilities = scores["cnn"].probabilities
        assert not np.isfinite(probabilities).any()
        assert "Model cnn version 1 returned non-finite probabilities" in caplog.text

    @pytest.mark.parametrize(
        "images",
        [
            np.zeros((2, 64, 64), np.float32),
            np.zeros((64, 64), np.uint8),
            np.zeros((0, 64, 64), np.uint8),
            [[0]],
        ],
    )
    def test_invalid_images_raise(self, client_settings, images) -> None:
        with ServingClient(client_settings) as client:
            with pytest.raises(ValueError, match="images must"):
                client.score(images)


class _VersionSwitchingServicer(PredictionServicer):
    """Prediction service that reports version 1, then 2, as if a new version loaded mid-call."""

    def __init__(self, manager: ServableManager) -> None:
        super().__init__(manager)
        self._predict_calls = 0
        self._lock = threading.Lock()

    def Predict(self, request, context):
        response = super().Predict(request, context)
        with self._lock:
            self._predict_calls += 1
            response.model_spec.version.value = 1 if self._predict_calls == 1 else 2
        return response


class TestScoreVersionMixing:
    def test_mixed_versions_raise(self, tmp_path: Path) -> None:
        # 40 images of 512x512 need three requests under a 4 MiB limit.
        repository = single_model_repository(tmp_path, "cnn", 512)
        settings = make_settings(
            repository, model_names=("cnn",), serving_max_message_bytes=SMALL_MESSAGE_BYTES
        )
        manager = ServableManager(
            load_model_sources(settings.model_config_file, "/models", repository)
        )
        manager.poll()
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _VersionSwitchingServicer(manager), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            client_settings = settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})
            with ServingClient(client_settings) as client:
                with pytest.raises(ModelServingError, match=r"returned versions \[1, 2\]"):
                    client.score(constant_images([1] * 40, size=512))
        finally:
            server.stop(0)


class TestRetries:
    def test_server_started_late_is_reached(self, model_repository: Path, caplog) -> None:
        port = free_port()
        settings = make_settings(
            model_repository,
            serving_address=f"127.0.0.1:{port}",
            serving_retries=6,
            serving_retry_backoff_seconds=0.2,
        )
        server = LocalModelServer(settings)
        starter = threading.Timer(1.0, server.start)
        caplog.set_level(logging.WARNING, logger="serving.client")

        starter.start()
        try:
            with ServingClient(settings) as client:
                served = client.check_models()
        finally:
            starter.join()
            server.stop(0)

        assert set(served) == set(MODEL_SIZES)
        retry_messages = [record.getMessage() for record in caplog.records]
        assert retry_messages, "expected at least one retry before the server started"
        assert "GetModelStatus for model cnn failed with UNAVAILABLE" in retry_messages[0]

    def test_retries_exhausted_raise(self, model_repository: Path, caplog) -> None:
        settings = make_settings(
            model_repository,
            serving_address=f"127.0.0.1:{free_port()}",
            serving_retries=2,
            serving_retry_backoff_seconds=0.05,
        )
        caplog.set_level(logging.WARNING, logger="serving.client")

        with ServingClient(settings) as client:
            with pytest.raises(ModelServingError, match="failed with UNAVAILABLE after 2 retries"):
                client.check_models()

        assert len(caplog.records) == 2
        assert all("UNAVAILABLE" in record.getMessage() for record in caplog.records)
