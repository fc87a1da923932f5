"""``ks_distance``: the two-sample KS statistic (scipy's), without scipy's p-value warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import ks_2samp

from tru_dist.unlearn.metrics import ks_distance


def test_hand_cases():
    # F_a - F_b at 0.2: 2/3 - 0 (the largest gap); at 0.3: 1 - 1/2
    assert ks_distance(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.35])) == 2 / 3
    # ties: the ECDFs are right-continuous, F_a(1) - F_b(1) = 2/3 - 1/3
    assert ks_distance(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 2.0])) == 1 / 3
    assert ks_distance(np.array([0.5, 0.5]), np.array([0.5])) == 0.0
    assert ks_distance(np.array([]), np.array([1.0])) == 0.0
    assert np.isnan(ks_distance(np.array([np.nan, 1.0]), np.array([1.0])))


def test_no_warning_where_scipy_warns():
    a, b = np.arange(5.0), np.array([0.0, 1.0, 2.0, 3.0, 4.5])
    with pytest.warns(RuntimeWarning, match="Exact calculation unsuccessful"):
        expected = ks_2samp(a, b).statistic
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ks_distance(a, b) == expected == 0.2


def test_a_two_dimensional_sample_is_refused_in_one_line():
    """A 2-D sample used to reach ks_2samp and fail there ("Array shapes are incompatible for
    broadcasting"); the metric is over one sample of ranks, so it is refused by name, with the fix."""
    shapes = r"\(got shapes \(2, 2\) and \(3,\)\)"
    with pytest.raises(ValueError, match=r"^ks_distance: both samples must be 1-D " + shapes):
        ks_distance(np.ones((2, 2)), np.arange(3.0))
    assert ks_distance(np.array([[0.1, 0.2, 0.3]]).ravel(), np.array([0.25, 0.35])) == 2 / 3
