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
"Slides" section shows them.

Baselines (``slides.baselines``): ``random`` — the same poolings on a random-init encoder's frozen features;
``scratch`` — a random-init encoder trained end to end with each pooling on the slide labels
(:func:`medcl.tasks.mil.fit_end_to_end`, ``slides.scratch_steps`` steps of ``slides.scratch_tiles`` augmented tiles
of one slide): what the labels alone give without pretraining or ImageNet.

Calibration (``slides.calibration``): at the full label fraction, temperature scaling of every slide model is
fitted on the validation slides plus, for the frozen encoders, out-of-fold logits over the training slides
(patient-grouped folds, the pooling re-trained per fold); :func:`medcl.tasks.calibration.cross_validated_calibration`
applies it only when it lowers the NLL and does not raise the ECE on held-out folds. Test-slide ECE and NLL before
and after are logged (``test/slides/<model>/<pooling>/f100/slide/ece_before`` …) and the calibrated probabilities
written next to the model's own in ``predictions_test.csv``.
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
from medcl.stages.common import jsonable, make_encoder, make_loader, make_transforms, seed_everything
from medcl.tasks.calibration import calibration_report, cross_validated_calibration
from medcl.tasks.fractions import label_fraction_patients
from medcl.tasks.mil import POOLINGS, EndToEndMIL, bag_logits, fit_bags, fit_end_to_end, predict_bags
from medcl.tasks.probes import patient_cv_splits

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


def _bags(ctx: RunContext, encoder: Any) -> dict[str, tuple[list[int], list[np.ndarray]]]:
    """``{split: (record positions of its labelled slides, [tile features (K_i, D)])}`` by one (frozen) encoder."""
    cfg = ctx.cfg
    encoder = encoder.to(ctx.device)
    tf = make_transforms(cfg, train=False)
    out = {}
    for split in ("train", "val", "test"):
        items = ctx.data.items(split, labelled=True)
        if not items:
            out[split] = ([], [])
            continue
        loader = make_loader(ctx, items, tf, batch_size=cfg.data.batch_size, shuffle=False, train=False,
                             distributed=False)
        feats, _, _, idx = extract_features(encoder, loader, device=ctx.device)
        rows = list(dict.fromkeys(int(i) for i in idx))  # slides in manifest order; tiles keep their plan order
        out[split] = (rows, [feats[idx == r] for r in rows])
    return out


def _rows(ctx: RunContext, split: str) -> list[int]:
    """Record positions of the split's labelled slides, in manifest order (as :func:`_bags` gives them)."""
    return list(dict.fromkeys(int(it["index"]) for it in ctx.data.items(split, labelled=True)))


def _encoder(ctx: RunContext, weights: str | None) -> Any:
    """The configured encoder with ``weights`` (None: random init, seeded by the run's seed)."""
    cfg = ctx.cfg
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    return make_encoder(base, weights=weights)


def _pooling(ctx: RunContext, pooling: str, in_dim: int) -> torch.nn.Module:
    s = ctx.cfg.slides
    extra = {"attention_dim": s.attention_dim} if pooling == "attention" else {}
    return POOLINGS[pooling](in_dim, len(ctx.data.classes), hidden=s.hidden, dropout=s.dropout, **extra)


