"""Will one optimiser step fit? An estimate of its peak memory, checked before training starts.

A run killed by the kernel's OOM killer dies without a word (and leaves its MLflow run RUNNING); a CUDA OOM dies
with a traceback. So each training stage estimates, before its first step, the memory of one optimiser step at the
configured batch and input size, and stops with one line when it is more than the device has.

The estimate: a forward pass at a small probe batch (no gradients kept) records the bytes of every leaf module's
output — the activations the backward pass needs — and scales them linearly to the real batch; the parameters
count four times (weights, gradients, two AdamW moments); the batch itself once. It is an estimate of the order of
magnitude (allocator overheads, workspace buffers and the transient gradient of the largest activation are not
counted), so the check stops a run only when the estimate alone exceeds what is available.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medcl.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class StepMemory:
    """The estimate of one optimiser step, in bytes."""

    activations: int
    parameters: int
    batch: int

    @property
    def total(self) -> int:
        """Activations, parameters (× 4: weights, gradients, two optimiser moments) and the batch."""
        return self.activations + 4 * self.parameters + self.batch


def _bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, Mapping):
        return sum(_bytes(v) for v in x.values())
    if isinstance(x, list | tuple):
        return sum(_bytes(v) for v in x)
    return 0


def activation_bytes(module: nn.Module, run: Callable[[], Any]) -> int:
    """Bytes of every leaf module's output during ``run()`` (a forward pass of ``module``), without gradients."""
    total = 0

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        total += _bytes(out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def estimate_step(module: nn.Module, probe_batch: Mapping[str, Any], batch_size: int,
                  forward: Callable[[Mapping[str, Any]], Any] | None = None) -> StepMemory:
    """The memory of one optimiser step at ``batch_size``, from a forward pass on ``probe_batch``.

    Args:
        module: the model trained (its parameters are counted).
        probe_batch: a small batch (``n`` samples) of the real input shape.
        batch_size: samples per step and process.
        forward: how the model consumes a batch (default ``module(batch)``).
    """
    n = next((int(v.shape[0]) for v in probe_batch.values() if isinstance(v, torch.Tensor) and v.ndim), 1)
    acts = activation_bytes(module, lambda: (forward or module)(probe_batch))
    params = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    scale = batch_size / max(n, 1)
    return StepMemory(int(acts * scale), int(params), int(_bytes(probe_batch) * scale))


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a step may use: free GPU memory, or the RAM the kernel reports available (``None``: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_step_fits(stage: str, estimate: StepMemory, available: int | None, *, batch_key: str,
                    batch_size: int, input_shape: tuple[int, ...]) -> None:
    """Stop before training when the estimate exceeds the available memory.

    Raises:
        ConfigError: one line naming the stage, the estimate, the limit and the settings that lower it.
    """
    if available is None or estimate.total <= available:
        return
    fit = max(1, int(batch_size * available / max(estimate.total, 1)))
    raise ConfigError(
        f"stage {stage}: one optimiser step needs about {estimate.total / GIB:.1f} GiB (activations "
        f"{estimate.activations / GIB:.1f} GiB at batch {batch_size} of {tuple(input_shape)}, parameters and "
        f"optimiser {4 * estimate.parameters / GIB:.2f} GiB), more than the {available / GIB:.1f} GiB available",
        where=batch_key,
        fix=f"lower {batch_key} (about {fit} would fit; with pretrain.grad_accum to keep the effective batch), the "
            "crop (transforms.spatial_size), the encoder width (model.options), or use amp: bf16 on a GPU")
