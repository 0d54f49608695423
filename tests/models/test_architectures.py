"""The four architectures: serving contract, preprocessing inside the graph, freezing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mammo.settings import MODEL_NAMES
from models.architectures import (
    BACKBONE_LAYER_NAME,
    BUILDERS,
    INPUT_NAME,
    OUTPUT_NAME,
    build_classifier,
    build_vgg19,
    set_backbone_trainable,
    validate_input_size,
)
from models.input_layers import GrayscaleToBackboneInput

# The smallest size that the Keras applications accept, to keep the tests fast.
TEST_INPUT_SIZE = 32


@pytest.fixture(scope="module", params=MODEL_NAMES)
def classifier(request) -> keras.Model:
    model = build_classifier(request.param, TEST_INPUT_SIZE, backbone_weights=None)
    yield model
    del model
    keras.backend.clear_session()


def test_builders_cover_every_model_name():
    assert tuple(BUILDERS) == MODEL_NAMES


def test_classifier_input_contract(classifier):
    (image,) = classifier.inputs
    assert image.name == INPUT_NAME
    assert image.dtype == "uint8"
    assert tuple(image.shape) == (None, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1)


def test_classifier_output_contract(classifier):
    assert classifier.output_names == [OUTPUT_NAME]
    assert tuple(classifier.output.shape) == (None, 1)
    assert classifier.output.dtype == "float32"


def test_classifier_predicts_probabilities(classifier):
    images = np.random.default_rng(0).integers(
        0, 256, (3, TEST_INPUT_SIZE, TEST_INPUT_SIZE, 1), dtype=np.uint8
    )
    probabilities = classifier.predict_on_batch(images)
    assert probabilities.shape == (3, 1)
    assert probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_pretrained_backbone_built_frozen(classifier):
    if classifier.name == "cnn":
        assert BACKBONE_LAYER_NAME not in [layer.name for layer in classifier.layers]
        return
    backbone = classifier.get_layer(BACKBONE_LAYER_NAME)
    assert not backbone.trainable
    assert backbone.trainable_weights == []
    assert classifier.trainable_weights, "the head must stay trainable"


@pytest.mark.parametrize("mode, module", [
    ("resnet50", keras.applications.resnet50),
    ("vgg19", keras.applications.vgg19),
    ("efficientnet", keras.applications.efficientnet),
])
def test_input_layer_applies_backbone_preprocessing(mode, module):
    gray = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    expected = module.preprocess_input(np.repeat(gray.astype(np.float32), 3, axis=-1))
    actual = keras.ops.convert_to_numpy(GrayscaleToBackboneInput(mode)(gray))
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_input_layer_rescales_for_cnn():
    gray = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 3, 1, 1)
    actual = keras.ops.convert_to_numpy(GrayscaleToBackboneInput("rescale")(gray))
    np.testing.assert_allclose(actual.ravel(), [0.0, 0.2, 1.0], rtol=1e-6)


def test_input_layer_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode='inception'"):
        GrayscaleToBackboneInput("inception")


def test_build_classifier_rejects_unknown_name():
    with pytest.raises(ValueError, match="name='densenet'"):
        build_classifier("densenet", TEST_INPUT_SIZE)


def test_cnn_rejects_backbone_weights():
    with pytest.raises(ValueError, match="backbone_weights"):
        BUILDERS["cnn"](TEST_INPUT_SIZE, "imagenet")


@pytest.mark.parametrize("size, expected", [(None, 224), (32, 32), (600, 600), (2048, 2048)])
def test_validate_input_size_accepts(size, expected):
    assert validate_input_size(size) == expected


@pytest.mark.parametrize("size", [31, 0, -1, 2049, 64.0, True, "224"])
def test_validate_input_size_rejects(size):
    with pytest.raises(ValueError, match="input_size"):
        validate_input_size(size)


def test_validate_input_size_named_limits():
    assert validate_input_size(None, default_size=600) == 600
    with pytest.raises(ValueError, match="between 64 and 2048"):
        validate_input_size(32, min_size=64)


def test_builder_rejects_small_input_size():
    with pytest.raises(ValueError, match="Received: input_size=16"):
        build_classifier("resnet50", 16)


@pytest.fixture(scope="module")
def vgg19() -> keras.Model:
    return build_vgg19(TEST_INPUT_SIZE, backbone_weights=None)


class TestSetBackboneTrainable:
    def test_int_unfreezes_top_layers(self, vgg19):
        backbone = vgg19.get_layer(BACKBONE_LAYER_NAME)
        assert set_backbone_trainable(vgg19, 3) == 3
        flags = [layer.trainable for layer in backbone.layers]
        assert flags[-3:] == [True, True, True]
        assert not any(flags[:-3])

    def test_fraction_rounds_up(self, vgg19):
        backbone = vgg19.get_layer(BACKBONE_LAYER_NAME)
        expected = -(-len(backbone.layers) // 10)
        assert set_backbone_trainable(vgg19, 0.1) == expected

    def test_zero_freezes_again(self, vgg19):
        set_backbone_trainable(vgg19, 1.0)
        assert set_backbone_trainable(vgg19, 0) == 0
        assert vgg19.get_layer(BACKBONE_LAYER_NAME).trainable_weights == []

    def test_too_many_layers_warns(self, vgg19):
        backbone = vgg19.get_layer(BACKBONE_LAYER_NAME)
        with pytest.warns(UserWarning, match="more layers than the backbone has"):
            count = set_backbone_trainable(vgg19, 10_000)
        assert count == len(backbone.layers)  # VGG19 has no BatchNormalization layers

    @pytest.mark.parametrize("value", [1.5, -0.1, -1, True, "all"])
    def test_rejects_invalid_amount(self, vgg19, value):
        with pytest.raises(ValueError, match="fraction_or_layers"):
            set_backbone_trainable(vgg19, value)

    def test_rejects_model_without_backbone(self):
        cnn = build_classifier("cnn", TEST_INPUT_SIZE)
        with pytest.raises(ValueError, match="'cnn'"):
            set_backbone_trainable(cnn, 0.5)


def test_batch_norm_stays_frozen_when_unfrozen():
    model = build_classifier("resnet50", TEST_INPUT_SIZE, backbone_weights=None)
    backbone = model.get_layer(BACKBONE_LAYER_NAME)
    set_backbone_trainable(model, 1.0)
    batch_norms = [layer for layer in backbone.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    convolutions = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert batch_norms
    assert not any(layer.trainable for layer in batch_norms)
    assert all(layer.trainable for layer in convolutions)
