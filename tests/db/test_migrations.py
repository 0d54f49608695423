"""Alembic migrations on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db.engine import make_engine
from db.migrate import current_revision, downgrade, upgrade
from db.schema import Base

TABLES = {"processing_runs", "instances", "model_scores", "second_opinions",
          "duplicate_records", "quarantine_records", "model_versions", "labels",
          "retraining_runs", "model_candidates", "ensemble_configurations"}


class TestUpgrade:
    def test_upgrade_creates_every_table(self, database_url):
        upgrade(database_url)

        engine = make_engine(database_url)
        assert TABLES <= set(inspect(engine).get_table_names())
        engine.dispose()

    def test_schema_matches_models(self, database_url):
        upgrade(database_url)

        engine = make_engine(database_url)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection),
                                           Base.metadata)
        engine.dispose()
        assert differences == []

    def test_downgrade_then_upgrade_again(self, database_url):
        upgrade(database_url)
        downgrade(database_url, "base")

        engine = make_engine(database_url)
        assert not TABLES & set(inspect(engine).get_table_names())
        engine.dispose()
        assert current_revision(database_url) is None

        upgrade(database_url)
        assert current_revision(database_url) == "0003"

    def test_upgrade_twice_is_harmless(self, database_url):
        upgrade(database_url)
        upgrade(database_url)

        assert current_revision(database_url) == "0003"
