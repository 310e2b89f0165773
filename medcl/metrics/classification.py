"""Classification metrics: numpy in, flat dict out.

One entry point, :func:`classification_metrics`, for the four task kinds medcl knows:

* ``"binary"``: ``y_true`` ``(N,)`` in {0, 1}; ``probs`` ``(N,)`` positive-class probability
  (``(N, 2)`` is accepted and its column 1 used).
* ``"multiclass"`` / ``"ordinal"``: ``y_true`` ``(N,)`` int in ``[0, K)``; ``probs`` ``(N, K)``.
* ``"multilabel"``: ``y_true`` ``(N, K)`` in {0, 1} (NaN or -1 = not labelled, masked per label);
  ``probs`` ``(N, K)`` independent per-label probabilities.

The returned dict is flat so it can be logged as metrics directly: summary keys (``auroc``,
``auprc``, ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``f1_macro``, ``accuracy``,
``qwk`` for ordinal), per-class keys ``"<metric>/<class name>"``, for named class pairs
``"auroc_pair/<a>_vs_<b>"`` (Hand & Till's one-vs-one AUROC, :func:`pair_auroc`), the operating point
``threshold`` (binary: a float; multilabel: a list per label) and ``notes`` — the only non-float value, a list of strings explaining
every NaN (a class absent from ``y_true`` gives NaN and a note, never an exception).

The ranking metrics are computed here with numpy (rank-sum AUROC, step-wise average precision)
so that thousands of bootstrap resamples stay fast; the tests check every one of them against
scikit-learn and MONAI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean, look_up

TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "ordinal")

#: keys of :func:`classification_metrics` that are not metrics (skipped by the bootstrap).
NON_METRIC_KEYS: frozenset[str] = frozenset({"notes", "threshold", "n_samples"})


def check_task(task: str, where: str = "task") -> str:
    """Return ``task`` if known, else raise :class:`ConfigError` with a "did you mean"."""
    return look_up(task, TASKS, what="task", where=where)


# ----------------------------------------------------------------------------- input handling


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise DataError(f"{name} has dtype object", where=name, fix="pass a numeric array")
    return arr


def prepare_inputs(y_true, probs, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise shapes.

    Returns:
        ``(y, p)``: binary ``(N,)`` int / ``(N,)`` float; multiclass & ordinal ``(N,)`` int /
        ``(N, K)`` float; multilabel ``(N, K)`` float with NaN for unlabelled / ``(N, K)`` float.
    """
    check_task(task)
    y = _as_numpy(y_true, "y_true")
    p = _as_numpy(probs, "probs").astype(np.float64)
    if y.shape[0] != p.shape[0]:
        raise DataError(
            f"y_true has {y.shape[0]} samples but probs has {p.shape[0]}",
            where="classification metrics",
            fix="pass labels and probabilities for the same samples, in the same order",
        )
    if not np.all(np.isfinite(p)):
        raise DataError(
            "probs contains NaN or infinite values",
            where="probs",
            fix="check the model outputs (a diverged model gives NaN logits)",
        )
    if task == "binary":
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, 1]
        elif p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.ndim != 1:
            raise DataError(
                f"binary probs must be (N,) or (N, 2), got {p.shape}",
                where="probs",
                fix="pass the positive-class probability per sample",
            )
        y = y.reshape(-1)
        if not np.all(np.isin(y, (0, 1))):
            raise DataError(
                f"binary labels must be 0 or 1, got values {np.unique(y)[:10].tolist()}",
                where="y_true",
                fix="encode the positive class as 1 and drop unlabelled samples",
            )
        return y.astype(np.int64), p
    if task == "multilabel":
        if y.ndim != 2 or p.ndim != 2 or y.shape != p.shape:
            raise DataError(
                f"multilabel y_true and probs must both be (N, K), got {y.shape} and {p.shape}",
                where="y_true/probs",
                fix="pass one column per label",
            )
        y = y.astype(np.float64).copy()
        y[y < 0] = np.nan
        bad = np.isfinite(y) & ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise DataError(
                "multilabel y_true must hold 0, 1, or NaN/-1 for unlabelled",
                where="y_true",
                fix="binarise the labels",
            )
        return y, p
    # multiclass / ordinal
    if p.ndim != 2:
        raise DataError(
            f"{task} probs must be (N, K), got {p.shape}",
            where="probs",
            fix="pass one probability column per class",
        )
    y = y.reshape(-1)
    if y.dtype.kind == "f" and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y))):
        raise DataError(f"{task} labels must be integers", where="y_true", fix="drop unlabelled samples")
    y = y.astype(np.int64)
    k = p.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise DataError(
            f"{task} labels must lie in [0, {k}), got range [{y.min()}, {y.max()}]",
            where="y_true",
            fix="drop unlabelled (-1) samples and make sure probs has one column per class",
        )
    return y, p


