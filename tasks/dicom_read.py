"""Read one DICOM instance and reject, before decoding, what the models cannot score.

`read_instance` reads the header without the pixel data, checks it, and only then reads the
whole file. Every rejection raises `InputRejected` with a reason code and a message that
names the file, the attribute (tag and keyword), the value found and what is accepted.
Pixel data are never decoded here; `tasks.preprocess` does that.

Checks, in this order (the first failure wins):

0. ``incomplete``: a file with the DICOM preamble and ``DICM`` prefix ends inside a data
   element before Pixel Data. pydicom keeps the cut element with a shortened value (a
   SOPInstanceUID of ``1.2.826.`` for example) and raises nothing, or fails with
   `struct.error` inside an element header. Without this check, a cut transfer would get
   the reason of whichever later check its missing attributes fail.
1. ``not_dicom``: no data elements could be parsed, a header element is malformed (an
   unknown VR, for example, which pydicom raises only when the element is first used, so
   every element is converted up front), or a file without the DICOM preamble and ``DICM``
   prefix lacks SOPInstanceUID or the Image Pixel attributes. pydicom's ``force=True``
   turns any byte string into some data set, so the parse alone proves nothing.
   ``unsupported_transfer_syntax``: the TransferSyntaxUID is not one pydicom knows.
2. ``missing_uid``: SOPInstanceUID, StudyInstanceUID or SeriesInstanceUID is missing or
   empty. Results, the archive layout and deduplication are keyed on all three.
3. ``for_processing``: PresentationIntentType is FOR PROCESSING, or the SOP Class is one of
   the "For Processing" X-ray classes.
4. ``not_mammogram``: Modality is not in ``allowed_modalities``, or the SOP Class is Breast
   Tomosynthesis Image Storage.
5. ``no_pixel_data``: there is no (7FE0,0010) Pixel Data element, or ``incomplete`` when
   the header has Rows, Columns or Bits Allocated and so describes an image whose file
   ends before its Pixel Data.
6. ``corrupt_pixel_data``: a type 1 Image Pixel attribute (Rows, Bits Stored, ...) is
   missing or not an integer.
7. ``not_grayscale``: SamplesPerPixel is not 1 or PhotometricInterpretation is not
   MONOCHROME1 or MONOCHROME2.
8. ``multi_frame``: NumberOfFrames is greater than 1.
9. ``oversize``: Rows x Columns is greater than ``max_pixels``.
10. ``unsupported_transfer_syntax``: no installed pixel data handler decodes the transfer
    syntax.
11. ``corrupt_pixel_data``: the file ends inside encapsulated Pixel Data, so the full read
    loses the data set, or the Pixel Data element itself is malformed.

Laterality and view are reported as found, never guessed: a value outside the known set
becomes ``"UNKNOWN"``.
"""

from __future__ import annotations

import datetime
import io
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    BreastProjectionXRayImageStorageForProcessing,
    BreastTomosynthesisImageStorage,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mammo.errors import InputRejected, ReasonCode

logger = logging.getLogger(__name__)

Laterality = Literal["L", "R", "UNKNOWN"]

UNKNOWN = "UNKNOWN"

#: Identifiers that results, the archive and deduplication are keyed on.
REQUIRED_UIDS: tuple[str, ...] = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Type 1 attributes of the Image Pixel Module (PS3.3 C.7.6.3) that decoding needs.
IMAGE_PIXEL_KEYWORDS: tuple[str, ...] = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)

#: Attributes a file without the DICOM preamble must have to count as a DICOM image.
BARE_DATASET_KEYWORDS: tuple[str, ...] = (
    "SOPInstanceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
)

GRAYSCALE_INTERPRETATIONS: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")

#: X-ray SOP Classes whose pixels are raw detector data, not meant for display or reading.
FOR_PROCESSING_SOP_CLASSES: frozenset[str] = frozenset(
    {
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForProcessing,
        BreastProjectionXRayImageStorageForProcessing,
    }
)

#: Codes of CID 4014 "View for Mammography" and their ACR abbreviations. pydicom's `Code`
#: compares legacy SNOMED RT (scheme SRT, e.g. R-10242) codes equal to their SNOMED CT
#: (SCT) equivalents, so both code sets match.
VIEW_BY_CODE: tuple[tuple[Code, str], ...] = (
    (codes.SCT.CranioCaudal, "CC"),
    (codes.SCT.MedioLateralObliqueProjection, "MLO"),
    (codes.SCT.MedioLateralProjection, "ML"),
    (codes.SCT.LateroMedial, "LM"),
    (codes.SCT.LateroMedialOblique, "LMO"),
    (codes.SCT.CaudoCranial, "FB"),
    (codes.SCT.CranioCaudalExaggeratedLaterally, "XCCL"),
    (codes.SCT.CranioCaudalExaggeratedMedially, "XCCM"),
    (codes.SCT.SuperolateralToInferomedialOblique, "SIO"),
    (codes.SCT.InferomedialToSuperolateralOblique, "ISO"),
)

