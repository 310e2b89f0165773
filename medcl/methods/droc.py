"""DROC: contrastive representations for one-class detection, with distribution-shifting augmentation.

Sohn, Li, Yoon, Jin, Pfister, "Learning and Evaluating Representations for Deep One-class Classification", ICLR
2021. Plain contrastive learning spreads the normal data uniformly over the sphere, which leaves no room for an
outlier to stand out; DROC trains on the data *augmented with distribution-shifting transformations* (rotations
by 90°, 180°, 270°) and treats each rotated copy as an instance of its own — rotated images are negatives of the
upright one, so the representation learns what "upright, normal" looks like. A one-class scorer (the ``detect``
stage: kNN or Deep SVDD) then works on the learnt features.

Here: each sample of the batch is entered ``copies`` times, each copy rotated by a different multiple of 90°
(drawn without replacement; the same rotation for all views of a copy); NT-Xent between the two views of every
copy, all other copies — the same image rotated included — being negatives.

Differs from the paper: the paper augments the data set with all four rotations; here ``copies`` of them per
step (2 by default, 4 = the paper's set at 4× the cost), and the usual medcl views (the preset's augmentations)
instead of the paper's SimCLR augmentation set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medcl.errors import ConfigError, DataError
from medcl.methods.base import view_stats
from medcl.methods.simclr import SimCLR
from medcl.networks.base import Encoder


class DROC(SimCLR):
    """SimCLR on rotated copies that are instances of their own (distribution augmentation).

    Args:
        encoder: a 2D (or 3D: rotated in its first two spatial axes) backbone.
        copies: rotated copies of each sample per step (1–4).
        **options: as :class:`~medcl.methods.simclr.SimCLR`.

    Batch:
        ``views`` ``(B, V>=2, C, H, W[, D])`` with ``H == W``.
    """

    def __init__(self, encoder: Encoder, *, copies: int = 2, **options: object) -> None:
        """Check ``copies``, then build SimCLR."""
        if not 1 <= int(copies) <= 4:
            raise ConfigError(f"copies={copies} must be 1 to 4 (rotations by 0, 90, 180 and 270 degrees)",
                              where="pretrain.method_options.copies", fix="use 2 (or 4: every rotation)")
        if encoder.spatial_dims not in (2, 3):
            raise ConfigError("DROC rotates images: it needs a 2D or 3D encoder", where="pretrain.method",
                              fix="use simclr or clocs for signals")
        super().__init__(encoder, **options)
        self.copies = int(copies)

    def rotate(self, views: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, V, C, H, W, ...)`` → ``(B * copies, V, C, H, W, ...)`` rotated copies and their quarter turns.

        Raises:
            DataError: non-square images (a quarter turn would change their shape).
        """
        if views.shape[3] != views.shape[4]:
            raise DataError(f"DROC rotates by 90 degrees: images must be square, got {tuple(views.shape[3:5])}",
                            where="method droc", fix="crop to a square transforms.spatial_size")
        b = views.shape[0]
        turns = torch.stack([torch.randperm(4, generator=generator)[: self.copies] for _ in range(b)])  # (B, copies)
        out = [torch.rot90(views[i], int(k), dims=(2, 3)) for i in range(b) for k in turns[i].tolist()]
        return torch.stack(out), turns.reshape(-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss", "pos_cos", "z_std"}``: NT-Xent over the rotated copies (each its own instance)."""
        v, _ = self.rotate(self.views(batch))
        z = self.embed_views(v)
        loss = self.criterion(z[:, 0], z[:, 1]) if z.shape[1] == 2 else self.multiview(z)
        return {"loss": loss, **view_stats(z)}
