"""Ensemble of the four classifiers' malignancy probabilities.

The ensemble probability is the weighted mean of the model probabilities. A case is
``suspicious`` when that mean is at or above the operating threshold, ``not_suspicious``
otherwise. Agreement counts the models whose own probability falls on the same side of the
threshold as the ensemble, so 4 of 4 means a unanimous vote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Category(StrEnum):
    SUSPICIOUS = "suspicious"
    NOT_SUSPICIOUS = "not_suspicious"


@dataclass(frozen=True)
class EnsembleResult:
    """Ensemble outcome of one instance; probabilities are Python floats in [0, 1]."""

    probability: float
    threshold: float
    category: Category
    models_agreeing: int
    models_total: int


def combine_scores(probabilities: Mapping[str, np.ndarray], weights: Mapping[str, float],
                   threshold: float) -> list[EnsembleResult]:
    """Combine per-model probabilities (each of shape [N]) into N ensemble results.

    Raises ValueError when the arrays differ in length, a probability is outside [0, 1] or
    not finite, or every weight is zero.
    """
    if not probabilities:
        raise ValueError("no model probabilities to combine")
    names = list(probabilities)
    matrix = np.stack([np.asarray(probabilities[name], dtype=np.float64) for name in names])
    if matrix.ndim != 2:
        raise ValueError(f"expected one probability per instance per model, got shape "
                         f"{matrix.shape}")
    if not np.all(np.isfinite(matrix)) or matrix.min(initial=0) < 0 or matrix.max(initial=0) > 1:
        raise ValueError("model probabilities must be finite numbers in [0, 1]")

    weight_vector = np.array([weights.get(name, 1.0) for name in names], dtype=np.float64)
    if weight_vector.sum() <= 0:
        raise ValueError(f"ensemble weights of {names} sum to zero; give at least one model "
                         "a positive weight")
    ensemble = weight_vector @ matrix / weight_vector.sum()

    results: list[EnsembleResult] = []
    for column, probability in enumerate(ensemble):
        suspicious = bool(probability >= threshold)
        agreeing = int(np.sum((matrix[:, column] >= threshold) == suspicious))
        results.append(EnsembleResult(
            probability=float(probability),
            threshold=float(threshold),
            category=Category.SUSPICIOUS if suspicious else Category.NOT_SUSPICIOUS,
            models_agreeing=agreeing,
            models_total=len(names),
        ))
    return results
