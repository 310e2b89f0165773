"""What moves through the loop: seeded epoch order, batches on the device, a method's scalar outputs.

A batch is a dict as in ``medcl/README.md`` (``"image"`` ``(B, C, *spatial)`` or ``"views"``
``(B, V, C, *spatial)``, ``"label"``, ``"patient"``, ``"index"``, ...); a method's output is a dict
with a scalar ``"loss"`` and optionally other scalars to log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from medcl.distributed import Comm
from medcl.errors import TrainingError

#: batch keys holding images: key -> index of the channel axis
_IMAGE_KEYS = {"image": 1, "views": 2}


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A ``torch.Generator`` seeded by ``(seed, epoch)``: pass it to the epoch's ``DataLoader``.

    The shuffle order and worker seeds of epoch ``e`` then depend only on ``(seed, e)``, which
    is what makes mid-epoch resume exact.
    """
    mixed = int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)


def safe_len(loader: Iterable) -> int | None:
    """``len(loader)``, or ``None`` for an iterable without a length (a generator)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _channels_last(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Make the channel axis the fastest-moving one (``channels_last`` / ``_3d`` for images).

    For ``(B, V, C, ...)`` views every ``views[:, v]`` slice is channels-last.
    """
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


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first axis of ``"image"`` / ``"views"``, else of its first tensor."""
    if isinstance(batch, dict):
        for key in ("image", "views"):
            if key in batch:
                return batch_size(batch[key])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple, dict)):
            n = batch_size(v)
            if n:
                return n
    return 0


def scalar_outputs(out: Any, where: str) -> dict[str, torch.Tensor]:
    """The scalar entries of a method's output dict (``"loss"`` first), detached, as 0-d float tensors.

    Raises:
        TrainingError: ``out`` is not a dict with a scalar ``"loss"``.
    """
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


def scalar_values(out: Any, where: str, device: torch.device) -> dict[str, float]:
    """:func:`scalar_outputs` as Python floats, read from the device with one synchronisation."""
    scalars = scalar_outputs(out, where)
    names = list(scalars)
    return dict(zip(names, torch.stack([scalars[k].to(device) for k in names]).tolist()))


def reduce_mean(values: dict[str, float], device: torch.device, comm: Comm) -> dict[str, float]:
    """Average a dict of floats over ``comm``'s processes (identity for one process)."""
    if not values or comm.size == 1:
        return values
    keys = sorted(values)
    t = comm.all_reduce_mean(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, t.tolist()))
