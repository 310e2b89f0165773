"""Shared pieces of the contrastive losses: validation, cross-rank gathering, the masked core.

The core (:func:`masked_contrastive`) is the SupCon "out" loss in its most general form:

    loss_a = - sum_k w_ak * log( exp(s_ak/T + b_ak) / sum_{k' not excluded} exp(s_ak'/T + b_ak') ) / sum_k w_ak

with ``s = anchors @ keys.T`` of L2-normalised rows (ONE matmul, never an N×N×D tensor), an optional
additive logit bias ``b`` (hard-negative weights, class-averaged denominators), positive weights ``w``
(0/1 for SupCon, soft for ontology labels) and excluded keys (the anchor itself). Logits are cast to
float32 (float64 stays float64) before masking and log-sum-exp, so the loss is finite at T=0.01 and
for bf16/fp16 inputs. Anchors whose positive weights sum to zero are dropped from the mean instead of
producing NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medcl import distributed
from medcl.errors import ConfigError, DataError


def check_temperature(value: float, where: str, name: str = "temperature") -> float:
    """Validate a temperature (finite, > 0) and return it as float."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number", where=where,
                          fix=f"set {name} to a positive float such as 0.1") from None
    if not math.isfinite(t) or t <= 0:
        raise ConfigError(f"{name}={value!r} must be a finite number > 0", where=where,
                          fix=f"set {name} to a positive float such as 0.1")
    return t


def check_shape(x: torch.Tensor, ndim: int, where: str, name: str, layout: str) -> None:
    """Raise DataError unless ``x`` is a floating tensor with ``ndim`` dimensions."""
    if not isinstance(x, torch.Tensor) or x.dim() != ndim or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{name} must be a floating tensor of shape {layout}, got {got}", where=where,
                        fix=f"pass {name} as {layout}")


def check_ids(ids: torch.Tensor | None, n: int, where: str, name: str) -> None:
    """Raise DataError unless ``ids`` is None or has leading size ``n``."""
    if ids is None:
        return
    if not isinstance(ids, torch.Tensor) or ids.dim() < 1 or ids.shape[0] != n:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise DataError(f"{name} must have leading size {n} (one per sample), got {got}", where=where,
                        fix=f"pass one {name} entry per row of features")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/float32 inputs, float64 for float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A zero scalar still connected to the graph (so backward works and gives zero gradients)."""
    return like.sum() * 0.0


def gather_rows(enabled: bool, x: torch.Tensor, *extras: torch.Tensor | None
                ) -> tuple[torch.Tensor, list[torch.Tensor | None], int]:
    """Gather a batch from all ranks: ``x`` with gradient, ``extras`` (ids, labels) without.

    Args:
        enabled: the loss's ``gather_distributed`` flag; False or a single process → no-op.
        x: ``(n, ...)`` local features (differentiable).
        extras: ``(n, ...)`` per-sample tensors (or None) gathered without gradient.

    Returns:
        ``(x_global (N, ...), extras_global, offset)`` where this rank's rows are
        ``x_global[offset:offset + n]``.
    """
    if not enabled or not distributed.is_distributed():
        return x, list(extras), 0
    sizes = distributed.gather_sizes(x.shape[0], x.device)
    offset = sum(sizes[: distributed.rank()])
    xg = distributed.gather_with_grad(x, sizes=sizes)
    eg = [None if e is None else distributed.all_gather(e, sizes=sizes) for e in extras]
    return xg, eg, offset


def masked_contrastive(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    pos_weight: torch.Tensor,
    exclude: torch.Tensor,
    temperature: float,
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor multi-positive contrastive loss (SupCon "out" form, Khosla et al. 2020).

    Args:
        anchors: ``(A, D)`` L2-normalised anchor embeddings.
        keys: ``(K, D)`` L2-normalised key embeddings (may contain the anchors).
        pos_weight: ``(A, K)`` non-negative positive weights (bool or float); excluded keys must be 0.
        exclude: ``(A, K)`` bool, keys left out of the denominator (the anchor itself, other views...).
        temperature: softmax temperature T.
        logit_bias: optional ``(A, K)`` additive bias on the logits (e.g. ``log w`` for weighted negatives).

    Returns:
        ``(loss (A,), valid (A,) bool)``: per-anchor loss and whether the anchor has any positive.
    """
    dt = compute_dtype(anchors.dtype)
    # One matmul; fp32 from here on. In-place scaling/masking: neither op needs its input for backward.
    logits = (anchors @ keys.T).to(dt).div_(temperature)
    if logit_bias is not None:
        logits = logits + logit_bias.to(dt)
    # A large finite negative, not -inf: fully-masked rows stay finite and their gradients zero.
    logits.masked_fill_(exclude, torch.finfo(dt).min)
    lse = torch.logsumexp(logits, dim=1)
    # -sum_k w_k (logit_k - lse) / sum_k w_k  ==  lse - (weighted mean of the positive logits);
    # written this way no (A, K) log-probability tensor is materialised.
    if pos_weight.dtype == torch.bool:
        den = pos_weight.sum(dim=1).to(dt)
        pos_sum = torch.where(pos_weight, logits, 0.0).sum(dim=1)
    else:
        w = pos_weight.to(dt)
        den = w.sum(dim=1)
        pos_sum = (w * torch.where(w > 0, logits, 0.0)).sum(dim=1)
    valid = den > 0
    loss = lse - pos_sum / den.clamp_min(torch.finfo(dt).tiny)
    return loss, valid


