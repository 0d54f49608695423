"""Fixtures of the fault tests: the CNN served alone at 32 px, Prefect's test API, and the
``MAMMO_*`` environment of a run against the session's PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import fault_environment, publish_fault_model


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory) -> tuple[Path, Path]:
    """The model repository holding the CNN at 32 px, and the model config that serves it."""
    return publish_fault_model(tmp_path_factory.mktemp("fault-model"))


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """URL of Prefect's test API, shared by in-process flows and ``mammo process`` runs."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


class RestartableModelServer:
    """The local model server on one port, which a test can stop and start again."""

    def __init__(self) -> None:
        self.port = 0
        self._server = None

    def start(self) -> int:
        from mammo.settings import Settings
        from serving.local_server import LocalModelServer

        server = LocalModelServer(Settings(), port=self.port)
        self.port = server.start()
        self._server = server
        return self.port

    def stop(self, grace: float = 0) -> None:
        if self._server is not None:
            self._server.stop(grace)
            self._server = None


@pytest.fixture
def fault_env(tmp_path, monkeypatch, fault_model, fresh_postgres_url,
              prefect_api_url) -> Iterator[dict[str, str]]:
    """Environment of a fault run against a running model server and an upgraded database.

    The variables are also set in this process, so in-process flows and `Settings()` see the
    same configuration as ``mammo process`` subprocesses. The server is in
    ``fault_env.model_server``.
    """
    from db.migrate import upgrade
    from mammo.settings import Settings

    repository, config = fault_model
    environment = fault_environment(tmp_path / "data", database_url=fresh_postgres_url,
                                    repository=repository, model_config=config,
                                    serving_address="127.0.0.1:0")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    server = RestartableModelServer()
    port = server.start()
    environment["MAMMO_SERVING_ADDRESS"] = f"127.0.0.1:{port}"
    environment["PREFECT_API_URL"] = prefect_api_url
    monkeypatch.setenv("MAMMO_SERVING_ADDRESS", environment["MAMMO_SERVING_ADDRESS"])
    Settings().ensure_folders()
    upgrade(fresh_postgres_url)
    yield FaultEnvironment(environment, server)
    server.stop()


class FaultEnvironment(dict):
    """The ``MAMMO_*`` and Prefect variables of a fault run, and its model server."""

    def __init__(self, variables: dict[str, str], model_server: RestartableModelServer):
        super().__init__(variables)
        self.model_server = model_server
