"""The :class:`Method` interface: encoder + head(s) + loss, one ``forward(batch)`` each.

A method is an ``nn.Module`` that the engine drives with

* ``forward(batch) -> {"loss": scalar, ...}`` (extra entries are detached scalars to log);
* ``on_step_end(step, total_steps)`` after each optimiser step (MoCo's momentum update);
* ``setup(loader)`` once before training, for methods that need a pass over the training data
  (``oct-severity`` fits its anomaly model there); the default does nothing;
* ``param_groups(weight_decay)`` for the optimiser (no decay on biases and norm parameters).

Batches follow medcl/README.md: ``"views"`` ``(B, V, C, *S)``, ``"label"`` ``(B,)`` int64 or
``(B, K)`` float, ``"patient"`` ``(B,)`` int64, ``"index"`` ``(B,)`` int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from medcl.errors import DataError
from medcl.losses import LOSSES
from medcl.networks.base import Encoder
from medcl.networks.heads import ProjectionHead


class Method(nn.Module):
    """Base class of pretraining methods.

    Args:
        encoder: a :class:`~medcl.networks.base.Encoder`.
    """

    #: Batch keys besides "views" this method needs (checked by :meth:`require`).
    needs: tuple[str, ...] = ()
    #: How ``pretrain.batches: auto`` forms its batches: ``"shuffle"`` or ``"patients"`` (P patients × K samples,
    #: :class:`medcl.data.sampling.PatientBatchSampler`) for methods whose positives are a patient's other images.
    batches: str = "shuffle"
    #: Whether the views must share their geometry (``transforms.aligned_views``): methods that contrast locations.
    needs_aligned_views: bool = False
    #: Whether the method reads one class index per sample (``(B,)`` labels): a multilabel task is refused before
    #: training (the pretraining stage checks ``data.task``).
    single_label: bool = False

    def __init__(self, encoder: Encoder) -> None:
        """Keep ``encoder`` as ``self.encoder`` (subclasses add heads and the criterion)."""
        super().__init__()
        self.encoder = encoder

    # -- engine hooks ---------------------------------------------------------------------
    def setup(self, loader: Iterable[Mapping[str, torch.Tensor]] | None = None) -> None:  # noqa: B027
        """Called once before training with the training loader; default: nothing."""

    def on_step_end(self, step: int, total_steps: int) -> None:  # noqa: B027
        """Called after every optimiser step; default: nothing."""

    def training_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Alias of ``self(batch)`` (the name medcl/README.md uses)."""
        return self(batch)

    # -- optimiser ------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates (excludes EMA/target copies)."""
        return (p for p in self.parameters() if p.requires_grad)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two optimiser groups: decayed weights, and biases/norm/1-D parameters without decay.

        Following common practice (timm ``param_groups_weight_decay``, MoCo v3, MAE): weight decay
        on biases, BatchNorm/LayerNorm/GroupNorm affine parameters, position embeddings and
        class tokens hurts or does nothing.

        Args:
            weight_decay: decay of the first group.

        Returns:
            ``[{"params": [...], "weight_decay": wd}, {"params": [...], "weight_decay": 0.0}]``
            (empty groups are left out).
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(".bias") or name.endswith(("pos_embed", "cls_token", "prototypes")):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = []
        if decay:
            groups.append({"params": decay, "weight_decay": float(weight_decay)})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    # -- helpers for subclasses -----------------------------------------------------------
    def views(self, batch: Mapping[str, torch.Tensor], min_views: int = 2) -> torch.Tensor:
        """``batch["views"]`` checked to be ``(B, V, C, *S)`` with ``V >= min_views``."""
        if "views" not in batch:
            raise DataError(
                f"batch has no 'views' (keys: {sorted(batch)})",
                where=f"method {type(self).__name__}",
                fix="use a pretraining loader (transforms with n_views >= 2) for this stage",
            )
        v = batch["views"]
        sd = getattr(self.encoder, "spatial_dims", v.dim() - 3)
        if v.dim() != sd + 3 or v.shape[1] < min_views:
            raise DataError(
                f"'views' must be (B, V>={min_views}, C, *spatial) with {sd} spatial axes, got {tuple(v.shape)}",
                where=f"method {type(self).__name__}",
                fix=f"set transforms.n_views >= {min_views} and check the modality's spatial_dims",
            )
        return v

    def require(self, batch: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        """``batch[key]`` or a :class:`DataError` saying which manifest column provides it."""
        if key not in batch:
            column = {"label": "label", "patient": "patient_id", "index": "(row index)"}.get(key, key)
            raise DataError(
                f"method needs batch[{key!r}] but the batch has only {sorted(batch)}",
                where=f"method {type(self).__name__}",
                fix=f"fill the manifest column {column!r} and let the loader return it",
            )
        return batch[key]

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """Encode all views in one pass.

        Args:
            views: ``(B, V, C, *S)``.

        Returns:
            ``(B, V, feature_dim)``.
        """
        b, v = views.shape[:2]
        h = self.encoder(views.flatten(0, 1))
        return h.view(b, v, -1)


class ContrastiveMethod(Method):
    """A method with one projection MLP on the pooled features of every view.

    Args:
        encoder: the backbone.
        hidden_dim: projector hidden width.
        out_dim: embedding size.
        num_layers: projector depth (2 = SimCLR).
    """

    def __init__(self, encoder: Encoder, *, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2) -> None:
        """Build the ``feature_dim -> hidden_dim -> out_dim`` projection MLP on top of ``encoder``."""
        super().__init__(encoder)
        self.out_dim = int(out_dim)
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, out_dim, num_layers=num_layers)

    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        """``(B, V, C, *S) -> (B, V, out_dim)`` projections (one encoder pass for all views)."""
        b, v = views.shape[:2]
        return self.projector(self.encoder(views.flatten(0, 1))).view(b, v, -1)


