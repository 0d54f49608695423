"""Turn a batch of claimed files into canonical images, duplicates and rejections.

For each file, in this order: hash the bytes, read and check the DICOM header, decide whether
the instance is new, already scored (a duplicate), or reuses a scored SOPInstanceUID with other
content (a conflict), and preprocess only new instances. An `InputRejected` from any step
becomes a rejection with its reason code; the other files of the batch go on.

Idempotency rests on SOPInstanceUID plus the SHA-256 of the file's bytes: the same instance
dropped twice, in one batch, in two runs or under two names, is scored once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammo.errors import InputRejected, ReasonCode
from tasks.dicom_read import DicomInstance, read_instance
from tasks.intake import ClaimedFile
from tasks.preprocess import preprocess

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20


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
    SOPInstanceUID, or None; ``seen_in_run`` maps the SOPInstanceUIDs
    this run has taken so far to their content hash and is updated here.
    """
    batch = PreparedBatch()
    for claimed in files:
        try:
            content_hash = hash_file(claimed.path)
        except OSError as error:
            batch.rejections.append(Rejection(
                claimed, ReasonCode.INCOMPLETE,
                f"cannot read {claimed.original_name}: {error}; send the file again"))
            continue
        try:
            instance = read_instance(claimed.path, allowed_modalities=allowed_modalities,
                                     max_pixels=max_pixels)
        except InputRejected as rejected:
            logger.warning("Rejected %s: %s (%s)", claimed.claim_id, rejected.reason,
                           rejected.message)
            batch.rejections.append(Rejection(claimed, rejected.reason, rejected.message,
                                              content_hash=content_hash))
            continue

        uid = instance.sop_instance_uid
        outcome = _classify(claimed, instance, content_hash, find_scored, seen_in_run)
        if outcome is not None:
            _append(batch, outcome)
            continue

        try:
            image = preprocess(instance, image_size)
        except InputRejected as rejected:
            logger.warning("Rejected SOPInstanceUID %s: %s (%s)", uid, rejected.reason,
                           rejected.message)
            batch.rejections.append(Rejection(claimed, rejected.reason, rejected.message,
                                              content_hash=content_hash,
                                              sop_instance_uid=uid))
            continue
        seen_in_run[uid] = content_hash
        batch.to_score.append(ScoredInput(claimed, content_hash,
                                          InstanceInfo.from_instance(instance)))
        batch.images.append(image)
        logger.debug("Prepared SOPInstanceUID %s (%s %s)", uid, instance.laterality,
                     instance.view)
    return batch


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
