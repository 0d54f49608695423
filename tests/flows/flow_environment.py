"""Settings for flow tests that run against a local model server, as a deployment would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from db.migrate import upgrade
from mammo.settings import Settings


@contextmanager
def served_flow_settings(monkeypatch, environment: dict[str, str]) -> Iterator[Settings]:
    """Export ``environment`` as MAMMO_* variables, like a deployment's, start the local model
    server on a free port for it, and yield the resulting settings with the database ready."""
    from serving.local_server import LocalModelServer

    for name, value in {**environment, "MAMMO_SERVING_ADDRESS": "127.0.0.1:0"}.items():
        monkeypatch.setenv(name, value)
    server = LocalModelServer(Settings(), port=0)
    port = server.start()
    monkeypatch.setenv("MAMMO_SERVING_ADDRESS", f"127.0.0.1:{port}")
    settings = Settings()
    settings.ensure_folders()
    upgrade(settings.resolved_database_url())
    try:
        yield settings
    finally:
        server.stop(grace=1)
