"""Records of the retraining flow: runs, candidates and the ensemble configurations it chose.

Every function takes a session and never commits; the flow opens one transaction per step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.schema import EnsembleConfiguration, ModelCandidate, RetrainingRun, utc_now
from db.writes import upsert


def start_retraining_run(session: Session, flow_run_id: str, *, parameters: dict[str, Any],
                         dry_run: bool) -> None:
    upsert(session, RetrainingRun.__table__, [{
        "flow_run_id": flow_run_id, "started_at": utc_now(), "status": "running",
        "dry_run": dry_run, "parameters": parameters, "new_labels": 0,
        "labelled_instances": 0,
    }], key=("flow_run_id",))


def finish_retraining_run(session: Session, flow_run_id: str, *, status: str,
                          new_labels: int, labelled_instances: int,
                          message: str | None) -> None:
    run = session.get(RetrainingRun, flow_run_id)
    if run is None:
        raise LookupError(f"retraining run {flow_run_id} was never started")
    run.status = status
    run.finished_at = utc_now()
    run.new_labels = int(new_labels)
    run.labelled_instances = int(labelled_instances)
    run.message = message


def last_completed_run_start(session: Session) -> dt.datetime | None:
    """Return when the last completed retraining run that was not a dry run started."""
    return session.scalar(
        select(RetrainingRun.started_at)
        .where(RetrainingRun.status == "completed", RetrainingRun.dry_run.is_(False))
        .order_by(RetrainingRun.started_at.desc())
        .limit(1)
    )


def record_candidates(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    return upsert(session, ModelCandidate.__table__, rows, key=("flow_run_id", "model_name"))


def record_ensemble_configuration(session: Session, row: Mapping[str, Any]) -> None:
    upsert(session, EnsembleConfiguration.__table__, [row], key=("flow_run_id",))


def ensemble_configuration_for(session: Session,
                               model_versions: str) -> EnsembleConfiguration | None:
    """Return the newest ensemble configuration chosen for exactly these served versions.

    ``model_versions`` is formatted like `SecondOpinion.model_versions`, for example
    ``"cnn:2,efficientnetb7:1,resnet50:1,vgg19:1"``.
    """
    return session.scalar(
        select(EnsembleConfiguration)
        .where(EnsembleConfiguration.model_versions == model_versions)
        .order_by(EnsembleConfiguration.created_at.desc())
        .limit(1)
    )
