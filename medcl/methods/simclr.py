"""SimCLR: NT-Xent contrast between augmented views of each image.

Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medcl.losses import SupConLoss
from medcl.methods.base import CriterionMethod, view_stats
from medcl.networks.base import Encoder


class SimCLR(CriterionMethod):
    """Encoder → 2-layer MLP projector → NT-Xent between the views of each sample.

    With two views this is NT-Xent; with more, the multi-view form (every other view of the
    sample is a positive, SupCon without labels).

    Args:
        encoder: the backbone.
        **options: ``temperature`` (0.1–0.5 in the paper), projector sizes (2048 → 128, 2 layers),
            ``gather_distributed`` (negatives from all GPUs).

    Batch:
        ``views`` ``(B, V>=2, C, *S)``.
    """

    loss = "ntxent"

    def __init__(self, encoder: Encoder, **options: object) -> None:
        """Build NT-Xent (two views) and its multi-view form (more views)."""
        super().__init__(encoder, **options)
        self.multiview = SupConLoss(self.criterion.temperature, gather_distributed=self.criterion.gather_distributed)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss", "pos_cos", "z_std"}`` of a batch of views."""
        z = self.embed_views(self.views(batch))  # (B, V, D)
        loss = self.criterion(z[:, 0], z[:, 1]) if z.shape[1] == 2 else self.multiview(z)
        return {"loss": loss, **view_stats(z)}
