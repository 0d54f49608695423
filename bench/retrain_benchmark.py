"""Benchmark the retraining flow on a folder of labelled mammograms.

Runs the production path end to end in a work folder. It wraps the images as DICOM and
bootstraps version 1 of the models. process_incoming then scores and archives the images
through the local gRPC model server, the labels are imported as CSV, and retrain_models runs
once. The script prints the validation AUC with its 95% bootstrap confidence interval per
model and for the ensemble.

The input folder has the layout of the mini-MIAS database: ``labels.csv`` with the columns
``refnum``, ``file_gz`` and ``image_label`` (normal, benign, malignant), and gzip-compressed
8-bit PGM files under ``images/``. Each image becomes a Secondary Capture MG instance
(MONOCHROME2, 8 bits) with generated UIDs. mini-MIAS numbers the two breasts of a woman
consecutively (odd numbers right, even numbers left), so images 2k-1 and 2k share a
PatientID and a study.

Example, with the images kept outside the repository:

    .venv/bin/python bench/retrain_benchmark.py /path/to/mini-mias --work /tmp/mias-bench \\
        --size 128 --epochs 8

Everything it writes stays in ``--work``: the DICOM files, the database, the model repository
and the checkpoints trained on the images. Do not copy them into the repository if the
images' licence forbids redistribution.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammo.settings import MODEL_NAMES, Settings  # noqa: E402


def read_pgm(path: Path) -> np.ndarray:
    """Return the pixels of a binary 8-bit PGM (P5) file, gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while data[position:position + 1].isspace():
            position += 1
        if data[position:position + 1] == b"#":
            position = data.index(b"\n", position) + 1
            continue
        end = position
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[position:end])
        position = end
    magic, width, height, maximum = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5" or maximum > 255:
        raise ValueError(f"{path} is not an 8-bit binary PGM (found {magic!r}, max {maximum})")
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height, offset=position + 1)
    return pixels.reshape(height, width)


