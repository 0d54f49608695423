"""Idempotent writes of outcomes, runs and model versions.

Every function takes a session and never commits: the caller opens one transaction per batch
(``with session_factory.begin() as session``), so a batch lands whole or not at all. Rows are
written as one bulk ``INSERT ... ON CONFLICT DO UPDATE`` per table (PostgreSQL and SQLite both
support it), deduplicated by key first, so writing the same batch twice leaves the same rows.

Values cross into the database through `to_db_value`: NumPy scalars become Python numbers
(under NumPy 2, psycopg2 writes ``np.float64(0.7)`` as that literal text and cannot adapt
``np.float32`` or ``np.int64``), and NaN or infinite floats raise instead of being stored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.schema import (
    DuplicateRecord,
    Instance,
    ModelScore,
    ModelVersion,
    ProcessingRun,
    QuarantineRecord,
    SecondOpinion,
    utc_now,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def to_db_value(value: Any) -> Any:
    """Convert a NumPy scalar to its Python type; reject NaN and infinite floats."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to store the non-finite number {value!r}")
    return value


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: to_db_value(value) for key, value in row.items()}


def upsert(session: Session, table: Table, rows: Iterable[Mapping[str, Any]],
           key: Sequence[str]) -> int:
    """Insert ``rows`` into ``table``, updating the non-key columns of rows that exist.

    Rows with the same key inside ``rows`` are collapsed, the last one winning, because one
    ``INSERT ... ON CONFLICT`` statement may not touch a row twice. Returns the number of
    distinct keys written.
    """
    unique: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        cleaned = _clean(row)
        unique[tuple(cleaned[column] for column in key)] = cleaned
    if not unique:
        return 0

    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise NotImplementedError(f"upsert supports PostgreSQL and SQLite, not {dialect!r}")

    values = list(unique.values())
    update_columns = [column for column in values[0] if column not in key]
    if update_columns:
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={column: statement.excluded[column] for column in update_columns},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(key))
    session.execute(statement, values)
    return len(values)


def write_second_opinions(session: Session, *, instances: Sequence[Mapping[str, Any]],
                          scores: Sequence[Mapping[str, Any]],
                          opinions: Sequence[Mapping[str, Any]]) -> int:
    """Write scored instances with their per-model scores and ensemble results."""
    upsert(session, Instance.__table__, instances, key=("sop_instance_uid",))
    upsert(session, ModelScore.__table__, scores, key=("sop_instance_uid", "model_name"))
    return upsert(session, SecondOpinion.__table__, opinions, key=("sop_instance_uid",))


def record_duplicates(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    return upsert(session, DuplicateRecord.__table__, rows, key=("claim_id",))


def record_quarantine(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    return upsert(session, QuarantineRecord.__table__, rows, key=("claim_id",))


def record_model_versions(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Record model versions; a later write of the same version updates what is known."""
    return upsert(session, ModelVersion.__table__, rows, key=("model_name", "version"))


def start_run(session: Session, flow_run_id: str) -> None:
    upsert(session, ProcessingRun.__table__,
           [{"flow_run_id": flow_run_id, "started_at": utc_now(), "status": "running"}],
           key=("flow_run_id",))


def finish_run(session: Session, flow_run_id: str, *, status: str,
               counts: Mapping[str, int]) -> None:
    """Store the end state of a run: ``counts`` has files_claimed, scored, duplicates,
    quarantined."""
    run = session.get(ProcessingRun, flow_run_id)
    if run is None:
        run = ProcessingRun(flow_run_id=flow_run_id, started_at=utc_now())
        session.add(run)
    run.status = status
    run.finished_at = utc_now()
    for name, value in counts.items():
        setattr(run, name, int(value))


def mark_runs_crashed(session: Session, flow_run_ids: Sequence[str]) -> int:
    """Set the runs among ``flow_run_ids`` still recorded as running to "crashed", and
    return how many there were.

    A run killed before its end (SIGKILL, power loss) never records its end. The next run
    that finds its work folder abandoned calls this. Rows in other states stay as they are.
    """
    if not flow_run_ids:
        return 0
    result = session.execute(
        update(ProcessingRun)
        .where(ProcessingRun.flow_run_id.in_(list(flow_run_ids)),
               ProcessingRun.status == "running")
        .values(status="crashed", finished_at=utc_now()))
    return result.rowcount


def find_instances(session: Session, sop_instance_uids: Iterable[str]) -> dict[str, Instance]:
    """Return the already scored instances among ``sop_instance_uids``, by UID."""
    uids = sorted(set(sop_instance_uids))
    found: dict[str, Instance] = {}
    for start in range(0, len(uids), 500):  # stay under SQLite's bound-parameter limit
        chunk = uids[start:start + 500]
        for instance in session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(chunk))
        ):
            found[instance.sop_instance_uid] = instance
    return found


def run_in_transaction(session_factory: sessionmaker[Session],
                       work: Callable[[Session], T], *, retries: int = 1,
                       backoff_seconds: float = 0.0) -> T:
    """Run ``work`` in one transaction, running it again when the database connection fails.

    A connection failure is a connection lost mid-way (``DBAPIError.connection_invalidated``)
    or an `OperationalError`, which the driver raises when it cannot connect, for example
    while PostgreSQL restarts. The server rolled the transaction back, or committed it when
    the connection dropped during COMMIT. Every write here is an idempotent upsert, so
    running the whole unit again cannot double a row in either case. Retry ``i`` (from 1)
    waits ``backoff_seconds * 2 ** (i - 1)`` seconds. Any other error propagates at once.
    """
    attempt = 0
    while True:
        try:
            with session_factory.begin() as session:
                return work(session)
        except DBAPIError as error:
            failed_connection = (error.connection_invalidated
                                 or isinstance(error, OperationalError))
            if not failed_connection or attempt >= retries:
                raise
            delay = backoff_seconds * 2 ** attempt
            attempt += 1
            logger.warning("Database connection failed during a transaction (%s: %s); "
                           "retrying it in %.2f s, attempt %d of %d",
                           type(error.orig).__name__, str(error.orig).strip(), delay,
                           attempt, retries)
            time.sleep(delay)
