"""Supervised contrastive methods (labels from the manifest).

* ``supcon`` — SupCon, Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
* ``supcon-hardneg`` — SupCon whose clinician-named confusable class pairs weigh more as negatives.
* ``supcon-graph`` — multi-label SupCon with ontology-weighted positives (ECG statements, fundus findings).
* ``supcon-balanced`` — class-balanced SupCon for long-tailed labels (Cui et al. 2019 weights;
  Zhu et al. 2022 Balanced Contrastive Learning).
* ``prototypes`` — SupCon plus cross-entropy to fixed, maximally separated class prototypes
  (Targeted SupCon, Li et al., "Targeted Supervised Contrastive Learning for Long-Tailed
  Recognition", CVPR 2022).

Unlabelled samples (``label = -1``, or an all-NaN row for multi-label) keep only their own views
as positives, so partially labelled sets still train.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medcl.errors import ConfigError, DataError
from medcl.losses import (
    BalancedSupConLoss,
    GraphSupConLoss,
    HardNegativeSupConLoss,
    PrototypeLoss,
    SupConLoss,
)
from medcl.methods.base import ContrastiveMethod, view_stats
from medcl.networks.base import Encoder


def class_labels(batch: Mapping[str, torch.Tensor], where: str) -> torch.Tensor:
    """``batch["label"]`` as ``(B,)`` int64 (``-1`` = unlabelled), or a :class:`DataError`."""
    if "label" not in batch:
        raise DataError("batch has no 'label'", where=where,
                        fix="fill the manifest's label column (use -1 for unlabelled rows)")
    y = batch["label"]
    if y.dim() != 1:
        raise DataError(f"labels must be (B,) class indices, got {tuple(y.shape)}", where=where,
                        fix="use a single-label task, or method supcon-graph for multi-label data")
    if y.is_floating_point():
        y = torch.where(torch.isnan(y), torch.full_like(y, -1), y)
    return y.long()


class SupCon(ContrastiveMethod):
    """SupCon ("out" form): all views of all samples of the same class are positives.

    Args:
        encoder: the backbone.
        temperature: softmax temperature (0.1 in the paper).
        base_temperature: loss scale ``T / base_temperature`` (None: none).
        hidden_dim, out_dim, num_layers: projector.
        gather_distributed: negatives from all GPUs.

    Batch:
        ``views`` ``(B, V>=2, C, *S)``, ``label`` ``(B,)`` int64 (``-1`` = unlabelled).
    """

    needs = ("label",)

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        self.criterion = SupConLoss(temperature, base_temperature=base_temperature,
                                    gather_distributed=gather_distributed)

    def labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return class_labels(batch, f"method {type(self).__name__}")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.embed_views(self.views(batch))
        return {"loss": self.criterion(z, self.labels(batch)), **view_stats(z)}


class SupConHardNegative(SupCon):
    """SupCon with expert-named hard negatives (e.g. drusen vs. CNV in OCT).

    Args:
        hard_pairs: class pairs (names with ``classes``, or indices) that are easily confused.
        hard_weight: weight of a hard negative in the softmax denominator (> 1 emphasises it).
        classes: class names in label-index order.
        (others as :class:`SupCon`)
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        hard_pairs: Sequence[Sequence[object]] = (),
        hard_weight: float = 2.0,
        classes: Sequence[str] | None = None,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, temperature=temperature, hidden_dim=hidden_dim, out_dim=out_dim,
                         num_layers=num_layers, gather_distributed=gather_distributed)
        self.criterion = HardNegativeSupConLoss(temperature, hard_pairs=hard_pairs, hard_weight=hard_weight,
                                                classes=classes, gather_distributed=gather_distributed)


