"""Contrastive losses — pure ``nn.Module``s (no mlflow, no ``.cuda()``, no AMP decisions).

Every loss L2-normalises, computes similarities with one matmul, masks the anchor itself with a
large finite negative and takes log-sum-exp in float32. Losses that use negatives accept
``gather_distributed=True`` (keys from all ranks via :func:`medcl.distributed.gather_with_grad`,
a no-op on one process).

==========================  =============================================================
registry name               class (paper)
==========================  =============================================================
``ntxent`` / ``infonce``    :class:`NTXentLoss` (SimCLR, Chen et al. 2020)
``supcon``                  :class:`SupConLoss` (Khosla et al. 2020, "out")
``moco_v3``                 :class:`MoCoV3Loss` (Chen, Xie, He 2021)
``patient``                 :class:`PatientContrastLoss` (MICLe, Azizi et al. 2021)
``clocs``                   :class:`CLOCSLoss` (Kiyasseh et al. 2021)
``hard_negative_supcon``    :class:`HardNegativeSupConLoss` (expert-guided hard negatives)
``graph_supcon``            :class:`GraphSupConLoss` (ontology-weighted multi-label SupCon)
``balanced_supcon``         :class:`BalancedSupConLoss` (Cui et al. 2019; BCL, Zhu et al. 2022)
``prototype``               :class:`PrototypeLoss` (fixed simplex-ETF prototypes)
``dense``                   :class:`DenseContrastLoss` (Chaitanya et al. 2020)
==========================  =============================================================
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean, look_up
from medcl.losses.balanced import BalancedSupConLoss
from medcl.losses.clip import CLIPLoss
from medcl.losses.dense import DenseContrastLoss
from medcl.losses.graph import GraphSupConLoss, ontology_similarity
from medcl.losses.hard_negative import HardNegativeSupConLoss
from medcl.losses.moco import KeyQueue, MoCoV3Loss, cosine_momentum, momentum_update
from medcl.losses.ntxent import NTXentLoss, ntxent
from medcl.losses.patient import CLOCSLoss, PatientContrastLoss
from medcl.losses.prototypes import PrototypeLoss, simplex_etf
from medcl.losses.supcon import SupConLoss

__all__ = [
    "LOSSES", "build_loss", "NTXentLoss", "SupConLoss", "MoCoV3Loss", "KeyQueue", "PatientContrastLoss",
    "CLOCSLoss", "HardNegativeSupConLoss", "GraphSupConLoss", "BalancedSupConLoss", "PrototypeLoss",
    "DenseContrastLoss", "CLIPLoss", "ntxent", "momentum_update", "cosine_momentum", "ontology_similarity", "simplex_etf",
]

#: Explicit registry: config name → loss class.
LOSSES: dict[str, type[nn.Module]] = {
    "ntxent": NTXentLoss,
    "infonce": NTXentLoss,
    "supcon": SupConLoss,
    "moco_v3": MoCoV3Loss,
    "patient": PatientContrastLoss,
    "clocs": CLOCSLoss,
    "hard_negative_supcon": HardNegativeSupConLoss,
    "graph_supcon": GraphSupConLoss,
    "balanced_supcon": BalancedSupConLoss,
    "prototype": PrototypeLoss,
    "dense": DenseContrastLoss,
    "clip": CLIPLoss,
}


def _loss_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def build_loss(name: str, where: str = "pretrain.loss", **kwargs: Any) -> nn.Module:
    """Build a loss from its registry name and keyword arguments.

    Args:
        name: a key of :data:`LOSSES` (case-insensitive, ``-`` accepted for ``_``).
        where: config key path used in error messages.
        **kwargs: constructor arguments of the loss class.

    Raises:
        ConfigError: unknown name or argument (with a "did you mean ..." hint), or an invalid value.
    """
    key = _loss_key(str(name))
    cls = look_up(name, LOSSES, what="loss", where=where, verb="choose one of", normalize=_loss_key)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self"]
    for arg in kwargs:
        if arg not in allowed:
            raise ConfigError(f"unknown argument {arg!r} for loss {key!r}", where=f"{where}.{arg}",
                              fix=f"{did_you_mean(arg, allowed)}{cls.__name__} accepts {', '.join(allowed)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # e.g. a list where a number was expected
        raise ConfigError(f"invalid arguments for loss {key!r}: {err}", where=where,
                          fix=f"check the argument types of {cls.__name__}") from None
