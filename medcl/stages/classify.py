"""The ``classify`` stage: how good is the encoder downstream, and compared with what?

For every label fraction (of training *patients*, nested 1 % ⊂ 10 % ⊂ 100 %) and protocol
(linear probe, kNN, fine-tuning), the pretrained encoder is compared side by side with the
baselines named in ``classify.baselines`` (random-init encoder, raw pixels, fine-tuning from
scratch). Test metrics get patient-level bootstrap CIs; per-site/subgroup tables are logged
when the manifest has such columns. The primary model (pretrained encoder at the largest
fraction; fine-tuned if fine-tuning was asked for, else its linear probe) hands its validation
and test logits to ``calibrate``.

This module holds what every rank runs (fine-tuning, data-parallel under torchrun, and its sharded
predictions); rank 0's evaluation is in :mod:`medcl.stages.classify_eval` and the report material in
:mod:`medcl.stages.classify_report`. Every name of the stage stays importable from here.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.metric_keys import fraction_tag

# re-exported (redundant aliases): `medcl.stages.classify.X` stays the name of every part of the stage
from medcl.stages.classify_eval import MAX_SUBGROUP_LEVELS as MAX_SUBGROUP_LEVELS
from medcl.stages.classify_eval import _align as _align
from medcl.stages.classify_eval import _arr as _arr
from medcl.stages.classify_eval import _cross_fit_linear as _cross_fit_linear
from medcl.stages.classify_eval import _evaluate_on_main as _evaluate_on_main
from medcl.stages.classify_eval import _extract as _extract
from medcl.stages.classify_eval import _folds as _folds
from medcl.stages.classify_eval import _raw_features as _raw_features
from medcl.stages.classify_eval import _subgroups as _subgroups
from medcl.stages.classify_eval import _summary as _summary
from medcl.stages.classify_eval import class_pairs as class_pairs
from medcl.stages.classify_eval import cross_fitting as cross_fitting
from medcl.stages.classify_report import _log_report_material as _log_report_material

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl import distributed
from medcl.engine.checkpoint import Checkpointer
from medcl.engine.loop import LoopSettings, Optimisation, fit
from medcl.engine.wrap import wrap_ddp
from medcl.errors import DataError, SplitError
from medcl.stages import zero_shot
from medcl.stages.common import (
    check_step_memory,
    make_encoder,
    make_loader,
    make_transforms,
    seed_everything,
    shard,
    supervised_setup,
)
from medcl.tasks.classification import (
    ClassifierModel,
    SupervisedWrapper,
    label_fraction_patients,
    layerwise_lr_groups,
    linear_probe,
    num_outputs_for_task,
)

log = logging.getLogger(__name__)
HEADLINE = ("auroc", "auprc", "balanced_accuracy", "f1", "qwk")


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
    """Logits for ``items`` in the order of ``want`` (dataset positions), predicted shard by shard.

    Each rank predicts its shard; the shards are gathered on every rank. Binary tasks give ``(N,)``, others
    ``(N, K)``.
    """
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

    A pretrained encoder gets layer-wise LR decay (``classify.finetune.layer_decay``, BEiT) and, with
    ``classify.finetune.head_init: probe``, a head started from a linear probe on its frozen features (LP-FT,
    :func:`_probe_head`); a network trained from scratch gets neither — its stem must learn at the full rate.

    Under torchrun every rank trains (DDP over ``comm``, the configured batch split across ranks), so
    the result equals one process's at the same global batch up to float rounding (BatchNorm aside).
    With ``ckpt_dir``, training state is checkpointed there by rank 0 (every epoch and every
    ``classify.finetune.checkpoint_every_steps``); with ``--resume`` an interrupted fine-tune
    continues from its latest checkpoint, and a finished one is restored without retraining.
    """
    cfg, ft, data = ctx.cfg, ctx.cfg.classify.finetune, ctx.data
    model = ClassifierModel(encoder, num_outputs_for_task(data.task, len(data.classes)), data.task).to(ctx.device)
    if pretrained and ft.head_init == "probe":
        _probe_head(ctx, model, train_items, label)
    wrapper = SupervisedWrapper(model).to(ctx.device)
    groups = layerwise_lr_groups(model, ft.lr, decay=ft.layer_decay if pretrained else 1.0,
                                 weight_decay=ft.weight_decay)
    factory, opt, sched, epochs, steps = supervised_setup(
        ctx, train_items, make_transforms(cfg, train=True, views=1), groups, comm=comm, batch_size=ft.batch_size,
        epochs=ft.epochs, steps=ft.steps, max_steps=ft.max_steps, lr=ft.lr, weight_decay=ft.weight_decay,
        optimizer=ft.optimizer, seed_offset=seed_offset, warmup_steps=ft.warmup_steps)
    check_step_memory(ctx, "classify (fine-tuning)", wrapper, factory(0),
                      max(1, min(ft.batch_size, len(train_items)) // comm.size), "classify.finetune.batch_size")
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


def _probe_head(ctx: RunContext, model: Any, train_items: list[dict], label: str) -> None:
    """LP-FT's first step (``classify.finetune.head_init: probe``): the head from a probe on the frozen features.

    A linear probe is fitted on the frozen encoder's features of ``train_items`` and ``model``'s head starts from it
    (:meth:`ClassifierModel.head_from_probe`). The features are the ``linear`` protocol's (evaluation transforms,
    encoder in eval mode, :func:`_extract`) and so is the probe (``classify.probe``, its regularisation chosen by
    patient-grouped cross-validation). Every rank fits the same probe on the same items; under DDP rank 0's weights
    are the ones broadcast.
    """
    cfg, data = ctx.cfg, ctx.data
    loader = make_loader(ctx, train_items, make_transforms(cfg, train=False), batch_size=cfg.data.batch_size,
                         shuffle=False, train=False, distributed=False)
    feats, idx = _extract(ctx, model.encoder, loader)
    probe = linear_probe(feats, data.y[idx], task=data.task, groups_train=data.patients_of(idx),
                         backend=cfg.classify.probe, num_classes=len(data.classes), seed=cfg.seed).model
    model.head_from_probe(probe)
    log.info("%s: head started from a linear probe on the frozen features of %d samples (C=%s; LP-FT)", label,
             len(idx), probe.C)


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Fine-tuning on every rank (data-parallel under torchrun), then the rest on rank 0 (``ctx.on_main``).

    Returns:
        The stage's outputs (every rank gets rank 0's): ``results``, ``summary`` and the primary model's files
        (see :func:`_evaluate_on_main`).

    Raises:
        DataError: the data have no labels.
        SplitError: the train or test split has no labelled samples.
    """
    cfg, c, data = ctx.cfg, ctx.cfg.classify, ctx.data
    seed_everything(cfg.seed)
    task, classes = data.task, data.classes
    if not classes:

        raise DataError("no labels in the data", where="classify", fix="add a label column, or drop the classify stage")
    class_pairs(cfg, classes, task)  # a bad pair is refused before anything is trained

    # -- data: labelled samples of each split, eval transforms (no augmentation) -----------------------
    split_idx = {s: data.indices(s, labelled=True) for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if len(split_idx[s]) == 0:

            raise SplitError(f"the {s} split has no labelled samples", where="classify",
                             fix="label more patients or change data.val_fraction/test_fraction")
    all_items = {s: data.items(s, labelled=True) for s in split_idx}
    y = {s: data.y[split_idx[s]] for s in split_idx}
    patients = {s: data.patients_of(split_idx[s]) for s in split_idx}
    fractions = label_fraction_patients(patients["train"], y["train"], c.label_fractions, seed=cfg.seed,
                                        ensure_all_classes=True)
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

    out = ctx.on_main("classify: probes, evaluation and report material", lambda: _evaluate_on_main(
        ctx, tracker, split_idx, all_items, y, patients, fractions, pretrained, finetuned, largest, oof))
    text_model = (ctx.outputs.get("pretrain") or {}).get("text_model")
    if text_model:  # clip pretraining: zero-shot from class prompts and image<->report retrieval, beside the probes
        zs = ctx.on_main("classify: zero-shot and retrieval", lambda: zero_shot.run(
            ctx, tracker, text_model, split_idx["test"], all_items["test"], y["test"], patients["test"]))
        out = {**out, "zero_shot": {k: v for k, v in zs.items() if k != "summary"},
               "summary": [*out.get("summary", []), *zs["summary"]]}
    return out


def _cross_fit_finetune(ctx: RunContext, items: list[dict], sel: np.ndarray, idx: np.ndarray, y: np.ndarray,
                        groups: np.ndarray, *, weights: Any, name: str) -> dict[str, np.ndarray]:
    """Out-of-fold logits of the primary model's fine-tuning recipe for every selected training sample.

    The recipe is fine-tuned ``calibrate.folds`` times, each on all training patients but one fold, and predicts
    the held-out fold (every rank trains, as in :func:`_finetune`).

    Returns:
        ``{"logits", "y", "patients"}`` in fold order, and ``"folds"`` (their number).
    """
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
