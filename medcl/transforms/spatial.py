"""Spatial transforms MONAI lacks: integer shift along one axis with zero fill.

Used for OCT, where the retina's depth in the B-scan is a nuisance: an integer shift moves the
band without interpolation, so no blur softens the small drusen that carry the signal
(``RandAffined`` with a fractional translation would resample, i.e. blur).
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection

from medcl.errors import ConfigError
from medcl.transforms.intensity import _RandDictTransform


def shift_along_axis(img: torch.Tensor, shift: int, axis: int) -> torch.Tensor:
    """Shift ``img`` by ``shift`` pixels along ``axis``, filling the vacated part with zeros.

    Unlike ``torch.roll`` nothing wraps around: content pushed out of the image is lost.

    Args:
        img: any tensor; ``axis`` indexes its dimensions (``1`` is rows of a ``(C, H, W)`` image).
        shift: signed pixel count (positive: towards higher indices).
        axis: dimension to shift along.

    Returns:
        Tensor of the same shape and dtype.
    """
    n = img.shape[axis]
    out = torch.zeros_like(img)
    if shift == 0:
        return img.clone()
    if abs(shift) >= n:
        return out
    if shift > 0:
        out.narrow(axis, shift, n - shift).copy_(img.narrow(axis, 0, n - shift))
    else:
        out.narrow(axis, 0, n + shift).copy_(img.narrow(axis, -shift, n + shift))
    return out


class RandAxisShiftd(_RandDictTransform):
    """Random integer shift along one spatial axis, ``shift ~ U{-max_shift, ..., max_shift}``.

    Args:
        keys: channel-first arrays ``(C, *spatial)``; all keys get the same shift.
        max_shift: largest shift in pixels, or a fraction of the axis length when ``< 1``.
        spatial_axis: spatial axis (``0`` = rows/vertical for 2D images).
        prob: probability of applying.
    """

    def __init__(self, keys: KeysCollection, max_shift: float = 0.1, spatial_axis: int = 0, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if max_shift < 0:
            raise ConfigError(f"max_shift must be >= 0, got {max_shift}", where="RandAxisShiftd.max_shift",
                              fix="give a pixel count, or a fraction of the image size below 1")
        self.max_shift, self.spatial_axis = float(max_shift), int(spatial_axis)
        self._shift = 0

    def draw(self, first: torch.Tensor) -> None:
        n = first.shape[1 + self.spatial_axis]
        m = int(round(self.max_shift * n)) if self.max_shift < 1 else int(self.max_shift)
        self._shift = int(self.R.randint(-m, m + 1)) if m > 0 else 0

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return shift_along_axis(img, self._shift, 1 + self.spatial_axis)
