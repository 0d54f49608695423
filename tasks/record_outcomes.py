"""Write one batch's outcomes to the results database in a single transaction.

Scored instances get an instance row, one score row per model and a second-opinion row that
names the flow run, the preprocessing version and every model version. Duplicates and
rejections get their records. Everything is an idempotent upsert, so a batch replayed after a
crash leaves the same rows. Files are moved only after this transaction commits
(`tasks.file_outcomes`), so nothing is deleted before its outcome is stored.

Two runs that overlap may each prepare a copy of the same instance before either commits.
The write therefore checks again, inside its transaction, whether another run has recorded
an instance of the batch since. If so, this run's copy becomes a duplicate (same content) or
a UID conflict (other content), and the instance is not scored a second time. On PostgreSQL
a transaction-scoped advisory lock per SOPInstanceUID makes the second run wait until the
first commits, so the check reads its rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import writes
from db.schema import Instance, SecondOpinion, utc_now
from mammo.errors import ReasonCode
from tasks.ensemble import EnsembleResult
from tasks.file_outcomes import archive_path_for, quarantine_path_for
from tasks.prepare import Duplicate, PreparedBatch, Rejection


@dataclass(frozen=True)
class ModelRun:
    """Probabilities of one model for the instances of a batch, and the version that served
    them."""

    version: int
    probabilities: list[float]


def format_model_versions(model_runs: Mapping[str, ModelRun]) -> str:
    """Return the versions as ``name:version`` pairs joined by commas, in model order."""
    return ",".join(f"{name}:{run.version}" for name, run in model_runs.items())


@dataclass
class Settlement:
    """Instances of a batch that another run recorded after this run prepared them, as the
    duplicates and UID conflicts that their files now are."""

    duplicates: list[Duplicate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def apply(self, batch: PreparedBatch) -> None:
        """Move the settled files of ``batch`` from ``to_score`` to its duplicates and
        rejections, so the file moves and the counts treat them as such."""
        settled = {outcome.claimed.claim_id for outcome in [*self.duplicates, *self.rejections]}
        kept = [index for index, item in enumerate(batch.to_score)
                if item.claimed.claim_id not in settled]
        batch.to_score = [batch.to_score[index] for index in kept]
        batch.images = [batch.images[index] for index in kept]
        batch.duplicates.extend(self.duplicates)
        batch.rejections.extend(self.rejections)


def settle_concurrent_claims(session: Session, batch: PreparedBatch, *,
                             flow_run_id: str) -> tuple[Settlement, list[int]]:
    """Find the instances of ``batch.to_score`` that another run has recorded meanwhile.

    Returns them as a `Settlement` and the indices into ``batch.to_score`` that this run
    still scores. Rows that this run wrote for the same file count as its own, because a
    transaction retried after its COMMIT was cut off finds them.
    """
    uids = sorted({item.info.sop_instance_uid for item in batch.to_score})
    if not uids:
        return Settlement(), []
    # NOTE: SQLite gets no lock here. Its single writer and the retry of a transaction whose
    # read snapshot went stale should give the same result, but no test runs that case.
    if session.get_bind().dialect.name == "postgresql":
        # In sorted order, so two runs that write the same instances cannot deadlock on
        # these locks.
        for uid in uids:
            session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(uid, 0))))

    stored = {
        row.sop_instance_uid: row for row in session.execute(
            select(Instance.sop_instance_uid, Instance.content_hash, Instance.file_name,
                   SecondOpinion.flow_run_id)
            .outerjoin(SecondOpinion,
                       SecondOpinion.sop_instance_uid == Instance.sop_instance_uid)
            .where(Instance.sop_instance_uid.in_(uids)))
    }
    settlement = Settlement()
    kept = []
    for index, item in enumerate(batch.to_score):
        uid = item.info.sop_instance_uid
        row = stored.get(uid)
        if row is None or (row.flow_run_id == flow_run_id
                           and row.file_name == item.claimed.original_name):
            kept.append(index)
        elif row.content_hash == item.content_hash:
            settlement.duplicates.append(Duplicate(item.claimed, item.content_hash, uid))
        else:
            settlement.rejections.append(Rejection(
                item.claimed, ReasonCode.UID_CONFLICT,
                f"SOPInstanceUID {uid} was scored by another run, from a file with other "
                "content, while this run prepared it; the existing result is kept. Check "
                "the sender: a new image needs a new UID",
                content_hash=item.content_hash, sop_instance_uid=uid))
    return settlement, kept


def record_batch(session: Session, batch: PreparedBatch, *,
                 model_runs: Mapping[str, ModelRun], ensemble: list[EnsembleResult],
                 flow_run_id: str, preprocessing_version: str, archive_dir: Path,
                 quarantine_dir: Path) -> Settlement:
    """Write every outcome of ``batch`` and return the instances that another run recorded
    first (see `settle_concurrent_claims`). The caller commits, then applies the returned
    `Settlement` to ``batch`` before moving its files.

    ``model_runs`` probabilities and ``ensemble`` are in ``batch.to_score`` order.
    """
    processed_at = utc_now()
    versions = format_model_versions(model_runs)
    settlement, kept = settle_concurrent_claims(session, batch, flow_run_id=flow_run_id)

    instances, scores, opinions = [], [], []
    for index in kept:
        item = batch.to_score[index]
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
        for duplicate in [*batch.duplicates, *settlement.duplicates]
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
        for rejection in [*batch.rejections, *settlement.rejections]
    ])
    return settlement
