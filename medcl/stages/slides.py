"""The ``slides`` stage: slide-level classification from the frozen encoder's tile features (multiple-instance).

Every slide row of the manifest is a bag of its tiles (the tiling plan of ``data.wsi``). The frozen encoder — the
pretrained one, and a random-init one as the baseline — embeds every tile once; the features are saved per slide
(``slides/features_<model>.npz``: one array per manifest row). Each pooling of :mod:`medcl.tasks.mil` (gated
attention MIL, Ilse et al. 2018; mean pooling) is trained on the training slides, one slide per step, and predicts
the test slides. Reported per encoder, pooling and label fraction (``slides.label_fractions``: nested, stratified shares of the
training patients), with a patient-bootstrap 95 % CI: the slide-level AUROC (macro
one-vs-rest for more than two classes) and accuracy, and the same per patient when probabilities are averaged over a
patient's slides. Artifacts: ``slides/results.json`` and ``slides/predictions_test.csv`` (manifest rows, each
slide's probabilities and its most-attended tile; never patient ids or paths). Runs on rank 0.

``slides/attention/row<N>.png``: for up to :data:`MAPS` test slides, the slide's thumbnail (its smallest pyramid
level) with each tile shaded by the attention the pretrained encoder's attention MIL gave it — the report's
"Slides" section shows them. Not yet: label fractions and calibration of the slide model.
"""

from __future__ import annotations

import csv
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medcl.engine.inference import extract_features
from medcl.errors import ConfigError, DataError
from medcl.metric_keys import CI_BOUNDS, metric_key, slides_tag
from medcl.metrics.bootstrap import bootstrap_ci
from medcl.metrics.classification import binary_auroc
from medcl.readers import read
from medcl.readers.wsi import slide_info
from medcl.stages.common import make_encoder, make_loader, make_transforms, seed_everything
from medcl.tasks.fractions import label_fraction_patients
from medcl.tasks.mil import POOLINGS, fit_bags, predict_bags

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker

log = logging.getLogger(__name__)
METRICS = ("auroc", "accuracy")
#: test slides whose attention map is drawn
MAPS = 8


def attention_map(path: str, tiles: list[dict[str, Any]], attention: np.ndarray, out: Any, title: str) -> None:
    """Save the slide's thumbnail with each tile shaded by its attention (``tiles`` from the tiling plan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    info = slide_info(path)
    thumb = np.moveaxis(read(path).array, 0, -1).astype(np.uint8)  # the smallest level
    scale = thumb.shape[1] / info.dimensions[0][0]
    a = np.asarray(attention, dtype=np.float64)
    a = a / a.max() if a.max() > 0 else a
    fig, ax = plt.subplots(figsize=(4, 4 * thumb.shape[0] / thumb.shape[1]))
    ax.imshow(thumb)
    cmap = plt.get_cmap("inferno")
    for t, w in zip(tiles, a):
        side = t["size"] * info.downsamples[t["level"]] * scale
        ax.add_patch(Rectangle((t["x"] * scale, t["y"] * scale), side, side, color=cmap(w), alpha=0.55 * w + 0.1,
                               linewidth=0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Binary AUROC of class 1, or the macro one-vs-rest AUROC over the classes present, of ``p`` ``(N, K)``."""
    if p.shape[1] == 2:
        return binary_auroc(y == 1, p[:, 1])
    per = [binary_auroc(y == c, p[:, c]) for c in range(p.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per)) if per else float("nan")


def _metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
    return auroc(y, p) if name == "auroc" else float(np.mean(p.argmax(1) == y))


