"""The main job end to end: real CBIS-DDSM files, the four real architectures served by the
local gRPC server, a real PostgreSQL database, and the flow run through Prefect.

The models are built at a small input size with random backbone weights so the suite stays
fast; their scores are meaningless, but every part of the path is the production one.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_session_factory
from db.queries import instance_results, report_rows
from db.schema import DuplicateRecord, Instance, QuarantineRecord, SecondOpinion
from mammo.settings import MODEL_NAMES


def _drop_files(files: list[Path], incoming: Path, prefix: str = "") -> None:
    for source in files:
        shutil.copyfile(source, incoming / f"{prefix}{source.parent.name}_{source.name}")


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))



@pytest.mark.usefixtures("prefect_harness")
class TestProcessIncoming:
    def test_scores_cbis_ddsm_once(self, flow_settings, cbis_ddsm_files):
        from flows.process_incoming import process_incoming

        _drop_files(cbis_ddsm_files, flow_settings.incoming_dir)
        (flow_settings.incoming_dir / "notes.txt").write_text("not a DICOM file\n")

        first = process_incoming()

        assert first["scored"] == 8
        assert first["quarantined"] == 1
        assert first["duplicates"] == 0

        engine = make_engine(flow_settings.resolved_database_url())
        factory = make_session_factory(engine)
        with factory() as session:
            frame = instance_results(session)
            quarantine = session.scalars(select(QuarantineRecord)).all()
        assert len(frame) == 8
        for _, row in frame.iterrows():
            for name in MODEL_NAMES:
                probability = row[f"{name}_probability"]
                assert math.isfinite(probability)
                assert 0.0 <= probability <= 1.0
                assert row[f"{name}_version"] == 1
            assert 0.0 <= row["probability"] <= 1.0
            assert row["category"] in {"suspicious", "not_suspicious"}
            assert 0 <= row["models_agreeing"] <= 4
            assert row["models_total"] == 4
            assert row["laterality"] in {"L", "R"}
            assert row["view"] == "UNKNOWN"  # CBIS-DDSM files carry no view attributes
            assert row["flow_run_id"] == first["flow_run_id"]
            assert row["model_versions"] == ",".join(f"{n}:1" for n in MODEL_NAMES)
        assert sorted(frame["laterality"]) == ["L"] * 4 + ["R"] * 4

        # Every CBIS-DDSM image carries its own StudyInstanceUID and PatientID, so each one is
        # a study of its own with a single breast and a single (unknown) view.
        with factory() as session:
            breasts = report_rows(session, "breast")
            studies = report_rows(session, "study")
        assert len(breasts) == 8
        assert set(breasts["views_present"]) == {"UNKNOWN"}
        assert set(breasts["views_missing"]) == {"CC,MLO"}
        assert len(studies) == 8
        assert set(studies["breast_count"]) == {1}
        assert sorted(studies["probability"]) == sorted(frame["probability"])

        [record] = quarantine
        assert record.reason_code == "not_dicom"
        assert record.file_name == "notes.txt"
        assert Path(record.quarantine_path).read_text() == "not a DICOM file\n"

        archived = sorted(flow_settings.archive_dir.glob("*/*.dcm"))
        assert len(archived) == 8
        assert list(flow_settings.incoming_dir.iterdir()) == []
        assert list(flow_settings.work_dir.iterdir()) == []

        # The same eight instances again, under other names: recorded as duplicates only.
        _drop_files(cbis_ddsm_files, flow_settings.incoming_dir, prefix="again_")
        second = process_incoming()

        assert second["scored"] == 0
        assert second["duplicates"] == 8
        with factory() as session:
            assert _count(session, SecondOpinion) == 8
            assert _count(session, Instance) == 8
            assert _count(session, DuplicateRecord) == 8
        assert len(sorted(flow_settings.archive_dir.glob("*/*.dcm"))) == 8
        assert list(flow_settings.incoming_dir.iterdir()) == []
        engine.dispose()

    def test_run_with_empty_folder_exits_cleanly(self, flow_settings):
        from flows.process_incoming import process_incoming

        result = process_incoming()

        assert result["files_claimed"] == 0
        assert result["scored"] == 0
