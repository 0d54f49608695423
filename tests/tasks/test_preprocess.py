"""Tests of tasks.preprocess on the CBIS-DDSM sample, pydicom's test files and written files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from mammo.errors import InputRejected, ReasonCode
from tests.tasks.mammogram_files import (
    BITS_STORED,
    CBIS_DDSM_FILES,
    COLUMNS,
    LABEL_BOX,
    ROWS,
    make_breast_pixels,
    make_dataset,
    write_dataset,
)
from tasks.dicom_read import read_instance
from tasks.preprocess import (
    PREPROCESSING_VERSION,
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

SIZE = 224
MAX_STORED = 2**BITS_STORED - 1


def _read_test_file(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _canonical(tmp_path: Path, name: str, pixels: np.ndarray, **attributes) -> np.ndarray:
    path = write_dataset(tmp_path / name, make_dataset(pixels, **attributes))
    return preprocess(read_instance(path), SIZE)


def _synthetic_unit_image() -> np.ndarray:
    return make_breast_pixels().astype(np.float32) / MAX_STORED


class TestPreprocess:
    @pytest.fixture(scope="class")
    @classmethod
    def cbis_images(cls) -> list[np.ndarray]:
        return [preprocess(read_instance(path), SIZE) for path in CBIS_DDSM_FILES]

    def test_version_is_string(self):
        assert isinstance(PREPROCESSING_VERSION, str)
        assert PREPROCESSING_VERSION

    def test_cbis_ddsm_shape_and_dtype(self, cbis_images):
        for path, image in zip(CBIS_DDSM_FILES, cbis_images):
            assert image.shape == (SIZE, SIZE), path.name
            assert image.dtype == np.uint8, path.name
            assert image.max() > 150, path.name

    def test_cbis_ddsm_chest_wall_left(self, cbis_images):
        edge = SIZE // 10
        for path, image in zip(CBIS_DDSM_FILES, cbis_images):
            left, right = image[:, :edge].mean(), image[:, -edge:].mean()
            assert left > right + 20, f"{path.name}: left {left:.1f}, right {right:.1f}"

    def test_cbis_ddsm_breast_fills_height(self, cbis_images):
        for path, image in zip(CBIS_DDSM_FILES, cbis_images):
            tissue_rows = np.flatnonzero((image > 40).any(axis=1))
            assert tissue_rows[-1] - tissue_rows[0] >= 0.9 * SIZE, path.name
            assert (image[:, 0] > 40).mean() > 0.5, path.name

    def test_same_input_same_output(self):
        instance = read_instance(CBIS_DDSM_FILES[0])
        assert np.array_equal(preprocess(instance, SIZE), preprocess(instance, SIZE))

    def test_accepts_dataset(self):
        dataset = pydicom.dcmread(CBIS_DDSM_FILES[1])
        expected = preprocess(read_instance(CBIS_DDSM_FILES[1]), SIZE)
        assert np.array_equal(preprocess(dataset, SIZE), expected)

    def test_monochrome1_and_inverse_match(self, tmp_path):
        pixels = make_breast_pixels()
        inverted = (MAX_STORED - pixels).astype(np.uint16)
        reference = _canonical(tmp_path, "m2.dcm", pixels)
        variants = {
            "MONOCHROME2 IDENTITY": _canonical(
                tmp_path, "m2i.dcm", pixels, PresentationLUTShape="IDENTITY"),
            "MONOCHROME1": _canonical(
                tmp_path, "m1.dcm", inverted, PhotometricInterpretation="MONOCHROME1"),
            "MONOCHROME1 INVERSE": _canonical(
                tmp_path, "m1i.dcm", inverted, PhotometricInterpretation="MONOCHROME1",
                PresentationLUTShape="INVERSE"),
        }
        for name, image in variants.items():
            assert np.array_equal(image, reference), name

    def test_contradicting_shape_follows_interpretation(self, tmp_path):
        # PS3.3 C.7.6.1 pairs MONOCHROME1 with INVERSE and MONOCHROME2 with IDENTITY. A file
        # that breaks the pairing is decoded by its PhotometricInterpretation alone.
        pixels = make_breast_pixels()
        inverted = (MAX_STORED - pixels).astype(np.uint16)
        reference = _canonical(tmp_path, "m2.dcm", pixels)
        variants = {
            "MONOCHROME2 INVERSE": _canonical(
                tmp_path, "m2inv.dcm", pixels, PresentationLUTShape="INVERSE"),
            "MONOCHROME1 IDENTITY": _canonical(
                tmp_path, "m1id.dcm", inverted, PhotometricInterpretation="MONOCHROME1",
                PresentationLUTShape="IDENTITY"),
        }
        for name, image in variants.items():
            assert np.array_equal(image, reference), name

    def test_mirrored_image_matches(self, tmp_path):
        pixels = make_breast_pixels()
        reference = _canonical(tmp_path, "left.dcm", pixels)
        mirrored = _canonical(tmp_path, "right.dcm", np.ascontiguousarray(pixels[:, ::-1]))
        assert np.array_equal(mirrored, reference)

    def test_compressed_variants_match(self):
        sizes = {}
        for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                     "MR_small_jpeg_ls_lossless.dcm"):
            sizes[name] = preprocess(_read_test_file(name), 32)
        reference = sizes.pop("MR_small.dcm")
        for name, image in sizes.items():
            assert np.array_equal(image, reference), name

    def test_blank_image_raises(self, tmp_path):
        pixels = np.full((ROWS, COLUMNS), 100, dtype=np.uint16)
        path = write_dataset(tmp_path / "blank.dcm", make_dataset(pixels))
        with pytest.raises(InputRejected) as caught:
            preprocess(read_instance(path), SIZE)
        assert caught.value.reason == ReasonCode.BLANK_IMAGE
        assert caught.value.message.startswith("blank.dcm: (7FE0,0010) PixelData has the same")

    def test_size_zero_raises(self):
        with pytest.raises(ValueError, match="size must be a positive number of pixels, got 0"):
            preprocess(read_instance(CBIS_DDSM_FILES[0]), 0)


def _full_resolution_canonical(path: Path, size: int) -> np.ndarray:
    """Return the version 1 canonical image: every LUT step at full resolution."""
    dataset = read_instance(path).dataset
    stored = decode_pixel_data(dataset)
    image = correct_polarity(apply_voi(apply_modality_lut(stored, dataset), dataset), dataset)
    image = orient_chest_wall_left(crop_to_breast(image))
    return quantize_to_uint8(resize_square(pad_to_square(image), size))


def _mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


class TestReducedResolution:
    def test_cbis_ddsm_close_to_full_resolution(self):
        for path in CBIS_DDSM_FILES:
            image = preprocess(read_instance(path), SIZE)
            reference = _full_resolution_canonical(path, SIZE)
            assert _mean_difference(image, reference) < 1.0, path.name
            assert np.abs(image.astype(np.int16) - reference).max() <= 64, path.name

    def test_small_breast_keeps_detail(self, tmp_path):
        # The breast fills a 300 x 200 corner of a 2400 x 1600 image. The first reduced copy
        # (blocks of 3) has only 100 x 67 pixels across it, fewer than 2 x 224, so the crop
        # is taken again from the full-resolution values.
        pixels = np.zeros((2400, 1600), dtype=np.uint16)
        pixels[:ROWS, :COLUMNS] = make_breast_pixels()
        path = write_dataset(tmp_path / "small.dcm", make_dataset(pixels))

        image = preprocess(read_instance(path), SIZE)

        # The box is widened by one mask pixel of the reduced copy, a few rows more than
        # at full resolution, so the framing differs slightly.
        reference = _full_resolution_canonical(path, SIZE)
        assert _mean_difference(image, reference) < 2.0
        tissue_rows = np.flatnonzero((image > 40).any(axis=1))
        assert tissue_rows[-1] - tissue_rows[0] > SIZE * 0.9

    def test_factor_keeps_two_pixels_per_output_pixel(self):
        stored = np.zeros((4432, 2864), dtype=np.uint16)
        assert reduction_factor(stored, 224) == 6
        assert reduction_factor(stored, 600) == 2
        assert reduction_factor(stored, 2048) == 1

    def test_factor_one_for_32_bit_values(self):
        assert reduction_factor(np.zeros((4000, 3000), dtype=np.uint32), 224) == 1

    @pytest.mark.parametrize("factor", [2, 3, 4, 6])
    def test_block_average(self, factor):
        blocks = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
        stored = np.kron(blocks, np.ones((factor, factor), dtype=np.uint16))
        stored = np.pad(stored, ((0, factor - 1), (0, factor - 1)), constant_values=4000)

        reduced = reduce_resolution(stored, factor)

        assert reduced.dtype == np.uint16
        assert reduced.tolist() == blocks.tolist()

    def test_factor_one_returns_input(self):
        stored = np.ones((5, 5), dtype=np.uint16)
        assert reduce_resolution(stored, 1) is stored


class TestDecodePixelData:
    def test_rle_jpeg2000_jpegls_decode_equal(self):
        reference = decode_pixel_data(_read_test_file("MR_small.dcm"))
        for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):
            assert np.array_equal(decode_pixel_data(_read_test_file(name)), reference), name

    def test_cbis_ddsm_shape(self):
        dataset = pydicom.dcmread(CBIS_DDSM_FILES[0])
        stored = decode_pixel_data(dataset)
        assert stored.shape == (dataset.Rows, dataset.Columns)
        assert stored.dtype == np.uint16

    def test_truncated_native_raises(self):
        dataset = _read_test_file("MR_truncated.dcm")
        with pytest.raises(InputRejected) as caught:
            decode_pixel_data(dataset, source="MR_truncated.dcm")
        assert caught.value.reason == ReasonCode.CORRUPT_PIXEL_DATA
        assert caught.value.message == (
            "MR_truncated.dcm: (7FE0,0010) PixelData has 8130 bytes, but Rows x Columns x "
            "Bits Allocated / 8 needs 8192; the file is truncated. Send the complete file "
            "again."
        )

    def test_values_above_bits_stored_raises(self):
        dataset = _read_test_file("MR_small_jp2klossless.dcm")
        dataset.BitsStored, dataset.HighBit = 8, 7
        with pytest.raises(InputRejected) as caught:
            decode_pixel_data(dataset, source="mr.dcm")
        assert caught.value.reason == ReasonCode.CORRUPT_PIXEL_DATA
        assert "(0028,0101) BitsStored 8 with (0028,0103) PixelRepresentation 1 allows " \
            "-128..127" in caught.value.message

    def test_undecodable_raises(self):
        dataset = _read_test_file("MR_small_jp2klossless.dcm")
        dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])
        with pytest.raises(InputRejected) as caught:
            decode_pixel_data(dataset, source="mr.dcm")
        assert caught.value.reason == ReasonCode.CORRUPT_PIXEL_DATA
        assert caught.value.message.startswith(
            "mr.dcm: decoding (7FE0,0010) PixelData with transfer syntax JPEG 2000 Image "
            "Compression (Lossless Only) failed:"
        )

    def test_multi_frame_raises(self):
        dataset = _read_test_file("emri_small.dcm")
        with pytest.raises(InputRejected) as caught:
            decode_pixel_data(dataset, source="emri.dcm")
        assert caught.value.reason == ReasonCode.MULTI_FRAME
        assert "decodes to shape (10, 64, 64)" in caught.value.message


class TestApplyModalityLut:
    def test_rescale_gives_float32(self):
        dataset = make_dataset(RescaleSlope=2, RescaleIntercept=-10)
        values = apply_modality_lut(np.array([[0, 5]], dtype=np.uint16), dataset)
        assert values.dtype == np.float32
        assert values.tolist() == [[-10.0, 0.0]]

    def test_without_module_returns_values(self):
        values = apply_modality_lut(np.array([[3, 4]], dtype=np.uint16), make_dataset())
        assert values.dtype == np.float32
        assert values.tolist() == [[3.0, 4.0]]

    def test_lut_sequence_matches_pydicom(self):
        dataset = _read_test_file("mlut_18.dcm")
        stored = decode_pixel_data(dataset)
        expected = pydicom.pixels.apply_modality_lut(stored, dataset)
        assert np.array_equal(apply_modality_lut(stored, dataset), expected)


class TestApplyVoi:
    def test_window_matches_pydicom(self):
        dataset = _read_test_file("CT_small.dcm")
        dataset.WindowCenter, dataset.WindowWidth = 40, 400
        values = apply_modality_lut(decode_pixel_data(dataset), dataset)
        image = apply_voi(values, dataset)
        windowed = pydicom.pixels.apply_windowing(values.astype(np.float64), dataset)
        low, high = windowed.min(), windowed.max()
        assert image.dtype == np.float32
        assert image.min() == 0.0
        assert image.max() == 1.0
        assert np.allclose(image, (windowed - low) / (high - low), atol=1e-6)

    def test_sigmoid_window(self):
        dataset = make_dataset(WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID")
        image = apply_voi(np.array([[2000.0]], dtype=np.float32), dataset)
        assert image[0, 0] == pytest.approx(0.5, abs=1e-3)

    def test_voi_lut_sequence(self, caplog):
        dataset = _read_test_file("vlut_04.dcm")
        values = apply_modality_lut(decode_pixel_data(dataset), dataset)
        with caplog.at_level(logging.DEBUG, logger="tasks.preprocess"):
            image = apply_voi(values, dataset)
        assert "VOI LUT Sequence" in caplog.text
        assert 0.0 <= image.min() < image.max() <= 1.0

    @pytest.mark.parametrize("width", [0, 0.5, None])
    def test_invalid_or_missing_window_uses_range(self, width, caplog):
        dataset = make_dataset(WindowCenter=1000 if width is not None else None,
                               WindowWidth=width)
        values = np.array([[100, 600, 1100]], dtype=np.float32)
        with caplog.at_level(logging.DEBUG, logger="tasks.preprocess"):
            image = apply_voi(values, dataset)
        assert image.tolist() == [[0.0, 0.5, 1.0]]
        assert "minimum to maximum" in caplog.text


class TestCorrectPolarity:
    def test_monochrome2_unchanged(self):
        image = np.array([[0.0, 0.25]], dtype=np.float32)
        assert correct_polarity(image, make_dataset()) is image

    def test_monochrome1_inverted(self):
        image = np.array([[0.0, 0.25]], dtype=np.float32)
        dataset = make_dataset(PhotometricInterpretation="MONOCHROME1",
                               PresentationLUTShape="INVERSE")
        result = correct_polarity(image, dataset)
        assert result.dtype == np.float32
        assert result.tolist() == [[1.0, 0.75]]

    def test_monochrome1_chest_radiograph(self):
        # RG1_UNCI.dcm (pydicom-data) is a MONOCHROME1 CR chest radiograph: once corrected,
        # the spine must be brighter than the air-filled right lung beside it.
        dataset = _read_test_file("RG1_UNCI.dcm")
        values = apply_modality_lut(decode_pixel_data(dataset), dataset)
        image = correct_polarity(apply_voi(values, dataset), dataset)
        rows, columns = image.shape
        band = slice(int(rows * 0.3), int(rows * 0.5))
        lung = image[band, int(columns * 0.2):int(columns * 0.35)].mean()
        spine = image[band, int(columns * 0.47):int(columns * 0.53)].mean()
        assert spine > lung + 0.1

    def test_contradicting_shape_warns(self, caplog):
        image = np.array([[0.0, 0.25]], dtype=np.float32)
        dataset = make_dataset(PresentationLUTShape="INVERSE")
        with caplog.at_level(logging.WARNING, logger="tasks.preprocess"):
            result = correct_polarity(image, dataset)
        assert result.tolist() == [[0.0, 0.25]]
        assert "PresentationLUTShape INVERSE with (0028,0004) PhotometricInterpretation " \
            "MONOCHROME2, which requires IDENTITY" in caplog.text


class TestCropToBreast:
    def test_label_outside_box(self):
        image = _synthetic_unit_image()
        cropped = crop_to_breast(image)
        _, _, label_left, _ = LABEL_BOX
        assert cropped.shape[1] < label_left
        assert cropped.shape[0] >= 0.85 * ROWS
        assert cropped.max() < 4000 / MAX_STORED

    def test_empty_image_unchanged(self):
        image = np.zeros((50, 40), dtype=np.float32)
        assert crop_to_breast(image) is image


class TestOrientChestWallLeft:
    def test_left_unchanged(self):
        image = crop_to_breast(_synthetic_unit_image())
        assert orient_chest_wall_left(image) is image

    def test_right_flipped(self):
        image = crop_to_breast(_synthetic_unit_image())
        mirrored = np.ascontiguousarray(image[:, ::-1])
        assert np.array_equal(orient_chest_wall_left(mirrored), image)


class TestPadToSquare:
    def test_tall_padded_right(self):
        image = np.ones((4, 2), dtype=np.float32)
        padded = pad_to_square(image)
        assert padded.shape == (4, 4)
        assert padded[:, :2].min() == 1.0
        assert padded[:, 2:].max() == 0.0

    def test_wide_padded_top_and_bottom(self):
        padded = pad_to_square(np.ones((2, 5), dtype=np.float32))
        assert padded.shape == (5, 5)
        assert padded[:, 0].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


class TestResizeSquare:
    def test_area_average(self):
        image = np.zeros((4, 4), dtype=np.float32)
        image[:2, :2] = 1.0
        assert resize_square(image, 2).tolist() == [[1.0, 0.0], [0.0, 0.0]]

    def test_not_square_raises(self):
        with pytest.raises(ValueError, match=r"image must be square, got shape \(4, 2\)"):
            resize_square(np.zeros((4, 2), dtype=np.float32), 2)


class TestQuantizeToUint8:
    def test_rounds_and_clips(self):
        image = np.array([[-0.1, 0.0, 0.5, 1.0, 1.2]], dtype=np.float32)
        assert quantize_to_uint8(image).tolist() == [[0, 0, 128, 255, 255]]
