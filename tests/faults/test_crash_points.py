"""SIGKILL of ``mammo process`` at chosen points of a run, then a rerun.

Random kills (test_kill_and_rerun.py) rarely land at some points, so each run here kills
itself at one call of a product function (see `tests.faults.crash_at`). The points are the
middle of claiming, the middle of reclaiming a dead run's files, inside the database
transaction, the middle of the file moves, and between a batch's commit and its moves. Every run after the first starts
from what the killed runs left behind. Copies of every instance arrive after the crashes, so
the final run (one batch holding everything) finds a copy next to the committed but
unarchived file it duplicates.
"""

from __future__ import annotations

from tests.faults.harness import (
    audit_outcomes,
    deliver,
    run_statuses,
    run_to_completion,
    write_inputs,
)

INSTANCES = 40
NOT_DICOM = 3
KILLED = -9

#: (target, call number, before or after), in the order the runs kill themselves.
CRASH_POINTS = [
    ("tasks.intake:WorkFolder.claim", 20, "after"),  # 20 files claimed, the rest not yet
    ("tasks.intake:ClaimedFile.from_work_path", 10, "after"),  # 10 of 20 files reclaimed
    ("db.writes:record_quarantine", 2, "before"),  # inside the second batch's transaction
    ("tasks.file_outcomes:_move", 3, "after"),  # third file moved, the rest of batch not
    ("tasks.file_outcomes:apply_file_outcomes", 2, "before"),  # batch 2 committed, not moved
]


def test_crash_points_lose_and_double_nothing(fault_env, tmp_path):
    data_dir = tmp_path / "data"
    incoming = data_dir / "incoming"
    later = tmp_path / "later"
    inputs = write_inputs(incoming, instances=INSTANCES, duplicates=INSTANCES,
                          not_dicom=NOT_DICOM, seed=11, duplicates_dir=later)
    log_path = tmp_path / "runs.log"

    for crash_at in CRASH_POINTS:
        code = run_to_completion(fault_env, log_path, crash_at=crash_at)
        assert code == KILLED, f"run meant to crash at {crash_at} exited with {code}: " \
                               f"{log_path.read_text()[-3000:]}"

    deliver(later, incoming)
    code = run_to_completion({**fault_env, "MAMMO_BATCH_SIZE": "200"}, log_path)
    assert code == 0, log_path.read_text()[-4000:]

    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    context = audit.summary()
    assert audit.lost == [], context
    assert audit.doubled == [], context
    assert audit.wrong_outcome == [], context
    assert audit.incomplete_scores == [], context
    assert audit.archive_problems == [], context
    assert audit.left_in_work == [], context
    assert audit.left_in_incoming == [], context
    assert audit.scored_instances == INSTANCES, context
    assert audit.duplicate_records == INSTANCES, context
    assert audit.quarantine_records == NOT_DICOM, context
    # Each killed run's folder was reclaimed by the run after it, which recorded the kill.
    assert run_statuses(fault_env["MAMMO_DATABASE_URL"]) == \
        ["crashed"] * len(CRASH_POINTS) + ["completed"]

