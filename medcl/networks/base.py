r"""The :class:`Encoder` interface every medcl backbone implements.

An encoder maps an input batch ``(B, C, *S)`` (``S`` = 1, 2 or 3 spatial axes) to

* ``forward(x) -> (B, feature_dim)``: pooled features (what projection heads, linear probes
  and kNN use);
* ``forward_dense(x) -> (B, dense_dim, *S')``: the last feature map (dense contrast,
  Grad-CAM, segmentation decoders);
* ``forward_pyramid(x) -> [(B, C_i, *S_i), ...]``: feature maps from fine to coarse for a
  U-Net-style decoder; ``pyramid_channels`` gives their ``C_i``.

Encoders are pure ``nn.Module``\ s: no device moves, no autocast, no channels-last handling
(the engine decides those).
"""

from __future__ import annotations

import torch
from torch import nn


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Average over all spatial axes.

    Args:
        x: ``(B, C, *S)`` feature map.

    Returns:
        ``(B, C)``.
    """
    return x.flatten(2).mean(dim=2)


class Encoder(nn.Module):
    """Base class of medcl encoders.

    Subclasses set ``feature_dim``, ``dense_dim``, ``pyramid_channels``, ``spatial_dims`` and
    ``in_channels`` in ``__init__`` and implement :meth:`forward_dense`; the default
    :meth:`forward` average-pools it and the default :meth:`forward_pyramid` returns it alone.
    """

    feature_dim: int
    dense_dim: int
    pyramid_channels: list[int]
    spatial_dims: int
    in_channels: int
    #: Name the registry built it under (set by ``build_encoder``).
    name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` of ``x`` ``(B, C, *S)``."""
        return global_avg_pool(self.forward_dense(x))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Last feature map ``(B, dense_dim, *S')`` of ``x`` ``(B, C, *S)``."""
        raise NotImplementedError

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from fine to coarse; the last one is :meth:`forward_dense`'s."""
        return [self.forward_dense(x)]

    def weights_module(self) -> nn.Module:
        """The module whose ``state_dict`` keys match the upstream library's weight files.

        ``load_pretrained`` loads a timm/torchvision/MONAI state dict into this module
        (e.g. the wrapped timm model), and a medcl checkpoint of the whole encoder into ``self``.
        """
        return self
