"""Kernel MMD two-sample test (medcl.metrics.shift) against its definition (Gretton et al. 2012) and the
behaviour of a valid test."""

from __future__ import annotations

import numpy as np
import pytest

from medcl.errors import DataError
from medcl.metrics.shift import median_bandwidth, mmd_permutation_test, shift_test


def _brute_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Lemma 6 of Gretton et al. (2012), written as the three double sums."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_statistic_and_bandwidth_follow_the_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 3)), rng.normal(0.5, 1.0, size=(7, 3))
    z = np.concatenate([x, y])
    dists = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(len(z)) if i != j]
    sigma = median_bandwidth(z)
    assert sigma == pytest.approx(np.median(dists))
    res = mmd_permutation_test(x, y, n_permutations=50)
    assert res["bandwidth"] == pytest.approx(sigma)
    assert res["mmd2"] == pytest.approx(_brute_mmd2(x, y, sigma), abs=1e-12)


def test_permutation_null_is_the_statistic_of_relabelled_samples():
    """Every permuted value is the brute-force MMD² of some split of the pooled sample into 9 and 7; the p-value
    counts as Phipson & Smyth (2010)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(7, 2))
    res = mmd_permutation_test(x, y, n_permutations=30, seed=3)
    assert 1 / 31 <= res["p_value"] <= 1
    # recompute the null by brute force with the same random permutations
    from medcl.metrics.shift import _permuted_mmd2, _sq_dists

    z = np.concatenate([x, y])
    sigma = median_bandwidth(z)
    kernel = np.exp(-_sq_dists(z) / (2 * sigma ** 2))
    null = _permuted_mmd2(kernel, 9, 30, np.random.default_rng(3))
    g = np.random.default_rng(3)
    for b in range(30):
        p = g.permutation(16)[:9]
        rest = np.setdiff1d(np.arange(16), p)
        assert null[b] == pytest.approx(_brute_mmd2(z[p], z[rest], sigma), abs=1e-12)
    assert res["p_value"] == pytest.approx((1 + np.sum(null >= res["mmd2"])) / 31)


def test_detects_a_shift_and_is_calibrated_without_one():
    rng = np.random.default_rng(2)
    shifted = mmd_permutation_test(rng.normal(size=(40, 8)), rng.normal(0.8, 1.0, size=(40, 8)), n_permutations=200)
    assert shifted["p_value"] < 0.01
    # under the null the p-value is (close to) uniform: about 5 % of 40 tests fall below 0.05
    ps = [mmd_permutation_test(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), n_permutations=100, seed=s)["p_value"]
          for s in range(40)]
    assert sum(p < 0.05 for p in ps) <= 6 and 0.3 < float(np.mean(ps)) < 0.7


def test_shift_test_units_standardisation_and_reading():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(60, 5)) * np.array([1, 10, 100, 1, 1])
    ref_pat = np.repeat(np.arange(20), 3)
    new = ref[:30] + np.array([0, 0, 0, 3, 0])  # a shift in one feature of small scale
    new_pat = np.repeat(np.arange(10), 3)
    res = shift_test(new, ref, new_patients=new_pat, reference_patients=ref_pat, n_permutations=200)
    assert res["unit"] == "patient" and (res["n_x"], res["n_y"]) == (10, 20)
    assert res["shifted"] and "differ" in res["reading"]
    # too few patients on one side: per sample, and the reading says the p-value is optimistic
    few = shift_test(new[:6], ref, new_patients=new_pat[:6], reference_patients=ref_pat, n_permutations=50)
    assert few["unit"] == "sample" and "optimistic" in few["reading"]
    same = shift_test(ref, ref, new_patients=ref_pat, reference_patients=ref_pat, n_permutations=200)
    assert not same["shifted"] and "No shift" in same["reading"]


def test_bad_input():
    with pytest.raises(DataError, match="at least 2"):
        mmd_permutation_test(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(DataError, match="cannot be compared"):
        mmd_permutation_test(np.zeros((4, 3)), np.zeros((5, 2)))
