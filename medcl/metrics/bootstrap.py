"""Patient-level bootstrap confidence intervals and subgroup breakdowns.

Samples of one patient are correlated (several scans, slides, ECGs of the same person), so a
sample-level bootstrap gives intervals that are too narrow. Here *patients* are resampled with
replacement and every sample of a drawn patient comes along (cluster bootstrap; Field & Welsh
2007). Percentile intervals (Efron & Tibshirani 1993). Resamples whose labels hold a single
class (AUROC undefined) are skipped and counted.

Index construction is vectorised (samples are grouped once; each resample is a ``np.repeat``),
and the metrics in :mod:`medcl.metrics.classification` are plain numpy, so 1000 resamples of a
few hundred samples take about a second.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from medcl.errors import DataError
from medcl.metrics.classification import NON_METRIC_KEYS, classification_metrics, prepare_inputs

log = logging.getLogger(__name__)


class BootstrapCI(tuple):
    """``(point, lo, hi)`` that also carries ``n_valid`` and ``n_skipped`` resample counts.

    Unpacks like a 3-tuple: ``point, lo, hi = bootstrap_ci(...)``.
    """

    def __new__(cls, point: float, lo: float, hi: float, n_valid: int, n_skipped: int):
        """Build the tuple ``(point, lo, hi)`` and attach the resample counts."""
        obj = super().__new__(cls, (float(point), float(lo), float(hi)))
        obj.n_valid = int(n_valid)
        obj.n_skipped = int(n_skipped)
        return obj

    @property
    def point(self) -> float:
        """The metric on the original (not resampled) data."""
        return self[0]

    @property
    def lo(self) -> float:
        """Lower percentile bound of the CI."""
        return self[1]

    @property
    def hi(self) -> float:
        """Upper percentile bound of the CI."""
        return self[2]

    def __repr__(self) -> str:
        """All five numbers, e.g. ``BootstrapCI(point=0.81, lo=0.74, hi=0.88, n_valid=998, n_skipped=2)``."""
        return (
            f"BootstrapCI(point={self[0]:.4g}, lo={self[1]:.4g}, hi={self[2]:.4g}, "
            f"n_valid={self.n_valid}, n_skipped={self.n_skipped})"
        )


class PatientResampler:
    """Draws patient-level bootstrap index arrays.

    Args:
        groups: ``(N,)`` patient id per sample (any hashable dtype), or ``None`` for a plain
            sample-level bootstrap (every sample its own group).
        seed: seed of the ``numpy.random.Generator``; the same seed gives the same resamples.
    """

    def __init__(self, groups, n_samples: int, seed: int = 0) -> None:
        """Group the sample indices by patient and seed the generator.

        Raises:
            DataError: ``groups`` does not have ``n_samples`` entries.
        """
        if groups is None:
            codes = np.arange(n_samples)
        else:
            g = np.asarray(groups)
            if g.shape[0] != n_samples:
                raise DataError(
                    f"groups has {g.shape[0]} entries for {n_samples} samples",
                    where="groups",
                    fix="pass one patient id per sample",
                )
            _, codes = np.unique(g, return_inverse=True)
        self.order = np.argsort(codes, kind="mergesort")
        self.counts = np.bincount(codes)
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.n_groups = self.counts.size
        self.rng = np.random.default_rng(seed)

    def draw(self) -> np.ndarray:
        """One resample: indices of all samples of ``n_groups`` patients drawn with replacement."""
        chosen = self.rng.integers(0, self.n_groups, size=self.n_groups)
        lens = self.counts[chosen]
        offsets = np.repeat(self.starts[chosen] - (np.cumsum(lens) - lens), lens)
        return self.order[offsets + np.arange(lens.sum())]


def _degenerate(y: np.ndarray) -> bool:
    """A resample is degenerate when its labels hold a single class (every label, if 2-D)."""
    if y.ndim == 1:
        return np.unique(y).size < 2
    yy = np.where(np.isfinite(y), y, np.nan)
    lo = np.nanmin(yy, axis=0)
    hi = np.nanmax(yy, axis=0)
    return not np.any(hi > lo)


def _bootstrap_runs(
    metric_fn: Callable,
    y: np.ndarray,
    p: np.ndarray,
    groups,
    n_boot: int,
    seed: int,
) -> tuple[list, int]:
    if n_boot < 1:
        raise DataError(f"n_boot must be >= 1, got {n_boot}", where="n_boot", fix="use e.g. 1000")
    resampler = PatientResampler(groups, y.shape[0], seed)
    values = []
    skipped = 0
    for _ in range(n_boot):
        idx = resampler.draw()
        yb = y[idx]
        if _degenerate(yb):
            skipped += 1
            continue
        values.append(metric_fn(yb, p[idx]))
    return values, skipped


def _percentile_ci(vals: np.ndarray, alpha: float) -> tuple[float, float, int]:
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan"), 0
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi), int(vals.size)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    probs,
    groups=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Patient-level percentile bootstrap CI of one scalar metric.

    Args:
        metric_fn: ``metric_fn(y, p) -> float`` on numpy arrays (e.g.
            :func:`medcl.metrics.classification.binary_auroc`).
        y_true: ``(N,)`` or ``(N, K)`` labels.
        probs: ``(N,)`` or ``(N, K)`` predictions.
        groups: ``(N,)`` patient id per sample; ``None`` = sample-level bootstrap.
        n_boot: number of resamples.
        alpha: ``1 - alpha`` interval (0.05 → 95 %).
        seed: RNG seed (same seed → same interval).

    Returns:
        :class:`BootstrapCI` ``(point, lo, hi)`` with ``n_valid`` and ``n_skipped``. Resamples with
        a single class, or where the metric is NaN, are not valid; ``lo``/``hi`` are NaN if none is.
    """
    y = np.asarray(y_true.detach().cpu().numpy() if hasattr(y_true, "detach") else y_true)
    p = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs)
    point = float(metric_fn(y, p))
    values, skipped = _bootstrap_runs(metric_fn, y, p, groups, n_boot, seed)
    vals = np.asarray(values, dtype=np.float64)
    lo, hi, n_valid = _percentile_ci(vals, alpha)
    n_skip = n_boot - n_valid
    if skipped:
        log.info("bootstrap: %d of %d resamples had a single class and were skipped", skipped, n_boot)
    return BootstrapCI(point, lo, hi, n_valid, n_skip)