#: ViewPosition (0018,5101) values accepted as a mammography view when ViewCodeSequence
#: has no known code. The standard defines ViewPosition terms for general radiography
#: only, but mammography devices write these abbreviations into it.
KNOWN_VIEWS: frozenset[str] = frozenset(view for _, view in VIEW_BY_CODE)

# Tag (7FE0,0010) as its first four bytes in each byte order, for the header-only peek.
_PIXEL_DATA_TAG_BYTES = {True: b"\xe0\x7f\x10\x00", False: b"\x7f\xe0\x00\x10"}


@dataclass(frozen=True)
class DicomInstance:
    """One accepted DICOM image, with the identifiers that results are stored under.

    `dataset` contains the full data set with the Pixel Data still encoded. It is left out of
    comparisons, hashing and ``repr``.
    """

    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    #: AccessionNumber, None when missing or empty.
    accession_number: str | None
    #: PatientID exactly as sent, None when missing or empty. Never log it.
    patient_id: str | None
    #: StudyDate, None when missing or not a valid DA value.
    study_date: datetime.date | None
    laterality: Laterality
    #: ACR view abbreviation such as "CC" or "MLO", or "UNKNOWN".
    view: str
    modality: str
    photometric_interpretation: str
    dataset: Dataset = field(compare=False, repr=False)


def read_instance(
    path: Path,
    *,
    allowed_modalities: tuple[str, ...] = ("MG",),
    max_pixels: int = 80_000_000,
    data: bytes | None = None,
) -> DicomInstance:
    """Read the DICOM file at `path` and check that it is an image the models can score.

    Parameters
    ----------
    path
        The file to read. It must exist; a missing file raises `FileNotFoundError`.
    allowed_modalities
        Modality (0008,0060) values accepted for scoring.
    max_pixels
        Largest Rows x Columns accepted.
    data
        The file's bytes when the caller has read them already (to hash them, say); the
        file is then not opened again. `path` still names the file in messages.

    Returns
    -------
    DicomInstance
        The identifiers, laterality and view, and the full data set with its Pixel Data
        still encoded.

    Raises
    ------
    InputRejected
        For every check listed in this module's docstring, with its reason code.
    """
    path = Path(path)
    header, has_pixel_data = _read_header(path, data)
    _check_header(header, path, allowed_modalities=allowed_modalities)
    if not has_pixel_data:
        declared = [keyword for keyword in ("Rows", "Columns", "BitsAllocated")
                    if keyword in header]
        if declared:
            # NOTE: a file cut exactly between two elements before these attributes looks
            # like a file sent without them, and gets the reason of the first one it lacks.
            raise _rejection(
                ReasonCode.INCOMPLETE,
                path,
                f"the header describes an image ({', '.join(declared)}) but the file ends "
                f"before {_element('PixelData')}; the file is truncated. Send the complete "
                "file again.",
            )
        raise _rejection(
            ReasonCode.NO_PIXEL_DATA,
            path,
            f"{_element('PixelData')} is missing, so there is no image to score "
            f"(SOP Class {_sop_class_name(header)}).",
        )
    _check_image_pixel_module(header, path)
    _check_frames_and_size(header, path, max_pixels=max_pixels)
    _check_transfer_syntax(header, path)

    dataset = _read_full(path, header, data)
    instance = _build_instance(path, dataset)
    logger.debug(
        "Read SOPInstanceUID %s: laterality %s, view %s",
        instance.sop_instance_uid,
        instance.laterality,
        instance.view,
    )
    return instance


# --- Reading ------------------------------------------------------------------------------


def _open(path: Path, data: bytes | None) -> BinaryIO:
    return path.open("rb") if data is None else io.BytesIO(data)