def _evaluate(tracker: Tracker, name: str, pooling: str, fraction: float, y: np.ndarray, probs: np.ndarray,
              patients: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Slide- and patient-level (probabilities averaged over a patient's slides) metrics with CIs, logged."""
    row: dict[str, Any] = {"model": name, "pooling": pooling, "fraction": fraction}
    per_patient = sorted(set(patients.tolist()))
    p_probs = np.stack([probs[patients == q].mean(0) for q in per_patient])
    p_y = np.asarray([y[patients == q][0] for q in per_patient])
    logged = {}
    for level, (yy, pp, groups) in {"slide": (y, probs, patients),
                                    "patient": (p_y, p_probs, np.asarray(per_patient))}.items():
        tag = slides_tag(name, pooling, fraction, level)
        for m in METRICS:
            ci = bootstrap_ci(lambda a, b, m=m: _metric(m, a, b), yy, pp, groups, n_boot=n_boot, seed=seed)
            value = _metric(m, yy, pp)
            row[f"{level}_{m}"] = {"value": value, "ci_low": ci[1], "ci_high": ci[2]}
            logged[metric_key(tag, m)] = value
            logged.update({metric_key(tag, m, b): v for b, v in zip(CI_BOUNDS, ci[1:])})
    tracker.log_metrics({k: float(v) for k, v in logged.items() if np.isfinite(v)})
    return row


def _maps(ctx: RunContext, tracker: Tracker, out_dir: Any, test_rows: list[int], y_test: np.ndarray,
          probs: np.ndarray, attention: list[torch.Tensor]) -> None:
    """The attention maps of up to :data:`MAPS` test slides, logged under ``attention/``."""
    data = ctx.data
    maps = out_dir / "attention"
    maps.mkdir(exist_ok=True)
    for i, r in enumerate(test_rows[:MAPS]):
        row = data.records[r].row
        png = maps / f"row{row}.png"
        attention_map(str(data.records[r].path), data.tiles[row], attention[i].numpy(), png,
                      f"row {row}: {data.classes[int(y_test[i])]}, p({data.classes[-1]}) = {probs[i, -1]:.2f}")
        tracker.log_artifact(png, "attention")


def _bags(ctx: RunContext, weights: str | None) -> dict[str, tuple[list[int], list[np.ndarray]]]:
    """``{split: (record positions of its slides, [tile features (K_i, D)])}`` by one frozen encoder."""
    cfg = ctx.cfg
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder = make_encoder(base, weights=weights).to(ctx.device)
    tf = make_transforms(cfg, train=False)
    out = {}
    for split in ("train", "test"):
        items = ctx.data.items(split, labelled=True)
        loader = make_loader(ctx, items, tf, batch_size=cfg.data.batch_size, shuffle=False, train=False,
                             distributed=False)
        feats, _, _, idx = extract_features(encoder, loader, device=ctx.device)
        rows = list(dict.fromkeys(int(i) for i in idx))  # slides in manifest order; tiles keep their plan order
        out[split] = (rows, [feats[idx == r] for r in rows])
    return out


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Embed every tile, train each pooling on the training slides and evaluate it on the test slides.

    Returns:
        The stage's outputs: ``results`` (path of ``results.json``), ``predictions`` and the summary rows.

    Raises:
        ConfigError: the manifest has no slide rows, or the labels are multi-label.
        DataError: a split without slides, or training slides of one class only.
    """
    cfg, s = ctx.cfg, ctx.cfg.slides
    data = ctx.data
    if not data.tiles:
        raise ConfigError("the slides stage needs whole-slide images in the manifest (rows pointing at a slide)",
                          where="stages", fix="give slide rows with slide-level labels, or use the classify stage "
                          "for images and tiles")
    if data.y.ndim != 1:
        raise ConfigError("slide-level classification needs one label per slide", where="data.task",
                          fix="use a binary or multiclass task")
    seed_everything(cfg.seed, cfg.runtime.deterministic)
    pretrained = (ctx.outputs.get("pretrain") or {}).get("encoder") or cfg.model.pretrained_path
    encoders: dict[str, str | None] = {"ssl": str(pretrained)} if pretrained else {}
    if not pretrained:
        log.warning("slides: no pretrained encoder (no pretrain stage and no model.pretrained_path): baselines only")
    if "random" in s.baselines:
        encoders["random"] = None
    n_classes = len(data.classes)
    out_dir = ctx.stage_dir("slides")
    results, predictions = [], {}
    test_rows: list[int] = []
    for name, weights in encoders.items():
        bags = _bags(ctx, weights)
        (train_rows, train_feats), (test_rows, test_feats) = bags["train"], bags["test"]
        if not train_rows or not test_rows:
            raise DataError(f"{len(train_rows)} training and {len(test_rows)} test slides", where="slides",
                            fix="the train and test splits both need labelled slides")
        y_train, y_test = data.y[train_rows], data.y[test_rows]
        if len(set(y_train.tolist())) < 2:
            raise DataError("the training slides are all of one class", where="slides",
                            fix="label slides of at least two classes in the training split")
        np.savez_compressed(out_dir / f"features_{name}.npz",
                            **{f"row{data.records[r].row}": f for r, f in zip(train_rows + test_rows,
                                                                               train_feats + test_feats)})
        patients = data.patients_of(np.asarray(test_rows))
        train_patients = data.patients_of(np.asarray(train_rows))
        subsets = label_fraction_patients(train_patients, y_train, sorted(s.label_fractions), cfg.seed,
                                          ensure_all_classes=True)
        for fraction in sorted(s.label_fractions):
            keep = np.flatnonzero(subsets[fraction])
            for pooling in s.poolings:
                torch.manual_seed(cfg.seed)
                extra = {"attention_dim": s.attention_dim} if pooling == "attention" else {}
                model = POOLINGS[pooling](train_feats[0].shape[1], n_classes, hidden=s.hidden, dropout=s.dropout,
                                          **extra)
                history = fit_bags(model, [torch.as_tensor(train_feats[i]) for i in keep], y_train[keep].tolist(),
                                   epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay, seed=cfg.seed)
                probs_t, attention = predict_bags(model, [torch.as_tensor(f) for f in test_feats])
                probs = probs_t.numpy()
                row = _evaluate(tracker, name, pooling, fraction, y_test, probs, patients, s.n_boot, cfg.seed)
                row.update(n_train_slides=int(len(keep)), n_train_patients=int(len(set(train_patients[keep]))),
                           n_test_slides=len(test_rows), final_train_loss=history[-1])
                results.append(row)
                log.info("slides %s/%s at %s of the training patients: slide AUROC %.3f, patient AUROC %.3f "
                         "(%d test slides)", name, pooling, f"{fraction:.0%}", row["slide_auroc"]["value"],
                         row["patient_auroc"]["value"], len(test_rows))
                if fraction != max(s.label_fractions):
                    continue
                predictions[f"{name}_{pooling}"] = (probs, [int(a.argmax()) for a in attention])
                if pooling == "attention" and name == next(iter(encoders)):
                    _maps(ctx, tracker, out_dir, test_rows, y_test, probs, attention)
    res_path = out_dir / "results.json"
    res_path.write_text(json.dumps(results, indent=2))
    tracker.log_artifact(res_path)
    pred_path = out_dir / "predictions_test.csv"
    with pred_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "label", *[f"{k}_p{c}" for k in predictions for c in range(n_classes)],
                    *[f"{k}_top_tile" for k in predictions]])
        for i, r in enumerate(test_rows):
            w.writerow([data.records[r].row, int(data.y[r]),
                        *[f"{p[i, c]:.6g}" for p, _ in predictions.values() for c in range(n_classes)],
                        *[top[i] for _, top in predictions.values()]])
    tracker.log_artifact(pred_path)
    tracker.log_params({"slides.poolings": ",".join(s.poolings), "slides.epochs": s.epochs})
    top = max(s.label_fractions)
    summary = [{"model": f"{r['model']} {r['pooling']}", "metric": f"{level} AUROC ({top:.0%} of labels)",
                "value": f"{r[level + '_auroc']['value']:.3f} [{r[level + '_auroc']['ci_low']:.3f}, "
                         f"{r[level + '_auroc']['ci_high']:.3f}]"}
               for r in results if r["fraction"] == top for level in ("slide", "patient")]
    return {"results": str(res_path), "predictions": str(pred_path), "summary": summary}
