"""What the ``classify`` stage logs for the report beyond metrics: predictions, a feature map and saliency.

Nothing here names a patient: rows are keyed by their dataset position, saliency files by their rank among the
chosen examples. Part of the ``classify`` stage (:mod:`medcl.stages.classify`, which re-exports
:func:`_log_report_material`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.metric_keys import model_tag
from medcl.tasks.primary import PrimaryModel

if TYPE_CHECKING:
    from pathlib import Path

    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl.stages.common import make_encoder, make_loader, make_transforms
from medcl.tasks.calibration import logits_to_probs
from medcl.tasks.embedding import reduce_2d
from medcl.tasks.saliency import (
    LinearOnEncoder,
    grad_cam,
    input_x_gradient,
    render_image_saliency,
    render_signal_saliency,
    select_examples,
)


def _log_report_material(ctx: RunContext, tracker: Tracker, primary: PrimaryModel,
                         features: dict[str, dict[str, np.ndarray]],
                         results: list[dict[str, Any]], split_idx: dict[str, np.ndarray], y: dict[str, np.ndarray],
                         subgroups: dict[str, np.ndarray], largest: float, max_examples: int = 4) -> None:
    """Log ``predictions_test.csv``, ``predictions_val.csv``, ``embedding_map.npz`` and ``saliency/`` for the report.

    Predictions are the primary model's test (and validation) probabilities at its operating point, keyed by the
    dataset row position (never a patient id); the validation ones are what ``medcl suggest-hard-pairs`` reads
    (choosing confusable pairs on the test set would leak it into the next run); the feature map is a t-SNE of the primary encoder's
    features of every labelled sample; saliency is Grad-CAM (images) or input × gradient (ECG) on
    up to ``max_examples`` correctly and incorrectly classified test samples.
    """
    out_dir = ctx.stage_dir("classify")
    tag = model_tag(primary.encoder, primary.kind, largest)
    tracker.log_params({"classify.primary_model": tag})
    probs, pred, correct, confidence = _split_predictions(ctx, primary, results, y["test"], largest)
    cols = {"site": ctx.data.column("site", split_idx["test"]), **subgroups}
    path = out_dir / "predictions_test.csv"
    _write_predictions(path, ctx.data.task, ctx.data.classes, split_idx["test"], y["test"], pred, probs, cols)
    tracker.log_artifact(path)
    if primary.arrays.get("val_logits") is not None and len(primary.arrays["val_logits"]):
        yv, iv = primary.arrays["val_y"], primary.arrays["val_index"]
        vprobs, vpred, _, _ = _split_predictions(ctx, primary, results, yv, largest, split="val")
        path = out_dir / "predictions_val.csv"
        _write_predictions(path, ctx.data.task, ctx.data.classes, iv, yv, vpred, vprobs, {})
        tracker.log_artifact(path)
    _log_embedding_map(ctx, tracker, primary, features, y, out_dir)
    _log_saliency(ctx, tracker, primary, split_idx, y["test"], pred, correct, confidence, max_examples, out_dir)


def _split_predictions(ctx: RunContext, primary: PrimaryModel, results: list[dict[str, Any]], yt: np.ndarray,
                       largest: float, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The primary model's predictions on ``split`` at its operating point (the threshold its result row recorded).

    Args:
        ctx: the run (task).
        primary: the primary model, with its ``<split>_logits``.
        results: every model's result rows (the primary's carries the chosen threshold).
        yt: the split's labels, ``(N,)`` or ``(N, K)`` multi-label (NaN: unknown).
        largest: the largest label fraction (the primary model's).
        split: ``"test"`` or ``"val"``.

    Returns:
        ``(probabilities (N, K) — binary as two columns —, predicted class (N,), correct (N,) bool,
        confidence of the predicted class (N,))``; multi-label: correct when every known label is, predicted the
        most probable label.
    """
    task = ctx.data.task
    probs = logits_to_probs(primary.arrays[f"{split}_logits"], task)
    row = next((r for r in results if r["model"] == primary.encoder and r["protocol"] == primary.kind
                and r["fraction"] == largest), None)
    thr = (row or {}).get("metrics", {}).get("_info", {}).get("threshold")
    thr = np.asarray(0.5 if thr is None else thr, dtype=np.float64)  # per label for multi-label
    if task == "binary":
        probs = np.stack([1 - probs, probs], 1)
        pred = (probs[:, 1] >= float(thr.reshape(-1)[0])).astype(np.int64)
        correct = pred == yt
    elif task == "multilabel":
        pred_sets = probs >= thr
        lab = np.isfinite(yt)
        correct = np.all(~lab | (pred_sets == (np.nan_to_num(yt) > 0.5)), axis=1)
        pred = probs.argmax(1)
    else:
        pred = probs.argmax(1)
        correct = pred == yt
    confidence = probs[np.arange(len(pred)), pred]
    return probs, pred, correct, confidence


