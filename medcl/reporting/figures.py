"""The report's figures: matplotlib's object API (no pyplot, no global state), returned as PNG bytes.

Each function takes plain arrays read from MLflow artifacts and draws one figure; curve points
come from scikit-learn (``roc_curve``, ``precision_recall_curve``), the same definitions as the
logged AUROC / average precision.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _new(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(fig, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes with the Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def roc_pr_figure(y_onehot: np.ndarray, probs: np.ndarray, names: Sequence[str],
                  auroc: Mapping[str, float], auprc: Mapping[str, float]) -> bytes:
    """ROC and precision-recall curves, one line per class (one-vs-rest).

    Args:
        y_onehot: ``(N, K)`` 0/1 truth (NaN = unlabelled, skipped).
        probs: ``(N, K)`` predicted probabilities.
        names: ``K`` class names.
        auroc: the logged AUROC per class name (shown in the ROC legend).
        auprc: the logged average precision per class name (shown in the precision-recall legend).

    Returns:
        PNG bytes.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = _new(9.0, 4.0)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for k, name in enumerate(names):
        ok = np.isfinite(y_onehot[:, k])
        yk, pk = y_onehot[ok, k].astype(int), probs[ok, k]
        if yk.min(initial=1) == yk.max(initial=0):  # one class only: no curve
            continue
        color = PALETTE[k % len(PALETTE)]
        fpr, tpr, _ = roc_curve(yk, pk)
        ax_roc.plot(fpr, tpr, color=color, label=f"{name} (AUROC {auroc.get(name, float('nan')):.3f})")
        prec, rec, _ = precision_recall_curve(yk, pk)
        ax_pr.plot(rec, prec, color=color, drawstyle="steps-post",
                   label=f"{name} (AP {auprc.get(name, float('nan')):.3f})")
        ax_pr.axhline(yk.mean(), color=color, linestyle=":", linewidth=0.8)
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax_roc.set(xlabel="1 − specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
               title="ROC curve", xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(xlabel="sensitivity (recall)", ylabel="positive predictive value (precision)",
              title="Precision–recall curve (dotted: prevalence)", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
        ax.grid(alpha=0.3)
    return to_png(fig)


def confusion_figure(cm: np.ndarray, names: Sequence[str]) -> bytes:
    """Confusion matrix: counts, and the share of each true class (row %)."""
    k = len(names)
    fig = _new(1.3 + 0.9 * k, 1.0 + 0.8 * k)
    ax = fig.subplots()
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true")
    return to_png(fig)


def reliability_figure(before: Mapping | None, after: Mapping | None) -> bytes:
    """Reliability diagrams (accuracy per confidence bin vs the diagonal), before and after calibration.

    Args:
        before: ``reliability_diagram_data`` dict (``bin_edges``, ``bin_confidence``, ``bin_accuracy``,
            ``bin_count``, ``n_bins``, ``scheme``) of the uncalibrated probabilities, or ``None`` (no panel).
        after: the same for the calibrated probabilities, or ``None``.

    Returns:
        PNG bytes.
    """
    panels = [(t, d) for t, d in (("before calibration", before), ("after calibration", after)) if d]
    fig = _new(4.2 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, d) in zip(axes, panels):
        edges = np.asarray(d["bin_edges"], dtype=float)
        acc = np.asarray(d["bin_accuracy"], dtype=float)
        conf = np.asarray(d["bin_confidence"], dtype=float)
        count = np.asarray(d["bin_count"], dtype=float)
        ok = count > 0
        width = np.diff(edges)
        ax.bar(edges[:-1][ok], acc[ok], width=width[ok], align="edge", color="#1f77b4", alpha=0.75,
               edgecolor="white", label="observed accuracy")
        ax.bar(edges[:-1][ok], conf[ok] - acc[ok], bottom=acc[ok], width=width[ok], align="edge", color="#d62728",
               alpha=0.3, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted confidence", ylabel="observed accuracy",
               title=f"{title}\n({d.get('n_bins', len(acc))} {d.get('scheme', '')} bins)")
        ax.legend(fontsize=7, loc="upper left")
    return to_png(fig)


def embedding_figure(xy: np.ndarray, labels: np.ndarray, names: Sequence[str], split: np.ndarray | None,
                     method: str) -> bytes:
    """2-D feature map coloured by class; test samples drawn with a black edge."""
    fig = _new(6.0, 4.8)
    ax = fig.subplots()
    lab = np.asarray(labels)
    if lab.ndim == 2:  # multi-label: colour by the first positive label
        lab = np.where(np.nan_to_num(lab).sum(1) > 0, np.nan_to_num(lab).argmax(1), -1)
    lab = lab.astype(int)
    test = np.asarray(split) == "test" if split is not None else np.zeros(len(lab), bool)
    for k, name in enumerate(names):
        sel = lab == k
        if sel.any():
            c = PALETTE[k % len(PALETTE)]
            ax.scatter(xy[sel & ~test, 0], xy[sel & ~test, 1], s=14, color=c, alpha=0.7, label=name)
            ax.scatter(xy[sel & test, 0], xy[sel & test, 1], s=22, color=c, edgecolor="black", linewidth=0.8)
    if test.any():
        ax.scatter([], [], s=22, color="white", edgecolor="black", label="(black edge: test split)")
    ax.set(xticks=[], yticks=[], title=f"{method} of the encoder's features")
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)


def label_efficiency_figure(curves: Mapping[str, Sequence[tuple[float, float, float, float]]], metric: str) -> bytes:
    """Metric vs fraction of training labels, one line per model, with 95 % CI bars.

    Args:
        curves: ``{label: [(fraction, value, ci_low, ci_high), ...]}``.
        metric: axis label.
    """
    fig = _new(6.5, 4.2)
    ax = fig.subplots()
    for k, (label, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        f = np.array([p[0] for p in pts]) * 100
        v, lo, hi = (np.array([p[i] for p in pts], dtype=float) for i in (1, 2, 3))
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]).clip(min=0)
        ax.errorbar(f, v, yerr=err, marker="o", capsize=3, color=PALETTE[k % len(PALETTE)], label=label)
    ax.set_xscale("log")
    ticks = sorted({round(p[0] * 100, 3) for pts in curves.values() for p in pts})
    ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="share of training patients with labels (log scale)", ylabel=metric, title=f"{metric} vs labels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def probe_figure(auroc: Sequence[tuple[int, float]], rank: Sequence[tuple[int, float]],
                 selected_step: int | None, se: Sequence[float] | None = None,
                 label: str = "kNN macro AUROC (validation)") -> bytes:
    """Online probe AUROC (± its standard error, when given) and effective rank of the features against the step."""
    fig = _new(8.0, 3.0)
    a, b = fig.subplots(1, 2)
    if auroc:
        a.errorbar([s for s, _ in auroc], [v for _, v in auroc], yerr=se, marker="o", color="#1f77b4", capsize=2)
    a.axhline(0.5, color="grey", lw=0.8, ls=":")
    a.set_xlabel("optimiser step")
    a.set_ylabel(label)
    a.set_ylim(0.4, 1.0)
    if rank:
        b.plot([s for s, _ in rank], [v for _, v in rank], marker="o", color="#d62728")
    b.set_xlabel("optimiser step")
    b.set_ylabel("effective rank of the features")
    b.set_ylim(bottom=1.0)
    for ax in (a, b):
        if selected_step is not None:
            ax.axvline(selected_step, color="green", lw=1.0, ls="--", label="encoder handed on")
        ax.grid(alpha=0.3)
    if selected_step is not None:
        a.legend(loc="lower right", fontsize=8)
    return to_png(fig)
