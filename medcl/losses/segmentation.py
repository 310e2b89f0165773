"""Soft Dice + cross-entropy for segmentation, with the batch Dice taken over every rank under DDP.

The Dice term is Milletari et al. 2016's soft Dice on softmax outputs, in MONAI's ``DiceLoss`` form
(``1 - (2 I + 1e-5) / (sum p + sum g + 1e-5)`` per class, averaged over classes); the cross-entropy is
``F.cross_entropy`` over every voxel. With ``batch=True`` (nnU-Net's "batch Dice", Isensee et al. 2021)
the intersections and denominators are summed over the whole batch before the ratio — which a plain
per-process loss under DDP computes over each rank's share only. Here the per-class sums are gathered
from every rank with :func:`medcl.distributed.gather_with_grad` (as nnU-Net v2's DDP Dice does), so a
data-parallel step has the single process's loss and gradient at the same global batch. On one
process the value equals MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, batch=...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcl import distributed

__all__ = ["DiceCELoss"]

_SMOOTH = 1e-5  # MONAI's smooth_nr = smooth_dr


class DiceCELoss(nn.Module):
    """``lambda_dice * soft Dice + lambda_ce * cross-entropy``.

    Args:
        include_background: include class 0 in the Dice term.
        batch: one Dice per class over the whole (global) batch instead of a mean of per-case Dice.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        gather_distributed: with ``batch``, sum the Dice statistics over every rank (no-op on one process).

    Shapes:
        ``logits`` ``(B, K, *S)``; ``target`` ``(B, 1, *S)`` or ``(B, *S)`` integer labels in ``[0, K)``
        → scalar.
    """

    def __init__(self, *, include_background: bool = False, batch: bool = True, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, gather_distributed: bool = True) -> None:
        """Keep the settings (the loss has no parameters)."""
        super().__init__()
        self.include_background = bool(include_background)
        self.batch = bool(batch)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted soft Dice + cross-entropy of a batch.

        Args:
            logits: ``(B, K, *S)`` raw scores (computed in float32 at least).
            target: ``(B, 1, *S)`` or ``(B, *S)`` integer labels in ``[0, K)``.

        Returns:
            Scalar loss.
        """
        labels = (target[:, 0] if target.ndim == logits.ndim else target).long()
        k = logits.shape[1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32, fp64 kept
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels, k).movedim(-1, 1).to(probs.dtype)
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        spatial = tuple(range(2, logits.ndim))
        inter = (probs * onehot).sum(spatial)          # (B, K')
        denom = probs.sum(spatial) + onehot.sum(spatial)
        if self.batch:
            inter, denom = inter.sum(0, keepdim=True), denom.sum(0, keepdim=True)  # (1, K')
            if self.gather_distributed and distributed.is_distributed():
                both = distributed.gather_with_grad(torch.cat([inter, denom], dim=1))  # (world, 2 K')
                inter, denom = both.sum(0, keepdim=True).chunk(2, dim=1)
        dice = 1.0 - (2.0 * inter + _SMOOTH) / (denom + _SMOOTH)
        ce = F.cross_entropy(logits, labels)
        return self.lambda_dice * dice.mean() + self.lambda_ce * ce
