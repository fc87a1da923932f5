"""``ks_distance``: scipy's two-sample KS statistic bit for bit, without scipy's p-value warning."""

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


@pytest.mark.parametrize("seed", range(4))
def test_equals_scipy_statistic_on_random_samples_with_ties(seed):
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(1, 300)), int(rng.integers(1, 300))) for _ in range(150)]
    sizes += [(12_000, 300), (10_000, 10_000), (10_001, 7)]  # both sides of scipy's exact/asymp switch
    for n_a, n_b in sizes:
        levels = int(rng.integers(2, 60))
        a = rng.integers(0, levels, n_a) / levels
        b = np.clip(rng.integers(0, levels, n_b) / levels + rng.choice([0.0, 0.01, 0.1, 0.5]), 0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = float(ks_2samp(a, b).statistic)
        assert ks_distance(a, b) == expected, (n_a, n_b)
        c = rng.random(n_a)  # continuous, no ties
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = float(ks_2samp(c, b).statistic)
        assert ks_distance(c, b) == expected, (n_a, n_b)
