"""Fixtures for the model tests: small exports and Keras-format weight files.

Every model is built at `TEST_INPUT_SIZE` (32 pixels, the smallest size the Keras
applications accept) to keep the run short on a CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import pytest
from keras.src.legacy.saving import legacy_h5_format

from models.architectures import build_classifier
from models.export import export_saved_model

TEST_INPUT_SIZE = 32


def _write_keras_weights_file(model: keras.Model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    return path


@pytest.fixture
def write_keras_weights_file() -> Callable[[keras.Model, Path], Path]:
    """A function that writes a model's weights in the layout of Keras' ImageNet files.

    Keras 3's `Model.save_weights` writes only the newer ``.weights.h5`` layout, but the
    files that keras.applications downloads, and so the files a site puts into its weights
    folder, use the legacy HDF5 layout.
    """
    return _write_keras_weights_file


@pytest.fixture(scope="session")
def cnn_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN export at the test size that passes `check_saved_model`, shared by the session.

    Treat it as read-only; copy it with `copy_export` before changing anything.
    """
    model = build_classifier("cnn", TEST_INPUT_SIZE)
    export_dir = tmp_path_factory.mktemp("cnn-export") / "export"
    export_saved_model(model, export_dir, TEST_INPUT_SIZE, model_name="cnn")
    return export_dir


@pytest.fixture
def copy_export(cnn_export: Path) -> Callable[[Path], None]:
    """A ``write_export`` callable for `ModelRepository.publish` that copies `cnn_export`."""

    def write_export(folder: Path) -> None:
        shutil.copytree(cnn_export, folder, dirs_exist_ok=True)

    return write_export
