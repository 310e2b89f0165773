"""1D encoders for ECG (input ``(B, leads, T)``).

* :class:`XResNet1d` — the xresnet1d family (fastai's XResNet with 1D convolutions, kernel 5),
  the strongest ECG backbone in Strodthoff et al. 2021, "Deep learning for ECG analysis:
  benchmarks and insights from PTB-XL" (IEEE JBHI).
* :func:`build_resnet1d` — MONAI's ResNet with ``spatial_dims=1`` and a wide strided stem.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcl.errors import ConfigError
from medcl.networks.base import Encoder


def _conv_bn(ni: int, nf: int, ks: int, stride: int = 1, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    """Conv1d → BatchNorm1d (γ = 0 for the last conv of a block, fastai's ``zero_bn``) → ReLU."""
    bn = nn.BatchNorm1d(nf)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers: list[nn.Module] = [nn.Conv1d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False), bn]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XResBlock1d(nn.Module):
    """XResNet block (He et al. 2019 "Bag of tricks" ResNet-D shortcut: avg-pool then 1×1 conv).

    Args:
        expansion: 1 (basic block) or 4 (bottleneck).
        ni: input width before expansion (the block takes ``ni · expansion`` channels).
        nh: hidden width; the output is ``nh · expansion``.
        stride: 1 or 2.
        ks: kernel size.
    """

    def __init__(self, expansion: int, ni: int, nh: int, stride: int = 1, ks: int = 5) -> None:
        """Build the residual convolutions (last BN zero-initialised) and the ResNet-D shortcut."""
        super().__init__()
        nf, ni = nh * expansion, ni * expansion
        if expansion == 1:
            self.convs = nn.Sequential(
                _conv_bn(ni, nh, ks, stride), _conv_bn(nh, nf, ks, act=False, zero_bn=True)
            )
        else:
            self.convs = nn.Sequential(
                _conv_bn(ni, nh, 1),
                _conv_bn(nh, nh, ks, stride),
                _conv_bn(nh, nf, 1, act=False, zero_bn=True),
            )
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(nn.AvgPool1d(2, stride=2, ceil_mode=True))
        if ni != nf:
            idpath.append(_conv_bn(ni, nf, 1, act=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)
        self.out_channels = nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ni · expansion, T) -> (B, nh · expansion, T / stride)``."""
        return self.act(self.convs(x) + self.idpath(x))


class XResNet1d(Encoder):
    """xresnet1d (Strodthoff et al. 2021) without head.

    Args:
        in_channels: number of leads.
        spatial_dims: must be 1.
        layers: blocks per stage; (3, 4, 6, 3) with expansion 4 is xresnet1d50,
            (3, 4, 23, 3) xresnet1d101, (2, 2, 2, 2) with expansion 1 xresnet1d18.
        expansion: 1 or 4.
        kernel_size: kernel of all non-1×1 convolutions (5 in the paper).
        widths: stage widths before expansion.

    Shapes:
        ``(B, leads, T) -> (B, widths[-1] · expansion)``; ``forward_dense`` gives
        ``(B, feature_dim, ≈T/32)``; ``forward_pyramid`` the four stage outputs.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        spatial_dims: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        expansion: int = 4,
        kernel_size: int = 5,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        """Check the shape options and build the three-conv stem and the residual stages (Kaiming init)."""
        super().__init__()
        if spatial_dims != 1:
            raise ConfigError(
                f"xresnet1d is 1D but spatial_dims={spatial_dims}",
                where="model.encoder",
                fix="use xresnet1d for signals only; pick resnet18 for images or volumes",
            )
        if expansion not in (1, 4) or len(layers) != len(widths):
            raise ConfigError(
                f"bad xresnet1d shape (layers={list(layers)}, widths={list(widths)}, expansion={expansion})",
                where="model.options",
                fix="use expansion 1 or 4 and as many widths as layers",
            )
        ks = kernel_size
        self.stem = nn.Sequential(
            _conv_bn(in_channels, 32, ks, stride=2),
            _conv_bn(32, 32, ks),
            _conv_bn(32, 64, ks),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        sizes = [64 // expansion, *widths]
        stages = []
        for i, n in enumerate(layers):
            blocks = [
                XResBlock1d(expansion, sizes[i] if j == 0 else sizes[i + 1], sizes[i + 1],
                            stride=(1 if i == 0 else 2) if j == 0 else 1, ks=ks)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
        self.in_channels = in_channels
        self.spatial_dims = 1
        self.pyramid_channels = [w * expansion for w in widths]
        self.feature_dim = self.dense_dim = self.pyramid_channels[-1]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``(B, widths[i] · expansion, ≈T/2^(i+2))``, fine to coarse."""
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage output ``(B, feature_dim, ≈T/32)``."""
        return self.forward_pyramid(x)[-1]


def build_xresnet1d(*, in_channels: int, spatial_dims: int = 1, **kwargs) -> XResNet1d:
    """Build an :class:`XResNet1d` (registry factory)."""
    return XResNet1d(in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)


def build_resnet1d(*, in_channels: int, spatial_dims: int = 1, depth: str = "resnet18", **kwargs) -> Encoder:
    """MONAI ResNet for signals: kernel-15 stride-2 stem (≈30 ms at 500 Hz) then the usual stages."""
    # lazy: monai; encoders1d (and `import medcl.networks`) need torch only
    from medcl.networks.encoders3d import MonaiResNetEncoder

    kwargs.setdefault("conv1_t_size", 15)
    kwargs.setdefault("conv1_t_stride", 2)
    return MonaiResNetEncoder(depth, in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)
