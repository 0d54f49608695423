"""Engine and session factory for the results database.

The engine checks each pooled connection before use (pre-ping) and recycles connections older
than half an hour, so a restarted PostgreSQL or a dropped connection costs one reconnect, not a
failed run. SQLite runs in WAL mode with a busy timeout so a reader never blocks the flow.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

POOL_RECYCLE_SECONDS = 1800
SQLITE_BUSY_TIMEOUT_SECONDS = 30


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; no connection is opened until first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_recycle=POOL_RECYCLE_SECONDS)


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory; callers own the transaction (``with factory.begin()``)."""
    return sessionmaker(engine, expire_on_commit=False)


def describe_url(url: str) -> str:
    """Return ``url`` with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)
