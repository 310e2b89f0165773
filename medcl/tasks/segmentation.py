"""Downstream segmentation: networks, Dice + cross-entropy training, sliding-window inference.

Pure pieces the ``segment`` stage (:mod:`medcl.stages.segment`) puts together:

* :data:`NETWORKS` / :func:`build_segmentation_network` — 2D/3D encoder–decoders:
  MONAI ``UNet`` (Ronneberger et al. 2015 with residual units, Kerfoot et al. 2018),
  MONAI ``BasicUNet`` (Falk et al. 2019), MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022), and
  :class:`EncoderUNet`, a U-Net decoder on any medcl encoder's ``forward_pyramid`` — the way a
  contrastively pretrained encoder feeds segmentation.
* :func:`transfer_encoder_weights` — copy a pretrained encoder into a MONAI network whose
  contracting path has the same module names (``BasicUNet`` ← ``unet_encoder``,
  ``SwinUNETR`` ← ``swin_unetr_encoder``).
* :class:`SegmentationWrapper` — ``forward(batch) -> {"loss", "logits"}`` with MONAI's
  ``DiceCELoss`` (Dice, Milletari et al. 2016, plus cross-entropy), for :func:`medcl.engine.loop.fit`.
* :func:`sliding_window_predict` — MONAI's ``sliding_window_inference`` with Gaussian blending.
* :func:`summarise_per_class`, :func:`mean_dice_ci` — per-class aggregates of per-case Dice/HD95
  (from :mod:`medcl.metrics.segmentation`) and a patient-level bootstrap CI of mean Dice.
* :func:`pick_slice`, :func:`overlay_figure` — a slice with image, ground truth and prediction contours.

The networks live in :mod:`medcl.tasks.segmentation_networks` and the summaries and overlays in
:mod:`medcl.tasks.segmentation_summary`; both are re-exported here, so this module stays the one import.

Shapes: images ``(B, C, *S)``; masks/label maps ``(B, 1, *S)`` integers (0 = background);
logits ``(B, K, *S)`` with ``K = num_classes`` (background included). MONAI is imported inside
functions (``import monai`` is slow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.losses.segmentation import DiceCELoss
from medcl.tasks.segmentation_networks import (
    NETWORKS,
    ConvBlock,
    EncoderUNet,
    SegNetwork,
    build_segmentation_network,
    check_roi_size,
    get_network,
    transfer_encoder_weights,
)
from medcl.tasks.segmentation_summary import (
    case_mean,
    mean_dice_ci,
    metric_name,
    overlay_figure,
    pick_slice,
    summarise_per_class,
)


def mask_to_labels(mask: torch.Tensor, num_classes: int, where: str = "mask") -> torch.Tensor:
    """A (float) mask batch ``(B, 1, *S)`` as int64 labels ``(B, 1, *S)``, checked to be in ``[0, K)``.

    Raises:
        DataError: non-integer values or labels outside ``[0, num_classes)``.
    """
    m = torch.as_tensor(mask)
    if m.dtype.is_floating_point:
        r = torch.round(m)
        if not torch.allclose(m, r, atol=1e-3):
            raise DataError("the mask holds non-integer values", where=where,
                            fix="resample masks with nearest-neighbour interpolation (list them under mask_keys)")
        m = r
    m = m.long()
    if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_classes):
        raise DataError(f"mask labels span [{int(m.min())}, {int(m.max())}] but num_classes={num_classes}",
                        where=where, fix="set segment.num_classes to the number of mask labels incl. background 0")
    return m


class SegmentationWrapper(nn.Module):
    """Makes a segmentation network trainable by :func:`medcl.engine.loop.fit`.

    ``forward(batch)`` reads ``batch["image"]`` ``(B, C, *S)`` and ``batch["mask"]`` ``(B, 1, *S)``
    and returns ``{"loss": scalar, "logits": (B, K, *S)}``; the loss is :class:`medcl.losses.segmentation.DiceCELoss`
    (soft Dice, Milletari et al. 2016, plus cross-entropy on softmax outputs; MONAI's ``DiceCELoss`` on one
    process) whose batch Dice is summed over every rank under DDP.

    The defaults follow nnU-Net (Isensee et al. 2021) for small structures: the Dice term covers the
    foreground classes only and is computed over the whole batch (``batch=True``), so lesion-free
    cases and the huge background do not drown a lesion of a few voxels (with background Dice and
    per-case Dice the network learns to predict background everywhere).

    Args:
        network: ``(B, C, *S) -> (B, K, *S)`` logits.
        num_classes: ``K`` (background included).
        include_background: include class 0 in the Dice term.
        batch_dice: one Dice over the batch instead of a mean of per-case Dice.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
    """

    def __init__(self, network: nn.Module, num_classes: int, *, include_background: bool = False,
                 batch_dice: bool = True, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        """Wrap ``network`` and build its Dice + cross-entropy loss."""
        super().__init__()
        self.network = network
        self.num_classes = int(num_classes)
        self.loss = DiceCELoss(include_background=include_background, batch=batch_dice, lambda_dice=lambda_dice,
                               lambda_ce=lambda_ce)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run the network on ``batch["image"]`` and score it against ``batch["mask"]``.

        Args:
            batch: ``{"image": (B, C, *S), "mask": (B, 1, *S), ...}``.

        Returns:
            ``{"loss": scalar, "logits": (B, K, *S)}``.

        Raises:
            DataError: no image or mask in the batch, a mask with non-integer or out-of-range labels, or a
                mask whose size differs from the output's.
        """
        for key in ("image", "mask"):
            if key not in batch:
                raise DataError(f"batch has no {key!r} entry (keys: {sorted(batch)})", where="SegmentationWrapper",
                                fix="use a loader of items with masks (transforms with mask_keys=['mask'])")
        logits = self.network(batch["image"])
        target = mask_to_labels(batch["mask"], self.num_classes)
        if target.shape[2:] != logits.shape[2:]:
            raise DataError(f"mask {tuple(target.shape)} and output {tuple(logits.shape)} differ in size",
                            where="SegmentationWrapper", fix="crop/pad image and mask with the same transforms")
        return {"loss": self.loss(logits, target), "logits": logits}


