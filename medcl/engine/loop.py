"""Training and evaluation loops as plain functions (after MAE's ``engine_pretrain.train_one_epoch``).

A *model* here is a pretraining method: an ``nn.Module`` whose ``forward(batch)`` returns a dict
with a scalar ``"loss"`` and optionally other scalars to log; it may define
``on_step_end(step, total_steps)`` (e.g. the MoCo / BYOL momentum update), called after every
optimiser step. Tracking and checkpointing are passed in (``on_step`` callback, ``tracker``,
``checkpointer``), never inherited.

Who reduces is an argument: every loop takes ``comm`` (:func:`medcl.distributed.world` for DDP
training on every rank, :data:`medcl.distributed.LOCAL` for one process or rank-0-only work) and never
guesses from whether a process group happens to exist, so a loop that runs on rank 0 alone cannot wait
for ranks that never come.

Exact resume: with loaders seeded by ``(seed, epoch)`` (:func:`epoch_generator`), a run
interrupted mid-epoch and resumed from its checkpoint in a fresh process reproduces the
uninterrupted run bit for bit on CPU. The loop replays the already-consumed batches of the
interrupted epoch (``skip_batches``) and only *then* restores the saved RNG state, so random
transforms run while replaying do not shift the random streams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from medcl.distributed import Comm
from medcl.engine.amp import autocast, make_grad_scaler, resolve_amp
from medcl.engine.checkpoint import build_training_state, restore_rng_state, restore_training_state
from medcl.engine.progress import StepProgress
from medcl.engine.wrap import model_to_channels_last, unwrap_model
from medcl.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

#: batch keys holding images: key -> index of the channel axis
_IMAGE_KEYS = {"image": 1, "views": 2}


# ----------------------------------------------------------------------------- helpers
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A ``torch.Generator`` seeded by ``(seed, epoch)``: pass it to the epoch's ``DataLoader``.

    The shuffle order and worker seeds of epoch ``e`` then depend only on ``(seed, e)``, which
    is what makes mid-epoch resume exact.
    """
    mixed = int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)


def _safe_len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _channels_last(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Make the channel axis the fastest-moving one (``channels_last`` / ``_3d`` for images;
    for ``(B, V, C, ...)`` views every ``views[:, v]`` slice is channels-last)."""
    if not x.is_floating_point() or x.ndim < channel_dim + 3 or x.ndim > channel_dim + 4:
        return x
    perm = [d for d in range(x.ndim) if d != channel_dim] + [channel_dim]
    inv = [perm.index(d) for d in range(x.ndim)]
    return x.permute(*perm).contiguous().permute(*inv)


def to_device(batch: Any, device: torch.device, channels_last: bool = False, _key: str | None = None) -> Any:
    """Move every tensor in a (nested) batch to ``device`` (non-blocking).

    With ``channels_last``, floating ``"image"`` ``(B, C, H, W)`` / ``(B, C, X, Y, Z)`` and
    ``"views"`` ``(B, V, C, ...)`` tensors are laid out channels-last.
    """
    if isinstance(batch, torch.Tensor):
        x = batch.to(device, non_blocking=True)
        if channels_last and _key in _IMAGE_KEYS:
            x = _channels_last(x, _IMAGE_KEYS[_key])
        return x
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last, k if isinstance(k, str) else None) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        # multi-crop views given as a list of (B, C, ...) tensors: channel axis 1
        key = "image" if _key == "views" else _key
        return type(batch)(to_device(v, device, channels_last, key) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("image", "views"):
            if key in batch:
                return _batch_size(batch[key])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple, dict)):
            n = _batch_size(v)
            if n:
                return n
    return 0


def _scalar_outputs(out: Any, where: str) -> dict[str, torch.Tensor]:
    """The scalar entries of a method's output dict (``"loss"`` first)."""
    if not isinstance(out, dict) or "loss" not in out:
        raise TrainingError(
            f"the model returned {type(out).__name__}, not a dict with a 'loss' entry",
            where=where, fix="make the method's forward(batch) return {'loss': tensor, ...}",
        )
    scalars: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            scalars[k] = v.detach().float().reshape(())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            scalars[k] = torch.tensor(float(v))
    if "loss" not in scalars:
        raise TrainingError("the model's 'loss' is not a scalar tensor", where=where,
                            fix="reduce the loss to a single number (mean over the batch)")
    return scalars


def _reduce_mean(values: dict[str, float], device: torch.device, comm: Comm) -> dict[str, float]:
    """Average a dict of floats over ``comm``'s processes (identity for one process)."""
    if not values or comm.size == 1:
        return values
    keys = sorted(values)
    t = comm.all_reduce_mean(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, t.tolist()))


