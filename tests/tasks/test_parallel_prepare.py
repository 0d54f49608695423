"""Tests of tasks.parallel_prepare: the same outcomes as prepare_batch, on worker processes."""

from __future__ import annotations

import gzip
import shutil
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammo.errors import ReasonCode
from tasks.intake import WorkFolder
from tasks.parallel_prepare import (
    InlineExecutor,
    PreparationPipeline,
    PreparedFile,
    PreprocessFailure,
    open_executor,
    prepare_file,
)
from tasks.prepare import HEADER_ALLOWANCE_BYTES, PreparedBatch, hash_file, prepare_batch
from tests.tasks.mammogram_files import make_breast_pixels, make_dataset, write_dataset

IMAGE_SIZE = 64
READ_OPTIONS = {"allowed_modalities": ("MG",), "max_pixels": 80_000_000}


def _write(path: Path, pixels: np.ndarray | None = None, **attributes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dataset(path, make_dataset(pixels, **attributes))


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _corrupt_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` with the last quarter of its Pixel Data cut off."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) - len(data) // 4])
    return target


def _mixed_folder(folder: Path, cbis_ddsm_files: list[Path]) -> dict[str, str]:
    """Write inputs that exercise every outcome; return the UIDs of the scored-before ones."""
    folder.mkdir(parents=True)
    for index, source in enumerate(cbis_ddsm_files[:4]):
        shutil.copyfile(source, folder / f"{index:02d}_cbis.dcm")
    # The same instance twice in one batch: the second copy is a duplicate.
    shutil.copyfile(cbis_ddsm_files[0], folder / "04_cbis_again.dcm")
    # A gzip copy of a new instance, and a cut gzip stream.
    new = _write(folder.parent / "sources" / "new.dcm")
    (folder / "05_new.dcm.gz").write_bytes(gzip.compress(new.read_bytes()))
    (folder / "06_cut.dcm.gz").write_bytes(gzip.compress(new.read_bytes())[:500])
    # Files that are not DICOM, empty, or a link.
    (folder / "07_notes.txt").write_text("not a DICOM file\n")
    (folder / "08_empty.dcm").write_bytes(b"")
    (folder / "09_link.dcm").symlink_to(new)
    # A UID whose first copy has corrupt pixel data and whose second copy has other,
    # valid content: the second is new, not a conflict, because the first was never scored.
    pixels = make_breast_pixels()
    first = _write(folder.parent / "sources" / "reused.dcm", pixels)
    uid = _uid(first)
    _corrupt_copy(first, folder / "10_reused_corrupt.dcm")
    _write(folder / "11_reused_valid.dcm", pixels[:, ::-1].copy(), SOPInstanceUID=uid)
    # A UID conflict inside the run: same UID as 11 with yet other pixels.
    _write(folder / "12_reused_conflict.dcm", np.flipud(pixels).copy(), SOPInstanceUID=uid)
    # An instance that an earlier run scored (found through find_scored), and one whose
    # UID an earlier run scored with other content.
    scored = _write(folder / "13_scored_before.dcm")
    conflict = _write(folder / "14_conflicts_with_scored.dcm")
    # A copy of a scored instance whose preprocessing fails (a blank image): still a
    # duplicate, although the workers preprocess it before the decision.
    blank = _write(folder / "15_blank_scored_before.dcm", np.zeros((96, 64), np.uint16))
    return {_uid(scored): hash_file(scored), _uid(conflict): "0" * 64,
            _uid(blank): hash_file(blank)}


def _claim_all(folder: Path, work_root: Path, run_id: str) -> WorkFolder:
    work = WorkFolder(work_root, run_id)
    work.__enter__()
    for path in sorted(folder.iterdir()):
        work.claim(folder, path)
    return work


def _in_name_order(work: WorkFolder):
    # Claim ids are random, so order by the original name to give both runs one order.
    return sorted(work.files(), key=lambda claimed: claimed.original_name)


def _outcomes(batches: list[PreparedBatch]) -> dict[str, tuple]:
    """Map each original file name to its outcome kind, reason and identifiers."""
    outcomes: dict[str, tuple] = {}
    for batch in batches:
        assert len(batch.images) == len(batch.to_score)
        for item, image in zip(batch.to_score, batch.images):
            outcomes[item.claimed.original_name] = (
                "scored", item.content_hash, item.info.sop_instance_uid,
                item.decompressed_path is not None, image.tobytes())
        for item in batch.duplicates:
            outcomes[item.claimed.original_name] = ("duplicate", item.content_hash,
                                                    item.sop_instance_uid)
        for item in batch.rejections:
            outcomes[item.claimed.original_name] = (
                "rejected", item.reason, item.content_hash, item.sop_instance_uid,
                item.message)
        for item in batch.unarchived:
            outcomes[item.claimed.original_name] = ("unarchived", item.content_hash)
    return outcomes


def _prepare_sequentially(files, scored: dict[str, str], batch_size: int):
    seen: dict[str, str] = {}
    return [prepare_batch(files[start:start + batch_size], image_size=IMAGE_SIZE,
                          find_scored=lambda uid: _lookup(scored, uid), seen_in_run=seen,
                          **READ_OPTIONS)
            for start in range(0, len(files), batch_size)]


def _lookup(scored: dict[str, str], uid: str) -> tuple[str, str] | None:
    # An archive path that exists, so a scored instance is a duplicate, not unarchived.
    return (scored[uid], __file__) if uid in scored else None


def _lookup_many(scored: dict[str, str], uids) -> dict[str, tuple[str, str]]:
    return {uid: found for uid in uids if (found := _lookup(scored, uid)) is not None}


def _prepare_in_pipeline(executor, files, scored: dict[str, str], batch_size: int):
    with PreparationPipeline(executor, files, batch_size=batch_size, image_size=IMAGE_SIZE,
                             find_scored=lambda uids: _lookup_many(scored, uids),
                             seen_in_run={}, **READ_OPTIONS) as pipeline:
        return list(pipeline)


class TestSameOutcomes:
    @pytest.mark.parametrize("workers", [0, 2])
    def test_matches_prepare_batch(self, tmp_path, cbis_ddsm_files, workers):
        scored = _mixed_folder(tmp_path / "a", cbis_ddsm_files)
        shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
        sequential_work = _claim_all(tmp_path / "a", tmp_path / "work", "sequential")
        parallel_work = _claim_all(tmp_path / "b", tmp_path / "work", "parallel")

        expected = _outcomes(_prepare_sequentially(_in_name_order(sequential_work), scored, 4))
        with open_executor("processes", workers) as executor:
            batches = _prepare_in_pipeline(executor, _in_name_order(parallel_work), scored, 4)
        found = _outcomes(batches)

        assert sorted(found) == sorted(expected)
        for name, outcome in expected.items():
            assert found[name] == outcome, name
        sequential_work.__exit__(None, None, None)
        parallel_work.__exit__(None, None, None)

    def test_expected_outcome_kinds(self, tmp_path, cbis_ddsm_files):
        scored = _mixed_folder(tmp_path / "in", cbis_ddsm_files)
        work = _claim_all(tmp_path / "in", tmp_path / "work", "run")
        with open_executor("processes", 2) as executor:
            outcomes = _outcomes(_prepare_in_pipeline(executor, _in_name_order(work), scored, 3))

        kinds = {name: outcome[0] for name, outcome in outcomes.items()}
        assert kinds["04_cbis_again.dcm"] == "duplicate"
        assert kinds["05_new.dcm.gz"] == "scored"
        assert outcomes["05_new.dcm.gz"][3] is True
        assert outcomes["06_cut.dcm.gz"][1] is ReasonCode.INCOMPLETE
        assert outcomes["07_notes.txt"][0] == "rejected"
        assert outcomes["08_empty.dcm"][1] is ReasonCode.INCOMPLETE
        assert outcomes["09_link.dcm"][1] is ReasonCode.NOT_REGULAR_FILE
        assert outcomes["10_reused_corrupt.dcm"][1] is ReasonCode.CORRUPT_PIXEL_DATA
        assert kinds["11_reused_valid.dcm"] == "scored"
        assert outcomes["12_reused_conflict.dcm"][1] is ReasonCode.UID_CONFLICT
        assert kinds["13_scored_before.dcm"] == "duplicate"
        assert outcomes["14_conflicts_with_scored.dcm"][1] is ReasonCode.UID_CONFLICT
        assert kinds["15_blank_scored_before.dcm"] == "duplicate"
        assert sum(kind == "scored" for kind in kinds.values()) == 6
        work.__exit__(None, None, None)

    def test_rejected_gzip_copy_removed(self, tmp_path):
        source = _write(tmp_path / "source.dcm", SOPClassUID="1.2.3")
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "x.dcm.gz").write_bytes(gzip.compress(source.read_bytes()))
        work = _claim_all(tmp_path / "in", tmp_path / "work", "run")

        [claimed] = work.files()
        rejection = prepare_file(claimed, image_size=IMAGE_SIZE, allowed_modalities=("CT",),
                                 max_pixels=80_000_000)

        assert rejection.reason is ReasonCode.NOT_MAMMOGRAM
        hidden = [path.name for path in work.path.iterdir() if path.name.startswith(".")]
        assert not any(name.endswith(".decompressed.dcm") for name in hidden)
        work.__exit__(None, None, None)


class TestWorkers:
    def test_prepare_file_matches_preprocess(self, tmp_path, cbis_ddsm_files):
        from tasks.dicom_read import read_instance
        from tasks.preprocess import preprocess

        (tmp_path / "in").mkdir()
        shutil.copyfile(cbis_ddsm_files[0], tmp_path / "in" / "cbis.dcm")
        work = _claim_all(tmp_path / "in", tmp_path / "work", "run")
        [claimed] = work.files()

        prepared = prepare_file(claimed, image_size=IMAGE_SIZE, **READ_OPTIONS)

        assert isinstance(prepared, PreparedFile)
        assert prepared.content_hash == hash_file(cbis_ddsm_files[0])
        expected = preprocess(read_instance(cbis_ddsm_files[0]), IMAGE_SIZE)
        assert np.array_equal(prepared.image, expected)
        work.__exit__(None, None, None)

    def test_preprocess_failure_is_data(self, tmp_path):
        uid = _uid(_write(tmp_path / "in" / "blank.dcm", np.zeros((96, 64), np.uint16)))
        work = _claim_all(tmp_path / "in", tmp_path / "work", "run")
        [claimed] = work.files()

        prepared = prepare_file(claimed, image_size=IMAGE_SIZE, **READ_OPTIONS)

        assert isinstance(prepared.image, PreprocessFailure)
        assert prepared.image.reason is ReasonCode.BLANK_IMAGE
        assert prepared.info.sop_instance_uid == uid
        work.__exit__(None, None, None)

    def test_file_too_large_to_read_whole(self, tmp_path):
        # 64 MB of private data: more than the header allowance plus 4 bytes per pixel
        # that max_pixels=16 allows, so the file is hashed in chunks and read from disk.
        dataset = make_dataset()
        block = dataset.private_block(0x0009, "MAMMO TEST", create=True)
        block.add_new(0x10, "OB", bytes(HEADER_ALLOWANCE_BYTES + 1024))
        (tmp_path / "in").mkdir()
        source = write_dataset(tmp_path / "in" / "large.dcm", dataset)
        expected_hash = hash_file(source)
        work = _claim_all(tmp_path / "in", tmp_path / "work", "run")
        [claimed] = work.files()

        rejection = prepare_file(claimed, image_size=IMAGE_SIZE, allowed_modalities=("MG",),
                                 max_pixels=16)

        assert rejection.reason is ReasonCode.OVERSIZE
        assert rejection.content_hash == expected_hash
        work.__exit__(None, None, None)

    def test_unknown_executor_raises(self):
        with pytest.raises(ValueError, match="unknown preprocessing executor 'threads'"):
            open_executor("threads", 2)


class TestPipeline:
    def _claimed(self, tmp_path: Path, count: int):
        folder = tmp_path / "in"
        for index in range(count):
            _write(folder / f"{index:03d}.dcm")
        return _claim_all(folder, tmp_path / "work", "run")

    def test_batches_keep_claim_order(self, tmp_path):
        work = self._claimed(tmp_path, 7)
        with open_executor("processes", 2) as executor:
            batches = _prepare_in_pipeline(executor, _in_name_order(work), {}, 3)

        assert [len(batch.to_score) for batch in batches] == [3, 3, 1]
        names = [item.claimed.original_name for batch in batches for item in batch.to_score]
        assert names == [f"{index:03d}.dcm" for index in range(7)]
        work.__exit__(None, None, None)

    def test_lookup_error_reaches_caller(self, tmp_path):
        work = self._claimed(tmp_path, 2)

        def failing_lookup(uids):
            raise ConnectionError(f"database down while looking up {uids}")

        with open_executor("processes", 1) as executor:
            with PreparationPipeline(executor, work.files(), batch_size=1,
                                     image_size=IMAGE_SIZE, find_scored=failing_lookup,
                                     seen_in_run={}, **READ_OPTIONS) as pipeline:
                with pytest.raises(ConnectionError, match="database down"):
                    pipeline.next_batch()
        work.__exit__(None, None, None)

    def test_one_lookup_per_batch(self, tmp_path):
        work = self._claimed(tmp_path, 5)
        files = _in_name_order(work)
        uids = [_uid(claimed.path) for claimed in files]
        # A byte copy of the first file, in the second batch: by then its UID is seen.
        shutil.copyfile(files[0].path, tmp_path / "in" / "005.dcm")
        work.claim(tmp_path / "in", tmp_path / "in" / "005.dcm")
        files += [claimed for claimed in work.files()
                  if claimed.original_name == "005.dcm"]
        requested: list[list[str]] = []

        def lookup(uids):
            requested.append(list(uids))
            return {}

        with open_executor("processes", 2) as executor:
            with PreparationPipeline(executor, files, batch_size=3, image_size=IMAGE_SIZE,
                                     find_scored=lookup, seen_in_run={},
                                     **READ_OPTIONS) as pipeline:
                batches = list(pipeline)

        assert requested == [sorted(uids[:3]), sorted(uids[3:])]
        assert [len(batch.to_score) for batch in batches] == [3, 2]
        assert len(batches[1].duplicates) == 1
        work.__exit__(None, None, None)

    def test_close_stops_preparation(self, tmp_path):
        work = self._claimed(tmp_path, 6)
        with open_executor("processes", 1) as executor:
            pipeline = PreparationPipeline(executor, work.files(), batch_size=1,
                                           image_size=IMAGE_SIZE,
                                           find_scored=lambda uids: {}, seen_in_run={},
                                           **READ_OPTIONS)
            first = pipeline.next_batch()
            closer = threading.Thread(target=pipeline.close)
            closer.start()
            closer.join(timeout=60)

        assert not closer.is_alive()
        assert len(first.to_score) == 1
        assert pipeline.next_batch() is None
        work.__exit__(None, None, None)

    def test_inline_executor_raises_on_result(self):
        future = InlineExecutor().submit(int, "not a number")

        with pytest.raises(ValueError):
            future.result()

    @pytest.mark.parametrize("batch_size, ahead", [(0, 1), (1, 0)])
    def test_invalid_sizes_raise(self, batch_size, ahead):
        with pytest.raises(ValueError, match="must be at least 1"):
            PreparationPipeline(InlineExecutor(), [], batch_size=batch_size,
                                image_size=IMAGE_SIZE, find_scored=lambda uids: {},
                                seen_in_run={}, ahead=ahead, **READ_OPTIONS)
