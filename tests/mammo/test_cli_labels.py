"""`mammo labels import` and `mammo retrain` option handling, on SQLite in a tmp folder."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mammo.cli import main

SOP = "1.2.826.0.1.3680043.8.498.7"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMMO_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("MAMMO_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["db", "init"]) == 0
    return tmp_path / "var"


def _label_count(data_dir) -> int:
    from db.engine import make_engine
    from db.schema import Label

    engine = make_engine(f"sqlite:///{data_dir / 'mammo.db'}")
    with engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(Label.__table__))
    engine.dispose()
    return count


class TestLabelsImport:
    def test_rejected_row_reported_by_line(self, data_dir, tmp_path, capsys):
        path = tmp_path / "labels.csv"
        path.write_text("SOPInstanceUID,label,source,date\n"
                        f"{SOP},malignant,biopsy,2026-11-01\n"
                        f"{SOP}.1,maybe,biopsy,2026-11-01\n")

        status = main(["labels", "import", str(path)])

        output = capsys.readouterr()
        assert status == 1
        assert "Line 3 rejected: label must be one of" in output.err
        assert "1 added" in output.out
        assert _label_count(data_dir) == 1

    def test_second_import_adds_nothing(self, data_dir, tmp_path, capsys):
        path = tmp_path / "labels.csv"
        path.write_text(f"SOPInstanceUID,label,source,date\n{SOP},benign,biopsy,2026-11-01\n")

        assert main(["labels", "import", str(path)]) == 0
        assert main(["labels", "import", str(path)]) == 0

        assert "0 added, 0 updated, 1 unchanged" in capsys.readouterr().out
        assert _label_count(data_dir) == 1

    def test_check_writes_nothing(self, data_dir, tmp_path, capsys):
        path = tmp_path / "labels.csv"
        path.write_text(f"SOPInstanceUID,label,source,date\n{SOP},benign,biopsy,2026-11-01\n")

        assert main(["labels", "import", "--check", str(path)]) == 0

        assert "1 valid rows" in capsys.readouterr().out
        assert _label_count(data_dir) == 0

    def test_missing_file_fails(self, data_dir, tmp_path, capsys):
        assert main(["labels", "import", str(tmp_path / "none.csv")]) == 1
        assert "not found" in capsys.readouterr().err


class TestRetrainOptions:
    def test_invalid_value_fails_before_running(self, data_dir, capsys):
        status = main(["retrain", "--learning-rate", "0"])

        assert status == 2
        assert "learning_rate" in capsys.readouterr().err
