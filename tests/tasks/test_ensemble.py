"""Ensemble of model probabilities."""

import numpy as np
import pytest

from tasks.ensemble import Category, combine_scores


class TestCombineScores:
    def test_weighted_mean_category_and_agreement(self):
        results = combine_scores(
            {"a": np.array([0.9, 0.1]), "b": np.array([0.7, 0.2]), "c": np.array([0.2, 0.3])},
            {"a": 2.0, "b": 1.0, "c": 1.0}, threshold=0.5)

        assert results[0].probability == pytest.approx((1.8 + 0.7 + 0.2) / 4)
        assert results[0].category is Category.SUSPICIOUS
        assert results[0].models_agreeing == 2
        assert results[1].probability == pytest.approx((0.2 + 0.2 + 0.3) / 4)
        assert results[1].category is Category.NOT_SUSPICIOUS
        assert results[1].models_agreeing == 3
        assert results[1].models_total == 3

    def test_probability_equal_to_threshold_is_suspicious(self):
        [result] = combine_scores({"a": [0.5]}, {}, threshold=0.5)
        assert result.category is Category.SUSPICIOUS

    def test_results_are_python_floats(self):
        [result] = combine_scores({"a": np.array([0.25], dtype=np.float32)}, {}, 0.5)
        assert type(result.probability) is float

    def test_out_of_range_probability_raises(self):
        with pytest.raises(ValueError, match=r"finite numbers in \[0, 1\]"):
            combine_scores({"a": [1.5]}, {}, 0.5)

    def test_nan_probability_raises(self):
        with pytest.raises(ValueError, match="finite"):
            combine_scores({"a": [float("nan")]}, {}, 0.5)

    def test_zero_weights_raise(self):
        with pytest.raises(ValueError, match="sum to zero"):
            combine_scores({"a": [0.5]}, {"a": 0.0}, 0.5)

    def test_unequal_lengths_raise(self):
        with pytest.raises(ValueError):
            combine_scores({"a": [0.5], "b": [0.5, 0.4]}, {}, 0.5)
