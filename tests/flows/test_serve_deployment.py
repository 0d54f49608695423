"""`mammo serve --with-server`: the deployment runs on its schedule, one run at a time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from sqlalchemy import create_engine, select

from db.schema import ProcessingRun

SERVE_TIMEOUT_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class TestServeDeployment:
    def test_scheduled_runs_score_files(self, flow_settings, cbis_ddsm_files, tmp_path):
        for source in cbis_ddsm_files[:2]:
            shutil.copyfile(source, flow_settings.incoming_dir / source.name)
        environment = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "MAMMO_PROCESS_INTERVAL_SECONDS": "5",
            # The scheduler service creates runs every 60 s by default; poll faster here.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        }
        environment.pop("PREFECT_API_URL", None)
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mammo.cli", "serve", "--with-server",
                 "--server-port", str(_free_port())],
                env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        engine = create_engine(flow_settings.resolved_database_url())
        runs: list[ProcessingRun] = []
        try:
            deadline = time.monotonic() + SERVE_TIMEOUT_SECONDS
            while time.monotonic() < deadline and process.poll() is None:
                with engine.connect() as connection:
                    runs = connection.execute(select(ProcessingRun)).all()
                # Wait for two finished runs: a run that has only started is not enough to
                # check that runs never overlap.
                finished_runs = [run for run in runs if run.finished_at is not None]
                if sum(run.scored for run in runs) >= 2 and len(finished_runs) >= 2:
                    break
                time.sleep(2)
        finally:
            _stop(process)
            engine.dispose()

        output = log_path.read_text(errors="replace")
        assert sum(run.scored for run in runs) == 2, output[-3000:]
        finished = sorted((run for run in runs if run.finished_at), key=lambda r: r.started_at)
        assert len(finished) >= 2, output[-3000:]
        for earlier, later in zip(finished, finished[1:]):
            assert earlier.finished_at <= later.started_at  # never two runs at once
        assert len(list(flow_settings.archive_dir.glob("*/*.dcm"))) == 2
