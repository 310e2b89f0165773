"""The ``classify`` stage: how good is the encoder downstream, and compared with what?

For every label fraction (of training *patients*, nested 1 % ⊂ 10 % ⊂ 100 %) and protocol
(linear probe, kNN, fine-tuning), the pretrained encoder is compared side by side with the
baselines named in ``classify.baselines`` (random-init encoder, raw pixels, fine-tuning from
scratch). Test metrics get patient-level bootstrap CIs; per-site/subgroup tables are logged
when the manifest has such columns. The primary model (pretrained encoder at the largest
fraction; fine-tuned if fine-tuning was asked for, else its linear probe) hands its validation
and test logits to ``calibrate``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.errors import PHIError
from medcl.metrics.keys import CI_BOUNDS, fraction_tag, metric_key, model_tag
from medcl.stages.common import jsonable as _jsonable
from medcl.tasks.primary import PrimaryModel

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker


log = logging.getLogger(__name__)
HEADLINE = ("auroc", "auprc", "balanced_accuracy", "f1", "qwk")
MAX_SUBGROUP_LEVELS = 8


def _raw_features(ctx: RunContext, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (downsampled to ≤ 1024 values per channel) as a "no learning" baseline."""
    import torch.nn.functional as F

    feats, idx = [], []
    for batch in loader:
        x = batch["image"].float()
        spatial = x.shape[2:]
        if len(spatial) >= 2:
            target = [min(s, 32 if len(spatial) == 2 else 10) for s in spatial]
            x = F.adaptive_avg_pool2d(x, target) if len(spatial) == 2 else F.adaptive_avg_pool3d(x, target)
        else:
            x = F.adaptive_avg_pool1d(x, min(spatial[0], 256))
        feats.append(x.flatten(1).numpy())
        idx.append(batch["index"].numpy())
    return np.concatenate(feats), np.concatenate(idx)


