"""MoCo v3 contrastive loss (Chen, Xie, He, ICCV 2021, arXiv:2104.02057), key queue, momentum helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medcl import distributed
from medcl.errors import ConfigError, DataError
from medcl.losses._common import check_shape, check_temperature, compute_dtype, gather_rows


class MoCoV3Loss(nn.Module):
    """MoCo v3 InfoNCE: queries against (gathered) momentum keys, positives on the diagonal.

    ``loss = 2T * CE(q·k^T / T, labels)`` with ``labels = offset + arange(n)`` (this rank's keys inside
    the gathered key set), exactly as ``MoCo.contrastive_loss`` in the paper's code; the ``2T`` factor
    makes the gradient scale independent of T. Call it symmetrically,
    ``loss(q1, k2) + loss(q2, k1)``. An optional queue of past keys (:class:`KeyQueue`, MoCo v1/v2) adds
    negatives, useful for tiny per-GPU batches of 3D volumes.

    Args:
        temperature: softmax temperature (the paper uses 0.2 for ViT, 1.0 for ResNet).
        gather_distributed: keys from all ranks (gradient flows into keys only if they require it;
            MoCo's momentum keys do not); no-op on one process.

    Shapes:
        ``forward(q (n, D), k (n, D), queue (Q, D) | None) -> ()``.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        """Check the temperature and keep the distributed setting."""
        super().__init__()
        self.temperature = check_temperature(temperature, "MoCoV3Loss")
        self.gather_distributed = bool(gather_distributed)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE of queries against keys (and the queue), scaled by ``2T``.

        Args:
            q: ``(n, D)`` queries of one view (online encoder).
            k: ``(n, D)`` keys of the other view (momentum encoder), row i the same sample as ``q[i]``.
            queue: ``(Q, D)`` past keys as extra negatives, or None.

        Returns:
            Scalar loss.

        Raises:
            DataError: ``q`` and ``k`` not the same ``(n, D)``, or a queue of another width.
        """
        check_shape(q, 2, "MoCoV3Loss", "q", "(N, D)")
        check_shape(k, 2, "MoCoV3Loss", "k", "(N, D)")
        if q.shape != k.shape:
            raise DataError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ", where="MoCoV3Loss",
                            fix="pass queries and keys of the same (N, D) shape")
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        keys, _, offset = gather_rows(self.gather_distributed, k)
        if queue is not None:
            if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
                raise DataError(f"queue must be (Q, {q.shape[1]}), got {tuple(queue.shape)}", where="MoCoV3Loss",
                                fix="build KeyQueue(size, dim) with the projection dim")
            keys = torch.cat([keys, F.normalize(queue.to(k.dtype).detach(), dim=1)], dim=0)
        dt = compute_dtype(q.dtype)
        logits = (q @ keys.T).to(dt) / self.temperature  # (n, N [+ Q]), one matmul
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def extra_repr(self) -> str:
        """Temperature and distributed setting, for ``print(module)``."""
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


class KeyQueue(nn.Module):
    """FIFO queue of past (detached, L2-normalised) keys used as extra negatives (MoCo, He et al. 2020).

    Starts empty; :meth:`keys` returns only the filled part (as a copy, so a later :meth:`enqueue`
    cannot invalidate a graph that used it). With ``gather_distributed`` every rank enqueues the
    keys of all ranks, so the queue is identical everywhere.

    Args:
        size: queue length Q.
        dim: key dimension D.
        gather_distributed: enqueue the keys of all ranks; no-op on one process.
    """

    def __init__(self, size: int, dim: int, gather_distributed: bool = False) -> None:
        """Allocate the empty queue ``(size, dim)`` and its write pointer as buffers (saved with the model)."""
        super().__init__()
        if not isinstance(size, int) or size < 1 or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"KeyQueue(size={size!r}, dim={dim!r}) needs positive integers", where="KeyQueue",
                              fix="set queue size (e.g. 4096) and the projection dim")
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Add keys ``(n, D)`` (newest overwrite oldest)."""
        k = F.normalize(k.detach(), dim=1)
        if self.gather_distributed:
            k = distributed.all_gather(k)
        size = self.queue.shape[0]
        k = k[-size:]
        n = k.shape[0]
        p = int(self.ptr)
        idx = (torch.arange(n, device=self.queue.device) + p) % size
        self.queue[idx] = k.to(self.queue)
        self.ptr.fill_((p + n) % size)
        self.filled.fill_(min(size, int(self.filled) + n))

    def keys(self) -> torch.Tensor:
        """``(filled, D)`` copy of the stored keys (empty before the first enqueue)."""
        return self.queue[: int(self.filled)].clone()

    def forward(self) -> torch.Tensor:
        """Same as :meth:`keys`: the stored keys ``(filled, D)``."""
        return self.keys()


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """EMA update ``target = m * target + (1 - m) * online`` of parameters; buffers are copied.

    Args:
        online: the trained network.
        target: its momentum copy (same architecture), updated in place.
        m: momentum in [0, 1] (1: the target does not move).

    Raises:
        ConfigError: ``m`` outside [0, 1], or networks with different parameter lists.
    """
    if not 0.0 <= m <= 1.0:
        raise ConfigError(f"momentum m={m} is outside [0, 1]", where="momentum_update", fix="use e.g. 0.99")
    tp = list(target.parameters())
    op = list(online.parameters())
    if len(tp) != len(op):
        raise ConfigError("online and target networks have different parameters", where="momentum_update",
                          fix="build the target as copy.deepcopy(online)")
    if tp:
        torch._foreach_mul_(tp, m)
        torch._foreach_add_(tp, op, alpha=1.0 - m)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """Momentum rising from ``base`` to ``final`` along a half cosine (BYOL; MoCo v3).

    ``m(step) = final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.
    """
    if total_steps <= 0:
        return float(final)
    t = min(max(step, 0), total_steps) / total_steps
    return float(final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0)
