"""Dataset shift between two sets of embeddings: kernel maximum mean discrepancy with a permutation test.

Gretton, Borgwardt, Rasch, Schölkopf & Smola, "A Kernel Two-Sample Test", JMLR 13 (2012): the unbiased
estimate of MMD² (their Lemma 6) with a Gaussian kernel ``k(a, b) = exp(-||a - b||² / (2 σ²))`` whose
bandwidth ``σ`` is the median pairwise distance of the pooled sample (their section 8, "median heuristic").
The p-value is that of a permutation test on the pooled sample, counted as Phipson & Smyth (2010) recommend,
``(1 + #{permuted statistic >= observed}) / (1 + n_permutations)``, so it is never 0.

The units must be exchangeable under "no shift": :func:`shift_test` takes one row per *patient* (the mean of
their samples' embeddings) when there are enough patients, since samples of one patient are not independent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medcl.errors import DataError


def _sq_dists(z: np.ndarray) -> np.ndarray:
    """``(n, n)`` squared Euclidean distances of the rows of ``z`` (float64, clipped at 0)."""
    sq = (z * z).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)


def median_bandwidth(z: np.ndarray) -> float:
    """The median heuristic: the median of the pairwise distances between distinct rows of ``z`` ``(n, D)``."""
    d = np.sqrt(_sq_dists(np.asarray(z, dtype=np.float64)))
    off = d[~np.eye(len(d), dtype=bool)]
    med = float(np.median(off)) if off.size else 0.0
    return med if med > 0 else 1.0


def mmd2_unbiased(kernel: np.ndarray, n_x: int) -> float:
    """Unbiased MMD² from the pooled kernel matrix ``(n_x + n_y, n_x + n_y)`` whose first ``n_x`` rows are X.

    ``MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (n(n-1)) - 2 Σ_{i,j} k(x_i, y_j) / (mn)``.
    """
    m, n = n_x, kernel.shape[0] - n_x
    kxx, kyy, kxy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def _permuted_mmd2(kernel: np.ndarray, m: int, n_permutations: int, rng: np.random.Generator,
                   chunk: int = 200) -> np.ndarray:
    """:func:`mmd2_unbiased` of ``n_permutations`` random relabellings of the pooled sample.

    Computed as quadratic forms of the kernel with a zero diagonal and X-indicator columns (no
    per-permutation copy of the kernel), ``chunk`` permutations at a time.
    """
    total, n = kernel.shape[0], kernel.shape[0] - m
    k0 = kernel - np.diag(np.diag(kernel))
    out = np.empty(n_permutations)
    for start in range(0, n_permutations, chunk):
        b = min(chunk, n_permutations - start)
        a = np.zeros((total, b))
        for j in range(b):
            a[rng.permutation(total)[:m], j] = 1.0
        ka = k0 @ a  # (total, b)
        row = k0.sum(1)
        xx = (a * ka).sum(0)  # a' K0 a
        xy = ((1.0 - a) * ka).sum(0)  # b' K0 a
        yy = row.sum() - 2.0 * xy - xx  # 1' K0 1 = xx + 2 xy + yy
        out[start:start + b] = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)
    return out


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, *, n_permutations: int = 1000, seed: int = 0,
                         bandwidth: float | None = None) -> dict[str, Any]:
    """Two-sample test of ``x`` ``(m, D)`` against ``y`` ``(n, D)``.

    Returns:
        ``{"mmd2", "p_value", "bandwidth", "n_x", "n_y", "n_permutations", "null_mean", "null_q95"}``.

    Raises:
        DataError: fewer than 2 rows on a side, or different feature sizes.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"embeddings of shapes {x.shape} and {y.shape} cannot be compared", where="shift test",
                        fix="pass two (n, D) arrays with the same D")
    if len(x) < 2 or len(y) < 2:
        raise DataError(f"a shift test needs at least 2 units on each side (got {len(x)} and {len(y)})",
                        where="shift test", fix="evaluate on more patients")
    z = np.concatenate([x, y])
    d2 = _sq_dists(z)
    sigma = float(bandwidth) if bandwidth else median_bandwidth(z)
    kernel = np.exp(-d2 / (2.0 * sigma * sigma))
    m = len(x)
    observed = mmd2_unbiased(kernel, m)
    null = _permuted_mmd2(kernel, m, n_permutations, np.random.default_rng(seed))
    p_value = (1.0 + float((null >= observed).sum())) / (1.0 + n_permutations)
    return {"mmd2": observed, "p_value": p_value, "bandwidth": sigma, "n_x": m, "n_y": len(y),
            "n_permutations": int(n_permutations), "null_mean": float(null.mean()) if n_permutations else None,
            "null_q95": float(np.quantile(null, 0.95)) if n_permutations else None}


