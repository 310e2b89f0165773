"""Resuming a run: where it stopped, and what carries over when it is resumed under another launch.

A training state (:func:`medcl.engine.checkpoint.build_training_state`) says where a run stopped: the
epoch, the loader batches of that epoch already consumed, the optimiser steps taken, the RNG state and
the running sums of the interrupted epoch. :func:`load_resume_state` reads the latest one for every
rank, checks that all ranks found the same, and adapts the position in the epoch when the global batch
changed (a run resumed with a different number of processes).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from medcl import distributed
from medcl.engine.checkpoint import Checkpointer
from medcl.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """How a run was launched, stored in its checkpoints (``config["launch"]``).

    A resume compares it with its own launch to tell what carries over.
    """

    world_size: int
    per_rank_batch: int
    grad_accum: int
    steps_per_epoch: int
    cache: str = "none"

    @property
    def global_batch(self) -> int:
        """Samples of one micro-batch on every rank together: ``world_size * per_rank_batch`` (no ``grad_accum``)."""
        return self.world_size * self.per_rank_batch

    def record(self) -> dict[str, Any]:
        """The dict stored in the checkpoint (``global_batch`` included)."""
        return {**asdict(self), "global_batch": self.global_batch}


def resume_report(saved: dict[str, Any] | None, now: dict[str, Any], has_batchnorm: bool) -> str | None:
    """What carries over when a checkpoint written under one launch is resumed under another.

    Under DDP every rank holds the same weights and optimiser state, so model, optimiser, schedule
    position and step counters never depend on the number of processes. What can change is the data:
    the global batch ``world_size x per_rank_batch``, the per-rank shuffling when the dataset is
    cached per rank, and BatchNorm statistics (computed over each rank's batch).

    Args:
        saved: the ``launch`` record stored in the checkpoint (``None`` for older checkpoints).
        now: this launch's record (:meth:`Launch.record`).
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


def saved_launch(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The launch record a training state was written under (``None`` when absent)."""
    config = (state or {}).get("config")
    return config.get("launch") if isinstance(config, dict) else None


def load_resume_state(ckpt: Checkpointer, launch: Launch, model: nn.Module, *,
                      is_main: bool) -> dict[str, Any] | None:
    """The latest training state in ``ckpt``, checked to be the same on every rank and adapted to ``launch``.

    When the global batch changed, the position in the interrupted epoch is converted so that the same number
    of samples counts as consumed, in whole optimiser steps; :func:`resume_report` is logged on the main rank.

    Raises:
        CheckpointError: the ranks found different checkpoints (e.g. a node-local output directory).
    """
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
    saved, now = saved_launch(state), launch.record()
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    note = resume_report(saved, now, has_bn)
    if note and is_main:
        log.warning("%s", note)
    done = int(state.get("batches_done", 0))
    if saved and done and saved.get("global_batch") and saved["global_batch"] != launch.global_batch:
        new_done = done * int(saved["global_batch"]) // launch.global_batch
        new_done -= new_done % launch.grad_accum
        if is_main:
            log.warning("position in epoch %s converted from %d batches of %s to %d batches of %d",
                        state.get("epoch"), done, saved["global_batch"], new_done, launch.global_batch)
        state["batches_done"] = new_done
        state["epoch_step"] = new_done // launch.grad_accum
    return state
