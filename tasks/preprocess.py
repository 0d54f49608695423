"""Turn a DICOM mammogram into the canonical image the models are trained and served on.

`preprocess` returns a uint8 array of shape ``(size, size)`` in which dense tissue is bright
and the chest wall lies along the left edge. Training and serving both use this function,
and `PREPROCESSING_VERSION` changes whenever its output for a given input would change.

The steps run in the order of the DICOM grayscale pipeline (PS3.4 N.2.1.1), then the
geometric steps:

1. `decode_pixel_data`: stored values, as pydicom's pixel data handlers decode them.
   `preprocess` then averages blocks of ``factor`` x ``factor`` stored values
   (`reduce_resolution`), keeping at least MIN_PIXELS_PER_OUTPUT_PIXEL pixels per output
   pixel across the breast, and runs every later step on that smaller copy.
2. `apply_modality_lut`: Modality LUT Sequence or Rescale Slope/Intercept (PS3.3 C.11.1).
3. `apply_voi`: VOI LUT Sequence, else the first window, else the value range
   (PS3.3 C.11.2), scaled to [0, 1].
4. `correct_polarity`: one inversion for MONOCHROME1, so dense tissue is bright.
5. `crop_to_breast`: bounding box of the largest bright connected component.
6. `orient_chest_wall_left`: horizontal flip when the chest wall is on the right.
7. `pad_to_square`: black padding on the side away from the chest wall.
8. `resize_square`: INTER_AREA resize to ``size`` x ``size``.
9. `quantize_to_uint8`: [0, 1] to 0..255.

Every intermediate image is float32 in [0, 1] from step 3 on. Each step is a public
function so that training code and tests can run any prefix of the pipeline.

Averaging the stored values before the LUTs, rather than the displayed values after them,
is what makes the pipeline fast. Decoding writes each full-resolution pixel once and
`reduce_resolution` reads it once more. The float32 LUT, crop and resize steps then touch
about 1/36 of the pixels of a 4400 x 2900 image at size 224. For a linear rescale and a
window that clips no pixel both orders give the same image. Where a window clips, or the
VOI LUT or sigmoid is not linear, a block that straddles the edge of the window shows a
slightly different grey level. Version 1 ran the LUTs at full resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom.pixels
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from mammo.errors import InputRejected, ReasonCode
from tasks.dicom_read import DicomInstance

logger = logging.getLogger(__name__)

#: Changes whenever `preprocess` would return a different image for the same input.
PREPROCESSING_VERSION = "2"

#: Minimum number of reduced pixels per canonical pixel across the cropped breast. With 2,
#: a block straddles an output pixel edge by at most a quarter of an output pixel, so the
#: result stays close to an INTER_AREA resize of the full-resolution image.
MIN_PIXELS_PER_OUTPUT_PIXEL = 2

#: Stored-value types that OpenCV's INTER_AREA averages in integer-factor blocks.
#: Other types (32-bit integers) are preprocessed at full resolution.
REDUCIBLE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16))

#: Rows handed to pydicom's LUT functions at a time. They compute in float64, so this
#: bounds each temporary array to ROW_BLOCK x Columns x 8 bytes (11 MB at 2800 columns).
ROW_BLOCK = 512

#: Longer side of the downscaled copy on which the breast mask is computed. Film labels,
#: markers and the breast boundary survive at this size, and a 4500 x 2800 image shrinks
#: to about 1/80 of its pixels for thresholding and connected components.
MASK_MAX_SIDE = 512

#: Opening kernel, in mask pixels, that cuts thin bright lines (film edges, scanner
#: streaks) from the breast so they do not join it into one component.
MASK_OPENING_SIZE = 5

#: Fraction of the image width, at each side, in which the tissue is compared to find the
#: chest wall.
EDGE_FRACTION = 0.1


def preprocess(instance_or_dataset: DicomInstance | Dataset, size: int) -> np.ndarray:
    """Return the canonical uint8 image of shape ``(size, size)`` for one instance.

    Parameters
    ----------
    instance_or_dataset
        A `DicomInstance` from `tasks.dicom_read.read_instance`, or a pydicom Dataset with
        Pixel Data. A bare Dataset gets no header checks beyond what decoding needs, so
        read files through `read_instance` in the pipeline.
    size
        Height and width of the result in pixels.

    Raises
    ------
    InputRejected
        ``corrupt_pixel_data`` when decoding fails, the Pixel Data are truncated, or values
        lie outside the Bits Stored range. ``blank_image`` when every pixel has the same
        stored value, or when the reduced image shows one value throughout after the VOI
        transformation.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    dataset, source = _dataset_and_source(instance_or_dataset)

    stored, stored_range = _decode(dataset, source)
    if stored_range[0] == stored_range[1]:
        _check_has_contrast(stored, source)

    factor = reduction_factor(stored, size)
    image = _displayed_image(stored, factor, stored_range, dataset)
    # NOTE: a window that clips all but isolated pixels can leave a block-averaged image
    # without contrast although the full-resolution one has some. Such a file is rejected
    # as blank.
    _check_has_contrast(image, source)

    box, flip = None, False
    component = _largest_component(image)
    if component is not None:
        box, breast_mask = _box_and_mask(image, *component)
        flip = _chest_wall_on_right(breast_mask)
    if box is not None:
        top, bottom, left, right = box
        if factor > 1 and max(bottom - top, right - left) < MIN_PIXELS_PER_OUTPUT_PIXEL * size:
            # A small breast: average the full-resolution crop in smaller blocks so that
            # the canonical image keeps the detail the file has.
            cropped = stored[top * factor:bottom * factor, left * factor:right * factor]
            image = _displayed_image(cropped, reduction_factor(cropped, size), stored_range,
                                     dataset)
        else:
            image = image[top:bottom, left:right]
    del stored

    if flip:
        image = image[:, ::-1]
    image = pad_to_square(image)
    image = resize_square(image, size)
    return quantize_to_uint8(image)