def _per_unit(features: np.ndarray, units: np.ndarray | None) -> np.ndarray:
    if units is None:
        return features
    keys = np.unique(units)
    return np.stack([features[units == k].mean(0) for k in keys])


def shift_test(new: np.ndarray, reference: np.ndarray, *, new_patients: np.ndarray | None = None,
               reference_patients: np.ndarray | None = None, min_patients: int = 5, max_units: int = 1000,
               n_permutations: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Is the new data's embedding distribution different from the training data's?

    Both sides are standardised with the reference's per-feature mean and standard deviation; each patient is
    one unit (the mean of their embeddings) when both sides have at least ``min_patients`` patients, else each
    sample is (and the result says the p-value is then optimistic). At most ``max_units`` units per side, drawn
    at random with ``seed``.

    Args:
        new: ``(N, D)`` embeddings of the new data.
        reference: ``(M, D)`` embeddings of the training data.
        new_patients: ``(N,)`` patient keys of the new data (any hashable values), or ``None``.
        reference_patients: ``(M,)`` patient keys of the reference, or ``None``.
        min_patients: fewest patients on each side for a per-patient test.
        max_units: at most this many units per side (a random subset beyond).
        n_permutations: permutations of the MMD test.
        seed: seed of the subsets and permutations.
        alpha: significance level of ``"shifted"``.

    Returns:
        :func:`mmd_permutation_test`'s dict plus ``"unit"`` (``patient`` | ``sample``), ``"shifted"``
        (``p_value < alpha``), ``"alpha"`` and ``"reading"`` (one plain-language paragraph).
    """
    new, reference = np.asarray(new, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    mean, std = reference.mean(0), reference.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    a, b = (new - mean) / std, (reference - mean) / std
    by_patient = (new_patients is not None and reference_patients is not None
                  and len(np.unique(new_patients)) >= min_patients and len(np.unique(reference_patients)) >= min_patients)
    if by_patient:
        a, b = _per_unit(a, np.asarray(new_patients)), _per_unit(b, np.asarray(reference_patients))
    rng = np.random.default_rng(seed)
    if len(a) > max_units:
        a = a[np.sort(rng.choice(len(a), max_units, replace=False))]
    if len(b) > max_units:
        b = b[np.sort(rng.choice(len(b), max_units, replace=False))]
    res = mmd_permutation_test(a, b, n_permutations=n_permutations, seed=seed)
    unit = "patient" if by_patient else "sample"
    res.update(unit=unit, alpha=alpha, shifted=bool(res["p_value"] < alpha))
    res["reading"] = _reading(res)
    return res


def _reading(r: dict[str, Any]) -> str:
    units = f"{r['n_x']} new and {r['n_y']} training {r['unit']}s"
    if r["shifted"]:
        text = (f"The new data look different to the model: the encoder's features of the new data differ from those "
                f"of the training data more than chance explains (kernel MMD² = {r['mmd2']:.4f}, permutation p = "
                f"{r['p_value']:.3g}, {units}). Expect performance and calibration here to differ from the internal "
                "validation: trust the metrics measured on this site, and check the per-subgroup table and the "
                "calibration before using the model's probabilities.")
    else:
        text = (f"No shift was detected between the new data and the training data (kernel MMD² = {r['mmd2']:.4f}, "
                f"permutation p = {r['p_value']:.3g}, {units}). This does not prove they are alike: with few "
                "patients only large differences can be detected.")
    if r["unit"] == "sample":
        text += (" Each sample counted as one unit (too few patients on one side to test per patient); samples of "
                 "one patient are not independent, so this p-value is optimistic.")
    return text
