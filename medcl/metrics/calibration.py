"""Calibration metrics: ECE (equal-width and adaptive bins), MCE, Brier score, NLL, reliability data.

Which estimator is used is part of every result, because an ECE number means nothing without it
(Nixon et al. 2019, "Measuring Calibration in Deep Learning"):

* ``"binary"``: predicted risk ``p(y=1)`` against the observed positive rate per bin
  (torchmetrics' ``BinaryCalibrationError`` convention).
* ``"multiclass"`` / ``"ordinal"``: top-label (confidence) ECE of Guo et al. 2017 —
  ``max_k p_k`` against the accuracy of the argmax.
* ``"multilabel"``: the binary estimator per label; the summary is the mean over labels and
  each label is reported as ``"ece/<name>"``.

Bins: ``"equal-width"`` splits [0, 1] into ``n_bins`` intervals ``[b_i, b_{i+1})`` (the last one
closed); ``"adaptive"`` (equal-mass) sorts the confidences and splits them into ``n_bins`` groups of
(nearly) equal size like ``np.array_split``. ECE = sum_b (n_b / N) |acc_b - conf_b|;
MCE = max_b |acc_b - conf_b| over non-empty bins.

On small test sets the binned ECE is biased upwards; :func:`ece_noise_floor` simulates what a perfectly
calibrated model with the same confidences would show there, so an ECE can be read against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean
from medcl.metrics.classification import _class_names, prepare_inputs

SCHEMES: tuple[str, ...] = ("equal-width", "adaptive")
_EPS = 1e-12


def _check_scheme(scheme: str) -> str:
    if scheme in SCHEMES:
        return scheme
    alias = {"equal_width": "equal-width", "uniform": "equal-width", "equal-mass": "adaptive",
             "equal_mass": "adaptive", "quantile": "adaptive"}
    if scheme in alias:
        return alias[scheme]
    raise ConfigError(f"unknown binning scheme {scheme!r}", where="scheme",
                      fix=f"{did_you_mean(scheme, SCHEMES)}use 'equal-width' or 'adaptive'")


def _check_bins(n_bins: int) -> int:
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}", where="n_bins", fix="use e.g. 15")
    return int(n_bins)


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, scheme: str = "equal-width"
) -> dict:
    """Bin confidences and return per-bin statistics.

    Args:
        confidence: ``(M,)`` predicted probabilities in [0, 1].
        correct: ``(M,)`` 0/1 outcomes (label, or argmax correct).
        n_bins: number of bins.
        scheme: ``"equal-width"`` or ``"adaptive"``.

    Returns:
        ``{"bin_edges" (n_bins+1,), "bin_confidence" (n_bins,), "bin_accuracy" (n_bins,),
        "bin_count" (n_bins,), "n_bins", "scheme"}``; empty bins have NaN confidence/accuracy.
        Adaptive edges lie halfway between neighbouring bins' extreme confidences, with 0 and 1
        at the ends.
    """
    scheme = _check_scheme(scheme)
    n_bins = _check_bins(n_bins)
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct, dtype=np.float64).reshape(-1)
    m = conf.size
    if scheme == "equal-width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    else:
        order = np.argsort(conf, kind="mergesort")
        sizes = np.full(n_bins, m // n_bins)
        sizes[: m % n_bins] += 1
        idx = np.empty(m, dtype=np.int64)
        idx[order] = np.repeat(np.arange(n_bins), sizes)
        sorted_conf = conf[order]
        ends = np.cumsum(sizes)
        edges = np.empty(n_bins + 1)
        edges[0], edges[-1] = 0.0, 1.0
        for b in range(1, n_bins):
            e = ends[b - 1]
            if 0 < e < m:
                edges[b] = 0.5 * (sorted_conf[e - 1] + sorted_conf[e])
            else:
                edges[b] = edges[b - 1]
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=corr, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        bin_acc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    return {
        "bin_edges": edges,
        "bin_confidence": bin_conf,
        "bin_accuracy": bin_acc,
        "bin_count": count.astype(np.int64),
        "n_bins": n_bins,
        "scheme": scheme,
    }


def _ece_mce_from_bins(b: dict) -> tuple[float, float]:
    count = b["bin_count"].astype(np.float64)
    total = count.sum()
    if total == 0:
        return float("nan"), float("nan")
    nz = count > 0
    gap = np.abs(b["bin_accuracy"][nz] - b["bin_confidence"][nz])
    return float(np.sum(gap * count[nz]) / total), float(gap.max())


def _confidence_outcome(y: np.ndarray, p: np.ndarray, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(confidence, outcome) pairs: one pair for binary/multiclass, one per label for multilabel."""
    if task == "binary":
        return [(p, y.astype(np.float64))]
    if task == "multilabel":
        pairs = []
        for j in range(p.shape[1]):
            lab = np.isfinite(y[:, j])
            pairs.append((p[lab, j], y[lab, j]))
        return pairs
    return [(p.max(1), (p.argmax(1) == y).astype(np.float64))]


