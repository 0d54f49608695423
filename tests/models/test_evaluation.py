"""Held-out metrics: AUC, bootstrap intervals, operating points and the ROC image."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from models.evaluation import (
    bootstrap_auc,
    ensemble_weights_from_auc,
    evaluate,
    is_not_worse,
    operating_point,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
    weighted_mean,
)
from models.roc_plot import draw_roc_curves


def _pairwise_auc(labels, scores) -> float:
    positives = [s for label, s in zip(labels, scores) if label]
    negatives = [s for label, s in zip(labels, scores) if not label]
    wins = 0.0
    for positive, negative in itertools.product(positives, negatives):
        if positive > negative:
            wins += 1.0
        elif positive == negative:
            wins += 0.5
    return wins / (len(positives) * len(negatives))


class TestRocAuc:
    def test_matches_pairwise_count_with_ties(self):
        generator = np.random.default_rng(4)
        labels = generator.integers(0, 2, 60)
        scores = np.round(generator.random(60), 1)  # many ties

        assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))

    def test_perfect_and_reversed(self):
        labels = np.array([0, 0, 1, 1])

        assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
        assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0

    def test_one_class_raises(self):
        with pytest.raises(ValueError, match="needs malignant and other cases"):
            roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.5, 0.9]))


class TestBootstrap:
    def test_interval_contains_auc_and_is_paired(self):
        generator = np.random.default_rng(0)
        labels = np.array([0] * 30 + [1] * 30)
        scores = labels * 0.3 + generator.random(60)

        samples = bootstrap_auc(labels, {"a": scores, "b": scores}, samples=300, seed=1)
        result = evaluate(labels, scores, samples["a"], operating_threshold=0.5,
                          target_sensitivity=0.9)

        assert samples["a"].shape == (300,)
        np.testing.assert_array_equal(samples["a"], samples["b"])
        assert result.auc_ci_low <= result.auc <= result.auc_ci_high
        assert result.auc_ci_low < result.auc_ci_high

    def test_same_seed_same_samples(self):
        labels = np.array([0, 1] * 10)
        scores = np.linspace(0, 1, 20)

        first = bootstrap_auc(labels, {"a": scores}, samples=100, seed=7)["a"]
        second = bootstrap_auc(labels, {"a": scores}, samples=100, seed=7)["a"]

        np.testing.assert_array_equal(first, second)


class TestOperatingPoints:
    def test_threshold_reaches_target_sensitivity(self):
        labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
        scores = np.array([0.1, 0.2, 0.35, 0.6, 0.3, 0.4, 0.7, 0.8, 0.9])

        threshold = threshold_for_sensitivity(labels, scores, 0.8)
        point = operating_point(labels, scores, threshold)

        # 4 of 5 malignant cases needed: the 4th highest malignant score.
        assert threshold == pytest.approx(0.4)
        assert point.sensitivity == pytest.approx(0.8)
        assert point.specificity == pytest.approx(0.75)

    def test_target_above_one_raises(self):
        with pytest.raises(ValueError, match="target_sensitivity"):
            threshold_for_sensitivity(np.array([0, 1]), np.array([0.1, 0.9]), 1.5)

    def test_roc_curve_ends_at_corners(self):
        fpr, tpr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.2, 0.6, 0.4, 0.9]))

        assert (fpr[0], tpr[0]) == (0.0, 0.0)
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
        assert np.all(np.diff(fpr) >= 0)


class TestPromotionAndEnsemble:
    @pytest.mark.parametrize(("candidate", "current", "margin", "expected"), [
        (0.80, 0.80, 0.0, True),
        (0.79, 0.80, 0.0, False),
        (0.79, 0.80, 0.02, True),
        (0.90, 0.80, 0.0, True),
    ])
    def test_is_not_worse(self, candidate, current, margin, expected):
        assert is_not_worse(candidate, current, margin) is expected

    def test_weights_follow_auc_above_chance(self):
        weights = ensemble_weights_from_auc({"a": 0.9, "b": 0.7, "c": 0.4})

        assert weights == {"a": pytest.approx(0.6667, abs=1e-4),
                           "b": pytest.approx(0.3333, abs=1e-4), "c": 0.0}

    def test_weights_equal_when_none_above_chance(self):
        assert ensemble_weights_from_auc({"a": 0.5, "b": 0.3}) == {"a": 0.5, "b": 0.5}

    def test_weighted_mean(self):
        mean = weighted_mean({"a": np.array([0.0, 1.0]), "b": np.array([1.0, 1.0])},
                             {"a": 3.0, "b": 1.0})

        np.testing.assert_allclose(mean, [0.25, 1.0])


class TestRocPlot:
    def test_png_written(self, tmp_path):
        labels = np.array([0, 1, 0, 1, 1])
        scores = np.array([0.1, 0.7, 0.4, 0.9, 0.3])
        fpr, tpr = roc_curve(labels, scores)

        path = draw_roc_curves({"candidate": (fpr, tpr, roc_auc(labels, scores))},
                               tmp_path / "roc" / "curve.png", "cnn")

        image = cv2.imread(str(path))
        assert image.shape == (480, 480, 3)
        assert (image != 255).any()
