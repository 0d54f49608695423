"""Contract tests of a model server: what the serving client relies on, over real gRPC.

By default they start the local model server on tiny models. To run them against a site's
TF Serving, point MAMMO_CONTRACT_SERVING_ADDRESS at its gRPC port:

    MAMMO_CONTRACT_SERVING_ADDRESS=tf-serving-host:8500 \
        pytest tests/serving/test_serving_contract.py

The client settings then come from the MAMMO_* environment as in production, so
MAMMO_MODEL_NAMES, MAMMO_SERVING_TLS_CA_FILE and the other serving settings apply. The tests
only read: they send GetModelStatus, GetModelMetadata and Predict requests of zero images.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mammo.settings import Settings
from serving.client import ServingClient, open_channel
from serving.local_server import LocalModelServer
from serving.signature_contract import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_DEF_FIELD,
    SIGNATURE_NAME,
    ServedModel,
    served_model_from_metadata,
)
from tests.serving.tiny_models import make_settings

ADDRESS_VARIABLE = "MAMMO_CONTRACT_SERVING_ADDRESS"

#: A model name no site serves, for the NOT_FOUND checks.
UNKNOWN_MODEL = "no-such-model"

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


@pytest.fixture(scope="module")
def contract_settings(request, tmp_path_factory) -> Iterator[Settings]:
    """Client settings of the server under test, starting the local server if none is given."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if address:
        yield Settings(serving_address=address)
        return

    repository = tmp_path_factory.mktemp("contract") / "models"
    shutil.copytree(request.getfixturevalue("repository_template"), repository)
    settings = make_settings(repository)
    server = LocalModelServer(settings, port=0)
    port = server.start()
    yield settings.model_copy(update={"serving_address": f"127.0.0.1:{port}"})
    server.stop(0)


@pytest.fixture(scope="module")
def channel(contract_settings: Settings) -> Iterator[grpc.Channel]:
    limit = contract_settings.serving_max_message_bytes
    opened = open_channel(
        contract_settings,
        [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
    )
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def prediction(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def served(contract_settings: Settings, prediction) -> dict[str, ServedModel]:
    """Each configured model's served version and input size, from GetModelMetadata."""
    models = {}
    for name in contract_settings.model_names:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=[SIGNATURE_DEF_FIELD]
        )
        request.model_spec.name = name
        response = prediction.GetModelMetadata(
            request, timeout=contract_settings.serving_timeout_seconds
        )
        models[name] = served_model_from_metadata(name, response)
    return models


def zero_request(
    model: ServedModel, batch_size: int = 2, **spec: object
) -> predict_pb2.PredictRequest:
    """Build a Predict request of zero images, with ``spec`` set in its model_spec."""
    images = np.zeros((batch_size, model.input_height, model.input_width, 1), np.uint8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model.name
    request.model_spec.signature_name = SIGNATURE_NAME
    for field, value in spec.items():
        if field == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, field, value)
    request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images))
    return request


def rpc_error(call, request, timeout: float) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=timeout)
    return raised.value


class TestModelStatus:
    def test_every_model_has_available_version(self, contract_settings, channel) -> None:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for name in contract_settings.model_names:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name

            response = stub.GetModelStatus(
                request, timeout=contract_settings.serving_timeout_seconds
            )

            states = [status.state for status in response.model_version_status]
            assert AVAILABLE in states, f"model {name} has no AVAILABLE version: {states}"

    def test_unknown_model_is_not_found(self, contract_settings, channel) -> None:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = UNKNOWN_MODEL

        error = rpc_error(stub.GetModelStatus, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.NOT_FOUND


class TestMetadata:
    def test_signatures_meet_contract(self, contract_settings, served) -> None:
        # served_model_from_metadata raises ModelContractError on any mismatch.
        assert set(served) == set(contract_settings.model_names)
        for model in served.values():
            assert model.version >= 1
            assert model.input_height > 0
            assert model.input_width > 0


class TestPredict:
    def test_returns_probabilities_and_version(self, contract_settings, prediction, served):
        for model in served.values():
            response = prediction.Predict(
                zero_request(model, version=model.version),
                timeout=contract_settings.serving_timeout_seconds,
            )

            output = tf.make_ndarray(response.outputs[OUTPUT_NAME])
            assert output.dtype == np.float32
            assert output.shape == (2, 1)
            assert np.all((output >= 0) & (output <= 1)), output.ravel().tolist()
            assert response.model_spec.name == model.name
            assert response.model_spec.version.value == model.version

    def test_unknown_model_is_not_found(self, contract_settings, prediction, served) -> None:
        model = next(iter(served.values()))
        request = zero_request(model)
        request.model_spec.name = UNKNOWN_MODEL

        error = rpc_error(prediction.Predict, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.NOT_FOUND

    def test_unknown_version_is_not_found(self, contract_settings, prediction, served) -> None:
        model = next(iter(served.values()))
        request = zero_request(model, version=10**9)

        error = rpc_error(prediction.Predict, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.NOT_FOUND

    def test_wrong_input_name_is_invalid(self, contract_settings, prediction, served) -> None:
        model = next(iter(served.values()))
        request = zero_request(model)
        request.inputs["pixels"].CopyFrom(request.inputs[INPUT_NAME])
        del request.inputs[INPUT_NAME]

        error = rpc_error(prediction.Predict, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_wrong_dtype_is_invalid(self, contract_settings, prediction, served) -> None:
        model = next(iter(served.values()))
        request = zero_request(model)
        images = np.zeros((1, model.input_height, model.input_width, 1), np.float32)
        request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images))

        error = rpc_error(prediction.Predict, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_wrong_shape_is_invalid(self, contract_settings, prediction, served) -> None:
        model = next(iter(served.values()))
        request = zero_request(model)
        images = np.zeros((1, model.input_height + 1, model.input_width, 1), np.uint8)
        request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images))

        error = rpc_error(prediction.Predict, request, contract_settings.serving_timeout_seconds)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


class TestServingClient:
    def test_checks_and_scores_every_model(self, contract_settings, served) -> None:
        size = max(max(model.input_height, model.input_width) for model in served.values())
        images = np.zeros((3, size, size), np.uint8)

        with ServingClient(contract_settings) as client:
            checked = client.check_models()
            scores = client.score(images)

        assert checked == served
        for name, model_scores in scores.items():
            assert model_scores.version == served[name].version
            assert model_scores.probabilities.shape == (3,)
            assert np.all(np.isfinite(model_scores.probabilities))
