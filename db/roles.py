"""The read-only PostgreSQL role for reporting tools.

`grant_reporting` creates the role if it is missing and leaves it able to connect and to
select from the reporting views, and nothing else: no base table, no write, no other view.
PostgreSQL checks a view's base tables with the view owner's rights, so selecting from a view
needs no privilege on the tables behind it.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

from db.views import VIEW_NAMES

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def grant_reporting(engine: Engine, role: str, password: str | None = None) -> None:
    """Create or update ``role`` as a login role that may only read the reporting views.

    ``password`` sets the role's password when given; never pass it on a command line.
    Raises ValueError for a role name that is not a plain lower-case PostgreSQL identifier
    and NotImplementedError on databases other than PostgreSQL.
    """
    if engine.dialect.name != "postgresql":
        raise NotImplementedError(
            f"database roles need PostgreSQL; this database is {engine.dialect.name}")
    if not _ROLE_NAME.match(role):
        raise ValueError(f"role name must be lower-case letters, digits and underscores, "
                         f"starting with a letter or underscore, got {role!r}")
    quoted = engine.dialect.identifier_preparer.quote(role)

    with engine.begin() as connection:
        exists = connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :role"),
                                   {"role": role})
        if not exists:
            connection.execute(text(f"CREATE ROLE {quoted} LOGIN"))
        connection.execute(text(f"ALTER ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB "
                                f"NOCREATEROLE NOINHERIT"))
        if password is not None:
            # ALTER ROLE takes no bind parameters; quote the literal with the driver.
            literal = connection.connection.dbapi_connection.cursor().mogrify(
                "%s", (password,)).decode()
            connection.execute(text(f"ALTER ROLE {quoted} PASSWORD {literal}"))

        database = engine.dialect.identifier_preparer.quote(connection.scalar(
            text("SELECT current_database()")))
        connection.execute(text(f"GRANT CONNECT ON DATABASE {database} TO {quoted}"))
        connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {quoted}"))
        connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}"))
        connection.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {quoted}"))
        connection.execute(text(f"REVOKE CREATE ON SCHEMA public FROM {quoted}"))
        for view in VIEW_NAMES:
            connection.execute(text(f"GRANT SELECT ON {view} TO {quoted}"))
