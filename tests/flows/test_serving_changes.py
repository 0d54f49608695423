"""The flow while the model server changes under it: a new version, and a server restart.

Both tests use the four real architectures of the session's model repository, served by the
local gRPC server on a fixed free port, and real PostgreSQL through Prefect's test API.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.queries import instance_results
from db.schema import Instance, QuarantineRecord
from mammo.errors import ModelServingError
from mammo.settings import MODEL_NAMES, Settings
from models.repository import ModelRepository
from serving.client import ServingClient
from serving.local_server import LocalModelServer

#: Models that get version 2 in the new-version test: the two with the fewest parameters.
UPDATED_MODELS = ("cnn", "vgg19")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def drop_files(files: list[Path], incoming: Path) -> None:
    for source in files:
        shutil.copyfile(source, incoming / f"{source.parent.name}_{source.name}")


class ServerControl:
    """The local model server on one fixed port, which a test can stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: LocalModelServer | None = None

    def start(self) -> None:
        self.server = LocalModelServer(Settings(), port=self.port)
        self.server.start()

    def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.stop(grace)
            self.server = None


@pytest.fixture
def serving_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_repository: Path, fresh_postgres_url
) -> Iterator[tuple[Settings, ServerControl]]:
    """Flow settings over a repository of its own, with a server the test controls.

    Version 1 of each model links to the session's bootstrapped export, so the test can
    publish more versions without changing the shared repository.
    """
    repository = tmp_path / "models"
    for name in MODEL_NAMES:
        (repository / name).mkdir(parents=True)
        (repository / name / "1").symlink_to(model_repository / name / "1")
    (repository / ".staging").mkdir()

    port = free_port()
    environment = {
        "MAMMO_DATA_DIR": str(tmp_path / "data"),
        "MAMMO_MODEL_REPOSITORY": str(repository),
        "MAMMO_DATABASE_URL": fresh_postgres_url,
        "MAMMO_STABILITY_SECONDS": "0",
        "MAMMO_BATCH_SIZE": "2",
        "MAMMO_SERVING_ADDRESS": f"127.0.0.1:{port}",
        "MAMMO_SERVING_POLL_SECONDS": "0.5",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = Settings()
    settings.ensure_folders()
    upgrade(settings.resolved_database_url())
    control = ServerControl(port)
    control.start()
    yield settings, control
    control.stop(grace=1)


def read_results(settings: Settings):
    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        frame = instance_results(session)
        instances = session.scalar(select(func.count()).select_from(Instance))
        quarantined = session.scalar(select(func.count()).select_from(QuarantineRecord))
    engine.dispose()
    return frame, instances, quarantined


def files_under(folder: Path) -> list[Path]:
    """Return the DICOM files below ``folder``, leaving out the work folders' lock files."""
    return sorted(path for path in folder.rglob("*.dcm") if path.is_file())


@pytest.mark.usefixtures("prefect_harness")
class TestNewVersionWhileServing:
    def test_next_run_uses_new_version(self, serving_environment, cbis_ddsm_files, caplog):
        from flows.process_incoming import process_incoming

        settings, _control = serving_environment
        caplog.set_level(logging.INFO, logger="serving.client")
        drop_files(cbis_ddsm_files[:4], settings.incoming_dir)
        first = process_incoming()

        # Score continuously with one client while version 2 is published and loaded.
        observed: list[dict[str, int]] = []
        failures: list[BaseException] = []
        stop = threading.Event()
        images = np.random.default_rng(3).integers(0, 256, (2, 64, 64), dtype=np.uint8)

        def score_until_stopped() -> None:
            with ServingClient(settings) as client:
                client.check_models()
                while not stop.is_set():
                    try:
                        scores = client.score(images)
                    except Exception as error:  # recorded for the assert below
                        failures.append(error)
                        return
                    observed.append({name: result.version for name, result in scores.items()})

        scorer = threading.Thread(target=score_until_stopped)
        scorer.start()
        repository = ModelRepository(settings.model_repository)
        source_repository = settings.model_repository
        try:
            for name in UPDATED_MODELS:
                source = (source_repository / name / "1").resolve()
                repository.publish(
                    name,
                    lambda folder, source=source: shutil.copytree(
                        source, folder, dirs_exist_ok=True
                    ),
                    {"input_size": 64, "weights_source": "copy of version 1"},
                )
            switched = wait_until(
                lambda: bool(observed)
                and all(observed[-1][name] == 2 for name in UPDATED_MODELS),
                timeout=600,
            )
        finally:
            stop.set()
            scorer.join()

        assert switched, f"last versions seen: {observed[-1:]}"
        assert failures == []
        for name in MODEL_NAMES:
            versions = [seen[name] for seen in observed]
            assert versions == sorted(versions), f"{name} went back to an older version"

        drop_files(cbis_ddsm_files[4:], settings.incoming_dir)
        second = process_incoming()

        frame, instances, quarantined = read_results(settings)
        assert first["scored"] == 4
        assert second["scored"] == 4
        assert instances == 8
        assert quarantined == 0
        expected = {
            first["flow_run_id"]: {name: 1 for name in MODEL_NAMES},
            second["flow_run_id"]: {
                name: 2 if name in UPDATED_MODELS else 1 for name in MODEL_NAMES
            },
        }
        for _, row in frame.iterrows():
            for name in MODEL_NAMES:
                assert row[f"{name}_version"] == expected[row["flow_run_id"]][name]
        resolved = [
            record.getMessage()
            for record in caplog.records
            if "is no longer served" in record.getMessage()
        ]
        # A request naming an unloaded version makes the client resolve that model again, at
        # most once per updated model here.
        assert len(resolved) <= len(UPDATED_MODELS), resolved


@pytest.mark.usefixtures("prefect_harness")
class TestServerRestartDuringRun:
    def _stop_after_first_batch(
        self, settings: Settings, control: ServerControl, restart: bool
    ) -> tuple[threading.Thread, list[str]]:
        events: list[str] = []

        def run() -> None:
            # The first archived file means the first batch is scored and committed.
            if not wait_until(lambda: bool(files_under(settings.archive_dir)), timeout=600):
                events.append("no batch finished")
                return
            # A graceful stop lets requests in flight finish and rejects new ones with
            # UNAVAILABLE. Requests still running when the grace period ends are CANCELLED,
            # which the client does not retry, so the grace period is generous.
            control.stop(grace=60)
            events.append("stopped")
            if restart:
                control.start()
                events.append("started")

        thread = threading.Thread(target=run)
        thread.start()
        return thread, events

    def test_retries_bridge_restart(
        self, serving_environment, cbis_ddsm_files, monkeypatch, caplog
    ):
        from flows.process_incoming import process_incoming

        settings, control = serving_environment
        caplog.set_level(logging.WARNING, logger="serving.client")
        # 0.5 s doubling over 8 retries waits up to 127.5 s, longer than a restart takes.
        monkeypatch.setenv("MAMMO_SERVING_RETRIES", "8")
        drop_files(cbis_ddsm_files, settings.incoming_dir)
        thread, events = self._stop_after_first_batch(settings, control, restart=True)
        try:
            result = process_incoming()
        finally:
            thread.join()

        frame, instances, quarantined = read_results(settings)
        retries = [
            record.getMessage()
            for record in caplog.records
            if "failed with UNAVAILABLE (retry" in record.getMessage()
        ]
        assert events == ["stopped", "started"]
        assert retries, "no request was retried while the server was down"
        assert result["scored"] == 8
        assert instances == 8
        assert quarantined == 0
        assert len(files_under(settings.archive_dir)) == 8
        assert files_under(settings.work_dir) == []
        assert files_under(settings.quarantine_dir) == []

    def test_files_left_for_next_run(self, serving_environment, cbis_ddsm_files, monkeypatch):
        from flows.process_incoming import process_incoming

        settings, control = serving_environment
        monkeypatch.setenv("MAMMO_SERVING_RETRIES", "1")
        monkeypatch.setenv("MAMMO_SERVING_RETRY_BACKOFF_SECONDS", "0.2")
        drop_files(cbis_ddsm_files, settings.incoming_dir)
        thread, events = self._stop_after_first_batch(settings, control, restart=False)
        try:
            with pytest.raises(ModelServingError, match="UNAVAILABLE"):
                process_incoming()
        finally:
            thread.join()

        _, scored_before, quarantined_before = read_results(settings)
        left = files_under(settings.work_dir) + files_under(settings.incoming_dir)
        assert events == ["stopped"]
        assert 0 < scored_before < 8
        assert quarantined_before == 0
        assert len(left) == 8 - scored_before
        assert files_under(settings.quarantine_dir) == []

        control.start()
        result = process_incoming()

        _, instances, quarantined = read_results(settings)
        assert result["scored"] == 8 - scored_before
        assert instances == 8
        assert quarantined == 0
        assert len(files_under(settings.archive_dir)) == 8
        assert files_under(settings.work_dir) == []
        assert files_under(settings.incoming_dir) == []
