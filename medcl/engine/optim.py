"""Optimisers: AdamW, SGD and LARS, looked up in the explicit :data:`OPTIMIZERS` registry.

LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks") is
written here as in MoCo v3 / BYOL: for every weight matrix or kernel the update
``g + wd * w`` is rescaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``; biases and
normalisation parameters (1-D tensors) get neither the adaptation nor weight decay, only
momentum SGD.

Passing a module (instead of parameters or groups) to :func:`build_optimizer` splits its
parameters into a decayed group and a no-decay group (biases, norm scales/shifts), as timm's
``param_groups_weight_decay`` does; the no-decay group is also excluded from LARS adaptation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from medcl.errors import ConfigError
from medcl.lookup import look_up


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), MoCo v3 / BYOL variant.

    Per parameter ``w`` with gradient ``g`` (``d = g`` for excluded parameters)::

        d  = g + wd * w
        q  = eta * ||w|| / ||d||   (1 if either norm is 0)
        mu = momentum * mu + q * d
        w  = w - lr * mu

    Args:
        params: parameters or parameter groups. A group may set ``lars_exclude`` (bool);
            when it is ``None`` (default) 1-D tensors (biases, norm parameters) are excluded.
        lr: learning rate.
        weight_decay: added to the gradient before the trust ratio (not to excluded parameters).
        momentum: heavy-ball momentum.
        trust_coefficient: ``eta`` in the paper (0.001 in MoCo v3 and BYOL).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
        lars_exclude: bool | None = None,
    ) -> None:
        """Check the learning rate and register the hyper-parameters as group defaults.

        Raises:
            ConfigError: a negative learning rate.
        """
        if lr < 0:
            raise ConfigError(f"LARS learning rate must be >= 0, got {lr}", where="optimizer.lr",
                              fix="set a positive learning rate")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum,
            trust_coefficient=trust_coefficient, lars_exclude=lars_exclude,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One LARS update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional, as for any optimiser).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                exclude = group["lars_exclude"]
                if exclude is None:
                    exclude = p.ndim <= 1
                if not exclude:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(d_p)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    q = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    d_p = d_p.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d_p)
                p.add_(mu, alpha=-group["lr"])
        return loss


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and non-decayed groups.

    Biases and normalisation parameters (every tensor with ``ndim <= 1``) and names listed in
    ``no_decay_names`` (e.g. ViT ``pos_embed``, ``cls_token``) get ``weight_decay=0`` and
    ``lars_exclude=True``.

    Returns:
        ``[{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0,
        "lars_exclude": True}]`` (empty groups dropped).
    """
    skip = set(no_decay_names)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def fused_available(params: Iterable[Any]) -> bool:
    """Whether PyTorch's fused optimiser kernels take these parameters (or parameter-group dicts).

    ``True`` when every parameter is a dense floating-point tensor on a device type with fused kernels
    (``cpu``, ``cuda``, ...), all of one device type.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # private, stable since 2.1

    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
    kinds = {t.device.type for t in tensors}
    return (bool(tensors) and len(kinds) == 1 and kinds <= set(_get_fused_kernels_supported_devices())
            and all(torch.is_floating_point(t) and not t.is_sparse for t in tensors))


def _adamw(params, *, lr, weight_decay, momentum, betas, eps, trust_coefficient, nesterov):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                             fused=fused_available(params) or None)


def _sgd(params, *, lr, weight_decay, momentum, betas, eps, trust_coefficient, nesterov):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                           fused=fused_available(params) or None)


def _lars(params, *, lr, weight_decay, momentum, betas, eps, trust_coefficient, nesterov):
    return LARS(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                trust_coefficient=trust_coefficient)


#: optimiser name -> factory(params, **hyperparameters)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "lars": _lars,
}


def build_optimizer(
    params_or_groups: nn.Module | Iterable[Any],
    name: str = "adamw",
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    trust_coefficient: float = 0.001,
    nesterov: bool = False,
    no_decay_names: Iterable[str] = (),
) -> torch.optim.Optimizer:
    """Build an optimiser from :data:`OPTIMIZERS`.

    Args:
        params_or_groups: an ``nn.Module`` (split with :func:`param_groups_weight_decay`),
            an iterable of parameters, or a list of parameter-group dicts.
        name: ``"adamw"``, ``"sgd"`` or ``"lars"``.
        lr: base learning rate (schedules multiply it).
        weight_decay: weight decay (AdamW: decoupled; SGD: L2; LARS: added before adaptation).
        momentum: SGD / LARS momentum.
        betas: AdamW's moment decay rates ``(beta1, beta2)``.
        eps: AdamW's denominator term.
        trust_coefficient: LARS ``eta``.
        nesterov: SGD Nesterov momentum.
        no_decay_names: with a module, extra parameter names kept out of weight decay.

    Raises:
        ConfigError: unknown name (with a "did you mean" hint), no trainable parameters.
    """
    factory = look_up(name, OPTIMIZERS, what="optimizer", where="optimizer.name",
                      normalize=lambda s: s.strip().lower())
    if isinstance(params_or_groups, nn.Module):
        params: list[Any] = param_groups_weight_decay(params_or_groups, weight_decay, no_decay_names)
    else:
        params = [{**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])}
                  if isinstance(g, dict) else g for g in params_or_groups]
    if not params:
        raise ConfigError("the optimizer was given no trainable parameters", where="optimizer",
                          fix="check that the model has parameters with requires_grad=True")
    return factory(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, betas=tuple(betas), eps=eps,
        trust_coefficient=trust_coefficient, nesterov=nesterov,
    )
