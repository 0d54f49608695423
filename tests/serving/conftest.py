"""Fixtures for the serving tests: a model repository of tiny models and a local server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammo.settings import Settings
from serving.local_server import LocalModelServer
from tests.serving.tiny_models import MODEL_SIZES, make_settings, publish_version


@pytest.fixture(scope="session")
def repository_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("template") / "models"
    for name, size in MODEL_SIZES.items():
        publish_version(repository / name, 1, size)
        # Entries the server must ignore next to the version folders.
        (repository / name / ".highest_version").write_text("1")
        (repository / name / "1" / "assets.extra").mkdir()
    return repository


@pytest.fixture
def model_repository(repository_template: Path, tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    shutil.copytree(repository_template, repository)
    return repository


@pytest.fixture
def server_settings(model_repository: Path) -> Settings:
    return make_settings(model_repository)


@pytest.fixture
def server(server_settings: Settings) -> Iterator[LocalModelServer]:
    local_server = LocalModelServer(server_settings, port=0)
    local_server.start()
    yield local_server
    local_server.stop(0)


@pytest.fixture
def client_settings(server: LocalModelServer, server_settings: Settings) -> Settings:
    return server_settings.model_copy(
        update={"serving_address": f"127.0.0.1:{server.bound_port}"}
    )
