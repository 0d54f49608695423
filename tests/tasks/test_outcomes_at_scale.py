"""A thousand files dropped at once: one outcome per input, one result per distinct instance.

The files are small MG images written by the test, copies of them under other names, in
subfolders and gzip-compressed, and inputs that must be quarantined. They go through intake,
preparation, the database write (PostgreSQL) and the file moves; only scoring is replaced by
fixed fake probabilities (see `tests.tasks.outcome_pipeline`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db.schema import DuplicateRecord, Instance, QuarantineRecord, SecondOpinion
from mammo.cli import main
from tests.tasks.mammogram_files import make_dataset, write_dataset
from tests.tasks.outcome_pipeline import OutcomePipeline

DISTINCT = 600
PLAIN_COPIES = 300
GZIP_COPIES = 20
BAD_PER_KIND = 20  # empty, not DICOM, truncated pixel data, blank image
TOTAL = DISTINCT + PLAIN_COPIES + GZIP_COPIES + 4 * BAD_PER_KIND


def _small_pixels(seed: int) -> np.ndarray:
    """Return a 40 x 30 12-bit image: a bright half-disc at the left edge with noise."""
    rows, columns = np.mgrid[0:40, 0:30]
    breast = np.hypot(rows - 20, columns) < 18
    noise = np.random.default_rng(seed).integers(0, 200, size=(40, 30))
    return np.where(breast, 2500 + noise, noise // 10).astype(np.uint16)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pipeline(tmp_path, fresh_postgres_url):
    pipeline = OutcomePipeline(tmp_path / "data", fresh_postgres_url)
    yield pipeline
    pipeline.close()


def _drop_thousand_files(incoming: Path, staging: Path) -> dict[str, str]:
    """Write the inputs into ``incoming``; return the SHA-256 of each bad file by name."""
    staging.mkdir()
    originals = []
    for index in range(DISTINCT):
        path = write_dataset(staging / f"{index}.dcm", make_dataset(_small_pixels(index)))
        originals.append(path)
        target = incoming / f"study {index % 7}" / f"image {index}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    for index in range(PLAIN_COPIES):
        shutil.copyfile(originals[index], incoming / f"-copy ş {index}.dcm")
    for index in range(GZIP_COPIES):
        source = originals[DISTINCT - 1 - index]
        (incoming / f"copy {index}.dcm.gz").write_bytes(gzip.compress(source.read_bytes()))

    bad: dict[str, str] = {}
    for index in range(BAD_PER_KIND):
        (incoming / f"empty {index}.dcm").write_bytes(b"")
        (incoming / f"notes {index}.txt").write_text(f"report {index}\n")
        whole = write_dataset(staging / f"t{index}.dcm",
                              make_dataset(_small_pixels(10_000 + index))).read_bytes()
        (incoming / f"truncated {index}.dcm").write_bytes(whole[:-500])
        blank = np.full((40, 30), 1000, dtype=np.uint16)
        write_dataset(incoming / f"blank {index}.dcm", make_dataset(blank))
    for path in incoming.glob("*"):
        if path.name.startswith(("empty", "notes", "truncated", "blank")):
            bad[path.name] = _sha256(path)
    return bad


def test_thousand_files_one_outcome_each(pipeline, tmp_path, monkeypatch, capsys):
    bad = _drop_thousand_files(pipeline.incoming_dir, tmp_path / "staging")
    assert sum(1 for path in pipeline.incoming_dir.rglob("*") if path.is_file()) == TOTAL

    counts = pipeline.run("run-thousand", batch_size=64)

    assert counts.scored == DISTINCT
    assert counts.duplicates == PLAIN_COPIES + GZIP_COPIES
    assert counts.quarantined == 4 * BAD_PER_KIND
    with pipeline.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == DISTINCT
        assert session.scalar(select(func.count()).select_from(SecondOpinion)) == DISTINCT
        assert session.scalar(select(func.count()).select_from(DuplicateRecord)) == \
            PLAIN_COPIES + GZIP_COPIES
        records = session.scalars(select(QuarantineRecord)).all()
    reasons = sorted(record.reason_code for record in records)
    assert reasons == sorted(["incomplete", "not_dicom", "corrupt_pixel_data",
                              "blank_image"] * BAD_PER_KIND)

    # Every quarantined file keeps its original bytes; nothing is left behind.
    for record in records:
        assert _sha256(Path(record.quarantine_path)) == bad[record.file_name], record.file_name
    assert len(list(pipeline.archive_dir.glob("*/*.dcm"))) == DISTINCT
    assert list(pipeline.incoming_dir.rglob("*.dcm")) == []
    assert list(pipeline.work_dir.iterdir()) == []

    # The quarantine log as CSV: file name, SOPInstanceUID where known, reason and message.
    monkeypatch.setenv("MAMMO_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("MAMMO_DATABASE_URL", str(pipeline.engine.url.render_as_string(
        hide_password=False)))
    capsys.readouterr()
    assert main(["results", "--quarantine", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 * BAD_PER_KIND
    assert list(rows[0])[:4] == ["file_name", "sop_instance_uid", "reason_code", "message"]
    for row in rows:
        assert row["message"].startswith(f"{row['file_name']}: "), row
        has_uid = row["reason_code"] in ("corrupt_pixel_data", "blank_image")
        assert bool(row["sop_instance_uid"]) == has_uid, row
