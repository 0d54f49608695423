"""Backbone weight resolution: local weights folder, failed download, random fallback."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import keras
import numpy as np
import pytest

from models.architectures import BACKBONE_LAYER_NAME, build_vgg19
from models.backbone_weights import KERAS_WEIGHTS_FILES, resolve_backbone_weights

TEST_INPUT_SIZE = 32


def _closed_local_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on, so connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Keras' legacy HDF5 writer converts variables through a deprecated NumPy path.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_local_weights_file_loaded(tmp_path: Path, write_keras_weights_file):
    source = keras.applications.VGG19(
        include_top=False, weights=None, input_shape=(TEST_INPUT_SIZE, TEST_INPUT_SIZE, 3)
    )
    weights_dir = tmp_path / "weights"
    write_keras_weights_file(source, weights_dir / KERAS_WEIGHTS_FILES["vgg19"].file_name)

    resolved = resolve_backbone_weights("vgg19", weights_dir=weights_dir, allow_download=False)

    assert resolved.source == "imagenet-local"
    assert resolved.weights == weights_dir / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert resolved.warning is None
    model = build_vgg19(TEST_INPUT_SIZE, resolved.weights)
    loaded = model.get_layer(BACKBONE_LAYER_NAME).get_weights()
    expected = source.get_weights()
    assert len(loaded) == len(expected)
    for loaded_array, expected_array in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(loaded_array, expected_array)


def test_missing_file_without_download_gives_random(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="models.backbone_weights"):
        resolved = resolve_backbone_weights("resnet50", weights_dir=tmp_path,
                                            allow_download=False)

    assert resolved.source == "random"
    assert resolved.weights is None
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in resolved.warning
    assert [record.getMessage() for record in caplog.records] == [resolved.warning]
    assert caplog.records[0].levelno == logging.WARNING


def test_failed_download_gives_random(tmp_path: Path, caplog):
    prefix = f"http://127.0.0.1:{_closed_local_port()}/"

    with caplog.at_level(logging.WARNING, logger="models.backbone_weights"):
        resolved = resolve_backbone_weights("efficientnetb7", cache_dir=tmp_path,
                                            download_url_prefix=prefix)

    assert resolved.source == "random"
    assert resolved.weights is None
    assert f"{prefix}efficientnetb7_notop.h5 failed" in resolved.warning
    assert caplog.records[-1].levelno == logging.WARNING


def test_mode_none_gives_random_without_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="models.backbone_weights"):
        resolved = resolve_backbone_weights("vgg19", mode="none")

    assert resolved.source == "random"
    assert resolved.weights is None
    assert resolved.warning is None
    assert caplog.records == []


def test_cnn_has_no_backbone_weights():
    resolved = resolve_backbone_weights("cnn", weights_dir=Path("/nonexistent"))
    assert resolved.source == "none"
    assert resolved.weights is None
    assert resolved.warning is None


def test_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode='pretrained'"):
        resolve_backbone_weights("vgg19", mode="pretrained")