class SupConGraph(SupCon):
    """Multi-label SupCon with positives weighted by label-set similarity in a class ontology.

    Args:
        similarity: ``(K, K)`` class-similarity matrix or an ontology spec
            ``{"classes": [...], "edges": [[a, b, w], ...]}`` (None: identity).
        graph_mode: ``"shortest_path"`` or ``"adjacency"`` (how a spec becomes a matrix).
        min_similarity: weights below this are not positives.
        (others as :class:`SupCon`)

    Batch:
        ``label`` ``(B, K)`` multi-hot float (an all-NaN row = unlabelled), or ``(B,)`` class indices of a
        single-label task (multiclass/ordinal; -1 = unlabelled), turned into one-hot rows so that two
        samples' weight is the graph similarity of their classes (e.g. neighbouring grades).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        similarity: object = None,
        graph_mode: str = "shortest_path",
        min_similarity: float = 0.0,
        classes: list[str] | None = None,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, temperature=temperature, hidden_dim=hidden_dim, out_dim=out_dim,
                         num_layers=num_layers, gather_distributed=gather_distributed)
        self.criterion = GraphSupConLoss(temperature, similarity=similarity, graph_mode=graph_mode,
                                         min_similarity=min_similarity, gather_distributed=gather_distributed)
        self._align_classes(classes)

    def _align_classes(self, classes: list[str] | None) -> None:
        """Reorder an ontology spec's matrix into the data's class order (label index k = ``classes[k]``)."""
        spec = self.criterion.classes
        if classes is None or spec is None:
            return
        missing, extra = [c for c in classes if c not in spec], [c for c in spec if c not in classes]
        if missing or extra:
            raise ConfigError(
                f"the similarity graph's classes {spec} differ from the data's {list(classes)}"
                + (f" (not in the graph: {missing})" if missing else "")
                + (f" (not in the data: {extra})" if extra else ""),
                where="pretrain.method_options.similarity.classes",
                fix="list exactly the classes of data.classes in the similarity graph")
        order = torch.as_tensor([spec.index(c) for c in classes])
        self.criterion.similarity = self.criterion.similarity[order][:, order].contiguous()
        self.criterion.classes = list(classes)

    def labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        where = f"method {type(self).__name__}"
        if "label" not in batch:
            raise DataError("batch has no 'label'", where=where, fix="fill the manifest's label column(s)")
        y = batch["label"]
        if y.dim() == 1:  # single-label classes -> one-hot; unlabelled (-1) -> all zeros
            sim = self.criterion.similarity
            if sim is None:
                raise ConfigError("single-label data needs a class similarity graph", where=where,
                                  fix="set pretrain.method_options.similarity (classes + edges), or use supcon")
            k = sim.shape[0]
            if bool((y >= k).any()):
                raise DataError(f"label {int(y.max())} is outside the similarity graph's {k} classes", where=where,
                                fix="list every class of data.classes in the similarity graph")
            return torch.nn.functional.one_hot(y.long().clamp(min=0), k).float() * (y >= 0).unsqueeze(1).float()
        if y.dim() != 2:
            raise DataError(f"labels must be (B, K) multi-hot or (B,) class indices, got {tuple(y.shape)}",
                            where=where, fix="check data.task and the label column")
        # NaN (unknown) → 0: such a sample is similar to nobody and keeps only its own views.
        return torch.nan_to_num(y.float(), nan=0.0)


class SupConBalanced(SupCon):
    """Class-balanced SupCon for long-tailed labels.

    Args:
        num_classes: number of classes.
        mode: ``"class_balanced"`` (effective-number anchor weights), ``"prototypes"`` (BCL class
            averaging with learnable prototypes) or ``"both"``.
        beta: effective-number hyper-parameter.
        class_counts: training-set counts per class (else counted over the batches seen).
        (others as :class:`SupCon`)
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        num_classes: int = 2,
        mode: str = "class_balanced",
        beta: float = 0.999,
        class_counts: Sequence[int] | None = None,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, temperature=temperature, hidden_dim=hidden_dim, out_dim=out_dim,
                         num_layers=num_layers, gather_distributed=gather_distributed)
        self.criterion = BalancedSupConLoss(temperature, mode=mode, num_classes=num_classes, dim=out_dim, beta=beta,
                                            class_counts=class_counts, gather_distributed=gather_distributed)


class Prototypes(SupCon):
    """SupCon + cross-entropy to fixed class prototypes (Targeted SupCon, Li et al. 2022).

    ``loss = supcon_weight · SupCon(z, y) + prototype_weight · CE(cos(z, P) / T, y)`` with ``P``
    a simplex ETF (or optimised spread prototypes when ``out_dim < num_classes``). The fixed
    targets keep rare classes as far apart as frequent ones.

    Args:
        num_classes: number of classes.
        prototype_weight, supcon_weight: weights of the two terms.
        prototype_temperature: temperature of the prototype cross-entropy.
        (others as :class:`SupCon`)
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        num_classes: int = 2,
        prototype_weight: float = 1.0,
        supcon_weight: float = 1.0,
        prototype_temperature: float = 0.1,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, temperature=temperature, hidden_dim=hidden_dim, out_dim=out_dim,
                         num_layers=num_layers, gather_distributed=gather_distributed)
        self.prototype_loss = PrototypeLoss(num_classes, out_dim, prototype_temperature)
        self.prototype_weight, self.supcon_weight = float(prototype_weight), float(supcon_weight)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.embed_views(self.views(batch))
        y = self.labels(batch)
        sup = self.criterion(z, y)
        proto = self.prototype_loss(z, y)
        loss = self.supcon_weight * sup + self.prototype_weight * proto
        return {"loss": loss, "supcon": sup.detach(), "prototype": proto.detach(), **view_stats(z)}
