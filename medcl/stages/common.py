"""Pieces every stage uses: seeding, transforms from the config, encoders, loaders."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
from medcl.data.datasets import BatchAugmentedLoader, build_dataset, build_loader
from medcl.engine.memory import GIB, available_bytes, check_step_fits, estimate_step
from medcl.engine.optim import build_optimizer
from medcl.engine.schedule import build_scheduler
from medcl.networks import build_encoder
from medcl.transforms import build_transforms
from medcl.transforms.batch import build_batch_augment


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (MONAI random transforms are seeded by the loaders).

    With ``deterministic`` (``runtime.deterministic: true``) GPU runs repeat bit for bit too:
    cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless already set),
    cuDNN picks deterministic algorithms without autotuning, and PyTorch's deterministic
    implementations are used (ops without one warn). See ``docs/reliability.md``.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    # both ways: a run with deterministic off after one with it on (one process: tests, notebooks) is not left on
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def transform_params(cfg: Any) -> dict[str, Any]:
    """The preset's parameters set in the config (``transforms:`` keys besides ``preset``), as a new dict.

    ``reader_options`` are ``data.reader_options`` with ``transforms.reader_options`` on top (the same options
    validation read the files with).
    """
    params = dict(cfg.transforms.model_extra or {})
    if cfg.data.reader_options or params.get("reader_options"):
        params["reader_options"] = {**dict(cfg.data.reader_options), **dict(params.get("reader_options") or {})}
    return params


def make_transforms(cfg: Any, *, train: bool, views: int = 1, with_mask: bool = False):
    """The configured preset's transform chain.

    Args:
        cfg: the pipeline config (``transforms.preset`` and its parameters).
        train: the augmenting training chain, else the deterministic evaluation chain.
        views: augmented views of each sample (contrastive pretraining).
        with_mask: carry a ``"mask"`` key along (spatial transforms only, nearest neighbour), unless the config
            names the mask keys itself.
    """
    params = transform_params(cfg)
    if with_mask:
        params.setdefault("mask_keys", ["mask"])
    return build_transforms(cfg.transforms.preset, train=train, views=views, augment_on=cfg.transforms.augment_on,
                            **params)


def make_encoder(cfg: Any, weights: str | Path | None = None):
    """The configured encoder, with pretrained weights when given.

    ``weights`` (an ``encoder.pt`` from pretraining) overrides the config's ``model.pretrained_path`` (a local
    file, or a ``runs:/`` / ``models:/`` URI of a model medcl logged, whose weights file is fetched).
    """
    m = cfg.model
    path = str(weights) if weights else m.pretrained_path
    if path and path.startswith(("runs:/", "models:/")):  # an MLflow model medcl logged: its weights file
        from medcl.tracking.pyfunc import weights_from_uri  # lazy: mlflow, only for a runs:/ or models:/ URI

        path = str(weights_from_uri(path, cfg.tracking.uri))
    return build_encoder(m.encoder, in_channels=m.in_channels, spatial_dims=m.spatial_dims, pretrained_path=path,
                         **m.options)


def make_loader(ctx: RunContext, items: list[dict], transform: Any, *, batch_size: int, shuffle: bool, train: bool,
                epoch: int = 0, distributed: bool | None = None, drop_last: bool = False,
                per_patient: int | None = None):
    """A dataset (cached as configured) and its reproducible loader (patient-grouped with ``per_patient``)."""
    d = ctx.cfg.data
    dist = ctx.world_size > 1 if distributed is None else distributed
    cache_dir = d.cache_dir or str(ctx.run_dir / "cache" / ("train" if train else "eval"))
    ds = build_dataset(items, transform, cache=d.cache, cache_dir=cache_dir, num_workers=d.num_workers,
                       rank=ctx.rank if dist else 0, world_size=ctx.world_size if dist else 1)
    loader = build_loader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=d.num_workers, seed=ctx.cfg.seed,
                          epoch=epoch, distributed=dist, rank=ctx.rank, world_size=ctx.world_size, drop_last=drop_last,
                          persistent_workers=d.persistent_workers and train, per_patient=per_patient)
    if train and ctx.cfg.transforms.augment_on == "batch":  # the transform left the random part to the batches
        augment = build_batch_augment(ctx.cfg.transforms.preset, **transform_params(ctx.cfg))
        return BatchAugmentedLoader(loader, augment, ctx.device, seed=ctx.cfg.seed, rank=ctx.rank)
    return loader


def budget(steps: int | None, epochs: int, steps_per_epoch: int, max_steps: int | None) -> tuple[int, int]:
    """``(epochs to run, optimiser steps in total)`` for a budget in steps (when given) or in epochs.

    A step budget runs as many epochs as it needs, the last one cut short; ``max_steps`` (smoke runs) caps
    either.
    """
    per = max(1, int(steps_per_epoch))
    total = int(steps) if steps else per * int(epochs)
    if max_steps:
        total = min(total, int(max_steps))
    return max(1, math.ceil(total / per)), max(1, total)


def shard(items: list[Any], comm: Any) -> list[Any]:
    """This process's share of ``items`` for evaluation (every ``comm.size``-th item, no padding)."""
    return items[comm.rank::comm.size]