def _scratch(ctx: RunContext, pooling: str, train_rows: list[int], label: str) -> tuple[Any, torch.nn.Module]:
    """The end-to-end baseline: a random-init encoder and ``pooling`` trained together on ``train_rows``' slides.

    Each step draws ``slides.scratch_tiles`` tiles of one slide through the training augmentation.
    Returns ``(encoder, pooling)``.
    """
    cfg, s = ctx.cfg, ctx.cfg.slides
    tf = make_transforms(cfg, train=True, views=1)
    tiles: dict[int, list[dict]] = {}
    for it in ctx.data.items("train", labelled=True):
        tiles.setdefault(int(it["index"]), []).append(it)
    bags = [tiles[r] for r in train_rows]

    def draw_bag(i: int, g: torch.Generator) -> torch.Tensor:
        pick = torch.randperm(len(bags[i]), generator=g)[: s.scratch_tiles].tolist()
        out = []
        for j in pick:  # each tile's augmentation seeded from the step's generator: a re-run draws the same views
            tf.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            out.append(torch.as_tensor(tf(dict(bags[i][j]))["image"]).float())
        return torch.stack(out).to(ctx.device)

    torch.manual_seed(cfg.seed)
    encoder = _encoder(ctx, None).to(ctx.device)
    model = EndToEndMIL(encoder, _pooling(ctx, pooling, encoder.feature_dim)).to(ctx.device)
    fit_end_to_end(model, draw_bag, [int(ctx.data.y[r]) for r in train_rows], steps=s.scratch_steps, lr=s.scratch_lr,
                   weight_decay=s.weight_decay, seed=cfg.seed,
                   log=lambda step, loss: log.info("slides %s: step %d/%d  loss %.4f", label, step, s.scratch_steps,
                                                   loss))
    return model.encoder, model.pooling


