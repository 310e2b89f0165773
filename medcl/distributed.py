"""Everything medcl does with ``torch.distributed`` — the only module allowed to touch it.

The same code runs under ``python`` (one process: every function here is a cheap no-op) and
under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set):
:func:`init_distributed` reads those variables and starts a process group (NCCL when CUDA is
available, gloo on CPU).

Three rules keep a job from hanging:

* **Who reduces is an argument.** Training loops take a :class:`Comm` — :func:`world` (every rank of
  the job) or :data:`LOCAL` (this process alone) — and never look at global state to decide.
* **Rank-0-only work runs in a local section.** :func:`run_on_main` runs a function on rank 0 inside
  :func:`local_section`, where this process is a world of one (every helper here is a no-op and a
  world :class:`Comm` refuses to reduce), while the other ranks wait for its result on a separate
  gloo group with a long timeout (:data:`MAIN_WAIT_S`) — once, for the whole section.
* **A stuck collective fails loudly.** The process group's timeout comes from
  ``runtime.dist_timeout_s``; a timed-out or broken collective becomes a :class:`~medcl.errors.DistributedError`
  naming the stage, the rank, the collective and the fix (:func:`explain`). On NCCL,
  ``TORCH_NCCL_BLOCKING_WAIT=1`` is set (unless you set it) so that a timeout raises in the main thread
  instead of aborting the process without a word.

The one function with subtle maths is :func:`gather_with_grad`: a differentiable all-gather whose
backward **sums** the incoming gradients over all ranks before taking this rank's slice. Every rank
computes a loss whose keys include this rank's features, so the true gradient of the
(rank-averaged) objective w.r.t. this rank's features is the sum of the gradients flowing back from
every rank; DDP then divides by ``world_size`` when it averages parameter gradients. A backward that
only returns the local slice of the local gradient (lightly's ``GatherLayer`` variants, early PyTorch
``all_gather``) gives gradients ``1/world_size`` too small for the cross-rank terms.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from medcl.errors import ConfigError, DistributedError
from medcl.lookup import look_up

__all__ = [
    "init_distributed", "is_distributed", "rank", "world_size", "local_rank", "is_main_process",
    "barrier", "all_reduce_sum", "all_reduce_mean", "broadcast_object", "gather_sizes", "all_gather",
    "gather_with_grad", "gather_objects", "cleanup", "seed_for_rank", "Comm", "LOCAL", "world",
    "local_section", "run_on_main", "stage_scope", "current_stage", "explain", "DEFAULT_TIMEOUT_S", "MAIN_WAIT_S",
]

T = TypeVar("T")

#: collective timeout when the config does not say (``runtime.dist_timeout_s``)
DEFAULT_TIMEOUT_S = 300.0
#: how long the other ranks wait for rank 0's own work (probes, calibration, report) to finish
MAIN_WAIT_S = 12 * 3600.0

_TIMEOUT_S = DEFAULT_TIMEOUT_S
_WAIT_GROUP: Any = None
#: set inside :func:`local_section`: what runs on this rank alone
_LOCAL: contextvars.ContextVar[str | None] = contextvars.ContextVar("medcl_local_section", default=None)
#: the pipeline stage running now, for error messages
_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("medcl_stage", default=None)
BACKENDS = ("gloo", "nccl")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer",
                          where="medcl.distributed",
                          fix="launch with torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK") from None


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Start the process group from torchrun's environment variables.

    Also starts the gloo group the other ranks wait on while rank 0 works alone (:func:`run_on_main`).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; ``None`` picks NCCL when CUDA is available, else gloo.
        timeout_s: collective timeout in seconds (``runtime.dist_timeout_s``): how long a rank waits in
            a collective for the others before the job stops with a :class:`DistributedError`.

    Returns:
        True when running with more than one process (a process group exists afterwards),
        False for a plain single process (nothing is started).

    Raises:
        ConfigError: unknown backend or malformed torchrun variables.
    """
    if backend is not None:
        look_up(backend, BACKENDS, what="distributed backend", where="runtime.backend")
    global _TIMEOUT_S, _WAIT_GROUP
    if timeout_s <= 0:
        raise ConfigError(f"distributed timeout {timeout_s} s is not positive", where="runtime.dist_timeout_s",
                          fix="give the seconds a rank may wait for the others, e.g. 300")
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
        # Without blocking wait, NCCL's watchdog aborts the process on a timeout: no message, the MLflow
        # run left RUNNING. With it, the timeout raises in the main thread and the pipeline reports it.
        # (The loop already synchronises with the GPU once per step to check the loss, so the cost is small.)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    _TIMEOUT_S = float(timeout_s)
    dist.init_process_group(backend=backend, init_method="env://", rank=_env_int("RANK", 0), world_size=n,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=MAIN_WAIT_S))
    return True


