"""Tests of the start-up pixel data self-test on pydicom's bundled test files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000MC, JPEG2000Lossless, RLELossless

from mammo.errors import ConfigurationError
from tasks.decoder_selftest import (
    REFERENCE_SAMPLE,
    SAMPLES,
    DecoderSample,
    bundled_samples_dir,
    check_decoders,
    run_decoder_selftest,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Transfer syntaxes the service promises to decode.
REQUIRED_SYNTAXES = {
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
}


def _copy_samples(target: Path) -> Path:
    target.mkdir()
    for sample in SAMPLES:
        shutil.copyfile(bundled_samples_dir() / sample.file_name, target / sample.file_name)
    return target


class TestDecoderSelftest:
    def test_every_required_syntax_has_sample(self):
        assert {str(sample.transfer_syntax) for sample in SAMPLES} == REQUIRED_SYNTAXES

    def test_installed_plugins_pass(self):
        checks = run_decoder_selftest()

        assert len(checks) == len(SAMPLES)
        for check in checks:
            assert check.passed, f"{check.transfer_syntax.name}: {check.error}"

    def test_syntax_without_decoder_fails(self):
        samples = (*SAMPLES, DecoderSample(JPEG2000MC, REFERENCE_SAMPLE, False))

        with pytest.raises(ConfigurationError) as caught:
            run_decoder_selftest(samples)

        message = str(caught.value)
        assert message.startswith("pixel data self-test failed for 1 of 13 transfer syntaxes")
        assert f"({JPEG2000MC}): pydicom has no pixel data decoder" in message

    def test_altered_lossless_sample_fails(self, tmp_path):
        folder = _copy_samples(tmp_path / "samples")
        dataset = pydicom.dcmread(folder / "MR_small_RLE.dcm")
        dataset.PixelData = _altered_rle_pixel_data(dataset)
        dataset.save_as(folder / "MR_small_RLE.dcm")

        checks = check_decoders(samples_dir=folder)

        failed = [check for check in checks if not check.passed]
        assert [check.file_name for check in failed] == ["MR_small_RLE.dcm"]
        assert "decoded to other values than MR_small.dcm" in failed[0].error

    def test_missing_sample_fails(self, tmp_path):
        folder = _copy_samples(tmp_path / "samples")
        (folder / "JPEG2000.dcm").unlink()

        with pytest.raises(ConfigurationError, match=r"JPEG 2000 Image Compression "
                           r"\(1\.2\.840\.10008\.1\.2\.4\.91\): cannot read the sample"):
            run_decoder_selftest(samples_dir=folder)

    def test_removed_plugin_named(self):
        # A fresh interpreter, so removing pydicom's pylibjpeg plugin stays out of this one.
        script = textwrap.dedent(f"""
            from pydicom.pixels import get_decoder
            from tasks.decoder_selftest import run_decoder_selftest
            get_decoder({str(JPEG2000Lossless)!r}).remove_plugin("pylibjpeg")
            run_decoder_selftest()
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, cwd=PROJECT_ROOT, timeout=120)

        assert result.returncode == 1
        assert "ConfigurationError: pixel data self-test failed for 1 of 12" in result.stderr
        assert ("JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90): no "
                "installed plugin decodes it; missing: gdcm") in result.stderr


def _altered_rle_pixel_data(dataset: pydicom.Dataset) -> bytes:
    """Return the RLE Pixel Data of ``dataset`` re-encoded from values changed by one."""
    values = pixel_array(dataset).copy()
    values[0, 0] += 1
    dataset.compress(RLELossless, values, encoding_plugin="pydicom")
    return dataset.PixelData
