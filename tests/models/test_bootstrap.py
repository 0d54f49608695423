"""Bootstrap: one untrained version per model, nothing added on a second run."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from mammo.errors import ConfigurationError
from mammo.settings import MODEL_NAMES, Settings
from models.backbone_weights import KERAS_WEIGHTS_FILES
from models.bootstrap import bootstrap_models
from models.repository import ModelRepository

TEST_INPUT_SIZE = 32
SMALL_SIZES = {name: TEST_INPUT_SIZE for name in MODEL_NAMES}


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = {
        "data_dir": tmp_path / "var",
        "weights_dir": tmp_path / "weights",
        "imagenet_weights": "imagenet",
        **overrides,
    }
    return Settings(**values)


def test_bootstrap_publishes_each_model_once(tmp_path: Path):
    settings = _settings(tmp_path)

    # allow_download=False: the weights folder is empty and tests must not reach the
    # internet, so every pretrained backbone falls back to random weights with a warning.
    first = bootstrap_models(settings, SMALL_SIZES, allow_download=False)

    assert [entry["model_name"] for entry in first] == list(MODEL_NAMES)
    assert [entry["version"] for entry in first] == [1, 1, 1, 1]
    assert all(entry["input_size"] == TEST_INPUT_SIZE for entry in first)
    assert all(entry["training"] == "none" for entry in first)
    sources = {entry["model_name"]: entry["weights_source"] for entry in first}
    assert sources == {"cnn": "none", "efficientnetb7": "random", "resnet50": "random",
                       "vgg19": "random"}
    warnings = {entry["model_name"]: entry["weights_warning"] for entry in first}
    assert warnings["cnn"] is None
    assert "efficientnetb7_notop.h5" in warnings["efficientnetb7"]

    second = bootstrap_models(settings, SMALL_SIZES, allow_download=False)

    assert second == []
    repository = ModelRepository(settings.model_repository)
    assert [(entry["model_name"], entry["version"]) for entry in repository.list_all()] == [
        (name, 1) for name in MODEL_NAMES
    ]


# Keras' legacy HDF5 writer converts variables through a deprecated NumPy path.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_bootstrap_uses_local_weights(tmp_path: Path, write_keras_weights_file):
    backbone = keras.applications.VGG19(
        include_top=False, weights=None, input_shape=(TEST_INPUT_SIZE, TEST_INPUT_SIZE, 3)
    )
    weights_path = write_keras_weights_file(
        backbone, tmp_path / "weights" / KERAS_WEIGHTS_FILES["vgg19"].file_name
    )
    settings = _settings(tmp_path, model_names=("vgg19",))

    (published,) = bootstrap_models(settings, {"vgg19": TEST_INPUT_SIZE}, allow_download=False)

    assert published["weights_source"] == "imagenet-local"
    assert published["weights_file"] == str(weights_path)
    assert published["weights_warning"] is None


def test_bootstrap_adds_only_missing_models(tmp_path: Path):
    settings = _settings(tmp_path, model_names=("cnn",), input_sizes={"cnn": TEST_INPUT_SIZE})
    bootstrap_models(settings, allow_download=False)
    more = _settings(tmp_path, model_names=("cnn", "vgg19"), imagenet_weights="none")

    published = bootstrap_models(more, {"vgg19": TEST_INPUT_SIZE}, allow_download=False)

    assert [(entry["model_name"], entry["version"]) for entry in published] == [("vgg19", 1)]
    assert published[0]["weights_source"] == "random"
    assert published[0]["weights_warning"] is None


def test_bootstrap_rejects_unknown_model(tmp_path: Path):
    settings = _settings(tmp_path, model_names=("cnn", "densenet"))
    with pytest.raises(ConfigurationError, match=r"\['densenet'\]"):
        bootstrap_models(settings, {"cnn": TEST_INPUT_SIZE})
    assert ModelRepository(settings.model_repository).list_all() == []


def test_bootstrap_rejects_small_size_before_building(tmp_path: Path):
    settings = _settings(tmp_path, model_names=("cnn", "vgg19"))
    with pytest.raises(ConfigurationError, match="vgg19.*input_size=16"):
        bootstrap_models(settings, {"cnn": TEST_INPUT_SIZE, "vgg19": 16})
    assert ModelRepository(settings.model_repository).list_all() == []
