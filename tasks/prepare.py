"""Turn a batch of claimed files into canonical images, duplicates and rejections.

For each file, in this order: hash the bytes, read and check the DICOM header, decide whether
the instance is new, already scored (a duplicate), or reuses a scored SOPInstanceUID with other
content (a conflict), and preprocess only new instances. An `InputRejected` from any step
becomes a rejection with its reason code; the other files of the batch go on.

Idempotency rests on SOPInstanceUID plus the SHA-256 of the file's bytes: the same instance
dropped twice, in one batch, in two runs or under two names, is scored once.

Before any of that, the file itself is checked:

- anything but a regular file (a symbolic link, FIFO, socket or device) is rejected as
  ``not_regular_file`` without being opened. A link is not followed, because its target
  lies outside the claimed work folder: the sender may still change or delete it, and a
  link could make the service read any file its account can read;
- an empty file is rejected as ``incomplete``, since it is almost always an aborted
  transfer;
- a gzip file (magic bytes 1F 8B, whatever its name) is decompressed into a hidden file
  beside it and read from there. DICOM defines no gzip wrapper (PS3.10), but exports for
  teleradiology and manual uploads often arrive as ``.dcm.gz``, and refusing them would
  withhold the second opinion for a readable image. The hash, deduplication and the archive
  use the decompressed bytes, so a gzipped copy of a scored file is a duplicate, while
  quarantine keeps the gzip file as it arrived.

Memory stays flat: each file is read, checked and preprocessed on its own, and the batch
keeps only the canonical images.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import stat
import zlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mammo.errors import InputRejected, ReasonCode
from tasks.dicom_read import DicomInstance, read_instance
from tasks.intake import ClaimedFile
from tasks.preprocess import preprocess

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"

#: Bytes per pixel allowed when sizing the largest decompressed file (32-bit pixels), and
#: the allowance for the rest of the data set. The limit stops a gzip bomb from filling
#: the disk.
MAX_BYTES_PER_PIXEL = 4
HEADER_ALLOWANCE_BYTES = 64 << 20


@dataclass(frozen=True)
class InstanceInfo:
    """The identifiers of an instance that results rows need, without the pixel data."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    study_date: object | None
    laterality: str
    view: str

    @classmethod
    def from_instance(cls, instance: DicomInstance) -> InstanceInfo:
        return cls(
            sop_instance_uid=instance.sop_instance_uid,
            study_instance_uid=instance.study_instance_uid,
            series_instance_uid=instance.series_instance_uid,
            accession_number=instance.accession_number,
            patient_id=instance.patient_id,
            study_date=instance.study_date,
            laterality=instance.laterality,
            view=instance.view,
        )


@dataclass(frozen=True)
class ScoredInput:
    claimed: ClaimedFile
    content_hash: str
    info: InstanceInfo
    #: The DICOM file to archive: the decompressed copy of a gzip file, else None for
    #: the claimed file itself.
    decompressed_path: Path | None = None


@dataclass(frozen=True)
class Duplicate:
    claimed: ClaimedFile
    content_hash: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Rejection:
    claimed: ClaimedFile
    reason: ReasonCode
    message: str
    content_hash: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Unarchived:
    """A file whose result was committed by a run that died before archiving it."""

    claimed: ClaimedFile
    content_hash: str
    study_instance_uid: str
    sop_instance_uid: str
    decompressed_path: Path | None = None


@dataclass
class PreparedBatch:
    """Outcome of preparation: ``images[i]`` is the canonical image of ``to_score[i]``."""

    to_score: list[ScoredInput] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unarchived: list[Unarchived] = field(default_factory=list)

    def image_array(self) -> np.ndarray:
        """Stack the canonical images into one uint8 array [N, size, size]."""
        return np.stack(self.images) if self.images else np.empty((0, 0, 0), np.uint8)


