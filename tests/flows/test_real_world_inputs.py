"""The main job on inputs that real senders produce: truncated files, links, empty and
gzip files, folders and odd names, all dropped at once and run through Prefect, the local
model server and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import select

from db.engine import make_engine, make_session_factory
from db.schema import Instance, QuarantineRecord
from tests.tasks.mammogram_files import make_breast_pixels, make_dataset, write_dataset


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jpeg2000_dataset():
    dataset = make_dataset()
    dataset.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return dataset


@pytest.mark.usefixtures("prefect_harness")
def test_real_world_inputs_end_to_end(flow_settings, tmp_path):
    from flows.process_incoming import process_incoming

    incoming = flow_settings.incoming_dir
    (incoming / "sub folder").mkdir()
    write_dataset(incoming / "plain.dcm", make_dataset())
    write_dataset(incoming / "jpeg2000.dcm", _jpeg2000_dataset())
    write_dataset(incoming / "sub folder" / "-ş image.dcm", make_dataset())
    gzipped = write_dataset(tmp_path / "gzipped.dcm", make_dataset())
    (incoming / "gzipped.dcm.gz").write_bytes(gzip.compress(gzipped.read_bytes()))

    native = write_dataset(tmp_path / "native.dcm", make_dataset()).read_bytes()
    (incoming / "truncated native.dcm").write_bytes(native[:len(native) // 2])
    encapsulated = write_dataset(tmp_path / "j2k.dcm", _jpeg2000_dataset()).read_bytes()
    (incoming / "truncated jpeg2000.dcm").write_bytes(encapsulated[:-200])
    (incoming / "empty.dcm").write_bytes(b"")
    write_dataset(incoming / "blank.dcm",
                  make_dataset(np.full(make_breast_pixels().shape, 900, np.uint16)))
    outside = write_dataset(tmp_path / "outside.dcm", make_dataset())
    (incoming / "link.dcm").symlink_to(outside)
    originals = {path.name: _sha256(path) for path in incoming.iterdir()
                 if path.is_file() and not path.is_symlink()}

    result = process_incoming()

    assert result["files_claimed"] == 9
    assert result["scored"] == 4
    assert result["duplicates"] == 0
    assert result["quarantined"] == 5

    engine = make_engine(flow_settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        records = {record.file_name: record
                   for record in session.scalars(select(QuarantineRecord))}
        instances = session.scalars(select(Instance)).all()
    engine.dispose()

    assert {name: record.reason_code for name, record in records.items()} == {
        "truncated native.dcm": "corrupt_pixel_data",
        "truncated jpeg2000.dcm": "corrupt_pixel_data",
        "empty.dcm": "incomplete",
        "blank.dcm": "blank_image",
        "link.dcm": "not_regular_file",
    }
    assert "the file is truncated" in records["truncated native.dcm"].message
    assert "the file ends inside (7FE0,0010) PixelData" in \
        records["truncated jpeg2000.dcm"].message
    for name, record in records.items():
        quarantined = Path(record.quarantine_path)
        if name == "link.dcm":
            assert quarantined.is_symlink()
            assert quarantined.resolve() == outside.resolve()
        else:
            assert _sha256(quarantined) == originals[name], name

    assert sorted(instance.file_name for instance in instances) == [
        "gzipped.dcm.gz", "jpeg2000.dcm", "plain.dcm", "sub folder/-ş image.dcm"]
    archived = {_sha256(path) for path in flow_settings.archive_dir.glob("*/*.dcm")}
    assert _sha256(gzipped) in archived
    assert len(archived) == 4
    assert outside.exists()
    assert list(incoming.iterdir()) == []
    assert list(flow_settings.work_dir.iterdir()) == []
