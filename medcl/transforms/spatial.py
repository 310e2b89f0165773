"""Spatial transforms MONAI lacks, and MONAI's flips and quarter turns with a fast path for plain tensors.

* :class:`RandAxisShiftd` — integer shift along one axis with zero fill. Used for OCT, where the retina's depth
  in the B-scan is a nuisance: an integer shift moves the band without interpolation, so no blur softens the small
  drusen that carry the signal (``RandAffined`` with a fractional translation would resample, i.e. blur).
* :class:`RandRotate2Dd` — 2D rotation as one ``affine_grid`` + ``grid_sample``.
* :class:`FastRandFlipd`, :class:`FastRandRotate90d`, :class:`FastRandSpatialCropd` — MONAI's ``RandFlipd``,
  ``RandRotate90d`` and ``RandSpatialCropd`` (the same
  random draws, the same outputs), which on plain tensors with MONAI's metadata off (the training views'
  augmentation runs inside a :class:`~medcl.transforms.compose.PlainCompose`) call ``torch.flip`` /
  ``torch.rot90`` directly instead of MONAI's lazy-resampling path.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai import transforms as mt
from monai.config import KeysCollection

from medcl.errors import ConfigError
from medcl.transforms.batch_ops import check_shift_padding
from medcl.transforms.intensity import _RandDictTransform


def shift_along_axis(img: torch.Tensor, shift: int, axis: int, padding_mode: str = "zeros") -> torch.Tensor:
    """Shift ``img`` by ``shift`` pixels along ``axis``, filling the vacated part per ``padding_mode``.

    Unlike ``torch.roll`` nothing wraps around: content pushed out of the image is lost.

    Args:
        img: any tensor; ``axis`` indexes its dimensions (``1`` is rows of a ``(C, H, W)`` image).
        shift: signed pixel count (positive: towards higher indices).
        axis: dimension to shift along.
        padding_mode: ``"zeros"`` or ``"border"`` (the vacated rows repeat the nearest row that stayed, as
            ``numpy.pad(mode="edge")`` and ``grid_sample(padding_mode="border")`` do).

    Returns:
        Tensor of the same shape and dtype.
    """
    check_shift_padding(padding_mode)
    n = img.shape[axis]
    if shift == 0:
        return img.clone()
    if padding_mode == "border":
        src = (torch.arange(n, device=img.device) - shift).clamp(0, n - 1)
        return img.index_select(axis, src)
    out = torch.zeros_like(img)
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
        padding_mode: what fills the vacated rows: ``"zeros"`` or ``"border"`` (the edge row repeated).
    """

    spatial = True  # moves pixels: shared by aligned views (medcl.transforms.views.is_spatial)

    def __init__(self, keys: KeysCollection, max_shift: float = 0.1, spatial_axis: int = 0, prob: float = 1.0,
                 allow_missing_keys: bool = False, padding_mode: str = "zeros") -> None:
        """Check and store the shift range; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        if max_shift < 0:
            raise ConfigError(f"max_shift must be >= 0, got {max_shift}", where="RandAxisShiftd.max_shift",
                              fix="give a pixel count, or a fraction of the image size below 1")
        check_shift_padding(padding_mode)
        self.max_shift, self.spatial_axis, self.padding_mode = float(max_shift), int(spatial_axis), str(padding_mode)
        self._shift = 0

    def draw(self, first: torch.Tensor) -> None:
        """Draw the shift in pixels; a fractional ``max_shift`` is scaled by the first key's axis length."""
        n = first.shape[1 + self.spatial_axis]
        m = int(round(self.max_shift * n)) if self.max_shift < 1 else int(self.max_shift)
        self._shift = int(self.R.randint(-m, m + 1)) if m > 0 else 0

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """Shift ``img`` ``(C, *spatial)`` by the drawn amount (:func:`shift_along_axis`)."""
        return shift_along_axis(img, self._shift, 1 + self.spatial_axis, self.padding_mode)


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """``affine_grid``'s pixel centres for an ``h × w`` output, ``align_corners=False``: ``(h·w, 2)`` rows ``(x, y)``.

    Normalised coordinates, ``x`` along the columns: ``linspace(-1, 1, n) · (n - 1) / n``.
    """
    import torch.nn.functional as F

    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=dtype)
    return F.affine_grid(identity, [1, 1, h, w], align_corners=False).reshape(h * w, 2)


