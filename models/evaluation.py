"""Held-out evaluation of model versions: ROC AUC with a bootstrap interval, operating points.

Labels are 1 for malignant and 0 otherwise; scores are malignancy probabilities. The AUC is
the Mann-Whitney statistic (the probability that a random malignant case scores higher than a
random other case, ties counting one half), so it equals the area under the empirical ROC
curve. Confidence intervals are percentile intervals over bootstrap resamples of the cases;
resamples that lack one of the classes are drawn again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

#: Level of every confidence interval reported.
CONFIDENCE_LEVEL = 0.95

#: Resamples drawn at most per requested resample before giving up on one-class draws.
MAX_DRAWS_PER_RESAMPLE = 20


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model version on one set of held-out cases."""

    cases: int
    malignant: int
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    #: At the operating threshold in force when the run started.
    operating: OperatingPoint
    #: At the threshold chosen for the target sensitivity on these cases.
    chosen: OperatingPoint

    def as_dict(self) -> dict:
        return asdict(self)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores must have the same length, got {labels.size} "
                         f"and {scores.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite numbers")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise ValueError(f"the AUC needs malignant and other cases, got {positives} malignant "
                         f"of {labels.size}")
    return labels, scores


def _rank_average(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks, giving tied values the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the ROC AUC; raise `ValueError` unless both classes are present."""
    labels, scores = _check(labels, scores)
    ranks = _rank_average(scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc(labels: np.ndarray, score_sets: Mapping[str, np.ndarray], *,
                  samples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Return the AUC of each score set on the same ``samples`` bootstrap resamples.

    Using the same resamples for every score set makes the differences between them paired.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    for scores in score_sets.values():
        _check(labels, scores)
    generator = np.random.default_rng(seed)
    results: dict[str, list[float]] = {name: [] for name in score_sets}
    draws = 0
    while len(next(iter(results.values()))) < samples:
        draws += 1
        if draws > samples * MAX_DRAWS_PER_RESAMPLE:
            raise ValueError("too few cases of one class to draw bootstrap resamples with "
                             "both classes")
        index = generator.integers(0, labels.size, labels.size)
        resampled = labels[index]
        if resampled.all() or not resampled.any():
            continue
        for name, scores in score_sets.items():
            results[name].append(roc_auc(resampled, np.asarray(scores)[index]))
    return {name: np.asarray(values) for name, values in results.items()}


def percentile_interval(values: np.ndarray,
                        level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> OperatingPoint:
    """Return sensitivity and specificity when scores at or above ``threshold`` are positive."""
    labels, scores = _check(labels, scores)
    called = scores >= threshold
    sensitivity = float(np.mean(called[labels]))
    specificity = float(np.mean(~called[~labels]))
    return OperatingPoint(float(threshold), sensitivity, specificity)


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray,
                              target_sensitivity: float) -> float:
    """Return the highest threshold whose sensitivity on these cases reaches the target.

    That is the k-th highest malignant score, k being the target times the number of
    malignant cases, rounded up. The highest such threshold gives the best specificity.
    """
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    labels, scores = _check(labels, scores)
    malignant_scores = np.sort(scores[labels])[::-1]
    needed = math.ceil(target_sensitivity * malignant_scores.size)
    return float(malignant_scores[needed - 1])


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return false positive and true positive rates, from (0, 0) to (1, 1)."""
    labels, scores = _check(labels, scores)
    thresholds = np.unique(scores)[::-1]
    fpr = [0.0]
    tpr = [0.0]
    for threshold in thresholds:
        called = scores >= threshold
        tpr.append(float(np.mean(called[labels])))
        fpr.append(float(np.mean(called[~labels])))
    return np.asarray(fpr), np.asarray(tpr)


def evaluate(labels: np.ndarray, scores: np.ndarray, bootstrap: np.ndarray, *,
             operating_threshold: float, target_sensitivity: float) -> Evaluation:
    """Summarise one version's held-out scores; ``bootstrap`` is from `bootstrap_auc`.

    NOTE: the chosen threshold is fitted on the same cases that its sensitivity and
    specificity are reported on, so those two numbers are optimistic for new cases.
    """
    labels, scores = _check(labels, scores)
    low, high = percentile_interval(bootstrap)
    chosen = threshold_for_sensitivity(labels, scores, target_sensitivity)
    return Evaluation(
        cases=int(labels.size),
        malignant=int(labels.sum()),
        auc=roc_auc(labels, scores),
        auc_ci_low=low,
        auc_ci_high=high,
        operating=operating_point(labels, scores, operating_threshold),
        chosen=operating_point(labels, scores, chosen),
    )


def is_not_worse(candidate_auc: float, current_auc: float, margin: float) -> bool:
    """Return whether the candidate's AUC is at most ``margin`` below the current one's."""
    # The tolerance keeps a candidate identical to the current version from failing on
    # floating-point noise.
    return candidate_auc >= current_auc - margin - 1e-12


def ensemble_weights_from_auc(aucs: Mapping[str, float]) -> dict[str, float]:
    """Weigh each model by how far its AUC lies above chance (0.5); equal if none does.

    Weights are normalised to sum to 1 and rounded to 4 decimals.
    """
    raw = {name: max(auc - 0.5, 0.0) for name, auc in aucs.items()}
    total = sum(raw.values())
    if total <= 0:
        return {name: round(1 / len(aucs), 4) for name in aucs}
    return {name: round(value / total, 4) for name, value in raw.items()}


def weighted_mean(score_sets: Mapping[str, np.ndarray], weights: Mapping[str, float]
                  ) -> np.ndarray:
    """Return the weighted mean of the score sets, as `tasks.ensemble.combine_scores` does."""
    names = list(score_sets)
    matrix = np.stack([np.asarray(score_sets[name], dtype=np.float64) for name in names])
    vector = np.array([weights.get(name, 1.0) for name in names], dtype=np.float64)
    if vector.sum() <= 0:
        raise ValueError(f"ensemble weights {dict(weights)} sum to zero")
    return vector @ matrix / vector.sum()
