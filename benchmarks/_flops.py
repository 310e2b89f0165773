"""Model FLOPs of a training step, and the peak rates that model FLOP utilisation (MFU) is measured against.

MFU (PaLM, Chowdhery et al. 2022, appendix B) = model FLOPs per second achieved / the device's peak
FLOPs per second. Model FLOPs are the multiply-adds the model needs (×2), forward and backward, not
what the hardware executes (no recomputation, no elementwise ops): counted here by
``torch.utils.flop_counter.FlopCounterMode`` over one real step (convolutions, matrix products,
attention; BatchNorm, activations and the optimiser are not counted).

Two peaks are reported:

* **spec sheet** (:func:`spec_peak_flops`): the vendor's dense (no sparsity) bf16 tensor-core rate
  for known GPUs — the usual MFU denominator (used for fp32 variants too, so that variants compare);
* **measured** (:func:`measured_peak_flops`): the best rate of a large dense matrix product on this
  device in fp32 and bf16 — the only peak available for CPUs, and a check on the spec figure.
"""

from __future__ import annotations

import time
from typing import Any

#: dense bf16 tensor-core peak FLOP/s by GPU name fragment (vendor spec sheets, no sparsity);
#: the first fragment found in ``torch.cuda.get_device_name()`` wins, so specific names come first
GPU_BF16_PEAK: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (the "H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("A6000", 155e12),
)


def spec_peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its name, ``None`` when unknown (and for CPUs)."""
    if not device_name:
        return None
    for fragment, peak in GPU_BF16_PEAK:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def step_flops(model: Any, batch: Any) -> int:
    """Model FLOPs of one training step: ``model(batch)["loss"].backward()`` counted once.

    Args:
        model: a pretraining method (``forward(batch) -> {"loss": scalar, ...}``), eager (not compiled).
        batch: one batch already on the model's device.

    Returns:
        FLOPs of forward and backward (a multiply-add counts 2). The gradients the call leaves are
        zeroed again.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(batch)
        out["loss"].backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measured_peak_flops(device: str, dtypes: tuple[str, ...] = ("fp32", "bf16"), n: int | None = None,
                        reps: int | None = None) -> dict[str, float]:
    """FLOP/s of an ``n × n`` by ``n × n`` matrix product on ``device``, per dtype (best of ``reps``).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        dtypes: ``"fp32"`` and/or ``"bf16"``.
        n: matrix size (default 8192 on CUDA, 1024 on CPU).
        reps: timed repetitions (default 20 on CUDA, 5 on CPU).

    Returns:
        ``{dtype: FLOP/s}``; ``2 n³`` FLOPs per product.
    """
    import torch

    cuda = torch.device(device).type == "cuda"
    n = n or (8192 if cuda else 1024)
    reps = reps or (20 if cuda else 5)
    out = {}
    for name in dtypes:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        best = float("inf")
        for i in range(reps + 1):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            (a @ b)
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first product warms up (kernel choice, allocation)
                best = min(best, time.perf_counter() - t0)
        out[name] = 2.0 * n**3 / best
    return out
