"""A tiny CNN for tests and smoke runs (1D, 2D or 3D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcl.networks.base import Encoder

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class TinyCNN(Encoder):
    """Stride-2 conv → BN → ReLU stages; a few thousand parameters.

    Args:
        in_channels: input channels ``C``.
        spatial_dims: 1, 2 or 3.
        widths: channels of each stage (each halves the resolution).

    Shapes:
        ``(B, C, *S) -> (B, widths[-1])``; ``forward_dense``: ``(B, widths[-1], *S/2^n)``.
    """

    def __init__(self, *, in_channels: int, spatial_dims: int = 2, widths: Sequence[int] = (16, 32, 64)) -> None:
        """Build one stride-2 conv–BN–ReLU stage per width."""
        super().__init__()
        conv, bn = _CONV[spatial_dims], _BN[spatial_dims]
        stages = []
        c = in_channels
        for w in widths:
            stages.append(nn.Sequential(conv(c, w, 3, stride=2, padding=1, bias=False), bn(w), nn.ReLU(inplace=True)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.pyramid_channels = list(widths)
        self.feature_dim = self.dense_dim = int(widths[-1])

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage output, ``(B, widths[i], *S/2^(i+1))``, fine to coarse."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage output ``(B, widths[-1], *S/2^n)``."""
        return self.forward_pyramid(x)[-1]


def build_tiny_cnn(*, in_channels: int, spatial_dims: int = 2, **kwargs) -> TinyCNN:
    """Build a :class:`TinyCNN` (registry factory)."""
    return TinyCNN(in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)
