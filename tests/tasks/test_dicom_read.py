"""Tests of tasks.dicom_read against real DICOM files and files written with pydicom."""

from __future__ import annotations

import datetime
import random
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DigitalMammographyXRayImageStorageForProcessing

from mammo.errors import InputRejected, ReasonCode
from tests.tasks.mammogram_files import CBIS_DDSM_FILES, make_dataset, write_dataset
from tasks.dicom_read import DicomInstance, read_instance
from tasks.preprocess import preprocess


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _write(tmp_path: Path, name: str = "image.dcm", *, bare: bool = False, **attributes) -> Path:
    return write_dataset(tmp_path / name, make_dataset(**attributes), bare=bare)


def _rejection(path: Path, **kwargs) -> InputRejected:
    with pytest.raises(InputRejected) as caught:
        read_instance(path, **kwargs)
    return caught.value


class TestReadInstance:
    def test_cbis_ddsm_sample_is_accepted(self):
        assert len(CBIS_DDSM_FILES) == 8
        for path in CBIS_DDSM_FILES:
            instance = read_instance(path)
            side = "L" if "_LEFT_" in instance.patient_id else "R"
            assert instance.laterality == side, path.name
            assert instance.view == "UNKNOWN", path.name
            assert instance.modality == "MG"
            assert instance.photometric_interpretation == "MONOCHROME2"
            assert instance.sop_instance_uid == instance.dataset.SOPInstanceUID
            assert instance.study_date == datetime.date(2016, 10, 4)
            assert instance.accession_number is None
            assert "PixelData" in instance.dataset

    def test_written_file_fields(self, tmp_path):
        path = _write(tmp_path)
        instance = read_instance(path)
        assert isinstance(instance, DicomInstance)
        assert instance.path == path
        assert instance.accession_number == "ACC1"
        assert instance.patient_id == "TEST-1"
        assert instance.study_date == datetime.date(2024, 1, 31)
        assert instance.study_instance_uid == instance.dataset.StudyInstanceUID
        assert instance.series_instance_uid == instance.dataset.SeriesInstanceUID

    def test_equality_ignores_dataset(self, tmp_path):
        path = _write(tmp_path)
        first, second = read_instance(path), read_instance(path)
        assert first == second
        assert hash(first) == hash(second)

    @pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
    def test_invalid_study_date_is_none(self, tmp_path):
        assert read_instance(_write(tmp_path, StudyDate="2024")).study_date is None

    def test_image_laterality_wins(self, tmp_path):
        path = _write(tmp_path, ImageLaterality="R", Laterality="L")
        assert read_instance(path).laterality == "R"

    def test_laterality_both_is_unknown(self, tmp_path):
        path = _write(tmp_path, ImageLaterality="B", Laterality=None)
        assert read_instance(path).laterality == "UNKNOWN"

    def test_view_from_snomed_ct_code(self, tmp_path):
        item = _code_item("399368009", "SCT", "medio-lateral oblique")
        path = _write(tmp_path, ViewCodeSequence=[item], ViewPosition="CC")
        assert read_instance(path).view == "MLO"

    def test_view_from_legacy_snomed_rt_code(self, tmp_path):
        item = _code_item("R-10242", "SRT", "cranio-caudal")
        assert read_instance(_write(tmp_path, ViewCodeSequence=[item])).view == "CC"

    @pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
    def test_view_position_fallback(self, tmp_path):
        item = _code_item("127457009", "SCT", "tissue specimen from breast")
        path = _write(tmp_path, ViewCodeSequence=[item], ViewPosition="xccl")
        assert read_instance(path).view == "XCCL"

    def test_unknown_view_position(self, tmp_path):
        assert read_instance(_write(tmp_path, ViewPosition="AP")).view == "UNKNOWN"

    def test_bare_dataset_is_accepted(self, tmp_path):
        instance = read_instance(_write(tmp_path, bare=True))
        assert instance.dataset.preamble is None
        assert instance.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"

    def test_other_modality_when_allowed(self):
        path = Path(get_testdata_file("CT_small.dcm"))
        assert read_instance(path, allowed_modalities=("CT",)).modality == "CT"

    def test_compressed_transfer_syntaxes_are_accepted(self):
        for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                     "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm"):
            path = Path(get_testdata_file(name))
            instance = read_instance(path, allowed_modalities=("MR", "OT"))
            assert instance.sop_instance_uid, name

    def test_plain_text_raises(self, tmp_path):
        path = tmp_path / "notes.dcm"
        path.write_text("Patient was seen today.\nNo DICOM here.\n")
        error = _rejection(path)
        assert error.reason == ReasonCode.NOT_DICOM
        assert error.message.startswith("notes.dcm: the file has no DICOM preamble")
        assert "(0008,0018) SOPInstanceUID" in error.message

    def test_zero_bytes_raises(self, tmp_path):
        path = tmp_path / "empty.dcm"
        path.write_bytes(b"")
        error = _rejection(path)
        assert error.reason == ReasonCode.NOT_DICOM
        assert "no data elements could be read" in error.message

    def test_bare_dataset_without_image_raises(self):
        error = _rejection(Path(get_testdata_file("ExplVR_LitEndNoMeta.dcm")))
        assert error.reason == ReasonCode.NOT_DICOM
        assert "(0028,0010) Rows" in error.message

    @pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
    def test_missing_uid_raises(self, tmp_path, keyword):
        error = _rejection(_write(tmp_path, **{keyword: None}))
        assert error.reason == ReasonCode.MISSING_UID
        assert f"{keyword} is missing or empty" in error.message

    def test_for_processing_intent_raises(self, tmp_path):
        error = _rejection(_write(tmp_path, PresentationIntentType="FOR PROCESSING"))
        assert error.reason == ReasonCode.FOR_PROCESSING
        assert "(0008,0068) PresentationIntentType is 'FOR PROCESSING'" in error.message

    def test_for_processing_sop_class_raises(self, tmp_path):
        uid = DigitalMammographyXRayImageStorageForProcessing
        error = _rejection(_write(tmp_path, SOPClassUID=uid))
        assert error.reason == ReasonCode.FOR_PROCESSING
        assert "For Processing" in error.message

    def test_ct_raises(self):
        error = _rejection(Path(get_testdata_file("CT_small.dcm")))
        assert error.reason == ReasonCode.NOT_MAMMOGRAM
        assert error.message == (
            "CT_small.dcm: (0008,0060) Modality is 'CT'; accepted values are ['MG']."
        )

    def test_tomosynthesis_raises(self, tmp_path):
        error = _rejection(_write(tmp_path, SOPClassUID="1.2.840.10008.5.1.4.1.1.13.1.3"))
        assert error.reason == ReasonCode.NOT_MAMMOGRAM
        assert "Breast Tomosynthesis Image Storage" in error.message

    def test_no_pixel_data_raises(self):
        path = Path(get_testdata_file("rtplan.dcm"))
        error = _rejection(path, allowed_modalities=("RTPLAN",))
        assert error.reason == ReasonCode.NO_PIXEL_DATA
        assert "(7FE0,0010) PixelData is missing" in error.message
        assert _rejection(path).reason == ReasonCode.NOT_MAMMOGRAM

    def test_missing_image_pixel_attribute_raises(self, tmp_path):
        error = _rejection(_write(tmp_path, BitsStored=None))
        assert error.reason == ReasonCode.CORRUPT_PIXEL_DATA
        assert "lacks (0028,0101) BitsStored" in error.message

    def test_rgb_raises(self):
        error = _rejection(Path(get_testdata_file("SC_rgb.dcm")), allowed_modalities=("OT",))
        assert error.reason == ReasonCode.NOT_GRAYSCALE
        assert "(0028,0002) SamplesPerPixel is 3" in error.message
        assert "'RGB'" in error.message

    def test_multi_frame_raises(self):
        path = Path(get_testdata_file("emri_small.dcm"))
        error = _rejection(path, allowed_modalities=("MR",))
        assert error.reason == ReasonCode.MULTI_FRAME
        assert "(0028,0008) NumberOfFrames is '10'" in error.message

    def test_oversize_raises(self, tmp_path):
        error = _rejection(_write(tmp_path), max_pixels=300 * 200 - 1)
        assert error.reason == ReasonCode.OVERSIZE
        assert "300 x 200 = 60000 pixels, more than the 59999 allowed" in error.message

    def test_unsupported_transfer_syntax_raises(self, tmp_path):
        dataset = make_dataset()
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 MP@ML
        dataset.PixelData = encapsulate([b"\x00" * 16])
        dataset["PixelData"].VR = "OB"
        path = tmp_path / "video.dcm"
        dataset.save_as(path, enforce_file_format=True)
        error = _rejection(path)
        assert error.reason == ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX
        assert "1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level)" in error.message

    @pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
    def test_truncated_encapsulated_pixel_data_raises(self, tmp_path):
        path = tmp_path / "cut.dcm"
        path.write_bytes(CBIS_DDSM_FILES[0].read_bytes()[:20_000])
        error = _rejection(path)
        assert error.reason == ReasonCode.CORRUPT_PIXEL_DATA
        assert error.message == (
            "cut.dcm: the file ends inside (7FE0,0010) PixelData; the file is truncated. "
            "Send the complete file again."
        )

    def test_rejection_keeps_file(self, tmp_path):
        path = tmp_path / "ct.dcm"
        shutil.copy(get_testdata_file("CT_small.dcm"), path)
        _rejection(path)
        assert path.exists()


