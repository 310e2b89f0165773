"""Training states and rolling checkpoints; the file format is :mod:`medcl.checkpoint_file`.

RNG states are stored in the ``weights_only``-safe form that format needs (:func:`capture_rng_state`).

:class:`Checkpointer` keeps ``ckpt-{step:08d}.pt`` files and an atomically written
``latest`` pointer; only the main rank writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcl.checkpoint_file import FORMAT_VERSION, atomic_write_bytes, load_checkpoint, save_checkpoint
from medcl.errors import CheckpointError

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
LATEST = "latest"


# ----------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global random stream in a ``weights_only``-safe form.

    Returns:
        ``{"python": (version, tuple[int], gauss), "numpy": {...}, "torch": uint8 tensor,
        "cuda": list of uint8 tensors (one per device) or None}``.
    """
    py_version, py_state, py_gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": (int(py_version), tuple(int(v) for v in py_state), py_gauss),
        "numpy": {
            "name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the streams captured by :func:`capture_rng_state`.

    Raises:
        CheckpointError: the state is not in the expected form.
    """
    try:
        version, py_state, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in py_state), gauss))
        npst = state["numpy"]
        keys = np.asarray(npst["keys"].numpy(), dtype=np.uint32)
        np.random.set_state((npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                             float(npst["cached_gaussian"])))
        torch.set_rng_state(state["torch"].to(dtype=torch.uint8, device="cpu"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the saved random-number state is unreadable ({e})", where="checkpoint rng",
                              fix="resume from a checkpoint written by this medcl version") from e
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(dtype=torch.uint8, device="cpu") for s in cuda])
        else:
            log.warning("checkpoint holds CUDA RNG states for %d devices, this machine has %d; "
                        "CUDA random streams are not restored", len(cuda), torch.cuda.device_count())


# ----------------------------------------------------------------------------- training state
def build_training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    epoch: int,
    batches_done: int = 0,
    epoch_step: int = 0,
    global_step: int,
    run_id: str | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """Everything a resume needs, as a checkpointable dict.

    Args:
        model: the unwrapped module (no DDP / compile wrapper, so keys carry no prefix).
        optimizer: its state is saved when given.
        scheduler: LR scheduler whose state is saved when given.
        scaler: AMP ``GradScaler`` whose state is saved when given.
        epoch: the epoch to continue in.
        batches_done: loader batches of ``epoch`` already consumed (mid-epoch resume).
        epoch_step: optimiser steps already taken in ``epoch``.
        global_step: optimiser steps taken since the start of the run.
        run_id: tracking run id (opaque), so the resumed run logs into the same run.
        config: the resolved config (dict or pydantic model).
    """
    return {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "epoch": int(epoch),
        "batches_done": int(batches_done),
        "epoch_step": int(epoch_step),
        "global_step": int(global_step),
        "run_id": run_id,
        "config": config,
        "torch_version": str(torch.__version__),
    }


def restore_training_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
) -> None:
    """Load model / optimizer / scheduler / scaler from ``state`` (RNG is left to the caller).

    Raises:
        CheckpointError: the state does not match the objects (different architecture, ...).
    """
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"model weights do not fit this model ({str(e).splitlines()[0]})",
                              where="checkpoint model",
                              fix="resume with the same model config the checkpoint was written with") from e
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        saved = state.get(name)
        if obj is None or saved is None:
            continue
        try:
            obj.load_state_dict(saved)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{name} state does not fit ({str(e).splitlines()[0]})",
                                  where=f"checkpoint {name}",
                                  fix=f"resume with the same {name} settings the run was started with") from e


# ----------------------------------------------------------------------------- checkpointer
class Checkpointer:
    """Rolling checkpoints ``ckpt-{step:08d}.pt`` in one directory plus a ``latest`` pointer.

    Args:
        directory: where checkpoints live (created on first save).
        keep: how many recent checkpoints to keep (>= 1).
        is_main: only the main rank writes; other ranks' ``save`` is a no-op.
        run_id: tracking run id (opaque) the training loop stores in every state, so that a resumed run logs
            into the same run.
        config: what the loop stores as the state's ``config`` (e.g. ``{"launch": ...}``).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, is_main: bool = True, *,
                 run_id: str | None = None, config: Any = None) -> None:
        """Keep the settings; nothing is written before the first :meth:`save`.

        Raises:
            CheckpointError: ``keep`` below 1.
        """
        if keep < 1:
            raise CheckpointError(f"keep={keep} must be >= 1", where="checkpoint.keep",
                                  fix="keep at least one checkpoint")
        self.directory = Path(directory)
        self.keep = int(keep)
        self.is_main = bool(is_main)
        self.run_id, self.config = run_id, config
        self.last_loaded: Path | None = None

    def path_for(self, step: int) -> Path:
        """The checkpoint file of optimiser step ``step`` (``ckpt-00000123.pt``)."""
        return self.directory / f"ckpt-{int(step):08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every checkpoint file, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME_RE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def _pointer(self) -> Path | None:
        ptr = self.directory / LATEST
        try:
            name = ptr.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return self.directory / name if _NAME_RE.match(name) else None

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        """Write ``state`` as step ``step``, move ``latest`` to it, prune old ones.

        Checkpoints with a step above ``step`` belong to an abandoned continuation (the run
        was resumed from an older checkpoint) and are removed.

        Returns:
            The file written, or ``None`` on non-main ranks.

        Raises:
            CheckpointError: the write failed; the previous checkpoint and pointer are intact.
        """
        if not self.is_main:
            return None
        path = save_checkpoint(self.path_for(step), state)
        atomic_write_bytes(self.directory / LATEST, (path.name + "\n").encode())
        older = [(s, p) for s, p in self.checkpoints() if s <= step]
        stale = [p for s, p in self.checkpoints() if s > step]
        doomed = [p for _, p in older[: max(0, len(older) - self.keep)]] + stale
        for p in doomed:
            if p != path:
                try:
                    p.unlink()
                except OSError as e:
                    log.warning("could not remove old checkpoint %s: %s", p, e)
        # half-written temporary files of a process killed while writing (only the main rank writes here)
        for p in self.directory.glob(".ckpt-*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
        return path

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The newest valid checkpoint, or ``None`` when the directory holds none.

        Tries the file named by ``latest`` first, then the others from newest to oldest,
        logging a warning for each unusable one.

        Raises:
            CheckpointError: checkpoints exist but none is usable.
        """
        files = [p for _, p in reversed(self.checkpoints())]
        ptr = self._pointer()
        if ptr is not None and ptr in files:
            files.remove(ptr)
            files.insert(0, ptr)
        if not files:
            return None
        errors = []
        for i, p in enumerate(files):
            try:
                state = load_checkpoint(p, map_location=map_location)
            except CheckpointError as e:
                errors.append(e.line())
                nxt = files[i + 1].name if i + 1 < len(files) else "nothing"
                log.warning("checkpoint %s is unusable (%s); falling back to %s", p, e.what, nxt)
                continue
            self.last_loaded = p
            return state
        raise CheckpointError(
            f"none of the {len(files)} checkpoints is usable: " + "; ".join(errors),
            where=str(self.directory),
            fix="move the directory aside to start the run from scratch",
        )
