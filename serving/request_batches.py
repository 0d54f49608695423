"""Prepare canonical images for one model: resize to its input size and split into requests.

Canonical images are grayscale uint8 arrays of shape ``[N, S, S]``. A model takes uint8
``[batch, height, width, 1]``, and a request must stay under the gRPC message limit, so a
batch is split into consecutive slices of at most `max_images_per_request` images.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Bytes reserved in each request for everything but the pixels: the model spec, the input
#: name, the tensor shape and the protobuf field headers. The client's request to
#: efficientnetb7 carries about 100 such bytes, so this leaves a wide margin.
REQUEST_OVERHEAD_BYTES = 4096


def resize_images(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[N, H, W]`` uint8 images to ``[N, height, width, 1]``.

    Shrinking uses area interpolation (cv2.INTER_AREA), which averages the source pixels.
    OpenCV's InterpolationFlags documentation recommends it for decimation because it gives
    moiré-free results. Enlarging uses bilinear interpolation (cv2.INTER_LINEAR). Images
    already at the size are not copied.
    """
    count, source_height, source_width = images.shape
    if (source_height, source_width) == (height, width):
        return images[..., np.newaxis]

    shrinking = height <= source_height and width <= source_width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = np.empty((count, height, width, 1), dtype=np.uint8)
    for index in range(count):
        # cv2.resize takes the size as (width, height).
        resized[index, :, :, 0] = cv2.resize(
            images[index], (width, height), interpolation=interpolation
        )
    return resized


def max_images_per_request(height: int, width: int, max_message_bytes: int) -> int:
    """Return how many uint8 ``height x width`` images fit in one request under the limit.

    Returns 0 when not even one image fits.
    """
    return max(0, (max_message_bytes - REQUEST_OVERHEAD_BYTES) // (height * width))


def split_batch(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``images`` along the first axis into slices of at most ``batch_size``, in order."""
    return [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