def _extract(ctx: RunContext, encoder: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    from medcl.engine.inference import extract_features

    feats, _, _, idx = extract_features(encoder.to(ctx.device), loader, device=ctx.device)
    return feats, idx


def _align(feats: np.ndarray, idx: np.ndarray, want: np.ndarray) -> np.ndarray:
    pos = {int(i): k for k, i in enumerate(idx)}
    return feats[[pos[int(i)] for i in want]]


def _subgroups(ctx: RunContext, test_idx: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    names = ["site"] + sorted({k for r in ctx.data.records for k in r.extra})
    for name in names:
        col = ctx.data.column(name, test_idx)
        levels = {v for v in col if v != ""}
        if 2 <= len(levels) <= MAX_SUBGROUP_LEVELS:
            out[name] = col
    return out


def predict_logits(model: Any, loader: Any, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a ClassifierModel over a loader: ``((N, K) or (N,), indices (N,))``.

    ``model`` is the plain module, never its DDP wrapper (whose forward would broadcast buffers: a
    collective that ranks holding different numbers of batches would wait on forever).
    """
    import torch

    model.eval()
    outs, idx = [], []
    with torch.no_grad():
        for batch in loader:
            z = model(batch["image"].to(device)).float().cpu()
            outs.append(z.reshape(z.shape[0], -1))
            idx.append(batch["index"])
    if not outs:
        return np.zeros((0, 1), np.float32), np.zeros((0,), np.int64)
    z = torch.cat(outs).numpy()
    return (z[:, 0] if z.shape[1] == 1 else z), torch.cat(idx).numpy()


def _sharded_logits(ctx: RunContext, model: Any, items: list[dict], transform: Any, comm: Any,
                    want: np.ndarray, task: str) -> np.ndarray:
    """Logits for ``items`` in the order of ``want`` (dataset positions): each rank predicts its shard,
    the shards are gathered. Binary tasks give ``(N,)``, others ``(N, K)``."""
    from medcl.stages.common import make_loader, shard

    mine = shard(items, comm)
    z, idx = (np.zeros((0, 1), np.float32), np.zeros((0,), np.int64))
    if mine:
        loader = make_loader(ctx, mine, transform, batch_size=ctx.cfg.data.batch_size, shuffle=False, train=False,
                             distributed=False)
        z, idx = predict_logits(model, loader, ctx.device)
    parts = comm.gather_objects((z.reshape(len(z), -1), idx))
    z = np.concatenate([p[0] for p in parts if len(p[1])])
    idx = np.concatenate([p[1] for p in parts if len(p[1])])
    z = _align(z, idx, want)
    return z[:, 0] if task == "binary" else z


def _finetune(ctx: RunContext, encoder: Any, train_items: list[dict], seed_offset: int, comm: Any,
              ckpt_dir: Any = None, pretrained: bool = True, label: str = "fine-tune") -> Any:
    """Fine-tune encoder + linear head; returns the (unwrapped) ClassifierModel.

    A pretrained encoder gets layer-wise LR decay (``classify.finetune.layer_decay``, BEiT); a network
    trained from scratch gets none — its stem must learn at the full rate.

    Under torchrun every rank trains (DDP over ``comm``, the configured batch split across ranks), so
    the result equals one process's at the same global batch up to float rounding (BatchNorm aside).
    With ``ckpt_dir``, training state is checkpointed there by rank 0 (every epoch and every
    ``classify.finetune.checkpoint_every_steps``); with ``--resume`` an interrupted fine-tune
    continues from its latest checkpoint, and a finished one is restored without retraining.
    """
    from medcl.engine.checkpoint import Checkpointer
    from medcl.engine.loop import LoopSettings, Optimisation, fit
    from medcl.engine.wrap import wrap_ddp
    from medcl.stages.common import make_transforms, supervised_setup
    from medcl.tasks.classification import (
        ClassifierModel,
        SupervisedWrapper,
        layerwise_lr_groups,
        num_outputs_for_task,
    )

    cfg, ft, data = ctx.cfg, ctx.cfg.classify.finetune, ctx.data
    model = ClassifierModel(encoder, num_outputs_for_task(data.task, len(data.classes)), data.task).to(ctx.device)
    wrapper = SupervisedWrapper(model).to(ctx.device)
    groups = layerwise_lr_groups(model, ft.lr, decay=ft.layer_decay if pretrained else 1.0,
                                 weight_decay=ft.weight_decay)
    factory, opt, sched, epochs, steps = supervised_setup(
        ctx, train_items, make_transforms(cfg, train=True, views=1), groups, comm=comm, batch_size=ft.batch_size,
        epochs=ft.epochs, steps=ft.steps, max_steps=ft.max_steps, lr=ft.lr, weight_decay=ft.weight_decay,
        optimizer=ft.optimizer, seed_offset=seed_offset)
    ckpt = Checkpointer(ckpt_dir, keep=ft.keep_checkpoints, is_main=comm.is_main) if ckpt_dir is not None else None
    trained = wrap_ddp(wrapper, ctx.device) if comm.size > 1 else wrapper
    t0 = time.perf_counter()
    settings = LoopSettings(epochs=epochs, max_steps=steps, total_steps=steps, device=ctx.device,
                            checkpoint_every=ft.checkpoint_every_steps,
                            checkpoint_every_s=cfg.runtime.checkpoint_every_s, log_every=max(1, steps // 10),
                            progress=cfg.runtime.progress, label=label)
    resume = ckpt.load_latest() if ctx.resume and ckpt is not None else None
    history = fit(trained, factory, Optimisation(opt, sched), settings, comm=comm, checkpointer=ckpt, resume=resume)
    seconds = time.perf_counter() - t0
    run_steps = sum(int(h["steps"]) for h in history)
    per_rank = max(1, min(ft.batch_size, len(train_items)) // comm.size)
    # steps: the model's optimiser steps in all; steps_run, train_seconds, images_per_s: this process's share
    # (less than all of them after a resume)
    model.train_stats = {"steps": int(history[-1]["global_step"]) if history else 0, "steps_run": run_steps,
                         "train_seconds": round(seconds, 2),
                         "images_per_s": round(run_steps * per_rank * comm.size / seconds, 1) if seconds > 0 else None}
    return model


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Fine-tuning on every rank (data-parallel under torchrun), then the rest on rank 0 (``ctx.on_main``)."""
    from medcl import distributed
    from medcl.stages.common import make_encoder, make_transforms, seed_everything
    from medcl.tasks.classification import label_fraction_patients

    cfg, c, data = ctx.cfg, ctx.cfg.classify, ctx.data
    seed_everything(cfg.seed)
    task, classes = data.task, data.classes
    if not classes:
        from medcl.errors import DataError

        raise DataError("no labels in the data", where="classify", fix="add a label column, or drop the classify stage")

    # -- data: labelled samples of each split, eval transforms (no augmentation) -----------------------
    split_idx = {s: data.indices(s, labelled=True) for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if len(split_idx[s]) == 0:
            from medcl.errors import SplitError

            raise SplitError(f"the {s} split has no labelled samples", where="classify",
                             fix="label more patients or change data.val_fraction/test_fraction")
    all_items = {s: data.items(s, labelled=True) for s in split_idx}
    y = {s: data.y[split_idx[s]] for s in split_idx}
    patients = {s: data.patients_of(split_idx[s]) for s in split_idx}
    fractions = label_fraction_patients(patients["train"], y["train"], c.label_fractions, seed=cfg.seed,
                                        ensure_all_classes=task != "multilabel")
    pretrained = (ctx.outputs.get("pretrain") or {}).get("encoder") or cfg.model.pretrained_path
    largest = max(c.label_fractions)
    ft_dir = ctx.stage_dir("classify")

    # -- fine-tuning, pretrained vs from scratch: every rank trains, the logits are gathered -------------
    finetuned: list[dict[str, Any]] = []
    if "finetune" in c.protocols:
        comm = distributed.world()
        tracker.log_params({"classify.finetune.world_size": comm.size,
                            "classify.finetune.per_rank_batch": max(1, c.finetune.batch_size // comm.size)})
        eval_tf = make_transforms(cfg, train=False)
        starts = {"ssl": pretrained} if pretrained else {}
        if "scratch" in c.baselines or not pretrained:
            starts["scratch"] = None
        for frac in c.label_fractions:
            items = [it for it, keep in zip(all_items["train"], fractions[frac]) if keep]
            for k, (name, weights) in enumerate(starts.items()):
                seed_everything(cfg.seed + 7 * k)
                base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
                model = _finetune(ctx, make_encoder(base, weights=weights), items, seed_offset=k, comm=comm,
                                  ckpt_dir=ft_dir / "checkpoints" / f"finetune-{name}-{fraction_tag(frac)}",
                                  pretrained=weights is not None,
                                  label=f"fine-tune {name} ({round(frac * 100):g} % of patients)")
                zt = _sharded_logits(ctx, model, all_items["test"], eval_tf, comm, split_idx["test"], task)
                zv = (_sharded_logits(ctx, model, all_items["val"], eval_tf, comm, split_idx["val"], task)
                      if all_items["val"] else None)
                keep_model = frac == largest and (name == "ssl" or not pretrained)
                finetuned.append({"name": name, "frac": frac, "test_logits": zt, "val_logits": zv,
                                  "model": model if keep_model and ctx.is_main else None,
                                  "train": model.train_stats})

    # -- cross-fitting for calibration: out-of-fold logits of the primary model over the training patients --
    oof = None
    if cross_fitting(cfg, patients["val"]) and "finetune" in c.protocols:
        name = "ssl" if pretrained else "scratch"
        oof = _cross_fit_finetune(ctx, all_items["train"], fractions[largest], split_idx["train"], y["train"],
                                  patients["train"], weights=pretrained or None, name=name)

    return ctx.on_main("classify: probes, evaluation and report material", lambda: _evaluate_on_main(
        ctx, tracker, split_idx, all_items, y, patients, fractions, pretrained, finetuned, largest, oof))


def cross_fitting(cfg: Any, val_patients: np.ndarray) -> bool:
    """Whether the calibrate stage gets out-of-fold training logits (``calibrate.fit_on``)."""
    c = cfg.calibrate
    if "calibrate" not in cfg.stages or c.fit_on == "validation":
        return False
    return c.fit_on == "cross_fit" or len(np.unique(val_patients)) < c.min_val_patients


def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from medcl.tasks.classification import patient_cv_splits

    return patient_cv_splits(y.astype(np.int64) if y.ndim == 1 else None, groups, k, seed=seed)


def _cross_fit_finetune(ctx: RunContext, items: list[dict], sel: np.ndarray, idx: np.ndarray, y: np.ndarray,
                        groups: np.ndarray, *, weights: Any, name: str) -> dict[str, np.ndarray]:
    """Fine-tune the primary model's recipe ``calibrate.folds`` times, each on all training patients but one
    fold, and predict the held-out fold: out-of-fold logits for every selected training sample."""
    from medcl import distributed
    from medcl.stages.common import make_encoder, make_transforms, seed_everything

    cfg, comm = ctx.cfg, distributed.world()
    items = [it for it, keep in zip(items, sel) if keep]
    idx, y, groups = idx[sel], y[sel], groups[sel]
    folds = _folds(y, groups, cfg.calibrate.folds, cfg.seed)
    eval_tf = make_transforms(cfg, train=False)
    parts, where = [], []
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    for f, (tr, te) in enumerate(folds):
        seed_everything(cfg.seed + 101 * (f + 1))
        model = _finetune(ctx, make_encoder(base, weights=weights), [items[i] for i in tr], seed_offset=11 + f,
                          comm=comm, pretrained=weights is not None,
                          label=f"cross-fit {name} fold {f + 1}/{len(folds)}")
        parts.append(_sharded_logits(ctx, model, [items[i] for i in te], eval_tf, comm, idx[te], ctx.data.task))
        where.append(te)
    order = np.concatenate(where)
    z = np.concatenate([p.reshape(len(p), -1) for p in parts])
    z = z[:, 0] if ctx.data.task == "binary" else z
    return {"logits": z, "y": y[order], "patients": groups[order], "folds": len(folds)}


def _cross_fit_linear(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, *, k: int, seed: int, c: Any,
                      task: str, num_classes: int) -> dict[str, np.ndarray]:
    """Out-of-fold logits of the linear probe over the training patients (patient-grouped folds)."""
    from medcl.tasks.classification import linear_probe

    parts, where = [], []
    folds = _folds(y, groups, k, seed)
    for tr, te in folds:
        pr = linear_probe(feats[tr], y[tr], feats[te], task=task, groups_train=groups[tr], backend=c.probe,
                          num_classes=num_classes, seed=seed)
        parts.append(np.asarray(pr.logits))
        where.append(te)
    order = np.concatenate(where)
    z = np.concatenate([p.reshape(len(p), -1) for p in parts])
    z = z[:, 0] if task == "binary" else z
    return {"logits": z, "y": y[order], "patients": groups[order], "folds": len(folds)}


def _evaluate_on_main(ctx: RunContext, tracker: Tracker, split_idx: dict[str, np.ndarray], all_items: dict[str, list[dict]],
                      y: dict[str, np.ndarray], patients: dict[str, np.ndarray], fractions: dict[float, np.ndarray],
                      pretrained: Any, finetuned: list[dict[str, Any]], largest: float,
                      oof: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Frozen-feature protocols, test metrics of every model, results and report material (rank 0)."""
    from medcl.metrics import choose_threshold, metrics_with_ci, subgroup_metrics
    from medcl.stages.common import make_encoder, make_loader, make_transforms, seed_everything
    from medcl.tasks.calibration import logits_to_probs
    from medcl.tasks.classification import knn_predict, linear_probe

    cfg, c, data = ctx.cfg, ctx.cfg.classify, ctx.data
    task, classes = data.task, data.classes
    eval_tf = make_transforms(cfg, train=False)
    loaders = {s: make_loader(ctx, all_items[s], eval_tf, batch_size=cfg.data.batch_size, shuffle=False,
                              train=False, distributed=False) for s in split_idx if all_items[s]}

    # -- features of each encoder ----------------------------------------------------------------------
    encoders: dict[str, Any] = {}
    if pretrained:
        encoders["ssl"] = make_encoder(cfg, weights=pretrained)
    else:
        log.warning("no pretrained encoder (no pretrain stage and no model.pretrained_path): "
                    "evaluating the random-init encoder only")
    if "random" in c.baselines or not pretrained:
        seed_everything(cfg.seed + 1)
        encoders["random"] = make_encoder(cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"pretrained_path": None})}))
    features: dict[str, dict[str, np.ndarray]] = {}
    for name, enc in encoders.items():
        features[name] = {s: _align(*_extract(ctx, enc, ld), split_idx[s]) for s, ld in loaders.items()}
    if "raw" in c.baselines:
        features["raw"] = {s: _align(*_raw_features(ctx, ld), split_idx[s]) for s, ld in loaders.items()}
    subgroups = _subgroups(ctx, split_idx["test"])

    results: list[dict[str, Any]] = []
    primary: PrimaryModel | None = None

    def evaluate(model_name: str, protocol: str, frac: float, probs_test: np.ndarray, extra: dict | None = None,
                 val_probs: np.ndarray | None = None) -> dict[str, Any]:
        thr = None
        if task == "binary" and val_probs is not None and len(y["val"]):
            thr = choose_threshold(y["val"], val_probs, c.operating_point)
        m = metrics_with_ci(y["test"], probs_test, task, patients["test"], threshold=thr, class_names=classes,
                            n_boot=c.n_boot, seed=cfg.seed)
        tag = model_tag(model_name, protocol, frac)
        flat = {}
        for k, v in m.items():
            if isinstance(v, dict) and "value" in v and np.isscalar(v["value"]):
                flat[metric_key(tag, k)] = v["value"]
                if v.get("ci_low") is not None:
                    flat.update({metric_key(tag, k, b): v[b] for b in CI_BOUNDS})
        tracker.log_metrics({k: float(v) for k, v in flat.items() if v is not None and np.isfinite(v)})
        row = {"model": model_name, "protocol": protocol, "fraction": frac, "metrics": m,
               "n_train_patients": int(len(np.unique(patients["train"][fractions[frac]]))), **(extra or {})}
        if subgroups:
            row["subgroups"] = subgroup_metrics(y["test"], probs_test, task, patients["test"], groups_by=subgroups,
                                                threshold=thr, class_names=classes)
        results.append(row)
        return row

    # -- frozen-feature protocols ------------------------------------------------------------------------
    for frac in c.label_fractions:
        sel = fractions[frac]
        for name, feats in features.items():
            if "linear" in c.protocols or name == "raw":
                pr = linear_probe(feats["train"][sel], y["train"][sel], feats["test"], task=task,
                                  groups_train=patients["train"][sel], backend=c.probe, num_classes=len(classes),
                                  seed=cfg.seed)
                val_logits = pr.model.predict_logits(feats["val"]) if len(split_idx["val"]) else None
                val_probs = pr.model.predict_proba(feats["val"]) if val_logits is not None else None
                evaluate(name, "linear", frac, pr.probs, {"C": pr.C, "notes": pr.notes}, val_probs)
                if name == "ssl" and frac == largest and "finetune" not in c.protocols or (
                        not pretrained and name == "random" and frac == largest and primary is None):
                    primary = PrimaryModel("linear", name, head=pr.model.to_dict(),
                                           arrays={"val_logits": _arr(val_logits), "test_logits": _arr(pr.logits)})
            if "knn" in c.protocols and name != "raw":
                probs = knn_predict(feats["train"][sel], y["train"][sel], feats["test"], k=c.knn_k, task=task,
                                    num_classes=len(classes))
                evaluate(name, "knn", frac, probs)

    # -- fine-tuned models (trained on every rank, predictions gathered) -----------------------------------
    ft_dir = ctx.stage_dir("classify")
    for ft in finetuned:
        zt, zv = ft["test_logits"], ft["val_logits"]
        evaluate(ft["name"], "finetune", ft["frac"], logits_to_probs(zt, task), ft.get("train"),
                 logits_to_probs(zv, task) if zv is not None else None)
        if ft["model"] is not None:
            from medcl.checkpoint_file import save_checkpoint

            path = ft_dir / f"finetuned-{ft['name']}.pt"
            save_checkpoint(path, {"model": ft["model"].state_dict()})
            primary = PrimaryModel("finetune", ft["name"], weights=str(path),
                                   arrays={"val_logits": _arr(zv), "test_logits": _arr(zt)})

    # -- hand on: results, and the primary model's logits for calibration ---------------------------------
    results_path = ft_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=_jsonable))
    tracker.log_artifact(results_path)
    tracker.log_dict({"classes": classes, "task": task,
                      "fractions": {str(f): int(m.sum()) for f, m in fractions.items()}}, "classify_setup.json")
    out: dict[str, Any] = {"results": str(results_path), "summary": _summary(results, largest)}
    if primary is not None:
        if primary.kind == "linear" and cross_fitting(cfg, patients["val"]):
            sel = fractions[largest]
            oof = _cross_fit_linear(features[primary.encoder]["train"][sel], y["train"][sel],
                                    patients["train"][sel], k=cfg.calibrate.folds, seed=cfg.seed, c=c, task=task,
                                    num_classes=len(classes))
        empty = np.zeros((0,), np.float32)
        primary.arrays.update(val_y=y["val"], test_y=y["test"], val_index=split_idx["val"],
                              test_index=split_idx["test"], test_patients=patients["test"],
                              val_patients=patients["val"], oof_logits=_arr(oof["logits"]) if oof else empty,
                              oof_y=oof["y"] if oof else empty,
                              oof_patients=oof["patients"] if oof else np.zeros((0,), np.int64))
        primary.cross_fit_folds = int(oof["folds"]) if oof else 0
        # the binary operating point chosen on the validation patients (classify.operating_point), for predict
        prow = next((r for r in results if r["model"] == primary.encoder and r["protocol"] == primary.kind
                     and r["fraction"] == largest), None)
        primary.threshold = (prow or {}).get("metrics", {}).get("_info", {}).get("threshold")
        if primary.kind == "linear":  # the frozen encoder it was fitted on: pretrained, or this random init
            primary.encoder_weights = pretrained if primary.encoder == "ssl" else PrimaryModel.save_encoder(
                encoders[primary.encoder], ft_dir / f"primary-encoder-{primary.encoder}.pt")
        prim_path, meta_path = primary.save(ft_dir)
        out.update({"primary": str(prim_path), "primary_meta": str(meta_path), "pretrained_encoder": pretrained})
        # what the report shows beyond metrics (predictions, feature map, saliency): never patient ids.
        # A failure here must not throw away the evaluation above: the report then says what is missing.
        try:
            _log_report_material(ctx, tracker, primary, features, results, split_idx, y, subgroups, largest)
        except PHIError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("classify: the report's predictions/feature map/saliency could not be made (%s: %s); "
                        "the report will show them as missing", type(exc).__name__, exc)
    return out


def _log_report_material(ctx: RunContext, tracker: Tracker, primary: PrimaryModel,
                         features: dict[str, dict[str, np.ndarray]],
                         results: list[dict[str, Any]], split_idx: dict[str, np.ndarray], y: dict[str, np.ndarray],
                         subgroups: dict[str, np.ndarray], largest: float, max_examples: int = 4) -> None:
    """Log ``predictions_test.csv``, ``embedding_map.npz`` and ``saliency/`` for the report.

    Predictions are the primary model's test probabilities at its operating point, keyed by the
    dataset row position (never a patient id); the feature map is a t-SNE of the primary encoder's
    features of every labelled sample; saliency is Grad-CAM (images) or input × gradient (ECG) on
    up to ``max_examples`` correctly and incorrectly classified test samples.
    """
    import csv

    import torch

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

    cfg, data, task, classes = ctx.cfg, ctx.data, ctx.data.task, ctx.data.classes
    out_dir = ctx.stage_dir("classify")
    tag = model_tag(primary.encoder, primary.kind, largest)
    tracker.log_params({"classify.primary_model": tag})

    # -- test predictions at the operating point -------------------------------------------------------
    probs = logits_to_probs(primary.arrays["test_logits"], task)
    row = next((r for r in results if r["model"] == primary.encoder and r["protocol"] == primary.kind
                and r["fraction"] == largest), None)
    thr = (row or {}).get("metrics", {}).get("_info", {}).get("threshold")
    thr = np.asarray(0.5 if thr is None else thr, dtype=np.float64)  # per label for multi-label
    yt = y["test"]
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
    cols = {"site": ctx.data.column("site", split_idx["test"]), **subgroups}
    path = out_dir / "predictions_test.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        ytrue_cols = [f"y_{c}" for c in classes] if task == "multilabel" else ["y_true"]
        w.writerow(["index", *ytrue_cols, "y_pred", *[f"p_{c}" for c in classes], *cols])
        for i in range(len(yt)):
            ytrue = ["" if not np.isfinite(v) else int(v) for v in yt[i]] if task == "multilabel" else [int(yt[i])]
            w.writerow([int(split_idx["test"][i]), *ytrue, int(pred[i]), *[f"{v:.6g}" for v in probs[i]],
                        *[str(c[i]) for c in cols.values()]])
    tracker.log_artifact(path)

    # -- feature map of every labelled sample --------------------------------------------------------------
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

    # -- saliency on a few correct and incorrect test examples ----------------------------------------------
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


def _arr(x: Any) -> np.ndarray:
    return np.zeros((0,), np.float32) if x is None else np.asarray(x, np.float32)


def _summary(results: list[dict[str, Any]], largest: float) -> list[dict[str, str]]:
    rows = []
    for r in results:
        if r["fraction"] != largest:
            continue
        for name in ("auroc", "qwk"):
            m = r["metrics"].get(name)
            if isinstance(m, dict) and m.get("value") is not None and np.isfinite(m["value"]):
                ci = f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m.get("ci_low") is not None and np.isfinite(
                    m["ci_low"]) else ""
                rows.append({"model": f"{r['model']} {r['protocol']}", "metric": name,
                             "value": f"{m['value']:.3f}{ci}"})
    return rows
