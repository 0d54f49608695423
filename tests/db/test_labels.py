"""Label CSV import: validation per row, idempotency, and labelled instances for training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from db.engine import make_engine, make_session_factory
from db.labels import (
    LabelFileError,
    count_labels_since,
    import_labels,
    labelled_instances,
    read_label_file,
)
from db.migrate import upgrade
from db.schema import Instance, Label

TODAY = dt.date(2026, 12, 4)
SOP_A = "1.2.826.0.1.3680043.8.498.1"
SOP_B = "1.2.826.0.1.3680043.8.498.2"
SOP_C = "1.2.826.0.1.3680043.8.498.3"
STUDY_1 = "1.2.826.0.1.3680043.8.498.10"
STUDY_2 = "1.2.826.0.1.3680043.8.498.20"


def _write(tmp_path: Path, content: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def session_factory(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        for sop, study, patient, laterality, view in (
            (SOP_A, STUDY_1, "P1", "L", "CC"),
            (SOP_B, STUDY_1, "P1", "L", "MLO"),
            (SOP_C, STUDY_1, "P1", "R", "CC"),
        ):
            session.add(Instance(
                sop_instance_uid=sop, study_instance_uid=study, series_instance_uid=study + ".1",
                accession_number=None, patient_id=patient, study_date=None, laterality=laterality,
                view=view, content_hash="0" * 64, file_name=f"{sop}.dcm",
                archive_path=f"/archive/{study}/{sop}.dcm"))
    yield factory
    engine.dispose()


class TestReadLabelFile:
    def test_valid_rows_in_both_forms(self, tmp_path):
        path = _write(tmp_path, (
            "SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
            f"{SOP_A},,,Malignant,Biopsy,2026-11-30\n"
            f",{STUDY_1},r,normal,follow-up,2026-10-01\n"))

        rows, rejected = read_label_file(path, today=TODAY)

        assert rejected == []
        assert [row.line for row in rows] == [2, 3]
        assert rows[0].key == (SOP_A, None, None, "biopsy")
        assert rows[0].label == "malignant"
        assert rows[1].key == (None, STUDY_1, "R", "follow-up")
        assert rows[1].label_date == dt.date(2026, 10, 1)

    def test_semicolon_delimiter_and_bom(self, tmp_path):
        path = tmp_path / "labels.csv"
        path.write_text(f"sopinstanceuid;label;source;date\n{SOP_A};benign;biopsy;2026-01-02\n",
                        encoding="utf-8-sig")

        rows, rejected = read_label_file(path, today=TODAY)

        assert rejected == []
        assert rows[0].label == "benign"

    @pytest.mark.parametrize(("row", "reason"), [
        (f"{SOP_A},,,cancer,biopsy,2026-01-01", "label must be one of"),
        (f"{SOP_A},,,benign,,2026-01-01", "source is empty"),
        (f"{SOP_A},,,benign,biopsy,01.02.2026", "date must be YYYY-MM-DD"),
        (f"{SOP_A},,,benign,biopsy,2027-01-01", "is in the future"),
        ("1.2.03,,,benign,biopsy,2026-01-01", "not a valid DICOM UID"),
        (f",{STUDY_1},,benign,biopsy,2026-01-01", "needs SOPInstanceUID, or StudyInstanceUID"),
        (f",{STUDY_1},X,benign,biopsy,2026-01-01", "laterality must be L or R"),
        (f"{SOP_A},,,benign,{'x' * 40},2026-01-01", "at most 32 characters"),
    ])
    def test_invalid_row_rejected_with_line(self, tmp_path, row, reason):
        path = _write(tmp_path, "SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
                      f"{SOP_B},,,normal,biopsy,2026-01-01\n{row}\n")

        rows, rejected = read_label_file(path, today=TODAY)

        assert len(rows) == 1
        assert [item.line for item in rejected] == [3]
        assert reason in rejected[0].reason

    def test_repeat_dropped_and_conflict_rejected(self, tmp_path):
        path = _write(tmp_path, "SOPInstanceUID,label,source,date\n"
                      f"{SOP_A},benign,biopsy,2026-01-01\n"
                      f"{SOP_A},benign,biopsy,2026-01-01\n"
                      f"{SOP_A},malignant,biopsy,2026-01-01\n")

        rows, rejected = read_label_file(path, today=TODAY)

        assert len(rows) == 1
        assert [item.line for item in rejected] == [4]
        assert "conflicts with line 2" in rejected[0].reason

    def test_missing_columns_raises(self, tmp_path):
        path = _write(tmp_path, "StudyInstanceUID,label,source\n1.2,benign,biopsy\n")

        with pytest.raises(LabelFileError, match="date, SOPInstanceUID, or StudyInstanceUID"):
            read_label_file(path, today=TODAY)


class TestImportLabels:
    def test_import_twice_adds_nothing(self, session_factory, tmp_path):
        path = _write(tmp_path, "SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
                      f"{SOP_A},,,malignant,biopsy,2026-11-30\n"
                      f",{STUDY_1},R,normal,follow-up,2026-10-01\n"
                      f",{STUDY_2},L,benign,biopsy,2026-10-01\n")
        rows, _ = read_label_file(path, today=TODAY)

        with session_factory.begin() as session:
            first = import_labels(session, rows)
        with session_factory.begin() as session:
            second = import_labels(session, rows)

        assert (first.added, first.updated, first.unchanged) == (3, 0, 0)
        assert first.unmatched == 1
        assert (second.added, second.updated, second.unchanged) == (0, 0, 3)
        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Label)) == 3

    def test_changed_label_updates_row(self, session_factory, tmp_path):
        header = "SOPInstanceUID,label,source,date\n"
        before, _ = read_label_file(_write(tmp_path, header + f"{SOP_A},benign,biopsy,2026-01-01\n",
                                           "a.csv"), today=TODAY)
        after, _ = read_label_file(_write(tmp_path, header + f"{SOP_A},malignant,biopsy,2026-02-01\n",
                                          "b.csv"), today=TODAY)

        with session_factory.begin() as session:
            import_labels(session, before)
        with session_factory.begin() as session:
            result = import_labels(session, after)

        assert result.updated == 1
        with session_factory() as session:
            [label] = session.scalars(select(Label)).all()
        assert label.label == "malignant"
        assert label.label_date == dt.date(2026, 2, 1)

    def test_mismatched_laterality_rejected(self, session_factory, tmp_path):
        path = _write(tmp_path, "SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
                      f"{SOP_A},{STUDY_1},R,benign,biopsy,2026-01-01\n")
        rows, _ = read_label_file(path, today=TODAY)

        with session_factory.begin() as session:
            result = import_labels(session, rows)

        assert result.added == 0
        assert [item.line for item in result.rejected] == [2]
        assert "laterality R differs" in result.rejected[0].reason


class TestLabelledInstances:
    def test_breast_label_covers_views_and_worst_wins(self, session_factory, tmp_path):
        path = _write(tmp_path, "SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
                      f",{STUDY_1},L,benign,follow-up,2026-01-01\n"
                      f"{SOP_B},,,malignant,biopsy,2026-01-02\n"
                      f",{STUDY_1},R,normal,follow-up,2026-01-01\n")
        rows, _ = read_label_file(path, today=TODAY)
        with session_factory.begin() as session:
            import_labels(session, rows)

        with session_factory() as session:
            labelled = {item.sop_instance_uid: item.label for item in labelled_instances(session)}

        assert labelled == {SOP_A: "benign", SOP_B: "malignant", SOP_C: "normal"}

    def test_direct_insert_without_imported_at(self, session_factory):
        with session_factory.begin() as session:
            # Plain SQL, as another system would write it: no Python-side column defaults.
            session.execute(text("INSERT INTO labels (sop_instance_uid, label, source) "
                                 "VALUES (:sop, 'malignant', 'pathology')"), {"sop": SOP_C})

        with session_factory() as session:
            labelled = labelled_instances(session)
            since_yesterday = count_labels_since(
                session, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))

        assert [item.sop_instance_uid for item in labelled] == [SOP_C]
        assert since_yesterday == 1
