"""Mixed precision decisions: the only place in medcl that opens ``torch.autocast``.

Networks and losses never decide precision; the loop asks this module:

* :func:`resolve_amp` turns the configured mode (``"off"``, ``"bf16"``, ``"fp16"``) and the
  device into the mode that will really run. On CUDA every mode is honoured. On CPU,
  ``bf16`` runs when asked explicitly (it saves memory; it is faster than fp32 only on CPUs with
  bf16 instructions — AVX512-BF16 or AMX: 1.6× for the OCT demo's ResNet-18 on an AMD EPYC, see
  ``benchmarks/README.md`` section 3b — and slower on others),
  ``fp16`` falls back to ``off`` with a warning (CPU fp16 autocast is slow and unsupported by
  many ops). Other devices (MPS, ...) run in fp32.
* :func:`autocast` returns the context manager for a forward pass.
* :func:`make_grad_scaler` returns a ``torch.amp.GradScaler`` for fp16 on CUDA (bf16 has
  fp32's exponent range and needs no loss scaling), otherwise ``None``.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from medcl.lookup import look_up

log = logging.getLogger(__name__)

#: accepted precision modes
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_warned: set[tuple[str, str]] = set()
_ALIASES = {"none": "off", "fp32": "off", "false": "off", "no": "off", "bfloat16": "bf16", "float16": "fp16"}


def check_amp(amp: str | None) -> str:
    """Validate a configured precision mode; ``None`` means ``"off"``.

    Raises:
        ConfigError: unknown mode, with a "did you mean" hint.
    """
    if amp is None or amp is False:
        return "off"
    return look_up(amp, AMP_MODES, what="mixed-precision mode", where="amp", normalize=_canonical)


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return _ALIASES.get(name, name)


def resolve_amp(amp: str | None, device: torch.device | str) -> str:
    """The precision mode that will actually run on ``device``.

    Args:
        amp: configured mode (``"off"``, ``"bf16"``, ``"fp16"``).
        device: the training device.

    Returns:
        ``"off"``, ``"bf16"`` or ``"fp16"``.
    """
    mode = check_amp(amp)
    dev = torch.device(device)
    if mode == "off" or dev.type == "cuda":
        return mode
    if dev.type == "cpu" and mode == "bf16":
        return "bf16"
    if (mode, dev.type) not in _warned:
        _warned.add((mode, dev.type))
        log.warning("mixed precision %r is not used on %s; training in fp32", mode, dev.type)
    return "off"


def autocast(amp: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Context manager for a forward pass in the resolved precision (a no-op for ``"off"``)."""
    mode = resolve_amp(amp, device)
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[mode])


def make_grad_scaler(amp: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 on CUDA, ``None`` otherwise (bf16 and fp32 need none)."""
    mode = resolve_amp(amp, device)
    if mode == "fp16":
        return torch.amp.GradScaler(torch.device(device).type)
    return None
