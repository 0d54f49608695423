"""Two runs that prepared copies of the same instances before either committed.

Claiming by rename gives every file to one run, but copies of an instance under other names
may go to two overlapping runs, which both find no result for it while they prepare. The
run that writes second must record its copies as duplicates (or as a UID conflict, when the
content differs) and leave the first run's results alone. The runs here are the flow's
steps called directly (claim, prepare, score, write, move), interleaved or in two threads,
against the local model server and PostgreSQL.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
from sqlalchemy import select

from db import writes
from db.engine import make_engine, make_session_factory
from db.schema import SecondOpinion
from mammo.settings import Settings
from serving.client import ServingClient
from tasks.ensemble import combine_scores
from tasks.file_outcomes import apply_file_outcomes
from tasks.intake import WorkFolder, iter_candidate_files
from tasks.prepare import PreparedBatch, prepare_batch
from tasks.record_outcomes import ModelRun, Settlement, record_batch
from tests.faults.harness import InputSet, audit_outcomes, write_inputs

INSTANCES = 10
PREPROCESSING_VERSION = "fault-test"


def _replace_copy_with_conflict(inputs: InputSet, folder: Path) -> None:
    """Replace the copy of the first instance with a file that reuses its SOPInstanceUID
    with other pixels."""
    (folder / inputs.duplicate_names.pop(0)).unlink()
    source = folder.parent / "data" / "incoming" / inputs.scored_names[0]
    ds = pydicom.dcmread(source)
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    name = "conflict.dcm"
    ds.save_as(folder / name, enforce_file_format=True)
    inputs.not_dicom_names.append(name)  # the inputs whose outcome is a quarantine record


class StepRun:
    """One run's claim, preparation, scoring and write, done step by step."""

    def __init__(self, settings: Settings, session_factory, run_id: str, source: Path):
        self.settings = settings
        self.session_factory = session_factory
        self.run_id = run_id
        self.work = WorkFolder(settings.work_dir, run_id).__enter__()
        self.files = [self.work.claim(source, path) for path in iter_candidate_files(source)]
        self.batch = PreparedBatch()
        self.model_runs: dict[str, ModelRun] = {}

    def find_scored(self, uid: str) -> tuple[str, str] | None:
        found = writes.run_in_transaction(
            self.session_factory, lambda session: writes.find_instances(session, [uid]).get(uid))
        return None if found is None else (found.content_hash, found.archive_path)

    def prepare_and_score(self, client: ServingClient, image_size: int) -> None:
        self.batch = prepare_batch(
            self.files, image_size=image_size, find_scored=self.find_scored, seen_in_run={},
            allowed_modalities=self.settings.allowed_modalities,
            max_pixels=self.settings.max_pixels)
        scores = client.score(self.batch.image_array())
        self.model_runs = {name: ModelRun(result.version, [float(p) for p in
                                                           result.probabilities])
                           for name, result in scores.items()}

    def write_and_move(self) -> Settlement:
        ensemble = combine_scores(
            {name: run.probabilities for name, run in self.model_runs.items()},
            {name: 1.0 for name in self.model_runs}, self.settings.operating_threshold)
        settlement = writes.run_in_transaction(self.session_factory, lambda session: record_batch(
            session, self.batch, model_runs=self.model_runs, ensemble=ensemble,
            flow_run_id=self.run_id, preprocessing_version=PREPROCESSING_VERSION,
            archive_dir=self.settings.archive_dir, quarantine_dir=self.settings.quarantine_dir))
        settlement.apply(self.batch)
        apply_file_outcomes(self.batch, archive_dir=self.settings.archive_dir,
                            quarantine_dir=self.settings.quarantine_dir)
        self.work.__exit__(None, None, None)
        return settlement


def _two_runs(fault_env, tmp_path) -> tuple[InputSet, StepRun, StepRun, object]:
    data_dir = tmp_path / "data"
    copies = tmp_path / "copies"
    inputs = write_inputs(data_dir / "incoming", instances=INSTANCES, duplicates=INSTANCES,
                          seed=71, duplicates_dir=copies)
    _replace_copy_with_conflict(inputs, copies)

    settings = Settings()
    engine = make_engine(settings.resolved_database_url())
    factory = make_session_factory(engine)
    first = StepRun(settings, factory, "run-first", data_dir / "incoming")
    second = StepRun(settings, factory, "run-second", copies)
    with ServingClient(settings) as client:
        served = client.check_models()
        size = max(max(m.input_height, m.input_width) for m in served.values())
        first.prepare_and_score(client, size)
        second.prepare_and_score(client, size)
    assert len(first.batch.to_score) == INSTANCES
    assert len(second.batch.to_score) == INSTANCES  # neither run found the other's rows
    return inputs, first, second, engine


def test_second_writer_records_copies_as_duplicates(fault_env, tmp_path):
    inputs, first, second, engine = _two_runs(fault_env, tmp_path)

    first_settlement = first.write_and_move()
    second_settlement = second.write_and_move()

    assert first_settlement == Settlement()
    assert len(second_settlement.duplicates) == INSTANCES - 1
    assert [r.reason for r in second_settlement.rejections] == ["uid_conflict"]
    with engine.connect() as connection:
        writers = set(connection.scalars(select(SecondOpinion.flow_run_id)))
    engine.dispose()
    assert writers == {"run-first"}
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], tmp_path / "data", inputs)
    assert audit.clean, audit.summary()
    assert audit.scored_instances == INSTANCES
    assert audit.duplicate_records == INSTANCES - 1
    assert audit.quarantine_records == 1


def test_simultaneous_writes_score_each_instance_once(fault_env, tmp_path):
    inputs, first, second, engine = _two_runs(fault_env, tmp_path)
    start = threading.Barrier(2)
    settlements: dict[str, Settlement] = {}
    errors: list[BaseException] = []

    def write(run: StepRun) -> None:
        try:
            start.wait()
            settlements[run.run_id] = run.write_and_move()
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(run,)) for run in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()

    assert [repr(e) for e in errors] == []
    settled = sum(len(s.duplicates) + len(s.rejections) for s in settlements.values())
    assert settled == INSTANCES
    audit = audit_outcomes(fault_env["MAMMO_DATABASE_URL"], tmp_path / "data", inputs)
    assert audit.lost == [], audit.summary()
    assert audit.doubled == [], audit.summary()
    assert audit.scored_instances == INSTANCES
    assert audit.duplicate_records + audit.quarantine_records == INSTANCES
    # Whichever run writes first keeps its content for the first instance, so the archive may
    # hold the conflicting file's bytes for it: count the files, not their hashes.
    assert audit.archive_files == INSTANCES
    assert audit.left_in_work == []
