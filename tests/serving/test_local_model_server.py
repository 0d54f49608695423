"""Tests of serving.local_server over real gRPC on 127.0.0.1, with raw TF Serving requests."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.local_server import LocalModelServer, split_host_port
from tests.serving.tiny_models import (
    MODEL_SIZES,
    expected_probability,
    make_settings,
    publish_version,
    save_mean_model,
)

State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture
def channel(server: LocalModelServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.bound_port}") as opened:
        yield opened


@pytest.fixture
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def model_service(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(
    name: str, images: np.ndarray, *, input_name: str = "image", version: int | None = None
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images))
    return request


def status_request(name: str) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def constant_images(values: list[int], size: int) -> np.ndarray:
    return np.stack([np.full((size, size, 1), value, np.uint8) for value in values])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class TestPredict:
    def test_returns_output_and_model_spec(self, prediction) -> None:
        images = constant_images([0, 51, 255], MODEL_SIZES["vgg19"])

        response = prediction.Predict(predict_request("vgg19", images), timeout=10)

        output = tf.make_ndarray(response.outputs["malignancy_probability"])
        assert output.dtype == np.float32
        assert output.shape == (3, 1)
        assert output[:, 0].tolist() == [expected_probability(v) for v in (0, 51, 255)]
        assert response.model_spec.name == "vgg19"
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "serving_default"

    def test_unknown_model_is_not_found(self, prediction) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(predict_request("densenet", constant_images([1], 32)), timeout=10)

        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Latest(densenet)" in raised.value.details()

    def test_unknown_version_is_not_found(self, prediction) -> None:
        request = predict_request("cnn", constant_images([1], 32), version=9)

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Specific(cnn, 9)" in raised.value.details()

    def test_wrong_input_name_is_invalid(self, prediction) -> None:
        request = predict_request("cnn", constant_images([1], 32), input_name="pixels")

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Sent extra: ['pixels']" in raised.value.details()

    def test_wrong_dtype_is_invalid(self, prediction) -> None:
        images = constant_images([1], 32).astype(np.float32)

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(predict_request("cnn", images), timeout=10)

        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to be uint8 but float32 is provided" in raised.value.details()

    @pytest.mark.parametrize("shape", [(1, 48, 48, 1), (1, 32, 32, 3), (32, 32, 1)])
    def test_wrong_shape_is_invalid(self, prediction, shape: tuple[int, ...]) -> None:
        images = np.zeros(shape, np.uint8)

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(predict_request("cnn", images), timeout=10)

        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not match the signature shape [-1, 32, 32, 1]" in raised.value.details()

    def test_unknown_output_filter_is_invalid(self, prediction) -> None:
        request = predict_request("cnn", constant_images([1], 32))
        request.output_filter.append("logits")

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_unknown_signature_is_failed_precondition(self, prediction) -> None:
        request = predict_request("cnn", constant_images([1], 32))
        request.model_spec.signature_name = "classify"

        with pytest.raises(grpc.RpcError) as raised:
            prediction.Predict(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


class TestGetModelMetadata:
    def test_returns_signature_def_map(self, prediction) -> None:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "efficientnetb7"

        response = prediction.GetModelMetadata(request, timeout=10)

        assert response.model_spec.name == "efficientnetb7"
        assert response.model_spec.version.value == 1
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signature_def_map)
        signature = signature_def_map.signature_def["serving_default"]
        image = signature.inputs["image"]
        assert image.name == "serving_default_image:0"
        assert image.dtype == types_pb2.DT_UINT8
        assert [dim.size for dim in image.tensor_shape.dim] == [-1, 64, 64, 1]
        output = signature.outputs["malignancy_probability"]
        assert output.dtype == types_pb2.DT_FLOAT
        assert [dim.size for dim in output.tensor_shape.dim] == [-1, 1]
        assert signature.method_name == "tensorflow/serving/predict"

    def test_unsupported_field_is_invalid(self, prediction) -> None:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["warmup"])
        request.model_spec.name = "cnn"

        with pytest.raises(grpc.RpcError) as raised:
            prediction.GetModelMetadata(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class TestGetModelStatus:
    def test_every_model_is_available(self, model_service) -> None:
        for name in MODEL_SIZES:
            response = model_service.GetModelStatus(status_request(name), timeout=10)

            assert [status.version for status in response.model_version_status] == [1]
            assert response.model_version_status[0].state == State.AVAILABLE
            assert response.model_version_status[0].status.error_code == 0

    def test_unknown_model_is_not_found(self, model_service) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            model_service.GetModelStatus(status_request("densenet"), timeout=10)

        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


class TestVersionPolling:
    def test_new_version_replaces_old(
        self, server, model_repository: Path, prediction, model_service
    ) -> None:
        model_dir = model_repository / "cnn"
        (model_dir / "3").mkdir()  # an unfinished folder that must not be loaded
        publish_version(model_dir, 2, MODEL_SIZES["cnn"])

        def states() -> dict[int, int]:
            response = model_service.GetModelStatus(status_request("cnn"), timeout=10)
            return {status.version: status.state for status in response.model_version_status}

        assert wait_until(lambda: states() == {1: State.END, 2: State.AVAILABLE}), states()
        response = prediction.Predict(predict_request("cnn", constant_images([7], 32)), timeout=10)
        assert response.model_spec.version.value == 2

    def test_failed_load_is_reported(
        self, server, model_repository: Path, model_service
    ) -> None:
        broken = model_repository / "resnet50" / "2"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")

        def statuses() -> dict[int, get_model_status_pb2.ModelVersionStatus]:
            response = model_service.GetModelStatus(status_request("resnet50"), timeout=10)
            return {status.version: status for status in response.model_version_status}

        assert wait_until(lambda: 2 in statuses() and statuses()[2].state == State.END)
        assert statuses()[2].status.error_code != 0
        assert "load failed" in statuses()[2].status.error_message
        assert statuses()[1].state == State.AVAILABLE


class TestVersionPolicies:
    def test_all_policy_serves_each_version(self, model_repository: Path, tmp_path: Path) -> None:
        publish_version(model_repository / "cnn", 2, MODEL_SIZES["cnn"], divisor=1.0)
        config = tmp_path / "all.config"
        config.write_text(
            'model_config_list { config { name: "cnn" base_path: "/models/cnn" '
            'model_platform: "tensorflow" model_version_policy { all { } } '
            'version_labels { key: "stable" value: 1 } } }'
        )
        settings = make_settings(model_repository, model_config_file=config)
        local_server = LocalModelServer(settings, port=0)
        port = local_server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                images = constant_images([51], 32)

                latest = stub.Predict(predict_request("cnn", images), timeout=10)
                first = stub.Predict(predict_request("cnn", images, version=1), timeout=10)
                labelled_request = predict_request("cnn", images)
                labelled_request.model_spec.version_label = "stable"
                labelled = stub.Predict(labelled_request, timeout=10)
                unknown_label_request = predict_request("cnn", images)
                unknown_label_request.model_spec.version_label = "canary"
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Predict(unknown_label_request, timeout=10)
        finally:
            local_server.stop(0)

        assert latest.model_spec.version.value == 2
        assert tf.make_ndarray(latest.outputs["malignancy_probability"])[0, 0] == 51.0
        assert first.model_spec.version.value == 1
        assert labelled.model_spec.version.value == 1
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class TestSplitHostPort:
    def test_ipv4_and_ipv6(self) -> None:
        assert split_host_port("127.0.0.1:8500") == ("127.0.0.1", 8500)
        assert split_host_port("[::1]:8500") == ("[::1]", 8500)

    @pytest.mark.parametrize("address", ["127.0.0.1", ":8500", "127.0.0.1:port"])
    def test_invalid_address_raises(self, address: str) -> None:
        with pytest.raises(ValueError, match="expected host:port"):
            split_host_port(address)


class TestServeForever:
    def test_sigterm_stops_server(self, model_repository: Path, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        environment = {
            **os.environ,
            "MAMMO_DATA_DIR": str(tmp_path),
            "MAMMO_MODEL_REPOSITORY": str(model_repository),
            "MAMMO_SERVING_ADDRESS": f"127.0.0.1:{port}",
        }
        script = (
            "import logging; logging.basicConfig(level=logging.INFO); "
            "from mammo.settings import Settings; from serving.local_server import serve_forever; "
            "serve_forever(Settings())"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", script], env=environment, stderr=subprocess.PIPE, text=True
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                response = stub.GetModelStatus(
                    status_request("cnn"), timeout=60, wait_for_ready=True
                )
            process.send_signal(signal.SIGTERM)
            _, log = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        assert response.model_version_status[0].state == State.AVAILABLE
        assert process.returncode == 0
        assert f"Local model server listening on 127.0.0.1:{port}" in log
        assert "Received SIGTERM" in log
        assert f"Local model server on 127.0.0.1:{port} stopped" in log


def single_model_config(directory: Path, policy: str, name: str = "cnn") -> Path:
    """Write a model config that serves ``name`` with the version policy text ``policy``."""
    config = directory / f"{name}.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{name}" base_path: "/models/{name}" '
        f'model_platform: "tensorflow" model_version_policy {{ {policy} }} }} }}'
    )
    return config


class RunningServer:
    """A local server on its own settings, with stubs over one channel that stop() closes."""

    def __init__(self, repository: Path, **overrides: object) -> None:
        self.settings = make_settings(repository, **overrides)
        self.server = LocalModelServer(self.settings, port=0)
        port = self.server.start()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
        )
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def states(self, name: str = "cnn") -> dict[int, int]:
        try:
            response = self.model_service.GetModelStatus(status_request(name), timeout=10)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {status.version: status.state for status in response.model_version_status}

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0)


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(repository: Path, **overrides: object) -> RunningServer:
        running = RunningServer(repository, **overrides)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class TestVersionPolicyWhileRunning:
    def test_latest_two_keeps_two_highest(self, model_repository, tmp_path, start_server) -> None:
        config = single_model_config(tmp_path, "latest { num_versions: 2 }")
        running = start_server(model_repository, model_config_file=config)
        model_dir = model_repository / "cnn"

        publish_version(model_dir, 2, MODEL_SIZES["cnn"])
        assert wait_until(lambda: running.states() == {1: State.AVAILABLE, 2: State.AVAILABLE})
        publish_version(model_dir, 3, MODEL_SIZES["cnn"])
        expected = {1: State.END, 2: State.AVAILABLE, 3: State.AVAILABLE}
        assert wait_until(lambda: running.states() == expected), running.states()

        images = constant_images([9], 32)
        second = running.prediction.Predict(predict_request("cnn", images, version=2), timeout=10)
        latest = running.prediction.Predict(predict_request("cnn", images), timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            running.prediction.Predict(predict_request("cnn", images, version=1), timeout=10)

        assert second.model_spec.version.value == 2
        assert latest.model_spec.version.value == 3
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    def test_specific_loads_listed_version_once_published(
        self, model_repository, tmp_path, start_server
    ) -> None:
        config = single_model_config(tmp_path, "specific { versions: 3 }")
        running = start_server(model_repository, model_config_file=config)
        model_dir = model_repository / "cnn"
        assert running.states() == {}

        publish_version(model_dir, 2, MODEL_SIZES["cnn"])
        publish_version(model_dir, 3, MODEL_SIZES["cnn"])

        assert wait_until(lambda: running.states() == {3: State.AVAILABLE}), running.states()
        response = running.prediction.Predict(
            predict_request("cnn", constant_images([3], 32)), timeout=10
        )
        assert response.model_spec.version.value == 3

    def test_deleted_version_folder_is_unloaded(
        self, model_repository, tmp_path, start_server
    ) -> None:
        config = single_model_config(tmp_path, "all { }")
        publish_version(model_repository / "cnn", 2, MODEL_SIZES["cnn"])
        running = start_server(model_repository, model_config_file=config)
        assert running.states() == {1: State.AVAILABLE, 2: State.AVAILABLE}

        shutil.rmtree(model_repository / "cnn" / "2")

        assert wait_until(lambda: running.states() == {1: State.AVAILABLE, 2: State.END})
        response = running.prediction.Predict(
            predict_request("cnn", constant_images([3], 32)), timeout=10
        )
        assert response.model_spec.version.value == 1

    def test_folder_without_saved_model_is_ignored(
        self, model_repository, start_server
    ) -> None:
        running = start_server(model_repository)
        half_written = model_repository / "cnn" / "2"
        (half_written / "variables").mkdir(parents=True)
        (half_written / "variables" / "variables.index").write_bytes(b"partial")

        time.sleep(5 * running.settings.serving_poll_seconds)

        assert running.states() == {1: State.AVAILABLE}


class TestLoadRetries:
    def test_failed_load_is_retried_on_next_poll(
        self, model_repository, tmp_path, start_server, caplog
    ) -> None:
        caplog.set_level(logging.INFO, logger="serving.servable_manager")
        running = start_server(model_repository, serving_poll_seconds=0.5)
        # saved_model.pb is written before the variables, as a copy that does not rename
        # into place would do, so the first load fails.
        source = tmp_path / "complete"
        save_mean_model(source, MODEL_SIZES["cnn"])
        target = model_repository / "cnn" / "2"
        target.mkdir()
        shutil.copy(source / "saved_model.pb", target / "saved_model.pb")
        assert wait_until(lambda: running.states().get(2) == State.END, timeout=20)

        shutil.copytree(source, target, dirs_exist_ok=True)

        assert wait_until(lambda: running.states() == {1: State.END, 2: State.AVAILABLE}, 20)
        messages = [record.getMessage() for record in caplog.records]
        assert any("version 2 failed on attempt 1 of 6, retrying" in m for m in messages)
        assert any("Model cnn version 2 is AVAILABLE" in m for m in messages)

    def test_retries_are_bounded(self, model_repository, start_server, caplog) -> None:
        caplog.set_level(logging.INFO, logger="serving.servable_manager")
        running = start_server(model_repository, serving_load_retries=1)
        broken = model_repository / "cnn" / "2"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")

        def attempts() -> int:
            return sum(
                "Loading model cnn version 2 from" in record.getMessage()
                for record in caplog.records
            )

        assert wait_until(lambda: attempts() == 2)
        time.sleep(5 * running.settings.serving_poll_seconds)

        assert attempts() == 2
        assert any("giving up until the server restarts" in r.getMessage() for r in caplog.records)
        assert running.states() == {1: State.AVAILABLE, 2: State.END}


class TestWarmup:
    def test_records_replayed_at_load(self, model_repository, start_server, caplog) -> None:
        caplog.set_level(logging.INFO, logger="serving.servable_manager")
        running = start_server(model_repository)

        publish_version(model_repository / "cnn", 2, MODEL_SIZES["cnn"], warmup_batch_sizes=(1, 4))

        assert wait_until(lambda: running.states().get(2) == State.AVAILABLE)
        messages = [record.getMessage() for record in caplog.records]
        assert any("Replayed 2 warmup requests for model cnn version 2" in m for m in messages)

    def test_failing_record_fails_load(self, model_repository, start_server) -> None:
        running = start_server(model_repository, serving_load_retries=0)

        # Warmup images of 48 pixels for a model that takes 32.
        publish_version(
            model_repository / "cnn", 2, MODEL_SIZES["cnn"], warmup_batch_sizes=(1,), warmup_size=48
        )

        def status() -> get_model_status_pb2.ModelVersionStatus | None:
            response = running.model_service.GetModelStatus(status_request("cnn"), timeout=10)
            return {s.version: s for s in response.model_version_status}.get(2)

        assert wait_until(lambda: status() is not None and status().state == State.END)
        assert "warmup request 0 failed with INVALID_ARGUMENT" in status().status.error_message
        assert running.states() == {1: State.AVAILABLE, 2: State.END}


class TestMessageLimit:
    def test_request_over_limit_is_resource_exhausted(
        self, model_repository, start_server
    ) -> None:
        limit = 4 * 1024 * 1024
        running = start_server(model_repository, serving_max_message_bytes=limit)
        images = np.zeros((5200, 32, 32, 1), np.uint8)  # 5.3 MB of pixels
        request = predict_request("cnn", images)
        assert request.ByteSize() > limit

        with pytest.raises(grpc.RpcError) as raised:
            running.prediction.Predict(request, timeout=10)

        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in raised.value.details()


class TestConcurrency:
    def test_parallel_predicts_get_own_results(self, prediction) -> None:
        values = list(range(0, 256, 4))

        def score(value: int) -> tuple[int, float]:
            images = constant_images([value] * 3, MODEL_SIZES["resnet50"])
            response = prediction.Predict(predict_request("resnet50", images), timeout=20)
            output = tf.make_ndarray(response.outputs["malignancy_probability"])
            return response.model_spec.version.value, output[:, 0].tolist()

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(score, values))

        for value, (version, probabilities) in zip(values, results):
            assert version == 1
            assert probabilities == [expected_probability(value)] * 3
