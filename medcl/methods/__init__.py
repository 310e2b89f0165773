"""Pretraining methods: encoder + head(s) + loss.

``METHODS`` maps the config name (``pretrain.method``, also the preset file name under
``configs/method/``) to its class; :func:`build_method` checks the options against the class
signature so a typo in the YAML fails before training with the list of accepted options.

| name | paper | needs in the batch |
|---|---|---|
| simclr | Chen et al. 2020 | views |
| moco | MoCo v3, Chen, Xie & He 2021 | views |
| micle | Azizi et al. 2021 | views, patient |
| clocs | Kiyasseh et al. 2021 (ECG) | views, patient (or record) |
| supcon | Khosla et al. 2020 | views, label |
| supcon-hardneg | EGCL: SupCon + expert-named hard negatives (``hard_pairs`` required) | views, label |
| supcon-graph | ontology-weighted multi-label SupCon | views, label (B, K) |
| supcon-balanced | Cui et al. 2019 / Zhu et al. 2022 | views, label |
| prototypes | Targeted SupCon, Li et al. 2022 | views, label |
| oct-severity | Kokilepersaud et al. 2022 | views, index; label + setup(loader) |
| dense | Chaitanya et al. 2020 (GLCL), DeCon decoder | aligned views |
| droc | Sohn et al. 2021 (one-class) | views (square) |
| clip | Radford et al. 2021 (image/ECG–report CLIP) | views, report (label for soft targets) |
"""

from __future__ import annotations

import inspect
from typing import Any

from medcl.errors import ConfigError
from medcl.lookup import look_up, nearest
from medcl.losses import LOSSES
from medcl.methods.base import ContrastiveMethod, Method
from medcl.methods.clip import CLIPPretrain
from medcl.methods.dense import DenseContrast
from medcl.methods.droc import DROC
from medcl.methods.moco import MoCoV3
from medcl.methods.patient import CLOCS, MICLe
from medcl.methods.severity import (
    OCTSeverity,
    assign_severity,
    fit_severity_model,
    severity_bin_edges,
    severity_scores,
)
from medcl.methods.simclr import SimCLR
from medcl.methods.supcon import Prototypes, SupCon, SupConBalanced, SupConGraph, SupConHardNegative
from medcl.networks.base import Encoder

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "moco": MoCoV3,
    "micle": MICLe,
    "clocs": CLOCS,
    "supcon": SupCon,
    "supcon-hardneg": SupConHardNegative,
    "supcon-graph": SupConGraph,
    "supcon-balanced": SupConBalanced,
    "prototypes": Prototypes,
    "oct-severity": OCTSeverity,
    "dense": DenseContrast,
    "droc": DROC,
    "clip": CLIPPretrain,
}


def multilabel_label_methods() -> list[str]:
    """The methods that learn from labels and take multilabel ones.

    Those that need one class per sample (``Method.single_label``) refuse a multilabel task.
    """
    return [k for k, v in METHODS.items() if "label" in v.needs and not v.single_label]


def method_options(name: str) -> dict[str, Any]:
    """Keyword options of method ``name`` with their defaults (``inspect.Parameter.empty`` if required).

    A class's ``__init__`` options, then its bases' while it passes ``**kwargs`` on; for a method composed with a
    criterion from :data:`~medcl.losses.LOSSES` (``loss`` attribute, the SupCon family) also the loss's options,
    except those the method fills itself (``temperature``, ``gather_distributed``, ``from_method``).
    """
    cls = _lookup(name)
    opts: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[2:]  # self, encoder
        opts.update({p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and p.name not in opts})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    loss = getattr(cls, "loss", None)
    if isinstance(loss, str):
        filled = {"temperature", "gather_distributed", *getattr(cls, "from_method", {})}
        for p in list(inspect.signature(LOSSES[loss].__init__).parameters.values())[1:]:
            if p.name not in filled and p.name not in opts:
                opts[p.name] = p.default
    return opts


def _lookup(name: str) -> type[Method]:
    return look_up(name, METHODS, what="method", where="pretrain.method", n=3, verb="choose one of")


def build_method(name: str, encoder: Encoder, **kwargs: Any) -> Method:
    """Build pretraining method ``name`` around ``encoder``.

    Args:
        name: key of :data:`METHODS`.
        encoder: a :class:`~medcl.networks.base.Encoder` (from ``build_encoder``).
        **kwargs: method options (temperature, head sizes, loss options, ...).

    Returns:
        The :class:`Method` (an ``nn.Module``; move it to the device yourself).

    Raises:
        ConfigError: unknown method or option.
    """
    cls = _lookup(name)
    allowed = method_options(name)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        close = {k: nearest(k, allowed) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ConfigError(
            f"method {name!r} got unknown option(s) {unknown}",
            where="pretrain.method_options",
            fix=(hints + ". " if hints else "") + "accepted: " + ", ".join(allowed),
        )
    return cls(encoder, **kwargs)


__all__ = [
    "METHODS",
    "multilabel_label_methods",
    "CLOCS",
    "DROC",
    "ContrastiveMethod",
    "DenseContrast",
    "MICLe",
    "Method",
    "MoCoV3",
    "OCTSeverity",
    "Prototypes",
    "SimCLR",
    "SupCon",
    "SupConBalanced",
    "SupConGraph",
    "SupConHardNegative",
    "assign_severity",
    "build_method",
    "fit_severity_model",
    "method_options",
    "severity_bin_edges",
    "severity_scores",
]
