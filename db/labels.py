"""Confirmed labels: CSV import with per-row validation, and labelled instances for training.

A label names its target in one of two ways: one SOP instance (SOPInstanceUID), or one breast
of a study (StudyInstanceUID with laterality L or R), which covers every view of that breast.
The value is ``malignant``, ``benign`` or ``normal``; ``source`` records how it was confirmed
(``biopsy``, ``follow-up``, ...). A target has at most one label per source.

Import is idempotent: a row whose target and source are already stored with the same label
and date changes nothing, and a row with a new label or date for them updates the stored
row. The functions take a session and never commit.

When several labels apply to one instance (an instance label and a breast label, or labels
from several sources), the most severe one wins: malignant over benign over normal.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.schema import Instance, Label, utc_now

logger = logging.getLogger(__name__)

#: Label values from least to most severe; the index is the severity.
LABEL_VALUES: tuple[str, ...] = ("normal", "benign", "malignant")

LATERALITIES: tuple[str, ...] = ("L", "R")

#: Maximum length of the source text, the width of `Label.source`.
MAX_SOURCE_LENGTH = 32

#: A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters
#: (PS3.5 9.1).
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64

#: CSV column names, matched without regard to case and surrounding spaces.
SOP_COLUMN = "sopinstanceuid"
STUDY_COLUMN = "studyinstanceuid"
LATERALITY_COLUMN = "laterality"
LABEL_COLUMN = "label"
SOURCE_COLUMN = "source"
DATE_COLUMN = "date"

#: Delimiters accepted in label files. Spreadsheets in locales with a decimal comma, Turkish
#: among them, write CSV with semicolons.
DELIMITERS = ",;\t"

LabelKey = tuple[str | None, str | None, str | None, str]


class LabelFileError(ValueError):
    """The label file as a whole cannot be read: missing columns, wrong encoding, no rows."""


@dataclass(frozen=True)
class LabelRow:
    """One valid row of a label file; ``line`` is its first line in the file (header is 1)."""

    line: int
    sop_instance_uid: str | None
    study_instance_uid: str | None
    laterality: str | None
    label: str
    source: str
    label_date: dt.date

    @property
    def key(self) -> LabelKey:
        """Target and source: the identity of a stored label."""
        if self.sop_instance_uid is not None:
            return (self.sop_instance_uid, None, None, self.source)
        return (None, self.study_instance_uid, self.laterality, self.source)


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str


@dataclass
class LabelImport:
    """Outcome of importing one label file."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Valid rows whose target matches no archived instance yet; they are stored anyway.
    unmatched: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(frozen=True)
class LabelledInstance:
    """An archived instance with the most severe label that applies to it."""

    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str | None
    laterality: str
    archive_path: str
    label: str

    @property
    def is_malignant(self) -> bool:
        return self.label == "malignant"


# --- Reading and validating a label file ------------------------------------------------


def read_label_file(path: Path, *, today: dt.date | None = None
                    ) -> tuple[list[LabelRow], list[RejectedRow]]:
    """Read and validate every row of a label CSV file.

    Returns the valid rows and the rejected ones with their line number and reason. A row
    that repeats an earlier row exactly is dropped; one that gives the same target and source
    another label or date is rejected.

    Raises:
        LabelFileError: if the file is not UTF-8 text, has no header, or lacks the label,
            source and date columns or both ways of naming a target.
    """
    today = today or dt.date.today()
    try:
        content = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelFileError(f"{path} is not UTF-8 text ({error}); save the file as "
                             "UTF-8 CSV") from error
    lines = content.splitlines(keepends=True)
    if not lines or not lines[0].strip():
        raise LabelFileError(f"{path} is empty; the first line must be the column header")

    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=DELIMITERS)
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = [name.strip().lower() for name in next(reader)]
    columns = _column_indexes(header, path)

    rows: list[LabelRow] = []
    rejected: list[RejectedRow] = []
    seen: dict[LabelKey, LabelRow] = {}
    previous_end = reader.line_num
    for values in reader:
        line = previous_end + 1
        previous_end = reader.line_num
        if not any(value.strip() for value in values):
            continue
        try:
            row = _parse_row(values, columns, line, today)
        except ValueError as error:
            rejected.append(RejectedRow(line, str(error)))
            continue

        earlier = seen.get(row.key)
        if earlier is None:
            seen[row.key] = row
            rows.append(row)
        elif (earlier.label, earlier.label_date) != (row.label, row.label_date):
            rejected.append(RejectedRow(line, f"conflicts with line {earlier.line}, which "
                                        f"gives the same target and source the label "
                                        f"{earlier.label!r} dated {earlier.label_date}"))
    return rows, rejected


