"""Summaries of segmentation results: per-class Dice/HD95, a patient-level CI of mean Dice, overlay figures.

The per-case values come from :mod:`medcl.metrics.segmentation`; these functions aggregate them for the
``segment`` stage's metrics and draw a slice with the reference and predicted contours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from medcl.errors import DataError


def summarise_per_class(dice: np.ndarray, hd95: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-class and mean Dice/HD95 from per-case values, as :func:`medcl.metrics.segmentation_metrics`.

    Args:
        dice: ``(N, C')`` Dice per case and (foreground) class; NaN where undefined.
        hd95: ``(N, C')`` 95th-percentile Hausdorff distance, same layout.
        names: ``C'`` class names.

    Returns:
        ``{"dice", "hd95", "dice/<name>", "hd95/<name>", "n_cases/<name>"}``: a class's value averages
        the cases where it is defined; the summary averages the classes.
    """
    dice = np.asarray(dice, np.float64).reshape(-1, len(names))
    hd95 = np.asarray(hd95, np.float64).reshape(-1, len(names))
    out: dict[str, Any] = {}
    per_d, per_h = [], []
    for j, name in enumerate(names):
        d, h = dice[:, j], hd95[:, j]
        per_d.append(float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"))
        per_h.append(float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"))
        out[f"dice/{name}"], out[f"hd95/{name}"] = per_d[-1], per_h[-1]
        out[f"n_cases/{name}"] = int(np.isfinite(d).sum())
    out["dice"] = float(np.nanmean(per_d)) if np.isfinite(per_d).any() else float("nan")
    out["hd95"] = float(np.nanmean(per_h)) if np.isfinite(per_h).any() else float("nan")
    return out


def case_mean(values: np.ndarray) -> np.ndarray:
    """``(N, C')`` per-class values → ``(N,)`` mean over the classes defined in each case (NaN if none)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    n = ok.sum(axis=1)
    s = np.where(ok, v, 0.0).sum(axis=1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def mean_dice_ci(case_dice: np.ndarray, patients: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, float | int]:
    """Mean per-case Dice with a patient-level percentile bootstrap CI (cluster bootstrap).

    Cases whose ground truth has no foreground (Dice undefined, NaN) are left out; the remaining
    cases are resampled by patient with :class:`medcl.metrics.bootstrap.PatientResampler` (the
    resampler behind :func:`~medcl.metrics.bootstrap_ci`), so several scans of one patient move
    together. Unlike ``bootstrap_ci`` no resample is skipped: a resample of one patient is a valid
    draw for a mean (``bootstrap_ci`` drops single-class resamples, right for AUROC only).

    Args:
        case_dice: ``(N,)`` per-case Dice (NaN = undefined).
        patients: ``(N,)`` patient index per case.
        n_boot: bootstrap resamples (0: no CI).
        seed: resampling seed.
        alpha: the CI covers ``1 - alpha`` (default 95 %).

    Returns:
        ``{"value", "ci_low", "ci_high", "n_cases", "n_patients", "n_boot"}`` (NaN bounds with fewer
        than 2 patients or ``n_boot == 0``).

    Raises:
        DataError: ``case_dice`` and ``patients`` differ in shape.
    """
    # lazy: scipy.stats (~1 s, through medcl.metrics); tasks.segmentation and the logged segmenter need no CIs
    from medcl.metrics.bootstrap import PatientResampler

    d = np.asarray(case_dice, np.float64)
    g = np.asarray(patients)
    if d.shape != g.shape:
        raise DataError(f"{d.shape[0]} Dice values for {g.shape[0]} patients", where="mean_dice_ci",
                        fix="pass one patient per case")
    keep = np.isfinite(d)
    d, g = d[keep], g[keep]
    n_pat = int(np.unique(g).size)
    out: dict[str, float | int] = {"value": float(d.mean()) if d.size else float("nan"),
                                   "ci_low": float("nan"), "ci_high": float("nan"),
                                   "n_cases": int(d.size), "n_patients": n_pat, "n_boot": 0}
    if n_pat >= 2 and n_boot > 0:
        resampler = PatientResampler(g, d.size, seed)
        means = np.fromiter((d[resampler.draw()].mean() for _ in range(int(n_boot))), np.float64, int(n_boot))
        lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out.update(ci_low=float(lo), ci_high=float(hi), n_boot=int(n_boot))
    return out


def metric_name(name: str) -> str:
    """A class name made safe for MLflow metric keys (letters, digits, ``_ - . /`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(name)) or "class"


def pick_slice(mask: np.ndarray) -> int:
    """Index along the last axis of a 3D mask ``(X, Y, Z)`` to show: most foreground, else the middle."""
    m = np.asarray(mask)
    area = (m > 0).reshape(-1, m.shape[-1]).sum(axis=0)
    return int(area.argmax()) if area.max() > 0 else m.shape[-1] // 2


def overlay_figure(image: np.ndarray, truth: np.ndarray, preds: dict[str, np.ndarray], title: str = "",
                   dice: dict[str, float] | None = None, origin: str = "upper"):
    """Image slice with the ground-truth (green) and predicted (red) contours, one panel per model.

    Args:
        image: ``(H, W)`` slice of the first image channel, in display orientation (rows, columns).
        truth: ``(H, W)`` label slice.
        preds: model name → ``(H, W)`` predicted label slice.
        title: figure title (no patient identifiers).
        dice: model name → Dice of the case (shown in the panel titles).
        origin: ``"upper"`` (2D images: row 0 on top) or ``"lower"`` (RAS volume slices shown as
            ``(Y, X)``: anterior up).

    Returns:
        A matplotlib ``Figure`` (Agg backend; the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * max(1, len(preds)), 3.4))
    axes = fig.subplots(1, max(1, len(preds)), squeeze=False)[0]
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    for ax, (name, pred) in zip(axes, preds.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin=origin)
        for lab in np.unique(np.asarray(truth)):
            if lab > 0:
                ax.contour((np.asarray(truth) == lab).astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        for lab in np.unique(np.asarray(pred)):
            if lab > 0:
                ax.contour((np.asarray(pred) == lab).astype(float), levels=[0.5], colors="red", linewidths=1.0,
                           linestyles="--")
        d = (dice or {}).get(name)
        ax.set_title(f"{name}" + (f"  Dice {d:.2f}" if d is not None and np.isfinite(d) else ""), fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{title}  (green: truth, red dashed: prediction)", fontsize=9)
    fig.tight_layout()
    return fig
