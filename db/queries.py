"""Read results back: one row per scored instance, and the quarantine log.

Rows come back as pandas DataFrames with one column per model for probability and version
(``<model>_probability``, ``<model>_version``), so a table, CSV or JSON export has the same
stable columns whatever the number of models.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import Instance, ModelScore, ModelVersion, QuarantineRecord, SecondOpinion

INSTANCE_COLUMNS = [
    "sop_instance_uid", "study_instance_uid", "series_instance_uid", "accession_number",
    "patient_id", "study_date", "laterality", "view",
]


@dataclass(frozen=True)
class ResultFilter:
    """Optional filters of `instance_results`; None means no filter."""

    accession_number: str | None = None
    study_instance_uid: str | None = None
    processed_from: dt.datetime | None = None
    processed_to: dt.datetime | None = None
    category: str | None = None


def instance_results(session: Session, model_names: tuple[str, ...],
                     filters: ResultFilter = ResultFilter()) -> pd.DataFrame:
    """Return one row per scored instance, ordered by study and SOPInstanceUID."""
    query = (
        select(*(getattr(Instance, c) for c in INSTANCE_COLUMNS),
               SecondOpinion.ensemble_probability, SecondOpinion.threshold,
               SecondOpinion.category, SecondOpinion.models_agreeing,
               SecondOpinion.models_total, SecondOpinion.model_versions,
               SecondOpinion.preprocessing_version, SecondOpinion.flow_run_id,
               SecondOpinion.processed_at)
        .join(SecondOpinion, SecondOpinion.sop_instance_uid == Instance.sop_instance_uid)
        .order_by(Instance.study_instance_uid, Instance.sop_instance_uid)
    )
    if filters.accession_number:
        query = query.where(Instance.accession_number == filters.accession_number)
    if filters.study_instance_uid:
        query = query.where(Instance.study_instance_uid == filters.study_instance_uid)
    if filters.processed_from:
        query = query.where(SecondOpinion.processed_at >= filters.processed_from)
    if filters.processed_to:
        query = query.where(SecondOpinion.processed_at < filters.processed_to)
    if filters.category:
        query = query.where(SecondOpinion.category == filters.category)
    frame = pd.DataFrame(session.execute(query).mappings().all())
    if frame.empty:
        return frame

    scores = pd.DataFrame(session.execute(
        select(ModelScore.sop_instance_uid, ModelScore.model_name, ModelScore.model_version,
               ModelScore.probability)
        .where(ModelScore.sop_instance_uid.in_(frame["sop_instance_uid"].tolist()))
    ).mappings().all())
    for name in model_names:
        own = scores[scores["model_name"] == name].set_index("sop_instance_uid")
        frame[f"{name}_probability"] = frame["sop_instance_uid"].map(own["probability"])
        frame[f"{name}_version"] = frame["sop_instance_uid"].map(own["model_version"]) \
            .astype("Int64")
    return frame


def quarantine_log(session: Session) -> pd.DataFrame:
    """Return every quarantined input with its file name, UID, reason code and message."""
    query = select(QuarantineRecord.file_name, QuarantineRecord.sop_instance_uid,
                   QuarantineRecord.reason_code, QuarantineRecord.message,
                   QuarantineRecord.quarantine_path, QuarantineRecord.flow_run_id,
                   QuarantineRecord.recorded_at).order_by(QuarantineRecord.recorded_at,
                                                          QuarantineRecord.file_name)
    return pd.DataFrame(session.execute(query).mappings().all())


def model_version_warnings(session: Session,
                           versions: set[tuple[str, int]]) -> list[tuple[str, int, str]]:
    """Return (model, version, warning) for the given versions that carry a warning."""
    rows = session.execute(select(ModelVersion.model_name, ModelVersion.version,
                                  ModelVersion.warning)
                           .where(ModelVersion.warning.is_not(None))).all()
    return sorted((name, version, warning) for name, version, warning in rows
                  if (name, version) in versions)