def _class_names(k: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise DataError(
            f"{len(names)} class names given for {k} classes",
            where="class_names",
            fix="give exactly one name per probability column",
        )
    return names


# ----------------------------------------------------------------------------- binary primitives


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank sum (ties count one half).

    Identical to ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC). NaN if one class is absent.

    Args:
        y: ``(N,)`` 0/1 labels.
        score: ``(N,)`` scores, higher = more positive.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds.

    Identical to ``sklearn.metrics.average_precision_score`` (no interpolation). NaN without positives.
    """
    y = np.asarray(y).astype(np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s = np.asarray(score, dtype=np.float64)[order]
    ys = y[order]
    # last index of every group of tied scores
    ends = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(ys)[ends]
    fp = (ends + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def _confusion_counts(y: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    y = y.astype(bool)
    pred = pred.astype(bool)
    tp = int(np.sum(y & pred))
    fp = int(np.sum(~y & pred))
    fn = int(np.sum(y & ~pred))
    tn = int(np.sum(~y & ~pred))
    return tp, fp, fn, tn


# ----------------------------------------------------------------------------- operating point

_RULE_RE = re.compile(r"^(sensitivity|specificity)\s*>=\s*([0-9]*\.?[0-9]+)$")
THRESHOLD_RULES: tuple[str, ...] = ("youden", "sensitivity>=X", "specificity>=X")


def choose_threshold(y, p, rule: str = "youden") -> float:
    """Choose a binary operating point on *validation* data.

    Rules:
        * ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 (Youden 1950).
        * ``"sensitivity>=0.9"``: the highest threshold whose sensitivity is at least 0.9
          (so specificity is as high as possible at that sensitivity).
        * ``"specificity>=0.95"``: the lowest threshold whose specificity is at least 0.95.

    A sample is called positive when ``p >= threshold``. Candidate thresholds are the distinct
    scores themselves.

    Args:
        y: ``(N,)`` 0/1 labels.
        p: ``(N,)`` positive-class probabilities (``(N, 2)`` accepted).
        rule: one of the rules above.

    Returns:
        The threshold (float). Choose it on validation data and pass it to
        :func:`classification_metrics` for the test set; choosing it on the test set is optimistic.
    """
    y, p = prepare_inputs(y, p, "binary")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"cannot choose a threshold with {n_pos} positives and {n_neg} negatives",
            where="choose_threshold",
            fix="choose the operating point on a validation set that holds both classes",
        )
    rule_s = str(rule).replace(" ", "").lower()
    # descending distinct thresholds; sens/spec for "p >= t"
    order = np.argsort(-p, kind="mergesort")
    ps = p[order]
    ys = y[order]
    ends = np.r_[np.nonzero(np.diff(ps))[0], ps.size - 1]
    thr = ps[ends]
    tp = np.cumsum(ys)[ends]
    fp = (ends + 1) - tp
    sens = tp / n_pos
    spec = 1.0 - fp / n_neg
    if rule_s == "youden":
        j = sens + spec - 1.0
        return float(thr[int(np.argmax(j))])  # first max = highest threshold among ties
    m = _RULE_RE.match(rule_s)
    if m is None:
        hint = did_you_mean(rule_s, ["youden", "sensitivity>=0.9", "specificity>=0.9"])
        raise ConfigError(
            f"unknown threshold rule {rule!r}",
            where="threshold",
            fix=f"{hint}use 'youden', 'sensitivity>=0.9' or 'specificity>=0.95'",
        )
    target = float(m.group(2))
    if m.group(1) == "sensitivity":
        ok = np.nonzero(sens >= target - 1e-12)[0]
        return float(thr[ok[0]])  # highest threshold reaching the sensitivity (always exists: last = all positive)
    ok = np.nonzero(spec >= target - 1e-12)[0]
    if ok.size == 0:
        return float(np.nextafter(thr[0], np.inf))  # call nothing positive
    return float(thr[ok[-1]])


def _resolve_threshold(threshold, y: np.ndarray, p: np.ndarray, notes: list[str]) -> float:
    if threshold is None:
        return 0.5
    if isinstance(threshold, str):
        t = choose_threshold(y, p, threshold)
        notes.append(
            f"threshold chosen by {threshold!r} on the evaluated data itself (optimistic); "
            "choose it on validation data with choose_threshold() and pass the number"
        )
        return t
    return float(threshold)


# ----------------------------------------------------------------------------- per task


def _binary_metrics(y, p, threshold, notes) -> dict:
    out: dict = {}
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        notes.append(f"only one class in y_true ({n_pos} positive, {n_neg} negative): AUROC is NaN")
    if n_pos == 0:
        notes.append("no positive sample: AUPRC and sensitivity are NaN")
    if n_neg == 0:
        notes.append("no negative sample: specificity is NaN")
    try:
        t = _resolve_threshold(threshold, y, p, notes)
    except DataError:
        t = 0.5
        notes.append("threshold rule needs both classes: used 0.5")
    pred = p >= t
    tp, fp, fn, tn = _confusion_counts(y, pred)
    sens = _safe_div(tp, tp + fn)
    spec = _safe_div(tn, tn + fp)
    out["auroc"] = binary_auroc(y, p)
    out["auprc"] = average_precision(y, p)
    out["sensitivity"] = sens
    out["specificity"] = spec
    out["balanced_accuracy"] = float(np.nanmean([sens, spec])) if np.isfinite([sens, spec]).any() else float("nan")
    out["ppv"] = _safe_div(tp, tp + fp)
    out["npv"] = _safe_div(tn, tn + fn)
    out["f1"] = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_div(2 * tn, 2 * tn + fn + fp)
    out["f1_macro"] = float(np.nanmean([out["f1"], f1_neg])) if np.isfinite([out["f1"], f1_neg]).any() else float("nan")
    out["accuracy"] = float(np.mean(pred == y.astype(bool))) if y.size else float("nan")
    out["threshold"] = t
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def quadratic_weighted_kappa(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2`` over classes ``0..k-1`` (Cohen 1968).

    Equals ``sklearn.metrics.cohen_kappa_score(y, pred, labels=range(k), weights="quadratic")``.
    NaN when the expected disagreement is zero (e.g. one class only).
    """
    o = np.zeros((k, k), dtype=np.float64)
    np.add.at(o, (y, pred), 1.0)
    n = o.sum()
    if n == 0:
        return float("nan")
    e = np.outer(o.sum(1), o.sum(0)) / n
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2
    denom = float((w * e).sum())
    if denom == 0:
        return float("nan")
    return float(1.0 - (w * o).sum() / denom)