def _read_header(path: Path, data: bytes | None) -> tuple[Dataset, bool]:
    """Read the data set up to Pixel Data and peek whether a Pixel Data element follows."""
    with _open(path, data) as file:
        has_prefix = _has_dicm_prefix(file)
        try:
            header = pydicom.dcmread(file, force=True, stop_before_pixels=True)
        except (EOFError, struct.error, BytesLengthException) as exc:
            if has_prefix:
                raise _rejection(
                    ReasonCode.INCOMPLETE, path,
                    f"the file ends inside a data element header ({exc}); the file is "
                    "truncated. Send the complete file again.") from exc
            raise _rejection(
                ReasonCode.NOT_DICOM, path, f"the file cannot be parsed as DICOM ({exc})."
            ) from exc
        except (InvalidDicomError, OSError, ValueError, KeyError, TypeError,
                IndexError, NotImplementedError) as exc:
            # With force=True pydicom parses arbitrary bytes as data elements and fails in
            # many ways on files that are not DICOM.
            raise _rejection(
                ReasonCode.NOT_DICOM, path, f"the file cannot be parsed as DICOM ({exc})."
            ) from exc
        # stop_before_pixels leaves the file positioned at the tag that stopped the read.
        next_tag = file.read(4)

    if has_prefix:
        _check_header_complete(header, path)
    _convert_elements(header, path)
    _check_is_dicom(header, path)

    transfer_syntax = _transfer_syntax(header)
    if not transfer_syntax.is_transfer_syntax:
        raise _rejection(
            ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX, path,
            f"{_element('TransferSyntaxUID')} is {str(transfer_syntax)!r}, which is not a "
            "transfer syntax that pydicom knows, so the data set cannot be decoded. Ask the "
            "sender for a standard transfer syntax.")
    if transfer_syntax.is_deflated:
        # The bytes on disk are a zlib stream, so only a full read shows the elements.
        with _open(path, data) as file:
            return header, "PixelData" in pydicom.dcmread(file, force=True)
    return header, next_tag == _PIXEL_DATA_TAG_BYTES[_is_little_endian(header)]


def _convert_elements(header: Dataset, path: Path) -> None:
    """Convert every raw data element now, so a malformed one is rejected here.

    pydicom converts elements on first access, and a corrupt VR or value raises then
    (NotImplementedError for an unknown VR, among others), which would otherwise escape
    from whichever later check touches the element.
    """
    def touch(dataset: Dataset, element) -> None:
        pass  # walk() converts each element before calling back

    try:
        header.walk(touch)
        file_meta = getattr(header, "file_meta", None)
        if file_meta is not None:
            file_meta.walk(touch)
        _transfer_syntax(header)
    except (NotImplementedError, ValueError, TypeError, KeyError, IndexError,
            struct.error, BytesLengthException) as exc:
        raise _rejection(
            ReasonCode.NOT_DICOM, path,
            f"a data element of the header is malformed and cannot be read ({exc}).",
        ) from exc


def _has_dicm_prefix(file) -> bool:
    """Return True when the file starts with the 128-byte preamble and "DICM" (PS3.10 7.1)."""
    file.seek(128)
    has_prefix = file.read(4) == b"DICM"
    file.seek(0)
    return has_prefix


def _check_header_complete(header: Dataset, path: Path) -> None:
    """Reject a header that is empty or whose last data element is cut short."""
    if len(header) == 0:
        raise _rejection(
            ReasonCode.INCOMPLETE, path,
            "the file ends within or right after the File Meta Information, before any "
            "data element of the data set; the file is truncated. Send the complete file "
            "again.")
    last_tag = next(reversed(header.keys()))
    raw = header.get_item(last_tag)
    declared = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    # An undefined length (0xFFFFFFFF, used by sequences) has no size to compare against.
    if declared is None or declared == 0xFFFFFFFF or not isinstance(value, bytes):
        return
    if len(value) < declared:
        raise _rejection(
            ReasonCode.INCOMPLETE, path,
            f"the file ends inside data element {Tag(last_tag)} after {len(value)} of its "
            f"{declared} bytes; the file is truncated. Send the complete file again.")


def _read_full(path: Path, header: Dataset, data: bytes | None) -> Dataset:
    """Read the whole file, Pixel Data included, after the header checks passed."""
    with _open(path, data) as file:
        dataset = pydicom.dcmread(file, force=True)

    # When the file ends inside encapsulated Pixel Data, pydicom 3 only warns and returns a
    # data set without any elements, although the header read above found them.
    if "PixelData" not in dataset:
        raise _rejection(
            ReasonCode.CORRUPT_PIXEL_DATA,
            path,
            f"the file ends inside {_element('PixelData')}; the file is truncated. "
            "Send the complete file again.",
        )

    try:
        dataset["PixelData"]  # converts the raw element, as the header check did for others
    except (NotImplementedError, ValueError, TypeError, BytesLengthException) as exc:
        raise _rejection(
            ReasonCode.CORRUPT_PIXEL_DATA,
            path,
            f"the {_element('PixelData')} element is malformed and cannot be read ({exc}).",
        ) from exc

    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", {}):
        # A data set without File Meta Information is native by definition; record the
        # encoding pydicom detected so the pixel data handlers can decode it.
        dataset.file_meta = dataset.get("file_meta") or FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = _transfer_syntax(header)
    return dataset


