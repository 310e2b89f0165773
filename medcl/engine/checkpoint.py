"""Atomic, checksummed checkpoints and the resume state.

File format (one file, so the checksum can never be out of step with the payload)::

    b"MEDCLCKP" | u32 format version | u64 payload length | 32-byte SHA-256 of payload | payload

where the payload is ``torch.save`` bytes of a state that loads with ``weights_only=True``
(tensors, numbers, strings, lists, tuples, dicts only: no pickled code runs on load).
RNG states are stored in that form too (:func:`capture_rng_state`).

Writes go to a temporary file in the same directory, are fsynced and then ``os.replace``d
over the target, so a crash or a full disk never leaves a half-written checkpoint under the
real name. Files are created with mode ``0o600`` (weights can memorise training data).

:class:`Checkpointer` keeps ``ckpt-{step:08d}.pt`` files and an atomically written
``latest`` pointer; only the main rank writes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import pickle
import random
import re
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcl.errors import CheckpointError

log = logging.getLogger(__name__)

MAGIC = b"MEDCLCKP"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
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


# ----------------------------------------------------------------------------- sanitising
def _safe(obj: Any, where: str) -> Any:
    """Convert ``obj`` into types that ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (torch.Tensor, torch.Size, torch.dtype, torch.device)):
        return obj
    # subclasses (TorchVersion, IntEnum, numpy-free str subclasses) are not weights_only-safe
    for kind in (bool, int, float, str, bytes):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((_safe(k, where), _safe(v, f"{where}.{k}")) for k, v in obj.items())
    if isinstance(obj, dict):
        return {_safe(k, where): _safe(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_safe(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((_safe(v, where) for v in obj), key=repr)
    if hasattr(obj, "model_dump"):  # pydantic models (the resolved config)
        return _safe(obj.model_dump(mode="json"), where)
    raise CheckpointError(
        f"cannot store a {type(obj).__name__} in a checkpoint",
        where=where,
        fix="store tensors, numbers, strings, lists or dicts (convert objects to a dict first)",
    )


# ----------------------------------------------------------------------------- atomic I/O
def _disk_error(e: OSError, path: Path) -> CheckpointError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"the disk is full while writing a checkpoint in {path.parent} ({e.strerror})",
            where=str(path),
            fix="free space there or point the checkpoint directory at a larger disk; "
                "the previous checkpoint is untouched",
        )
    return CheckpointError(f"cannot write the checkpoint ({e.strerror or e})", where=str(path),
                           fix="check that the directory exists and is writable")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, chunks: list[bytes | memoryview] | bytes, mode: int = 0o600) -> None:
    """Write ``chunks`` to ``path`` via temp file + fsync + ``os.replace``.

    Raises:
        CheckpointError: the write failed (the disk-full case says so); ``path`` is unchanged.
    """
    path = Path(path)
    if isinstance(chunks, bytes):
        chunks = [chunks]
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise _disk_error(e, path) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise ``state`` atomically with a SHA-256 header (see the module docstring).

    Args:
        path: target file.
        state: tensors, numbers, strings, lists, tuples and dicts (numpy arrays and pydantic
            models are converted; anything else is refused).

    Returns:
        The path written.

    Raises:
        CheckpointError: unsupported object in ``state``, or the write failed (disk full, ...).
    """
    path = Path(path)
    safe = _safe(state, "state")
    buf = io.BytesIO()
    torch.save(safe, buf)
    payload = buf.getbuffer()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    atomic_write_bytes(path, [header, payload])
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Loads with ``weights_only=True``: no code from the file is executed.

    Raises:
        CheckpointError: missing, not a medcl checkpoint, truncated, checksum mismatch, or
            containing objects that cannot be loaded safely.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError("checkpoint file does not exist", where=str(path),
                              fix="check the path or the run's checkpoint directory") from e
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint ({e.strerror})", where=str(path),
                              fix="check the file's permissions") from e
    if len(data) < _HEADER.size or data[:8] != MAGIC:
        raise CheckpointError("not a medcl checkpoint (missing header)", where=str(path),
                              fix="pass a file written by medcl's save_checkpoint")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {version} is newer than this medcl ({FORMAT_VERSION})",
                              where=str(path), fix="upgrade medcl to read it")
    payload = memoryview(data)[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(
            f"checkpoint is truncated or corrupt ({len(payload)} payload bytes, header says {length})",
            where=str(path), fix="resume from an earlier checkpoint; this file was not fully written",
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint checksum mismatch: the file is corrupt", where=str(path),
                              fix="resume from an earlier checkpoint or copy the file again")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        detail = lines[0] if lines else str(e).splitlines()[0]
        raise CheckpointError(f"checkpoint cannot be loaded safely ({detail})",
                              where=str(path), fix="only load checkpoints written by medcl") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint holds a {type(state).__name__}, not a dict", where=str(path),
                              fix="only load checkpoints written by medcl")
    return state


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
        if keep < 1:
            raise CheckpointError(f"keep={keep} must be >= 1", where="checkpoint.keep",
                                  fix="keep at least one checkpoint")
        self.directory = Path(directory)
        self.keep = int(keep)
        self.is_main = bool(is_main)
        self.run_id, self.config = run_id, config
        self.last_loaded: Path | None = None

    def path_for(self, step: int) -> Path:
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