def hash_file(path: Path) -> str:
    """Return the SHA-256 hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_batch(
    files: list[ClaimedFile],
    *,
    image_size: int,
    find_scored: Callable[[str], tuple[str, str] | None],
    seen_in_run: MutableMapping[str, str],
    allowed_modalities: tuple[str, ...],
    max_pixels: int,
) -> PreparedBatch:
    """Prepare ``files`` for scoring.

    ``find_scored`` returns the (content hash, archive path) stored for an already scored
    SOPInstanceUID, or None. ``seen_in_run`` maps the SOPInstanceUIDs
    this run has taken so far to their content hash and is updated here.
    """
    batch = PreparedBatch()
    max_dicom_bytes = max_pixels * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE_BYTES
    for claimed in files:
        decompressed: Path | None = None
        try:
            _check_regular_and_not_empty(claimed)
            decompressed = _decompress_if_gzip(claimed, max_bytes=max_dicom_bytes)
        except InputRejected as rejected:
            logger.warning("Rejected %s: %s (%s)", claimed.claim_id, rejected.reason,
                           rejected.message)
            batch.rejections.append(Rejection(claimed, rejected.reason, rejected.message))
            continue

        outcome = _prepare_one(claimed, decompressed or claimed.path, image_size=image_size,
                               find_scored=find_scored, seen_in_run=seen_in_run,
                               allowed_modalities=allowed_modalities, max_pixels=max_pixels)
        if isinstance(outcome, tuple):
            item, image = outcome
            batch.to_score.append(_with_decompressed(item, decompressed))
            batch.images.append(image)
            continue
        if isinstance(outcome, Unarchived):
            batch.unarchived.append(_with_decompressed(outcome, decompressed))
            continue
        # Duplicates and rejections keep or drop the file as it arrived, so the
        # decompressed copy is no longer needed.
        if decompressed is not None:
            decompressed.unlink(missing_ok=True)
        _append(batch, outcome)
    return batch


def _prepare_one(
    claimed: ClaimedFile,
    dicom_path: Path,
    *,
    image_size: int,
    find_scored: Callable[[str], tuple[str, str] | None],
    seen_in_run: MutableMapping[str, str],
    allowed_modalities: tuple[str, ...],
    max_pixels: int,
) -> tuple[ScoredInput, np.ndarray] | Duplicate | Rejection | Unarchived:
    """Hash, read, classify and preprocess one DICOM file read from ``dicom_path``."""
    try:
        content_hash = hash_file(dicom_path)
    except OSError as error:
        return Rejection(claimed, ReasonCode.INCOMPLETE,
                         f"cannot read {claimed.original_name}: {error}; send the file again")
    try:
        instance = read_instance(dicom_path, allowed_modalities=allowed_modalities,
                                 max_pixels=max_pixels)
    except InputRejected as rejected:
        logger.warning("Rejected %s: %s (%s)", claimed.claim_id, rejected.reason,
                       rejected.message)
        return Rejection(claimed, rejected.reason, _name_original(rejected.message,
                                                                  dicom_path, claimed),
                         content_hash=content_hash)

    uid = instance.sop_instance_uid
    outcome = _classify(claimed, instance, content_hash, find_scored, seen_in_run)
    if isinstance(outcome, Unarchived):
        # Its archive file appears only after this batch's moves, so a copy later in the
        # run must be found here and recorded as a duplicate, not re-archived without a record.
        seen_in_run[uid] = content_hash
    if outcome is not None:
        return outcome

    try:
        image = preprocess(instance, image_size)
    except InputRejected as rejected:
        logger.warning("Rejected SOPInstanceUID %s: %s (%s)", uid, rejected.reason,
                       rejected.message)
        return Rejection(claimed, rejected.reason,
                         _name_original(rejected.message, dicom_path, claimed),
                         content_hash=content_hash, sop_instance_uid=uid)
    seen_in_run[uid] = content_hash
    logger.debug("Prepared SOPInstanceUID %s (%s %s)", uid, instance.laterality,
                 instance.view)
    return ScoredInput(claimed, content_hash, InstanceInfo.from_instance(instance)), image


def _check_regular_and_not_empty(claimed: ClaimedFile) -> None:
    """Raise `InputRejected` for a claimed entry that is not a regular file, or is empty."""
    try:
        status = claimed.path.lstat()
    except OSError as error:
        raise InputRejected(ReasonCode.INCOMPLETE,
                            f"cannot read {claimed.original_name}: {error}; send the file "
                            "again") from error

    if stat.S_ISLNK(status.st_mode):
        target = os.readlink(claimed.path)
        raise InputRejected(
            ReasonCode.NOT_REGULAR_FILE,
            f"{claimed.original_name}: is a symbolic link to {target!r}, and links are not "
            "followed. Copy the file itself into the incoming folder.")
    if not stat.S_ISREG(status.st_mode):
        raise InputRejected(
            ReasonCode.NOT_REGULAR_FILE,
            f"{claimed.original_name}: is a {_file_type(status.st_mode)}, not a regular "
            "file. Copy the DICOM file itself into the incoming folder.")
    if status.st_size == 0:
        raise InputRejected(
            ReasonCode.INCOMPLETE,
            f"{claimed.original_name}: the file is empty (0 bytes), so the transfer was "
            "aborted before any data arrived. Send the file again.")


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"


def _decompress_if_gzip(claimed: ClaimedFile, *, max_bytes: int) -> Path | None:
    """Decompress a gzip file into a hidden file beside it and return that file's path.

    Returns None when the file does not start with the gzip magic bytes. The hidden name
    keeps the copy out of the run's inputs (`tasks.intake` skips names starting with a
    dot), so a run that dies here leaves only the original to be reclaimed.

    Raises
    ------
    InputRejected
        ``incomplete`` when the gzip stream ends early, ``not_dicom`` when it is not valid
        gzip data, ``oversize`` when it decompresses to more than ``max_bytes``.
    """
    with claimed.path.open("rb") as stream:
        if stream.read(len(GZIP_MAGIC)) != GZIP_MAGIC:
            return None

    target = claimed.path.with_name(f".{claimed.claim_id}.decompressed.dcm")
    try:
        with gzip.open(claimed.path, "rb") as source, target.open("wb") as output:
            written = 0
            while chunk := source.read(HASH_CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise InputRejected(
                        ReasonCode.OVERSIZE,
                        f"{claimed.original_name}: the gzip file decompresses to more than "
                        f"{max_bytes} bytes, more than an image of the allowed size needs "
                        "(setting max_pixels).")
                output.write(chunk)
    except EOFError as error:
        target.unlink(missing_ok=True)
        raise InputRejected(
            ReasonCode.INCOMPLETE,
            f"{claimed.original_name}: the gzip stream ends before its end marker ({error}); "
            "the file is truncated. Send the complete file again.") from error
    except (gzip.BadGzipFile, zlib.error) as error:
        target.unlink(missing_ok=True)
        raise InputRejected(
            ReasonCode.NOT_DICOM,
            f"{claimed.original_name}: the file starts like gzip data but cannot be "
            f"decompressed ({error}).") from error
    except InputRejected:
        target.unlink(missing_ok=True)
        raise

    logger.debug("Claim %s is gzip-compressed; decompressed %d bytes", claimed.claim_id,
                 written)
    return target


def _name_original(message: str, dicom_path: Path, claimed: ClaimedFile) -> str:
    """Return ``message`` naming the file as it arrived rather than its path on disk."""
    prefix = f"{dicom_path.name}: "
    if message.startswith(prefix):
        return f"{claimed.original_name}: {message[len(prefix):]}"
    return message


def _with_decompressed(item, decompressed: Path | None):
    if decompressed is None:
        return item
    return replace(item, decompressed_path=decompressed)


def _classify(claimed: ClaimedFile, instance: DicomInstance, content_hash: str,
              find_scored: Callable[[str], tuple[str, str] | None],
              seen_in_run: Mapping[str, str]) -> Duplicate | Rejection | Unarchived | None:
    """Return the outcome of an instance that must not be scored, or None for a new one."""
    uid = instance.sop_instance_uid
    known_hash: str | None = None
    archive_path: str | None = None
    if uid in seen_in_run:
        known_hash = seen_in_run[uid]
    elif (stored := find_scored(uid)) is not None:
        known_hash, archive_path = stored
    if known_hash is None:
        return None
    if known_hash != content_hash:
        return Rejection(
            claimed, ReasonCode.UID_CONFLICT,
            f"SOPInstanceUID {uid} was already scored from a file with other content; the "
            f"existing result is kept. Check the sender: a new image needs a new UID",
            content_hash=content_hash, sop_instance_uid=uid)
    if archive_path is not None and not Path(archive_path).exists():
        return Unarchived(claimed, content_hash, instance.study_instance_uid, uid)
    return Duplicate(claimed, content_hash, uid)


def _append(batch: PreparedBatch, outcome: Duplicate | Rejection | Unarchived) -> None:
    if isinstance(outcome, Duplicate):
        batch.duplicates.append(outcome)
    elif isinstance(outcome, Unarchived):
        batch.unarchived.append(outcome)
    else:
        batch.rejections.append(outcome)