def _calibrate(ctx: RunContext, tracker: Tracker, tag: str, cal: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
               z_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Temperature scaling of one slide model: fitted on ``cal`` ``(logits, labels, patients)``, checked out of fold.

    Logs ``<tag>/ece_before``, ``ece_after``, ``nll_before``, ``nll_after`` (test slides, after = as applied) and
    returns what was decided, with the test calibration before and after.
    """
    s = ctx.cfg.slides
    if s.calibration == "none":
        return {"applied": False, "reason": "slides.calibration is none"}
    if cal is None or len(cal[0]) == 0:
        return {"applied": False, "reason": "no calibration slides (no validation slides, and this model's training "
                "slides are not out of fold)"}
    z, y, g = cal
    if len(np.unique(g)) < 2:
        return {"applied": False, "reason": f"only {len(z)} calibration slide(s) of {len(np.unique(g))} patient(s): "
                "too few to fit a calibrator and check that it helps"}
    cv = cross_validated_calibration(z, y, g, s.calibration, task="multiclass", folds=s.calibration_folds,
                                     seed=ctx.cfg.seed, min_gain_se=ctx.cfg.calibrate.min_gain_se,
                                     target_smoothing=ctx.cfg.calibrate.target_smoothing)
    rep = calibration_report(None, None, z_test, y_test, calibrator=cv["calibrator"], task="multiclass")
    ece = "ece_equal_width" if "ece_equal_width" in rep["before"] else "ece"
    out = {"applied": bool(cv["applied"]), "reason": cv["reason"], "n_calibration_slides": int(len(z)),
           "n_calibration_patients": int(len(np.unique(g))), "temperature": rep.get("temperature"),
           "ece_before": rep["before"][ece], "ece_after": rep["after"][ece], "nll_before": rep["before"]["nll"],
           "nll_after": rep["after"]["nll"], "ece_floor": rep["before"].get("ece_floor"),
           "probs_after": rep["probs_after"]}
    tracker.log_metrics({metric_key(tag, k): float(out[k]) for k in ("ece_before", "ece_after", "nll_before",
                                                                      "nll_after") if np.isfinite(out[k])})
    log.info("slides %s calibration: %s; test ECE %.3f -> %.3f", tag, out["reason"], out["ece_before"],
             out["ece_after"])
    return out


def _out_of_fold(ctx: RunContext, pooling: str, feats: list[np.ndarray], y: np.ndarray, groups: np.ndarray
                 ) -> np.ndarray | None:
    """Logits of each training slide from a pooling fitted without its patient's slides (patient-grouped folds)."""
    s = ctx.cfg.slides
    splits = patient_cv_splits(y, groups, s.calibration_folds, seed=ctx.cfg.seed)
    if not splits:
        return None
    z = np.zeros((len(feats), len(ctx.data.classes)), dtype=np.float64)
    for tr, te in splits:
        if len(set(y[tr].tolist())) < 2:
            return None
        torch.manual_seed(ctx.cfg.seed)
        model = _pooling(ctx, pooling, feats[0].shape[1])
        fit_bags(model, [torch.as_tensor(feats[i]) for i in tr], y[tr].tolist(), epochs=s.epochs, lr=s.lr,
                 weight_decay=s.weight_decay, seed=ctx.cfg.seed)
        z[te] = bag_logits(model, [torch.as_tensor(feats[i]) for i in te]).numpy()
    return z


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Embed every tile, train each pooling on the training slides, evaluate and calibrate it on the test slides.

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
    models: list[str] = (["ssl"] if pretrained else []) + [b for b in ("random", "scratch") if b in s.baselines]
    if not pretrained:
        log.warning("slides: no pretrained encoder (no pretrain stage and no model.pretrained_path): baselines only")
    n_classes = len(data.classes)
    out_dir = ctx.stage_dir("slides")
    top = max(s.label_fractions)
    results, predictions = [], {}
    test_rows: list[int] = []
    frozen: dict[str, dict[str, tuple[list[int], list[np.ndarray]]]] = {}
    for name in models:
        if name != "scratch":
            seed_everything(cfg.seed, cfg.runtime.deterministic)  # the random-init encoder: the run's seed
            frozen[name] = bags = _bags(ctx, _encoder(ctx, str(pretrained) if name == "ssl" else None))
            np.savez_compressed(out_dir / f"features_{name}.npz",
                                **{f"row{data.records[r].row}": f for sp in ("train", "val", "test")
                                   for r, f in zip(*bags[sp])})
        else:  # features come from each trained encoder below; here only the slides of each split
            bags = {sp: (_rows(ctx, sp), []) for sp in ("train", "val", "test")}
        (train_rows, _), (test_rows, _) = bags["train"], bags["test"]
        if not train_rows or not test_rows:
            raise DataError(f"{len(train_rows)} training and {len(test_rows)} test slides", where="slides",
                            fix="the train and test splits both need labelled slides")
        y_train, y_test = data.y[train_rows], data.y[test_rows]
        if len(set(y_train.tolist())) < 2:
            raise DataError("the training slides are all of one class", where="slides",
                            fix="label slides of at least two classes in the training split")
        patients = data.patients_of(np.asarray(test_rows))
        train_patients = data.patients_of(np.asarray(train_rows))
        subsets = label_fraction_patients(train_patients, y_train, sorted(s.label_fractions), cfg.seed,
                                          ensure_all_classes=True)
        for fraction in sorted(s.label_fractions):
            keep = np.flatnonzero(subsets[fraction])
            for pooling in s.poolings:
                torch.manual_seed(cfg.seed)
                if name == "scratch":
                    label = f"scratch/{pooling} ({fraction:.0%} of the training patients)"
                    encoder, model = _scratch(ctx, pooling, [train_rows[i] for i in keep], label)
                    fb = _bags(ctx, encoder)
                    feats = {sp: fb[sp][1] for sp in fb}
                    history = [float("nan")]
                else:
                    feats = {sp: bags[sp][1] for sp in bags}
                    model = _pooling(ctx, pooling, feats["train"][0].shape[1])
                    history = fit_bags(model, [torch.as_tensor(feats["train"][i]) for i in keep],
                                       y_train[keep].tolist(), epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay,
                                       seed=cfg.seed)
                test_bags = [torch.as_tensor(f) for f in feats["test"]]
                z_test = bag_logits(model, test_bags).numpy()
                probs = torch.softmax(torch.as_tensor(z_test), dim=-1).numpy()
                _, attention = predict_bags(model, test_bags)
                row = _evaluate(tracker, name, pooling, fraction, y_test, probs, patients, s.n_boot, cfg.seed)
                row.update(n_train_slides=int(len(keep)), n_train_patients=int(len(set(train_patients[keep]))),
                           n_test_slides=len(test_rows), final_train_loss=history[-1])
                results.append(row)
                log.info("slides %s/%s at %s of the training patients: slide AUROC %.3f, patient AUROC %.3f "
                         "(%d test slides)", name, pooling, f"{fraction:.0%}", row["slide_auroc"]["value"],
                         row["patient_auroc"]["value"], len(test_rows))
                if fraction != top:
                    continue
                cal = _calibration_set(ctx, name, pooling, model, bags, feats, keep)
                calib = _calibrate(ctx, tracker, slides_tag(name, pooling, fraction, "slide"), cal, z_test, y_test)
                row["calibration"] = {k: v for k, v in calib.items() if k != "probs_after"}
                predictions[f"{name}_{pooling}"] = (probs, calib.get("probs_after"),
                                                    [int(a.argmax()) for a in attention])
                if pooling == "attention" and name == models[0]:
                    _maps(ctx, tracker, out_dir, test_rows, y_test, probs, attention)
    res_path = out_dir / "results.json"
    res_path.write_text(json.dumps(results, indent=2, default=jsonable))
    tracker.log_artifact(res_path)
    pred_path = _write_predictions(out_dir / "predictions_test.csv", ctx, test_rows, predictions, n_classes)
    tracker.log_artifact(pred_path)
    tracker.log_params({"slides.poolings": ",".join(s.poolings), "slides.epochs": s.epochs,
                        "slides.models": ",".join(models)})
    summary = [{"model": f"{r['model']} {r['pooling']}", "metric": f"{level} AUROC ({top:.0%} of labels)",
                "value": f"{r[level + '_auroc']['value']:.3f} [{r[level + '_auroc']['ci_low']:.3f}, "
                         f"{r[level + '_auroc']['ci_high']:.3f}]"}
               for r in results if r["fraction"] == top for level in ("slide", "patient")]
    summary += [{"model": f"{r['model']} {r['pooling']}", "metric": "slide ECE before → after calibration",
                 "value": f"{r['calibration']['ece_before']:.3f} → {r['calibration']['ece_after']:.3f}"
                          + ("" if r["calibration"]["applied"] else " (not applied)")}
                for r in results if r["fraction"] == top and "ece_before" in r.get("calibration", {})]
    return {"results": str(res_path), "predictions": str(pred_path), "summary": summary}


def _calibration_set(ctx: RunContext, name: str, pooling: str, model: torch.nn.Module,
                     bags: dict[str, tuple[list[int], list[np.ndarray]]], feats: dict[str, list[np.ndarray]],
                     keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(logits, labels, patients)`` to calibrate on.

    The validation slides by the model, and for a frozen encoder the training slides' out-of-fold logits (the
    scratch encoder has seen every training slide: its logits there are not out of sample).
    """
    data = ctx.data
    parts = []
    val_rows = bags["val"][0]
    if val_rows:
        z_val = bag_logits(model, [torch.as_tensor(f) for f in feats["val"]]).numpy()
        parts.append((z_val, data.y[val_rows], data.patients_of(np.asarray(val_rows))))
    if name != "scratch":
        rows = [bags["train"][0][i] for i in keep]
        z = _out_of_fold(ctx, pooling, [feats["train"][i] for i in keep], data.y[rows],
                         data.patients_of(np.asarray(rows)))
        if z is not None:
            parts.append((z, data.y[rows], data.patients_of(np.asarray(rows))))
    if not parts:
        return None
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def _write_predictions(path: Any, ctx: RunContext, test_rows: list[int], predictions: dict[str, Any],
                       n_classes: int) -> Any:
    """``predictions_test.csv``: manifest row, label, each model's probabilities (and calibrated ones), top tile."""
    data = ctx.data
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "label", *[f"{k}_p{c}" for k in predictions for c in range(n_classes)],
                    *[f"{k}_calibrated_p{c}" for k, (_, cal, _) in predictions.items() if cal is not None
                      for c in range(n_classes)],
                    *[f"{k}_top_tile" for k in predictions]])
        for i, r in enumerate(test_rows):
            w.writerow([data.records[r].row, int(data.y[r]),
                        *[f"{p[i, c]:.6g}" for p, _, _ in predictions.values() for c in range(n_classes)],
                        *[f"{cal[i, c]:.6g}" for _, cal, _ in predictions.values() if cal is not None
                          for c in range(n_classes)],
                        *[top[i] for _, _, top in predictions.values()]])
    return path