def pair_auroc(y: np.ndarray, p: np.ndarray, a: int, b: int) -> float:
    """How well the scores tell class ``a`` from class ``b``, on the samples of these two classes only.

    Hand & Till (2001), "A simple generalisation of the area under the ROC curve for multiple class classification
    problems": ``A(a, b) = (A(a|b) + A(b|a)) / 2``, where ``A(a|b)`` is the AUROC of ``p[:, a]`` for "is ``a``"
    among the samples labelled ``a`` or ``b``. The mean of ``A`` over all pairs is scikit-learn's
    ``roc_auc_score(..., multi_class="ovo")``. A confusable pair (two grades, two look-alike tissues) can sit at
    chance while the one-vs-rest macro AUROC is high. NaN when either class is absent.

    Args:
        y: ``(N,)`` class indices.
        p: ``(N, K)`` probabilities.
        a: the first class's index.
        b: the second class's index.
    """
    m = (y == a) | (y == b)
    return float(np.mean([binary_auroc(y[m] == a, p[m, a]), binary_auroc(y[m] == b, p[m, b])]))


def _multiclass_metrics(y, p, names, task, notes, pairs=()) -> dict:
    n, k = p.shape
    pred = p.argmax(1)
    counts = np.bincount(y, minlength=k)
    absent = [names[c] for c in range(k) if counts[c] == 0]
    if absent:
        notes.append(f"classes absent from y_true: {', '.join(absent)} — their AUROC/AUPRC/sensitivity are NaN")
    out: dict = {}
    per_auroc, per_ap, per_sens, per_spec, per_f1 = [], [], [], [], []
    for c in range(k):
        yc = y == c
        pc = pred == c
        tp, fp, fn, tn = _confusion_counts(yc, pc)
        per_auroc.append(binary_auroc(yc, p[:, c]))
        per_ap.append(average_precision(yc, p[:, c]))
        per_sens.append(_safe_div(tp, tp + fn))
        per_spec.append(_safe_div(tn, tn + fp))
        per_f1.append(_safe_div(2 * tp, 2 * tp + fp + fn))
    out["auroc"] = _nanmean(per_auroc)
    out["auprc"] = _nanmean(per_ap)
    out["balanced_accuracy"] = _nanmean(per_sens)  # mean recall over classes present
    out["sensitivity"] = out["balanced_accuracy"]
    out["specificity"] = _nanmean(per_spec)
    out["f1_macro"] = _nanmean(per_f1)
    out["accuracy"] = float(np.mean(pred == y)) if n else float("nan")
    if task == "ordinal":
        out["qwk"] = quadratic_weighted_kappa(y, pred, k)
        if not np.isfinite(out["qwk"]):
            notes.append("quadratic-weighted kappa undefined (no expected disagreement): NaN")
    for c in range(k):
        out[f"auroc/{names[c]}"] = per_auroc[c]
        out[f"auprc/{names[c]}"] = per_ap[c]
        out[f"sensitivity/{names[c]}"] = per_sens[c]
        out[f"specificity/{names[c]}"] = per_spec[c]
        out[f"f1/{names[c]}"] = per_f1[c]
    for a, b in pairs:
        i, j = (_class_index(x, names) for x in (a, b))
        out[f"auroc_pair/{names[i]}_vs_{names[j]}"] = (pair_auroc(y, p, i, j) if counts[i] and counts[j]
                                                       else float("nan"))
    return out


