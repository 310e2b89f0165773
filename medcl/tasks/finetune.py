"""Fine-tuning pieces: layer-wise LR decay, the classifier model, task losses, the engine wrapper.

Layer-wise LR decay follows Clark et al. 2020 ("ELECTRA") and Bao et al. 2022 ("BEiT"); the
:class:`SupervisedWrapper`'s ``forward(batch) -> {"loss", "logits"}`` plugs into
``medcl.engine.loop.fit``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.metrics.classification import check_task

log = logging.getLogger(__name__)

# Depth heuristic for layer-wise LR decay, applied to dotted parameter names (first match wins,
# so a stage index is found before the block index inside that stage):
#   stages.<i>      (ConvNeXt, timm)                      -> i + 1
#   layers.<i>      (Swin, timm)                          -> i + 1
#   layers<i>       (SwinUNETR swinViT, MONAI)            -> i      (layers1 .. layers4)
#   layer<i>        (ResNet: timm, torchvision, MONAI)    -> i      (layer1 .. layer4)
#   denseblock<i> / transition<i> (DenseNet)              -> i
#   down_<i>        (BasicUNet contracting path, MONAI)   -> i
#   blocks.<i>      (ViT: timm, MONAI)                    -> i + 1
#   stem-like names (patch_embed, cls_token, pos_embed, stem, conv1, bn1, conv_0, ...) -> 0
#   anything else (head, final norm, unknown)             -> L + 1 (the head: full learning rate)
_DEPTH_PATTERNS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"(?:^|\.)stages\.(\d+)(?:\.|$)"), 1),
    (re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)"), 1),
    (re.compile(r"(?:^|\.)layers(\d+)(?:\.|$)"), 0),
    (re.compile(r"(?:^|\.)layer(\d+)(?:\.|$)"), 0),
    (re.compile(r"(?:^|\.)(?:denseblock|transition)(\d+)(?:\.|$)"), 0),
    (re.compile(r"(?:^|\.)down_(\d+)(?:\.|$)"), 0),
    (re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)"), 1),
)
_STEM_PATTERN = re.compile(
    r"(?:^|\.)(patch_embed|patch_embedding|cls_token|pos_embed|reg_token|dist_token|mask_token|stem|"
    r"conv_stem|bn_stem|conv1|bn1|conv0|norm0|conv_0|embed|embeddings)(?:\.|$)"
)
_FINAL_NORM = re.compile(r"(?:^|\.)(norm|fc_norm|norm_pre|head_norm|conv_head|bn2|norm5)\.(weight|bias)$")
_NO_DECAY_NAMES = re.compile(r"(?:^|\.)(cls_token|pos_embed|reg_token|dist_token|mask_token)$")


def layer_depth(name: str) -> int | None:
    """Depth of a parameter by the heuristic above (None = not matched → head)."""
    for pattern, offset in _DEPTH_PATTERNS:
        m = pattern.search(name)
        if m:
            return int(m.group(1)) + offset
    if _STEM_PATTERN.search(name):
        return 0
    return None


def layerwise_lr_groups(
    model: nn.Module,
    base_lr: float,
    decay: float = 0.75,
    weight_decay: float = 0.05,
    *,
    head_prefixes: Sequence[str] = ("head", "fc", "classifier"),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with layer-wise learning-rate decay (BEiT/MAE fine-tuning recipe).

    Depth ``d`` comes from :func:`layer_depth` (stem 0 < stage/block 1..L < head L+1); a parameter
    at depth ``d`` gets ``lr = base_lr * decay ** (L + 1 - d)``. Biases, norm weights (any 1-D
    parameter) and position/class tokens get no weight decay. Parameters that match no pattern
    get the head rate; a warning names how many encoder parameters fell through.

    Returns:
        list of groups sorted by depth: ``{"params", "param_names", "lr", "lr_scale",
        "weight_decay", "layer_id"}`` (``lr_scale`` for schedulers that rescale per group).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = {n: layer_depth(n) for n, _ in named}
    found = [d for d in depths.values() if d is not None]
    top = (max(found) if found else 0) + 1
    unmatched = [
        n for n, d in depths.items()
        if d is None and not _FINAL_NORM.search(n) and not any(f".{h}." in f".{n}" for h in head_prefixes)
    ]
    if unmatched:
        log.warning("layer-wise LR decay: %d parameters matched no depth pattern (e.g. %r) and use the head "
                    "learning rate", len(unmatched), unmatched[0])
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for n, p in named:
        d = depths[n] if depths[n] is not None else top
        no_decay = p.ndim <= 1 or n.endswith(".bias") or bool(_NO_DECAY_NAMES.search(n))
        key = (d, no_decay)
        if key not in groups:
            scale = decay ** (top - d)
            groups[key] = {"params": [], "param_names": [], "lr": base_lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay, "layer_id": d}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(n)
    return [groups[k] for k in sorted(groups)]


class ClassifierModel(nn.Module):
    """Encoder → (global pooling if spatial) → dropout → linear head.

    Args:
        encoder: module mapping a batch ``(B, C, *spatial)`` to features ``(B, D)`` (or
            ``(B, D, *spatial)``, average-pooled); ``encoder.feature_dim`` gives ``D``.
        num_outputs: output logits (use :func:`num_outputs_for_task`: 1 for binary).
        task: task kind (chooses the loss in :class:`SupervisedWrapper`).
        dropout: dropout before the head.
        feature_dim: override when the encoder has no ``feature_dim`` attribute.
    """

    def __init__(self, encoder: nn.Module, num_outputs: int, task: str = "multiclass", dropout: float = 0.0,
                 feature_dim: int | None = None) -> None:
        """Check the task and feature width and build the dropout and linear head (N(0, 0.01²) weights, zero bias)."""
        super().__init__()
        self.task = check_task(task)
        dim = feature_dim if feature_dim is not None else getattr(encoder, "feature_dim", None)
        if dim is None:
            raise ConfigError(f"encoder {type(encoder).__name__} has no feature_dim attribute",
                              where="ClassifierModel", fix="pass feature_dim= explicitly")
        if self.task == "binary" and num_outputs != 1:
            raise ConfigError(f"a binary classifier has 1 output logit, got num_outputs={num_outputs}",
                              where="ClassifierModel", fix="use num_outputs_for_task('binary', 2) == 1")
        self.encoder = encoder
        self.feature_dim = int(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, int(num_outputs))
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def head_from_probe(self, probe: Any) -> None:
        """Start the head from a linear probe fitted on this encoder's frozen features (LP-FT).

        Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
        ICLR): fine-tuning a pretrained encoder under a random head lets the head's early, large gradients distort
        the features; starting the head from the linear probe avoids that. The probe
        (:class:`~medcl.tasks.linear_model.LinearModel`) acts on standardised features, ``((f - mean) / std)
        @ coef.T + intercept``; folding the standardisation in gives the head ``W = coef / std`` ``(K_out, D)``
        and ``b = intercept - (mean / std) @ coef.T`` ``(K_out,)``, so ``head(f)`` equals the probe's logits.

        Raises:
            ConfigError: the probe's task, output count or feature width differ from this model's.
        """
        coef, mean, std = (np.asarray(a, dtype=np.float64) for a in (probe.coef, probe.mean, probe.std))
        intercept = np.asarray(probe.intercept, dtype=np.float64).reshape(-1)
        want = (self.head.out_features, self.feature_dim)
        if coef.shape != want or mean.shape != (self.feature_dim,) or probe.task != self.task:
            raise ConfigError(f"a {probe.task} probe with coefficients {coef.shape} does not fit this {self.task} "
                              f"head {want}", where="ClassifierModel.head_from_probe",
                              fix="fit the probe on this encoder's features for the same task")
        w = coef / std
        b = intercept - w @ mean
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(b, dtype=self.head.bias.dtype))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` encoder features."""
        f = self.encoder(x)
        if isinstance(f, dict):
            f = f.get("features", f.get("embedding"))
        elif isinstance(f, (tuple, list)):
            f = f[0]
        if f.ndim > 2:
            f = f.flatten(2).mean(-1)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, num_outputs)`` logits."""
        return self.head(self.dropout(self.features(x)))


class TaskLoss(nn.Module):
    """Loss for a task with unlabelled entries masked out.

    * multiclass/ordinal: cross-entropy over ``(B, K)`` logits, labels ``(B,)`` (``-1`` ignored).
    * binary: BCE-with-logits over ``(B,)``/``(B, 1)`` logits, labels ``(B,)`` 0/1 (``-1`` ignored).
    * multilabel: BCE-with-logits over ``(B, K)``, labels ``(B, K)`` (NaN or ``-1`` ignored).

    A batch with no labelled entry gives a zero loss connected to the graph (never NaN).
    """

    def __init__(self, task: str, *, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        """Check the task and keep the label smoothing (multiclass/ordinal) and positive-class weight (BCE)."""
        super().__init__()
        self.task = check_task(task)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the labelled entries of a batch.

        Args:
            logits: ``(B, K)``, or ``(B,)`` / ``(B, 1)`` for binary.
            labels: ``(B,)`` class indices or 0/1 (``-1`` = unlabelled), or ``(B, K)`` multilabel (NaN or -1).

        Returns:
            A scalar; zero (still connected to the graph) when nothing is labelled.
        """
        labels = labels.to(logits.device)
        if self.task in ("multiclass", "ordinal"):
            y = labels.reshape(-1).long()
            keep = y >= 0
            if not keep.any():
                return logits.sum() * 0.0
            return F.cross_entropy(logits[keep], y[keep], label_smoothing=self.label_smoothing)
        if self.task == "binary":
            z = logits.reshape(-1)
            y = labels.reshape(-1).float()
        else:
            z = logits
            y = labels.float().reshape(logits.shape)
        keep = torch.isfinite(y) & (y >= 0)
        if not keep.any():
            return logits.sum() * 0.0
        per = F.binary_cross_entropy_with_logits(z, torch.where(keep, y, torch.zeros_like(y)),
                                                 reduction="none", pos_weight=self.pos_weight)
        return (per * keep).sum() / keep.sum()


