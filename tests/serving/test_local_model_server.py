"""Tests of serving.local_server over real gRPC on 127.0.0.1, with raw TF Serving requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