def _class_index(name: str, names: list[str]) -> int:
    if name not in names:
        raise ConfigError(f"class pair names {name!r}, which is not a class{did_you_mean(name, names, paren=True)}",
                          where="classify.pairs", fix=f"name two of {', '.join(names)}")
    return names.index(name)


def _multilabel_metrics(y, p, names, threshold, notes) -> dict:
    n, k = p.shape
    if isinstance(threshold, str):
        thr = np.full(k, 0.5)
        for j in range(k):
            lab = np.isfinite(y[:, j])
            if np.unique(y[lab, j]).size == 2:
                thr[j] = choose_threshold(y[lab, j], p[lab, j], threshold)
        notes.append(
            f"per-label thresholds chosen by {threshold!r} on the evaluated data itself (optimistic); "
            "choose them on validation data and pass the numbers"
        )
    else:
        thr = np.broadcast_to(np.asarray(0.5 if threshold is None else threshold, dtype=np.float64), (k,))
    out: dict = {}
    per = {m: [] for m in ("auroc", "auprc", "sensitivity", "specificity", "f1", "accuracy")}
    for j in range(k):
        lab = np.isfinite(y[:, j])
        yj = y[lab, j].astype(bool)
        pj = p[lab, j]
        if yj.sum() == 0 or yj.sum() == yj.size:
            notes.append(f"label {names[j]}: only one class among {yj.size} labelled samples — AUROC NaN")
        predj = pj >= thr[j]
        tp, fp, fn, tn = _confusion_counts(yj, predj)
        per["auroc"].append(binary_auroc(yj, pj))
        per["auprc"].append(average_precision(yj, pj))
        per["sensitivity"].append(_safe_div(tp, tp + fn))
        per["specificity"].append(_safe_div(tn, tn + fp))
        per["f1"].append(_safe_div(2 * tp, 2 * tp + fp + fn))
        per["accuracy"].append(_safe_div(tp + tn, yj.size))
    out["auroc"] = _nanmean(per["auroc"])
    out["auprc"] = _nanmean(per["auprc"])
    out["sensitivity"] = _nanmean(per["sensitivity"])
    out["specificity"] = _nanmean(per["specificity"])
    bal = [
        _nanmean([s, sp]) if np.isfinite([s, sp]).any() else float("nan")
        for s, sp in zip(per["sensitivity"], per["specificity"])
    ]
    out["balanced_accuracy"] = _nanmean(bal)
    out["f1_macro"] = _nanmean(per["f1"])
    out["accuracy"] = _nanmean(per["accuracy"])  # label-wise accuracy = 1 - Hamming loss
    full = np.all(np.isfinite(y), axis=1)
    if full.any():
        exact = np.all((p[full] >= thr[None, :]) == (y[full] > 0.5), axis=1)
        out["subset_accuracy"] = float(exact.mean())
    else:
        out["subset_accuracy"] = float("nan")
    for m, vals in per.items():
        for j in range(k):
            out[f"{m}/{names[j]}"] = vals[j]
    out["threshold"] = [float(t) for t in thr]
    return out


