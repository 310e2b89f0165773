"""Inference loops: the averages a method returns over a loader, and an encoder's features.

Both run in eval mode under ``no_grad`` and restore the module's previous mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from medcl.distributed import Comm
from medcl.engine.amp import autocast, resolve_amp
from medcl.engine.batches import batch_size, reduce_mean, scalar_outputs, to_device
from medcl.errors import TrainingError


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
            scalars = scalar_outputs(out, f"evaluation batch {i}")
            n = max(1, batch_size(batch))
            names = list(scalars)
            for k, v in zip(names, torch.stack([scalars[k].to(device) for k in names]).tolist()):
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
    finally:
        model.train(was_training)
    if comm.size > 1:
        reduced = reduce_mean({**sums, "__count": float(count)}, device, comm)
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