# --- Resolution -----------------------------------------------------------------------


def reduction_factor(stored: np.ndarray, size: int) -> int:
    """Return the block side that `reduce_resolution` may average for a canonical ``size``.

    The factor keeps MIN_PIXELS_PER_OUTPUT_PIXEL x ``size`` pixels along the shorter side,
    so a breast that spans it, or the longer side, still has that many. Returns 1 for
    stored types outside REDUCIBLE_DTYPES.
    """
    if stored.dtype not in REDUCIBLE_DTYPES:
        return 1
    return max(1, min(stored.shape) // (MIN_PIXELS_PER_OUTPUT_PIXEL * size))


def reduce_resolution(stored: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of stored values, keeping their integer type.

    Even factors are taken as repeated halvings, because OpenCV vectorises the 2 x 2
    INTER_AREA case. Halving twice took about a quarter of the time of one 4 x 4 step on
    a 4432 x 2864 uint16 image (OpenCV 5.1, 2-core VM). An odd rest follows in one step. At each step the last rows and columns that do not fill
    a block are dropped, fewer than ``factor`` stored rows and columns in all. Averages
    are rounded to the nearest integer at each step, an error of at most one stored value,
    so that the Modality LUT Sequence and VOI LUT Sequence can still index by them.
    Returns ``stored`` itself when ``factor`` is 1.
    """
    reduced = stored
    while factor > 1:
        step = 2 if factor % 2 == 0 else factor
        rows, columns = reduced.shape
        rows, columns = rows - rows % step, columns - columns % step
        reduced = cv2.resize(reduced[:rows, :columns], (columns // step, rows // step),
                             interpolation=cv2.INTER_AREA)
        factor //= step
    return reduced


def _displayed_image(stored: np.ndarray, factor: int, stored_range: tuple[int, int],
                     dataset: Dataset) -> np.ndarray:
    """Reduce ``stored`` by ``factor``, then apply the modality LUT, VOI and polarity.

    ``stored_range`` is the minimum and maximum stored value of the whole image, so that
    the value-range VOI rule scales a reduced copy or a crop like the full image.
    """
    reduced = reduce_resolution(stored, factor)
    values = apply_modality_lut(reduced, dataset)
    low, high = stored_range
    mapped_range = apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), dataset)
    # NOTE: for a Modality LUT Sequence that is not monotonic, this is the range over every
    # stored value from low to high, which may exceed the range of the values present.
    image = apply_voi(values, dataset,
                      value_range=(float(mapped_range.min()), float(mapped_range.max())))
    return correct_polarity(image, dataset)


# --- Grayscale pipeline -------------------------------------------------------------------


def decode_pixel_data(dataset: Dataset, *, source: str = "dataset") -> np.ndarray:
    """Decode Pixel Data into the stored values, shape ``(Rows, Columns)``.

    Returns the array pydicom's pixel data handlers produce (an integer dtype matching
    Bits Allocated and Pixel Representation), without any LUT applied. For native and RLE
    transfer syntaxes pydicom clears the bits above Bits Stored (PS3.5 8.1.1).

    Raises
    ------
    InputRejected
        ``corrupt_pixel_data`` when native Pixel Data are shorter than Rows x Columns x
        Bits Allocated / 8, when a handler fails, or when a value lies outside the range
        that Bits Stored and Pixel Representation allow. The last happens when a JPEG 2000
        or JPEG-LS codestream has a higher precision than Bits Stored.
        ``multi_frame`` or ``not_grayscale`` when the decoded array is not 2-D.
    """
    return _decode(dataset, source)[0]


def _decode(dataset: Dataset, source: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like `decode_pixel_data`; also return the minimum and maximum stored value."""
    transfer_syntax = dataset.file_meta.TransferSyntaxUID
    if not transfer_syntax.is_encapsulated:
        _check_native_length(dataset, source)

    try:
        stored = pydicom.pixels.pixel_array(dataset)
    except Exception as exc:
        # The handlers of the pylibjpeg plugins and pydicom raise ValueError,
        # RuntimeError, NotImplementedError and others; all mean the data cannot be used.
        raise InputRejected(
            ReasonCode.CORRUPT_PIXEL_DATA,
            f"{source}: decoding (7FE0,0010) PixelData with transfer syntax "
            f"{transfer_syntax.name} failed: {exc}",
        ) from exc

    if stored.ndim != 2:
        reason = ReasonCode.NOT_GRAYSCALE
        if stored.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
            reason = ReasonCode.MULTI_FRAME
        raise InputRejected(
            reason,
            f"{source}: (7FE0,0010) PixelData decodes to shape {stored.shape}; only a "
            "single grayscale frame of shape (Rows, Columns) is scored.",
        )
    return stored, _check_stored_range(stored, dataset, source)


def apply_modality_lut(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the Modality LUT Sequence or Rescale Slope/Intercept, returning float32.

    Returns the stored values as float32 unchanged when the data set has neither
    (PS3.3 C.11.1). pydicom's `apply_modality_lut` does the mapping, row block by row block.
    """
    has_lut = bool(dataset.get("ModalityLUTSequence"))
    has_rescale = "RescaleSlope" in dataset and "RescaleIntercept" in dataset
    if not has_lut and not has_rescale:
        return stored.astype(np.float32)
    return _apply_by_row_blocks(pydicom.pixels.apply_modality_lut, stored, dataset)


def apply_voi(values: np.ndarray, dataset: Dataset,
              value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Apply the VOI transformation and scale its output range to float32 in [0, 1].

    Policy, first match wins (PS3.3 C.11.2):

    1. The first item of VOI LUT Sequence, through pydicom's `apply_voi`. Its output range
       is taken as the minimum to maximum LUT Data value.
    2. The first Window Center / Window Width pair, through pydicom's `apply_windowing`,
       which honours VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID). A width below 1 for
       LINEAR or not above 0 otherwise is invalid (C.11.2.1.2) and skipped.
    3. The minimum to maximum of `values`, or ``value_range`` when given (the range of the
       full image when `values` is a reduced copy or a crop). An image with one value
       throughout becomes 0.

    Which rule was used is logged at DEBUG.

    Notes
    -----
    `values` must be the output of `apply_modality_lut`. The result is not yet corrected
    for MONOCHROME1; call `correct_polarity` next.
    """
    sop_instance_uid = dataset.get("SOPInstanceUID")

    lut_range = _voi_lut_range(dataset)
    if lut_range is not None:
        logger.debug("VOI for %s: VOI LUT Sequence item 1", sop_instance_uid)
        integers = np.rint(values).astype(np.int32)
        mapped = _apply_by_row_blocks(pydicom.pixels.apply_voi, integers, dataset)
        return _scale_to_unit(mapped, *lut_range)

    window = _first_valid_window(dataset)
    if window is not None:
        logger.debug("VOI for %s: window center %s, width %s, function %s",
                     sop_instance_uid, *window)
        mapped = _apply_by_row_blocks(pydicom.pixels.apply_windowing, values, dataset)
        # The windowing output limits are the values for inputs far outside the window.
        low, high = pydicom.pixels.apply_windowing(np.array([-np.inf, np.inf]), dataset)
        return _scale_to_unit(mapped, float(low), float(high))

    logger.debug("VOI for %s: minimum to maximum of the values", sop_instance_uid)
    if value_range is None:
        value_range = (float(values.min()), float(values.max()))
    return _scale_to_unit(values.astype(np.float32, copy=True), *value_range)


def correct_polarity(image: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Invert a [0, 1] image when PhotometricInterpretation is MONOCHROME1.

    Returns the image unchanged for MONOCHROME2, else ``1 - image`` as float32. This is the
    only inversion in the pipeline.

    Notes
    -----
    Presentation LUT Shape (2050,0020) is not a second inversion. In image IODs it restates
    the photometric interpretation: IDENTITY shall be used with MONOCHROME2 and INVERSE
    with MONOCHROME1 (PS3.3 C.7.6.1 and C.8.11.3), so inverting on MONOCHROME1 and again
    on INVERSE would turn a compliant MONOCHROME1 image back to dark tissue. pydicom's
    `apply_presentation_lut` inverts on INVERSE alone and is therefore not used. When the
    two attributes contradict each other, the photometric interpretation wins and a
    warning is logged.
    """
    interpretation = str(dataset.PhotometricInterpretation).strip().upper()
    shape = str(dataset.get("PresentationLUTShape") or "").strip().upper()
    expected_shape = "INVERSE" if interpretation == "MONOCHROME1" else "IDENTITY"
    if shape and shape != expected_shape:
        logger.warning(
            "SOPInstanceUID %s has (2050,0020) PresentationLUTShape %s with "
            "(0028,0004) PhotometricInterpretation %s, which requires %s; "
            "following the photometric interpretation",
            dataset.get("SOPInstanceUID"), shape, interpretation, expected_shape,
        )

    if interpretation == "MONOCHROME1":
        return np.subtract(1.0, image, dtype=np.float32)
    return image


# --- Geometry -----------------------------------------------------------------------------


def crop_to_breast(image: np.ndarray) -> np.ndarray:
    """Crop a [0, 1] image to the bounding box of the breast.

    The breast is the largest connected component of the Otsu-thresholded image after a
    small opening, so film labels, markers and film edges that are not attached to it do
    not widen the box. Returns the image unchanged when no foreground is found.
    """
    box = breast_box(image)
    if box is None:
        return image
    top, bottom, left, right = box
    return image[top:bottom, left:right]


def breast_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return (top, bottom, left, right) of the breast in a [0, 1] image, or None.

    Bottom and right are exclusive. The breast is found as in `crop_to_breast`; None means
    the image has no foreground.
    """
    component = _largest_component(image)
    if component is None:
        return None
    return _box_and_mask(image, *component)[0]


def _box_and_mask(image: np.ndarray, mask: np.ndarray, scale: float
                  ) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Return the breast box in ``image`` and the mask cropped to the box."""
    top, bottom, left, right = _bounding_box(mask)
    cropped_mask = mask[top:bottom, left:right]
    # Map the box on the downscaled mask back to full resolution, widening it by one
    # mask pixel so that the rounding never cuts off the breast boundary.
    rows, columns = image.shape
    top = max(int(np.floor((top - 1) * scale)), 0)
    left = max(int(np.floor((left - 1) * scale)), 0)
    bottom = min(int(np.ceil((bottom + 1) * scale)), rows)
    right = min(int(np.ceil((right + 1) * scale)), columns)
    return (top, bottom, left, right), cropped_mask


def orient_chest_wall_left(image: np.ndarray) -> np.ndarray:
    """Flip a [0, 1] image horizontally when the chest wall is on its right side.

    Rule: the breast is widest at the chest wall and meets the image edge there, while it
    tapers to the nipple on the other side. So the side whose outer EDGE_FRACTION of the
    width contains more breast-mask pixels is the chest wall. Ties keep the image as it is.
    Returns a view of the image, flipped or not.
    """
    component = _largest_component(image)
    if component is None:
        return image
    if _chest_wall_on_right(component[0]):
        return image[:, ::-1]
    return image


def _chest_wall_on_right(mask: np.ndarray) -> bool:
    """Apply the rule of `orient_chest_wall_left` to a breast mask."""
    edge_columns = max(1, int(round(mask.shape[1] * EDGE_FRACTION)))
    left_tissue = int(np.count_nonzero(mask[:, :edge_columns]))
    right_tissue = int(np.count_nonzero(mask[:, -edge_columns:]))
    return right_tissue > left_tissue


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad an image with zeros (black) to a square.

    Columns are added on the right, away from the chest wall on the left. A wider than
    tall image gets rows added equally at top and bottom. Returns a new array.
    """
    rows, columns = image.shape
    side = max(rows, columns)
    extra_rows = side - rows
    padding = ((extra_rows // 2, extra_rows - extra_rows // 2), (0, side - columns))
    return np.pad(image, padding, mode="constant", constant_values=0)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to ``size`` x ``size`` with cv2.INTER_AREA.

    Raises `ValueError` for an image that is not square; call `pad_to_square` first.
    """
    rows, columns = image.shape
    if rows != columns:
        raise ValueError(f"image must be square, got shape {image.shape}; pad it first")
    interpolation = cv2.INTER_AREA if size <= rows else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)


def quantize_to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a [0, 1] image to uint8 0..255, rounding to the nearest level."""
    scaled = np.clip(image, 0.0, 1.0) * np.float32(255)
    return np.rint(scaled).astype(np.uint8)


# --- Helpers ------------------------------------------------------------------------------


def _dataset_and_source(instance_or_dataset: DicomInstance | Dataset) -> tuple[Dataset, str]:
    """Return the data set and the file name that error messages name."""
    if isinstance(instance_or_dataset, DicomInstance):
        return instance_or_dataset.dataset, instance_or_dataset.path.name

    filename = getattr(instance_or_dataset, "filename", None)
    if isinstance(filename, str) and filename:
        return instance_or_dataset, Path(filename).name
    return instance_or_dataset, f"dataset {instance_or_dataset.get('SOPInstanceUID', '')}"


def _check_native_length(dataset: Dataset, source: str) -> None:
    expected = get_expected_length(dataset, "bytes")
    actual = len(dataset.PixelData)
    if actual < expected:
        raise InputRejected(
            ReasonCode.CORRUPT_PIXEL_DATA,
            f"{source}: (7FE0,0010) PixelData has {actual} bytes, but Rows x Columns x "
            f"Bits Allocated / 8 needs {expected}; the file is truncated. Send the complete "
            "file again.",
        )


def _check_stored_range(stored: np.ndarray, dataset: Dataset, source: str) -> tuple[int, int]:
    """Raise unless every stored value fits Bits Stored; return the minimum and maximum."""
    bits_stored = int(dataset.BitsStored)
    if int(dataset.PixelRepresentation) == 1:
        allowed_min, allowed_max = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        allowed_min, allowed_max = 0, 2**bits_stored - 1

    found_min, found_max = _value_range(stored)
    if found_min < allowed_min or found_max > allowed_max:
        raise InputRejected(
            ReasonCode.CORRUPT_PIXEL_DATA,
            f"{source}: (7FE0,0010) PixelData holds values {found_min}..{found_max}, but "
            f"(0028,0101) BitsStored {bits_stored} with (0028,0103) PixelRepresentation "
            f"{dataset.PixelRepresentation} allows {allowed_min}..{allowed_max}.",
        )
    return found_min, found_max


def _value_range(stored: np.ndarray) -> tuple[int, int]:
    """Return the minimum and maximum stored value, in one pass where OpenCV can."""
    if stored.dtype in REDUCIBLE_DTYPES:
        low, high, _, _ = cv2.minMaxLoc(stored)
        return int(low), int(high)
    return int(stored.min()), int(stored.max())


def _check_has_contrast(image: np.ndarray, source: str) -> None:
    if float(image.max()) <= float(image.min()):
        raise InputRejected(
            ReasonCode.BLANK_IMAGE,
            f"{source}: (7FE0,0010) PixelData has the same displayed value in every pixel; "
            "there is no image to score. Check the modality's export settings.",
        )


def _apply_by_row_blocks(
    function: Callable[[np.ndarray, Dataset], np.ndarray],
    values: np.ndarray,
    dataset: Dataset,
) -> np.ndarray:
    """Apply a pydicom pixel function block by block and collect the output as float32."""
    output = np.empty(values.shape, dtype=np.float32)
    for start in range(0, values.shape[0], ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        output[block] = function(values[block], dataset)
    return output


def _voi_lut_range(dataset: Dataset) -> tuple[float, float] | None:
    """Return the LUT Data range of the first VOI LUT Sequence item, or None if unusable."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None

    entries, first_mapped, _ = item.LUTDescriptor
    entries = entries or 2**16  # PS3.3 C.11.2.1.1: 0 means 65536 entries
    inputs = np.arange(first_mapped, first_mapped + entries, dtype=np.int32)
    lut = pydicom.pixels.apply_voi(inputs, dataset)
    low, high = float(lut.min()), float(lut.max())
    return (low, high) if high > low else None


def _first_valid_window(dataset: Dataset) -> tuple[float, float, str] | None:
    """Return (center, width, function) of the first window, or None if absent or invalid."""
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    center = _first_value(dataset["WindowCenter"])
    width = _first_value(dataset["WindowWidth"])
    if center is None or width is None:
        return None

    function = str(dataset.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning(
            "SOPInstanceUID %s has unknown (0028,1056) VOILUTFunction %r; using the value "
            "range instead of the window", dataset.get("SOPInstanceUID"), function,
        )
        return None
    if (width < 1) if function == "LINEAR" else (width <= 0):
        logger.debug("Window width %s is invalid for VOI LUT Function %s", width, function)
        return None
    return center, width, function


def _first_value(element: DataElement) -> float | None:
    value = element.value[0] if element.VM > 1 else element.value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scale_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Scale float32 `values` from [low, high] to [0, 1] in place and clip."""
    if high <= low:
        values[...] = 0
        return values
    values -= np.float32(low)
    values *= np.float32(1.0 / (high - low))
    np.clip(values, 0.0, 1.0, out=values)
    return values


def _largest_component(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Return the breast mask on a downscaled copy, and the scale back to full size.

    The mask is the largest 8-connected component of the Otsu foreground after an
    opening; None when the image has no foreground.
    """
    rows, columns = image.shape
    scale = max(rows, columns) / MASK_MAX_SIDE
    if scale > 1:
        small_size = (max(1, round(columns / scale)), max(1, round(rows / scale)))
        small = cv2.resize(np.ascontiguousarray(image), small_size, interpolation=cv2.INTER_AREA)
    else:
        small, scale = np.ascontiguousarray(image), 1.0
    small_u8 = np.rint(np.clip(small, 0, 1) * 255).astype(np.uint8)

    _, foreground = cv2.threshold(small_u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (MASK_OPENING_SIZE,) * 2)
    opened = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, kernel)
    if opened.any():
        foreground = opened

    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count < 2:
        return None
    # Label 0 is the background.
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest, float(scale)


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) of a non-empty mask, bottom and right exclusive."""
    row_hits = np.flatnonzero(mask.any(axis=1))
    column_hits = np.flatnonzero(mask.any(axis=0))
    return row_hits[0], row_hits[-1] + 1, column_hits[0], column_hits[-1] + 1
