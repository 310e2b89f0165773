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
    kwargs.update(p.method_options)
    method = build_method(p.method, encoder, **kwargs).to(ctx.device)
    if hasattr(method, "setup"):
        method.setup(loader_factory(0))
    model = wrap_ddp(method, ctx.device, sync_bn=p.sync_bn) if ctx.world_size > 1 else method
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
    tracker.log_params({"pretrain.steps_per_epoch": steps_per_epoch, "pretrain.total_steps": total,
                        "pretrain.world_size": ctx.world_size, "pretrain.per_rank_batch": per_rank_batch,
                        "model.feature_dim": encoder.feature_dim})

    history = fit(
        model, loader_factory, optimizer, scheduler, epochs=p.epochs, checkpointer=ckpt, tracker=tracker,
        amp=p.amp, device=ctx.device, grad_accum=p.grad_accum, clip_grad=p.clip_grad,
        channels_last=p.channels_last, checkpoint_every=p.checkpoint_every_steps, resume=ctx.resume,
        run_id=tracker.run_id, config=None, max_steps=p.max_steps, total_steps=total,
        progress=cfg.runtime.progress and ctx.is_main,
    )
    distributed.barrier()

    # -- hand the encoder on -----------------------------------------------------------------------
    out_path = ctx.stage_dir("pretrain") / "encoder.pt"
    if ctx.is_main:
        enc = unwrap_model(model).encoder
        save_checkpoint(out_path, {"encoder": enc.state_dict(), "encoder_name": cfg.model.encoder,
                                   "feature_dim": enc.feature_dim, "method": p.method})
        tracker.log_artifact(ctx.stage_dir("pretrain") / "outputs.json") if (
            ctx.stage_dir("pretrain") / "outputs.json").exists() else None
    distributed.barrier()
    last = history[-1] if history else {}
    loss = float(last.get("loss", float("nan")))
    summary = [{"model": p.method, "metric": "final loss", "value": f"{loss:.4f}"}]
    if "data_wait_fraction" in last:
        summary.append({"model": p.method, "metric": "data wait fraction", "value": f"{last['data_wait_fraction']:.2f}"})
    del torch
    return {"encoder": str(out_path), "final_loss": loss, "epochs_run": len(history), "summary": summary}