def bootstrap_se(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    probs,
    groups=None,
    n_boot: int = 200,
    seed: int = 0,
) -> float:
    """Patient-level bootstrap standard error of one scalar metric (Efron & Tibshirani 1993, §6.2).

    The standard deviation (``ddof=1``) of the metric over ``n_boot`` resamples of the patients; resamples with a
    single class or a NaN metric are left out. ``nan`` when fewer than two are valid.

    Args:
        metric_fn: ``metric_fn(y, p) -> float`` on numpy arrays.
        y_true: ``(N,)`` or ``(N, K)`` labels.
        probs: ``(N,)`` or ``(N, K)`` predictions.
        groups: ``(N,)`` patient id per sample; ``None`` = sample-level bootstrap.
        n_boot: number of resamples.
        seed: RNG seed.
    """
    y, p = np.asarray(y_true), np.asarray(probs)
    values, _ = _bootstrap_runs(metric_fn, y, p, groups, n_boot, seed)
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.std(ddof=1)) if vals.size >= 2 else float("nan")


def clustered_mean_se(values, groups) -> float:
    """Standard error of the mean of ``values`` ``(N,)`` when the samples of one patient are not independent.

    The cluster-robust (sandwich) estimate of a ratio mean over the patients ``groups``, with the ``G / (G - 1)``
    small-sample factor (Cameron & Miller 2015, eq. 11); with one sample per patient it is the usual
    ``s / sqrt(N)`` with ``ddof=1``. ``nan`` entries are left out; ``nan`` below two patients.
    """
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    patients, idx = np.unique(g, return_inverse=True)
    n_g = len(patients)
    if n_g < 2:
        return float("nan")
    resid = np.bincount(idx, weights=v - v.mean(), minlength=n_g)
    return float(np.sqrt(n_g / (n_g - 1) * np.sum(resid ** 2)) / len(v))


def metrics_with_ci(
    y_true,
    probs,
    task: str,
    groups=None,
    *,
    threshold=None,
    class_names: Sequence[str] | None = None,
    pairs: Sequence[Sequence[str]] = (),
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict]:
    """:func:`classification_metrics` with a patient-level bootstrap CI on every metric.

    A threshold *rule* (e.g. ``"youden"``) is resolved once on the full data and then held
    fixed across resamples (the CI is for the metric at that operating point).

    Returns:
        ``{name: {"value", "ci_low", "ci_high", "n_boot_valid", "n_boot_skipped"}}`` for every
        float metric of :func:`classification_metrics`, plus ``"_info"``:
        ``{"notes", "threshold", "n_samples", "n_patients", "n_boot", "alpha"}``.
    """
    y, p = prepare_inputs(y_true, probs, task)
    point = classification_metrics(y, p, task, threshold=threshold, class_names=class_names, pairs=pairs)
    fixed_threshold = point.get("threshold", threshold)

    def fn(yb, pb):
        return classification_metrics(yb, pb, task, threshold=fixed_threshold, class_names=class_names, pairs=pairs)

    values, skipped = _bootstrap_runs(fn, y, p, groups, n_boot, seed)
    out: dict[str, dict] = {}
    for name, value in point.items():
        if name in NON_METRIC_KEYS:
            continue
        vals = np.asarray([v[name] for v in values], dtype=np.float64)
        lo, hi, n_valid = _percentile_ci(vals, alpha)
        out[name] = {
            "value": float(value),
            "ci_low": lo,
            "ci_high": hi,
            "n_boot_valid": n_valid,
            "n_boot_skipped": n_boot - n_valid,
        }
    n_patients = y.shape[0] if groups is None else int(np.unique(np.asarray(groups)).size)
    out["_info"] = {
        "notes": list(point["notes"]) + ([f"{skipped} of {n_boot} resamples had a single class and were skipped"]
                                         if skipped else []),
        "threshold": fixed_threshold,
        "n_samples": int(y.shape[0]),
        "n_patients": n_patients,
        "n_boot": n_boot,
        "alpha": alpha,
    }
    return out