def jsonable(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy values: arrays → lists, numpy scalars → Python numbers."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def supervised_setup(ctx: RunContext, items: list[dict], transform: Any, params_or_groups: Any, *, comm: Any,
                     batch_size: int, epochs: int, max_steps: int | None, lr: float, weight_decay: float,
                     optimizer: str = "adamw", seed_offset: int = 0, steps: int | None = None,
                     warmup_steps: int | None = None):
    """Loader factory, optimiser (AdamW or SGD), warmup + cosine schedule and step count for a supervised loop.

    Shared by fine-tuning (``classify``) and ``segment``: ``warmup_steps`` of linear warmup (default half an
    epoch), a step cap,
    and a loader whose shuffling differs per model (``seed_offset``) so baselines see their own order.
    ``batch_size`` is the global batch: over ``comm``'s processes (DDP) each loads ``batch_size / size``
    samples of one shared permutation, so together they see the single process's batches.

    Returns:
        ``(loader_factory, optimizer, scheduler, epochs, total_steps)`` for :func:`medcl.engine.loop.fit`
        (``steps``, when given, is the budget and ``epochs`` follows from it; see :func:`budget`).
    """
    bs = max(1, min(batch_size, len(items)))
    per_rank = max(1, bs // comm.size)
    loader = make_loader(ctx, items, transform, batch_size=per_rank, shuffle=True, train=True,
                         distributed=comm.size > 1, drop_last=len(items) > bs)
    opt = build_optimizer(params_or_groups, optimizer, lr=lr, weight_decay=weight_decay)
    epochs, total = budget(steps, epochs, len(loader), max_steps)
    warmup = len(loader) // 2 if warmup_steps is None else warmup_steps
    sched = build_scheduler(opt, total_steps=total, warmup_steps=min(total - 1, max(0, warmup)))

    def factory(epoch: int):
        loader.set_epoch(epoch + 1000 * seed_offset)
        return loader

    return factory, opt, sched, epochs, total


def check_step_memory(ctx: RunContext, stage: str, module: Any, loader: Any, batch_size: int, batch_key: str) -> float:
    """Estimate one optimiser step's memory from a 2-sample probe of ``loader``'s first batch; stop if it cannot fit.

    The probe runs ``module`` in eval mode with the random state restored afterwards, so training is exactly what it
    is without the check (no batch-norm statistics, queue or RNG draws are consumed).

    Args:
        ctx: the run (device).
        stage: the stage's name, for the message.
        module: what trains: ``module(batch) -> {"loss", ...}``.
        loader: the training loader (its first batch is read once).
        batch_size: samples per step and process.
        batch_key: the setting that sets it (for the message).

    Returns:
        The estimate in GiB.

    Raises:
        ConfigError: the estimate exceeds the memory available (:func:`medcl.engine.memory.check_step_fits`).
    """
    import torch

    batch = next(iter(loader))
    probe = {k: (v[:2].to(ctx.device) if isinstance(v, torch.Tensor) and v.ndim else v[:2] if isinstance(v, list)
                 else v) for k, v in batch.items()}  # per-sample lists (reports) follow the tensors
    image = next((v for k, v in probe.items() if k in ("views", "image") and isinstance(v, torch.Tensor)), None)
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            est = estimate_step(module, probe, batch_size)
    finally:
        module.train(was_training)
    check_step_fits(stage, est, available_bytes(ctx.device), batch_key=batch_key, batch_size=batch_size,
                    input_shape=tuple(image.shape[1:]) if image is not None else ())
    return est.total / GIB


def data_modality(ctx: RunContext) -> str | None:
    """The run's modality (``data.modality``, else the manifest's single modality)."""
    m = getattr(ctx.cfg.data, "modality", None)
    if m:
        return str(m)
    found = {getattr(r, "modality", None) for r in ctx.data.records}
    return found.pop() if len(found) == 1 else None


def model_requirements() -> list[str]:
    """Pinned requirements of the logged model (saves MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "numpy", "monai", "timm", "medcl"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out
