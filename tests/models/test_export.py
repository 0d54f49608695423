"""SavedModel export: serving signature, warmup records, contract check, weight restore."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from mammo.errors import ModelRepositoryError
from models.architectures import build_classifier
from models.export import (
    WARMUP_FILE,
    check_saved_model,
    export_saved_model,
    restore_exported_weights,
    write_warmup_requests,
)
from serving.servable_manager import load_servable, read_signature_defs
from serving.warmup import replay_warmup_records

TEST_INPUT_SIZE = 32


def _random_images(batch_size: int) -> np.ndarray:
    return np.random.default_rng(7).integers(
        0, 256, (batch_size, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1), dtype=np.uint8
    )


def _export_module(export_dir: Path, function: tf.types.experimental.PolymorphicFunction,
                   input_size: int = TEST_INPUT_SIZE) -> Path:
    """Save a bare signature that breaks the contract, with valid warmup records."""
    tf.saved_model.save(tf.Module(), str(export_dir), signatures={"serving_default": function})
    write_warmup_requests(export_dir, input_size, "broken")
    return export_dir


def test_export_passes_check(cnn_export: Path):
    check_saved_model(cnn_export, TEST_INPUT_SIZE)


def test_exported_signature_contract(cnn_export: Path):
    signature = tf.saved_model.load(str(cnn_export)).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.uint8
    assert inputs["image"].shape.as_list() == [None, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1]
    outputs = signature.structured_outputs
    assert list(outputs) == ["malignancy_probability"]
    assert outputs["malignancy_probability"].dtype == tf.float32
    assert outputs["malignancy_probability"].shape.as_list() == [None, 1]


def test_exported_signature_matches_model(tmp_path: Path):
    model = build_classifier("cnn", TEST_INPUT_SIZE)
    images = _random_images(4)
    expected = model.predict_on_batch(images)
    export_saved_model(model, tmp_path / "export", TEST_INPUT_SIZE)

    signature = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    actual = signature(image=tf.constant(images))["malignancy_probability"].numpy()

    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_export_stores_weights_once(cnn_export: Path):
    reader = tf.train.load_checkpoint(str(cnn_export / "variables" / "variables"))
    stored = [name for name in reader.get_variable_to_shape_map()
              if name.startswith("model_variables/") and name.endswith("VARIABLE_VALUE")]
    model = build_classifier("cnn", TEST_INPUT_SIZE)
    assert len(stored) == len(model.variables)


def test_warmup_record_is_prediction_log(cnn_export: Path):
    records = list(tf.data.TFRecordDataset(str(cnn_export / WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.WhichOneof("log_type") == "predict_log"
    request = log.predict_log.request
    assert request.model_spec.name == "cnn"
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["image"]
    image = tf.make_ndarray(request.inputs["image"])
    assert image.dtype == np.uint8
    assert image.shape == (1, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1)


def test_warmup_records_match_signature(cnn_export: Path, tmp_path: Path):
    export_dir = shutil.copytree(cnn_export, tmp_path / "export")
    write_warmup_requests(export_dir, TEST_INPUT_SIZE, "cnn", batch_sizes=(1, 3))
    signature = read_signature_defs(export_dir)["serving_default"]

    records = list(tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE)).as_numpy_iterator())

    assert len(records) == 2
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert set(request.inputs) == set(signature.inputs)
        for name, tensor in request.inputs.items():
            expected = signature.inputs[name]
            assert tensor.dtype == expected.dtype
            shape = [dim.size for dim in tensor.tensor_shape.dim]
            expected_shape = [dim.size for dim in expected.tensor_shape.dim]
            assert len(shape) == len(expected_shape)
            for size, expected_size in zip(shape, expected_shape):
                assert expected_size in (-1, size), f"shape {shape} vs {expected_shape}"


def test_warmup_replays_in_local_server(cnn_export: Path):
    servable = load_servable("cnn", 1, cnn_export)

    result = replay_warmup_records(servable)

    assert result.requests == 1


def test_warmup_one_record_per_batch_size(tmp_path: Path):
    path = write_warmup_requests(tmp_path, TEST_INPUT_SIZE, "cnn", batch_sizes=(1, 4))
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    shapes = [
        tf.make_ndarray(
            prediction_log_pb2.PredictionLog.FromString(record).predict_log.request.inputs["image"]
        ).shape
        for record in records
    ]
    assert shapes == [
        (1, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1),
        (4, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1),
    ]


def test_check_rejects_wrong_input_size(cnn_export: Path):
    expected = r"input 'image' must be uint8 \[None, 64, 64, 1\]"
    with pytest.raises(ModelRepositoryError, match=expected) as error:
        check_saved_model(cnn_export, 64)
    assert str(cnn_export) in str(error.value)


def test_check_rejects_missing_warmup(cnn_export: Path, tmp_path: Path):
    export_dir = shutil.copytree(cnn_export, tmp_path / "export")
    (export_dir / WARMUP_FILE).unlink()
    with pytest.raises(ModelRepositoryError, match="warmup records"):
        check_saved_model(export_dir, TEST_INPUT_SIZE)


def test_check_rejects_missing_saved_model(tmp_path: Path):
    with pytest.raises(ModelRepositoryError, match="saved_model.pb is missing"):
        check_saved_model(tmp_path, TEST_INPUT_SIZE)


def test_check_rejects_float_input(tmp_path: Path):
    @tf.function(input_signature=[tf.TensorSpec([None, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1],
                                                tf.float32, name="image")])
    def serve(image):
        return {"malignancy_probability": tf.reduce_mean(image, axis=[1, 2])}

    export_dir = _export_module(tmp_path / "export", serve)
    with pytest.raises(ModelRepositoryError, match="found float32"):
        check_saved_model(export_dir, TEST_INPUT_SIZE)


def test_check_rejects_wrong_output_name(tmp_path: Path):
    @tf.function(input_signature=[tf.TensorSpec([None, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1],
                                                tf.uint8, name="image")])
    def serve(image):
        return {"output_0": tf.zeros([tf.shape(image)[0], 1])}

    export_dir = _export_module(tmp_path / "export", serve)
    expected = r"outputs must be \['malignancy_probability'\]"
    with pytest.raises(ModelRepositoryError, match=expected):
        check_saved_model(export_dir, TEST_INPUT_SIZE)


def test_check_rejects_probability_out_of_range(tmp_path: Path):
    @tf.function(input_signature=[tf.TensorSpec([None, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1],
                                                tf.uint8, name="image")])
    def serve(image):
        return {"malignancy_probability": tf.fill([tf.shape(image)[0], 1], 2.0)}

    export_dir = _export_module(tmp_path / "export", serve)
    with pytest.raises(ModelRepositoryError, match=r"in \[0, 1\]"):
        check_saved_model(export_dir, TEST_INPUT_SIZE)


def test_restore_exported_weights(cnn_export: Path):
    exported = tf.saved_model.load(str(cnn_export)).signatures["serving_default"]
    images = _random_images(2)
    expected = exported(image=tf.constant(images))["malignancy_probability"].numpy()

    model = build_classifier("cnn", TEST_INPUT_SIZE)
    restore_exported_weights(model, cnn_export)

    np.testing.assert_allclose(model.predict_on_batch(images), expected, rtol=1e-5, atol=1e-6)


def test_restore_rejects_other_input_size(cnn_export: Path):
    model = build_classifier("cnn", 64)
    with pytest.raises(ModelRepositoryError, match="same architecture and input size"):
        restore_exported_weights(model, cnn_export)
