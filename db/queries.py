"""Read results back from the reporting views, and the quarantine log.

Rows come back as pandas DataFrames with the views' stable column names, so a table, CSV or
JSON export has the columns that ``docs/reporting.md`` documents.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import column, select, table, text
from sqlalchemy.orm import Session

from db.schema import ModelVersion, QuarantineRecord

LEVELS = {
    "instance": ("second_opinion_instances", "study_instance_uid, sop_instance_uid"),
    "breast": ("second_opinion_breasts", "study_instance_uid, laterality"),
    "study": ("second_opinion_studies", "study_instance_uid"),
}


@dataclass(frozen=True)
class ResultFilter:
    """Optional filters of `report_rows`; None means no filter. Dates are study dates,
    times are processing times (timezone-aware or UTC)."""

    accession_number: str | None = None
    study_instance_uid: str | None = None
    study_date_from: dt.date | None = None
    study_date_to: dt.date | None = None
    processed_from: dt.datetime | None = None
    processed_to: dt.datetime | None = None
    category: str | None = None


def report_rows(session: Session, level: str = "instance",
                filters: ResultFilter = ResultFilter()) -> pd.DataFrame:
    """Return the rows of the reporting view of ``level`` (instance, breast or study).

    Reads the same views that reporting tools read, so the command line shows exactly what
    they see. Raises ValueError for an unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    view_name, order = LEVELS[level]
    view = table(view_name, column("accession_number"), column("study_instance_uid"),
                 column("study_date"), column("processed_at"), column("category"))

    conditions = []
    if filters.accession_number:
        conditions.append(view.c.accession_number == filters.accession_number)
    if filters.study_instance_uid:
        conditions.append(view.c.study_instance_uid == filters.study_instance_uid)
    if filters.study_date_from:
        conditions.append(view.c.study_date >= filters.study_date_from)
    if filters.study_date_to:
        conditions.append(view.c.study_date <= filters.study_date_to)
    if filters.processed_from:
        conditions.append(view.c.processed_at >= filters.processed_from)
    if filters.processed_to:
        conditions.append(view.c.processed_at < filters.processed_to)
    if filters.category:
        conditions.append(view.c.category == filters.category)

    query = select(text("*")).select_from(view).where(*conditions).order_by(text(order))
    return pd.DataFrame(session.execute(query).mappings().all())


def instance_results(session: Session, model_names: tuple[str, ...] = (),
                     filters: ResultFilter = ResultFilter()) -> pd.DataFrame:
    """Return one row per scored instance (the ``second_opinion_instances`` view)."""
    return report_rows(session, "instance", filters)


def quarantine_log(session: Session) -> pd.DataFrame:
    """Return every quarantined input with its file name, UID, reason code and message."""
    query = select(QuarantineRecord.file_name, QuarantineRecord.sop_instance_uid,
                   QuarantineRecord.reason_code, QuarantineRecord.message,
                   QuarantineRecord.quarantine_path, QuarantineRecord.flow_run_id,
                   QuarantineRecord.recorded_at).order_by(QuarantineRecord.recorded_at,
                                                          QuarantineRecord.file_name)
    return pd.DataFrame(session.execute(query).mappings().all())


def model_version_warnings(session: Session, versions: set[tuple[str, int]]
                           ) -> list[tuple[str, int, str, str]]:
    """Return (model, version, weights source, warning) for the given versions that carry a
    warning."""
    rows = session.execute(select(ModelVersion.model_name, ModelVersion.version,
                                  ModelVersion.weights_source, ModelVersion.warning)
                           .where(ModelVersion.warning.is_not(None))).all()
    return sorted((name, version, source, warning) for name, version, source, warning in rows
                  if (name, version) in versions)
