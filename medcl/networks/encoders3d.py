"""Volumetric (and MONAI-built 1D/2D) encoders from MONAI.

* :class:`MonaiResNetEncoder` — MONAI's ResNet (Hara et al. 2018; Med3D weights from Chen et
  al. 2019 load through ``pretrained_path``) without its classifier, for 1D/2D/3D input.
* :class:`SwinUNETREncoder` — the Swin transformer of SwinUNETR (Hatamizadeh et al. 2022),
  module named ``swinViT`` exactly as inside ``monai.networks.nets.SwinUNETR`` so a
  segmentation net can take its weights (``SwinUNETR.load_state_dict(enc.state_dict(),
  strict=False)``).
* :class:`BasicUNetEncoder` — the contracting path of MONAI's ``BasicUNet`` (modules
  ``conv_0``, ``down_1`` .. ``down_4`` named as in ``BasicUNet``), for 2D or 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import resnet as monai_resnet
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.networks.nets.swin_unetr import MERGING_MODE, SwinTransformer
from torch import nn

from medcl.errors import ConfigError
from medcl.networks.base import Encoder

_MONAI_RESNETS = {
    "resnet10": monai_resnet.resnet10,
    "resnet18": monai_resnet.resnet18,
    "resnet34": monai_resnet.resnet34,
    "resnet50": monai_resnet.resnet50,
}


class MonaiResNetEncoder(Encoder):
    """MONAI ResNet without classifier (``feed_forward=False``).

    Args:
        depth: one of ``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``.
        in_channels: input channels ``C``.
        spatial_dims: 1 (signals), 2 or 3 (volumes).
        conv1_t_size: stem kernel size (7 for images/volumes; 15 is a good choice for ECG).
        conv1_t_stride: stem stride (MONAI's default 1 keeps small volumes resolvable).
        widen_factor: width multiplier.
        bias_downsample: bias in the shortcut convolutions (False matches Med3D weights).
        no_max_pool: drop the stem max-pool.

    Shapes:
        ``(B, C, *S) -> (B, feature_dim)``, ``feature_dim`` = 512 (×4 for resnet50) × widen;
        ``forward_dense``: layer4 output at stride ``8 · conv1_t_stride · (2 unless no_max_pool)``.
    """

    def __init__(
        self,
        depth: str = "resnet18",
        *,
        in_channels: int,
        spatial_dims: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        widen_factor: float = 1.0,
        bias_downsample: bool = False,
        no_max_pool: bool = False,
    ) -> None:
        """Check the depth and build MONAI's ResNet without its classifier."""
        super().__init__()
        if depth not in _MONAI_RESNETS:
            raise ConfigError(
                f"unknown MONAI ResNet depth {depth!r}",
                where="model.encoder",
                fix=f"use one of {sorted(_MONAI_RESNETS)}",
            )
        self.net = _MONAI_RESNETS[depth](
            pretrained=False,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            widen_factor=widen_factor,
            feed_forward=False,
            bias_downsample=bias_downsample,
            no_max_pool=no_max_pool,
        )
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        layers = [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]
        self.pyramid_channels = [_out_channels(layer) for layer in layers]
        self.feature_dim = self.dense_dim = self.pyramid_channels[-1]
        #: MONAI's ``fc`` exists only with feed_forward=True; Med3D files have none, others may.
        self.ignored_weight_prefixes = ("fc.",)

    def weights_module(self) -> nn.Module:
        """The wrapped MONAI ResNet, whose keys match MONAI/Med3D weight files."""
        return self.net

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``layer1`` .. ``layer4`` after the stem, fine to coarse."""
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer4`` output ``(B, feature_dim, *S')``."""
        return self.forward_pyramid(x)[-1]


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    for name in ("conv3", "conv2"):
        conv = getattr(last, name, None)
        if conv is not None:
            return int(conv.out_channels)
    raise ConfigError("cannot infer ResNet block width", where="model.encoder", fix="report this as a medcl bug")


class SwinUNETREncoder(Encoder):
    """SwinUNETR's hierarchical Swin transformer (Hatamizadeh et al. 2022, "Swin UNETR").

    Args:
        in_channels: input channels ``C``.
        spatial_dims: 2 or 3.
        feature_size: embedding width of the first stage (divisible by 12); the last stage
            has ``16 · feature_size`` channels (= ``feature_dim``).
        depths, num_heads, window_size, drop_path_rate, use_checkpoint, use_v2: as in
            ``monai.networks.nets.SwinUNETR``.

    Shapes:
        Input sides must be divisible by 32. ``forward_pyramid`` returns the five hidden states
        of ``swinViT`` (strides 2, 4, 8, 16, 32; channels ``feature_size · (1, 2, 4, 8, 16)``),
        the same ones SwinUNETR's decoder consumes; ``forward_dense`` the last one.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        spatial_dims: int = 3,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_v2: bool = False,
    ) -> None:
        """Check ``feature_size`` and build the Swin transformer under SwinUNETR's module name ``swinViT``."""
        super().__init__()
        if feature_size % 12 != 0:
            raise ConfigError(
                f"feature_size={feature_size} is not divisible by 12",
                where="model.options.feature_size",
                fix="use 12, 24, 36 or 48 (SwinUNETR's attention heads need it)",
            )
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * spatial_dims,
            patch_size=(2,) * spatial_dims,
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
            downsample=MERGING_MODE["merging"],
            use_v2=use_v2,
        )
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.feature_size = feature_size
        self.pyramid_channels = [feature_size * 2**i for i in range(5)]
        self.feature_dim = self.dense_dim = self.pyramid_channels[-1]

    def _check(self, x: torch.Tensor) -> None:
        bad = [s for s in x.shape[2:] if s % 32]
        if bad:
            raise ConfigError(
                f"input spatial shape {tuple(x.shape[2:])} is not divisible by 32",
                where="swin_unetr_encoder",
                fix="crop or pad inputs to multiples of 32 (e.g. transforms roi_size 96×96×96)",
            )

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five normalised hidden states of ``swinViT``, strides 2 .. 32.

        Raises:
            ConfigError: a spatial side not divisible by 32.
        """
        self._check(x)
        return list(self.swinViT(x, normalize=True))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 hidden state ``(B, 16 · feature_size, *S/32)``."""
        return self.forward_pyramid(x)[-1]


