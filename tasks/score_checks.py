"""Reject images whose scores cannot be stored: a NaN or infinite probability from any model.

Such a score belongs to one image (for example extreme pixel values that overflow inside a
network), so that image is quarantined with reason ``invalid_score`` and the rest of the batch
is scored as usual. Nothing non-finite reaches the ensemble or the database.
"""

from __future__ import annotations

import logging
import math

from mammo.errors import ReasonCode
from tasks.prepare import PreparedBatch, Rejection
from tasks.record_outcomes import ModelRun

logger = logging.getLogger(__name__)


def reject_invalid_scores(batch: PreparedBatch,
                          model_runs: dict[str, ModelRun]) -> dict[str, ModelRun]:
    """Move images with a non-finite probability from ``batch.to_score`` to its rejections.

    Returns the model runs without those images' probabilities; ``batch`` is changed in place
    so that ``batch.to_score[i]`` still matches every run's ``probabilities[i]``.

    NOTE: preparation has already marked a rejected image's SOPInstanceUID as seen in this
    run, so a second copy of it later in the same run is recorded as a duplicate although
    only the quarantined copy keeps its bytes.
    """
    bad_models: dict[int, list[str]] = {}
    for name, run in model_runs.items():
        for index, probability in enumerate(run.probabilities):
            if not math.isfinite(probability):
                bad_models.setdefault(index, []).append(f"{name}:{run.version}")
    if not bad_models:
        return model_runs

    for index, models in sorted(bad_models.items()):
        item = batch.to_score[index]
        uid = item.info.sop_instance_uid
        logger.warning("Rejected SOPInstanceUID %s: non-finite probability from %s", uid,
                       ", ".join(models))
        batch.rejections.append(Rejection(
            item.claimed, ReasonCode.INVALID_SCORE,
            f"model versions {', '.join(models)} returned a probability that is not a finite "
            f"number for SOPInstanceUID {uid}; the image was not scored. Check the image's "
            "pixel values and report it with the model versions",
            content_hash=item.content_hash, sop_instance_uid=uid))

    keep = [index for index in range(len(batch.to_score)) if index not in bad_models]
    batch.to_score = [batch.to_score[index] for index in keep]
    batch.images = [batch.images[index] for index in keep]
    return {name: ModelRun(version=run.version,
                           probabilities=[run.probabilities[index] for index in keep])
            for name, run in model_runs.items()}
