"""Time the preprocessing of each mammogram stage by stage, against decoding alone.

For every input file, and for its JPEG 2000 and JPEG-LS lossless re-encodings, the script
measures (median over ``--repeat`` runs, files in the page cache):

- decode-only floor: ``dcmread`` plus ``Dataset.pixel_array``, nothing else;
- read: `tasks.dicom_read.read_instance` (header checks);
- decode: `tasks.preprocess.decode_pixel_data`;
- reduce: minimum and maximum stored value, and the block average of
  `tasks.preprocess.reduce_resolution` (0 for version 1);
- luts: modality LUT, VOI and polarity;
- crop: crop to the breast and orient the chest wall to the left;
- resize: pad to a square, resize and quantise to uint8;

and prints the ratio of the whole preprocessing to the decode-only floor, per encoding, for
both pipelines side by side: version 1 ran the LUTs, crop and resize at full resolution
(rebuilt here from the public step functions), version 2 is `tasks.preprocess.preprocess`.
The last column is the mean absolute difference between the two canonical images, in grey
levels of 255.

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

import numpy as np
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
    preprocess,
    quantize_to_uint8,
    reduce_resolution,
    reduction_factor,
    resize_square,
)
from tasks.preprocess import _box_and_mask, _chest_wall_on_right, _decode, _largest_component

STAGES = ("read", "decode", "reduce", "luts", "crop", "resize")


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


def time_stages_version1(path: Path, size: int) -> tuple[dict[str, float], np.ndarray]:
    """Run the version 1 preprocessing of ``path`` step by step at full resolution.

    Returns seconds per stage and the canonical image.
    """
    seconds: dict[str, float] = {"reduce": 0.0}
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
    canonical = quantize_to_uint8(resize_square(pad_to_square(image), size))
    seconds["resize"] = time.perf_counter() - start
    return seconds, canonical


def time_stages_version2(path: Path, size: int) -> tuple[dict[str, float], np.ndarray]:
    """Run the version 2 preprocessing of ``path`` step by step, as `preprocess` does.

    The steps call the private helpers of `tasks.preprocess` that `preprocess` calls. The
    step that averages a small breast again from the full-resolution crop is left out: it
    runs only when the breast spans fewer than 2 x size reduced pixels, which no CBIS-DDSM
    sample does. Returns seconds per stage and the canonical image of `preprocess`.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    instance = read_instance(path, max_pixels=10**9)
    seconds["read"] = time.perf_counter() - start

    dataset = instance.dataset
    start = time.perf_counter()
    stored, (low, high) = _decode(dataset, path.name)
    seconds["decode"] = time.perf_counter() - start

    start = time.perf_counter()
    reduced = reduce_resolution(stored, reduction_factor(stored, size))
    seconds["reduce"] = time.perf_counter() - start

    start = time.perf_counter()
    mapped = apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), dataset)
    image = correct_polarity(
        apply_voi(apply_modality_lut(reduced, dataset), dataset,
                  value_range=(float(mapped.min()), float(mapped.max()))), dataset)
    seconds["luts"] = time.perf_counter() - start

    start = time.perf_counter()
    component = _largest_component(image)
    if component is not None:
        (top, bottom, left, right), mask = _box_and_mask(image, *component)
        image = image[top:bottom, left:right]
        if _chest_wall_on_right(mask):
            image = image[:, ::-1]
    seconds["crop"] = time.perf_counter() - start

    start = time.perf_counter()
    quantize_to_uint8(resize_square(pad_to_square(image), size))
    seconds["resize"] = time.perf_counter() - start
    return seconds, preprocess(instance, size)


VERSIONS = {"1": time_stages_version1, "2": time_stages_version2}


def measure(files: list[Path], size: int, repeat: int
            ) -> tuple[dict[str, dict[str, float]], float, float]:
    """Return the median seconds per image of each stage per version, the decode-only
    floor, and the mean absolute difference between the versions' canonical images."""
    per_stage: dict[str, dict[str, list[float]]] = {
        version: defaultdict(list) for version in VERSIONS}
    floor: list[float] = []
    differences: list[float] = []
    for path in files:
        canonical = {}
        for version, time_stages in VERSIONS.items():
            # The untimed first run warms the page cache and the decoders.
            _, canonical[version] = time_stages(path, size)
        differences.append(float(np.abs(canonical["1"].astype(np.int16)
                                        - canonical["2"].astype(np.int16)).mean()))
        for _ in range(repeat):
            floor.append(time_decode_only(path))
            for version, time_stages in VERSIONS.items():
                for stage, seconds in time_stages(path, size)[0].items():
                    per_stage[version][stage].append(seconds)
    medians = {version: {stage: statistics.median(stages[stage]) for stage in STAGES}
               for version, stages in per_stage.items()}
    return medians, statistics.median(floor), statistics.mean(differences)


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
        header = (f"{'encoding':<20}{'version':>8}" + "".join(f"{s:>9}" for s in STAGES)
                  + f"{'total':>9}{'floor':>9}{'ratio':>8}{'diff':>7}")
        print(f"{len(files)} files, canonical size {args.size}, median seconds per image")
        print(header)
        for label, paths in encodings.items():
            per_version, floor, difference = measure(paths, args.size, args.repeat)
            for version, stages in per_version.items():
                total = sum(stages.values())
                print(f"{label:<20}{version:>8}" + "".join(f"{stages[s]:>9.3f}" for s in STAGES)
                      + f"{total:>9.3f}{floor:>9.3f}{total / floor:>8.2f}{difference:>7.2f}")


if __name__ == "__main__":
    main()