def classification_metrics(
    y_true,
    probs,
    task: str,
    *,
    threshold: float | str | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    pairs: Sequence[Sequence[str]] = (),
) -> dict:
    """All classification metrics for one set of predictions.

    Args:
        y_true: labels, see the module docstring for shapes per task.
        probs: probabilities, ``(N,)`` binary or ``(N, K)``.
        task: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"ordinal"``.
        threshold: operating point. Binary: a number (default 0.5) or a rule for
            :func:`choose_threshold` applied to these same data (optimistic — prefer choosing on
            validation and passing the number). Multilabel: a number, ``(K,)`` numbers per label, or
            a rule applied per label (returned as the list ``threshold``).
            Multiclass/ordinal: ignored (argmax).
        class_names: ``K`` names for per-class keys (default ``"0"``, ``"1"``, ...). Binary: unused.
        pairs: multiclass/ordinal: class-name pairs ``(a, b)`` whose one-vs-one AUROC is added as
            ``"auroc_pair/<a>_vs_<b>"`` (:func:`pair_auroc`; NaN, with the absent-class note, when one is absent).

    Returns:
        Flat dict. Always: ``auroc`` (macro one-vs-rest for multiclass/ordinal, macro over
        labels for multilabel), ``auprc`` (average precision, same averaging),
        ``balanced_accuracy``, ``sensitivity``, ``specificity`` (macro one-vs-rest at the
        operating point), ``f1_macro``, ``accuracy``, ``n_samples`` and ``notes`` (list of str).
        Binary adds ``f1`` (positive class), ``ppv``, ``npv``, ``threshold``; multilabel adds
        ``threshold`` (list per label) and ``subset_accuracy``; ordinal adds ``qwk``
        (quadratic-weighted kappa of the argmax). Multilabel ``accuracy`` is label-wise.
        Per-class values are under ``"<metric>/<name>"``. Undefined values are NaN with an
        explaining note.
    """
    if pairs and task in ("binary", "multilabel"):
        raise ConfigError(f"class pairs are for multiclass and ordinal tasks, not {task}", where="pairs",
                          fix="drop the pairs (a binary task's AUROC is already its pair's)")
    y, p = prepare_inputs(y_true, probs, task)
    notes: list[str] = []
    if task == "binary":
        out = _binary_metrics(y, p, threshold, notes)
    elif task == "multilabel":
        out = _multilabel_metrics(y, p, _class_names(p.shape[1], class_names), threshold, notes)
    else:
        out = _multiclass_metrics(y, p, _class_names(p.shape[1], class_names), task, notes, pairs)
    out["n_samples"] = int(p.shape[0])
    out["notes"] = notes
    return out
