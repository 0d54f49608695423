"""Runs of ``mammo process`` that overlap over one incoming folder, and a backlog of late
runs that start after the work is done.

Two runs start at the same moment while a dead run's work folder waits to be reclaimed, a
third starts while they work, and three late runs start together after all of them. Each
file must be claimed by exactly one run: the files claimed by all runs add up to the number
of inputs, and no input is recorded twice or as a duplicate of itself. The late runs find
nothing and exit cleanly.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, select

from db.schema import ProcessingRun
from tasks.intake import WorkFolder
from tests.faults.harness import (
    RUN_TIMEOUT_SECONDS,
    audit_outcomes,
    kill_process_group,
    start_process_run,
    wait_for_work_folder,
    write_inputs,
)

INSTANCES = 200
LEFT_BY_DEAD_RUN = 20
LATE_RUNS = 3


def _leave_dead_run(data_dir: Path, files: int) -> None:
    """Claim ``files`` inputs into a work folder whose lock is then released, as a run killed
    after claiming leaves it."""
    incoming = data_dir / "incoming"
    work = WorkFolder(data_dir / "work", "dead-run").__enter__()
    for path in sorted(incoming.iterdir())[:files]:
        assert work.claim(incoming, path) is not None
    os.close(work._lock_fd)  # what the kernel does when the process dies


def _wait_all(processes) -> list[int]:
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=RUN_TIMEOUT_SECONDS))
        except Exception:
            kill_process_group(process)
            raise
    return codes


def test_overlapping_runs_claim_each_file_once(fault_env, tmp_path):
    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, seed=41)
    _leave_dead_run(data_dir, LEFT_BY_DEAD_RUN)
    log_path = tmp_path / "runs.log"

    together = [start_process_run(fault_env, log_path) for _ in range(2)]
    wait_for_work_folder(data_dir / "work", together[0], known={"dead-run"})
    overlapping = start_process_run(fault_env, log_path)
    codes = _wait_all([*together, overlapping])
    assert codes == [0, 0, 0], log_path.read_text()[-4000:]

    late = [start_process_run(fault_env, log_path) for _ in range(LATE_RUNS)]
    late_codes = _wait_all(late)
    assert late_codes == [0] * LATE_RUNS, log_path.read_text()[-4000:]

    engine = create_engine(fault_env["MAMMO_DATABASE_URL"])
    with engine.connect() as connection:
        runs = connection.execute(
            select(ProcessingRun.status, ProcessingRun.files_claimed, ProcessingRun.scored)
            .order_by(ProcessingRun.started_at)).all()
    engine.dispose()
    claims = f"files claimed per run: {[claimed for _, claimed, _ in runs]}"
    assert len(runs) == 3 + LATE_RUNS, claims
    assert [status for status, _, _ in runs] == ["completed"] * len(runs)
    assert sum(claimed for _, claimed, _ in runs) == INSTANCES, claims
    assert sum(scored for _, _, scored in runs) == INSTANCES, claims
    assert [claimed for _, claimed, _ in runs[3:]] == [0] * LATE_RUNS, claims

    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    assert audit.clean, f"{audit.summary()}; {claims}"
    assert audit.scored_instances == INSTANCES
    assert audit.duplicate_records == 0
    assert audit.quarantine_records == 0
