"""Tests of serving.client against the local model server over real gRPC on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from mammo.errors import ConfigurationError, ModelContractError, ModelServingError
from serving.client import ServingClient
from serving.local_server import LocalModelServer, ModelServicer, PredictionServicer
from serving.model_config import load_model_sources
from serving.servable_manager import ServableManager
from tests.serving.certificates import TlsFiles, make_tls_files
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
            # The client allows 64 MiB and 40 images per request, so it sends all 40 images
            # in one request of 10.5 MB.
            client_settings = settings.model_copy(
                update={
                    "serving_address": f"127.0.0.1:{port}",
                    "serving_max_message_bytes": 64 * 1024 * 1024,
                    "serving_max_images_per_request": 40,
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


def start_local_server(settings, **server_options) -> tuple[LocalModelServer, object]:
    """Start a server on ``settings`` and return it with client settings pointing at it."""
    server = LocalModelServer(settings, port=0, **server_options)
    port = server.start()
    return server, settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})


def wait_for_states(settings, name: str, expected: dict[int, str], timeout: float = 20.0) -> None:
    """Wait until GetModelStatus of ``name`` reports exactly ``expected`` (version: state)."""
    with grpc.insecure_channel(settings.serving_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        deadline = time.monotonic() + timeout
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            response = stub.GetModelStatus(request, timeout=10)
            states = {
                status.version: get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
                for status in response.model_version_status
            }
            if states == expected:
                return
            time.sleep(0.05)
    raise AssertionError(f"model {name} states {states}, expected {expected}")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


class TestServedVersionChanges:
    def test_unloaded_version_is_resolved_again(self, tmp_path: Path, caplog) -> None:
        repository = single_model_repository(tmp_path, "cnn", 32)
        settings = make_settings(repository, model_names=("cnn",))
        server, client_settings = start_local_server(settings)
        caplog.set_level(logging.INFO, logger="serving.client")
        try:
            with ServingClient(client_settings) as client:
                assert client.check_models()["cnn"].version == 1
                # Version 2 takes 48-pixel images and scores mean / 1 instead of mean / 255.
                publish_version(repository / "cnn", 2, 48, divisor=1.0)
                wait_for_states(client_settings, "cnn", {1: "END", 2: "AVAILABLE"})

                scores = client.score(constant_images([7, 200]))
                again = client.score(constant_images([9]))
        finally:
            server.stop(0)

        assert scores["cnn"].version == 2
        assert scores["cnn"].probabilities.tolist() == [7.0, 200.0]
        assert again["cnn"].version == 2
        messages = [record.getMessage() for record in caplog.records]
        assert any(
            "Model cnn version 1 is no longer served" in message
            and "Scoring again with version 2, input 48x48" in message
            for message in messages
        )
        assert sum("is no longer served" in message for message in messages) == 1

    def test_requests_name_checked_version(self, tmp_path: Path) -> None:
        repository = single_model_repository(tmp_path, "cnn", 32)
        config = tmp_path / "all.config"
        config.write_text(
            'model_config_list { config { name: "cnn" base_path: "/models/cnn" '
            'model_platform: "tensorflow" model_version_policy { all { } } } }'
        )
        settings = make_settings(repository, model_names=("cnn",), model_config_file=config)
        server, client_settings = start_local_server(settings)
        try:
            with ServingClient(client_settings) as client:
                client.check_models()
                publish_version(repository / "cnn", 2, 32, divisor=1.0)
                wait_for_states(client_settings, "cnn", {1: "AVAILABLE", 2: "AVAILABLE"})

                before_check = client.score(constant_images([51]))
                client.check_models()
                after_check = client.score(constant_images([51]))
        finally:
            server.stop(0)

        assert before_check["cnn"].version == 1
        assert before_check["cnn"].probabilities.tolist() == [expected_probability(51)]
        assert after_check["cnn"].version == 2
        assert after_check["cnn"].probabilities.tolist() == [51.0]


class TestRequestSplitting:
    def test_max_images_per_request(self, tmp_path: Path) -> None:
        repository = single_model_repository(tmp_path, "cnn", 32)
        settings = make_settings(
            repository, model_names=("cnn",), serving_max_images_per_request=4
        )
        server, client_settings = start_local_server(settings)
        sizes: list[int] = []
        original_predict = ServingClient._predict

        def recording_predict(client, model, batch):
            sizes.append(len(batch))
            return original_predict(client, model, batch)

        values = list(range(10))
        try:
            with ServingClient(client_settings) as client:
                client._predict = recording_predict.__get__(client)
                scores = client.score(constant_images(values))
        finally:
            server.stop(0)

        assert sizes == [4, 4, 2]
        assert scores["cnn"].probabilities.tolist() == [expected_probability(v) for v in values]


class TestTls:
    def test_server_authenticated_channel(self, model_repository: Path, tls_files) -> None:
        settings = make_settings(model_repository)
        credentials = grpc.ssl_server_credentials(
            [(tls_files.server_key.read_bytes(), tls_files.server_cert.read_bytes())]
        )
        server, client_settings = start_local_server(settings, server_credentials=credentials)
        tls_settings = client_settings.model_copy(
            update={"serving_tls_ca_file": tls_files.ca_cert}
        )
        try:
            with ServingClient(tls_settings) as client:
                scores = client.score(constant_images([25]))
        finally:
            server.stop(0)

        assert scores["vgg19"].probabilities.tolist() == [expected_probability(25)]

    def test_mutual_tls_channel(self, model_repository: Path, tls_files) -> None:
        settings = make_settings(model_repository)
        credentials = grpc.ssl_server_credentials(
            [(tls_files.server_key.read_bytes(), tls_files.server_cert.read_bytes())],
            root_certificates=tls_files.ca_cert.read_bytes(),
            require_client_auth=True,
        )
        server, client_settings = start_local_server(settings, server_credentials=credentials)
        mutual = client_settings.model_copy(
            update={
                "serving_tls_ca_file": tls_files.ca_cert,
                "serving_tls_cert_file": tls_files.client_cert,
                "serving_tls_key_file": tls_files.client_key,
            }
        )
        server_only = client_settings.model_copy(
            update={"serving_tls_ca_file": tls_files.ca_cert, "serving_retries": 0}
        )
        try:
            with ServingClient(mutual) as client:
                served = client.check_models()
            with ServingClient(server_only) as client:
                with pytest.raises(ModelServingError, match="UNAVAILABLE"):
                    client.check_models()
        finally:
            server.stop(0)

        assert set(served) == set(MODEL_SIZES)

    def test_unknown_ca_is_rejected(self, model_repository: Path, tls_files, tmp_path) -> None:
        other_ca = make_tls_files(tmp_path / "other", ca_name="another CA")
        settings = make_settings(model_repository)
        credentials = grpc.ssl_server_credentials(
            [(tls_files.server_key.read_bytes(), tls_files.server_cert.read_bytes())]
        )
        server, client_settings = start_local_server(settings, server_credentials=credentials)
        untrusting = client_settings.model_copy(
            update={"serving_tls_ca_file": other_ca.ca_cert, "serving_retries": 0}
        )
        try:
            with ServingClient(untrusting) as client:
                with pytest.raises(ModelServingError, match="UNAVAILABLE"):
                    client.check_models()
        finally:
            server.stop(0)

    def test_missing_ca_file_raises(self, model_repository: Path, tmp_path: Path) -> None:
        settings = make_settings(
            model_repository, serving_tls_ca_file=tmp_path / "missing.pem"
        )

        with pytest.raises(ConfigurationError, match="cannot read serving_tls_ca_file"):
            ServingClient(settings)

    def test_cert_without_key_raises(self, model_repository: Path, tls_files) -> None:
        with pytest.raises(ValueError, match="must be set together"):
            make_settings(
                model_repository,
                serving_tls_ca_file=tls_files.ca_cert,
                serving_tls_cert_file=tls_files.client_cert,
            )