def _estimator(task: str) -> str:
    return {"binary": "binary", "multilabel": "per-label"}.get(task, "top-label")


def expected_calibration_error(
    y_true,
    probs,
    task: str = "multiclass",
    *,
    n_bins: int = 15,
    scheme: str = "equal-width",
    class_names: Sequence[str] | None = None,
) -> dict:
    """Expected and maximum calibration error (Naeini et al. 2015; Guo et al. 2017).

    Args:
        y_true: labels (shapes as :func:`medcl.metrics.classification.classification_metrics`).
        probs: ``(N,)`` binary or ``(N, K)`` probabilities.
        task: ``"binary"``, ``"multiclass"``, ``"ordinal"`` or ``"multilabel"``.
        n_bins: number of bins.
        scheme: ``"equal-width"`` or ``"adaptive"`` (equal-mass).
        class_names: ``K`` label names for the multilabel per-label keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"ece", "mce", "n_bins", "scheme", "estimator"}``; multilabel adds ``"ece/<label>"`` and
        ``"mce/<label>"`` (``ece``/``mce`` are then means over labels).
    """
    y, p = prepare_inputs(y_true, probs, task)
    scheme = _check_scheme(scheme)
    pairs = _confidence_outcome(y, p, task)
    eces, mces = [], []
    for conf, outcome in pairs:
        e, m = _ece_mce_from_bins(calibration_bins(conf, outcome, n_bins, scheme))
        eces.append(e)
        mces.append(m)
    out = {
        "ece": float(np.nanmean(eces)) if np.isfinite(eces).any() else float("nan"),
        "mce": float(np.nanmean(mces)) if np.isfinite(mces).any() else float("nan"),
        "n_bins": int(n_bins),
        "scheme": scheme,
        "estimator": _estimator(task),
    }
    if task == "multilabel":
        names = _class_names(p.shape[1], class_names)
        for j, name in enumerate(names):
            out[f"ece/{name}"] = eces[j]
            out[f"mce/{name}"] = mces[j]
    return out


def ece_noise_floor(
    y_true,
    probs,
    task: str = "multiclass",
    *,
    n_bins: int = 15,
    scheme: str = "equal-width",
    draws: int = 200,
    seed: int = 0,
) -> dict:
    """The ECE a perfectly calibrated model with these confidences would show on this many cases.

    Binned ECE is biased upwards on small sets: even a perfectly calibrated model has a positive ECE, because
    each bin's accuracy is a noisy frequency. Following the simulation of Roelofs et al. 2022 ("Mitigating
    bias in calibration error estimation", AISTATS), each draw replaces every outcome by a Bernoulli draw with
    the stated confidence as its probability (for the top-label estimator: "the argmax is right" with
    probability ``max_k p_k``), which is what a perfectly calibrated model would produce, and measures the ECE
    of that. An observed ECE within the draws' spread cannot be told apart from perfect calibration on this
    set: a calibrator cannot be seen to lower it.

    Args:
        y_true: labels (only their missing entries matter: multilabel NaNs are left out as in the ECE).
        probs: ``(N,)`` binary or ``(N, K)`` probabilities.
        task: ``"binary"``, ``"multiclass"``, ``"ordinal"`` or ``"multilabel"``.
        n_bins: number of bins (as the ECE it is compared with).
        scheme: ``"equal-width"`` or ``"adaptive"``.
        draws: simulated test sets.
        seed: seed of the draws.

    Returns:
        ``{"mean", "q95" (95 % of the draws are at or below it), "draws", "n_bins", "scheme"}``; NaN mean and
        q95 when no outcome is labelled.

    Raises:
        ConfigError: ``draws < 1`` or an unknown ``scheme``.
    """
    y, p = prepare_inputs(y_true, probs, task)
    scheme = _check_scheme(scheme)
    if int(draws) < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}", where="ece_noise_floor.draws", fix="use e.g. 200")
    rng = np.random.default_rng(seed)
    confs = [conf for conf, _ in _confidence_outcome(y, p, task) if conf.size]
    if not confs:  # nothing labelled (multilabel, every entry missing): no ECE to compare with either
        return {"mean": float("nan"), "q95": float("nan"), "draws": 0, "n_bins": int(n_bins), "scheme": scheme}
    eces = np.empty(draws)
    for d in range(draws):
        per_pair = [_ece_mce_from_bins(calibration_bins(c, rng.random(c.size) < c, n_bins, scheme))[0]
                    for c in confs]
        eces[d] = np.mean(per_pair)
    return {"mean": float(eces.mean()), "q95": float(np.quantile(eces, 0.95)), "draws": int(draws),
            "n_bins": int(n_bins), "scheme": scheme}


