"""Database credentials: from the URL setting or a Prefect Secret block, never in output."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import make_url

from mammo.cli import main
from mammo.settings import Settings

PASSWORD = "Sup3rSecret-Pw"


def _with_password(url: str) -> str:
    # The test server trusts local connections, so any password is accepted and the URL
    # still works; what matters is that the password never shows.
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.usefixtures("prefect_harness")
class TestSecretBlock:
    def test_url_read_from_secret_block(self, fresh_postgres_url, tmp_path):
        from prefect.blocks.system import Secret

        Secret(value=fresh_postgres_url).save("mammo-test-database-url", overwrite=True)
        settings = Settings(data_dir=tmp_path, database_secret_block="mammo-test-database-url")

        assert settings.resolved_database_url() == fresh_postgres_url

    def test_url_setting_wins_over_block(self, tmp_path):
        settings = Settings(data_dir=tmp_path, database_url="sqlite:///x.db",
                            database_secret_block="not-read")

        assert settings.resolved_database_url() == "sqlite:///x.db"


class TestPasswordNeverShown:
    def test_db_init_hides_password(self, fresh_postgres_url, tmp_path, monkeypatch, capsys,
                                    caplog):
        monkeypatch.setenv("MAMMO_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("MAMMO_DATABASE_URL", _with_password(fresh_postgres_url))
        caplog.set_level(logging.DEBUG)

        assert main(["db", "init"]) == 0

        output = capsys.readouterr()
        assert "***" in output.out
        assert PASSWORD not in output.out + output.err
        assert PASSWORD not in caplog.text

    def test_settings_repr_hides_nothing_secret(self, fresh_postgres_url, tmp_path):
        settings = Settings(data_dir=tmp_path, database_url=_with_password(fresh_postgres_url))

        assert PASSWORD not in repr(settings)
        assert PASSWORD not in str(settings)
