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

from collections.abc import Mapping

import torch

from medcl.errors import ConfigError, DataError
from medcl.losses import PrototypeLoss
from medcl.methods.base import CriterionMethod, view_stats
from medcl.methods.ontology import concept_similarity, load_concept_graph
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


class SupCon(CriterionMethod):
    """SupCon ("out" form): all views of all samples of the same class are positives.

    The SupCon family is one composition (:class:`~medcl.methods.base.CriterionMethod`): a variant names its
    supervised contrastive loss; its options are the shared ones plus the loss's own.

    Args:
        encoder: the backbone.
        **options: ``temperature`` (0.1 in the paper), projector sizes, ``gather_distributed`` and the options of
            :class:`~medcl.losses.SupConLoss` (``base_temperature``, ``contrast_mode``).

    Batch:
        ``views`` ``(B, V>=2, C, *S)``, ``label`` ``(B,)`` int64 (``-1`` = unlabelled).
    """

    needs = ("label",)
    loss = "supcon"
    single_label = True  # (B,) class indices: SupConGraph is the multilabel form

    def labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The batch's class labels as the criterion wants them (``(B,)`` int64, ``-1`` = unlabelled)."""
        return class_labels(batch, f"method {type(self).__name__}")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss", "pos_cos", "z_std"}`` of a batch of views."""
        z = self.embed_views(self.views(batch))
        return {"loss": self.criterion(z, self.labels(batch)), **view_stats(z)}


class SupConHardNegative(SupCon):
    """Expert-guided contrastive learning (EGCL): SupCon with clinician-named confusable classes as hard negatives.

    Clinicians name class pairs that are easy to confuse (e.g. drusen vs. CNV in OCT, adjacent grades); for an
    anchor of one class, samples of the other class count ``hard_weight`` times in the SupCon denominator
    (:class:`~medcl.losses.HardNegativeSupConLoss`, a ``log w`` bias on their logits). The weighting is the
    importance weighting of hard negatives (Robinson et al., "Contrastive Learning with Hard Negative Samples",
    ICLR 2021), with the hard set *named by experts per class pair* instead of mined from embedding similarity;
    positives and all other negatives are SupCon's (Khosla et al. 2020). ``medcl suggest-hard-pairs RUN``
    proposes pairs from the validation confusion matrix of a run's probe, for the clinician to confirm.

    Args:
        encoder: the backbone.
        hard_pairs: the confusable pairs, class names of ``data.classes`` (or indices); required — without them
            the method is plain SupCon, so an empty list is refused.
        hard_weight: weight of a hard negative (> 1; 1 would again be plain SupCon).
        **options: as :class:`SupCon` (and ``classes``).

    Raises:
        ConfigError: no pairs, or ``hard_weight`` 1.
    """

    loss = "hard_negative_supcon"

    def __init__(self, encoder: Encoder, **options: object) -> None:
        """Refuse a run without confusable pairs, then build SupCon with the hard-negative criterion."""
        self.check_options(options)
        super().__init__(encoder, **options)

    @classmethod
    def check_options(cls, options: Mapping[str, object]) -> None:
        """Refuse options that would make the method plain SupCon (checked before any data is read, too).

        Raises:
            ConfigError: no pairs, or ``hard_weight`` 1.
        """
        where = "pretrain.method_options.hard_pairs"
        if not options.get("hard_pairs"):
            raise ConfigError(
                "method supcon-hardneg needs the confusable class pairs (pretrain.method_options.hard_pairs is "
                "empty): without them it is plain SupCon", where=where,
                fix="name pairs of data.classes that clinicians confuse, e.g. hard_pairs: [[early, intermediate]]; "
                "`medcl suggest-hard-pairs RUN` proposes pairs from a finished run's validation confusions "
                "(or use method supcon)")
        if float(options.get("hard_weight", 2.0)) == 1.0:
            raise ConfigError("hard_weight 1 weighs hard negatives like any other: that is plain SupCon",
                              where="pretrain.method_options.hard_weight",
                              fix="use a weight > 1 (2.0 by default), or method supcon")


