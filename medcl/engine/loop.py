"""The training loop as two plain functions (after MAE's ``engine_pretrain.train_one_epoch``).

A *model* here is a pretraining method or a supervised wrapper: an ``nn.Module`` whose
``forward(batch)`` returns a dict with a scalar ``"loss"`` and optionally other scalars to log; it may
define ``on_step_end(step, total_steps)`` (e.g. the MoCo / BYOL momentum update), called after every
optimiser step. How to train is one :class:`LoopSettings`; what steps the weights is one
:class:`Optimisation`; tracking, checkpointing and an online monitor are passed in, never inherited.

Who reduces is an argument: both loops take ``comm`` (:func:`medcl.distributed.world` for DDP
training on every rank, :data:`medcl.distributed.LOCAL` for one process or rank-0-only work) and never
guess from whether a process group happens to exist, so a loop that runs on rank 0 alone cannot wait
for ranks that never come.

Exact resume: with loaders seeded by ``(seed, epoch)`` (:func:`~medcl.engine.batches.epoch_generator`),
a run interrupted mid-epoch and resumed from its checkpoint in a fresh process reproduces the
uninterrupted run bit for bit on CPU. :func:`train_one_epoch` replays the already-consumed batches of the
interrupted epoch (:attr:`EpochStart.batches_done`) and only *then* restores the saved RNG state, so random
transforms run while replaying do not shift the random streams.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from medcl.distributed import Comm
from medcl.engine.amp import autocast, make_grad_scaler, resolve_amp
from medcl.engine.batches import batch_size, reduce_mean, safe_len, scalar_values, to_device
from medcl.engine.checkpoint import (
    Checkpointer,
    build_training_state,
    restore_rng_state,
    restore_training_state,
)
from medcl.engine.meter import Throughput
from medcl.engine.progress import StepProgress
from medcl.engine.wrap import model_to_channels_last, unwrap_model
from medcl.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- what the loop is given
@dataclass(frozen=True)
class LoopSettings:
    """How to train.

    Attributes:
        epochs: epochs of the whole run (not "more epochs"; :func:`fit` only).
        max_steps: stop once the run's global optimiser step reaches this.
        total_steps: steps of the whole run, passed to ``on_step_end``; by default ``epochs`` x steps per epoch
            (:func:`fit`) or the steps this call will take (:func:`train_one_epoch`).
        device: where batches go; the model is already there.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (see :mod:`medcl.engine.amp`).
        grad_accum: micro-batches per optimiser step; each loss is divided by its group's size, and a shorter
            last group by its own size.
        clip_grad: max global gradient norm (after unscaling), or ``None``.
        channels_last: lay out the model and image tensors channels-last.
        checkpoint_every: also save every this many optimiser steps (:func:`fit`).
        checkpoint_every_s: skip an epoch-end checkpoint written less than this many seconds after the previous
            one (small data: epochs of a few steps would otherwise write the full training state every few
            steps); the last epoch, ``checkpoint_every`` steps and a ``max_steps`` stop are always saved.
        log_every: send ``train/*`` to the tracker every this many steps (:func:`fit`).
        progress: show a progress bar (on ``comm``'s main rank only).
        progress_every: without a terminal, log a progress line every this many steps.
        label: what is trained, before the epoch in the progress bar and log lines (e.g. ``"fine-tune ssl f10"``).
    """

    epochs: int = 1
    max_steps: int | None = None
    total_steps: int | None = None
    device: str | torch.device = "cpu"
    amp: str = "off"
    grad_accum: int = 1
    clip_grad: float | None = None
    channels_last: bool = False
    checkpoint_every: int | None = None
    checkpoint_every_s: float = 0.0
    log_every: int = 10
    progress: bool = True
    progress_every: int = 50
    label: str = ""


@dataclass
class Optimisation:
    """What steps the weights: the optimiser, an optional per-step LR scheduler and a grad scaler.

    The ``GradScaler`` is for fp16 on CUDA; the loop creates one when it is ``None`` and fp16 runs on CUDA.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None

    def step(self, clip_grad: float | None, rescale: float | None = None) -> float | None:
        """Rescale a short accumulation group, unscale, clip, step, zero the grads, step the scheduler.

        Returns:
            The global gradient norm before clipping (``None`` without clipping).
        """
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if rescale is not None:
            for p in params:
                p.grad.mul_(rescale)
        grad_norm = None
        if self.scaler is not None and clip_grad:
            self.scaler.unscale_(self.optimizer)
        if clip_grad:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return grad_norm


@dataclass
class EpochSums:
    """Running sums of an epoch's scalars over its micro-batches, and the gradient norms of its steps.

    Saved with a mid-epoch checkpoint, so that the averages of a resumed epoch cover the whole epoch.
    """

    sums: dict[str, float] = field(default_factory=dict)
    n_micro: int = 0
    grad_norms: list[float] = field(default_factory=list)

    def add(self, values: dict[str, float]) -> None:
        """Add one micro-batch's scalars."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n_micro += 1

    def means(self) -> dict[str, float]:
        """Per-micro-batch averages of every scalar, plus ``grad_norm`` (mean over steps) when clipping."""
        out = {k: v / self.n_micro for k, v in self.sums.items()} if self.n_micro else {}
        if self.grad_norms:
            out["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
        return out

    def state(self) -> dict[str, Any]:
        """The sums as plain Python values, for a mid-epoch checkpoint."""
        return {"sums": dict(self.sums), "n_micro": self.n_micro, "grad_norms": list(self.grad_norms)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> EpochSums:
        """Rebuild the sums saved by :meth:`state` (empty sums for ``None``)."""
        state = state or {}
        return cls({str(k): float(v) for k, v in state.get("sums", {}).items()}, int(state.get("n_micro", 0)),
                   [float(g) for g in state.get("grad_norms", [])])


@dataclass
class EpochStart:
    """Where :func:`train_one_epoch` begins.

    Attributes:
        global_step: optimiser steps of the run taken before this call.
        batches_done: batches of this epoch already consumed (mid-epoch resume), a multiple of ``grad_accum``;
            they are drawn from the loader and discarded.
        rng: RNG state restored after those batches are drawn (mid-epoch resume).
        sums: the epoch's running sums, updated in place (a resumed epoch passes the saved ones).
    """

    global_step: int = 0
    batches_done: int = 0
    rng: dict[str, Any] | None = None
    sums: EpochSums = field(default_factory=EpochSums)


class MetricsSink(Protocol):
    """What the loop logs to (:class:`medcl.tracking.Tracker` satisfies it)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar ``metrics`` at ``step``."""
        ...


class Monitor(Protocol):
    """Watches training every ``every`` steps and at the last (e.g. :class:`medcl.tasks.monitor.OnlineProbe`)."""

    every: int

    def __call__(self, step: int) -> dict[str, float]:
        """Measure at optimiser step ``step``; returns metrics to log (may be empty)."""
        ...


# ----------------------------------------------------------------------------- one epoch
class _Group:
    """The micro-batches of the optimiser step being accumulated."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count, self.divisor = 0, 1

    def add(self, values: dict[str, float], divisor: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count, self.divisor = self.count + 1, divisor

    def pop_means(self) -> dict[str, float]:
        means = {k: v / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def _micro_step(model: nn.Module, batch: Any, optim: Optimisation, amp: str, device: torch.device, divisor: int,
                where: str, no_sync: bool) -> dict[str, float]:
    """Forward and backward of one micro-batch, its loss divided by ``divisor``.

    The loss is checked to be finite before backward. Returns the scalars the model returned, as floats.
    """
    with model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
        with autocast(amp, device):
            out = model(batch)
        values = scalar_values(out, where, device)
        if not math.isfinite(values["loss"]):
            raise TrainingError(f"loss is {values['loss']} at {where}", where=where,
                                fix="lower the learning rate, enable gradient clipping (clip_grad), "
                                    "or check the inputs of this batch for NaN/Inf")
        loss = out["loss"] / divisor
        (optim.scaler.scale(loss) if optim.scaler is not None else loss).backward()
    return values


def _skip(it: Any, n: int) -> tuple[int, bool]:
    """Draw ``n`` batches from ``it`` and discard them; ``(batches drawn, whether the data ran out)``."""
    for i in range(n):
        if next(it, _END) is _END:
            return i, True
    return n, False


_END = object()


def train_one_epoch(model: nn.Module, loader: Iterable, optim: Optimisation, settings: LoopSettings = LoopSettings(),
                    *, comm: Comm, epoch: int = 0, start: EpochStart | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train for one pass over ``loader``, or until the run's step reaches ``settings.max_steps``.

    Args:
        model: method module (optionally DDP / compiled); ``forward(batch) -> {"loss", ...}``.
        loader: iterable of batches (dicts as in ``medcl/README.md``).
        optim: optimiser, scheduler (stepped after every optimiser step) and scaler.
        settings: see :class:`LoopSettings` (``epochs``, ``checkpoint_*`` and ``log_every`` are :func:`fit`'s).
        comm: the processes the logged averages are reduced over (the gradients are DDP's business).
        epoch: epoch number (for messages and logs).
        start: the run's step before this call and, on a mid-epoch resume, the position in the epoch.
        on_step: ``callback(global_step, logs)`` after each optimiser step; ``logs`` holds the step's averages of
            the model's scalars, ``lr``, ``samples_per_s``, ``data_wait_fraction``, ``epoch``, ``batches_done``
            and ``grad_norm`` when clipping.

    Returns:
        Averages over the epoch (a resumed one included): every scalar the model returned (``loss``, ...),
        ``grad_norm`` (mean, when clipping); over this call: ``samples_per_s`` (all ranks together),
        ``data_wait_fraction`` (share of step time spent waiting for the loader, in [0, 1]); ``lr`` (last),
        ``steps``, ``batches_done`` (batches of the epoch consumed, skipped ones included), ``completed``
        (1.0 if the epoch's data was used up, else 0.0).

    Raises:
        TrainingError: NaN/Inf loss (checked before backward), a malformed model output, or a resume position
            that is not a whole number of optimiser steps.

    Note:
        Longer than ~80 lines on purpose: accumulation bookkeeping (group boundaries, a short last group's
        divisor, DDP ``no_sync``), the resume skip and the throughput meter share the loop's local state;
        the per-micro-batch and per-step work already lives in :func:`_micro_step` and ``finish_step``.
    """
    s, start = settings, start or EpochStart()
    device = torch.device(s.device)
    amp = resolve_amp(s.amp, device)
    if optim.scaler is None:
        optim = replace(optim, scaler=make_grad_scaler(amp, device))
    if s.grad_accum < 1:
        raise ConfigError(f"grad_accum={s.grad_accum} must be >= 1", where="grad_accum",
                          fix="use 1 for no accumulation")
    if start.batches_done % s.grad_accum:
        raise TrainingError(f"cannot resume {start.batches_done} batches into epoch {epoch}: not a multiple of "
                            f"grad_accum={s.grad_accum}", where=f"epoch {epoch}",
                            fix="resume with the grad_accum the checkpoint was written with")
    n_batches = safe_len(loader)
    hook = getattr(unwrap_model(model), "on_step_end", None)
    can_no_sync = hasattr(model, "no_sync") and n_batches is not None
    left = None if s.max_steps is None else s.max_steps - start.global_step
    expected = None if n_batches is None else math.ceil(max(0, n_batches - start.batches_done) / s.grad_accum)
    if expected is not None and left is not None:
        expected = min(expected, left)
    total_steps = s.total_steps if s.total_steps is not None else start.global_step + (
        expected if expected is not None else (left or 0))

    model.train()
    optim.optimizer.zero_grad(set_to_none=True)
    it = iter(loader)
    batch_idx, exhausted = _skip(it, start.batches_done)
    if start.rng is not None:
        restore_rng_state(start.rng)
    sums, group, meter = start.sums, _Group(), Throughput()
    steps, lr = 0, float(optim.optimizer.param_groups[0]["lr"])

    def finish_step(rescale: float | None, samples: int, step: int, batches: int) -> dict[str, float]:
        step_lr = float(optim.optimizer.param_groups[0]["lr"])
        grad_norm = optim.step(s.clip_grad, rescale)
        if hook is not None:
            hook(step, total_steps)
        meter.done(samples)
        logs = group.pop_means()
        logs.update(lr=step_lr, **meter.close_step(), epoch=float(epoch), batches_done=float(batches))
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
            sums.grad_norms.append(grad_norm)
        return logs

    desc = f"{s.label} epoch {epoch}" if s.label else f"epoch {epoch}"
    with StepProgress(expected, desc, enabled=s.progress and comm.is_main, log_every=s.progress_every) as bar:
        meter.restart()
        while not exhausted and (left is None or steps < left):
            batch = next(it, _END)
            if batch is _END:
                exhausted = True
                break
            meter.arrived()
            batch = to_device(batch, device, s.channels_last)
            group_start = batch_idx - batch_idx % s.grad_accum
            divisor = min(s.grad_accum, n_batches - group_start) if n_batches is not None else s.grad_accum
            boundary = (batch_idx + 1) % s.grad_accum == 0 or (n_batches is not None and batch_idx == n_batches - 1)
            where = f"epoch {epoch}, step {start.global_step + steps + 1} (batch {batch_idx})"
            values = _micro_step(model, batch, optim, amp, device, divisor, where, can_no_sync and not boundary)
            group.add(values, divisor)
            sums.add(values)
            batch_idx += 1
            if not boundary:
                meter.done(batch_size(batch))
                continue
            steps += 1
            logs = finish_step(None, batch_size(batch), start.global_step + steps, batch_idx)
            lr = logs["lr"]
            bar.update(steps, logs)
            if on_step is not None:
                on_step(start.global_step + steps, logs)
            meter.restart()
        if group.count:  # the loader ended inside a group (length unknown or shorter than len())
            steps += 1
            logs = finish_step(group.divisor / group.count, 0, start.global_step + steps, batch_idx)
            lr = logs["lr"]
            bar.update(steps, logs)
            if on_step is not None:
                on_step(start.global_step + steps, logs)

    completed = exhausted or (n_batches is not None and batch_idx >= n_batches)
    result = reduce_mean({**sums.means(), **meter.total.rates()}, device, comm)
    result["samples_per_s"] *= comm.size
    result.update(lr=lr, steps=float(steps), batches_done=float(batch_idx), completed=float(completed))
    return result


# ----------------------------------------------------------------------------- the run
class _Saver:
    """Writes training states through a :class:`Checkpointer` (nothing without one).

    An ``optional`` save (an epoch end that is neither the last nor due by ``checkpoint_every``) is skipped when
    the previous one is less than ``min_interval_s`` old.
    """

    def __init__(self, checkpointer: Checkpointer | None, core: nn.Module, optim: Optimisation,
                 min_interval_s: float) -> None:
        self.checkpointer, self.core, self.optim, self.min_interval_s = checkpointer, core, optim, min_interval_s
        self.last = time.monotonic()

    def save(self, epoch: int, batches_done: int, epoch_step: int, global_step: int, n_batches: int | None,
             sums: EpochSums | None = None, optional: bool = False) -> None:
        cp = self.checkpointer
        if cp is None or (optional and time.monotonic() - self.last < self.min_interval_s):
            return
        self.last = time.monotonic()
        if n_batches is not None and batches_done >= n_batches:  # a step save at the epoch's last batch
            epoch, batches_done, epoch_step = epoch + 1, 0, 0
        o = self.optim
        state = build_training_state(self.core, o.optimizer, o.scheduler, o.scaler, epoch=epoch,
                                     batches_done=batches_done, epoch_step=epoch_step, global_step=global_step,
                                     run_id=cp.run_id, config=cp.config)
        if batches_done and sums is not None and sums.n_micro:
            state["epoch_accumulator"] = sums.state()
        cp.save(state, global_step)


def _resume_point(state: dict[str, Any] | None, core: nn.Module, optim: Optimisation) -> tuple[int, int, EpochStart]:
    """Restore ``state`` (weights, optimiser, scheduler, scaler) and say where to continue.

    Returns ``(epoch, steps already taken in it, EpochStart)``. At an epoch boundary the RNG is restored now.
    """
    if state is None:
        return 0, 0, EpochStart()
    restore_training_state(state, core, optim.optimizer, optim.scheduler, optim.scaler)
    epoch, skip, step = int(state["epoch"]), int(state["batches_done"]), int(state["global_step"])
    log.info("resuming at epoch %d, batch %d (global step %d)", epoch, skip, step)
    rng, epoch_step = state.get("rng"), int(state.get("epoch_step", 0))
    if skip:
        return epoch, epoch_step, EpochStart(step, skip, rng, EpochSums.from_state(state.get("epoch_accumulator")))
    if rng is not None:
        restore_rng_state(rng)
    return epoch, epoch_step, EpochStart(step)


def _on_step(s: LoopSettings, total: int | None, tracker: MetricsSink | None, monitor: Monitor | None,
             saver: _Saver, epoch: int, n_batches: int | None, start: EpochStart,
             epoch_step: int) -> Callable[[int, dict[str, float]], None]:
    """The callback :func:`fit` gives :func:`train_one_epoch` for ``epoch``.

    Tracking every ``log_every`` steps, the monitor every ``monitor.every`` steps and at the last, a mid-epoch
    checkpoint every ``checkpoint_every``.
    """

    def on_step(step: int, logs: dict[str, float]) -> None:
        if tracker is not None and step % max(1, s.log_every) == 0:
            tracker.log_metrics({f"train/{k}": v for k, v in logs.items() if k not in ("epoch", "batches_done")},
                                step)
        if monitor is not None and (step % monitor.every == 0 or step == total or step == s.max_steps):
            found = monitor(step)
            if tracker is not None and found:
                tracker.log_metrics(found, step)
        done = int(logs["batches_done"])
        if s.checkpoint_every and step % s.checkpoint_every == 0 and (n_batches is None or done < n_batches):
            saver.save(epoch, done, epoch_step + step - start.global_step, step, n_batches, start.sums)

    return on_step


def fit(model: nn.Module, loader_factory: Callable[[int], Iterable], optim: Optimisation, settings: LoopSettings,
        *, comm: Comm, checkpointer: Checkpointer | None = None, tracker: MetricsSink | None = None,
        resume: dict[str, Any] | None = None, monitor: Monitor | None = None) -> list[dict[str, float]]:
    """Train for ``settings.epochs`` epochs (or to ``settings.max_steps``), checkpointing and resuming.

    Args:
        model: method module, already on the device (optionally DDP / compiled).
        loader_factory: ``epoch -> loader``; seed its shuffling with :func:`~medcl.engine.batches.epoch_generator`.
        optim: see :func:`train_one_epoch`.
        settings: see :class:`LoopSettings`.
        comm: who the logged averages are reduced over, see :func:`train_one_epoch`.
        checkpointer: saves at the end of every epoch (see ``checkpoint_every_s``), every ``checkpoint_every``
            steps and when ``max_steps`` stops inside an epoch; its ``run_id`` and ``config`` go into every state.
        tracker: gets ``train/*`` every ``log_every`` steps, ``epoch/*`` after each epoch and the monitor's metrics.
        resume: a training state to continue from (e.g. ``checkpointer.load_latest()`` or
            :func:`medcl.engine.resume.load_resume_state`); ``None`` starts at step 0.
        monitor: called as ``monitor(global_step) -> metrics`` every ``monitor.every`` steps and at the last step.

    Returns:
        One dict per epoch run in this call (partial ones included): the epoch averages plus
        ``epoch`` and ``global_step``.
    """
    s = settings
    device = torch.device(s.device)
    if optim.scaler is None:
        optim = replace(optim, scaler=make_grad_scaler(resolve_amp(s.amp, device), device))
    core = unwrap_model(model)
    if s.channels_last:
        model_to_channels_last(core)
    first_epoch, epoch_step, start = _resume_point(resume, core, optim)
    saver = _Saver(checkpointer, core, optim, s.checkpoint_every_s)
    total = s.total_steps
    history: list[dict[str, float]] = []
    for ep in range(first_epoch, s.epochs):
        if s.max_steps is not None and start.global_step >= s.max_steps:
            break
        loader = loader_factory(ep)
        n_batches = safe_len(loader)
        if total is None and n_batches is not None:
            total = s.epochs * math.ceil(n_batches / s.grad_accum)
        on_step = _on_step(s, total, tracker, monitor, saver, ep, n_batches, start, epoch_step)
        result = train_one_epoch(model, loader, optim, replace(s, total_steps=total), comm=comm, epoch=ep,
                                 start=start, on_step=on_step)
        step = start.global_step + int(result["steps"])
        history.append({"epoch": float(ep), "global_step": float(step), **result})
        if not result["completed"]:  # stopped by max_steps inside the epoch
            saver.save(ep, int(result["batches_done"]), epoch_step + int(result["steps"]), step, n_batches,
                       start.sums)
            break
        if tracker is not None:
            tracker.log_metrics({f"epoch/{k}": v for k, v in result.items()
                                 if k not in ("completed", "steps", "batches_done")}, step)
        final = ep == s.epochs - 1 or (s.max_steps is not None and step >= s.max_steps)
        due = bool(s.checkpoint_every) and step % s.checkpoint_every == 0  # a step save falls on the epoch end
        saver.save(ep + 1, 0, 0, step, None, optional=not (final or due))
        start, epoch_step = EpochStart(step), 0
    return history