def wrap_as_dicom(pixels: np.ndarray, path: Path, *, patient_id: str, study_uid: str,
                  laterality: str) -> str:
    """Write ``pixels`` as a Secondary Capture MG instance; return its SOPInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "MG"
    dataset.PatientID = patient_id
    dataset.Laterality = laterality
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return str(dataset.SOPInstanceUID)


def wrap_folder(images_dir: Path, incoming: Path, limit: int | None) -> list[dict]:
    """Wrap every labelled image as DICOM into ``incoming``; return one entry per image."""
    from pydicom.uid import generate_uid

    with open(images_dir / "labels.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if limit:
        rows = rows[:limit]
    studies: dict[int, str] = {}
    written = []
    for row in rows:
        number = int(row["refnum"].removeprefix("mdb"))
        woman = (number + 1) // 2
        study_uid = studies.setdefault(woman, generate_uid())
        laterality = "L" if number % 2 == 0 else "R"
        source = images_dir / "images" / Path(row["file_gz"]).name
        target = incoming / f"{row['refnum']}.dcm"
        sop = wrap_as_dicom(read_pgm(source), target, patient_id=f"MIAS-{woman:03d}",
                            study_uid=study_uid, laterality=laterality)
        written.append({"sop": sop, "label": row["image_label"], "refnum": row["refnum"]})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder with labels.csv and images/")
    parser.add_argument("--work", type=Path, required=True,
                        help="empty work folder for DICOM files, database and models")
    parser.add_argument("--size", type=int, default=128, help="input size of every model, "
                        "in pixels (default 128)")
    parser.add_argument("--epochs", type=int, default=8, help="maximum epochs (default 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="initial learning rate (default 0.001)")
    parser.add_argument("--unfreeze-fraction", type=float, default=0.0,
                        help="fraction of backbone layers trained (default 0)")
    parser.add_argument("--model", dest="models", action="append", choices=MODEL_NAMES,
                        help="model to fine-tune; repeat for several (default all)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "MAMMO_DATA_DIR": str(work / "data"),
        "MAMMO_STABILITY_SECONDS": "0",
        "MAMMO_SERVING_ADDRESS": "127.0.0.1:0",
        "MAMMO_IMAGENET_WEIGHTS": os.environ.get("MAMMO_IMAGENET_WEIGHTS", "none"),
        "MAMMO_INPUT_SIZES": json.dumps({name: args.size for name in MODEL_NAMES}),
    })
    settings = Settings()
    settings.export_tool_homes()
    settings.ensure_folders()
    timings: dict[str, float] = {}
    started = time.monotonic()

    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.labels import import_labels, read_label_file
    from db.migrate import upgrade
    from db.schema import ModelCandidate
    from models.bootstrap import bootstrap_models
    from serving.local_server import LocalModelServer

    upgrade(settings.resolved_database_url())
    images = wrap_folder(args.images, settings.incoming_dir, args.limit)
    timings["wrap"] = time.monotonic() - started

    step = time.monotonic()
    bootstrap_models(settings, allow_download=False)
    timings["bootstrap"] = time.monotonic() - step

    server = LocalModelServer(settings, port=0)
    port = server.start()
    os.environ["MAMMO_SERVING_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        from flows.process_incoming import process_incoming
        from flows.retrain_models import retrain_models
        from flows.retrain_parameters import RetrainParameters

        step = time.monotonic()
        processed = process_incoming()
        timings["process_incoming"] = time.monotonic() - step

        label_file = work / "labels.csv"
        today = dt.date.today().isoformat()
        with open(label_file, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["SOPInstanceUID", "label", "source", "date"])
            for image in images:
                writer.writerow([image["sop"], image["label"], "mini-mias", today])
        rows, rejected = read_label_file(label_file)
        factory = make_session_factory(make_engine(settings.resolved_database_url()))
        with factory.begin() as session:
            imported = import_labels(session, rows)

        parameters = RetrainParameters(
            models=args.models or list(MODEL_NAMES), epochs=args.epochs,
            learning_rate=args.learning_rate, unfreeze_fraction=args.unfreeze_fraction,
            min_new_labels=0, promotion_margin=0.0, seed=args.seed)
        step = time.monotonic()
        result = retrain_models(parameters=parameters)
        timings["retrain_models"] = time.monotonic() - step
    finally:
        server.stop(grace=1)
    timings["total"] = time.monotonic() - started

    with factory() as session:
        candidates = {row.model_name: row for row in session.scalars(select(ModelCandidate))}

    print(f"\nImages: {len(images)} wrapped, {processed['scored']} scored, "
          f"{imported.added} labels imported, {len(rejected)} rejected")
    print(f"Input size {args.size} px, at most {args.epochs} epochs, learning rate "
          f"{args.learning_rate}, unfreeze fraction {args.unfreeze_fraction}, "
          f"backbone weights {settings.imagenet_weights}")
    print(f"{'model':<16}{'served AUC [95% CI]':<28}{'candidate AUC [95% CI]':<28}decision")
    for name, candidate in candidates.items():
        served = candidate.metrics["current"]
        trained = candidate.metrics["candidate"]
        print(f"{name:<16}{_interval(served):<28}{_interval(trained):<28}{candidate.decision}")
    ensemble = result["ensemble"]
    print(f"{'ensemble':<16}{'':<28}{ensemble['auc']:.3f} [{ensemble['auc_ci'][0]:.3f}, "
          f"{ensemble['auc_ci'][1]:.3f}]   {ensemble['model_versions']}")
    validation = next(iter(candidates.values())).metrics["candidate"]
    print(f"Validation: {validation['cases']} images, {validation['malignant']} malignant")
    print("Time (s): " + ", ".join(f"{key} {value:.0f}" for key, value in timings.items()))
    print(f"Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    return 0


def _interval(metrics: dict) -> str:
    return f"{metrics['auc']:.3f} [{metrics['auc_ci_low']:.3f}, {metrics['auc_ci_high']:.3f}]"


if __name__ == "__main__":
    sys.exit(main())
