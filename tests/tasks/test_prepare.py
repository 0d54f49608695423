"""Tests of tasks.prepare: file checks, gzip files and deduplication against a real database."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from db.schema import DuplicateRecord, Instance, QuarantineRecord, SecondOpinion
from mammo.errors import ReasonCode
from tasks.file_outcomes import apply_file_outcomes
from tasks.intake import WorkFolder
from tasks.prepare import hash_file, prepare_batch
from tests.tasks.mammogram_files import make_breast_pixels, make_dataset, write_dataset
from tests.tasks.outcome_pipeline import IMAGE_SIZE, OutcomePipeline


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_mammogram(path: Path, pixels: np.ndarray | None = None, **attributes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dataset(path, make_dataset(pixels, **attributes))


def _prepare_alone(tmp_path: Path, names: list[str], *, max_pixels: int = 80_000_000):
    """Claim ``names`` from tmp_path/incoming and prepare them with an empty database."""
    incoming = tmp_path / "incoming"
    work = WorkFolder(tmp_path / "work", "run-a")
    work.__enter__()
    for name in names:
        work.claim(incoming, incoming / name)
    batch = prepare_batch(work.files(), image_size=IMAGE_SIZE, find_scored=lambda uid: None,
                          seen_in_run={}, allowed_modalities=("MG",), max_pixels=max_pixels)
    return work, batch


@pytest.fixture
def pipeline(tmp_path, database_url):
    pipeline = OutcomePipeline(tmp_path / "data", database_url)
    yield pipeline
    pipeline.close()


class TestFileChecks:
    def test_symlink_is_not_regular_file(self, tmp_path):
        target = _write_mammogram(tmp_path / "elsewhere" / "image.dcm")
        (tmp_path / "incoming").mkdir()
        (tmp_path / "incoming" / "link.dcm").symlink_to(target)

        work, batch = _prepare_alone(tmp_path, ["link.dcm"])

        [rejection] = batch.rejections
        assert rejection.reason is ReasonCode.NOT_REGULAR_FILE
        assert rejection.message.startswith(f"link.dcm: is a symbolic link to '{target}'")
        assert rejection.content_hash is None
        assert batch.to_score == []

        apply_file_outcomes(batch, archive_dir=tmp_path / "archive",
                            quarantine_dir=tmp_path / "quarantine")
        [quarantined] = (tmp_path / "quarantine" / "not_regular_file").iterdir()
        assert quarantined.is_symlink()
        assert os.readlink(quarantined) == str(target)
        assert target.exists()
        work.__exit__(None, None, None)

    def test_fifo_is_not_regular_file(self, tmp_path):
        (tmp_path / "incoming").mkdir()
        os.mkfifo(tmp_path / "incoming" / "pipe.dcm")

        work, batch = _prepare_alone(tmp_path, ["pipe.dcm"])

        [rejection] = batch.rejections
        assert rejection.reason is ReasonCode.NOT_REGULAR_FILE
        assert "is a FIFO (named pipe), not a regular file" in rejection.message
        rejection.claimed.path.unlink()
        work.__exit__(None, None, None)

    def test_empty_file_is_incomplete(self, tmp_path):
        (tmp_path / "incoming").mkdir()
        (tmp_path / "incoming" / "empty.dcm").write_bytes(b"")

        work, batch = _prepare_alone(tmp_path, ["empty.dcm"])

        [rejection] = batch.rejections
        assert rejection.reason is ReasonCode.INCOMPLETE
        assert rejection.message == ("empty.dcm: the file is empty (0 bytes), so the transfer "
                                     "was aborted before any data arrived. Send the file again.")
        rejection.claimed.path.unlink()
        work.__exit__(None, None, None)

    def test_rejection_names_original_file(self, tmp_path):
        (tmp_path / "incoming").mkdir()
        (tmp_path / "incoming" / "notes.txt").write_text("not DICOM\n")

        work, batch = _prepare_alone(tmp_path, ["notes.txt"])

        [rejection] = batch.rejections
        assert rejection.reason is ReasonCode.NOT_DICOM
        assert rejection.message.startswith("notes.txt: ")
        rejection.claimed.path.unlink()
        work.__exit__(None, None, None)


class TestGzipFiles:
    def _gzip(self, source: Path, target: Path, *, keep_bytes: int | None = None) -> Path:
        data = gzip.compress(source.read_bytes())
        target.write_bytes(data if keep_bytes is None else data[:keep_bytes])
        return target

    def test_gzip_file_is_read(self, tmp_path):
        plain = _write_mammogram(tmp_path / "plain.dcm")
        (tmp_path / "incoming").mkdir()
        self._gzip(plain, tmp_path / "incoming" / "image.dcm.gz")

        work, batch = _prepare_alone(tmp_path, ["image.dcm.gz"])

        [item] = batch.to_score
        assert item.content_hash == hash_file(plain)
        assert item.decompressed_path.name.startswith(".")
        assert item.decompressed_path.read_bytes() == plain.read_bytes()
        assert batch.images[0].shape == (IMAGE_SIZE, IMAGE_SIZE)

        apply_file_outcomes(batch, archive_dir=tmp_path / "archive",
                            quarantine_dir=tmp_path / "quarantine")
        [archived] = (tmp_path / "archive").glob("*/*.dcm")
        assert archived.read_bytes() == plain.read_bytes()
        assert list(work.path.iterdir()) == [work.path / ".lock"]
        work.__exit__(None, None, None)

    def test_gzip_copy_of_plain_file_is_duplicate(self, tmp_path):
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        plain = _write_mammogram(incoming / "a.dcm")
        self._gzip(plain, incoming / "b.gz")

        work, batch = _prepare_alone(tmp_path, ["a.dcm", "b.gz"])

        [scored] = batch.to_score
        [duplicate] = batch.duplicates
        names = {scored.claimed.original_name, duplicate.claimed.original_name}
        assert names == {"a.dcm", "b.gz"}  # which one comes first depends on the claim ids
        apply_file_outcomes(batch, archive_dir=tmp_path / "archive",
                            quarantine_dir=tmp_path / "quarantine")
        [archived] = (tmp_path / "archive").glob("*/*.dcm")
        assert _sha256(archived) == scored.content_hash == duplicate.content_hash
        assert list(work.path.iterdir()) == [work.path / ".lock"]
        work.__exit__(None, None, None)

    @pytest.mark.parametrize(("content", "reason", "phrase"), [
        ("truncated", ReasonCode.INCOMPLETE, "the gzip stream ends before its end marker"),
        ("garbage", ReasonCode.NOT_DICOM, "starts like gzip data but cannot be decompressed"),
    ])
    def test_broken_gzip_rejected(self, tmp_path, content, reason, phrase):
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        plain = _write_mammogram(tmp_path / "plain.dcm")
        if content == "truncated":
            self._gzip(plain, incoming / "bad.gz", keep_bytes=2000)
        else:
            (incoming / "bad.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 200)
        original = _sha256(incoming / "bad.gz")

        work, batch = _prepare_alone(tmp_path, ["bad.gz"])

        [rejection] = batch.rejections
        assert rejection.reason is reason
        assert phrase in rejection.message
        apply_file_outcomes(batch, archive_dir=tmp_path / "archive",
                            quarantine_dir=tmp_path / "quarantine")
        [quarantined] = (tmp_path / "quarantine" / str(reason)).iterdir()
        assert _sha256(quarantined) == original
        assert list(work.path.iterdir()) == [work.path / ".lock"]
        work.__exit__(None, None, None)

    def test_gzip_bomb_is_oversize(self, tmp_path):
        (tmp_path / "incoming").mkdir()
        bomb = tmp_path / "incoming" / "bomb.gz"
        with gzip.open(bomb, "wb") as stream:
            for _ in range(80):
                stream.write(bytes(1 << 20))

        # max_pixels 1 allows 4 bytes of pixels plus the 64 MiB header allowance.
        work, batch = _prepare_alone(tmp_path, ["bomb.gz"], max_pixels=1)

        [rejection] = batch.rejections
        assert rejection.reason is ReasonCode.OVERSIZE
        assert "decompresses to more than 67108868 bytes" in rejection.message
        rejection.claimed.path.unlink()
        work.__exit__(None, None, None)


class TestDuplicates:
    def test_same_instance_twice_in_one_batch(self, pipeline):
        first = _write_mammogram(pipeline.incoming_dir / "a.dcm")
        shutil.copyfile(first, pipeline.incoming_dir / "copy of a.dcm")

        counts = pipeline.run("run-1")

        assert (counts.scored, counts.duplicates, counts.quarantined) == (1, 1, 0)
        with pipeline.session_factory() as session:
            [instance] = session.scalars(select(Instance)).all()
            [duplicate] = session.scalars(select(DuplicateRecord)).all()
        # Work files are prepared in claim id order, so either copy may be the scored one.
        assert {instance.file_name, duplicate.file_name} == {"a.dcm", "copy of a.dcm"}
        assert duplicate.sop_instance_uid == instance.sop_instance_uid
        assert duplicate.content_hash == instance.content_hash
        assert len(list(pipeline.archive_dir.glob("*/*.dcm"))) == 1
        assert list(pipeline.incoming_dir.iterdir()) == []

    def test_same_instance_in_two_runs(self, pipeline, tmp_path):
        original = _write_mammogram(tmp_path / "original.dcm")
        shutil.copyfile(original, pipeline.incoming_dir / "a.dcm")
        first = pipeline.run("run-1")
        shutil.copyfile(original, pipeline.incoming_dir / "renamed.dcm")
        second = pipeline.run("run-2")

        assert (first.scored, first.duplicates) == (1, 0)
        assert (second.scored, second.duplicates, second.quarantined) == (0, 1, 0)
        with pipeline.session_factory() as session:
            assert len(session.scalars(select(Instance)).all()) == 1
            [opinion] = session.scalars(select(SecondOpinion)).all()
            [duplicate] = session.scalars(select(DuplicateRecord)).all()
        assert opinion.flow_run_id == "run-1"
        assert (duplicate.file_name, duplicate.flow_run_id) == ("renamed.dcm", "run-2")

    def test_reused_uid_with_other_pixels_is_conflict(self, pipeline, tmp_path):
        pixels = make_breast_pixels()
        scored = _write_mammogram(pipeline.incoming_dir / "first.dcm", pixels)
        uid = _sop_instance_uid(scored)
        pipeline.run("run-1")
        with pipeline.session_factory() as session:
            before = session.get(Instance, uid)
            opinion_before = session.get(SecondOpinion, uid)

        other = pixels.copy()
        other[150:160, 10:20] = 4095
        conflicting = _write_mammogram(tmp_path / "other.dcm", other, SOPInstanceUID=uid)
        shutil.copyfile(conflicting, pipeline.incoming_dir / "other.dcm")
        second = pipeline.run("run-2")

        assert (second.scored, second.duplicates, second.quarantined) == (0, 0, 1)
        with pipeline.session_factory() as session:
            after = session.get(Instance, uid)
            opinion_after = session.get(SecondOpinion, uid)
            [record] = session.scalars(select(QuarantineRecord)).all()
        assert (after.content_hash, after.file_name) == (before.content_hash, "first.dcm")
        assert opinion_after.flow_run_id == opinion_before.flow_run_id == "run-1"
        assert record.reason_code == "uid_conflict"
        assert record.sop_instance_uid == uid
        assert record.file_name == "other.dcm"
        assert "the existing result is kept" in record.message
        assert _sha256(Path(record.quarantine_path)) == _sha256(conflicting)
        [archived] = pipeline.archive_dir.glob("*/*.dcm")
        assert archived.read_bytes() != conflicting.read_bytes()

    def test_conflict_within_one_batch(self, pipeline):
        pixels = make_breast_pixels()
        _write_mammogram(pipeline.incoming_dir / "a.dcm", pixels, SOPInstanceUID="1.2.3.4")
        other = pixels.copy()
        other[0:5, 0:5] = 1
        _write_mammogram(pipeline.incoming_dir / "b.dcm", other, SOPInstanceUID="1.2.3.4")

        counts = pipeline.run("run-1")

        assert (counts.scored, counts.duplicates, counts.quarantined) == (1, 0, 1)
        [scored] = counts.batches[0].to_score
        [rejection] = counts.batches[0].rejections
        assert rejection.reason is ReasonCode.UID_CONFLICT
        assert {scored.claimed.original_name, rejection.claimed.original_name} == {
            "a.dcm", "b.dcm"}
        assert rejection.content_hash != scored.content_hash


class TestMemory:
    def _peak_bytes(self, tmp_path: Path, sources: list[Path]) -> int:
        incoming = tmp_path / "incoming"
        incoming.mkdir(parents=True)
        for index, source in enumerate(sources):
            shutil.copyfile(source, incoming / f"{index}.dcm")
        with WorkFolder(tmp_path / "work", "run-a") as work:
            for path in sorted(incoming.iterdir()):
                work.claim(incoming, path)
            tracemalloc.start()
            try:
                batch = prepare_batch(work.files(), image_size=224,
                                      find_scored=lambda uid: None, seen_in_run={},
                                      allowed_modalities=("MG",), max_pixels=80_000_000)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert len(batch.to_score) == len(sources)
            for claimed in work.files():
                claimed.path.unlink()
        return peak

    def test_peak_memory_flat_across_batch(self, tmp_path, cbis_ddsm_files):
        # Each CBIS-DDSM image is about 4400 x 2850 pixels: keeping its decoded or float32
        # copy per instance would add 25 to 50 MB per file to the peak.
        single = self._peak_bytes(tmp_path / "one", cbis_ddsm_files[:1])
        batch = self._peak_bytes(tmp_path / "four", cbis_ddsm_files[:4])

        assert batch < single * 1.5, f"one file {single / 2**20:.0f} MiB, four files " \
            f"{batch / 2**20:.0f} MiB"
