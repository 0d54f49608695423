"""SIGKILL of ``mammo process`` at random points of a run over 200 inputs, then reruns.

Every input must end in exactly one outcome (a result, a duplicate record or a quarantine
record), every scored instance must be archived once with its original bytes, and no file may
be left in the work or incoming folders. Real parts throughout: the flow in a subprocess
under Prefect's test API, the CNN served by the local gRPC server, PostgreSQL.
"""

from __future__ import annotations

import numpy as np

from tests.faults.harness import audit_outcomes, kill_and_rerun, write_inputs

INSTANCES = 190
DUPLICATES = 5
NOT_DICOM = 5
KILLS = 4



def test_killed_runs_lose_and_double_nothing(fault_env, tmp_path):
    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, duplicates=DUPLICATES,
                          not_dicom=NOT_DICOM, seed=7)
    assert len(inputs.names) == 200

    rng = np.random.default_rng()
    log_path = tmp_path / "runs.log"
    result = kill_and_rerun(fault_env, data_dir, kills=KILLS, expected_archived=INSTANCES,
                            rng=rng, log_path=log_path)

    assert result.final_exit_codes[-1] == 0, log_path.read_text()[-4000:]
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], data_dir, inputs)
    context = (f"kill targets {result.kill_targets}, jitters {result.kill_jitters}, "
               f"archived at each kill {result.archived_at_kill}: {audit.summary()}")
    assert audit.lost == [], context
    assert audit.doubled == [], context
    assert audit.wrong_outcome == [], context
    assert audit.incomplete_scores == [], context
    assert audit.archive_problems == [], context
    assert audit.left_in_work == [], context
    assert audit.left_in_incoming == [], context
    assert audit.scored_instances == INSTANCES, context
    assert audit.duplicate_records == DUPLICATES, context
    assert audit.quarantine_records == NOT_DICOM, context
    assert audit.quarantine_files == NOT_DICOM, context
