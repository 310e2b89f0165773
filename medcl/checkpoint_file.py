"""The checkpoint file format: atomic, checksummed ``torch.save`` payloads that load with ``weights_only=True``.

File format (one file, so the checksum can never be out of step with the payload)::

    b"MEDCLCKP" | u32 format version | u64 payload length | 32-byte SHA-256 of payload | payload

where the payload is ``torch.save`` bytes of a state that loads with ``weights_only=True``
(tensors, numbers, strings, lists, tuples, dicts only: no pickled code runs on load).

Writes go to a temporary file in the same directory, are fsynced and then ``os.replace``d
over the target, so a crash or a full disk never leaves a half-written checkpoint under the
real name. Files are created with mode ``0o600`` (weights can memorise training data).

A low floor: the training engine (:mod:`medcl.engine.checkpoint`: training states, rolling checkpoints),
the networks (pretrained weights) and the stages (encoders, fine-tuned models) all read and write through it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import pickle
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
