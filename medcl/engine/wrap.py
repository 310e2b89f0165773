"""Model wrappers the loop needs: ``torch.compile``, DDP, channels-last, and unwrapping.

The process group itself is only touched by :mod:`medcl.distributed`; DDP and SyncBatchNorm
come from ``torch.nn``. Checkpoints always hold the *unwrapped* module's ``state_dict``
(no ``module.`` / ``_orig_mod.`` prefixes), see :func:`unwrap_model`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medcl import distributed
from medcl.errors import TrainingError

log = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def maybe_compile(model: nn.Module, enabled: bool, **kwargs) -> nn.Module:
    """``torch.compile(model, **kwargs)`` when ``enabled``, else ``model`` unchanged.

    Compilation happens lazily on the first forward; on CPU it needs a C++ compiler.
    """
    if not enabled:
        return model
    if not hasattr(torch, "compile"):
        log.warning("torch.compile is not available in torch %s; running eagerly", torch.__version__)
        return model
    return torch.compile(model, **kwargs)


def model_to_channels_last(model: nn.Module) -> nn.Module:
    """Put 4-D parameters/buffers in ``channels_last`` and 5-D ones in ``channels_last_3d``.

    (``Module.to(memory_format=torch.channels_last)`` fails on 3-D convolution kernels.)
    """
    for t in list(model.parameters()) + list(model.buffers()):
        if t.ndim == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
        elif t.ndim == 5:
            t.data = t.data.contiguous(memory_format=torch.channels_last_3d)
    return model


def wrap_ddp(
    model: nn.Module,
    device: torch.device | str,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` (call only when running distributed).

    Args:
        model: the method module.
        device: this rank's device (``cuda:LOCAL_RANK`` or ``cpu`` for gloo).
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` first (small per-GPU batches;
            SimCLR, MoCo v3 and BYOL use it).
        find_unused_parameters: set when some parameters get no gradient in a step.

    Raises:
        TrainingError: no process group is initialised, or this is a section that runs on rank 0 alone
            (DDP's start-up broadcast would wait for ranks that are not there).
        DistributedError: the other ranks did not join within ``runtime.dist_timeout_s``.
    """
    if not distributed.is_distributed():
        raise TrainingError("DistributedDataParallel needs every rank of a torchrun job, and this code runs on "
                            "one process (no process group, or a rank-0-only section)", where="engine.wrap_ddp",
                            fix="train this model on every rank, or without DDP")
    device = torch.device(device)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    try:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    except (RuntimeError, ValueError) as e:
        lost = distributed.explain(e, op="DDP's start-up broadcast of the weights")
        if lost is not None:
            raise lost from e
        raise TrainingError(
            f"cannot wrap the model in DistributedDataParallel ({str(e).splitlines()[0]})",
            where="engine.wrap_ddp",
            fix="launch with torchrun and initialise medcl.distributed first, or train on one process",
        ) from e