class BasicUNetEncoder(Encoder):
    """Contracting path of MONAI's ``BasicUNet`` (Falk et al. 2019 U-Net layout).

    Differs from ``BasicUNet`` in one default: **batch norm, not instance norm**. The pooled
    features (:meth:`forward`, what SimCLR projects and the classifiers read) are the global average of
    ``down_4``'s output, which ends in ``norm → LeakyReLU``. Instance norm scales every channel of
    every sample to zero mean and unit variance over its own voxels, so that average no longer says
    *how much* of a channel's pattern a volume holds, only how its values are spread; it is also
    exactly invariant to a gain ``a·x`` (``a > 0``) of the input. On the CT demo (a liver lesion
    present or not, 2×2×1 voxels left at stride 16) this left the pooled features nearly constant
    (effective rank ~1) and a from-scratch fine-tune at chance, below a linear model on raw voxels.
    Batch norm normalises with statistics over the batch (running ones in eval), so each volume's
    level survives. Pass ``norm="instance"`` for BasicUNet's own behaviour (segmentation only).

    Args:
        in_channels: input channels ``C``.
        spatial_dims: 2 or 3.
        features: five widths for ``conv_0, down_1 .. down_4`` (BasicUNet's first five).
        act, bias, dropout: as in ``BasicUNet``.
        norm: as in ``BasicUNet`` (default ``"batch"``, see above).

    Shapes:
        ``forward_pyramid``: five maps at strides 1, 2, 4, 8, 16 with ``features`` channels;
        ``forward_dense`` the last, ``feature_dim = features[4]``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        spatial_dims: int = 3,
        features: Sequence[int] = (32, 32, 64, 128, 256),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = "batch",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        """Check the five widths and build ``conv_0`` and ``down_1`` .. ``down_4`` as BasicUNet names them."""
        super().__init__()
        f = list(features)
        if len(f) != 5:
            raise ConfigError(
                f"features must have 5 widths, got {f}",
                where="model.options.features",
                fix="give five integers, e.g. [32, 32, 64, 128, 256]",
            )
        self.conv_0 = TwoConv(spatial_dims, in_channels, f[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, f[0], f[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, f[1], f[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, f[2], f[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, f[3], f[4], act, norm, bias, dropout)
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.norm = norm  # a BasicUNet that takes these weights (segment.network basic_unet) uses the same norm
        self.pyramid_channels = f
        self.feature_dim = self.dense_dim = f[4]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five maps of the contracting path, strides 1, 2, 4, 8, 16."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        return [x0, x1, x2, x3, x4]

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-16 map ``(B, features[4], *S/16)``."""
        return self.forward_pyramid(x)[-1]