def _is_little_endian(header: Dataset) -> bool:
    _, is_little_endian = header.original_encoding
    return is_little_endian is not False


def _transfer_syntax(header: Dataset) -> UID:
    """Return the transfer syntax of a file, from its File Meta or its detected encoding."""
    file_meta = getattr(header, "file_meta", None) or {}
    if "TransferSyntaxUID" in file_meta:
        return UID(file_meta.TransferSyntaxUID)

    is_implicit_vr, is_little_endian = header.original_encoding
    if is_implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if is_little_endian is not False else ExplicitVRBigEndian


# --- Header checks ------------------------------------------------------------------------


def _check_is_dicom(header: Dataset, path: Path) -> None:
    if len(header) == 0:
        prefix = "the File Meta Information was read but " if header.get("file_meta") else ""
        raise _rejection(
            ReasonCode.NOT_DICOM,
            path,
            f"{prefix}no data elements could be read; the file is empty, truncated or not "
            "DICOM.",
        )

    if header.preamble is not None:
        return

    # Without the 128-byte preamble and "DICM" prefix (PS3.10 7.1) only the content can
    # show that this is a DICOM image.
    missing = [keyword for keyword in BARE_DATASET_KEYWORDS if keyword not in header]
    if missing:
        raise _rejection(
            ReasonCode.NOT_DICOM,
            path,
            "the file has no DICOM preamble and lacks "
            + ", ".join(_element(keyword) for keyword in missing)
            + ", so it is not read as a DICOM image.",
        )


def _check_header(header: Dataset, path: Path, *, allowed_modalities: tuple[str, ...]) -> None:
    for keyword in REQUIRED_UIDS:
        if not str(header.get(keyword) or "").strip():
            raise _rejection(
                ReasonCode.MISSING_UID,
                path,
                f"{_element(keyword)} is missing or empty; results and the archive are "
                "keyed on it. Ask the sender to fill it in.",
            )

    sop_class = str(header.get("SOPClassUID") or "")
    intent = str(header.get("PresentationIntentType") or "").strip().upper()
    if intent == "FOR PROCESSING" or sop_class in FOR_PROCESSING_SOP_CLASSES:
        raise _rejection(
            ReasonCode.FOR_PROCESSING,
            path,
            f"{_element('PresentationIntentType')} is {intent or 'absent'!r} and "
            f"{_element('SOPClassUID')} is {_sop_class_name(header)}: this is raw detector "
            "data. Only FOR PRESENTATION images are scored; send the processed image.",
        )

    modality = str(header.get("Modality") or "").strip().upper()
    if modality not in {value.upper() for value in allowed_modalities}:
        raise _rejection(
            ReasonCode.NOT_MAMMOGRAM,
            path,
            f"{_element('Modality')} is {modality!r}; accepted values are "
            f"{list(allowed_modalities)}.",
        )
    if sop_class == BreastTomosynthesisImageStorage:
        raise _rejection(
            ReasonCode.NOT_MAMMOGRAM,
            path,
            f"{_element('SOPClassUID')} is {_sop_class_name(header)}; only 2D mammograms "
            "are scored, not tomosynthesis volumes.",
        )



def _check_image_pixel_module(header: Dataset, path: Path) -> None:
    missing = [keyword for keyword in IMAGE_PIXEL_KEYWORDS if header.get(keyword) is None]
    if missing:
        raise _rejection(
            ReasonCode.CORRUPT_PIXEL_DATA,
            path,
            "the Image Pixel Module lacks "
            + ", ".join(_element(keyword) for keyword in missing)
            + f", which are required to decode {_element('PixelData')}.",
        )

    not_integers = [keyword for keyword in IMAGE_PIXEL_KEYWORDS
                    if keyword != "PhotometricInterpretation"
                    and not isinstance(header[keyword].value, int)]
    if not_integers:
        # A damaged VR turns a US value into text or bytes, which decoding cannot use.
        raise _rejection(
            ReasonCode.CORRUPT_PIXEL_DATA,
            path,
            "the Image Pixel Module has non-integer "
            + ", ".join(f"{_element(keyword)} {header[keyword].value!r}"
                        for keyword in not_integers)
            + f", which are required to decode {_element('PixelData')}.",
        )

    samples = header.SamplesPerPixel
    interpretation = str(header.PhotometricInterpretation).strip().upper()
    if samples != 1 or interpretation not in GRAYSCALE_INTERPRETATIONS:
        raise _rejection(
            ReasonCode.NOT_GRAYSCALE,
            path,
            f"{_element('SamplesPerPixel')} is {samples} and "
            f"{_element('PhotometricInterpretation')} is {interpretation!r}; only "
            "grayscale images (1 sample, MONOCHROME1 or MONOCHROME2) are scored.",
        )


