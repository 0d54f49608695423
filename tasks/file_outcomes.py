"""Move claimed files to the folder that their committed outcome assigns.

Run only after the batch's database transaction has committed:
- a scored file moves to ``archive/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (kept for
  retraining); for a gzip file the decompressed copy is archived and the gzip file deleted;
- a rejected file moves, bytes unchanged, to ``quarantine/<reason_code>/<claim id>__<name>``;
- a duplicate is deleted, because the archive already contains the same bytes.

A move that fails (disk full, permissions) is logged with the path and leaves the file in
the work folder, where the next run reclaims it; the outcome rows are already stored.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tasks.prepare import PreparedBatch, Rejection

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_component(value: str) -> str:
    # UIDs are digits and dots (PS3.5 9.1), but a malformed header may hold anything.
    return _UNSAFE.sub("_", value)[:128] or "unknown"


def archive_path_for(archive_dir: Path, study_instance_uid: str,
                     sop_instance_uid: str) -> Path:
    return (archive_dir / _safe_component(study_instance_uid)
            / f"{_safe_component(sop_instance_uid)}.dcm")


def quarantine_path_for(quarantine_dir: Path, rejection: Rejection) -> Path:
    name = _safe_component(Path(rejection.claimed.original_name).name)
    return quarantine_dir / str(rejection.reason) / f"{rejection.claimed.claim_id}__{name}"


def _move(source: Path, target: Path) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    except OSError as error:
        logger.error("Cannot move %s to %s: %s; the file stays in the work folder",
                     source, target, error)
        return False
    return True


def _archive(claimed_path: Path, decompressed_path: Path | None, target: Path) -> bool:
    """Move the DICOM file to ``target``; drop the gzip original once its copy is there."""
    if decompressed_path is None:
        return _move(claimed_path, target)
    if not _move(decompressed_path, target):
        return False
    try:
        claimed_path.unlink()
    except OSError as error:
        # The next run reclaims the gzip file and finds it a duplicate of the archived copy.
        logger.error("Cannot delete archived gzip file %s: %s", claimed_path, error)
    return True


def apply_file_outcomes(batch: PreparedBatch, *, archive_dir: Path,
                        quarantine_dir: Path) -> dict[str, int]:
    """Archive, quarantine or delete every file of ``batch``; return counts of moves done."""
    counts = {"archived": 0, "quarantined": 0, "deleted": 0, "failed": 0}

    for item in batch.to_score:
        target = archive_path_for(archive_dir, item.info.study_instance_uid,
                                  item.info.sop_instance_uid)
        moved = _archive(item.claimed.path, item.decompressed_path, target)
        counts["archived" if moved else "failed"] += 1
    for item in batch.unarchived:
        target = archive_path_for(archive_dir, item.study_instance_uid, item.sop_instance_uid)
        moved = _archive(item.claimed.path, item.decompressed_path, target)
        counts["archived" if moved else "failed"] += 1

    for rejection in batch.rejections:
        target = quarantine_path_for(quarantine_dir, rejection)
        counts["quarantined" if _move(rejection.claimed.path, target) else "failed"] += 1

    for duplicate in batch.duplicates:
        try:
            duplicate.claimed.path.unlink()
            counts["deleted"] += 1
        except FileNotFoundError:
            counts["deleted"] += 1
        except OSError as error:
            logger.error("Cannot delete duplicate %s: %s", duplicate.claimed.path, error)
            counts["failed"] += 1
    return counts
