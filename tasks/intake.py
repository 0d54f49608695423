"""Intake: find complete files in the watched folder and claim them for one run.

A run owns the folder ``work/<flow_run_id>/`` and holds an exclusive `fcntl.flock` on its
``.lock`` file while it lives. Files are claimed by an atomic rename from ``incoming/`` into
that folder, so two overlapping runs never get the same file: the second rename fails with
FileNotFoundError and that run skips the file. The kernel releases the lock when a run's
process dies, so the next run can tell a dead run's folder from a live one and reclaim its
files. Each claimed file gets a claim id, kept in its name across reclaims, which keys its
duplicate or quarantine record.

NOTE: flock works between processes of one host. Runs on several hosts over a network file
system need a lock manager that the file system honours; that setup is not supported yet.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mammo.errors import ConfigurationError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CLAIM_SEPARATOR = "__"


@dataclass(frozen=True)
class ClaimedFile:
    """A file this run owns: its path in the work folder and the name it arrived with."""

    claim_id: str
    path: Path
    original_name: str

    @classmethod
    def from_work_path(cls, path: Path) -> ClaimedFile:
        claim_id, _, encoded = path.name.partition(CLAIM_SEPARATOR)
        return cls(claim_id=claim_id, path=path, original_name=_decode_name(encoded))


def _encode_name(relative: Path) -> str:
    # Subfolders of incoming/ become part of one flat file name; '%' escapes keep it reversible.
    return "%2F".join(part.replace("%", "%25") for part in relative.parts)


def _decode_name(encoded: str) -> str:
    return "/".join(part.replace("%25", "%") for part in encoded.split("%2F"))


class WorkFolder:
    """The work folder of one run, locked for the run's lifetime.

    Use as a context manager: entering creates ``work/<run_id>/`` with its lock held; leaving
    releases the lock and removes the folder if every file in it has been moved out.
    """

    def __init__(self, work_root: Path, run_id: str) -> None:
        self.work_root = work_root
        self.run_id = run_id
        self.path = work_root / run_id
        self._lock_fd: int | None = None

    def __enter__(self) -> WorkFolder:
        self.work_root.mkdir(parents=True, exist_ok=True)
        # Lock the folder before it becomes visible under its final name, so no other run
        # ever sees it unlocked and mistakes it for a dead run's folder.
        staging = self.work_root / f".{self.run_id}.{uuid.uuid4().hex}"
        staging.mkdir()
        fd = os.open(staging / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self.path.exists():  # the same run id again, e.g. a retried flow run
            for leftover in self.path.iterdir():
                if leftover.name != LOCK_FILE:
                    os.replace(leftover, staging / leftover.name)
            shutil.rmtree(self.path)
        os.replace(staging, self.path)
        self._lock_fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        remaining = [p for p in self.files()]
        if not remaining:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            logger.warning("Run %s leaves %d files in %s for the next run to reclaim",
                           self.run_id, len(remaining), self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def files(self) -> list[ClaimedFile]:
        """Return the files this run holds, in name order."""
        return [ClaimedFile.from_work_path(p) for p in sorted(self.path.iterdir())
                if p.name != LOCK_FILE and p.is_file()]

    def claim(self, incoming_dir: Path, source: Path) -> ClaimedFile | None:
        """Move ``source`` into this work folder; None when another run claimed it first."""
        claim_id = str(uuid.uuid4())
        name = f"{claim_id}{CLAIM_SEPARATOR}{_encode_name(source.relative_to(incoming_dir))}"
        target = self.path / name
        try:
            os.rename(source, target)
        except FileNotFoundError:
            logger.debug("File %s was claimed by another run", source.name)
            return None
        except OSError as error:
            if error.errno == errno.EXDEV:
                raise ConfigurationError(
                    f"incoming folder {incoming_dir} and work folder {self.work_root} are on "
                    "different file systems, so files cannot be claimed by an atomic rename; "
                    "put both under MAMMO_DATA_DIR or on one file system"
                ) from error
            raise
        return ClaimedFile(claim_id=claim_id, path=target,
                           original_name=str(source.relative_to(incoming_dir)))

    def reclaim_orphans(self) -> list[ClaimedFile]:
        """Move files out of work folders whose run has died into this one.

        A folder is orphaned when its lock can be taken, because a live run holds its lock
        until it exits. Claim ids stay in the names, so recorded outcomes are found again.
        """
        reclaimed: list[ClaimedFile] = []
        for folder in sorted(self.work_root.iterdir()):
            if folder == self.path or not folder.is_dir() or folder.name.startswith("."):
                continue
            if not _is_orphaned(folder):
                continue
            for path in sorted(folder.iterdir()):
                if path.name == LOCK_FILE or not path.is_file():
                    continue
                target = self.path / path.name
                os.replace(path, target)
                reclaimed.append(ClaimedFile.from_work_path(target))
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("Reclaimed %d files from dead run %s", len(reclaimed), folder.name)
        return reclaimed


def _is_orphaned(folder: Path) -> bool:
    lock_path = folder / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True  # only a run that died before this module's staging rename leaves none
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def iter_candidate_files(incoming_dir: Path) -> Iterator[Path]:
    """Yield regular files under ``incoming_dir``, skipping hidden files and symlinks."""
    for root, dirs, files in os.walk(incoming_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                # NOTE: a symlink would be claimed as a link and archived without its target.
                logger.warning("Skipping symlink %s: copy the file itself into the incoming "
                               "folder", path.relative_to(incoming_dir))
                continue
            yield path


def wait_until_complete(paths: list[Path], *, stability_seconds: float,
                        max_wait_seconds: float) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into complete files and files still being written.

    A file is complete when its size and mtime have not changed for ``stability_seconds``.
    Younger files are watched for up to ``max_wait_seconds``; those still changing then are
    returned as pending and stay in the incoming folder for the next run.
    """
    deadline = time.monotonic() + max_wait_seconds
    last_seen: dict[Path, tuple[int, int, float]] = {}
    complete: list[Path] = []
    pending = list(paths)
    while pending:
        now_wall = time.time()
        still_pending: list[Path] = []
        for path in pending:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # claimed by another run or removed by the sender
            signature = (stat.st_size, stat.st_mtime_ns)
            previous = last_seen.get(path)
            last_seen[path] = (*signature, previous[2] if previous and
                               previous[:2] == signature else time.monotonic())
            age = now_wall - stat.st_mtime
            unchanged_for = time.monotonic() - last_seen[path][2]
            if age >= stability_seconds or unchanged_for >= stability_seconds:
                complete.append(path)
            else:
                still_pending.append(path)
        pending = still_pending
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, stability_seconds / 4)))
    return complete, pending