def brier_score(y_true, probs, task: str = "multiclass") -> float:
    """Brier score (Brier 1950).

    Binary: ``mean((p - y)^2)``. Multiclass/ordinal: ``mean_i sum_k (p_ik - onehot_ik)^2`` (range
    [0, 2]). Multilabel: mean over labels of the binary score (unlabelled entries skipped).
    """
    y, p = prepare_inputs(y_true, probs, task)
    if task == "binary":
        return float(np.mean((p - y) ** 2))
    if task == "multilabel":
        scores = [np.mean((p[np.isfinite(y[:, j]), j] - y[np.isfinite(y[:, j]), j]) ** 2)
                  for j in range(p.shape[1]) if np.isfinite(y[:, j]).any()]
        return float(np.mean(scores)) if scores else float("nan")
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _log_losses(y: np.ndarray, p: np.ndarray, task: str, eps: float) -> np.ndarray:
    """Per-entry log losses of prepared inputs: ``(N,)``, or ``(N, K)`` for multilabel (NaN where unlabelled)."""
    if task in ("binary", "multilabel"):
        pc = np.clip(p, eps, 1 - eps)
        with np.errstate(invalid="ignore"):
            ll = -np.where(y > 0.5, np.log(pc), np.log1p(-pc))
        return ll if task == "binary" else np.where(np.isfinite(y), ll, np.nan)
    return -np.log(np.clip(p[np.arange(p.shape[0]), y], eps, 1.0))


def negative_log_likelihood(y_true, probs, task: str = "multiclass", eps: float = 1e-15) -> float:
    """Mean negative log-likelihood (log loss); probabilities are clipped to ``[eps, 1 - eps]``.

    Multilabel: mean over labels of the binary NLL (unlabelled entries skipped).
    """
    y, p = prepare_inputs(y_true, probs, task)
    ll = _log_losses(y, p, task, eps)
    if task != "multilabel":
        return float(np.mean(ll))
    per = [np.nanmean(ll[:, j]) for j in range(ll.shape[1]) if np.isfinite(ll[:, j]).any()]
    return float(np.mean(per)) if per else float("nan")


def per_sample_nll(y_true, probs, task: str = "multiclass", eps: float = 1e-15) -> np.ndarray:
    """The log loss of each sample, ``(N,)``.

    Binary, multiclass, ordinal: its mean is :func:`negative_log_likelihood`. Multilabel: the mean over the
    sample's labelled entries (``nan`` with none), whose mean over samples weights labels by how often they are
    labelled, unlike the per-label mean of the NLL.
    """
    y, p = prepare_inputs(y_true, probs, task)
    ll = _log_losses(y, p, task, eps)
    if task != "multilabel":
        return ll
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(ll, 1) / np.isfinite(ll).sum(1)


def reliability_diagram_data(
    y_true, probs, n_bins: int = 15, scheme: str = "equal-width", task: str = "multiclass"
) -> dict:
    """Per-bin data for a reliability diagram (Niculescu-Mizil & Caruana 2005; Guo et al. 2017).

    Uses the same confidence/outcome pairs as :func:`expected_calibration_error`; for
    multilabel all (sample, label) pairs are pooled into one diagram.

    Returns:
        ``{"bin_edges", "bin_confidence", "bin_accuracy", "bin_count", "n_bins", "scheme",
        "estimator"}`` as plain lists (JSON-ready); empty bins hold ``None``.
    """
    y, p = prepare_inputs(y_true, probs, task)
    pairs = _confidence_outcome(y, p, task)
    conf = np.concatenate([c for c, _ in pairs])
    outcome = np.concatenate([o for _, o in pairs])
    b = calibration_bins(conf, outcome, n_bins, scheme)

    def _list(a):
        return [None if not np.isfinite(v) else float(v) for v in a]

    return {
        "bin_edges": [float(v) for v in b["bin_edges"]],
        "bin_confidence": _list(b["bin_confidence"]),
        "bin_accuracy": _list(b["bin_accuracy"]),
        "bin_count": [int(v) for v in b["bin_count"]],
        "n_bins": b["n_bins"],
        "scheme": b["scheme"],
        "estimator": _estimator(task),
    }


def calibration_metrics(y_true, probs, task: str = "multiclass", *, n_bins: int = 15) -> dict:
    """The calibration summary medcl logs: both ECE schemes, MCE, Brier and NLL.

    Returns:
        ``{"ece", "ece_adaptive", "mce", "mce_adaptive", "brier", "nll", "n_bins", "estimator"}``
        where ``ece``/``mce`` use equal-width bins.
    """
    ew = expected_calibration_error(y_true, probs, task, n_bins=n_bins, scheme="equal-width")
    ad = expected_calibration_error(y_true, probs, task, n_bins=n_bins, scheme="adaptive")
    return {
        "ece": ew["ece"],
        "ece_adaptive": ad["ece"],
        "mce": ew["mce"],
        "mce_adaptive": ad["mce"],
        "brier": brier_score(y_true, probs, task),
        "nll": negative_log_likelihood(y_true, probs, task),
        "n_bins": int(n_bins),
        "estimator": ew["estimator"],
    }