def _check_transfer_syntax(header: Dataset, path: Path) -> None:
    transfer_syntax = _transfer_syntax(header)
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        missing_plugins = "; ".join(decoder.missing_dependencies) if decoder else "none exist"
        raise _rejection(
            ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX,
            path,
            f"{_element('TransferSyntaxUID')} is {transfer_syntax} "
            f"({transfer_syntax.name}) and no installed pixel data handler decodes it "
            f"(plugins: {missing_plugins}). Ask the sender for an uncompressed, RLE, JPEG, "
            "JPEG-LS or JPEG 2000 transfer syntax.",
        )


def _check_frames_and_size(header: Dataset, path: Path, *, max_pixels: int) -> None:
    frames = header.get("NumberOfFrames")
    try:
        frame_count = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        frame_count = 0
    if frame_count != 1:
        raise _rejection(
            ReasonCode.MULTI_FRAME,
            path,
            f"{_element('NumberOfFrames')} is {frames!r}; only single-frame images are "
            "scored.",
        )

    rows = header.Rows
    columns = header.Columns
    if rows * columns > max_pixels:
        raise _rejection(
            ReasonCode.OVERSIZE,
            path,
            f"{_element('Rows')} x {_element('Columns')} is {rows} x {columns} = "
            f"{rows * columns} pixels, more than the {max_pixels} allowed (setting "
            "max_pixels).",
        )


# --- Identifiers, laterality and view -----------------------------------------------------


def _build_instance(path: Path, dataset: Dataset) -> DicomInstance:
    return DicomInstance(
        path=path,
        sop_instance_uid=str(dataset.SOPInstanceUID).strip(),
        study_instance_uid=str(dataset.StudyInstanceUID).strip(),
        series_instance_uid=str(dataset.SeriesInstanceUID).strip(),
        accession_number=_optional_text(dataset, "AccessionNumber"),
        patient_id=_optional_text(dataset, "PatientID"),
        study_date=_parse_study_date(dataset),
        laterality=_find_laterality(dataset),
        view=_find_view(dataset),
        modality=str(dataset.Modality).strip().upper(),
        photometric_interpretation=str(dataset.PhotometricInterpretation).strip().upper(),
        dataset=dataset,
    )


def _find_laterality(dataset: Dataset) -> Laterality:
    """Return ImageLaterality (0020,0062) if it is L or R, else Laterality (0020,0060)."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(dataset.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return value  # type: ignore[return-value]
    # ImageLaterality may also be B (both) or U (unpaired); neither is one breast.
    return UNKNOWN


def _find_view(dataset: Dataset) -> str:
    """Return the view from the first known ViewCodeSequence code, else ViewPosition."""
    for item in dataset.get("ViewCodeSequence") or []:
        value = str(item.get("CodeValue") or "").strip()
        scheme = str(item.get("CodingSchemeDesignator") or "").strip()
        if not value or not scheme:
            continue
        code = Code(value, scheme, str(item.get("CodeMeaning") or ""))
        for known_code, view in VIEW_BY_CODE:
            if code == known_code:
                return view
        logger.debug("ViewCodeSequence code %s (%s) is not in CID 4014", value, scheme)

    position = str(dataset.get("ViewPosition") or "").strip().upper()
    if position in KNOWN_VIEWS:
        return position
    return UNKNOWN


def _parse_study_date(dataset: Dataset) -> datetime.date | None:
    text = str(dataset.get("StudyDate") or "").strip()
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        logger.debug(
            "StudyDate %r of SOPInstanceUID %s is not a valid DA value",
            text,
            dataset.get("SOPInstanceUID"),
        )
        return None


def _optional_text(dataset: Dataset, keyword: str) -> str | None:
    value = str(dataset.get(keyword) or "").strip()
    return value or None


# --- Messages -----------------------------------------------------------------------------


def _element(keyword: str) -> str:
    """Return an attribute as the standard writes it, e.g. ``(0008,0060) Modality``."""
    return f"{Tag(tag_for_keyword(keyword))} {keyword}"


def _sop_class_name(header: Dataset) -> str:
    sop_class = header.get("SOPClassUID")
    if not sop_class:
        return "absent"
    return f"{sop_class} ({UID(sop_class).name})"


def _rejection(reason: ReasonCode, path: Path, detail: str) -> InputRejected:
    return InputRejected(reason, f"{path.name}: {detail}")