def _column_indexes(header: list[str], path: Path) -> dict[str, int]:
    indexes = {name: position for position, name in enumerate(header) if name}
    missing = [name for name in (LABEL_COLUMN, SOURCE_COLUMN, DATE_COLUMN)
               if name not in indexes]
    names_instance = SOP_COLUMN in indexes
    names_breast = STUDY_COLUMN in indexes and LATERALITY_COLUMN in indexes
    if not names_instance and not names_breast:
        missing.append("SOPInstanceUID, or StudyInstanceUID with laterality")
    if missing:
        raise LabelFileError(
            f"{path} lacks the columns {', '.join(missing)}; the header read was "
            f"{header}. Expected SOPInstanceUID or StudyInstanceUID and laterality, then "
            "label, source and date")
    return indexes


def _parse_row(values: Sequence[str], columns: dict[str, int], line: int,
               today: dt.date) -> LabelRow:
    def cell(name: str) -> str:
        position = columns.get(name)
        if position is None or position >= len(values):
            return ""
        return values[position].strip()

    sop = cell(SOP_COLUMN) or None
    study = cell(STUDY_COLUMN) or None
    laterality = cell(LATERALITY_COLUMN).upper() or None

    if sop is not None:
        _check_uid(sop, "SOPInstanceUID")
    if study is not None:
        _check_uid(study, "StudyInstanceUID")
    if laterality is not None and laterality not in LATERALITIES:
        raise ValueError(f"laterality must be L or R, got {cell(LATERALITY_COLUMN)!r}")
    if sop is None and (study is None or laterality is None):
        raise ValueError("a row needs SOPInstanceUID, or StudyInstanceUID with laterality; "
                         f"got StudyInstanceUID {study!r} and laterality {laterality!r}")

    label = cell(LABEL_COLUMN).lower()
    if label not in LABEL_VALUES:
        raise ValueError(f"label must be one of {', '.join(LABEL_VALUES)}, got "
                         f"{cell(LABEL_COLUMN)!r}")

    source = cell(SOURCE_COLUMN).lower()
    if not source:
        raise ValueError("source is empty; give how the label was confirmed, such as "
                         "biopsy or follow-up")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ValueError(f"source must be at most {MAX_SOURCE_LENGTH} characters, got "
                         f"{len(source)}")

    raw_date = cell(DATE_COLUMN)
    try:
        label_date = dt.date.fromisoformat(raw_date)
    except ValueError:
        raise ValueError(f"date must be YYYY-MM-DD, got {raw_date!r}") from None
    if label_date > today:
        raise ValueError(f"date {label_date} is in the future (today is {today})")

    return LabelRow(line=line, sop_instance_uid=sop, study_instance_uid=study,
                    laterality=laterality, label=label, source=source, label_date=label_date)


def _check_uid(value: str, keyword: str) -> None:
    if len(value) > MAX_UID_LENGTH or not _UID.fullmatch(value):
        raise ValueError(f"{keyword} {value!r} is not a valid DICOM UID (digits and dots, "
                         f"no leading zeros, at most {MAX_UID_LENGTH} characters)")


# --- Storing labels ---------------------------------------------------------------------


def import_labels(session: Session, rows: Sequence[LabelRow]) -> LabelImport:
    """Store valid label rows: add new targets, update changed ones, skip identical ones.

    A row that names an archived instance by SOPInstanceUID and also gives
    StudyInstanceUID or laterality is rejected when those differ from the archived
    instance's. Rows that match no archived instance are stored and counted as unmatched,
    because labels may arrive before their images.

    NOTE: two imports running at the same time can both add the same target, because the
    unique constraint on the labels table treats NULL columns as distinct.
    """
    result = LabelImport()
    instances = _instances_for(session, rows)
    stored = _stored_labels(session, rows)
    breasts = {(instance.study_instance_uid, instance.laterality)
               for instance in instances.values()}

    for row in rows:
        if row.sop_instance_uid is not None:
            instance = instances.get(row.sop_instance_uid)
            mismatch = _mismatch(row, instance)
            if mismatch:
                result.rejected.append(RejectedRow(row.line, mismatch))
                continue
            matched = instance is not None
        else:
            matched = (row.study_instance_uid, row.laterality) in breasts
        if not matched:
            result.unmatched += 1

        existing = stored.get(row.key)
        if existing is None:
            label = Label(sop_instance_uid=row.key[0], study_instance_uid=row.key[1],
                          laterality=row.key[2], label=row.label, source=row.source,
                          label_date=row.label_date)
            session.add(label)
            stored[row.key] = label
            result.added += 1
        elif (existing.label, existing.label_date) != (row.label, row.label_date):
            logger.info("Label %d changes from %s (%s) to %s (%s)", existing.id,
                        existing.label, existing.label_date, row.label, row.label_date)
            existing.label = row.label
            existing.label_date = row.label_date
            # A changed label counts as new for the retraining flow's minimum.
            existing.imported_at = utc_now()
            result.updated += 1
        else:
            result.unchanged += 1
    session.flush()
    return result


