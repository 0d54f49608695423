"""The model server stops in the middle of a run and comes back on the same port.

Within the client's retries (``serving_retries`` with a doubling
``serving_retry_backoff_seconds``) the run rides out the outage: nothing is quarantined for
it and every instance is scored. An outage longer than the retries fails the run, which
leaves its claimed files in its work folder without quarantining them, and the next run
reclaims and scores them. The flow runs in this process under Prefect's test API, against the real local gRPC
server and PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from mammo.errors import ModelServingError
from tests.faults.harness import audit_outcomes, run_statuses, write_inputs

INSTANCES = 60
#: The outage starts once this many files are archived, so it falls in the middle of the run.
ARCHIVED_BEFORE_OUTAGE = 12


class RetryLog(logging.Handler):
    """Collect the serving client's retry warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def retry_log():
    handler = RetryLog()
    logger = logging.getLogger("serving.client")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _archived(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "archive").rglob("*.dcm") if p.is_file())


class Outage(threading.Thread):
    """Stop the model server once the run has archived some files; start it again after
    ``seconds``, or when `end` is called if ``seconds`` is None."""

    def __init__(self, model_server, data_dir: Path, seconds: float | None) -> None:
        super().__init__(daemon=True)
        self.model_server = model_server
        self.data_dir = data_dir
        self.seconds = seconds
        self.archived_at_start: int | None = None
        self._ended = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while _archived(self.data_dir) < ARCHIVED_BEFORE_OUTAGE:
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        # Requests already running may finish: one cut off ends with CANCELLED, which the
        # client does not retry, so the run would fail by design rather than ride it out.
        self.model_server.stop(grace=2.0)
        self.archived_at_start = _archived(self.data_dir)
        self._ended.wait(self.seconds)
        self.model_server.start()

    def end(self) -> None:
        self._ended.set()
        self.join(timeout=60)




def test_outage_within_retries_scores_all(fault_env, monkeypatch, tmp_path, retry_log):
    from flows.process_incoming import process_incoming

    # Retries wait 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s, 12.6 s in all: far longer than the
    # outage, and a bounded wait.
    monkeypatch.setenv("MAMMO_SERVING_RETRIES", "6")
    monkeypatch.setenv("MAMMO_SERVING_RETRY_BACKOFF_SECONDS", "0.2")
    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, seed=21)

    outage = Outage(fault_env.model_server, data_dir, seconds=1.5)
    outage.start()
    started = time.monotonic()
    result = process_incoming()
    elapsed = time.monotonic() - started
    outage.end()

    assert outage.archived_at_start is not None
    assert outage.archived_at_start < INSTANCES, "the outage started after the run ended"
    assert result["scored"] == INSTANCES
    assert result["quarantined"] == 0
    assert any("UNAVAILABLE" in message for message in retry_log.messages)
    assert elapsed < 60
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    assert audit.clean, audit.summary()
    assert audit.quarantine_records == 0
    assert run_statuses(fault_env["MAMMO_DATABASE_URL"]) == ["completed"]


def test_outage_beyond_retries_fails_run_and_keeps_files(fault_env, monkeypatch, tmp_path,
                                                           retry_log):
    from flows.process_incoming import process_incoming

    monkeypatch.setenv("MAMMO_SERVING_RETRIES", "2")
    monkeypatch.setenv("MAMMO_SERVING_RETRY_BACKOFF_SECONDS", "0.1")
    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, seed=22)

    outage = Outage(fault_env.model_server, data_dir, seconds=None)
    outage.start()
    with pytest.raises(ModelServingError, match="UNAVAILABLE after 2 retries"):
        process_incoming()
    assert outage.archived_at_start is not None
    assert outage.archived_at_start < INSTANCES

    left = [p for p in (data_dir / "work").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(left) == INSTANCES - _archived(data_dir)
    assert list((data_dir / "quarantine").rglob("*.*")) == []
    assert run_statuses(fault_env["MAMMO_DATABASE_URL"]) == ["failed"]
    retries = [m for m in retry_log.messages if "retry" in m and "UNAVAILABLE" in m]
    assert len(retries) == 2  # one Predict call of the failing batch, retried twice

    outage.end()
    result = process_incoming()

    assert result["files_claimed"] == len(left)
    assert result["quarantined"] == 0
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    assert audit.clean, audit.summary()
    assert audit.scored_instances == INSTANCES
    assert audit.quarantine_records == 0
    assert run_statuses(fault_env["MAMMO_DATABASE_URL"]) == ["failed", "completed"]
