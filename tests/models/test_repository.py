"""Model repository: version numbering, no reuse, atomic publish, metadata, listing."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mammo.errors import ModelRepositoryError
from models.repository import HIGHEST_VERSION_FILE, METADATA_FILE, STAGING_DIR, ModelRepository

TEST_INPUT_SIZE = 32
METADATA = {"input_size": TEST_INPUT_SIZE, "weights_source": "none", "training": "none"}


def test_empty_repository(tmp_path: Path):
    repository = ModelRepository(tmp_path / "missing")
    assert repository.versions("cnn") == []
    assert repository.latest_version("cnn") is None
    assert repository.list_all() == []


def test_publish_numbers_versions(tmp_path: Path, copy_export: Callable[[Path], None]):
    repository = ModelRepository(tmp_path)

    published = [repository.publish("cnn", copy_export, METADATA) for _ in range(3)]

    assert published == [1, 2, 3]
    assert repository.versions("cnn") == [1, 2, 3]
    assert repository.latest_version("cnn") == 3
    assert (tmp_path / "cnn" / "3" / "saved_model.pb").is_file()
    assert list((tmp_path / STAGING_DIR).iterdir()) == []


def test_publish_stores_metadata(tmp_path: Path, copy_export: Callable[[Path], None]):
    repository = ModelRepository(tmp_path)
    metadata = {**METADATA, "weights_source": "random", "weights_warning": "no weights"}

    version = repository.publish("vgg19", copy_export, metadata)
    stored = repository.version_metadata("vgg19", version)

    assert (tmp_path / "vgg19" / "1" / METADATA_FILE).is_file()
    assert stored["model_name"] == "vgg19"
    assert stored["version"] == 1
    assert stored["input_size"] == TEST_INPUT_SIZE
    assert stored["weights_source"] == "random"
    assert stored["weights_warning"] == "no weights"
    assert stored["training"] == "none"
    created_at = datetime.fromisoformat(stored["created_at"])
    assert created_at.utcoffset() == timedelta(0)


def test_missing_weights_fields_stored_as_none(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    version = repository.publish("cnn", copy_export, {"input_size": TEST_INPUT_SIZE})
    stored = repository.version_metadata("cnn", version)
    assert stored["weights_source"] is None
    assert stored["weights_warning"] is None


def test_deleted_version_not_reused(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    repository.publish("cnn", copy_export, METADATA)
    repository.publish("cnn", copy_export, METADATA)
    shutil.rmtree(tmp_path / "cnn" / "2")

    assert repository.publish("cnn", copy_export, METADATA) == 3
    assert repository.versions("cnn") == [1, 3]


def test_all_versions_deleted_not_reused(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    repository.publish("cnn", copy_export, METADATA)
    shutil.rmtree(tmp_path / "cnn" / "1")

    assert repository.latest_version("cnn") is None
    assert repository.publish("cnn", copy_export, METADATA) == 2


def test_lost_highest_file_uses_folders(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    repository.publish("cnn", copy_export, METADATA)
    (tmp_path / "cnn" / HIGHEST_VERSION_FILE).unlink()
    shutil.copytree(tmp_path / "cnn" / "1", tmp_path / "cnn" / "7")

    assert repository.publish("cnn", copy_export, METADATA) == 8


def test_corrupt_highest_file_raises(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / HIGHEST_VERSION_FILE).write_text("seven\n")

    with pytest.raises(ModelRepositoryError, match="'seven'"):
        repository.publish("cnn", copy_export, METADATA)
    assert repository.versions("cnn") == []


def test_versions_ignore_non_numeric_entries(tmp_path: Path):
    model_dir = tmp_path / "cnn"
    for entry in ("2", "10", "1", "tmp", "3a", "٣"):
        (model_dir / entry).mkdir(parents=True)
    (model_dir / "4").write_text("a file, not a version folder")

    assert ModelRepository(tmp_path).versions("cnn") == [1, 2, 10]


def test_failed_check_leaves_nothing(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    wrong_size = {**METADATA, "input_size": 64}

    with pytest.raises(ModelRepositoryError, match=r"\[None, 64, 64, 1\]"):
        repository.publish("cnn", copy_export, wrong_size)

    assert repository.versions("cnn") == []
    assert list((tmp_path / STAGING_DIR).iterdir()) == []
    assert repository.publish("cnn", copy_export, METADATA) == 1


def test_failed_export_leaves_nothing(tmp_path: Path):
    repository = ModelRepository(tmp_path)

    def write_export(folder: Path) -> None:
        (folder / "partial").write_text("half an export")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        repository.publish("cnn", write_export, METADATA)

    assert repository.versions("cnn") == []
    assert list((tmp_path / STAGING_DIR).iterdir()) == []


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = list(pool.map(lambda _: repository.publish("cnn", copy_export, METADATA),
                                 range(4)))

    assert sorted(versions) == [1, 2, 3, 4]
    assert repository.versions("cnn") == [1, 2, 3, 4]


def test_list_all_entries(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    repository.publish("vgg19", copy_export, METADATA)
    repository.publish("cnn", copy_export, METADATA)
    repository.publish("cnn", copy_export, METADATA)
    # A version copied in by hand, without the metadata file.
    shutil.copytree(tmp_path / "cnn" / "2", tmp_path / "cnn" / "5")
    (tmp_path / "cnn" / "5" / METADATA_FILE).unlink()

    entries = repository.list_all()

    assert [(entry["model_name"], entry["version"]) for entry in entries] == [
        ("cnn", 1), ("cnn", 2), ("cnn", 5), ("vgg19", 1)
    ]
    assert entries[0]["path"] == str(tmp_path / "cnn" / "1")
    assert entries[0]["input_size"] == TEST_INPUT_SIZE
    assert "metadata_error" not in entries[0]
    assert "mammo_version.json" in entries[2]["metadata_error"]


def test_version_metadata_missing_version(tmp_path: Path, copy_export):
    repository = ModelRepository(tmp_path)
    repository.publish("cnn", copy_export, METADATA)
    with pytest.raises(ModelRepositoryError, match=r"no version 4 .*published versions: \[1\]"):
        repository.version_metadata("cnn", 4)


@pytest.mark.parametrize("name", ["", ".staging", "../cnn", "cnn/1", "-cnn"])
def test_rejects_invalid_model_name(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match="name="):
        ModelRepository(tmp_path).versions(name)


@pytest.mark.parametrize("metadata", [{}, {"input_size": "32"}, {"input_size": True}])
def test_publish_requires_input_size(tmp_path: Path, copy_export, metadata):
    with pytest.raises(ValueError, match="input_size"):
        ModelRepository(tmp_path).publish("cnn", copy_export, metadata)
    assert not (tmp_path / STAGING_DIR).exists()
