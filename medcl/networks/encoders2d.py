"""2D encoders from timm (ResNet, ConvNeXt, ViT, EfficientNet, DenseNet).

Models are always created with ``pretrained=False``: medcl never downloads weights (hospital
networks are often offline, and silent downloads are not reproducible). Pretrained weights
come from a local file through ``build_encoder(..., pretrained_path=...)``.

Input channels: timm builds the stem for ``in_chans`` directly (1 for grey OCT/CT/MRI slices,
3 for fundus and histopathology); ImageNet weights loaded from a file are adapted with
:func:`medcl.networks.weights.adapt_input_channels`.

ViTs are created with ``dynamic_img_size=True`` so a ``vit_small`` built for 224×224 also runs
on 64×64 crops (position embeddings are interpolated on the fly); pass ``img_size`` to size the
learned position embedding for your crops.
"""

from __future__ import annotations

import os

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from medcl.networks.base import Encoder


class TimmEncoder(Encoder):
    """A timm backbone without classifier.

    Args:
        model_name: timm architecture, e.g. ``"resnet18"``, ``"convnext_tiny"``,
            ``"vit_small_patch16_224"``.
        in_channels: image channels ``C``.
        spatial_dims: must be 2.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``).

    Shapes:
        ``forward``: ``(B, C, H, W) -> (B, feature_dim)``;
        ``forward_dense``: ``-> (B, feature_dim, H/r, W/r)`` (``r`` = 32 for CNNs, the patch
        size for ViTs);
        ``forward_pyramid``: CNN stages (strides 2/4 .. 32) or, for ViTs, the last four blocks
        (all at the patch stride).
    """

    def __init__(self, model_name: str, *, in_channels: int, spatial_dims: int = 2, **timm_kwargs) -> None:
        """Create the headless timm model (never downloads weights) and read its widths and classifier keys."""
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: pretrained=False below
        if model_name.startswith(("vit_", "deit")):
            timm_kwargs.setdefault("dynamic_img_size", True)
        self.model = timm.create_model(
            model_name, pretrained=False, in_chans=in_channels, num_classes=0, **timm_kwargs
        )
        self.is_vit = isinstance(self.model, VisionTransformer)
        self.model_name = model_name
        self.in_channels = in_channels
        self.spatial_dims = 2
        self.feature_dim = int(self.model.num_features)
        self.dense_dim = self.feature_dim
        if self.is_vit:
            self._vit_indices = 4
            self.pyramid_channels = [self.feature_dim] * 4
        else:
            self.pyramid_channels = [int(f["num_chs"]) for f in self.model.feature_info]
        classifier = self.model.pretrained_cfg.get("classifier", "fc")
        names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        #: Classifier keys of upstream weight files that the headless encoder drops silently.
        self.ignored_weight_prefixes = tuple(f"{n}." for n in names)

    def weights_module(self) -> torch.nn.Module:
        """The wrapped timm model, whose keys match timm weight files."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, feature_dim)`` from timm's head pooling (average; class token or mean for ViTs)."""
        return self.model(x)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``(B, feature_dim, H/r, W/r)``; for ViTs the normalised patch-token grid."""
        if self.is_vit:
            # Patch tokens of the last block after the final norm, as a (B, D, H/p, W/p) grid.
            return self.model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[-1]
        return self.model.forward_features(x)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """CNN stage outputs, or the last four ViT blocks' patch-token grids, fine to coarse."""
        if self.is_vit:
            return list(self.model.forward_intermediates(x, indices=self._vit_indices, intermediates_only=True))
        return list(self.model.forward_intermediates(x, intermediates_only=True))

    def adapt_weight(self, key: str, value: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
        """Resample a ViT position embedding trained at another image size (timm's rule)."""
        if self.is_vit and key.endswith("pos_embed") and value.ndim == 3:
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(self.model, "no_embed_class", False) else self.model.num_prefix_tokens
            n_new = target_shape[1] - prefix
            side = int(round(n_new**0.5))
            if side * side != n_new:
                return None
            return resample_abs_pos_embed(value, [side, side], num_prefix_tokens=prefix)
        return None


def build_timm(model_name: str, *, in_channels: int, spatial_dims: int = 2, **kwargs) -> TimmEncoder:
    """Build a :class:`TimmEncoder` (registry factory)."""
    return TimmEncoder(model_name, in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)
