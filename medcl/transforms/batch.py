"""Augmentation of whole batches on the training device: the 2D presets' random part as vectorised torch ops.

``transforms.augment_on: batch`` moves the random part of the ``oct``, ``fundus`` and ``histo`` presets out of
the DataLoader (one MONAI transform call per sample and view, in worker processes) into the training process,
where it runs once per batch on the device, as ``kornia`` and the plain reference loops do. On a CPU with few
cores the per-sample work is what the loop waits for; on a GPU the workers stop being the bottleneck.

Every op draws its parameters per sample from the distribution of the per-sample transform it mirrors
(:mod:`medcl.transforms.presets`), applies it with probability ``prob`` per sample, and computes exactly what
that transform computes for the same parameters (tested against MONAI's and medcl's per-sample transforms).
Only the random stream differs: the views are equal in distribution to ``augment_on: sample``, not bit for
bit. Each image draws from its own stream, a function of ``(seed, epoch, sample, view)`` (see
:class:`medcl.data.datasets.BatchAugmentedLoader`), so DDP gives the views of one process and a resumed run
sees the views of an uninterrupted one.

The ops themselves are in :mod:`medcl.transforms.batch_ops`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from medcl.errors import ConfigError
from medcl.transforms.batch_ops import (
    AxisShift,
    ColorJitter,
    Draw,
    Flip,
    Gamma,
    HEDJitter,
    IlluminationGradient,
    InscribedFOV,
    Op,
    Rot90,
    Rotate,
    ScaleIntensity,
    ShiftIntensity,
    Speckle,
    as_column,
)
from medcl.transforms.presets import get_preset, resolve_params

__all__ = ["BATCH_CHAINS", "BatchAugment", "Draw", "build_batch_augment"]


# ------------------------------------------------------------------------------------------------
# a preset's chain


class BatchAugment:
    """A preset's random part as a list of :class:`Op`, applied to every image (and mask) of a batch.

    Args:
        ops: the ops in the per-sample chain's order.
        preset: the preset's name (for messages).
    """

    def __init__(self, ops: Sequence[Op], preset: str) -> None:
        """Keep the ops."""
        self.ops, self.preset = list(ops), preset

    def __repr__(self) -> str:
        """The preset and its ops."""
        return f"BatchAugment({self.preset}: {', '.join(type(o).__name__ for o in self.ops)})"

    def images(self, x: torch.Tensor, draw: Draw, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``x`` ``(N, C, H, W)`` (and its ``mask`` ``(N, 1, H, W)``, spatial ops only)."""
        x = x.float()
        for op in self.ops:
            q = op.params(x, draw)
            on = draw.uniform(0.0, 1.0, len(x)) < op.prob if op.prob < 1 else None
            y = op.image(x, q)
            x = y if on is None else torch.where(as_column(on), y, x)
            if mask is not None:
                ym = op.mask(mask, q)
                mask = ym if on is None else torch.where(as_column(on), ym, mask)
        return x, mask

    def __call__(self, batch: Mapping[str, Any], draw: Draw) -> dict[str, Any]:
        """A copy of ``batch`` with ``"views"`` ``(B, V, C, H, W)`` or ``"image"`` ``(B, C, H, W)`` augmented.

        Each view of each sample gets its own draw; a ``"mask"`` ``(B, 1, H, W)`` follows its image's spatial ops.
        """
        out = dict(batch)
        if "views" in out:
            v = out["views"]
            x, _ = self.images(v.reshape(-1, *v.shape[2:]), draw)
            out["views"] = x.reshape(v.shape)
        elif "image" in out:
            x, m = self.images(out["image"], draw, out.get("mask"))
            out["image"] = x
            if m is not None:
                out["mask"] = m
        return out


def _oct(p: Mapping[str, Any]) -> list[Op]:
    return [
        AxisShift(p["shift_prob"], max_shift=p["vertical_shift"], axis=0, padding_mode=p["shift_padding"]),
        *([Rotate(p["tilt_prob"], range_x=math.radians(p["tilt_deg"]), padding_mode="border")]
          if p["tilt_deg"] > 0 else []),
        Flip(p["flip_prob"], axis=1),
        ScaleIntensity(p["gain_prob"], factor=p["gain"]),
        *([ShiftIntensity(p["offset_prob"], offset=p["offset"])] if p["offset"] > 0 else []),
        *([IlluminationGradient(p["illumination_prob"], amount=p["illumination"])] if p["illumination"] > 0 else []),
        Gamma(p["gamma_prob"], *map(float, p["gamma"])),
        Speckle(p["speckle_prob"], std=p["speckle_std"]),
    ]


def _fundus(p: Mapping[str, Any]) -> list[Op]:
    return [
        Rotate(p["rotate_prob"], range_x=math.pi * p["rotate_range"], padding_mode="zeros"),
        Flip(p["flip_prob"], axis=0),
        Flip(p["flip_prob"], axis=1),
        ColorJitter(p["color_prob"], brightness=p["brightness"], contrast=p["contrast"], saturation=p["saturation"]),
        Gamma(p["gamma_prob"], *map(float, p["gamma"])),
        *([IlluminationGradient(p["illumination_prob"], amount=p["illumination"])] if p["illumination"] > 0 else []),
        InscribedFOV(),
    ]


def _histo(p: Mapping[str, Any]) -> list[Op]:
    return [
        HEDJitter(p["hed_prob"], alpha=p["hed_alpha"], beta=p["hed_beta"]),
        Flip(p["flip_prob"], axis=0),
        Flip(p["flip_prob"], axis=1),
        Rot90(p["rotate90_prob"], max_k=3),
        ColorJitter(p["color_prob"], brightness=p["brightness"], contrast=p["contrast"], saturation=p["saturation"]),
    ]


#: preset → its random part as batch ops (the same order and distributions as the per-sample chain).
BATCH_CHAINS: dict[str, Callable[[Mapping[str, Any]], list[Op]]] = {"oct": _oct, "fundus": _fundus, "histo": _histo}


def build_batch_augment(preset: str, **params: Any) -> BatchAugment:
    """The batched random part of a 2D preset, with the preset's parameters (defaults overridden by ``params``).

    Raises:
        ConfigError: a preset without a batched chain, an unknown parameter, or image keys other than
            ``image`` (masks: ``mask``).
    """
    spec = get_preset(preset)
    if spec.name not in BATCH_CHAINS:
        raise ConfigError(f"augment_on: batch is not available for the {spec.name!r} preset",
                          where="transforms.augment_on",
                          fix=f"use augment_on: sample, or one of the presets {', '.join(BATCH_CHAINS)}")
    p = resolve_params(spec, params)
    if tuple(p["keys"]) != ("image",) or tuple(p["mask_keys"]) not in ((), ("mask",)):
        raise ConfigError(f"augment_on: batch augments the 'image' key (and 'mask'), not keys={list(p['keys'])} "
                          f"mask_keys={list(p['mask_keys'])}", where="transforms.augment_on",
                          fix="use augment_on: sample for other keys")
    return BatchAugment(BATCH_CHAINS[spec.name](p), spec.name)
