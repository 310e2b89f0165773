"""The ``pretrain`` stage: contrastive pretraining of the encoder.

Reads like MAE's ``main_pretrain.py``: data → model → loss (inside the method) → loop.
Only the train split's patients are used, so validation and test patients stay unseen.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from medcl.errors import DataError

log = logging.getLogger(__name__)


def run(ctx: Any, tracker: Any) -> dict[str, Any]:
    import torch

    from medcl import distributed
    from medcl.engine.checkpoint import Checkpointer, save_checkpoint
    from medcl.engine.loop import fit
    from medcl.engine.optim import build_optimizer
    from medcl.engine.schedule import build_scheduler
    from medcl.engine.wrap import maybe_compile, unwrap_model, wrap_ddp
    from medcl.methods import build_method, method_options
    from medcl.stages.common import make_encoder, make_loader, make_transforms, seed_everything

    cfg, p = ctx.cfg, ctx.cfg.pretrain
    seed_everything(cfg.seed, cfg.runtime.deterministic)

    # -- data: the train split, several augmented views per sample -------------------------------
    items = ctx.data.items("train")
    per_rank_batch = p.batch_size // ctx.world_size
    if per_rank_batch < 2 or len(items) < p.batch_size:
        if len(items) < 2 * ctx.world_size:
            raise DataError(f"only {len(items)} training samples for pretraining", where="data",
                            fix="add data or lower data.val_fraction/test_fraction")
        per_rank_batch = max(2, min(per_rank_batch, len(items) // ctx.world_size))
        log.warning("pretrain.batch_size lowered to %d per process for %d samples", per_rank_batch, len(items))
    transform = make_transforms(cfg, train=True, views=p.views)
    train_set_loader = make_loader(ctx, items, transform, batch_size=per_rank_batch, shuffle=True, train=True,
                                   drop_last=True)

    def loader_factory(epoch: int):
        train_set_loader.set_epoch(epoch)
        return train_set_loader

    # -- model: encoder + heads + loss -------------------------------------------------------------
    encoder = make_encoder(cfg)
    allowed = method_options(p.method)
    kwargs: dict[str, Any] = {}
    defaults = {"temperature": p.temperature, "hidden_dim": cfg.model.proj_hidden_dim,
                "out_dim": cfg.model.proj_dim, "gather_distributed": ctx.world_size > 1,
                "num_classes": len(ctx.data.classes)}
    for k, v in defaults.items():
        if k in allowed:
            kwargs[k] = v
    if "classes" in allowed:
        kwargs["classes"] = ctx.data.classes
    if "class_counts" in allowed and ctx.data.y.ndim == 1:
        import numpy as np

        train_y = ctx.data.y[ctx.data.indices("train")]
        kwargs["class_counts"] = np.bincount(train_y[train_y >= 0], minlength=len(ctx.data.classes)).tolist()
    kwargs.update(p.method_options)
    method = build_method(p.method, encoder, **kwargs).to(ctx.device)
    if hasattr(method, "setup"):
        method.setup(loader_factory(0))
    sync_bn = p.sync_bn and ctx.device.type == "cuda"
    if p.sync_bn and not sync_bn and ctx.world_size > 1 and ctx.is_main:
        log.warning("pretrain.sync_bn is ignored on %s: PyTorch's SyncBatchNorm runs on GPUs only, so "
                    "BatchNorm statistics stay per process", ctx.device.type)
    model = wrap_ddp(method, ctx.device, sync_bn=sync_bn) if ctx.world_size > 1 else method
    model = maybe_compile(model, p.compile)

    # -- optimisation ----------------------------------------------------------------------------------
    core = unwrap_model(model)
    groups = core.param_groups(p.weight_decay) if hasattr(core, "param_groups") else core
    optimizer = build_optimizer(groups, p.optimizer, lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_set_loader) / p.grad_accum))
    total = steps_per_epoch * p.epochs
    if p.max_steps:
        total = min(total, p.max_steps)
    warmup = min(int(p.warmup_epochs * steps_per_epoch), max(0, total - 1))
    scheduler = build_scheduler(optimizer, total_steps=total, warmup_steps=warmup, min_lr_ratio=0.01)
    ckpt = Checkpointer(ctx.stage_dir("pretrain") / "checkpoints", keep=p.keep_checkpoints, is_main=ctx.is_main)
    # What a checkpoint needs to say about how it was launched, so a resume can tell what carries over.
    launch = {"world_size": ctx.world_size, "per_rank_batch": per_rank_batch,
              "global_batch": per_rank_batch * ctx.world_size, "grad_accum": p.grad_accum,
              "steps_per_epoch": steps_per_epoch, "cache": cfg.data.cache}
    resume_state = _load_resume_state(ckpt, launch, method, is_main=ctx.is_main) if ctx.resume else None
    saved_launch = ((resume_state or {}).get("config") or {}).get("launch")
    if saved_launch and any(saved_launch.get(k) != launch[k] for k in ("world_size", "global_batch")):
        # MLflow params are write-once: record the new launch as a tag instead of re-logging them.
        tracker.set_tags({"medcl.resumed_launch": f"world_size {saved_launch.get('world_size')} -> "
                          f"{ctx.world_size}, global batch {saved_launch.get('global_batch')} -> "
                          f"{launch['global_batch']}"})
    else:
        tracker.log_params({"pretrain.steps_per_epoch": steps_per_epoch, "pretrain.total_steps": total,
                            "pretrain.world_size": ctx.world_size, "pretrain.per_rank_batch": per_rank_batch,
                            "model.feature_dim": encoder.feature_dim})

    history = fit(
        model, loader_factory, optimizer, scheduler, comm=distributed.world(), epochs=p.epochs, checkpointer=ckpt, tracker=tracker,
        amp=p.amp, device=ctx.device, grad_accum=p.grad_accum, clip_grad=p.clip_grad,
        channels_last=p.channels_last, checkpoint_every=p.checkpoint_every_steps, resume=False,
        resume_state=resume_state, run_id=tracker.run_id, config={"launch": launch}, max_steps=p.max_steps, total_steps=total,
        log_every=max(1, min(50, total // 20)),
        progress=cfg.runtime.progress and ctx.is_main,
    )

    # -- hand the encoder on (rank 0 writes it; the others wait until it is there) -------------------
    out_path = ctx.stage_dir("pretrain") / "encoder.pt"

    def save_encoder() -> None:
        enc = unwrap_model(model).encoder
        save_checkpoint(out_path, {"encoder": enc.state_dict(), "encoder_name": cfg.model.encoder,
                                   "feature_dim": enc.feature_dim, "method": p.method})

    ctx.on_main("pretrain: saving the encoder", save_encoder)
    last = history[-1] if history else {}
    loss = float(last.get("loss", float("nan")))
    summary = [{"model": p.method, "metric": "final loss", "value": f"{loss:.4f}"}]
    if "data_wait_fraction" in last:
        summary.append({"model": p.method, "metric": "data wait fraction", "value": f"{last['data_wait_fraction']:.2f}"})
    del torch
    return {"encoder": str(out_path), "final_loss": loss, "epochs_run": len(history), "summary": summary}


# -- resuming with a different number of processes -------------------------------------------------------
def resume_report(saved: dict[str, Any] | None, now: dict[str, Any], has_batchnorm: bool) -> str | None:
    """What carries over when a checkpoint written under one launch is resumed under another.

    Under DDP every rank holds the same weights and optimiser state, so model, optimiser, schedule
    position and step counters never depend on the number of processes. What can change is the data:
    the global batch ``world_size x per_rank_batch``, the per-rank shuffling when the dataset is
    cached per rank, and BatchNorm statistics (computed over each rank's batch).

    Args:
        saved: the ``launch`` record stored in the checkpoint (``None`` for older checkpoints).
        now: this launch's record (``world_size``, ``per_rank_batch``, ``global_batch``,
            ``steps_per_epoch``, ``cache``).
        has_batchnorm: whether the model has BatchNorm layers.

    Returns:
        A warning to log, or ``None`` when the launch is unchanged.
    """
    if not saved or (saved.get("world_size") == now["world_size"] and saved.get("global_batch") == now["global_batch"]):
        return None
    w0, w1 = saved.get("world_size"), now["world_size"]
    g0, g1 = saved.get("global_batch"), now["global_batch"]
    parts = [f"resuming a checkpoint written by {w0} process(es) with {w1}: encoder and head weights, "
             "optimiser state, learning-rate schedule position and step counters are rank-independent under DDP "
             "and are restored exactly."]
    if g0 == g1 and now.get("cache", "none") == "none":
        parts.append(f"The global batch is unchanged ({g1} = {w1} x {now['per_rank_batch']}), so the data order and "
                     "per-sample augmentations continue where the run stopped.")
        if has_batchnorm:
            parts.append("BatchNorm statistics are computed per process (per-rank batch "
                         f"{saved.get('per_rank_batch')} -> {now['per_rank_batch']}; sync_bn only syncs on GPUs), "
                         "so the continuation differs from the original run beyond floating-point rounding.")
        else:
            parts.append("Without BatchNorm the continuation matches the original run up to floating-point rounding.")
    else:
        if g0 != g1:
            parts.append(f"NOT preserved: the global batch changes from {g0} ({w0} x {saved.get('per_rank_batch')}) to "
                         f"{g1} ({w1} x {now['per_rank_batch']}) — the effective batch (and the learning rate tuned for "
                         f"it) changes, an epoch has {now.get('steps_per_epoch')} steps instead of "
                         f"{saved.get('steps_per_epoch')}, so the schedule no longer lines up with the epochs; choose a "
                         "pretrain.batch_size divisible by the number of processes to keep it, or scale pretrain.lr.")
        if now.get("cache", "none") != "none":
            parts.append(f"NOT preserved: with data.cache={now['cache']} each process caches and shuffles its own share "
                         "of the data, so the data order and augmentations differ from the original run.")
        parts.append("The run continues soundly but will not reproduce an uninterrupted run.")
    return " ".join(parts)


def _load_resume_state(ckpt: Any, launch: dict[str, Any], model: Any, *, is_main: bool) -> dict[str, Any] | None:
    """The latest checkpoint, checked to be the same on every rank and adapted to this launch."""
    from torch import nn

    from medcl import distributed
    from medcl.errors import CheckpointError

    state = ckpt.load_latest()
    step = -1 if state is None else int(state.get("global_step", 0))
    seen = distributed.gather_sizes(step + 1)
    if len(set(seen)) > 1:
        raise CheckpointError(
            f"the processes found different checkpoints (global steps {[s - 1 for s in seen]}; -1 = none)",
            where=str(ckpt.directory),
            fix="put runtime.output_dir on a file system every node can read (rank 0 writes the checkpoints)",
        )
    if state is None:
        return None
    saved = (state.get("config") or {}).get("launch") if isinstance(state.get("config"), dict) else None
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    note = resume_report(saved, launch, has_bn)
    if note and is_main:
        log.warning("%s", note)
    done = int(state.get("batches_done", 0))
    if saved and done and saved.get("global_batch") and saved["global_batch"] != launch["global_batch"]:
        # Mid-epoch position: the same number of samples consumed, in whole optimiser steps.
        new_done = done * int(saved["global_batch"]) // int(launch["global_batch"])
        new_done -= new_done % int(launch["grad_accum"])
        if is_main:
            log.warning("position in epoch %s converted from %d batches of %s to %d batches of %d",
                        state.get("epoch"), done, saved["global_batch"], new_done, launch["global_batch"])
        state["batches_done"] = new_done
        state["epoch_step"] = new_done // int(launch["grad_accum"])
    return state
