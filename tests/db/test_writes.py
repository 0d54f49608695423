"""Idempotent upserts and value conversion, on SQLite and PostgreSQL."""

import math

import numpy as np
import pytest
from sqlalchemy import func, select

from db import writes
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from db.schema import Instance, ModelScore, ProcessingRun, QuarantineRecord, SecondOpinion


@pytest.fixture
def session_factory(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _instance(uid: str, **overrides) -> dict:
    row = {
        "sop_instance_uid": uid, "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
        "accession_number": "ACC1", "patient_id": "P1", "study_date": None,
        "laterality": "L", "view": "CC", "content_hash": "a" * 64, "file_name": f"{uid}.dcm",
        "archive_path": f"/archive/{uid}.dcm",
    }
    row.update(overrides)
    return row


def _opinion(uid: str, probability) -> dict:
    return {
        "sop_instance_uid": uid, "ensemble_probability": probability, "threshold": 0.5,
        "category": "suspicious" if probability >= 0.5 else "not_suspicious",
        "models_agreeing": 4, "models_total": 4, "model_versions": "cnn:1",
        "preprocessing_version": "1", "flow_run_id": "run-1",
    }


class TestToDbValue:
    def test_numpy_scalars_become_python(self):
        assert type(writes.to_db_value(np.float32(0.25))) is float
        assert type(writes.to_db_value(np.float64(0.75))) is float
        assert type(writes.to_db_value(np.int64(3))) is int

    @pytest.mark.parametrize("value", [math.nan, math.inf, np.float32("nan"), -np.inf])
    def test_non_finite_raises(self, value):
        with pytest.raises(ValueError, match="non-finite"):
            writes.to_db_value(value)


class TestWriteSecondOpinions:
    def test_insert_path(self, session_factory):
        with session_factory.begin() as session:
            writes.write_second_opinions(
                session, instances=[_instance("1.1")],
                scores=[{"sop_instance_uid": "1.1", "model_name": "cnn",
                         "model_version": np.int64(1), "probability": np.float32(0.75)}],
                opinions=[_opinion("1.1", np.float64(0.75))])

        with session_factory() as session:
            score = session.get(ModelScore, ("1.1", "cnn"))
            opinion = session.get(SecondOpinion, "1.1")
        assert score.probability == pytest.approx(0.75)
        assert score.model_version == 1
        assert opinion.ensemble_probability == pytest.approx(0.75)

    def test_update_path_keeps_one_row(self, session_factory):
        for probability in (0.2, 0.9):
            with session_factory.begin() as session:
                writes.write_second_opinions(
                    session, instances=[_instance("1.1", view="MLO")],
                    scores=[{"sop_instance_uid": "1.1", "model_name": "cnn",
                             "model_version": 2, "probability": probability}],
                    opinions=[_opinion("1.1", probability)])

        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(SecondOpinion)) == 1
            assert session.scalar(select(func.count()).select_from(ModelScore)) == 1
            opinion = session.get(SecondOpinion, "1.1")
            instance = session.get(Instance, "1.1")
        assert opinion.ensemble_probability == pytest.approx(0.9)
        assert opinion.category == "suspicious"
        assert instance.view == "MLO"

    def test_duplicate_keys_in_one_batch_collapse(self, session_factory):
        with session_factory.begin() as session:
            written = writes.upsert(session, Instance.__table__,
                                    [_instance("1.1"), _instance("1.1", view="MLO")],
                                    key=("sop_instance_uid",))

        assert written == 1
        with session_factory() as session:
            assert session.get(Instance, "1.1").view == "MLO"

    def test_nan_score_rejected_and_nothing_written(self, session_factory):
        with pytest.raises(ValueError, match="non-finite"):
            with session_factory.begin() as session:
                writes.write_second_opinions(
                    session, instances=[_instance("1.1")], scores=[],
                    opinions=[_opinion("1.1", 0.5) | {"ensemble_probability": math.nan}])

        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 0


class TestRecordQuarantine:
    def test_same_claim_recorded_twice_keeps_one_row(self, session_factory):
        row = {"claim_id": "c1", "file_name": "a.dcm", "sop_instance_uid": None,
               "content_hash": None, "reason_code": "not_dicom", "message": "not DICOM",
               "quarantine_path": "/q/a.dcm", "flow_run_id": "run-1"}
        for _ in range(2):
            with session_factory.begin() as session:
                writes.record_quarantine(session, [row])

        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(QuarantineRecord)) == 1


class TestFindInstances:
    def test_returns_only_known_uids(self, session_factory):
        with session_factory.begin() as session:
            writes.upsert(session, Instance.__table__, [_instance("1.1"), _instance("1.2")],
                          key=("sop_instance_uid",))

        with session_factory() as session:
            found = writes.find_instances(session, ["1.2", "9.9"])
        assert set(found) == {"1.2"}


class TestMarkRunsCrashed:
    def test_only_running_rows_change(self, session_factory):
        with session_factory.begin() as session:
            writes.start_run(session, "killed")
            writes.start_run(session, "finished")
            writes.finish_run(session, "finished", status="completed", counts={"scored": 3})

        with session_factory.begin() as session:
            changed = writes.mark_runs_crashed(session, ["killed", "finished", "unknown"])

        assert changed == 1
        with session_factory() as session:
            killed = session.get(ProcessingRun, "killed")
            finished = session.get(ProcessingRun, "finished")
            assert killed.status == "crashed"
            assert killed.finished_at is not None
            assert finished.status == "completed"
            assert finished.scored == 3
            assert session.get(ProcessingRun, "unknown") is None

    def test_no_run_ids_changes_nothing(self, session_factory):
        with session_factory.begin() as session:
            assert writes.mark_runs_crashed(session, []) == 0


class TestRunInTransaction:
    def test_retries_once_after_backend_terminated(self, fresh_postgres_url):
        upgrade(fresh_postgres_url)
        engine = make_engine(fresh_postgres_url)
        factory = make_session_factory(engine)
        admin = make_engine(fresh_postgres_url)
        attempts = []

        def write(session):
            attempts.append(1)
            writes.upsert(session, Instance.__table__, [_instance("1.1")],
                          key=("sop_instance_uid",))
            if len(attempts) == 1:
                pid = session.scalar(select(func.pg_backend_pid()))
                with admin.connect() as connection:
                    connection.execute(select(func.pg_terminate_backend(pid)))
            writes.upsert(session, Instance.__table__, [_instance("1.2")],
                          key=("sop_instance_uid",))

        writes.run_in_transaction(factory, write)

        assert len(attempts) == 2
        with factory() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 2
        engine.dispose()
        admin.dispose()

    def test_other_errors_are_not_retried(self, session_factory):
        attempts = []

        def write(session):
            attempts.append(1)
            writes.upsert(session, Instance.__table__, [_instance("1.1", laterality=None)],
                          key=("sop_instance_uid",))

        with pytest.raises(Exception, match="(?i)not[ -]null"):
            writes.run_in_transaction(session_factory, write)
        assert len(attempts) == 1
        with session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 0