class CriterionMethod(ContrastiveMethod):
    """Encoder → projector → a criterion from :data:`medcl.losses.LOSSES`, named by the subclass (:attr:`loss`).

    SimCLR, MICLe and the SupCon family are this composition; a subclass names its loss and says what the
    criterion compares (its ``forward``). The loss's own options (e.g. ``hard_pairs``) are method options too
    (:func:`medcl.methods.method_options` reads them from the loss class), so no subclass re-lists the shared ones.

    Args:
        encoder: the backbone.
        temperature: softmax temperature.
        hidden_dim, out_dim, num_layers: projector.
        gather_distributed: negatives from all GPUs.
        **loss_options: the other options of the :attr:`loss` class.
    """

    #: the :data:`~medcl.losses.LOSSES` entry the criterion is built from
    loss = ""
    #: loss arguments filled from method options (loss argument -> method option), not options of their own
    from_method: dict[str, str] = {}

    def __init__(self, encoder: Encoder, *, temperature: float = 0.1, hidden_dim: int = 2048, out_dim: int = 128,
                 num_layers: int = 2, gather_distributed: bool = False, **loss_options: object) -> None:
        """Build the projector and the criterion (the :attr:`loss` class with the shared and its own options)."""
        super().__init__(encoder, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        shared = {"temperature": temperature, "gather_distributed": gather_distributed}
        filled = {arg: {"out_dim": out_dim, "hidden_dim": hidden_dim}[opt] for arg, opt in self.from_method.items()}
        self.criterion = LOSSES[self.loss](**shared, **filled, **loss_options)


def view_stats(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collapse monitors of ``(B, V, D)`` embeddings (detached).

    Returns:
        ``pos_cos``: mean cosine between view 0 and view 1 of a sample (→ 1 as views align);
        ``z_std``: mean per-dimension std of the normalised embeddings (→ 0 on collapse,
        ≈ 1/sqrt(D) when spread uniformly).
    """
    with torch.no_grad():
        zn = torch.nn.functional.normalize(z.detach().float(), dim=-1)
        pos = (zn[:, 0] * zn[:, 1]).sum(-1).mean() if z.shape[1] > 1 else zn.new_tensor(float("nan"))
        std = zn.flatten(0, 1).std(dim=0).mean() if zn.shape[0] * zn.shape[1] > 1 else zn.new_tensor(0.0)
    return {"pos_cos": pos, "z_std": std}