def rotate_2d(img: torch.Tensor, angle: float, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Rotate a ``(C, H, W)`` image by ``angle`` radians about its centre (one ``grid_sample``).

    Positive angles turn the content clockwise as displayed (rows down, columns right; tested). The output
    keeps the input size; what rotates in from outside is filled per ``padding_mode`` (``"zeros"``,
    ``"border"``, ``"reflection"``). The sampling grid is ``F.affine_grid``'s, computed as its pixel centres
    (cached per size) times the 2×2 rotation: ``affine_grid`` rebuilt them on every call and multiplied by a 2×3
    matrix in a batched product, ~5× the ``grid_sample`` itself on a 64×64 image.
    """
    import math

    import torch.nn.functional as F

    x = img.float()[None]
    c, s = math.cos(angle), math.sin(angle)
    h, w = x.shape[-2:]
    # output pixel (u, v) in normalised coords samples the input at R(-angle) (u, v); the aspect ratio is undone
    rot_t = torch.tensor([[c, -s * w / h], [s * h / w, c]], dtype=x.dtype)  # the rotation, transposed
    grid = _base_grid(h, w, x.dtype).mm(rot_t).view(1, h, w, 2)
    out = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)[0]
    return out.to(img.dtype) if img.dtype.is_floating_point else out.round().to(img.dtype)


class RandRotate2Dd(_RandDictTransform):
    """Random in-plane rotation of 2D images, ``angle ~ U(-range_x, range_x)`` radians.

    What MONAI's ``RandRotated`` does for 2D, as one ``affine_grid`` + ``grid_sample`` call: about 5× cheaper
    per 64×64 image, which matters when every sample is augmented twice per step on a CPU.

    Args:
        keys: channel-first ``(C, H, W)`` arrays; all keys get the same rotation.
        range_x: largest angle in radians.
        prob: probability of applying.
        mode: interpolation per key (``"bilinear"``, or ``"nearest"`` for masks), one value or one per key.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    """

    spatial = True  # moves pixels: shared by aligned views (medcl.transforms.views.is_spatial)

    def __init__(self, keys: KeysCollection, range_x: float, prob: float = 1.0, mode: str | list[str] = "bilinear",
                 padding_mode: str = "zeros", allow_missing_keys: bool = False) -> None:
        """Check and store the angle range and interpolation modes; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        if range_x < 0:
            raise ConfigError(f"range_x must be >= 0, got {range_x}", where="RandRotate2Dd.range_x",
                              fix="give the largest rotation in radians")
        self.range_x, self.padding_mode = float(range_x), str(padding_mode)
        self.modes = list(mode) if isinstance(mode, (list, tuple)) else [str(mode)] * len(self.keys)
        self._angle = 0.0

    def draw(self, first: torch.Tensor) -> None:
        """Draw the rotation angle in radians."""
        self._angle = float(self.R.uniform(-self.range_x, self.range_x))

    def __call__(self, data):
        """A copy of ``data`` with every key rotated by one drawn angle, each with its own ``mode``."""
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            return d
        self.draw(d[keys[0]])
        for key, mode in zip(self.keys, self.modes):
            if key in d:
                d[key] = rotate_2d(torch.as_tensor(d[key]), self._angle, mode, self.padding_mode)
        return d


def _plain(d: dict, keys: list[Hashable]) -> bool:
    """Whether MONAI's metadata is off and every key holds a plain tensor (nothing to record, nothing lazy)."""
    from monai.data import get_track_meta

    return not get_track_meta() and all(type(d[k]) is torch.Tensor for k in keys)


class FastRandFlipd(mt.RandFlipd):
    """MONAI's ``RandFlipd`` — same draws, same result — with one ``torch.flip`` per key on plain tensors.

    MONAI's path (lazy-resampling checks, type conversion, the applied-transform record) costs 30–90 µs per
    64×64 image, several times the flip itself; it still runs whenever metadata is on, an input is a
    ``MetaTensor`` or the transform is lazy.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Flip every key along ``spatial_axis`` with probability ``prob`` (one draw for all keys)."""
        from monai.transforms.utils import map_spatial_axes

        d = dict(data)
        keys = list(self.key_iterator(d))
        if lazy or (lazy is None and self.lazy) or not _plain(d, keys):
            return super().__call__(data, lazy)
        self.randomize(None)
        if self._do_transform:
            for key in keys:
                d[key] = torch.flip(d[key], map_spatial_axes(d[key].ndim, self.flipper.spatial_axis))
        return d


class FastRandSpatialCropd(mt.RandSpatialCropd):
    """MONAI's ``RandSpatialCropd`` — same draws, same result — as one slice per key on plain tensors.

    As :class:`FastRandFlipd`: MONAI's path (lazy-resampling checks, the crop's metadata record) cost ~60 µs per
    64×64 image even when the crop keeps the whole image (an image already at ``roi_size``, as the 2D presets'
    cached images are); it still runs whenever metadata is on, an input is a ``MetaTensor``, the transform is lazy
    or the crop is centred (``random_center=False``).
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Crop every key at one drawn position (a view of the input, as MONAI's crop)."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if (lazy or (lazy is None and self.lazy) or not keys or not _plain(d, keys)
                or not self.cropper.random_center):
            return super().__call__(data, lazy)
        self.randomize(d[keys[0]].shape[1:])
        index = (slice(None), *self.cropper._slices)
        for key in keys:
            d[key] = d[key][index]
        return d


class FastRandRotate90d(mt.RandRotate90d):
    """MONAI's ``RandRotate90d`` — same draws, same result — with one ``torch.rot90`` per key on plain tensors.

    As :class:`FastRandFlipd`: MONAI's own path runs whenever metadata is on, an input is a ``MetaTensor`` or
    the transform is lazy.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Turn every key by ``k ~ U{1..max_k}`` quarter turns in ``spatial_axes`` with probability ``prob``."""
        from monai.transforms.utils import map_spatial_axes

        d = dict(data)
        keys = list(self.key_iterator(d))
        if lazy or (lazy is None and self.lazy) or not _plain(d, keys):
            return super().__call__(data, lazy)
        self.randomize()
        if self._do_transform:
            for key in keys:
                d[key] = torch.rot90(d[key], self._rand_k, map_spatial_axes(d[key].ndim, self.spatial_axes))
        return d