def subgroup_metrics(
    y_true,
    probs,
    task: str,
    groups=None,
    *,
    groups_by: Mapping[str, Sequence],
    threshold=None,
    class_names: Sequence[str] | None = None,
    min_samples: int = 20,
    min_patients: int = 5,
    n_boot: int = 0,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """Metrics per site / per subgroup.

    Args:
        y_true: labels, as :func:`classification_metrics`.
        probs: probabilities, as :func:`classification_metrics`.
        task: task kind, as :func:`classification_metrics`.
        groups: ``(N,)`` patient id per sample (counts patients; bootstrap clusters).
        groups_by: ``{breakdown name: (N,) subgroup value per sample}``, e.g.
            ``{"site": sites, "sex": sexes}``.
        threshold: operating point, as :func:`classification_metrics`. Use one fixed number (chosen
            on validation) so subgroups are compared at the same operating point.
        class_names: ``K`` names for per-class keys.
        min_samples: subgroups with fewer samples are listed but not computed.
        min_patients: subgroups with fewer patients are listed but not computed.
        n_boot: 0 → point estimates only; > 0 → :func:`metrics_with_ci` per subgroup.
        alpha: CIs cover ``1 - alpha`` (with ``n_boot > 0``).
        seed: bootstrap seed (the same for every subgroup).

    Returns:
        ``{breakdown: {subgroup value (str): {"n_samples", "n_patients", "computed", "reason",
        "metrics"}}}`` where ``metrics`` is the :func:`classification_metrics` dict (``n_boot=0``)
        or the :func:`metrics_with_ci` dict, and ``reason`` says why a group was not computed.
    """
    y, p = prepare_inputs(y_true, probs, task)
    n = y.shape[0]
    pats = np.arange(n) if groups is None else np.asarray(groups)
    if pats.shape[0] != n:
        raise DataError(f"groups has {pats.shape[0]} entries for {n} samples", where="groups",
                        fix="pass one patient id per sample")
    result: dict[str, dict[str, dict]] = {}
    for breakdown, values in groups_by.items():
        vals = np.asarray(values)
        if vals.shape[0] != n:
            raise DataError(
                f"subgroup column {breakdown!r} has {vals.shape[0]} entries for {n} samples",
                where=f"groups_by[{breakdown!r}]",
                fix="pass one subgroup value per sample",
            )
        table: dict[str, dict] = {}
        for level in sorted({str(v) for v in vals.tolist()}):
            sel = np.array([str(v) == level for v in vals.tolist()])
            table[level] = _subgroup_entry(
                y[sel], p[sel], task, pats[sel], None if groups is None else pats[sel], threshold=threshold,
                class_names=class_names, min_samples=min_samples, min_patients=min_patients, n_boot=n_boot,
                alpha=alpha, seed=seed,
            )
        result[breakdown] = table
    return result


def _subgroup_entry(
    y: np.ndarray, p: np.ndarray, task: str, pats: np.ndarray, clusters: np.ndarray | None, *, threshold,
    class_names: Sequence[str] | None, min_samples: int, min_patients: int, n_boot: int, alpha: float, seed: int,
) -> dict:
    """The :func:`subgroup_metrics` entry of one subgroup (its samples only; ``clusters`` = bootstrap groups)."""
    n_s = int(y.shape[0])
    n_p = int(np.unique(pats).size)
    entry = {"n_samples": n_s, "n_patients": n_p, "computed": False, "reason": "", "metrics": {}}
    if n_s < min_samples or n_p < min_patients:
        entry["reason"] = (
            f"too few to compute ({n_s} samples, {n_p} patients; need >= {min_samples} "
            f"samples and >= {min_patients} patients)"
        )
    elif n_boot > 0:
        entry["metrics"] = metrics_with_ci(
            y, p, task, clusters, threshold=threshold,
            class_names=class_names, n_boot=n_boot, alpha=alpha, seed=seed,
        )
        entry["computed"] = True
    else:
        entry["metrics"] = classification_metrics(
            y, p, task, threshold=threshold, class_names=class_names
        )
        entry["computed"] = True
    return entry
