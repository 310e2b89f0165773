"""SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv:2002.05709)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medcl.losses import NTXentLoss, SupConLoss
from medcl.methods.base import ContrastiveMethod, view_stats
from medcl.networks.base import Encoder


class SimCLR(ContrastiveMethod):
    """Encoder → 2-layer MLP projector → NT-Xent between the views of each sample.

    With two views this is NT-Xent; with more, the multi-view form (every other view of the
    sample is a positive, SupCon without labels).

    Args:
        encoder: the backbone.
        temperature: NT-Xent temperature (0.1–0.5 in the paper).
        hidden_dim, out_dim, num_layers: projector (2048 → 128, 2 layers).
        gather_distributed: negatives from all GPUs.

    Batch:
        ``views`` ``(B, V>=2, C, *S)``.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(encoder, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        self.criterion = NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.multiview = SupConLoss(temperature, gather_distributed=gather_distributed)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.embed_views(self.views(batch))  # (B, V, D)
        loss = self.criterion(z[:, 0], z[:, 1]) if z.shape[1] == 2 else self.multiview(z)
        return {"loss": loss, **view_stats(z)}
