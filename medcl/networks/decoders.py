"""Decoders on a medcl encoder's feature pyramid: the U-Net decoder of ``encoder_unet`` segmentation.

:class:`EncoderUNet` lives with the networks (not the segmentation task) because two floors use it: the
``segment`` stage trains it, and the ``dense`` pretraining method pretrains its decoder with the encoder
(DeCon-style) and hands both on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class ConvBlock(nn.Module):
    """Two ``3^d`` convolutions, each followed by instance norm and LeakyReLU (U-Net's double conv).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of both convolutions.

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        """Build the two convolution–norm–activation stages (bias-free convolutions before affine norms)."""
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        self.block = nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S) -> (B, out_channels, *S)``."""
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

    Raises:
        ConfigError: an encoder that is not 2D or 3D, or a ``decoder_channels`` of the wrong length.

    Shapes:
        ``(B, C, *S) -> (B, K, *S)``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, decoder_channels: Sequence[int] | None = None,
                 input_channels: int = 16) -> None:
        """Check the encoder and widths and build the decoder stages, the input branch and the head."""
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
        """Encode ``x`` ``(B, C, *S)`` into its pyramid and decode it to logits ``(B, K, *S)``."""
        feats = self.encoder.forward_pyramid(x)
        y = feats[-1]
        for block, skip in zip(self.ups, reversed(feats[:-1])):
            y = block(torch.cat([_upsample(y, skip.shape[2:]), skip], dim=1))
        y = _upsample(y, x.shape[2:])
        if self.input_branch is not None:
            y = self.final(torch.cat([y, self.input_branch(x)], dim=1))
        return self.head(y)


