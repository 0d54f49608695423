"""The flow against a PostgreSQL server that drops its connections in the middle of a run."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from sqlalchemy import create_engine, func, select, text

from db.schema import Instance, ModelScore, SecondOpinion


@pytest.mark.usefixtures("prefect_harness")
class TestDatabaseDisconnect:
    def test_terminated_backends_leave_one_row_per_instance(self, flow_settings,
                                                            cbis_ddsm_files):
        from flows.process_incoming import process_incoming

        for source in cbis_ddsm_files:
            shutil.copyfile(source, flow_settings.incoming_dir / source.name)
        url = flow_settings.resolved_database_url()
        watcher = create_engine(url)
        terminated: list[int] = []
        stop = threading.Event()

        def terminate_after_first_batch() -> None:
            # Once the first batch is committed, kill every other connection to the
            # database, as a PostgreSQL restart or a network cut would.
            while not stop.is_set():
                with watcher.connect() as connection:
                    rows = connection.scalar(select(func.count()).select_from(SecondOpinion))
                    if rows:
                        result = connection.execute(text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                        terminated.extend(row[0] for row in result)
                        return
                time.sleep(0.05)

        thread = threading.Thread(target=terminate_after_first_batch)
        thread.start()
        try:
            result = process_incoming(batch_size=2)
        finally:
            stop.set()
            thread.join()

        assert terminated, "no backend was terminated during the run"
        assert result["scored"] == 8
        with watcher.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(SecondOpinion)) == 8
            assert connection.scalar(select(func.count()).select_from(Instance)) == 8
            assert connection.scalar(select(func.count()).select_from(ModelScore)) == 32
        watcher.dispose()
