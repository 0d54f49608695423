"""Intake: find complete files in the watched folder and claim them for one run.

A run owns the folder ``work/<flow_run_id>/`` and keeps an exclusive `fcntl.flock` on its
``.lock`` file while it lives. Files are claimed by an atomic rename from ``incoming/`` into
that folder, so two overlapping runs never get the same file: the second rename fails with
FileNotFoundError and that run skips the file. The kernel releases the lock when a run's
process dies, so the next run can tell a dead run's folder from a live one and reclaim its
files. Each claimed file gets a claim id, kept in its name across reclaims, which keys its
duplicate or quarantine record.

Every non-hidden entry below ``incoming/`` that is not a folder is an input: regular files,
and also symbolic links, FIFOs, sockets and device files, which are claimed like files (the
rename moves the link itself, never its target) so that preparation can record them as
``not_regular_file``. Folders are walked and each file inside is an input of its own; a
folder left empty is removed once it has not changed for the stability time. Names starting
with a dot are skipped in ``incoming/`` (senders write partial files under such names) and
are private to the run in a work folder.

NOTE: flock works between processes of one host. Runs on several hosts over a network file
system need a lock manager that the file system honours; that setup is not supported yet.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mammo.errors import ConfigurationError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CLAIM_SEPARATOR = "__"

#: Maximum length of a file name, in bytes, on Linux file systems (NAME_MAX).
MAX_NAME_BYTES = 255

#: Characters kept from the end of a shortened name, so the extension survives.
KEPT_NAME_TAIL = 16

#: Marks where a name too long for the work folder was shortened.
SHORTENED_MARK = "…"


@dataclass(frozen=True)
class ClaimedFile:
    """A file this run owns: its path in the work folder and the name it arrived with."""

    claim_id: str
    path: Path
    original_name: str

    @classmethod
    def from_work_path(cls, path: Path) -> ClaimedFile:
        claim_id, _, encoded = path.name.partition(CLAIM_SEPARATOR)
        return cls(claim_id=claim_id, path=path,
                   original_name=_printable(_decode_name(encoded)))


def _encode_name(relative: Path) -> str:
    # Subfolders of incoming/ become part of one flat file name; '%' escapes keep it reversible.
    return "%2F".join(part.replace("%", "%25") for part in relative.parts)


def _decode_name(encoded: str) -> str:
    return "/".join(part.replace("%25", "%") for part in encoded.split("%2F"))


def _fit_name(name: str, max_bytes: int) -> str:
    """Shorten ``name`` to at most ``max_bytes`` encoded bytes, keeping its last characters."""
    if len(os.fsencode(name)) <= max_bytes:
        return name
    tail = name[-KEPT_NAME_TAIL:]
    head = name[:-KEPT_NAME_TAIL]
    while head and len(os.fsencode(head + SHORTENED_MARK + tail)) > max_bytes:
        head = head[:-1]
    return head + SHORTENED_MARK + tail


def _printable(name: str) -> str:
    """Return ``name`` with bytes that are not UTF-8 replaced by U+FFFD.

    Python represents such bytes in file names as lone surrogates (PEP 383), and the
    database drivers cannot encode those. A Latin-1 name from a Windows share is the usual
    case.
    """
    return os.fsencode(name).decode("utf-8", errors="replace")


def _is_folder(path: Path) -> bool:
    """Return True for a real folder; a symbolic link to a folder is not one."""
    return stat.S_ISDIR(path.lstat().st_mode)


class WorkFolder:
    """The work folder of one run, locked for the run's lifetime.

    Use as a context manager: entering creates ``work/<run_id>/`` with its lock held; leaving
    releases the lock and removes the folder if every file in it has been moved out.
    """

    def __init__(self, work_root: Path, run_id: str) -> None:
        self.work_root = work_root
        self.run_id = run_id
        self.path = work_root / run_id
        #: Run ids of the dead runs whose work folders `reclaim_orphans` emptied.
        self.dead_run_ids: list[str] = []
        self._lock_fd: int | None = None

    def __enter__(self) -> WorkFolder:
        self.work_root.mkdir(parents=True, exist_ok=True)
        # Lock the folder before it becomes visible under its final name, so no other run
        # ever finds it unlocked and mistakes it for a dead run's folder.
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
        """Return the inputs this run holds, in name order, symbolic links included."""
        return [ClaimedFile.from_work_path(p) for p in sorted(self.path.iterdir())
                if not p.name.startswith(".") and not _is_folder(p)]

    def claim(self, incoming_dir: Path, source: Path) -> ClaimedFile | None:
        """Move ``source`` into this work folder; None when another run claimed it first.

        The returned `ClaimedFile` carries the full original name. A name too long for the
        work folder is shortened there, so a run that reclaims the file after a crash
        records the shortened name.
        """
        claim_id = str(uuid.uuid4())
        prefix = f"{claim_id}{CLAIM_SEPARATOR}"
        encoded = _encode_name(source.relative_to(incoming_dir))
        fitted = _fit_name(encoded, MAX_NAME_BYTES - len(prefix))
        if fitted != encoded:
            logger.warning("Claim %s: the file name is %d bytes long, more than a work "
                           "folder name allows; it is stored shortened",
                           claim_id, len(os.fsencode(encoded)))
        target = self.path / f"{prefix}{fitted}"
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
                           original_name=_printable(str(source.relative_to(incoming_dir))))

    def reclaim_orphans(self) -> list[ClaimedFile]:
        """Move files out of work folders whose run has died into this one.

        A folder is orphaned when its lock can be taken, because a live run holds its lock
        until it exits. This run holds a dead folder's lock while it empties the folder, so
        runs that start together never reclaim from the same folder at once; a file that
        vanishes meanwhile was taken by a run that came first. Hidden staging folders of
        runs that died while entering are reclaimed too. Claim ids stay in the names, so
        recorded outcomes are found again.
        """
        reclaimed: list[ClaimedFile] = []
        for folder in sorted(self.work_root.iterdir()):
            if folder == self.path:
                continue
            try:
                if not _is_folder(folder):
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile by the run that reclaimed it or that ended
            lock_fd = _lock_if_orphaned(folder)
            if lock_fd is None:
                continue
            try:
                moved = self._move_files_from(folder)
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                if lock_fd != NO_LOCK_FILE:
                    os.close(lock_fd)
            if moved:
                logger.info("Reclaimed %d files from dead run %s", len(moved), folder.name)
            if not folder.name.startswith("."):
                self.dead_run_ids.append(folder.name)
            reclaimed.extend(moved)
        return reclaimed

    def _move_files_from(self, folder: Path) -> list[ClaimedFile]:
        moved: list[ClaimedFile] = []
        try:
            entries = sorted(folder.iterdir())
        except FileNotFoundError:
            return moved  # removed by another run that reclaimed it first
        for path in entries:
            # Hidden names are the dead run's own temporary files.
            if path.name.startswith("."):
                continue
            try:
                if _is_folder(path):
                    continue
                target = self.path / path.name
                os.replace(path, target)
            except FileNotFoundError:
                continue  # reclaimed by another run
            moved.append(ClaimedFile.from_work_path(target))
        return moved


#: Returned by `_lock_if_orphaned` for a run folder without a lock file: nothing to close.
NO_LOCK_FILE = -1


def _lock_if_orphaned(folder: Path) -> int | None:
    """Take the lock of a dead run's ``folder`` and return its descriptor, or None if the
    folder belongs to a live run.

    Returns `NO_LOCK_FILE` for a run folder without a lock file, which only a run removing
    a folder it reclaimed leaves. A hidden staging folder without one may belong to a run
    that is creating it, so it counts as live.
    """
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return None if folder.name.startswith(".") else NO_LOCK_FILE
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def iter_candidate_files(incoming_dir: Path) -> Iterator[Path]:
    """Yield every input under ``incoming_dir``: each entry that is not a folder.

    Hidden entries (names starting with a dot) are skipped, with their contents. Symbolic
    links are yielded, not followed, even when they point to a folder.
    """
    for root, dirs, files in os.walk(incoming_dir):
        folder = Path(root)
        # os.walk lists a symbolic link to a folder among the folders without following it.
        linked = sorted(d for d in dirs if not d.startswith(".") and (folder / d).is_symlink())
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in sorted([*files, *linked]):
            if not name.startswith("."):
                yield folder / name


def remove_empty_folders(incoming_dir: Path, *, min_age_seconds: float) -> int:
    """Remove empty, non-hidden folders below ``incoming_dir`` unchanged for a while.

    A folder younger than ``min_age_seconds`` is kept, because a sender may have just
    created it and not yet written into it. Returns the number of folders removed.
    """
    removed = 0
    now = time.time()
    for root, dirs, _ in os.walk(incoming_dir, topdown=False):
        for name in dirs:
            folder = Path(root) / name
            hidden = any(part.startswith(".") for part in folder.relative_to(incoming_dir).parts)
            if hidden or folder.is_symlink():
                continue
            try:
                if now - folder.stat().st_mtime < min_age_seconds:
                    continue
                folder.rmdir()
            except OSError:
                continue  # not empty, or removed by someone else
            removed += 1
    return removed


def wait_until_complete(paths: list[Path], *, stability_seconds: float,
                        max_wait_seconds: float) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into complete files and files still being written.

    A file is complete when its size and mtime have not changed for ``stability_seconds``.
    Younger files are watched for up to ``max_wait_seconds``. Those still changing then are
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
                # lstat: a symbolic link is judged by itself, and a dangling one still counts.
                status = path.lstat()
            except FileNotFoundError:
                continue  # claimed by another run or removed by the sender
            signature = (status.st_size, status.st_mtime_ns)
            previous = last_seen.get(path)
            last_seen[path] = (*signature, previous[2] if previous and
                               previous[:2] == signature else time.monotonic())
            age = now_wall - status.st_mtime
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