class SupConGraph(SupCon):
    """Multi-label SupCon with positives weighted by label-set similarity in a class ontology (MAR-ECG style).

    The criterion is :class:`~medcl.losses.GraphSupConLoss` (options ``similarity``: a concept graph — the shipped
    cardiac graph ``"ecg_scp"`` or a ``.yaml``/``.json`` file, :mod:`medcl.methods.ontology` —, a ``(K, K)`` matrix
    or an inline spec ``{"classes": [...], "edges": [[a, b, w], ...]}``; ``graph_mode``; ``min_similarity``).

    MAR-ECG aligns ECG representations with the relations between cardiac statements; what medcl does is one
    concrete form of that idea, not the paper's architecture: the weight of a positive pair is the soft cosine of
    the two label sets under the graph's class similarity (:func:`~medcl.losses.graph.label_set_similarity`, a
    path's similarity being the product of its is-a edge weights), inside SupCon's "out" loss.

    Args:
        classes: the data's class names; a spec's matrix is reordered into their order.
        **supcon: as :class:`SupCon`.

    Batch:
        ``label`` ``(B, K)`` multi-hot float (an all-NaN row = unlabelled), or ``(B,)`` class indices of a
        single-label task (multiclass/ordinal; -1 = unlabelled), turned into one-hot rows so that two
        samples' weight is the graph similarity of their classes (e.g. neighbouring grades).
    """

    single_label = False  # multi-hot (B, K) labels, or class indices turned into one-hot rows
    loss = "graph_supcon"

    def __init__(self, encoder: Encoder, *, classes: list[str] | None = None, **supcon: object) -> None:
        """Build SupCon with the graph criterion and put its similarity matrix in the data's class order.

        ``similarity`` may also name a concept graph — a shipped one (``"ecg_scp"``) or a ``.yaml`` / ``.json``
        file (:mod:`medcl.methods.ontology`) — whose similarities are taken for ``classes``.

        Raises:
            ConfigError: a concept graph without ``classes``, or classes the graph does not know.
        """
        sim = supcon.get("similarity")
        self.graph_name: str | None = None
        if isinstance(sim, str):
            if classes is None:
                raise ConfigError("a concept graph needs the data's classes", where="pretrain.method_options.similarity",
                                  fix="set data.classes (the pretrain stage passes them)")
            graph = load_concept_graph(sim)
            supcon["similarity"] = concept_similarity(graph, classes, str(supcon.get("graph_mode", "shortest_path")))
            self.graph_name = str(graph.get("name") or sim)
        super().__init__(encoder, **supcon)
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
        """The batch's labels as ``(B, K)`` float label sets for the graph criterion.

        Multi-hot rows are returned with NaN (unknown) set to 0; ``(B,)`` class indices become one-hot rows
        over the similarity graph's ``K`` classes (``-1`` = unlabelled becomes all zeros).

        Raises:
            DataError: no ``label``, a class index outside the graph, or labels neither ``(B,)`` nor ``(B, K)``.
            ConfigError: single-label data without a similarity graph.
        """
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

    The criterion is :class:`~medcl.losses.BalancedSupConLoss` (options ``num_classes``, ``mode`` — ``"class_balanced"`` effective-number anchor weights, Cui et al. 2019;
    ``"prototypes"`` BCL class averaging with learnable prototypes, Zhu et al. 2022; ``"both"`` — ``beta`` and
    ``class_counts``); its prototypes live in the projector's ``out_dim`` space.
    """

    loss = "balanced_supcon"
    from_method = {"dim": "out_dim"}


class Prototypes(SupCon):
    """SupCon + cross-entropy to fixed class prototypes (Targeted SupCon, Li et al. 2022).

    ``loss = supcon_weight · SupCon(z, y) + prototype_weight · CE(cos(z, P) / T, y)`` with ``P``
    a simplex ETF (or optimised spread prototypes when ``out_dim < num_classes``). The fixed
    targets keep rare classes as far apart as frequent ones.

    Args:
        num_classes: number of classes.
        prototype_weight, supcon_weight: weights of the two terms.
        prototype_temperature: temperature of the prototype cross-entropy.
        **supcon: as :class:`SupCon`.
    """

    def __init__(self, encoder: Encoder, *, num_classes: int = 2, prototype_weight: float = 1.0,
                 supcon_weight: float = 1.0, prototype_temperature: float = 0.1, **supcon: object) -> None:
        """Build SupCon and the fixed prototypes in the projector's output space."""
        super().__init__(encoder, **supcon)
        self.prototype_loss = PrototypeLoss(num_classes, self.out_dim, prototype_temperature,
                                            gather_distributed=bool(getattr(self.criterion, "gather_distributed", False)))
        self.prototype_weight, self.supcon_weight = float(prototype_weight), float(supcon_weight)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted sum of SupCon and the prototype cross-entropy of the embedded views.

        Returns:
            ``{"loss", "supcon", "prototype", "pos_cos", "z_std"}``: the weighted loss (scalar, with gradient),
            its two unweighted terms (detached scalars) and the :func:`~medcl.methods.base.view_stats` monitors
            of the projections ``(B, V, out_dim)``.
        """
        z = self.embed_views(self.views(batch))
        y = self.labels(batch)
        sup = self.criterion(z, y)
        proto = self.prototype_loss(z, y)
        loss = self.supcon_weight * sup + self.prototype_weight * proto
        return {"loss": loss, "supcon": sup.detach(), "prototype": proto.detach(), **view_stats(z)}
