"""Whole-slide tissue detection and tiling plans.

:func:`tile_slide` plans tiles on a tissue mask computed at a low level, choosing the pyramid
level that matches the wanted magnification; the tiles are then read one by one with
:func:`medcl.readers.wsi.read_region`, so level 0 is never decoded whole.

Tissue detection: Otsu's threshold (Otsu 1979, "A threshold selection method from gray-level
histograms") on HSV saturation for colour slides (stained tissue is saturated, glass is grey or
white), on grey level for single-channel slides (tissue darker than glass).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import wrap_error
from medcl.readers.wsi_backends import FIX_CORRUPT, SlideInfo, check_level, open_slide


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a histogram.

    Args:
        values: any-shaped array of finite numbers.
        bins: histogram bins.

    Returns:
        The threshold (values ``> t`` are the upper class); the value itself for a constant input.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1e-12)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1e-12)
    between = w0[:-1] * w1[:-1] * (m0[:-1] - m1[:-1]) ** 2
    return float(centers[int(np.argmax(between))])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of an ``(H, W, 3)`` image, in [0, 1] (0 where max = 0)."""
    x = rgb.astype(np.float32)
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0).astype(np.float32)


def tissue_from_pixels(img: np.ndarray, min_saturation: float = 0.05) -> np.ndarray:
    """Tissue mask of an ``(H, W, C)`` overview: Otsu on saturation (C ≥ 3) or on grey (C = 1).

    Args:
        img: overview pixels, channels last.
        min_saturation: floor for the saturation threshold so an empty (all glass) slide is not
            split in two by noise.

    Returns:
        ``(H, W)`` bool, True on tissue.
    """
    if img.ndim == 3 and img.shape[-1] >= 3:
        s = saturation(img[..., :3])
        if float(s.max() - s.min()) < 1e-6:
            return np.zeros(s.shape, dtype=bool)
        return s > max(otsu_threshold(s), min_saturation)
    grey = (img[..., 0] if img.ndim == 3 else img).astype(np.float32)
    if float(grey.max() - grey.min()) < 1e-6:
        return np.zeros(grey.shape, dtype=bool)
    return grey < otsu_threshold(grey)


def tissue_mask(path: str | Path, level: int | None = None, *, backend: str = "auto") -> np.ndarray:
    """Tissue mask of a slide at a low level (default: the smallest).

    Args:
        path: the slide.
        level: pyramid level (None / -1 = smallest).
        backend: ``auto``, ``tifffile`` or ``openslide``.

    Returns:
        ``(H, W)`` bool at that level (True = tissue).
    """
    path = Path(path)
    with open_slide(path, backend) as s:
        lvl = check_level(path, s.info, level)
        try:
            pixels = s.read_level(lvl)
        except Exception as e:
            raise wrap_error(path, f"cannot decode level {lvl}", e, FIX_CORRUPT) from e
    return tissue_from_pixels(pixels)


#: how far a nominal magnification may lie from what a level gives (the ratio), as scanners round their nominal
#: power: a request up to this much finer than the scan is served, and a level up to this much coarser than the
#: request serves it
MAGNIFICATION_TOLERANCE = 1.03


def _level_for_magnification(path: Path, info: SlideInfo, magnification: float) -> tuple[int, float]:
    """The pyramid level to read for ``magnification`` and the downsample (vs level 0) it means.

    Objective power comes from the file (AppMag, OpenSlide objective-power), else from mpp with the
    usual convention 10 µm / mpp (0.25 µm/pixel ≈ 40×). The level is the coarsest one whose downsample is at most
    :data:`MAGNIFICATION_TOLERANCE` times the wanted one: on a slide of 0.2527 µm/pixel (39.57×, no AppMag) "10×"
    wants downsample 3.96 and level 1 (4.0) serves it, a tile reading 1 % fewer pixels a side there (then resized to
    the tile size), not 16× as many pixels of level 0. The tile keeps its physical field of view either way.
    """
    power = info.objective_power
    if power is None and info.mpp is not None:
        power = 10.0 / info.mpp
    if power is None:
        raise ReaderError(
            "the slide stores neither objective power nor microns per pixel, so magnification "
            "cannot be mapped to a level",
            where=str(path), fix="pass level= instead of magnification=",
        )
    # 3 % tolerance: "20x" on a slide whose power comes from its µm per pixel (0.5021 µm -> 19.92x) is 20x
    if magnification <= 0 or magnification > power * MAGNIFICATION_TOLERANCE:
        raise ReaderError(
            f"magnification {magnification:g}x is not available: the slide was scanned at {power:g}x",
            where=str(path), fix=f"ask for {power:g}x or lower",
        )
    wanted = power / magnification
    candidates = [i for i, d in enumerate(info.downsamples) if d <= max(wanted, 1.0) * MAGNIFICATION_TOLERANCE]
    level = max(candidates, key=lambda i: info.downsamples[i])
    return level, wanted