def is_distributed() -> bool:
    """True when a process group with more than one process is running, outside a :func:`local_section`.

    Inside a :func:`local_section` this process is a world of one, so this is False there.
    """
    return _LOCAL.get() is None and _group_up()


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 on a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process and inside a :func:`local_section`)."""
    if _LOCAL.get() is not None:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """Rank on this node (``LOCAL_RANK`` from torchrun, 0 otherwise): the GPU index to use."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0 (the only rank that logs, tracks and writes checkpoints)."""
    return rank() == 0


# ---------------------------------------------------------------------------------------- failures
_TIMEOUT_PATTERN = re.compile(r"timed out|timeout|watchdog", re.IGNORECASE)
_PEER_PATTERN = re.compile(r"connection (closed|reset) by peer|broken pipe|communicator was aborted|"
                           r"aborted|connection refused|socket closed", re.IGNORECASE)


def current_stage() -> str | None:
    """The pipeline stage running now (:func:`stage_scope`), or ``None``."""
    return _STAGE.get()


def _stage_where() -> str:
    stage = _STAGE.get()
    return f"stage {stage}" if stage else "torchrun job"


def explain(exc: BaseException, op: str | None = None, waited_s: float | None = None) -> DistributedError | None:
    """The :class:`DistributedError` for an exception raised by a collective, or ``None`` if it is not one.

    Recognises gloo's and NCCL's timeout errors and a peer that went away (its process ended), and names
    the stage (:func:`stage_scope`), this rank, the collective (``op``; DDP's own gradient all-reduce when
    unknown) and what to do.
    """
    if isinstance(exc, DistributedError):
        return exc
    backend_error = getattr(dist, "DistBackendError", ())
    if not isinstance(exc, (RuntimeError, backend_error)) or not _group_up():
        return None
    text = str(exc)
    what = op or "a collective (e.g. DDP's gradient all-reduce)"
    r = dist.get_rank()
    if _TIMEOUT_PATTERN.search(text):
        waited = _TIMEOUT_S if waited_s is None else waited_s
        return DistributedError(
            f"rank {r} waited {waited:.0f} s for the other ranks in {what}",
            where=_stage_where(),
            fix="another rank stopped or is still busy: read the other ranks' log lines above (the first error "
                "is the cause); if a step legitimately keeps the ranks apart longer, raise runtime.dist_timeout_s")
    if isinstance(exc, backend_error) or _PEER_PATTERN.search(text):
        first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        return DistributedError(
            f"rank {r} lost the other ranks in {what} ({first})",
            where=_stage_where(),
            fix="another rank's process ended: its error, above this line, is the cause")
    return None


@contextlib.contextmanager
def _collective(op: str) -> Iterator[None]:
    """Run one collective; a timeout or a vanished peer becomes a :class:`DistributedError`."""
    t0 = time.monotonic()
    try:
        yield
    except (RuntimeError, getattr(dist, "DistBackendError", RuntimeError)) as exc:
        err = explain(exc, op=op, waited_s=time.monotonic() - t0)
        if err is None:
            raise
        raise err from exc


@contextlib.contextmanager
def stage_scope(stage: str) -> Iterator[None]:
    """Name the pipeline stage that runs now in every :class:`DistributedError` raised inside."""
    token = _STAGE.set(stage)
    try:
        yield
    finally:
        _STAGE.reset(token)


@contextlib.contextmanager
def local_section(what: str) -> Iterator[None]:
    """Code that runs on this rank alone: inside, this process is a world of one.

    :func:`is_distributed` is False, :func:`world_size` is 1 and every helper of this module is a no-op, so
    nothing inside can wait for ranks that are not there; a world :class:`Comm` made outside refuses to
    reduce (:class:`DistributedError`) instead of hanging.
    """
    token = _LOCAL.set(what)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def _wait_group_broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)
    return box[0]


