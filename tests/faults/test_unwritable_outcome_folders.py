"""An archive or quarantine folder that rejects the move of a file.

Running as root, ``chmod`` does not stop writes, so the tests use two methods that stop root
too: the immutable attribute (``chattr +i``, where the file system and the capabilities allow
it) on a study's archive folder and on a quarantine reason folder, and a regular file in
place of those folders. Either way, moving a file there raises an OSError, as a full disk
does. NOTE: a real ENOSPC needs a small file system, such as a loop device or tmpfs, which
these tests do not mount.

The run must go on and record every outcome. Each file that cannot be moved stays in the
work folder, and its error is logged with the path. Once the folders are fixed, the next run
moves the files without recording any input twice.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import audit_outcomes, write_inputs

INSTANCES = 12
NOT_DICOM = 3
BLOCKED_STUDIES = 4


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def move_errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("tasks.file_outcomes")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


class Blocker:
    """Makes folders reject new entries, and undoes it."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.blocked: list[Path] = []

    def block(self, folder: Path) -> None:
        if self.method == "immutable_folder":
            folder.mkdir(parents=True, exist_ok=True)
            if not _chattr("+i", folder):
                pytest.skip("chattr +i is not supported here (file system or capability)")
        else:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.write_text("a file where the folder should be\n")
        self.blocked.append(folder)

    def unblock(self) -> None:
        for folder in self.blocked:
            if self.method == "immutable_folder":
                _chattr("-i", folder)
            else:
                folder.unlink()
        self.blocked.clear()


@pytest.fixture(params=["immutable_folder", "file_in_place_of_folder"])
def blocker(request) -> Iterator[Blocker]:
    blocker = Blocker(request.param)
    yield blocker
    blocker.unblock()  # before pytest removes tmp_path, which an immutable folder would stop


def test_unwritable_folders_keep_files_and_run_goes_on(fault_env, tmp_path, blocker,
                                                         move_errors):
    from flows.process_incoming import process_incoming

    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, not_dicom=NOT_DICOM,
                          seed=51)
    blocked_studies = [study for study, _ in list(inputs.instances.values())[:BLOCKED_STUDIES]]
    for study in blocked_studies:
        blocker.block(data_dir / "archive" / study)
    blocker.block(data_dir / "quarantine" / "not_dicom")

    first = process_incoming()

    assert first["scored"] == INSTANCES
    assert first["quarantined"] == NOT_DICOM
    left = sorted(p for p in (data_dir / "work").rglob("*") if p.is_file() and p.name != ".lock")
    assert len(left) == BLOCKED_STUDIES + NOT_DICOM
    assert len(move_errors.messages) == BLOCKED_STUDIES + NOT_DICOM
    for path in left:
        assert any(str(path) in message for message in move_errors.messages), path
    for study in blocked_studies:
        assert any(str(data_dir / "archive" / study) in message
                   for message in move_errors.messages), study
    archived = [p for p in (data_dir / "archive").rglob("*.dcm") if p.is_file()]
    assert len(archived) == INSTANCES - BLOCKED_STUDIES
    # Every outcome is recorded although some files could not be moved.
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    assert audit.lost == []
    assert audit.doubled == []

    blocker.unblock()
    second = process_incoming()

    assert second["files_claimed"] == BLOCKED_STUDIES + NOT_DICOM
    assert second["scored"] == 0
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    assert audit.clean, audit.summary()
    assert audit.scored_instances == INSTANCES
    assert audit.quarantine_records == NOT_DICOM
    assert audit.quarantine_files == NOT_DICOM