def _mismatch(row: LabelRow, instance: Instance | None) -> str | None:
    if instance is None:
        return None
    if row.study_instance_uid and row.study_instance_uid != instance.study_instance_uid:
        return (f"StudyInstanceUID {row.study_instance_uid} differs from the archived "
                f"instance's {instance.study_instance_uid}")
    if row.laterality and row.laterality != instance.laterality:
        return (f"laterality {row.laterality} differs from the archived instance's "
                f"{instance.laterality}")
    return None


def _chunks(values: Iterable[str], size: int = 500) -> Iterable[list[str]]:
    # Stays under SQLite's limit on bound parameters per statement.
    ordered = sorted(set(values))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _instances_for(session: Session, rows: Sequence[LabelRow]) -> dict[str, Instance]:
    found: dict[str, Instance] = {}
    sops = [row.sop_instance_uid for row in rows if row.sop_instance_uid]
    studies = [row.study_instance_uid for row in rows
               if row.sop_instance_uid is None and row.study_instance_uid]
    for chunk in _chunks(sops):
        for instance in session.scalars(
                select(Instance).where(Instance.sop_instance_uid.in_(chunk))):
            found[instance.sop_instance_uid] = instance
    for chunk in _chunks(studies):
        for instance in session.scalars(
                select(Instance).where(Instance.study_instance_uid.in_(chunk))):
            found[instance.sop_instance_uid] = instance
    return found


def _stored_labels(session: Session, rows: Sequence[LabelRow]) -> dict[LabelKey, Label]:
    stored: dict[LabelKey, Label] = {}
    sops = [row.sop_instance_uid for row in rows if row.sop_instance_uid]
    studies = [row.study_instance_uid for row in rows if row.sop_instance_uid is None]
    for chunk in _chunks(sops):
        for label in session.scalars(select(Label).where(Label.sop_instance_uid.in_(chunk))):
            stored[_key_of(label)] = label
    for chunk in _chunks(studies):
        for label in session.scalars(
                select(Label).where(Label.study_instance_uid.in_(chunk),
                                    Label.sop_instance_uid.is_(None))):
            stored[_key_of(label)] = label
    return stored


def _key_of(label: Label) -> LabelKey:
    if label.sop_instance_uid is not None:
        return (label.sop_instance_uid, None, None, label.source)
    return (None, label.study_instance_uid, label.laterality, label.source)


# --- Reading labels for training --------------------------------------------------------


def labelled_instances(session: Session) -> list[LabelledInstance]:
    """Return every archived instance that a label applies to, with its most severe label.

    Sorted by SOPInstanceUID. Labels with a value outside `LABEL_VALUES` (possible when
    another system writes the table) are skipped with a warning.
    """
    best: dict[str, tuple[int, Instance]] = {}
    skipped = 0
    query = (
        select(Label, Instance)
        .join(Instance, or_(
            Label.sop_instance_uid == Instance.sop_instance_uid,
            (Label.sop_instance_uid.is_(None))
            & (Label.study_instance_uid == Instance.study_instance_uid)
            & (Label.laterality == Instance.laterality),
        ))
    )
    for label, instance in session.execute(query):
        value = (label.label or "").strip().lower()
        if value not in LABEL_VALUES:
            skipped += 1
            continue
        severity = LABEL_VALUES.index(value)
        current = best.get(instance.sop_instance_uid)
        if current is None or severity > current[0]:
            best[instance.sop_instance_uid] = (severity, instance)
    if skipped:
        logger.warning("Skipped %d labels with a value outside %s", skipped,
                       ", ".join(LABEL_VALUES))

    return [
        LabelledInstance(
            sop_instance_uid=uid,
            study_instance_uid=instance.study_instance_uid,
            patient_id=instance.patient_id,
            laterality=instance.laterality,
            archive_path=instance.archive_path,
            label=LABEL_VALUES[severity],
        )
        for uid, (severity, instance) in sorted(best.items())
    ]


def count_labels_since(session: Session, since: dt.datetime | None) -> int:
    """Return the number of labels imported after ``since``, or all labels when it is None."""
    query = select(func.count()).select_from(Label)
    if since is not None:
        query = query.where(Label.imported_at > since)
    return int(session.scalar(query) or 0)
