"""Everything medcl does with ``torch.distributed`` — the only module allowed to touch it.

The same code runs under ``python`` (one process: every function here is a cheap no-op) and
under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set):
:func:`init_distributed` reads those variables and starts a process group (NCCL when CUDA is
available, gloo on CPU).

The one function with subtle maths is :func:`gather_with_grad`: a differentiable all-gather whose
backward **sums** the incoming gradients over all ranks before taking this rank's slice. Every rank
computes a loss whose keys include this rank's features, so the true gradient of the
(rank-averaged) objective w.r.t. this rank's features is the sum of the gradients flowing back from
every rank; DDP then divides by ``world_size`` when it averages parameter gradients. A backward that
only returns the local slice of the local gradient (lightly's ``GatherLayer`` variants, early PyTorch
``all_gather``) gives gradients ``1/world_size`` too small for the cross-rank terms.
"""

from __future__ import annotations

import datetime
import difflib
import os
from typing import Any

import torch
import torch.distributed as dist

from medcl.errors import ConfigError

__all__ = [
    "init_distributed", "is_distributed", "rank", "world_size", "local_rank", "is_main_process",
    "barrier", "all_reduce_sum", "all_reduce_mean", "broadcast_object", "gather_sizes", "all_gather",
    "gather_with_grad", "cleanup", "seed_for_rank",
]

BACKENDS = ("gloo", "nccl")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer",
                          where="medcl.distributed",
                          fix="launch with torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK") from None


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Start the process group from torchrun's environment variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; ``None`` picks NCCL when CUDA is available, else gloo.
        timeout_s: collective timeout in seconds.

    Returns:
        True when running with more than one process (a process group exists afterwards),
        False for a plain single process (nothing is started).

    Raises:
        ConfigError: unknown backend or malformed torchrun variables.
    """
    if backend is not None and backend not in BACKENDS:
        close = difflib.get_close_matches(backend, BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown distributed backend {backend!r}", where="runtime.backend",
                          fix=f"{hint}use one of {', '.join(BACKENDS)}")
    if is_distributed():
        return True
    n = _env_int("WORLD_SIZE", 1)
    if n <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        # One GPU per process: the device must be chosen before NCCL creates its communicators.
        torch.cuda.set_device(local_rank())
        kwargs["device_id"] = torch.device("cuda", local_rank())
    dist.init_process_group(backend=backend, init_method="env://", rank=_env_int("RANK", 0), world_size=n,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 on a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """Rank on this node (``LOCAL_RANK`` from torchrun, 0 otherwise): the GPU index to use."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0 (the only rank that logs, tracks and writes checkpoints)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; no-op on a single process."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor | float:
    """Sum over ranks (a new tensor; the input is not modified). Floats come back as floats."""
    if not is_distributed():
        return x.clone() if isinstance(x, torch.Tensor) else float(x)
    if isinstance(x, torch.Tensor):
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
    t = torch.tensor(float(x), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor | float:
    """Mean over ranks (a new tensor; the input is not modified). Floats come back as floats."""
    total = all_reduce_sum(x)
    n = world_size()
    return total / n if n > 1 else total


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank and return it (identity on one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Leading sizes of a tensor on every rank, in rank order (``[n]`` on one process)."""
    if not is_distributed():
        return [int(n)]
    dev = _collective_device() if dist.get_backend() == "nccl" else torch.device(device)
    local = torch.tensor([int(n)], dtype=torch.int64, device=dev)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather along dim 0 allowing different leading sizes per rank; concatenated in rank order."""
    x = x.contiguous()
    m = max(sizes)
    if x.shape[0] < m:
        pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


def all_gather(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient.

    Args:
        x: ``(n_r, ...)``; ``n_r`` may differ between ranks (e.g. a short last batch).
        sizes: every rank's ``n_r`` if already known (saves one collective).

    Returns:
        ``(sum_r n_r, ...)`` in rank order; ``x`` itself on a single process.
    """
    if not is_distributed():
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    with torch.no_grad():
        return _gather_padded(x.detach(), sizes)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces (sums) the gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        r = rank()
        ctx.start = sum(sizes[:r])
        ctx.stop = ctx.start + sizes[r]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # Every rank's loss depends on every rank's features: d(sum_r L_r)/dx_local is the SUM of the
        # gradients arriving on all ranks for this rank's slice. (DDP later divides by world_size.)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop], None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Differentiable all-gather along dim 0 (returns ``x`` unchanged on a single process).

    The backward pass sums the gradient over ranks (all-reduce) and returns this rank's slice, so that
    with DDP's gradient averaging the result equals the single-process full-batch gradient. Every rank
    must call backward through it (it is a collective).

    Args:
        x: ``(n_r, ...)`` local tensor; ``n_r`` may differ between ranks.
        sizes: every rank's ``n_r`` if already known (saves one collective).

    Returns:
        ``(sum_r n_r, ...)``, rank ``r``'s rows at ``[sum(sizes[:r]), sum(sizes[:r+1]))``.
    """
    if not is_distributed():
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x, sizes)


def cleanup() -> None:
    """Destroy the process group if one was started (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_for_rank(seed: int, rank_: int | None = None) -> int:
    """Per-rank seed: ``seed`` on rank 0 (so one process reproduces single-GPU runs), distinct elsewhere.

    Args:
        seed: the run's base seed.
        rank_: rank to compute for (default: this process's rank).
    """
    r = rank() if rank_ is None else rank_
    return (int(seed) + 10007 * r) % (2**32)