class TestTruncatedHeader:
    @pytest.fixture
    def whole(self, tmp_path) -> bytes:
        return _write(tmp_path, "whole.dcm").read_bytes()

    @staticmethod
    def _pixel_data_offset(whole: bytes) -> int:
        return whole.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) in little endian

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_every_cut_is_rejected(self, tmp_path, whole):
        cut_path = tmp_path / "cut.dcm"
        reasons = set()
        for length in range(0, self._pixel_data_offset(whole) + 12):
            cut_path.write_bytes(whole[:length])
            with pytest.raises(InputRejected) as caught:
                read_instance(cut_path)
            reasons.add(caught.value.reason)
        # A cut exactly between two elements before Rows lacks an attribute instead.
        assert reasons <= {ReasonCode.INCOMPLETE, ReasonCode.NOT_DICOM,
                           ReasonCode.MISSING_UID, ReasonCode.NO_PIXEL_DATA}

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_cut_inside_uid_is_incomplete(self, tmp_path, whole):
        offset = whole.index(b"\x08\x00\x18\x00")  # (0008,0018) SOPInstanceUID
        path = tmp_path / "cut.dcm"
        path.write_bytes(whole[:offset + 8 + 10])

        error = _rejection(path)

        assert error.reason == ReasonCode.INCOMPLETE
        assert error.message.startswith(
            "cut.dcm: the file ends inside data element (0008,0018) after 10 of ")

    def test_cut_inside_file_meta_is_incomplete(self, tmp_path, whole):
        path = tmp_path / "cut.dcm"
        path.write_bytes(whole[:150])

        error = _rejection(path)

        assert error.reason == ReasonCode.INCOMPLETE
        assert "File Meta Information" in error.message

    def test_cut_before_pixel_data_is_incomplete(self, tmp_path, whole):
        path = tmp_path / "cut.dcm"
        path.write_bytes(whole[:self._pixel_data_offset(whole)])

        error = _rejection(path)

        assert error.reason == ReasonCode.INCOMPLETE
        assert "describes an image (Rows, Columns, BitsAllocated) but the file ends " \
            "before (7FE0,0010) PixelData" in error.message

    def test_cut_inside_pixel_data_tag_is_incomplete(self, tmp_path, whole):
        path = tmp_path / "cut.dcm"
        path.write_bytes(whole[:self._pixel_data_offset(whole) + 2])

        error = _rejection(path)

        assert error.reason == ReasonCode.INCOMPLETE
        assert "the file ends before (7FE0,0010) PixelData" in error.message

    def test_unknown_transfer_syntax_uid_rejected(self, tmp_path):
        dataset = make_dataset()
        dataset.file_meta.TransferSyntaxUID = "1.2.3.4.5"
        path = tmp_path / "private.dcm"
        dataset.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)

        error = _rejection(path)

        assert error.reason == ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX
        assert "(0002,0010) TransferSyntaxUID is '1.2.3.4.5'" in error.message

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_damaged_headers_only_rejected(self, tmp_path, whole):
        # Bytes changed at random in the File Meta and the header must end in InputRejected
        # or an accepted instance, never in another exception that would stop the batch.
        rng = random.Random(20261204)
        path = tmp_path / "damaged.dcm"
        pixel_data_offset = self._pixel_data_offset(whole)
        for _ in range(400):
            damaged = bytearray(whole)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(128, pixel_data_offset + 12)] = rng.randrange(256)
            path.write_bytes(damaged)
            try:
                preprocess(read_instance(path), 32)
            except InputRejected:
                pass

