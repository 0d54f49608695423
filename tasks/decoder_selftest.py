"""Start-up self-test: decode one sample image per supported transfer syntax.

A missing or broken pixel data plugin (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls)
otherwise shows up only when a file in that syntax arrives, as a quarantined mammogram. The
self-test decodes a small sample of every syntax the service promises to read, before any
file is claimed, and raises `ConfigurationError` naming the syntax, its UID and the plugins
pydicom reports missing.

The samples are test files bundled inside the pydicom wheel (``pydicom/data/test_files``),
which is a runtime dependency. They are opened by path, never through
`pydicom.data.get_testdata_file`, because that function may download missing files. Lossless
samples must decode to exactly the stored values of ``MR_small.dcm``; lossy samples must
decode to the shape their header states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pydicom.pixels
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from mammo.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Sample whose stored values every lossless sample must reproduce.
REFERENCE_SAMPLE = "MR_small.dcm"


@dataclass(frozen=True)
class DecoderSample:
    """A bundled file in one transfer syntax, and whether it must equal the reference."""

    transfer_syntax: UID
    file_name: str
    lossless_copy_of_reference: bool


#: One sample per supported transfer syntax. JPEG Lossless Process 14 (1.2.840.10008.1.2.4.57)
#: uses the same decoder plugins as its Selection Value 1 form tested here. The only bundled
#: JPEG Baseline and JPEG Lossless samples are RGB, so they test the plugin, not grayscale.
SAMPLES: tuple[DecoderSample, ...] = (
    DecoderSample(ExplicitVRLittleEndian, "MR_small.dcm", True),
    DecoderSample(ImplicitVRLittleEndian, "MR_small_implicit.dcm", True),
    DecoderSample(ExplicitVRBigEndian, "MR_small_bigendian.dcm", True),
    DecoderSample(DeflatedExplicitVRLittleEndian, "image_dfl.dcm", False),
    DecoderSample(RLELossless, "MR_small_RLE.dcm", True),
    DecoderSample(JPEGBaseline8Bit, "SC_jpeg_no_color_transform.dcm", False),
    DecoderSample(JPEGExtended12Bit, "JPGExtended.dcm", False),
    DecoderSample(JPEGLosslessSV1, "SC_rgb_jpeg_gdcm.dcm", False),
    DecoderSample(JPEGLSLossless, "MR_small_jpeg_ls_lossless.dcm", True),
    DecoderSample(JPEGLSNearLossless, "JPEGLSNearLossless_16.dcm", False),
    DecoderSample(JPEG2000Lossless, "MR_small_jp2klossless.dcm", True),
    DecoderSample(JPEG2000, "JPEG2000.dcm", False),
)


@dataclass(frozen=True)
class DecoderCheck:
    """Result of decoding one sample: ``error`` is None when the sample decoded correctly."""

    transfer_syntax: UID
    file_name: str
    error: str | None

    @property
    def passed(self) -> bool:
        return self.error is None


def bundled_samples_dir() -> Path:
    """Return the folder of test files inside the installed pydicom package."""
    return Path(pydicom.data.__file__).resolve().parent / "test_files"


def check_decoders(samples: tuple[DecoderSample, ...] = SAMPLES,
                   samples_dir: Path | None = None) -> list[DecoderCheck]:
    """Decode every sample and return one `DecoderCheck` per sample, in order.

    A sample that cannot be read or decoded is reported in its check, not raised, and
    `run_decoder_selftest` turns such checks into an error.
    """
    folder = samples_dir or bundled_samples_dir()
    reference = _read_reference(folder)
    return [_check_sample(sample, folder, reference) for sample in samples]


def run_decoder_selftest(samples: tuple[DecoderSample, ...] = SAMPLES,
                         samples_dir: Path | None = None) -> list[DecoderCheck]:
    """Decode every sample and raise unless all of them decoded correctly.

    Returns the checks, all passed, so callers can log or print them.

    Raises
    ------
    ConfigurationError
        Naming each failing transfer syntax with its UID and the reason, which includes
        the plugins pydicom reports missing for it.
    """
    checks = check_decoders(samples, samples_dir)
    failures = [check for check in checks if not check.passed]
    if failures:
        details = "; ".join(
            f"{check.transfer_syntax.name} ({check.transfer_syntax}): {check.error}"
            for check in failures)
        raise ConfigurationError(
            f"pixel data self-test failed for {len(failures)} of {len(checks)} transfer "
            f"syntaxes: {details}. Install the missing plugins (pip install pylibjpeg "
            "pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls) or repair the environment "
            "before processing files.")
    logger.info("Pixel data self-test passed for %d transfer syntaxes", len(checks))
    return checks


def _read_reference(folder: Path) -> np.ndarray | None:
    try:
        return pydicom.pixels.pixel_array(pydicom.dcmread(folder / REFERENCE_SAMPLE))
    except Exception:  # reported for the reference's own sample by _check_sample
        logger.debug("Reference sample %s cannot be decoded", REFERENCE_SAMPLE, exc_info=True)
        return None


def _check_sample(sample: DecoderSample, folder: Path,
                  reference: np.ndarray | None) -> DecoderCheck:
    def failed(error: str) -> DecoderCheck:
        logger.error("Pixel data self-test failed for %s (%s) with %s: %s",
                     sample.transfer_syntax.name, sample.transfer_syntax, sample.file_name,
                     error)
        return DecoderCheck(sample.transfer_syntax, sample.file_name, error)

    try:
        decoder = get_decoder(sample.transfer_syntax)
    except NotImplementedError:
        return failed("pydicom has no pixel data decoder for this transfer syntax")
    if not decoder.is_available:
        return failed("no installed plugin decodes it; missing: "
                      + "; ".join(decoder.missing_dependencies))

    path = folder / sample.file_name
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        return failed(f"cannot read the sample {path}: {error}")
    found_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if found_syntax != sample.transfer_syntax:
        return failed(f"the sample {sample.file_name} has transfer syntax {found_syntax}")

    try:
        decoded = pydicom.pixels.pixel_array(dataset)
    except Exception as error:  # every plugin raises its own types; all mean failure
        plugins = ", ".join(decoder.available_plugins)
        return failed(f"decoding {sample.file_name} with plugins {plugins} failed: {error}")

    expected_shape = _expected_shape(dataset)
    if decoded.shape != expected_shape:
        return failed(f"{sample.file_name} decoded to shape {decoded.shape}, expected "
                      f"{expected_shape}")
    if sample.lossless_copy_of_reference:
        if reference is None:
            return failed(f"the reference sample {REFERENCE_SAMPLE} cannot be decoded")
        if not np.array_equal(decoded, reference):
            return failed(f"{sample.file_name} decoded to other values than "
                          f"{REFERENCE_SAMPLE}, although the syntax is lossless")

    logger.debug("Pixel data self-test passed for %s with %s", sample.transfer_syntax.name,
                 sample.file_name)
    return DecoderCheck(sample.transfer_syntax, sample.file_name, None)


def _expected_shape(dataset: pydicom.Dataset) -> tuple[int, ...]:
    shape: tuple[int, ...] = (int(dataset.Rows), int(dataset.Columns))
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        shape = (frames, *shape)
    if int(dataset.SamplesPerPixel) > 1:
        shape = (*shape, int(dataset.SamplesPerPixel))
    return shape
