"""Intake under overlap and crashes, without the flow: runs that reclaim the same dead run's
files at the same moment, and a run killed while it created its work folder."""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from pathlib import Path

from tasks.intake import LOCK_FILE, WorkFolder, iter_candidate_files

DEAD_RUNS = 4
FILES_PER_DEAD_RUN = 300
LIVE_RUNS = 4


def _leave_dead_run(work_root: Path, name: str, files: int) -> list[str]:
    """Create the folder a killed run leaves: a free lock file and claimed files."""
    folder = work_root / name
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).touch()
    names = []
    for index in range(files):
        claimed_name = f"{name}-claim-{index:04d}__image{index}.dcm"
        (folder / claimed_name).write_bytes(b"x")
        names.append(claimed_name)
    return names


def test_concurrent_reclaims_take_each_file_once(tmp_path):
    work_root = tmp_path / "work"
    expected = []
    for number in range(DEAD_RUNS):
        expected += _leave_dead_run(work_root, f"dead-{number}", FILES_PER_DEAD_RUN)

    start = threading.Barrier(LIVE_RUNS)
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def live_run(number: int) -> None:
        try:
            with WorkFolder(work_root, f"live-{number}") as work:
                start.wait()
                results[number] = [c.path.name for c in work.reclaim_orphans()]
                for claimed in work.files():
                    claimed.path.unlink()
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=live_run, args=(n,)) for n in range(LIVE_RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [repr(e) for e in errors] == []
    taken = Counter(name for names in results.values() for name in names)
    assert sorted(taken) == sorted(expected)
    assert max(taken.values()) == 1
    assert list(work_root.iterdir()) == []


def test_concurrent_claims_take_each_file_once(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    names = [f"image{index:04d}.dcm" for index in range(DEAD_RUNS * FILES_PER_DEAD_RUN)]
    for name in names:
        (incoming / name).write_bytes(b"x")

    start = threading.Barrier(LIVE_RUNS)
    claimed: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def live_run(number: int) -> None:
        try:
            with WorkFolder(tmp_path / "work", f"live-{number}") as work:
                candidates = list(iter_candidate_files(incoming))
                start.wait()
                taken = [c for path in candidates if (c := work.claim(incoming, path))]
                claimed[number] = [c.original_name for c in taken]
                for item in taken:
                    item.path.unlink()
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=live_run, args=(n,)) for n in range(LIVE_RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [repr(e) for e in errors] == []
    taken = Counter(name for names in claimed.values() for name in names)
    assert sorted(taken) == names
    assert max(taken.values()) == 1
    assert list(incoming.iterdir()) == []


def test_staging_folder_of_dead_run_is_reclaimed(tmp_path):
    work_root = tmp_path / "work"
    # A run with a reused run id was killed after moving its old files into its staging
    # folder and before renaming that folder into place.
    staging = work_root / ".run-a.0123abcd"
    staging.mkdir(parents=True)
    (staging / LOCK_FILE).touch()
    (staging / "claim-1__image.dcm").write_bytes(b"x")

    with WorkFolder(work_root, "run-b") as work:
        reclaimed = work.reclaim_orphans()
        assert [c.claim_id for c in reclaimed] == ["claim-1"]
        assert not staging.exists()
        reclaimed[0].path.unlink()


def test_staging_folder_of_live_run_is_left(tmp_path):
    work_root = tmp_path / "work"
    staging = work_root / ".run-a.0123abcd"
    staging.mkdir(parents=True)
    lock_fd = os.open(staging / LOCK_FILE, os.O_CREAT | os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (staging / "claim-1__image.dcm").write_bytes(b"x")
    unlocked = work_root / ".run-c.4567cdef"  # created, lock file not yet made
    unlocked.mkdir()
    try:
        with WorkFolder(work_root, "run-b") as work:
            assert work.reclaim_orphans() == []
        assert (staging / "claim-1__image.dcm").exists()
        assert unlocked.exists()
    finally:
        os.close(lock_fd)
