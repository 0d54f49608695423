"""Draw ROC curves as a PNG with OpenCV, so no plotting library is needed.

The image is 480 x 480 pixels: axes with ticks every 0.2, the chance diagonal, and one
curve per entry with its AUC in the legend. OpenCV's Hershey fonts cover ASCII only, so the
texts on the image are English.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

SIZE = 480
MARGIN = 60
WHITE = (255, 255, 255)
GREY = (190, 190, 190)
BLACK = (0, 0, 0)
#: BGR colours of the curves, in the order they are given.
CURVE_COLOURS = ((200, 90, 20), (40, 40, 220), (40, 160, 40), (150, 60, 150))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _to_pixel(fpr: float, tpr: float) -> tuple[int, int]:
    span = SIZE - 2 * MARGIN
    return int(round(MARGIN + fpr * span)), int(round(SIZE - MARGIN - tpr * span))


def draw_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                    path: Path, title: str) -> Path:
    """Write a PNG of the ROC curves to ``path`` and return it.

    Args:
        curves: Legend name mapped to (false positive rates, true positive rates, AUC).
        path: PNG file to write; its folder is created.
        title: Line of ASCII text above the plot.
    """
    image = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    for tick in np.linspace(0, 1, 6):
        x, _ = _to_pixel(tick, 0)
        _, y = _to_pixel(0, tick)
        cv2.line(image, (x, MARGIN), (x, SIZE - MARGIN), GREY, 1)
        cv2.line(image, (MARGIN, y), (SIZE - MARGIN, y), GREY, 1)
        cv2.putText(image, f"{tick:.1f}", (x - 12, SIZE - MARGIN + 18), FONT, 0.4, BLACK, 1)
        cv2.putText(image, f"{tick:.1f}", (MARGIN - 32, y + 4), FONT, 0.4, BLACK, 1)
    cv2.line(image, _to_pixel(0, 0), _to_pixel(1, 1), GREY, 1, cv2.LINE_AA)
    cv2.rectangle(image, _to_pixel(0, 1), _to_pixel(1, 0), BLACK, 1)

    for index, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        points = np.array([_to_pixel(x, y) for x, y in zip(fpr, tpr)], dtype=np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        legend_y = SIZE - MARGIN - 20 - 20 * index
        cv2.putText(image, f"{name} AUC {auc:.3f}", (SIZE // 2 - 10, legend_y), FONT, 0.45,
                    colour, 1, cv2.LINE_AA)

    cv2.putText(image, title, (MARGIN, MARGIN - 25), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "false positive rate (1 - specificity)", (MARGIN + 60, SIZE - 15),
                FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "sensitivity", (8, MARGIN - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"writing the ROC curve image {path} failed")
    return path
