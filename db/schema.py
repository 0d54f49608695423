"""Typed SQLAlchemy 2.0 schema of the results database.

Every input file ends in exactly one outcome row: a `SecondOpinion` (with its `Instance` and
one `ModelScore` per model), a `DuplicateRecord` or a `QuarantineRecord`. Duplicate and
quarantine rows are keyed by the claim id that intake gives a file, so recording the same
outcome again after a crash updates the row instead of adding one.

Times are stored as timezone-aware UTC. The same schema runs on SQLite and PostgreSQL; the
Alembic migrations in ``db/migrations`` create it, `Base.metadata` is only their reference.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)  # DICOM UI value representation: at most 64 characters (PS3.5 6.2)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProcessingRun(Base):
    """One run of the process_incoming flow, named by its Prefect flow run id."""

    __tablename__ = "processing_runs"

    flow_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    files_claimed: Mapped[int] = mapped_column(Integer, default=0)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)

    def __repr__(self) -> str:
        return f"ProcessingRun({self.flow_run_id!r}, status={self.status!r})"


class Instance(Base):
    """A scored SOP instance with its DICOM identifiers, as the hospital sent them."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    accession_number: Mapped[Optional[str]] = mapped_column(String(64), index=True)
    patient_id: Mapped[Optional[str]] = mapped_column(String(64))
    study_date: Mapped[Optional[dt.date]] = mapped_column(Date)
    laterality: Mapped[str] = mapped_column(String(8))
    view: Mapped[str] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(64))
    file_name: Mapped[str] = mapped_column(Text)
    archive_path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return f"Instance({self.sop_instance_uid!r}, {self.laterality} {self.view})"


class ModelScore(Base):
    """One model's malignancy probability for one instance, with the version that served it."""

    __tablename__ = "model_scores"

    sop_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("instances.sop_instance_uid", ondelete="CASCADE"), primary_key=True
    )
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)

    def __repr__(self) -> str:
        return (f"ModelScore({self.sop_instance_uid!r}, {self.model_name}:"
                f"{self.model_version}={self.probability:.4f})")


class SecondOpinion(Base):
    """The ensemble result for one instance; the row radiologists and reports read."""

    __tablename__ = "second_opinions"

    sop_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("instances.sop_instance_uid", ondelete="CASCADE"), primary_key=True
    )
    ensemble_probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    category: Mapped[str] = mapped_column(String(32))
    models_agreeing: Mapped[int] = mapped_column(Integer)
    models_total: Mapped[int] = mapped_column(Integer)
    model_versions: Mapped[str] = mapped_column(
        Text, doc="Versions that produced the row, as 'name:version' joined by commas."
    )
    preprocessing_version: Mapped[str] = mapped_column(String(32))
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return (f"SecondOpinion({self.sop_instance_uid!r}, {self.category}, "
                f"p={self.ensemble_probability:.4f})")


class DuplicateRecord(Base):
    """An input whose SOPInstanceUID and content were already scored."""

    __tablename__ = "duplicate_records"

    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    file_name: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return f"DuplicateRecord({self.claim_id!r}, {self.sop_instance_uid!r})"


class QuarantineRecord(Base):
    """An input that could not be scored, with a reason code and a readable message."""

    __tablename__ = "quarantine_records"

    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    file_name: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[Optional[str]] = mapped_column(UID, index=True)
    content_hash: Mapped[Optional[str]] = mapped_column(String(64))
    reason_code: Mapped[str] = mapped_column(String(48), index=True)
    message: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[Optional[str]] = mapped_column(Text)
    flow_run_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return f"QuarantineRecord({self.claim_id!r}, {self.reason_code!r})"


class ModelVersion(Base):
    """A published model version and what is known about it (weights source, metrics)."""

    __tablename__ = "model_versions"

    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_size: Mapped[int] = mapped_column(Integer)
    weights_source: Mapped[str] = mapped_column(String(32))
    warning: Mapped[Optional[str]] = mapped_column(Text)
    threshold: Mapped[Optional[float]] = mapped_column(Float)
    metrics: Mapped[Optional[dict]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="published")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return f"ModelVersion({self.model_name!r}, {self.version})"


class Label(Base):
    """A confirmed finding (biopsy, follow-up) for an instance or for a study's breast."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "study_instance_uid", "laterality", "source",
                         name="uq_labels_target_source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[Optional[str]] = mapped_column(UID, index=True)
    study_instance_uid: Mapped[Optional[str]] = mapped_column(UID, index=True)
    laterality: Mapped[Optional[str]] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(32))
    label_date: Mapped[Optional[dt.date]] = mapped_column(Date)
    # The server default lets other systems insert labels without naming this column.
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now,
                                                     server_default=func.now())

    def __repr__(self) -> str:
        return f"Label({self.id}, {self.label!r})"


class RetrainingRun(Base):
    """One run of the retrain_models flow, named by its Prefect flow run id.

    ``status`` is running, completed, skipped (too few new labels) or failed. Labels imported
    after the ``started_at`` of the last completed run that was not a dry run count as new.
    """

    __tablename__ = "retraining_runs"

    flow_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    parameters: Mapped[dict] = mapped_column(JSON)
    new_labels: Mapped[int] = mapped_column(Integer, default=0)
    labelled_instances: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[Optional[str]] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"RetrainingRun({self.flow_run_id!r}, status={self.status!r})"


class ModelCandidate(Base):
    """A model version trained by a retraining run, its held-out metrics and the decision.

    ``decision`` is promoted (published as ``published_version``), rejected (worse than
    ``base_version`` by more than the margin) or dry_run. ``metrics`` contains the candidate's
    and the base version's metrics on the same held-out instances.
    """

    __tablename__ = "model_candidates"

    flow_run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("retraining_runs.flow_run_id", ondelete="CASCADE"),
        primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_version: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    published_version: Mapped[Optional[int]] = mapped_column(Integer)
    threshold: Mapped[Optional[float]] = mapped_column(Float)
    metrics: Mapped[dict] = mapped_column(JSON)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    roc_curve_path: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return (f"ModelCandidate({self.flow_run_id!r}, {self.model_name!r}, "
                f"{self.decision!r})")


class EnsembleConfiguration(Base):
    """Ensemble weights and operating threshold chosen for one set of model versions.

    ``model_versions`` has the format of `SecondOpinion.model_versions`. The process_incoming
    flow uses the newest row whose versions equal the served ones, and the settings otherwise.
    """

    __tablename__ = "ensemble_configurations"

    flow_run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("retraining_runs.flow_run_id", ondelete="CASCADE"),
        primary_key=True)
    model_versions: Mapped[str] = mapped_column(Text, index=True)
    weights: Mapped[dict] = mapped_column(JSON)
    threshold: Mapped[float] = mapped_column(Float)
    target_sensitivity: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)

    def __repr__(self) -> str:
        return f"EnsembleConfiguration({self.model_versions!r}, threshold={self.threshold})"
