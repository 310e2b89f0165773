"""Encoders and heads.

``ENCODERS`` maps a config name to the factory per number of spatial axes, so the same name
(``resnet18``) gives timm's 2D ResNet for images, MONAI's 3D ResNet for volumes and MONAI's 1D
ResNet for ECG. The timm and MONAI encoders are imported by the small loader functions below when
an encoder is built: ``import medcl.networks`` imports neither timm nor MONAI.

>>> enc = build_encoder("resnet18", in_channels=1, spatial_dims=2)
>>> enc(torch.zeros(2, 1, 64, 64)).shape          # (B, feature_dim)
torch.Size([2, 512])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcl.errors import ConfigError
from medcl.lookup import look_up
from medcl.networks.base import Encoder
from medcl.networks.encoders1d import build_resnet1d, build_xresnet1d
from medcl.networks.heads import DenseProjectionHead, PredictorHead, ProjectionHead
from medcl.networks.tiny import build_tiny_cnn
from medcl.networks.weights import load_pretrained


def _timm() -> Callable[..., Encoder]:
    """:func:`medcl.networks.encoders2d.build_timm` (timm's 2D models)."""
    from medcl.networks.encoders2d import build_timm  # lazy: timm, imported when a 2D encoder is built

    return build_timm


def _monai_resnet() -> Callable[..., Encoder]:
    """:class:`medcl.networks.encoders3d.MonaiResNetEncoder`."""
    from medcl.networks.encoders3d import MonaiResNetEncoder  # lazy: monai, imported when one is built

    return MonaiResNetEncoder


def _swin_unetr() -> Callable[..., Encoder]:
    """:class:`medcl.networks.encoders3d.SwinUNETREncoder`."""
    from medcl.networks.encoders3d import SwinUNETREncoder  # lazy: monai, imported when the encoder is built

    return SwinUNETREncoder


def _basic_unet() -> Callable[..., Encoder]:
    """:class:`medcl.networks.encoders3d.BasicUNetEncoder`."""
    from medcl.networks.encoders3d import BasicUNetEncoder  # lazy: monai, imported when the encoder is built

    return BasicUNetEncoder


@dataclass(frozen=True)
class Factory:
    """What builds an encoder and the fixed keyword arguments it gets.

    ``build`` is the function or class itself; ``load`` a function returning it, for those behind a heavy import
    (timm, MONAI) that ``import medcl.networks`` must not pay for. Give exactly one.
    """

    build: Callable[..., Encoder] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    load: Callable[[], Callable[..., Encoder]] | None = None

    def __post_init__(self) -> None:
        """Check that exactly one of ``build`` and ``load`` is given."""
        if (self.build is None) == (self.load is None):
            raise TypeError("Factory takes exactly one of build and load")

    def resolve(self) -> Callable[..., Encoder]:
        """The function or class that builds the encoder (imports timm or MONAI for those that need it)."""
        return self.build if self.build is not None else self.load()


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry: a factory per supported ``spatial_dims`` and a one-line description."""

    by_dims: dict[int, Factory]
    description: str


def _timm2d(name: str) -> Factory:
    return Factory(load=_timm, kwargs={"model_name": name})


def _res3d(depth: str) -> Factory:
    return Factory(load=_monai_resnet, kwargs={"depth": depth})


def _res1d(depth: str) -> Factory:
    return Factory(build_resnet1d, {"depth": depth})


_SWIN = Factory(load=_swin_unetr)
_UNET = Factory(load=_basic_unet)
_TINY = Factory(build_tiny_cnn)

ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": EncoderSpec(
        {2: _timm2d("resnet18"), 3: _res3d("resnet18"), 1: _res1d("resnet18")},
        "ResNet-18: timm (2D), MONAI (3D, 1D)",
    ),
    "resnet10": EncoderSpec({3: _res3d("resnet10"), 1: _res1d("resnet10")},
                            "ResNet-10 from MONAI (3D/1D; Med3D weights load)"),
    "resnet34": EncoderSpec({2: _timm2d("resnet34"), 3: _res3d("resnet34")}, "ResNet-34"),
    "resnet50": EncoderSpec({2: _timm2d("resnet50"), 3: _res3d("resnet50")}, "ResNet-50"),
    "convnext_tiny": EncoderSpec({2: _timm2d("convnext_tiny")}, "ConvNeXt-T (timm)"),
    "vit_small": EncoderSpec({2: _timm2d("vit_small_patch16_224")}, "ViT-S/16 (timm), any size divisible by 16"),
    "vit_tiny": EncoderSpec({2: _timm2d("vit_tiny_patch16_224")}, "ViT-Ti/16 (timm), any size divisible by 16"),
    "efficientnet_b0": EncoderSpec({2: _timm2d("efficientnet_b0")}, "EfficientNet-B0 (timm)"),
    "densenet121": EncoderSpec({2: _timm2d("densenet121")}, "DenseNet-121 (timm)"),
    "swin_unetr_encoder": EncoderSpec({3: _SWIN, 2: _SWIN},
                                      "SwinUNETR's Swin transformer (MONAI); sides divisible by 32"),
    "unet_encoder": EncoderSpec({2: _UNET, 3: _UNET}, "BasicUNet contracting path (MONAI)"),
    "unet_encoder2d": EncoderSpec({2: _UNET}, "BasicUNet contracting path (MONAI), 2D"),
    "unet_encoder3d": EncoderSpec({3: _UNET}, "BasicUNet contracting path (MONAI), 3D"),
    "resnet1d": EncoderSpec({1: _res1d("resnet18")}, "MONAI ResNet-18 1D for ECG"),
    "xresnet1d": EncoderSpec({1: Factory(build_xresnet1d)}, "xresnet1d50 for ECG (Strodthoff et al. 2021)"),
    "xresnet1d101": EncoderSpec({1: Factory(build_xresnet1d, {"layers": (3, 4, 23, 3)})}, "xresnet1d101 for ECG"),
    "tiny_cnn": EncoderSpec({1: _TINY, 2: _TINY, 3: _TINY}, "tiny CNN for tests"),
}


def _lookup(name: str) -> EncoderSpec:
    # looked up among the sorted names so that the error lists them alphabetically
    return ENCODERS[look_up(name, sorted(ENCODERS), what="encoder", where="model.encoder", n=3,
                            verb="choose one of")]


def build_encoder(
    name: str,
    *,
    in_channels: int,
    spatial_dims: int = 2,
    pretrained_path: str | Path | None = None,
    pretrained_strict: bool = True,
    **kwargs: Any,
) -> Encoder:
    """Build an encoder by registry name; optionally load local weights.

    Args:
        name: key of :data:`ENCODERS`.
        in_channels: input channels (image channels or ECG leads).
        spatial_dims: 1 (signals), 2 (images) or 3 (volumes).
        pretrained_path: local weights file (timm/torchvision/MONAI state dict,
            ``.safetensors`` or a medcl checkpoint); never downloaded.
        pretrained_strict: reject files with missing/unexpected keys (default).
        **kwargs: architecture options passed to the factory (e.g. ``img_size`` for ViTs,
            ``feature_size`` for SwinUNETR, ``widths`` for ``tiny_cnn``).

    Returns:
        An :class:`Encoder` (``feature_dim``, ``forward``, ``forward_dense``, ``forward_pyramid``).

    Raises:
        ConfigError: unknown name, unsupported ``spatial_dims`` or unknown keyword argument.
        CheckpointError: the weights file is unreadable or does not fit.
    """
    spec = _lookup(name)
    if spatial_dims not in spec.by_dims:
        raise ConfigError(
            f"encoder {name!r} does not support spatial_dims={spatial_dims}",
            where="model.encoder",
            fix=f"{name!r} supports spatial_dims {sorted(spec.by_dims)}; encoders for {spatial_dims}D: "
            + ", ".join(sorted(n for n, s in ENCODERS.items() if spatial_dims in s.by_dims)),
        )
    if in_channels < 1:
        raise ConfigError(f"in_channels={in_channels}", where="model.in_channels", fix="use a positive channel count")
    factory = spec.by_dims[spatial_dims]
    fn = factory.resolve()
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # timm's create_model accepts **kwargs, so unknown keys surface from the model itself.
    unknown = [] if takes_any else [k for k in kwargs if k not in params]
    if unknown:
        raise ConfigError(
            f"encoder {name!r} got unknown option(s) {unknown}",
            where="model.options",
            fix="accepted options: " + ", ".join(k for k in params if k not in ("in_channels", "spatial_dims"))
                + "; when you switch model.encoder, also reset the pipeline's options (--set 'model.options={}')",
        )
    try:
        encoder = fn(in_channels=in_channels, spatial_dims=spatial_dims, **factory.kwargs, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"encoder {name!r} got an unknown option or value ({exc})",
            where="model.options",
            fix="remove or rename the offending option (see the encoder's docstring for its options); a pipeline's "
                "options belong to its encoder, so when you switch model.encoder also reset them "
                "(--set 'model.options={}')",
        ) from exc
    encoder.name = name
    if pretrained_path is not None:
        load_pretrained(encoder, pretrained_path, strict=pretrained_strict, name=name)
    return encoder


__all__ = [
    "ENCODERS",
    "DenseProjectionHead",
    "Encoder",
    "EncoderSpec",
    "PredictorHead",
    "ProjectionHead",
    "build_encoder",
]