def ddp_denominator(total: torch.Tensor, distributed_mean: bool) -> torch.Tensor:
    """The denominator of a mean over anchors that DDP's averaging turns into the mean over every rank's anchors.

    DDP averages the ranks' gradients, i.e. it trains on ``(1/W) sum_r L_r``. With ``L_r = sum_{a in r} l_a /
    (total / W)`` (``total`` summed over the ranks, ``W`` ranks) that is ``sum_a l_a / total``: the global mean,
    even when the ranks hold different numbers (or weights) of valid anchors. With one process, or
    ``distributed_mean`` off, ``total`` itself.

    Args:
        total: this rank's sum of anchor weights (no gradient flows through it).
        distributed_mean: normalise by the global total (the loss gathers keys across ranks).
    """
    if not distributed_mean or not distributed.is_distributed():
        return total
    return distributed.all_reduce_sum(total.detach()) / distributed.world_size()


def weighted_mean(loss: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor | None = None,
                  distributed_mean: bool = False) -> torch.Tensor:
    """Mean of ``loss`` over ``valid`` anchors (optionally weighted); a graph-connected 0 if none is valid.

    With ``distributed_mean`` the denominator is the global one (:func:`ddp_denominator`), so that the ranks'
    averaged losses and gradients equal those of the whole batch on one process.
    """
    w = valid.to(loss.dtype) if weight is None else weight.to(loss.dtype) * valid.to(loss.dtype)
    total = ddp_denominator(w.sum(), distributed_mean)
    safe = torch.where(valid, loss, torch.zeros_like(loss))
    out = (safe * w).sum() / total.clamp_min(torch.finfo(loss.dtype).tiny)
    return out


@dataclass
class ViewBatch:
    """Anchors and keys of a multi-view batch, with per-row bookkeeping.

    Rows are view-major: anchor ``v * n + i`` is view ``v`` of local sample ``i``; key ``v * N + j``
    is view ``v`` of global sample ``j`` (``N`` = samples over all ranks when gathered).
    """

    anchors: torch.Tensor        # (A, D) normalised
    keys: torch.Tensor           # (K, D) normalised
    anchor_sample: torch.Tensor  # (A,) global sample index
    key_sample: torch.Tensor     # (K,)
    anchor_view: torch.Tensor    # (A,)
    key_view: torch.Tensor       # (K,)
    anchor_ids: list[torch.Tensor | None]  # per-anchor values of each extra (A, ...)
    key_ids: list[torch.Tensor | None]     # per-key values of each extra (K, ...)

    @property
    def self_mask(self) -> torch.Tensor:
        """``(A, K)`` bool: the key is the anchor itself."""
        return (self.anchor_sample[:, None] == self.key_sample[None, :]) & (
            self.anchor_view[:, None] == self.key_view[None, :])

    @property
    def same_sample(self) -> torch.Tensor:
        """``(A, K)`` bool: the key is a view of the anchor's sample (the anchor itself included)."""
        return self.anchor_sample[:, None] == self.key_sample[None, :]


def view_batch(features: torch.Tensor, extras: list[torch.Tensor | None], *, contrast_mode: str,
               gather: bool) -> ViewBatch:
    """Normalise ``(n, V, D)`` features, gather them (and per-sample extras) across ranks, lay out anchors/keys.

    Args:
        features: ``(n, V, D)`` local multi-view embeddings.
        extras: per-sample tensors ``(n, ...)`` (labels, patient or record ids) or None.
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (view 0 only).
        gather: gather keys from all ranks (no-op on one process).
    """
    n, v, d = features.shape
    z = F.normalize(features, dim=-1)
    zg, eg, offset = gather_rows(gather, z.reshape(n, v * d), *extras)
    big_n = zg.shape[0]
    zg = zg.reshape(big_n, v, d)
    va = 1 if contrast_mode == "one" else v
    dev = features.device
    anchors = z[:, :va].transpose(0, 1).reshape(va * n, d)
    keys = zg.transpose(0, 1).reshape(v * big_n, d)
    local = torch.arange(n, device=dev) + offset
    glob = torch.arange(big_n, device=dev)

    def rep(t: torch.Tensor | None, times: int) -> torch.Tensor | None:
        return None if t is None else t.repeat(times, *([1] * (t.dim() - 1)))

    return ViewBatch(
        anchors=anchors, keys=keys,
        anchor_sample=local.repeat(va), key_sample=glob.repeat(v),
        anchor_view=torch.arange(va, device=dev).repeat_interleave(n),
        key_view=torch.arange(v, device=dev).repeat_interleave(big_n),
        anchor_ids=[rep(e, va) for e in extras], key_ids=[rep(e, v) for e in eg],
    )
