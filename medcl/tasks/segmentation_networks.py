"""Segmentation networks: the registry behind ``segment.network`` and a U-Net decoder on any medcl encoder.

* :data:`NETWORKS` / :func:`build_segmentation_network` — MONAI ``UNet`` (Ronneberger et al. 2015 with
  residual units, Kerfoot et al. 2018), MONAI ``BasicUNet`` (Falk et al. 2019), MONAI ``SwinUNETR``
  (Hatamizadeh et al. 2022) and :class:`EncoderUNet`.
* :func:`check_roi_size` — reject a patch size a network cannot take, before training.
* :func:`transfer_encoder_weights` — copy a pretrained encoder into a MONAI network's contracting path.

Shapes as in :mod:`medcl.tasks.segmentation`. MONAI is imported inside functions (``import monai`` is slow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from medcl.errors import ConfigError
from medcl.lookup import look_up
from medcl.networks.decoders import ConvBlock, EncoderUNet

__all__ = ["NETWORKS", "ConvBlock", "EncoderUNet", "SegNetwork", "build_segmentation_network", "check_roi_size",
           "get_network", "transfer_encoder_weights"]


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
    is_unet_encoder = type(encoder).__name__ == "BasicUNetEncoder"
    if "features" not in o:
        chans = list(getattr(encoder, "pyramid_channels", []))
        # same widths as a pretrained BasicUNetEncoder so its weights fit the contracting path
        o["features"] = (*chans, chans[0]) if len(chans) == 5 and is_unet_encoder else (32, 32, 64, 128, 256, 32)
    # the encoder's norm layers (and their running statistics) go in unchanged; an encoder pickled before it
    # recorded its norm had BasicUNet's own default (instance), which BasicUNet then keeps
    if "norm" not in o and is_unet_encoder and getattr(encoder, "norm", None) is not None:
        o["norm"] = encoder.norm
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