def loss_for_task(task: str, **kwargs) -> TaskLoss:
    """Loss module for a task: CE (multiclass, ordinal) or BCE-with-logits (binary, multilabel)."""
    return TaskLoss(task, **kwargs)


class SupervisedWrapper(nn.Module):
    """Makes a :class:`ClassifierModel` trainable by the engine's generic loop.

    ``forward(batch)`` reads ``batch["image"]`` ``(B, C, *spatial)`` and ``batch["label"]`` and
    returns ``{"loss": scalar, "logits": (B, K) or (B,) for binary}``.
    """

    def __init__(self, model: ClassifierModel, task: str | None = None, loss: nn.Module | None = None) -> None:
        """Wrap ``model``; the loss defaults to :func:`loss_for_task` of its task."""
        super().__init__()
        self.model = model
        self.task = check_task(task or model.task)
        self.loss = loss if loss is not None else loss_for_task(self.task)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run the classifier on ``batch["image"]`` and score it against ``batch["label"]``.

        Returns:
            ``{"loss": scalar, "logits": (B, K) or (B,) for binary}``.

        Raises:
            DataError: the batch has no image or no label entry.
        """
        for key in ("image", "label"):
            if key not in batch:
                raise DataError(f"batch has no {key!r} entry (keys: {sorted(batch)})", where="SupervisedWrapper",
                                fix="use a labelled classification loader")
        logits = self.model(batch["image"])
        if self.task == "binary":
            logits = logits.reshape(-1)
        return {"loss": self.loss(logits, batch["label"]), "logits": logits}
