"""Whole-slide images (SVS, NDPI, pyramidal TIFF; other vendor formats through OpenSlide).

The pitfall this module exists to avoid: reading level 0 whole. ``read`` returns a low-resolution
overview (default: the smallest pyramid level); :func:`tile_slide` plans tiles on a tissue mask
computed at a low level, choosing the pyramid level that matches the wanted magnification; and
:func:`read_region` decodes only the tiles (or strips) of that level that the region touches.

Backends: tifffile for anything that is a TIFF (SVS, NDPI, pyramidal/tiled TIFF with levels in
SubIFDs or successive IFDs — OpenSlide sees SubIFD pyramids as one level); OpenSlide for the
rest (MRXS, VMS, SCN...). Coordinates passed to and returned by this module are level-0 pixels
``(x, y)`` like OpenSlide's ``read_region``.

Tissue detection: Otsu's threshold (Otsu 1979, "A threshold selection method from gray-level
histograms") on HSV saturation for colour slides (stained tissue is saturated, glass is grey or
white), on grey level for single-channel slides (tissue darker than glass).

This module reads whole levels (:func:`read_wsi`) and regions (:func:`read_region`) and
re-exports the rest, which lives in :mod:`medcl.readers.wsi_backends` (opening a slide with
tifffile or OpenSlide, levels, resolution) and :mod:`medcl.readers.wsi_tiles` (tissue masks,
tiling plans).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, to_float32, wrap_error
from medcl.readers.wsi_backends import (
    FIX_CORRUPT,
    SlideInfo,
    check_level,
    is_pyramidal_tiff,
    kept_open,
    open_slide,
    slide_info,
    svs_description,
)
from medcl.readers.wsi_tiles import otsu_threshold, saturation, tile_slide, tissue_from_pixels, tissue_mask

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "WSI_SUFFIXES",
    "SlideInfo",
    "is_pyramidal_tiff",
    "open_slide",
    "otsu_threshold",
    "read_region",
    "read_wsi",
    "saturation",
    "slide_info",
    "svs_description",
    "tile_slide",
    "tissue_from_pixels",
    "tissue_mask",
]

WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide")
#: overview reads larger than this are refused (use tile_slide / read_region instead)
DEFAULT_MAX_PIXELS = 64_000_000


def _info_meta(info: SlideInfo, level: int) -> dict[str, Any]:
    """The ``meta`` entries describing the slide and the level read (mpp at that level included)."""
    ds = info.downsamples[level]
    return {
        "levels": info.levels,
        "dimensions": [list(d) for d in info.dimensions],
        "downsamples": info.downsamples,
        "mpp": info.mpp,
        "objective_power": info.objective_power,
        "level": level,
        "level_mpp": None if info.mpp is None else info.mpp * ds,
        "vendor": info.vendor,
        "backend": info.backend,
    }


def _to_sample(path: Path, pixels: np.ndarray, info: SlideInfo, level: int, modality: str | None,
               **extra: Any) -> Sample:
    """Wrap ``(H, W, C)`` pixels of ``level`` as a channel-first float32 :class:`Sample`.

    RGBA keeps RGB and grey+alpha keeps grey; ``spacing`` is the level's mpp in mm per pixel
    (None when the slide does not say); ``extra`` goes into ``meta`` as is.
    """
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    if pixels.shape[-1] == 2:
        pixels = pixels[..., :1]
    arr = to_float32(np.moveaxis(pixels, -1, 0), path)  # (C, H, W)
    level_mpp = None if info.mpp is None else info.mpp * info.downsamples[level]
    spacing = None if level_mpp is None else [level_mpp / 1000.0, level_mpp / 1000.0]
    return Sample(
        arr,
        make_meta(format="wsi", modality=modality or "histo", array=arr, spacing=spacing,
                  dtype=pixels.dtype, source_format=f"WSI ({info.vendor}, {info.backend})",
                  **_info_meta(info, level), **extra),
    )


def read_wsi(path: Path, *, modality: str | None = None, level: int | None = None,
             backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, **options: Any) -> Sample:
    """A whole level of a slide as an overview (default: the smallest level).

    Args:
        path: the slide.
        modality: defaults to ``"histo"``.
        level: pyramid level (0 = full resolution, -1 / None = smallest).
        backend: ``auto``, ``tifffile`` or ``openslide``.
        max_pixels: refuse to decode a level with more pixels than this.
        **options: no other option is accepted: an unknown one raises a :class:`ReaderError`.

    Returns:
        Sample ``(3, H, W)`` (0..255 for 8-bit slides); ``meta`` with ``levels``, ``dimensions``
        ``[(w, h)]``, ``downsamples``, ``mpp`` (level 0, µm/pixel, None when unknown),
        ``objective_power``, ``level`` and ``spacing`` in mm at that level.
    """
    pop_options(path, options, ("level", "backend", "max_pixels"), "wsi")
    with open_slide(path, backend) as s:
        info = s.info
        lvl = check_level(path, info, level)
        w, h = info.dimensions[lvl]
        if w * h > max_pixels:
            raise ReaderError(
                f"level {lvl} is {w}x{h} pixels, more than max_pixels={max_pixels}",
                where=str(path),
                fix="read a smaller level (level=-1), or use tile_slide + read_region for full resolution",
            )
        try:
            pixels = s.read_level(lvl)
        except ReaderError:
            raise
        except Exception as e:
            raise wrap_error(path, f"cannot decode level {lvl} (corrupt tiles?)", e, FIX_CORRUPT) from e
        return _to_sample(path, pixels, info, lvl, modality)


def read_region(path: str | Path, x: int, y: int, level: int, size: int | tuple[int, int], *,
                modality: str | None = None, backend: str = "auto", keep_open: bool = False) -> Sample:
    """Read one region from one pyramid level, decoding only the tiles it touches.

    Args:
        path: the slide.
        x: left edge in level-0 pixels (OpenSlide convention).
        y: top edge in level-0 pixels.
        level: pyramid level to read from.
        size: ``s`` or ``(w, h)`` in pixels of that level.
        modality: defaults to ``"histo"``.
        backend: ``auto``, ``tifffile`` or ``openslide``.
        keep_open: keep the slide open for the next read (:func:`~medcl.readers.wsi_backends.kept_open`: what a
            training loader does, reading many tiles of one slide).

    Returns:
        Sample ``(C, h, w)``; parts outside the slide are white (255).
    """
    path = Path(path)
    w, h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise ReaderError(f"region size {size} must be positive", where=str(path), fix="pass size > 0")
    if keep_open:
        return _read_region(path, kept_open(path, backend), x, y, level, w, h, modality)
    with open_slide(path, backend) as s:
        return _read_region(path, s, x, y, level, w, h, modality)


def _read_region(path: Path, s: Any, x: int, y: int, level: int, w: int, h: int, modality: str | None) -> Sample:
    """:func:`read_region` on an open slide ``s``."""
    info = s.info
    lvl = check_level(path, info, level)
    ds = info.downsamples[lvl]
    lw, lh = info.dimensions[lvl]
    lx, ly = int(round(x / ds)), int(round(y / ds))
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
    if x1 <= x0 or y1 <= y0:
        raise ReaderError(
            f"region x={x}, y={y}, size {w}x{h} at level {lvl} lies outside the slide "
            f"(level 0 is {info.dimensions[0][0]}x{info.dimensions[0][1]})",
            where=str(path), fix="pass level-0 coordinates inside the slide",
        )
    try:
        inner = s.read_region(lvl, x0, y0, x1 - x0, y1 - y0)
    except ReaderError:
        raise
    except Exception as e:
        raise wrap_error(path, f"cannot decode region at level {lvl} (corrupt tiles?)", e, FIX_CORRUPT) from e
    out = np.full((h, w, inner.shape[-1]), 255, dtype=inner.dtype)
    out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = inner
    return _to_sample(path, out, info, lvl, modality, region=[int(x), int(y), w, h])