# ----------------------------------------------------------------------------- training
def _optimizer_step(optimizer, scaler, clip_grad: float | None, rescale: float | None) -> float | None:
    """Unscale, rescale a short accumulation group, clip, step, zero grads; returns the grad norm."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if rescale is not None:
        for p in params:
            p.grad.mul_(rescale)
    grad_norm = None
    if scaler is not None and clip_grad:
        scaler.unscale_(optimizer)
    if clip_grad:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    comm: Comm,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "off",
    device: torch.device | str,
    epoch: int,
    grad_accum: int = 1,
    clip_grad: float | None = None,
    channels_last: bool = False,
    step_offset: int = 0,
    total_steps: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    max_steps: int | None = None,
    skip_batches: int = 0,
    rng_state: dict[str, Any] | None = None,
    progress: bool = True,
    log_every: int = 50,
    accumulator: dict[str, Any] | None = None,
    label: str = "",
) -> dict[str, float]:
    """Train for one pass over ``loader`` (or ``max_steps`` optimiser steps).

    Args:
        model: method module (optionally DDP / compiled); ``forward(batch) -> {"loss", ...}``.
        loader: iterable of batches (dicts as in ``medcl/README.md``).
        optimizer: the optimiser; stepped every ``grad_accum`` batches.
        comm: the processes the logged averages are reduced over (the gradients are DDP's business):
            ``distributed.world()`` when every rank trains, ``distributed.LOCAL`` otherwise.
        scheduler: per-step LR scheduler, stepped after every optimiser step.
        scaler: ``GradScaler`` for fp16 (created when ``None`` and fp16 runs on CUDA).
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (see :mod:`medcl.engine.amp`).
        device: where batches go.
        epoch: epoch number (for messages and logs).
        grad_accum: micro-batches per optimiser step; each loss is divided by its group's size,
            and a shorter last group is divided by its own size.
        clip_grad: max global gradient norm (after unscaling), or ``None``.
        channels_last: lay out image tensors channels-last.
        step_offset: optimiser steps taken before this call (global step of the first step - 1).
        total_steps: steps in the whole run, passed to ``on_step_end`` (estimated if ``None``).
        on_step: ``callback(global_step, logs)`` after each optimiser step.
        max_steps: stop after this many optimiser steps in this call.
        skip_batches: batches of this epoch already consumed (mid-epoch resume); a multiple
            of ``grad_accum``. They are drawn from the loader and discarded.
        rng_state: RNG state restored after the skipped batches are drawn (mid-epoch resume).
        accumulator: the running epoch sums, updated in place (``{"sums": {name: float},
            "n_micro": int, "grad_norms": [float]}``); pass the one saved with a mid-epoch
            checkpoint so that the epoch averages of a resumed epoch cover the whole epoch.
        progress: show a progress bar (on ``comm``'s main rank only).
        log_every: without a terminal, log a line every this many steps.
        label: what is trained, before the epoch in the progress bar and log lines (e.g. ``"fine-tune ssl f10"``).

    Returns:
        Averages over this call: every scalar the model returned (``loss``, ...), ``lr`` (last),
        ``grad_norm`` (mean, when clipping), ``samples_per_s`` (all ranks together),
        ``data_wait_fraction`` (share of step time spent waiting for the loader, in [0, 1]),
        ``steps``, ``batches_done`` (batches of the epoch consumed, skipped ones included),
        ``completed`` (1.0 if the epoch's data was used up, else 0.0).

    Raises:
        TrainingError: NaN/Inf loss (checked before backward), or a malformed model output.
    """
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    if scaler is None:
        scaler = make_grad_scaler(amp, device)
    if grad_accum < 1:
        raise ConfigError(f"grad_accum={grad_accum} must be >= 1", where="grad_accum",
                          fix="use 1 for no accumulation")
    if skip_batches % grad_accum:
        raise TrainingError(
            f"cannot resume {skip_batches} batches into epoch {epoch}: not a multiple of grad_accum={grad_accum}",
            where=f"epoch {epoch}", fix="resume with the grad_accum the checkpoint was written with",
        )
    n_batches = _safe_len(loader)
    core = unwrap_model(model)
    hook = getattr(core, "on_step_end", None)
    can_no_sync = hasattr(model, "no_sync") and n_batches is not None
    if total_steps is None:
        remaining = math.ceil(max(0, n_batches - skip_batches) / grad_accum) if n_batches is not None else 0
        if max_steps is not None:
            remaining = min(remaining, max_steps) if n_batches is not None else max_steps
        total_steps = step_offset + remaining
    bar_total = None
    if n_batches is not None:
        bar_total = math.ceil(max(0, n_batches - skip_batches) / grad_accum)
        if max_steps is not None:
            bar_total = min(bar_total, max_steps)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    it = iter(loader)
    batch_idx = 0
    exhausted = False
    for _ in range(skip_batches):
        try:
            next(it)
        except StopIteration:
            exhausted = True
            break
        batch_idx += 1
    if rng_state is not None:
        restore_rng_state(rng_state)

    acc = accumulator if accumulator is not None else {}
    sums: dict[str, float] = acc.setdefault("sums", {})
    acc.setdefault("n_micro", 0)
    steps = 0
    lr = float(optimizer.param_groups[0]["lr"])
    grad_norms: list[float] = acc.setdefault("grad_norms", [])
    total_time = total_wait = 0.0
    total_samples = 0
    g_sums: dict[str, float] = {}
    g_time = g_wait = 0.0
    g_samples = g_count = 0
    g_divisor = grad_accum

    def finish_group(rescale: float | None) -> None:
        nonlocal steps, lr, g_sums, g_time, g_wait, g_samples, g_count, total_time, total_wait, total_samples
        t0 = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        grad_norm = _optimizer_step(optimizer, scaler, clip_grad, rescale)
        if scheduler is not None:
            scheduler.step()
        steps += 1
        global_step = step_offset + steps
        if hook is not None:
            hook(global_step, total_steps)
        g_time += time.perf_counter() - t0
        total_time += g_time
        total_wait += g_wait
        total_samples += g_samples
        logs = {k: v / g_count for k, v in g_sums.items()}
        logs.update(
            lr=lr,
            samples_per_s=g_samples / g_time if g_time > 0 else 0.0,
            data_wait_fraction=min(1.0, g_wait / g_time) if g_time > 0 else 0.0,
            epoch=float(epoch),
            batches_done=float(batch_idx),
        )
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
            grad_norms.append(grad_norm)
        bar.update(steps, logs)
        if on_step is not None:
            on_step(global_step, logs)
        g_sums, g_time, g_wait, g_samples, g_count = {}, 0.0, 0.0, 0, 0

    desc = f"{label} epoch {epoch}" if label else f"epoch {epoch}"
    with StepProgress(bar_total, desc, enabled=progress and comm.is_main, log_every=log_every) as bar:
        t_prev = time.perf_counter()
        while max_steps is None or steps < max_steps:
            try:
                batch = next(it)
            except StopIteration:
                exhausted = True
                break
            t_arrive = time.perf_counter()
            g_wait += t_arrive - t_prev
            batch = to_device(batch, device, channels_last)
            group_start = batch_idx - batch_idx % grad_accum
            g_divisor = min(grad_accum, n_batches - group_start) if n_batches is not None else grad_accum
            is_last = n_batches is not None and batch_idx == n_batches - 1
            boundary = (batch_idx + 1) % grad_accum == 0 or is_last
            sync = model.no_sync() if (can_no_sync and not boundary) else contextlib.nullcontext()
            with sync:
                with autocast(amp, device):
                    out = model(batch)
                where = f"epoch {epoch}, step {step_offset + steps + 1} (batch {batch_idx})"
                scalars = _scalar_outputs(out, where)
                names = list(scalars)
                values = torch.stack([scalars[k].to(device) for k in names]).tolist()  # one sync
                loss_value = values[names.index("loss")]
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss is {loss_value} at epoch {epoch}, step {step_offset + steps + 1}",
                        where=where,
                        fix="lower the learning rate, enable gradient clipping (clip_grad), "
                            "or check the inputs of this batch for NaN/Inf",
                    )
                loss = out["loss"] / g_divisor
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            for k, v in zip(names, values):
                g_sums[k] = g_sums.get(k, 0.0) + v
                sums[k] = sums.get(k, 0.0) + v
            acc["n_micro"] += 1
            g_count += 1
            g_samples += _batch_size(batch)
            batch_idx += 1
            g_time += time.perf_counter() - t_prev
            if boundary:
                finish_group(None)
            t_prev = time.perf_counter()
        if g_count:  # loader ended inside a group (length unknown or shorter than len())
            finish_group(g_divisor / g_count)

    completed = exhausted or (n_batches is not None and batch_idx >= n_batches)
    n_micro = acc["n_micro"]
    result = {k: v / n_micro for k, v in sums.items()} if n_micro else {}
    if grad_norms:
        result["grad_norm"] = sum(grad_norms) / len(grad_norms)
    result["samples_per_s"] = total_samples / total_time if total_time > 0 else 0.0
    result["data_wait_fraction"] = min(1.0, total_wait / total_time) if total_time > 0 else 0.0
    result = _reduce_mean(result, device, comm)
    result["samples_per_s"] *= comm.size
    result.update(lr=lr, steps=float(steps), batches_done=float(batch_idx), completed=float(completed))
    return result


def fit(
    model: nn.Module,
    loader_factory: Callable[[int], Iterable],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    comm: Comm,
    epochs: int,
    start_epoch: int = 0,
    checkpointer: Any = None,
    tracker: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "off",
    device: torch.device | str = "cpu",
    grad_accum: int = 1,
    clip_grad: float | None = None,
    channels_last: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = True,
    resume_state: dict[str, Any] | None = None,
    run_id: str | None = None,
    config: Any = None,
    max_steps: int | None = None,
    total_steps: int | None = None,
    log_every: int = 10,
    on_epoch_end: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
    progress: bool = True,
    monitor: Any = None,
    label: str = "",
    checkpoint_every_s: float = 0.0,
) -> list[dict[str, float]]:
    """Train for ``epochs`` epochs, checkpointing and resuming.

    Args:
        model: method module, already on ``device`` (optionally DDP / compiled).
        loader_factory: ``epoch -> loader``; seed its shuffling with :func:`epoch_generator`.
        optimizer, scheduler: as for :func:`train_one_epoch` (scheduler stepped per step).
        comm: who the logged averages are reduced over, see :func:`train_one_epoch`.
        epochs: total epochs of the run (not "more epochs").
        start_epoch: first epoch when not resuming.
        checkpointer: a :class:`~medcl.engine.checkpoint.Checkpointer` (or ``None``); saves at
            the end of every epoch, every ``checkpoint_every`` steps and when ``max_steps`` stops.
        tracker: object with ``log_metrics(dict, step)`` or ``None``: gets ``train/*`` every
            ``log_every`` steps and ``epoch/*`` after each epoch.
        scaler, amp, device, grad_accum, clip_grad, channels_last: see :func:`train_one_epoch`.
        resume: load ``checkpointer.load_latest()`` when there is one.
        resume_state: a state already loaded by the caller (e.g. to reopen its tracking run).
        run_id, config: stored in every checkpoint.
        max_steps: stop once the global step reaches this.
        total_steps: steps in the whole run for ``on_step_end``; default ``epochs * steps/epoch``.
        on_epoch_end: ``callback(epoch, record) -> extra metrics``.
        progress: progress bar.
        monitor: called as ``monitor(global_step) -> metrics`` every ``monitor.every`` steps and at the last
            step (e.g. :class:`medcl.tasks.monitor.OnlineProbe`); its metrics go to ``tracker`` at that step.
        label: what is trained, for the progress bar and log lines.
        checkpoint_every_s: skip an epoch-end checkpoint written less than this many seconds after the previous
            one (small data: epochs of a few steps would otherwise write the full training state every few
            steps); the last epoch, ``checkpoint_every`` steps and a ``max_steps`` stop are always saved.

    Returns:
        One dict per epoch run in this call (partial ones included): the epoch averages plus
        ``epoch`` and ``global_step``.
    """
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    if scaler is None:
        scaler = make_grad_scaler(amp, device)
    core = unwrap_model(model)
    if channels_last:
        model_to_channels_last(core)

    epoch, skip, global_step, rng = int(start_epoch), 0, 0, None
    carried: dict[str, Any] | None = None  # running sums of an interrupted epoch
    state = resume_state
    if state is None and resume and checkpointer is not None:
        state = checkpointer.load_latest()
    if state is not None:
        restore_training_state(state, core, optimizer, scheduler, scaler)
        epoch, skip, global_step = int(state["epoch"]), int(state["batches_done"]), int(state["global_step"])
        epoch_step = int(state.get("epoch_step", 0))
        rng = state.get("rng")
        carried = state.get("epoch_accumulator") if skip else None
        run_id = run_id if run_id is not None else state.get("run_id")
        log.info("resuming at epoch %d, batch %d (global step %d)", epoch, skip, global_step)
    else:
        epoch_step = 0
    if rng is not None and skip == 0:
        restore_rng_state(rng)
        rng = None

    last_save = [time.monotonic()]

    def save(ep: int, batches_done: int, ep_step: int, n_batches: int | None,
             acc: dict[str, Any] | None = None, optional: bool = False) -> None:
        if checkpointer is None:
            return
        if optional and time.monotonic() - last_save[0] < checkpoint_every_s:
            return
        last_save[0] = time.monotonic()
        if n_batches is not None and batches_done >= n_batches:
            ep, batches_done, ep_step = ep + 1, 0, 0
        state = build_training_state(core, optimizer, scheduler, scaler, epoch=ep, batches_done=batches_done,
                                     epoch_step=ep_step, global_step=global_step, run_id=run_id, config=config)
        if batches_done and acc:
            state["epoch_accumulator"] = {"sums": dict(acc.get("sums", {})), "n_micro": int(acc.get("n_micro", 0)),
                                          "grad_norms": list(acc.get("grad_norms", []))}
        checkpointer.save(state, global_step)

    history: list[dict[str, float]] = []
    for ep in range(epoch, epochs):
        if max_steps is not None and global_step >= max_steps:
            break
        loader = loader_factory(ep)
        n_batches = _safe_len(loader)
        if total_steps is None and n_batches is not None:
            total_steps = epochs * math.ceil(n_batches / grad_accum)
        start_step, start_epoch_step = global_step, epoch_step
        acc: dict[str, Any] = {}
        if carried:
            acc = {"sums": {str(k): float(v) for k, v in carried.get("sums", {}).items()},
                   "n_micro": int(carried.get("n_micro", 0)),
                   "grad_norms": [float(g) for g in carried.get("grad_norms", [])]}

        def on_step(step: int, logs: dict[str, float], _ep: int = ep, _n: int | None = n_batches,
                    _s0: int = start_step, _es0: int = start_epoch_step, _acc: dict[str, Any] = acc,
                    _total: int | None = total_steps) -> None:
            nonlocal global_step
            global_step = step
            if tracker is not None and step % max(1, log_every) == 0:
                tracker.log_metrics({f"train/{k}": v for k, v in logs.items()
                                     if k not in ("epoch", "batches_done")}, step)
            if monitor is not None and (step % monitor.every == 0 or step == _total
                                        or (max_steps is not None and step == max_steps)):
                found = monitor(step)
                if tracker is not None and found:
                    tracker.log_metrics(found, step)
            done = int(logs["batches_done"])
            if checkpoint_every and step % checkpoint_every == 0 and (_n is None or done < _n):
                save(_ep, done, _es0 + step - _s0, _n, _acc)

        result = train_one_epoch(
            model, loader, optimizer, comm=comm, scheduler=scheduler, scaler=scaler, amp=amp, device=device, epoch=ep,
            grad_accum=grad_accum, clip_grad=clip_grad, channels_last=channels_last, step_offset=start_step,
            total_steps=total_steps, on_step=on_step,
            max_steps=None if max_steps is None else max_steps - start_step,
            skip_batches=skip, rng_state=rng, progress=progress, accumulator=acc, label=label,
        )
        skip, rng, epoch_step, carried = 0, None, 0, None
        global_step = start_step + int(result["steps"])
        record = {"epoch": float(ep), "global_step": float(global_step), **result}
        if result["completed"]:
            if on_epoch_end is not None:
                record.update(on_epoch_end(ep, record) or {})
            if tracker is not None:
                tracker.log_metrics({f"epoch/{k}": v for k, v in record.items()
                                     if k not in ("epoch", "global_step", "completed", "steps", "batches_done")}, global_step)
            history.append(record)
            final = ep == epochs - 1 or (max_steps is not None and global_step >= max_steps)
            due = bool(checkpoint_every) and global_step % checkpoint_every == 0  # a step save falls on the epoch end
            save(ep + 1, 0, 0, None, optional=not (final or due))
        else:  # stopped by max_steps inside the epoch
            history.append(record)
            save(ep, int(result["batches_done"]), start_epoch_step + int(result["steps"]), n_batches, acc)
            break
    return history


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, comm: Comm, device: torch.device | str,
             amp: str = "off") -> dict[str, float]:
    """Average the scalars ``model(batch)`` returns over ``loader`` (weighted by batch size).

    Runs in eval mode under ``no_grad`` and restores the previous train/eval mode. The averages are
    combined over ``comm``'s processes (each holding its shard of the data).
    """
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    try:
        for i, batch in enumerate(loader):
            batch = to_device(batch, device)
            with autocast(amp, device):
                out = model(batch)
            scalars = _scalar_outputs(out, f"evaluation batch {i}")
            n = max(1, _batch_size(batch))
            names = list(scalars)
            for k, v in zip(names, torch.stack([scalars[k].to(device) for k in names]).tolist()):
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
    finally:
        model.train(was_training)
    if comm.size > 1:
        reduced = _reduce_mean({**sums, "__count": float(count)}, device, comm)
        count_mean = reduced.pop("__count")
        return {k: v / count_mean for k, v in reduced.items()} if count_mean else {}
    return {k: v / count for k, v in sums.items()} if count else {}


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    key: str = "image",
    amp: str = "off",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Run ``encoder(batch[key])`` over ``loader`` and collect the features.

    Feature maps with spatial axes ``(B, D, *spatial)`` are global-average-pooled to ``(B, D)``.
    Runs on this process's loader only (give rank 0 an unsharded loader).

    Returns:
        ``features`` ``(N, D)`` float32, ``labels`` (``(N,)`` or ``(N, K)``, or ``None`` when
        the batches carry none), ``patients`` ``(N,)`` int64 or ``None``, ``indices`` ``(N,)``
        int64 (the batches' ``"index"``, else 0..N-1).
    """
    device = torch.device(device)
    amp = resolve_amp(amp, device)
    was_training = encoder.training
    encoder.eval()
    feats, labels, patients, indices = [], [], [], []
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if not isinstance(batch, dict) or key not in batch:
                raise TrainingError(
                    f"batch {i} has no {key!r} entry (keys: {sorted(batch) if isinstance(batch, dict) else type(batch).__name__})",
                    where="extract_features", fix="pass key= one of the batch's keys, e.g. 'image'",
                )
            x = to_device(batch[key], device)
            with autocast(amp, device):
                f = encoder(x)
            if not isinstance(f, torch.Tensor):
                raise TrainingError(f"the encoder returned {type(f).__name__}, not a tensor",
                                    where="extract_features", fix="pass the encoder, not the method")
            if f.ndim > 2:
                f = f.flatten(2).mean(-1)
            feats.append(f.float().cpu().numpy())
            n = f.shape[0]
            if "label" in batch:
                labels.append(torch.as_tensor(batch["label"]).cpu().numpy())
            if "patient" in batch:
                patients.append(torch.as_tensor(batch["patient"]).cpu().numpy().astype(np.int64))
            if "index" in batch:
                indices.append(torch.as_tensor(batch["index"]).cpu().numpy().astype(np.int64))
            else:
                indices.append(np.arange(seen, seen + n, dtype=np.int64))
            seen += n
    finally:
        encoder.train(was_training)
    if not feats:
        return np.zeros((0, 0), np.float32), None, None, np.zeros((0,), np.int64)
    features = np.concatenate(feats).astype(np.float32, copy=False)
    lab = np.concatenate(labels) if len(labels) == len(feats) else None
    pat = np.concatenate(patients) if len(patients) == len(feats) else None
    return features, lab, pat, np.concatenate(indices)