# ----------------------------------------------------------------------------- inference


def sliding_window_predict(network: nn.Module, images: torch.Tensor, roi_size: Sequence[int], *,
                           sw_batch_size: int = 4, overlap: float = 0.25, mode: str = "gaussian") -> torch.Tensor:
    """Logits of a whole image/volume by MONAI's ``sliding_window_inference``.

    Windows of ``roi_size`` (clipped to the input) overlap by ``overlap`` and are blended with a
    Gaussian weight (``mode="gaussian"``, as nnU-Net does); inputs smaller than a window are padded
    and the padding cropped away again.

    Args:
        network: ``(b, C, *roi) -> (b, K, *roi)``.
        images: ``(B, C, *S)``.
        roi_size: window size, one entry per spatial axis.
        sw_batch_size: windows run through the network at once.
        overlap: fraction of a window shared with its neighbour along each axis.
        mode: blending of overlapping windows, ``"gaussian"`` or ``"constant"`` (plain average).

    Returns:
        ``(B, K, *S)`` float logits (same device as ``images``).

    Raises:
        ConfigError: ``roi_size`` does not have one entry per spatial axis of ``images``.
    """
    from monai.inferers import sliding_window_inference

    if len(roi_size) != images.ndim - 2:
        raise ConfigError(f"roi_size {list(roi_size)} has {len(roi_size)} axes, the images {images.ndim - 2}",
                          where="segment.roi_size", fix="give one size per spatial axis")
    with torch.no_grad():
        out = sliding_window_inference(images, [int(s) for s in roi_size], int(sw_batch_size), network,
                                       overlap=float(overlap), mode=mode)
    return torch.as_tensor(out).float()


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, *S)`` logits → ``(B, 1, *S)`` int64 label map (argmax over classes)."""
    return logits.argmax(dim=1, keepdim=True)


__all__ = [
    "NETWORKS",
    "ConvBlock",
    "EncoderUNet",
    "SegNetwork",
    "SegmentationWrapper",
    "build_segmentation_network",
    "case_mean",
    "check_roi_size",
    "get_network",
    "logits_to_labels",
    "mask_to_labels",
    "mean_dice_ci",
    "metric_name",
    "overlay_figure",
    "pick_slice",
    "sliding_window_predict",
    "summarise_per_class",
    "transfer_encoder_weights",
]
