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

Shapes: images ``(B, C, *S)``; masks/label maps ``(B, 1, *S)`` integers (0 = background);
logits ``(B, K, *S)`` with ``K = num_classes`` (background included). MONAI is imported inside
functions (``import monai`` is slow).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.lookup import look_up

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


# ----------------------------------------------------------------------------- decoder on a medcl encoder


class ConvBlock(nn.Module):
    """Two ``3^d`` convolutions, each followed by instance norm and LeakyReLU (U-Net's double conv).

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        self.block = nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class EncoderUNet(nn.Module):
    """A U-Net decoder on a medcl encoder's feature pyramid (Ronneberger et al. 2015 layout).

    The coarsest map of ``encoder.forward_pyramid(x)`` is upsampled (linear interpolation to the
    next map's size, so any stride pattern works — ResNets, BasicUNet, Swin, ViT grids), concatenated
    with that skip connection and refined by a :class:`ConvBlock`, up to the finest map, then
    upsampled to the input size. Pyramids of most encoders start at stride 2 or more, so by default
    a small full-resolution convolution of the input is concatenated and refined by one more
    :class:`ConvBlock` (set ``input_channels=0`` for encoders with a stride-1 level, e.g.
    ``unet_encoder``). A ``1^d`` convolution gives the logits.

    Args:
        encoder: a medcl :class:`~medcl.networks.base.Encoder` (2D or 3D) with ``pyramid_channels``.
        num_classes: output channels ``K`` (background included).
        decoder_channels: width of each decoder stage, coarse to fine (``len(pyramid) - 1`` values);
            default: the skip's own width, at least 16.
        input_channels: width of the full-resolution input branch (0: none; the logits come from the
            finest decoder stage, upsampled if it is coarser than the input).

    Shapes:
        ``(B, C, *S) -> (B, K, *S)``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, decoder_channels: Sequence[int] | None = None,
                 input_channels: int = 16) -> None:
        super().__init__()
        dims = int(getattr(encoder, "spatial_dims", 0))
        if dims not in _CONV:
            raise ConfigError(f"encoder_unet needs a 2D or 3D encoder, got spatial_dims={dims}",
                              where="segment.network", fix="use model.spatial_dims 2 or 3")
        chans = [int(c) for c in encoder.pyramid_channels]
        n_up = len(chans) - 1
        if decoder_channels is None:
            decoder_channels = [max(16, c) for c in reversed(chans[:-1])]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != n_up:
            raise ConfigError(f"decoder_channels has {len(decoder_channels)} widths for {n_up} decoder stages",
                              where="segment.network_options.decoder_channels",
                              fix=f"give {n_up} widths (coarse to fine), or leave it out")
        self.encoder = encoder
        self.spatial_dims = dims
        self.num_classes = int(num_classes)
        self.ups = nn.ModuleList()
        c = chans[-1]
        for skip, out in zip(reversed(chans[:-1]), decoder_channels):
            self.ups.append(ConvBlock(dims, c + skip, out))
            c = out
        self.input_branch = self.final = None
        if input_channels > 0:
            self.input_branch = nn.Sequential(_CONV[dims](encoder.in_channels, input_channels, 3, padding=1),
                                              nn.LeakyReLU(0.01, inplace=True))
            self.final = ConvBlock(dims, c + input_channels, c)
        self.head = _CONV[dims](c, self.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder.forward_pyramid(x)
        y = feats[-1]
        for block, skip in zip(self.ups, reversed(feats[:-1])):
            y = block(torch.cat([_upsample(y, skip.shape[2:]), skip], dim=1))
        y = _upsample(y, x.shape[2:])
        if self.input_branch is not None:
            y = self.final(torch.cat([y, self.input_branch(x)], dim=1))
        return self.head(y)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SegNetwork:
    """One registry entry.

    Attributes:
        build: ``build(spatial_dims, in_channels, num_classes, encoder, options) -> nn.Module``.
        divisor: ``(options) -> int`` every input side must be divisible by (1 = any size).
        uses_encoder: the network *is* built around the medcl encoder (``encoder_unet``).
        description: one line for docs and errors.
    """

    build: Callable[[int, int, int, Any, dict[str, Any]], nn.Module]
    divisor: Callable[[dict[str, Any]], int]
    uses_encoder: bool
    description: str


def _unet(dims: int, cin: int, k: int, encoder: Any, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    o = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, **o}
    return UNet(spatial_dims=dims, in_channels=cin, out_channels=k, **o)


def _unet_div(o: dict[str, Any]) -> int:
    return int(math.prod(o.get("strides", (2, 2, 2, 2))))


def _basic_unet(dims: int, cin: int, k: int, encoder: Any, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    o = dict(o)
    if "features" not in o:
        chans = list(getattr(encoder, "pyramid_channels", []))
        # same widths as a pretrained BasicUNetEncoder so its weights fit the contracting path
        o["features"] = (*chans, chans[0]) if len(chans) == 5 and type(encoder).__name__ == "BasicUNetEncoder" else (
            32, 32, 64, 128, 256, 32)
    return BasicUNet(spatial_dims=dims, in_channels=cin, out_channels=k, **o)


def _swin_unetr(dims: int, cin: int, k: int, encoder: Any, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    o = dict(o)
    if "feature_size" not in o:
        o["feature_size"] = int(getattr(encoder, "feature_size", 24) or 24)
    return SwinUNETR(in_channels=cin, out_channels=k, spatial_dims=dims, **o)


def _encoder_unet(dims: int, cin: int, k: int, encoder: Any, o: dict[str, Any]) -> nn.Module:
    if encoder is None:
        raise ConfigError("encoder_unet needs an encoder", where="segment.network",
                          fix="set model.encoder (an encoder with forward_pyramid)")
    return EncoderUNet(encoder, k, **o)


#: segmentation networks by ``segment.network``
NETWORKS: dict[str, SegNetwork] = {
    "unet": SegNetwork(_unet, _unet_div, False, "MONAI UNet with residual units (random init)"),
    "basic_unet": SegNetwork(_basic_unet, lambda o: 16, False,
                             "MONAI BasicUNet; takes a pretrained unet_encoder's contracting path"),
    "swin_unetr": SegNetwork(_swin_unetr, lambda o: 32, False,
                             "MONAI SwinUNETR; takes a pretrained swin_unetr_encoder"),
    "encoder_unet": SegNetwork(_encoder_unet, lambda o: 1, True,
                               "U-Net decoder on the (pretrained) medcl encoder's forward_pyramid"),
}


def get_network(name: str) -> SegNetwork:
    """Registry lookup with a did-you-mean :class:`ConfigError`."""
    return look_up(name, NETWORKS, what="segmentation network", where="segment.network", n=2,
                   verb="choose one of")


def build_segmentation_network(name: str, *, spatial_dims: int, in_channels: int, num_classes: int,
                               encoder: nn.Module | None = None, **options: Any) -> nn.Module:
    """Build a segmentation network by registry name.

    Args:
        name: key of :data:`NETWORKS`.
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: output channels ``K`` (background included).
        encoder: the medcl encoder (required for ``encoder_unet``; for ``basic_unet`` and
            ``swin_unetr`` it sets the default widths so pretrained weights fit).
        **options: network arguments (MONAI's keyword arguments, or ``decoder_channels`` /
            ``input_channels`` for ``encoder_unet``).

    Returns:
        ``nn.Module`` mapping ``(B, C, *S) -> (B, K, *S)`` logits.

    Raises:
        ConfigError: unknown name, spatial_dims not 2/3, unknown or bad option.
    """
    spec = get_network(name)
    if spatial_dims not in (2, 3):
        raise ConfigError(f"segmentation needs 2D or 3D inputs, got spatial_dims={spatial_dims}",
                          where="model.spatial_dims", fix="use a 2D or 3D modality preset")
    try:
        return spec.build(int(spatial_dims), int(in_channels), int(num_classes), encoder, dict(options))
    except TypeError as exc:
        raise ConfigError(f"segmentation network {name!r} got a bad option ({exc})",
                          where="segment.network_options",
                          fix="remove or rename the option (see the network's MONAI documentation)") from exc


def check_roi_size(name: str, roi_size: Sequence[int], options: dict[str, Any] | None = None) -> None:
    """Reject a sliding-window/patch size the network cannot take (before any training).

    Sides must be multiples of the network's total downsampling ``d`` and, for the MONAI networks,
    at least ``2·d``: their instance norms need more than one voxel at the bottleneck in training.

    Raises:
        ConfigError: a side not divisible by ``d`` or smaller than ``2·d``.
    """
    div = get_network(name).divisor(dict(options or {}))
    least = 2 * div if div > 1 else 1
    bad = [int(s) for s in roi_size if int(s) % div or int(s) < least]
    if bad:
        good = [max(least, -(-int(s) // div) * div) for s in roi_size]
        raise ConfigError(f"roi/patch size {list(roi_size)} does not suit {name}: sides must be multiples of {div} "
                          f"and at least {least}",
                          where="segment.roi_size / transforms.spatial_size",
                          fix=f"use e.g. {good}, or network encoder_unet (any size)")


def transfer_encoder_weights(network: nn.Module, encoder: nn.Module) -> int:
    """Copy every encoder tensor whose name and shape match a tensor of ``network``.

    ``BasicUNetEncoder`` names its modules ``conv_0``, ``down_1`` .. ``down_4`` and
    ``SwinUNETREncoder`` its transformer ``swinViT``, exactly as in MONAI's ``BasicUNet`` and
    ``SwinUNETR``, so their pretrained weights initialise the networks' contracting paths.

    Returns:
        The number of tensors copied (0: the network shares nothing with the encoder).
    """
    target = network.state_dict()
    update = {k: v for k, v in encoder.state_dict().items() if k in target and target[k].shape == v.shape}
    if update:
        network.load_state_dict(update, strict=False)
    return len(update)


# ----------------------------------------------------------------------------- loss and training wrapper


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
        lambda_dice, lambda_ce: weights of the two terms.
    """

    def __init__(self, network: nn.Module, num_classes: int, *, include_background: bool = False,
                 batch_dice: bool = True, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        from medcl.losses.segmentation import DiceCELoss

        self.network = network
        self.num_classes = int(num_classes)
        self.loss = DiceCELoss(include_background=include_background, batch=batch_dice, lambda_dice=lambda_dice,
                               lambda_ce=lambda_ce)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
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

    Returns:
        ``(B, K, *S)`` float logits (same device as ``images``).
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


# ----------------------------------------------------------------------------- aggregation


def summarise_per_class(dice: np.ndarray, hd95: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-class and mean Dice/HD95 from per-case values, as :func:`medcl.metrics.segmentation_metrics`.

    Args:
        dice, hd95: ``(N, C')`` per case and (foreground) class; NaN where undefined.
        names: ``C'`` class names.

    Returns:
        ``{"dice", "hd95", "dice/<name>", "hd95/<name>", "n_cases/<name>"}``: a class's value averages
        the cases where it is defined; the summary averages the classes.
    """
    dice = np.asarray(dice, np.float64).reshape(-1, len(names))
    hd95 = np.asarray(hd95, np.float64).reshape(-1, len(names))
    out: dict[str, Any] = {}
    per_d, per_h = [], []
    for j, name in enumerate(names):
        d, h = dice[:, j], hd95[:, j]
        per_d.append(float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"))
        per_h.append(float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"))
        out[f"dice/{name}"], out[f"hd95/{name}"] = per_d[-1], per_h[-1]
        out[f"n_cases/{name}"] = int(np.isfinite(d).sum())
    out["dice"] = float(np.nanmean(per_d)) if np.isfinite(per_d).any() else float("nan")
    out["hd95"] = float(np.nanmean(per_h)) if np.isfinite(per_h).any() else float("nan")
    return out


def case_mean(values: np.ndarray) -> np.ndarray:
    """``(N, C')`` per-class values → ``(N,)`` mean over the classes defined in each case (NaN if none)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    n = ok.sum(axis=1)
    s = np.where(ok, v, 0.0).sum(axis=1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def mean_dice_ci(case_dice: np.ndarray, patients: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, float | int]:
    """Mean per-case Dice with a patient-level percentile bootstrap CI (cluster bootstrap).

    Cases whose ground truth has no foreground (Dice undefined, NaN) are left out; the remaining
    cases are resampled by patient with :class:`medcl.metrics.bootstrap.PatientResampler` (the
    resampler behind :func:`~medcl.metrics.bootstrap_ci`), so several scans of one patient move
    together. Unlike ``bootstrap_ci`` no resample is skipped: a resample of one patient is a valid
    draw for a mean (``bootstrap_ci`` drops single-class resamples, right for AUROC only).

    Args:
        case_dice: ``(N,)`` per-case Dice (NaN = undefined).
        patients: ``(N,)`` patient index per case.

    Returns:
        ``{"value", "ci_low", "ci_high", "n_cases", "n_patients", "n_boot"}`` (NaN bounds with fewer
        than 2 patients or ``n_boot == 0``).
    """
    from medcl.metrics.bootstrap import PatientResampler

    d = np.asarray(case_dice, np.float64)
    g = np.asarray(patients)
    if d.shape != g.shape:
        raise DataError(f"{d.shape[0]} Dice values for {g.shape[0]} patients", where="mean_dice_ci",
                        fix="pass one patient per case")
    keep = np.isfinite(d)
    d, g = d[keep], g[keep]
    n_pat = int(np.unique(g).size)
    out: dict[str, float | int] = {"value": float(d.mean()) if d.size else float("nan"),
                                   "ci_low": float("nan"), "ci_high": float("nan"),
                                   "n_cases": int(d.size), "n_patients": n_pat, "n_boot": 0}
    if n_pat >= 2 and n_boot > 0:
        resampler = PatientResampler(g, d.size, seed)
        means = np.fromiter((d[resampler.draw()].mean() for _ in range(int(n_boot))), np.float64, int(n_boot))
        lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out.update(ci_low=float(lo), ci_high=float(hi), n_boot=int(n_boot))
    return out


def metric_name(name: str) -> str:
    """A class name made safe for MLflow metric keys (letters, digits, ``_ - . /`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(name)) or "class"


# ----------------------------------------------------------------------------- overlays


def pick_slice(mask: np.ndarray) -> int:
    """Index along the last axis of a 3D mask ``(X, Y, Z)`` to show: most foreground, else the middle."""
    m = np.asarray(mask)
    area = (m > 0).reshape(-1, m.shape[-1]).sum(axis=0)
    return int(area.argmax()) if area.max() > 0 else m.shape[-1] // 2


def overlay_figure(image: np.ndarray, truth: np.ndarray, preds: dict[str, np.ndarray], title: str = "",
                   dice: dict[str, float] | None = None, origin: str = "upper"):
    """Image slice with the ground-truth (green) and predicted (red) contours, one panel per model.

    Args:
        image: ``(H, W)`` slice of the first image channel, in display orientation (rows, columns).
        truth: ``(H, W)`` label slice.
        preds: model name → ``(H, W)`` predicted label slice.
        title: figure title (no patient identifiers).
        dice: model name → Dice of the case (shown in the panel titles).
        origin: ``"upper"`` (2D images: row 0 on top) or ``"lower"`` (RAS volume slices shown as
            ``(Y, X)``: anterior up).

    Returns:
        A matplotlib ``Figure`` (Agg backend; the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * max(1, len(preds)), 3.4))
    axes = fig.subplots(1, max(1, len(preds)), squeeze=False)[0]
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    for ax, (name, pred) in zip(axes, preds.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin=origin)
        for lab in np.unique(np.asarray(truth)):
            if lab > 0:
                ax.contour((np.asarray(truth) == lab).astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        for lab in np.unique(np.asarray(pred)):
            if lab > 0:
                ax.contour((np.asarray(pred) == lab).astype(float), levels=[0.5], colors="red", linewidths=1.0,
                           linestyles="--")
        d = (dice or {}).get(name)
        ax.set_title(f"{name}" + (f"  Dice {d:.2f}" if d is not None and np.isfinite(d) else ""), fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{title}  (green: truth, red dashed: prediction)", fontsize=9)
    fig.tight_layout()
    return fig


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
