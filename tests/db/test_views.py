"""Reporting views at instance, breast and study level, on SQLite and PostgreSQL."""

import datetime as dt

import pytest
from sqlalchemy import text

from db import writes
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from mammo.settings import MODEL_NAMES
from mammo.texts import text as user_text

THRESHOLD = 0.5


@pytest.fixture
def engine(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _write_exam(engine, study: str, images: dict[tuple[str, str], float]) -> None:
    """Write one scored instance per (laterality, view) with the given ensemble probability."""
    instances, scores, opinions = [], [], []
    for number, ((laterality, view), probability) in enumerate(sorted(images.items())):
        uid = f"{study}.{number}"
        instances.append({
            "sop_instance_uid": uid, "study_instance_uid": study, "series_instance_uid":
            f"{study}.100", "accession_number": f"A{study[-3:]}", "patient_id": "P1",
            "study_date": dt.date(2026, 11, 30), "laterality": laterality, "view": view,
            "content_hash": "0" * 64, "file_name": f"{uid}.dcm", "archive_path": "/a"})
        for index, name in enumerate(MODEL_NAMES):
            scores.append({"sop_instance_uid": uid, "model_name": name, "model_version": 1,
                           "probability": min(1.0, probability + 0.01 * index)})
        suspicious = probability >= THRESHOLD
        opinions.append({
            "sop_instance_uid": uid, "ensemble_probability": probability,
            "threshold": THRESHOLD,
            "category": "suspicious" if suspicious else "not_suspicious",
            "models_agreeing": 4, "models_total": 4,
            "model_versions": ",".join(f"{n}:1" for n in MODEL_NAMES),
            "preprocessing_version": "1", "flow_run_id": "run-1"})
    with make_session_factory(engine).begin() as session:
        writes.write_second_opinions(session, instances=instances, scores=scores,
                                     opinions=opinions)


def _rows(engine, view: str, order: str) -> list[dict]:
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(
            text(f"SELECT * FROM {view} ORDER BY {order}")).mappings()]


class TestInstanceView:
    def test_pivots_model_scores_and_texts(self, engine):
        _write_exam(engine, "1.2.826.1", {("L", "CC"): 0.8})

        [row] = _rows(engine, "second_opinion_instances", "sop_instance_uid")
        assert row["probability"] == pytest.approx(0.8)
        for index, name in enumerate(MODEL_NAMES):
            assert row[f"{name}_probability"] == pytest.approx(0.8 + 0.01 * index)
            assert row[f"{name}_version"] == 1
        assert row["text_en"] == user_text(
            "opinion.summary", "en", category=user_text("category.suspicious", "en"),
            probability=0.8, threshold=0.5, agreeing=4, total=4)
        assert row["text_tr"] == user_text(
            "opinion.summary", "tr", category=user_text("category.suspicious", "tr"),
            probability=0.8, threshold=0.5, agreeing=4, total=4)


class TestBreastView:
    def test_four_view_exam(self, engine):
        _write_exam(engine, "1.2.826.2", {("L", "CC"): 0.2, ("L", "MLO"): 0.7,
                                          ("R", "CC"): 0.1, ("R", "MLO"): 0.3})

        left, right = _rows(engine, "second_opinion_breasts", "laterality")
        assert left["laterality"] == "L"
        assert left["probability"] == pytest.approx(0.7)
        assert left["category"] == "suspicious"
        assert left["most_suspicious_view"] == "MLO"
        assert left["views_present"] == "CC,MLO"
        assert left["views_missing"] == ""
        assert left["instance_count"] == 2
        assert right["probability"] == pytest.approx(0.3)
        assert right["category"] == "not_suspicious"
        assert right["views_missing"] == ""

    def test_exam_missing_a_view(self, engine):
        _write_exam(engine, "1.2.826.3", {("L", "CC"): 0.2, ("L", "MLO"): 0.4,
                                          ("R", "CC"): 0.6})

        left, right = _rows(engine, "second_opinion_breasts", "laterality")
        assert left["views_missing"] == ""
        assert right["views_present"] == "CC"
        assert right["views_missing"] == "MLO"
        assert right["category"] == "suspicious"

    def test_unknown_views_list_both_missing(self, engine):
        _write_exam(engine, "1.2.826.4", {("L", "UNKNOWN"): 0.4})

        [row] = _rows(engine, "second_opinion_breasts", "laterality")
        assert row["views_present"] == "UNKNOWN"
        assert row["views_missing"] == "CC,MLO"


class TestStudyView:
    def test_most_suspicious_instance_decides(self, engine):
        _write_exam(engine, "1.2.826.5", {("L", "CC"): 0.2, ("L", "MLO"): 0.3,
                                          ("R", "CC"): 0.9, ("R", "MLO"): 0.6})
        _write_exam(engine, "1.2.826.6", {("L", "CC"): 0.1})

        first, second = _rows(engine, "second_opinion_studies", "study_instance_uid")
        assert first["probability"] == pytest.approx(0.9)
        assert first["category"] == "suspicious"
        assert first["most_suspicious_laterality"] == "R"
        assert first["instance_count"] == 4
        assert first["breast_count"] == 2
        assert first["suspicious_instance_count"] == 2
        assert second["category"] == "not_suspicious"
        assert second["instance_count"] == 1
        assert "şüpheli değil" in second["text_tr"]