def run_on_main(fn: Callable[[], T], what: str) -> T:
    """Run ``fn()`` on rank 0 alone and hand its result to every rank.

    Rank 0 runs it inside :func:`local_section`; the other ranks wait (on a gloo group whose timeout is
    :data:`MAIN_WAIT_S`, so long rank-0 work is not mistaken for a stuck collective) and get the result
    (it must be picklable). When ``fn`` fails on rank 0 the other ranks are told and raise a
    :class:`DistributedError` saying so, instead of waiting. One process: just ``fn()``.

    Args:
        fn: the work; it must not need the other ranks.
        what: what it is, for messages (e.g. ``"classify: probes and evaluation"``).
    """
    if not is_distributed():
        return fn()
    if dist.get_rank() == 0:
        try:
            with local_section(what):
                result = fn()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                _wait_group_broadcast(("failed", type(exc).__name__))
            raise
        _wait_group_broadcast(("ok", result))
        return result
    with _collective(f"waiting for rank 0 ({what})"):
        status, payload = _wait_group_broadcast(None)
    if status != "ok":
        raise DistributedError(f"rank 0 failed in {what} ({payload}); rank {dist.get_rank()} stops too",
                               where=_stage_where(), fix="rank 0's error, above this line, is the cause")
    return payload


# ---------------------------------------------------------------------------------------- collectives
def barrier() -> None:
    """Wait for every rank; no-op on a single process."""
    if is_distributed():
        with _collective("barrier"):
            dist.barrier()


def _collective_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor | float:
    """Sum over ranks (a new tensor; the input is not modified). Floats come back as floats."""
    if not is_distributed():
        return x.clone() if isinstance(x, torch.Tensor) else float(x)
    with _collective("all_reduce"):
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
    with _collective("broadcast_object"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    with _collective("all_gather_object"):
        dist.all_gather_object(out, obj)
    return out


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Leading sizes of a tensor on every rank, in rank order (``[n]`` on one process)."""
    if not is_distributed():
        return [int(n)]
    dev = _collective_device() if dist.get_backend() == "nccl" else torch.device(device)
    local = torch.tensor([int(n)], dtype=torch.int64, device=dev)
    out = [torch.empty_like(local) for _ in range(world_size())]
    with _collective("all_gather"):
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
    with _collective("all_gather"):
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
        with _collective("all_reduce (gather backward)"):
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


# ---------------------------------------------------------------------------------------- who reduces
@dataclass(frozen=True)
class Comm:
    """The processes a computation reduces over, passed explicitly to the training engine.

    :func:`world` is every rank of the job (DDP training); :data:`LOCAL` is this process alone (rank-0-only
    work, single-process runs). A loop never decides this from global state.

    Attributes:
        size: number of processes reduced over.
        rank: this process's rank among them.
    """

    size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that logs and writes."""
        return self.rank == 0

    def _check(self, op: str) -> bool:
        if self.size == 1:
            return False
        section = _LOCAL.get()
        if section is not None:
            raise DistributedError(
                f"{op} over {self.size} ranks was asked for inside '{section}', which runs on rank 0 alone: "
                "it would wait forever for ranks that are not there",
                where=_stage_where(), fix="pass distributed.LOCAL (or world() made inside the section) to this code")
        return True

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` over this comm's processes (``x`` itself when it is one process)."""
        if not self._check("all_reduce"):
            return x
        return all_reduce_mean(x)  # type: ignore[return-value]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` in rank order."""
        if not self._check("all_gather_object"):
            return [obj]
        return gather_objects(obj)


#: this process alone: nothing is ever reduced across ranks
LOCAL = Comm(1, 0)


def world() -> Comm:
    """Every rank of the job (:data:`LOCAL` on one process and inside a :func:`local_section`)."""
    return Comm(world_size(), rank()) if is_distributed() else LOCAL


def cleanup() -> None:
    """Destroy the process group if one was started (safe to call always)."""
    global _WAIT_GROUP
    _WAIT_GROUP = None
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
