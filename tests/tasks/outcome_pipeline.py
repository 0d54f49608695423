"""The flow's steps after scoring, run without Prefect and without the model server.

`OutcomePipeline` claims files from an incoming folder and prepares them with
`tasks.prepare.prepare_batch`. It gives every image to score a fixed fake probability,
writes the outcomes with `tasks.record_outcomes.record_batch` in one transaction per batch
against a real database, and then moves the files with
`tasks.file_outcomes.apply_file_outcomes`. Scoring is the only step replaced, so tests of
intake, deduplication and quarantine run in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from db import writes
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from tasks.ensemble import combine_scores
from tasks.file_outcomes import apply_file_outcomes
from tasks.intake import ClaimedFile, WorkFolder, iter_candidate_files
from tasks.prepare import PreparedBatch, prepare_batch
from tasks.preprocess import PREPROCESSING_VERSION
from tasks.record_outcomes import ModelRun, record_batch

IMAGE_SIZE = 64
FAKE_PROBABILITY = 0.25
FAKE_MODELS = ("cnn", "vgg19")


@dataclass
class RunCounts:
    scored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: list[PreparedBatch] = field(default_factory=list)


class OutcomePipeline:
    """Folders and a migrated database of one test, and the steps that use them."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.incoming_dir = root / "incoming"
        self.work_dir = root / "work"
        self.archive_dir = root / "archive"
        self.quarantine_dir = root / "quarantine"
        for folder in (self.incoming_dir, self.work_dir, self.archive_dir,
                       self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        upgrade(database_url)
        self.engine = make_engine(database_url)
        self.session_factory = make_session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def find_scored(self, uid: str) -> tuple[str, str] | None:
        with self.session_factory() as session:
            found = writes.find_instances(session, [uid]).get(uid)
        return None if found is None else (found.content_hash, found.archive_path)

    def prepare(self, files: list[ClaimedFile], seen_in_run: dict[str, str],
                *, max_pixels: int = 80_000_000) -> PreparedBatch:
        return prepare_batch(files, image_size=IMAGE_SIZE, find_scored=self.find_scored,
                             seen_in_run=seen_in_run, allowed_modalities=("MG",),
                             max_pixels=max_pixels)

    def record_and_move(self, batch: PreparedBatch, run_id: str) -> None:
        """Write ``batch`` with fake scores in one transaction, then move its files."""
        count = len(batch.to_score)
        model_runs = {name: ModelRun(version=1, probabilities=[FAKE_PROBABILITY] * count)
                      for name in FAKE_MODELS} if count else {}
        ensemble = combine_scores(
            {name: run.probabilities for name, run in model_runs.items()},
            {name: 1.0 for name in model_runs}, 0.5) if count else []
        writes.run_in_transaction(self.session_factory, lambda session: record_batch(
            session, batch, model_runs=model_runs, ensemble=ensemble, flow_run_id=run_id,
            preprocessing_version=PREPROCESSING_VERSION, archive_dir=self.archive_dir,
            quarantine_dir=self.quarantine_dir))
        apply_file_outcomes(batch, archive_dir=self.archive_dir,
                            quarantine_dir=self.quarantine_dir)

    def run(self, run_id: str, *, batch_size: int = 64) -> RunCounts:
        """Claim everything in the incoming folder and process it in batches, like one run."""
        counts = RunCounts()
        seen_in_run: dict[str, str] = {}
        with self.session_factory.begin() as session:
            writes.start_run(session, run_id)
        with WorkFolder(self.work_dir, run_id) as work:
            work.reclaim_orphans()
            for path in list(iter_candidate_files(self.incoming_dir)):
                work.claim(self.incoming_dir, path)
            files = work.files()
            for start in range(0, len(files), batch_size):
                batch = self.prepare(files[start:start + batch_size], seen_in_run)
                self.record_and_move(batch, run_id)
                counts.scored += len(batch.to_score)
                counts.duplicates += len(batch.duplicates)
                counts.quarantined += len(batch.rejections)
                counts.batches.append(batch)
        return counts
