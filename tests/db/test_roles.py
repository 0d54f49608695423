"""The read-only reporting role, logged in for real on PostgreSQL."""

import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from db.migrate import upgrade
from db.roles import grant_reporting
from db.views import VIEW_NAMES


@pytest.fixture
def reporting_role(fresh_postgres_url):
    upgrade(fresh_postgres_url)
    admin = create_engine(fresh_postgres_url)
    role = f"reporter_{uuid.uuid4().hex[:10]}"
    yield admin, role
    with admin.begin() as connection:
        if connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
    admin.dispose()


def _login(url: str, role: str):
    return create_engine(make_url(url).set(username=role, password=None))


class TestGrantReporting:
    def test_role_reads_views_only(self, reporting_role, fresh_postgres_url):
        admin, role = reporting_role
        grant_reporting(admin, role)
        grant_reporting(admin, role)  # running it again only updates the grants

        reporter = _login(fresh_postgres_url, role)
        with reporter.connect() as connection:
            for view in VIEW_NAMES:
                assert connection.execute(text(f"SELECT COUNT(*) FROM {view}")).scalar() == 0

        for statement in ("SELECT * FROM instances", "SELECT * FROM model_scores",
                          "SELECT * FROM quarantine_records",
                          "INSERT INTO labels (label, source, imported_at) "
                          "VALUES ('benign', 'biopsy', now())",
                          "DELETE FROM duplicate_records",
                          "CREATE TABLE stolen (id int)"):
            with reporter.connect() as connection:
                with pytest.raises(ProgrammingError, match="permission denied"):
                    connection.execute(text(statement))
        reporter.dispose()

    def test_invalid_role_name_raises(self, reporting_role):
        admin, _ = reporting_role
        with pytest.raises(ValueError, match="role name must be lower-case"):
            grant_reporting(admin, 'x"; DROP TABLE instances; --')

    def test_sqlite_raises(self, tmp_path):
        engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
        with pytest.raises(NotImplementedError, match="need PostgreSQL"):
            grant_reporting(engine, "reporter")

    def test_password_is_set(self, reporting_role):
        admin, role = reporting_role
        grant_reporting(admin, role, password="s3cret'quote")

        with admin.connect() as connection:
            stored = connection.execute(text(
                "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = :r"),
                {"r": role}).scalar()
        assert stored is True