def tile_slide(path: str | Path, tile_size: int = 224, level: int | None = None,
               magnification: float | None = None, min_tissue: float = 0.5, stride: int | None = None,
               *, backend: str = "auto") -> list[dict[str, Any]]:
    """Plan tiles on the tissue of a slide.

    With ``magnification`` the level is the coarsest one at least that fine (within
    :data:`MAGNIFICATION_TOLERANCE`), and a tile reads ``size`` pixels of that level that are resized to
    ``tile_size`` (``size == tile_size`` when a level matches, up to rounding). Without it, tiles are
    ``tile_size`` pixels of ``level`` (default 0).

    Args:
        path: the slide.
        tile_size: output tile side in pixels.
        level: pyramid level (exclusive with ``magnification``).
        magnification: wanted objective power, e.g. 20 for 20×.
        min_tissue: minimum tissue fraction (of the mask at the smallest level) to keep a tile
            (0 keeps every tile).
        stride: step between tiles in output pixels (default ``tile_size``: no overlap).
        backend: ``auto``, ``tifffile`` or ``openslide``.

    Returns:
        One dict per tile: ``x``, ``y`` (level-0 pixels of the top-left corner), ``level``,
        ``size`` (pixels to read at ``level``), ``tile_size``, ``tissue`` (fraction).
        Feed ``x, y, level, size`` to :func:`medcl.readers.wsi.read_region`.
    """
    path = Path(path)
    if level is not None and magnification is not None:
        raise ReaderError("pass either level= or magnification=, not both", where=str(path),
                          fix="drop one of them")
    if tile_size <= 0 or (stride is not None and stride <= 0):
        raise ReaderError("tile_size and stride must be positive", where=str(path), fix="pass sizes > 0")
    if not 0.0 <= min_tissue <= 1.0:
        raise ReaderError(f"min_tissue={min_tissue} must be in [0, 1]", where=str(path),
                          fix="pass a fraction such as 0.5")
    with open_slide(path, backend) as s:
        info = s.info
        if magnification is not None:
            lvl, wanted = _level_for_magnification(path, info, float(magnification))
            size = int(round(tile_size * wanted / info.downsamples[lvl]))
        else:
            lvl = check_level(path, info, 0 if level is None else level)
            wanted, size = info.downsamples[lvl], int(tile_size)
        step0 = (stride or tile_size) * wanted  # level-0 pixels between tiles
        mask_level = info.levels - 1
        try:
            mask = tissue_from_pixels(s.read_level(mask_level))
        except Exception as e:
            raise wrap_error(path, f"cannot decode level {mask_level} for the tissue mask", e,
                             FIX_CORRUPT) from e
    w0, h0 = info.dimensions[0]
    lw, lh = info.dimensions[lvl]
    ds = info.downsamples[lvl]
    mh, mw = mask.shape
    sx, sy = w0 / mw, h0 / mh  # level-0 pixels per mask pixel
    extent = size * ds  # tile side in level-0 pixels
    tiles = []
    n_y = int(math.floor((h0 - extent) / step0)) + 1 if h0 >= extent else 0
    n_x = int(math.floor((w0 - extent) / step0)) + 1 if w0 >= extent else 0
    for iy in range(n_y):
        y = int(round(round(iy * step0 / ds) * ds))  # on the level's pixel grid: no half-pixel reads
        for ix in range(n_x):
            x = int(round(round(ix * step0 / ds) * ds))
            if int(round(x / ds)) + size > lw or int(round(y / ds)) + size > lh:
                continue
            mx0, my0 = int(x / sx), int(y / sy)
            mx1 = max(mx0 + 1, int(math.ceil((x + extent) / sx)))
            my1 = max(my0 + 1, int(math.ceil((y + extent) / sy)))
            frac = float(mask[my0:my1, mx0:mx1].mean())
            if frac >= min_tissue:
                tiles.append({"x": x, "y": y, "level": lvl, "size": size, "tile_size": int(tile_size),
                              "tissue": frac})
    return tiles