def _write_predictions(path: Path, task: str, classes: list[str], idx: np.ndarray, yt: np.ndarray,
                       pred: np.ndarray, probs: np.ndarray, cols: dict[str, np.ndarray]) -> None:
    """Write ``predictions_<split>.csv``: dataset position, truth, prediction, probabilities and the ``cols``."""
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        ytrue_cols = [f"y_{c}" for c in classes] if task == "multilabel" else ["y_true"]
        w.writerow(["index", *ytrue_cols, "y_pred", *[f"p_{c}" for c in classes], *cols])
        for i in range(len(yt)):
            ytrue = ["" if not np.isfinite(v) else int(v) for v in yt[i]] if task == "multilabel" else [int(yt[i])]
            w.writerow([int(idx[i]), *ytrue, int(pred[i]), *[f"{v:.6g}" for v in probs[i]],
                        *[str(c[i]) for c in cols.values()]])


def _log_embedding_map(ctx: RunContext, tracker: Tracker, primary: PrimaryModel,
                       features: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], out_dir: Path) -> None:
    """Log ``embedding_map.npz``: a 2D map (t-SNE) of the primary encoder's features of ≤ 2000 labelled samples."""
    cfg, classes = ctx.cfg, ctx.data.classes
    feats = features.get(primary.encoder) or features.get("ssl") or features.get("random")
    if feats:
        splits = [s for s in ("train", "val", "test") if s in feats and len(feats[s])]
        x = np.concatenate([feats[s] for s in splits])
        labels = np.concatenate([y[s] for s in splits])
        split_names = np.concatenate([np.full(len(feats[s]), s) for s in splits])
        keep = np.random.default_rng(cfg.seed).permutation(len(x))[:2000]
        xy, method = reduce_2d(x[keep], seed=cfg.seed)
        np.savez(out_dir / "embedding_map.npz", xy=xy, label=labels[keep], split=split_names[keep].astype(str),
                 method=np.array(method), classes=np.array(classes, dtype=str))
        tracker.log_artifact(out_dir / "embedding_map.npz")


def _log_saliency(ctx: RunContext, tracker: Tracker, primary: PrimaryModel, split_idx: dict[str, np.ndarray],
                  yt: np.ndarray, pred: np.ndarray, correct: np.ndarray, confidence: np.ndarray, max_examples: int,
                  out_dir: Path) -> None:
    """Log ``saliency/``: PNGs of up to ``max_examples`` correct and incorrect test examples, with an index.

    Grad-CAM for images ``(B, C, *S)``, input × gradient for signals ``(B, leads, T)``; ``pred``, ``correct`` and
    ``confidence`` are the test predictions of :func:`_split_predictions`.
    """
    import torch


    cfg, data, task, classes = ctx.cfg, ctx.data, ctx.data.task, ctx.data.classes
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder, weight, bias = primary.parts(lambda w: make_encoder(base, weights=w), task, len(classes))
    encoder = encoder.to(ctx.device)
    weight, bias = weight.to(ctx.device), bias.to(ctx.device)
    ok, wrong = select_examples(correct, confidence, max_examples)
    chosen = [(int(i), True) for i in ok] + [(int(i), False) for i in wrong]
    if not chosen:
        return
    by_index = {it["index"]: it for it in data.items("test", labelled=True)}
    items = [by_index[int(split_idx["test"][i])] for i, _ in chosen]
    loader = make_loader(ctx, items, make_transforms(cfg, train=False), batch_size=len(items), shuffle=False,
                         train=False, distributed=False)
    batch = next(iter(loader))
    xb = batch["image"].float().to(ctx.device)
    target = torch.as_tensor(pred[[i for i, _ in chosen]], device=ctx.device)
    sal_dir = out_dir / "saliency"
    sal_dir.mkdir(exist_ok=True)
    method = "input × gradient" if xb.ndim == 3 else "Grad-CAM"
    if xb.ndim == 3:
        maps, _ = input_x_gradient(LinearOnEncoder(encoder, weight, bias), xb, target)
    else:
        maps, _ = grad_cam(encoder, weight, bias, xb, target)
    index = []
    for k, (i, is_ok) in enumerate(chosen):
        truth = ", ".join(c for c, v in zip(classes, yt[i]) if v > 0.5) if task == "multilabel" else classes[int(yt[i])]
        title = f"true: {truth} · predicted: {classes[int(pred[i])]} ({confidence[i]:.0%})"
        image = batch["image"][k].float().numpy()
        png = render_signal_saliency(image, maps[k], title, sampling_rate=(cfg.transforms.model_extra or {}).get(
            "sampling_rate")) if xb.ndim == 3 else render_image_saliency(image, maps[k], title)
        name = f"{'correct' if is_ok else 'incorrect'}_{k:02d}.png"
        (sal_dir / name).write_bytes(png)
        index.append({"file": name, "correct": is_ok, "true": truth, "predicted": classes[int(pred[i])],
                      "confidence": round(float(confidence[i]), 4), "method": method})
    (sal_dir / "index.json").write_text(json.dumps({"method": method, "examples": index}, indent=2))
    tracker.log_artifact(sal_dir, "saliency")
