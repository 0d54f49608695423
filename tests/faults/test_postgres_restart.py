"""PostgreSQL restarts in the middle of a run: no write is lost or doubled.

The test starts a private PostgreSQL cluster in a temporary folder on a free port. initdb and
pg_ctl run as the ``postgres`` user, because PostgreSQL refuses to run as root. The test
restarts the cluster with ``pg_ctl restart -m fast`` while the flow writes batches.
The fast shutdown ends every connection, so a batch may lose its connection mid-transaction
or find the server down when it reconnects. The machine's shared PostgreSQL is not touched.
"""

from __future__ import annotations

import glob
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from db.schema import ProcessingRun
from tests.faults.harness import audit_outcomes, write_inputs

INSTANCES = 80
ARCHIVED_BEFORE_RESTART = 12


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateCluster:
    """A PostgreSQL cluster in ``folder`` on ``port``, run as the postgres user."""

    def __init__(self, bin_dir: Path, folder: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.port = port
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin_dir / tool), *args],
                       check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync")

    def _options(self) -> str:
        return f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", self._options(), "-w",
                          "-l", str(self.folder / "server.log"), "start")

    def restart(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", self._options(), "-w",
                          "-m", "fast", "-l", str(self.folder / "server.log"), "restart")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivateCluster]:
    bin_dir = _postgres_bin()
    if bin_dir is None or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's server binaries under /usr/lib/postgresql and runuser")
    folder = Path(tempfile.mkdtemp(prefix="mammo-private-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    cluster = PrivateCluster(bin_dir, folder, _free_port())
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _archived(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "archive").rglob("*.dcm") if p.is_file())


class WarningLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def database_warnings() -> Iterator[WarningLog]:
    handler = WarningLog()
    logger = logging.getLogger("db.writes")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_restart_mid_run_loses_and_doubles_nothing(fault_env, private_postgres, monkeypatch,
                                                   tmp_path, database_warnings):
    from db.migrate import upgrade
    from flows.process_incoming import process_incoming

    monkeypatch.setenv("MAMMO_DATABASE_URL", private_postgres.url)
    upgrade(private_postgres.url)
    data_dir = tmp_path / "data"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, seed=31)

    restarted_at: list[int] = []

    def restart_mid_run() -> None:
        deadline = time.monotonic() + 120
        while _archived(data_dir) < ARCHIVED_BEFORE_RESTART and time.monotonic() < deadline:
            time.sleep(0.002)
        restarted_at.append(_archived(data_dir))
        private_postgres.restart()

    restarter = threading.Thread(target=restart_mid_run, daemon=True)
    restarter.start()
    result = process_incoming()
    restarter.join(timeout=120)

    assert restarted_at and restarted_at[0] < INSTANCES, "the restart came after the run"
    assert result["scored"] == INSTANCES
    assert any("Database connection failed" in m for m in database_warnings.messages)
    audit = audit_outcomes(private_postgres.url, data_dir, inputs)
    assert audit.clean, audit.summary()
    assert audit.scored_instances == INSTANCES
    assert audit.quarantine_records == 0
    engine = create_engine(private_postgres.url)
    with engine.connect() as connection:
        statuses = connection.scalars(select(ProcessingRun.status)).all()
    engine.dispose()
    assert statuses == ["completed"]
