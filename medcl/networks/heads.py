"""Projection and prediction heads for contrastive learning.

* :class:`ProjectionHead` — the MLP ``g(·)`` of SimCLR (Chen et al. 2020) and MoCo v3
  (Chen, Xie & He 2021): Linear → BN → ReLU repeated, optional BN without affine at the end.
* :class:`PredictorHead` — the online-branch predictor ``q(·)`` of BYOL (Grill et al. 2020)
  and MoCo v3.
* :class:`DenseProjectionHead` — the same MLP as 1×1 convolutions over a feature map, for
  dense contrast (DenseCL, Wang et al. 2021).
"""

from __future__ import annotations

import torch
from torch import nn

from medcl.errors import ConfigError

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int,
    bn: bool,
    last_bn: bool,
    linear: type[nn.Module],
    norm: type[nn.Module],
    where: str,
) -> nn.Sequential:
    if num_layers < 1:
        raise ConfigError(f"num_layers={num_layers} < 1", where=where, fix="use 1, 2 or 3 layers")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(num_layers - 1):
        layers.append(_layer(linear, d, hidden_dim, bias=not bn))
        if bn:
            layers.append(norm(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        d = hidden_dim
    layers.append(_layer(linear, d, out_dim, bias=not last_bn))
    if last_bn:
        # MoCo v3 / SimCLR v2: BN without learnable affine on the output.
        layers.append(norm(out_dim, affine=False))
    return nn.Sequential(*layers)


def _layer(linear: type[nn.Module], i: int, o: int, bias: bool) -> nn.Module:
    if linear is nn.Linear:
        return nn.Linear(i, o, bias=bias)
    return linear(i, o, kernel_size=1, bias=bias)


class ProjectionHead(nn.Module):
    """MLP projection head with batch norm.

    Args:
        in_dim: encoder ``feature_dim``.
        hidden_dim: hidden width (2048 in SimCLR, 4096 in MoCo v3).
        out_dim: embedding size (128 in SimCLR, 256 in MoCo v3).
        num_layers: number of linear layers (2 SimCLR, 3 MoCo v3 / SimCLR v2).
        bn: batch norm after each hidden linear layer.
        last_bn: batch norm (no affine) after the last layer (MoCo v3 projector).

    Shapes:
        ``(N, in_dim) -> (N, out_dim)`` (not normalised; losses normalise).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
    ) -> None:
        """Build the MLP (hidden layers with optional BN and ReLU; optional BN after the last)."""
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = _mlp(in_dim, hidden_dim, out_dim, num_layers, bn, last_bn, nn.Linear, nn.BatchNorm1d,
                        "pretrain.method_options")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim) -> (N, out_dim)`` embeddings, not normalised."""
        return self.net(x)


class PredictorHead(ProjectionHead):
    """Two-layer predictor of BYOL / MoCo v3 (``in_dim -> hidden_dim -> out_dim``).

    Args:
        in_dim: projector output size.
        hidden_dim: hidden width (4096 in MoCo v3 and BYOL).
        out_dim: usually ``in_dim``.
        num_layers: 2 in both papers.
        last_bn: MoCo v3 uses no BN on the predictor output.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 4096, out_dim: int | None = None, num_layers: int = 2,
        last_bn: bool = False,
    ) -> None:
        """A :class:`ProjectionHead` with BN on the hidden layer; ``out_dim`` defaults to ``in_dim``."""
        super().__init__(in_dim, hidden_dim, out_dim or in_dim, num_layers=num_layers, bn=True, last_bn=last_bn)


class DenseProjectionHead(nn.Module):
    """Projection MLP applied at every position of a feature map (1×1 convolutions).

    Args:
        in_dim: channels of ``encoder.forward_dense``.
        hidden_dim: hidden channels.
        out_dim: embedding channels.
        spatial_dims: 1, 2 or 3.
        num_layers: number of 1×1 convolutions.
        bn: batch norm after hidden convolutions (DenseCL uses none: ``bn=False``).

    Shapes:
        ``(B, in_dim, *S) -> (B, out_dim, *S)``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        spatial_dims: int = 2,
        num_layers: int = 2,
        bn: bool = False,
    ) -> None:
        """Check ``spatial_dims`` and build the 1×1-convolution MLP."""
        super().__init__()
        if spatial_dims not in _CONV:
            raise ConfigError(f"spatial_dims={spatial_dims}", where="pretrain.method_options", fix="use 1, 2 or 3")
        self.in_dim, self.out_dim, self.spatial_dims = in_dim, out_dim, spatial_dims
        self.net = _mlp(in_dim, hidden_dim, out_dim, num_layers, bn, False, _CONV[spatial_dims],
                        _BN[spatial_dims], "pretrain.method_options")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, *S) -> (B, out_dim, *S)`` per-position embeddings."""
        return self.net(x)
