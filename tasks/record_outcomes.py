"""Write one batch's outcomes to the results database in a single transaction.

Scored instances get an instance row, one score row per model and a second-opinion row that
names the flow run, the preprocessing version and every model version. Duplicates and
rejections get their records. Everything is an idempotent upsert, so a batch replayed after a
crash leaves the same rows. Files are moved only after this transaction commits
(`tasks.file_outcomes`), so nothing is deleted before its outcome is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from db import writes
from db.schema import utc_now
from tasks.ensemble import EnsembleResult
from tasks.file_outcomes import archive_path_for, quarantine_path_for
from tasks.prepare import PreparedBatch


@dataclass(frozen=True)
class ModelRun:
    """Probabilities of one model for the instances of a batch, and the version that served
    them."""

    version: int
    probabilities: list[float]


def format_model_versions(model_runs: Mapping[str, ModelRun]) -> str:
    """Return the versions as ``name:version`` pairs joined by commas, in model order."""
    return ",".join(f"{name}:{run.version}" for name, run in model_runs.items())


def record_batch(session: Session, batch: PreparedBatch, *,
                 model_runs: Mapping[str, ModelRun], ensemble: list[EnsembleResult],
                 flow_run_id: str, preprocessing_version: str, archive_dir: Path,
                 quarantine_dir: Path) -> None:
    """Write every outcome of ``batch``; the caller commits."""
    processed_at = utc_now()
    versions = format_model_versions(model_runs)

    instances, scores, opinions = [], [], []
    for index, item in enumerate(batch.to_score):
        info = item.info
        instances.append({
            "sop_instance_uid": info.sop_instance_uid,
            "study_instance_uid": info.study_instance_uid,
            "series_instance_uid": info.series_instance_uid,
            "accession_number": info.accession_number,
            "patient_id": info.patient_id,
            "study_date": info.study_date,
            "laterality": info.laterality,
            "view": info.view,
            "content_hash": item.content_hash,
            "file_name": item.claimed.original_name,
            "archive_path": str(archive_path_for(archive_dir, info.study_instance_uid,
                                                 info.sop_instance_uid)),
            "received_at": processed_at,
        })
        for name, run in model_runs.items():
            scores.append({
                "sop_instance_uid": info.sop_instance_uid,
                "model_name": name,
                "model_version": run.version,
                "probability": run.probabilities[index],
            })
        result = ensemble[index]
        opinions.append({
            "sop_instance_uid": info.sop_instance_uid,
            "ensemble_probability": result.probability,
            "threshold": result.threshold,
            "category": str(result.category),
            "models_agreeing": result.models_agreeing,
            "models_total": result.models_total,
            "model_versions": versions,
            "preprocessing_version": preprocessing_version,
            "flow_run_id": flow_run_id,
            "processed_at": processed_at,
        })
    writes.write_second_opinions(session, instances=instances, scores=scores,
                                 opinions=opinions)

    writes.record_duplicates(session, [
        {
            "claim_id": duplicate.claimed.claim_id,
            "file_name": duplicate.claimed.original_name,
            "sop_instance_uid": duplicate.sop_instance_uid,
            "content_hash": duplicate.content_hash,
            "flow_run_id": flow_run_id,
            "recorded_at": processed_at,
        }
        for duplicate in batch.duplicates
    ])
    writes.record_quarantine(session, [
        {
            "claim_id": rejection.claimed.claim_id,
            "file_name": rejection.claimed.original_name,
            "sop_instance_uid": rejection.sop_instance_uid,
            "content_hash": rejection.content_hash,
            "reason_code": str(rejection.reason),
            "message": rejection.message,
            "quarantine_path": str(quarantine_path_for(quarantine_dir, rejection)),
            "flow_run_id": flow_run_id,
            "recorded_at": processed_at,
        }
        for rejection in batch.rejections
    ])
