"""Time the preprocessing of each mammogram stage by stage, against decoding alone.

For every input file, and for its JPEG 2000 and JPEG-LS lossless re-encodings, the script
measures (median over ``--repeat`` runs, files in the page cache):

- decode-only floor: ``dcmread`` plus ``Dataset.pixel_array``, nothing else;
- read: `tasks.dicom_read.read_instance` (header checks);
- decode: `tasks.preprocess.decode_pixel_data`;
- luts: modality LUT, VOI and polarity;
- crop: crop to the breast and orient the chest wall to the left;
- resize: pad to a square, resize and quantise to uint8;

and prints the ratio of the whole preprocessing to the decode-only floor, per encoding.

    .venv/bin/python bench/preprocess_stages.py                 # the CBIS-DDSM samples
    .venv/bin/python bench/preprocess_stages.py --size 600 FILE.dcm ...
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from mammo.cli import sample_files
from tasks.dicom_read import read_instance
from tasks.preprocess import (
    apply_modality_lut,
    apply_voi,
    correct_polarity,
    crop_to_breast,
    decode_pixel_data,
    orient_chest_wall_left,
    pad_to_square,
    quantize_to_uint8,
    resize_square,
)

STAGES = ("read", "decode", "luts", "crop", "resize")


def reencode(files: list[Path], folder: Path, syntax, label: str) -> list[Path]:
    """Write a lossless re-encoding of each file in ``syntax`` and return the new paths."""
    written = []
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.decompress()  # the CBIS-DDSM samples are RLE; only native data compresses
        dataset.compress(syntax)
        target = folder / f"{label}-{path.parent.name}-{path.name}"
        dataset.save_as(target)
        written.append(target)
    return written


def time_decode_only(path: Path) -> float:
    start = time.perf_counter()
    pydicom.dcmread(path).pixel_array
    return time.perf_counter() - start


def time_stages(path: Path, size: int) -> dict[str, float]:
    """Run the preprocessing of ``path`` step by step and return seconds per stage."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    instance = read_instance(path, max_pixels=10**9)
    seconds["read"] = time.perf_counter() - start

    dataset = instance.dataset
    start = time.perf_counter()
    stored = decode_pixel_data(dataset)
    seconds["decode"] = time.perf_counter() - start

    start = time.perf_counter()
    image = correct_polarity(apply_voi(apply_modality_lut(stored, dataset), dataset), dataset)
    seconds["luts"] = time.perf_counter() - start

    start = time.perf_counter()
    image = orient_chest_wall_left(crop_to_breast(image))
    seconds["crop"] = time.perf_counter() - start

    start = time.perf_counter()
    quantize_to_uint8(resize_square(pad_to_square(image), size))
    seconds["resize"] = time.perf_counter() - start
    return seconds


def measure(files: list[Path], size: int, repeat: int) -> tuple[dict[str, float], float]:
    """Return the median seconds per image of each stage and of the decode-only floor."""
    per_stage: dict[str, list[float]] = defaultdict(list)
    floor: list[float] = []
    for path in files:
        time_stages(path, size)  # warm the page cache and the decoders
        for _ in range(repeat):
            floor.append(time_decode_only(path))
            for stage, seconds in time_stages(path, size).items():
                per_stage[stage].append(seconds)
    return ({stage: statistics.median(per_stage[stage]) for stage in STAGES},
            statistics.median(floor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="DICOM files; default the CBIS-DDSM samples")
    parser.add_argument("--size", type=int, default=224, help="canonical size in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per file")
    args = parser.parse_args()

    files = args.files or sample_files()
    with tempfile.TemporaryDirectory() as folder:
        encodings = {
            "original": files,
            "jpeg2000-lossless": reencode(files, Path(folder), JPEG2000Lossless, "j2k"),
            "jpegls-lossless": reencode(files, Path(folder), JPEGLSLossless, "jls"),
        }
        header = (f"{'encoding':<20}" + "".join(f"{s:>9}" for s in STAGES)
                  + f"{'total':>9}{'floor':>9}{'ratio':>8}")
        print(f"{len(files)} files, canonical size {args.size}, median seconds per image")
        print(header)
        for label, paths in encodings.items():
            stages, floor = measure(paths, args.size, args.repeat)
            total = sum(stages.values())
            print(f"{label:<20}" + "".join(f"{stages[s]:>9.3f}" for s in STAGES)
                  + f"{total:>9.3f}{floor:>9.3f}{total / floor:>8.2f}")


if __name__ == "__main__":
    main()
