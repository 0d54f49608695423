"""The `mammo` command line on a SQLite database in a tmp folder."""

import csv
import io
import json

import pytest

from mammo.cli import main


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMMO_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("MAMMO_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["db", "init"]) == 0
    return tmp_path / "var"


def _write_exam(data_dir):
    from db.engine import make_engine
    from tests.db.test_views import _write_exam as write

    engine = make_engine(f"sqlite:///{data_dir / 'mammo.db'}")
    write(engine, "1.2.826.9", {("L", "CC"): 0.8, ("L", "MLO"): 0.3, ("R", "CC"): 0.1})
    engine.dispose()


class TestDbInit:
    def test_creates_database_and_prints_revision(self, data_dir, capsys):
        assert main(["db", "init"]) == 0
        assert "schema revision 0003" in capsys.readouterr().out
        assert (data_dir / "mammo.db").exists()

    def test_turkish_message(self, data_dir, capsys, monkeypatch):
        monkeypatch.setenv("MAMMO_LANGUAGE", "tr")
        assert main(["db", "init"]) == 0
        assert "Veritabanı hazır" in capsys.readouterr().out


class TestResults:
    def test_empty_database_says_so(self, data_dir, capsys):
        assert main(["results"]) == 0
        assert "No results match." in capsys.readouterr().err

    def test_csv_instance_level(self, data_dir, capsys):
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--format", "csv"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert len(rows) == 3
        assert {"cnn_probability", "vgg19_version", "text_en", "text_tr"} <= set(rows[0])

    def test_json_breast_level(self, data_dir, capsys):
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--level", "breast", "--format", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["laterality"], r["views_missing"]) for r in rows] == [("L", ""),
                                                                         ("R", "MLO")]

    def test_category_filter_and_table(self, data_dir, capsys):
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--level", "study", "--category", "suspicious"]) == 0
        output = capsys.readouterr().out
        assert "suspicious" in output
        assert main(["results", "--category", "not_suspicious", "--format", "csv"]) == 0
        assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 2

    def test_turkish_table_headers(self, data_dir, capsys, monkeypatch):
        _write_exam(data_dir)
        capsys.readouterr()
        monkeypatch.setenv("MAMMO_LANGUAGE", "tr")

        assert main(["results"]) == 0
        header = capsys.readouterr().out.splitlines()[0]
        assert "Olasılık" in header
        assert "Kategori" in header
        assert "cnn olasılığı" in header
        assert "vgg19 sürümü" in header
        assert main(["results", "--level", "breast"]) == 0
        output = capsys.readouterr().out
        assert "Eksik projeksiyonlar" in output
        assert "malignite açısından şüpheli" in output

    def test_english_table_keeps_column_names(self, data_dir, capsys):
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--level", "study"]) == 0
        output = capsys.readouterr().out
        assert "most_suspicious_laterality" in output.splitlines()[0]
        assert "suspicious for malignancy" in output

    def test_study_date_filter(self, data_dir, capsys):
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--date-from", "2026-12-01", "--format", "csv"]) == 0
        assert "No results match." in capsys.readouterr().err

    def test_invalid_date_is_rejected(self, data_dir, capsys):
        with pytest.raises(SystemExit):
            main(["results", "--date-from", "yesterday"])
        assert "expected a date as YYYY-MM-DD, got 'yesterday'" in capsys.readouterr().err


class TestGrantReporting:
    def test_grants_on_postgres(self, fresh_postgres_url, monkeypatch, capsys):
        import uuid

        from sqlalchemy import create_engine, text

        monkeypatch.setenv("MAMMO_DATABASE_URL", fresh_postgres_url)
        monkeypatch.setenv("REPORTER_PASSWORD", "pw")
        role = f"reporter_{uuid.uuid4().hex[:8]}"
        assert main(["db", "init"]) == 0
        try:
            assert main(["db", "grant-reporting", role, "--password-env",
                         "REPORTER_PASSWORD"]) == 0
            assert f"Role {role} may now read" in capsys.readouterr().out
        finally:
            admin = create_engine(fresh_postgres_url)
            with admin.begin() as connection:
                connection.execute(text(f"DROP OWNED BY {role}"))
                connection.execute(text(f"DROP ROLE {role}"))
            admin.dispose()

    def test_missing_password_variable_fails(self, data_dir, capsys):
        assert main(["db", "grant-reporting", "reporter", "--password-env", "NOPE_UNSET"]) == 1
        assert "NOPE_UNSET is empty or not set" in capsys.readouterr().err

    def test_sqlite_fails_with_clear_error(self, data_dir, capsys):
        assert main(["db", "grant-reporting", "reporter"]) == 1
        assert "database roles need PostgreSQL" in capsys.readouterr().err


class TestOperatorMistakes:
    def test_invalid_setting_names_variable(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MAMMO_BATCH_SIZE", "0")

        assert main(["results"]) == 2
        error = capsys.readouterr().err
        assert "Invalid setting MAMMO_BATCH_SIZE" in error
        assert "'0'" in error
        assert "pydantic.dev" not in error

    def test_cross_setting_check_is_one_line(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MAMMO_ENSEMBLE_WEIGHTS", '{"nosuch": 1}')

        assert main(["results"]) == 2
        assert capsys.readouterr().err.startswith(
            "Invalid settings: ensemble_weights names models that are not served: ['nosuch']")

    def test_negative_batch_size_rejected_by_parser(self, capsys):
        with pytest.raises(SystemExit):
            main(["process", "--batch-size", "-3"])
        assert "expected a whole number of 1 or more, got '-3'" in capsys.readouterr().err

    def test_unreachable_database_is_explained(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MAMMO_DATABASE_URL",
                           "postgresql+psycopg2://nobody:pw@127.0.0.1:1/x")

        assert main(["results"]) == 1
        error = capsys.readouterr().err
        assert "Cannot connect to the results database" in error
        assert "Check MAMMO_DATABASE_URL" in error
        assert ":pw@" not in error


class TestVersionWarnings:
    def test_untrained_cnn_is_warned_about(self, data_dir, capsys):
        from db.engine import make_engine, make_session_factory
        from db.writes import record_model_versions
        from mammo.cli import _version_row

        engine = make_engine(f"sqlite:///{data_dir / 'mammo.db'}")
        with make_session_factory(engine).begin() as session:
            record_model_versions(session, [_version_row(
                {"model_name": "cnn", "version": 1, "input_size": 224,
                 "weights_source": "none", "weights_warning": None, "training": "none"})])
        engine.dispose()
        _write_exam(data_dir)
        capsys.readouterr()

        assert main(["results", "--format", "csv"]) == 0
        assert ("WARNING: cnn version 1 has not been trained on mammograms"
                in capsys.readouterr().err)
