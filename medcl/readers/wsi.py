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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, require_file, to_float32, wrap_error

WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide")
_FIX_CORRUPT = "re-export or re-copy the slide (check the copy is complete)"
#: overview reads larger than this are refused (use tile_slide / read_region instead)
DEFAULT_MAX_PIXELS = 64_000_000


# --------------------------------------------------------------------------- pure math


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


# --------------------------------------------------------------------------- backends


@dataclass
class SlideInfo:
    """What a slide is: level sizes, downsamples and physical resolution."""

    dimensions: list[tuple[int, int]]  # (w, h) per level
    downsamples: list[float]
    mpp: float | None = None  # microns per pixel at level 0
    objective_power: float | None = None
    vendor: str = "tiff"
    backend: str = "tifffile"
    channels: int = 3
    dtype: str = "uint8"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.dimensions)


class _TiffSlide:
    """tifffile backend: levels are ``series[0].levels``; regions decode only the touched tiles."""

    def __init__(self, path: Path, tif) -> None:
        self.path = path
        self.tif = tif
        series = tif.series[0]
        self.pages = [lvl.keyframe for lvl in series.levels]
        self.axes = series.axes
        if "X" not in self.axes or "Y" not in self.axes:
            raise ReaderError(f"TIFF series has axes {self.axes!r}, not an image", where=str(path),
                              fix="use a 2D pyramidal TIFF / SVS")
        dims = []
        for lvl in series.levels:
            shape = dict(zip(lvl.axes, lvl.shape))
            dims.append((int(shape["X"]), int(shape["Y"])))
        w0 = dims[0][0]
        spp = int(self.pages[0].samplesperpixel)
        mpp, power, vendor = self._resolution()
        self.info = SlideInfo(
            dimensions=dims,
            downsamples=[w0 / d[0] for d in dims],
            mpp=mpp,
            objective_power=power,
            vendor=vendor,
            backend="tifffile",
            channels=spp if spp in (1, 3) else (3 if spp == 4 else spp),
            dtype=str(self.pages[0].dtype),
        )

    def _resolution(self) -> tuple[float | None, float | None, str]:
        tif, page = self.tif, self.pages[0]
        mpp = power = None
        vendor = "tiff"
        if tif.is_svs:
            vendor = "aperio"
            md = svs_description(tif.pages[0].description)
            mpp = _positive(md.get("MPP"))
            power = _positive(md.get("AppMag"))
        elif getattr(tif, "is_ndpi", False):
            vendor = "hamamatsu"
            tag = page.tags.get("65421")  # NDPI magnification
            power = _positive(tag.value if tag is not None else None)
        if mpp is None:
            tags = page.tags
            unit, xres = tags.get("ResolutionUnit"), tags.get("XResolution")
            per_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value)) if unit is not None else None
            if per_um and xres is not None and xres.value[1] and xres.value[0]:
                pixels_per_unit = xres.value[0] / xres.value[1]
                if pixels_per_unit > 1:  # 1 pixel/inch etc. = "unknown" in many writers
                    mpp = per_um / pixels_per_unit
        if power is None and page.description:
            m = re.search(r"(?:AppMag|Magnification|objective[- ]power)\s*[=:]\s*([\d.]+)", page.description,
                          re.IGNORECASE)
            power = _positive(m.group(1)) if m else None
        return mpp, power, vendor

    def read_level(self, level: int) -> np.ndarray:
        return _channels_last(self.tif.series[0].levels[level].asarray(), self.axes)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` of ``level`` (level pixels, inside the level), channels last."""
        page = self.pages[level]
        spp = int(page.samplesperpixel)
        planar_separate = spp > 1 and int(page.planarconfig) == 2
        if planar_separate or int(page.imagedepth) > 1:
            return self.read_level(level)[y:y + h, x:x + w]
        width, length = int(page.imagewidth), int(page.imagelength)
        if page.is_tiled:
            tw, tl = int(page.tilewidth), int(page.tilelength)
            ntx = math.ceil(width / tw)
            indices = [ty * ntx + tx for ty in range(y // tl, (y + h - 1) // tl + 1)
                       for tx in range(x // tw, (x + w - 1) // tw + 1)]
        else:
            rps = int(page.rowsperstrip) or length
            indices = list(range(y // rps, (y + h - 1) // rps + 1))
        out = np.zeros((h, w, spp), dtype=page.dtype)
        fh = self.tif.filehandle
        decode = page.decode
        kwargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
        if int(page.compression) in (6, 7, 34892, 33007):
            kwargs["jpegtables"] = page.jpegtables
            kwargs["jpegheader"] = page.jpegheader
        for idx in indices:
            offset, count = page.dataoffsets[idx], page.databytecounts[idx]
            if not count:
                continue
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
            seg, pos, _shape = decode(data, idx, **kwargs)
            if seg is None:
                continue
            seg = np.asarray(seg).reshape(seg.shape[-3], seg.shape[-2], -1)  # (rows, cols, samples)
            sy, sx = int(pos[2]), int(pos[3])
            # overlap of this segment with the wanted window, in level pixels
            y0, y1 = max(y, sy), min(y + h, sy + seg.shape[0], length)
            x0, x1 = max(x, sx), min(x + w, sx + seg.shape[1], width)
            if y1 > y0 and x1 > x0:
                out[y0 - y:y1 - y, x0 - x:x1 - x] = seg[y0 - sy:y1 - sy, x0 - sx:x1 - sx, :spp]
        return out


class _OpenSlide:
    """OpenSlide backend (vendor formats tifffile cannot parse)."""

    def __init__(self, path: Path, slide) -> None:
        import openslide

        self.slide = slide
        props = slide.properties
        mpp = _positive(props.get(openslide.PROPERTY_NAME_MPP_X))
        power = _positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        self.info = SlideInfo(
            dimensions=[tuple(int(v) for v in d) for d in slide.level_dimensions],
            downsamples=[float(d) for d in slide.level_downsamples],
            mpp=mpp,
            objective_power=power,
            vendor=str(props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")),
            backend="openslide",
        )

    def read_level(self, level: int) -> np.ndarray:
        w, h = self.info.dimensions[level]
        return self._read(0, 0, level, w, h)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.info.downsamples[level]
        return self._read(int(round(x * ds)), int(round(y * ds)), level, w, h)

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        rgba = np.asarray(self.slide.read_region((x0, y0), level, (w, h)), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0  # transparent = no data: composite on white glass
        return np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


def svs_description(description: str) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription (``...|AppMag = 40|MPP = 0.25|...``)."""
    out = {}
    for part in str(description or "").split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _channels_last(arr: np.ndarray, axes: str) -> np.ndarray:
    arr = np.asarray(arr)
    if "S" in axes:
        return np.moveaxis(arr, axes.index("S"), -1).reshape(arr.shape[axes.index("Y")],
                                                             arr.shape[axes.index("X")], -1)
    return arr.reshape(arr.shape[axes.index("Y")], arr.shape[axes.index("X")], 1)


@contextmanager
def open_slide(path: str | Path, backend: str = "auto") -> Iterator[_TiffSlide | _OpenSlide]:
    """Open a slide with tifffile (TIFF-based formats) or OpenSlide; errors are ReaderErrors."""
    path = Path(path)
    require_file(path, "slide")
    if backend not in ("auto", "tifffile", "openslide"):
        raise ReaderError(f"unknown backend {backend!r}", where=str(path),
                          fix="use backend='auto', 'tifffile' or 'openslide'")
    first_error: BaseException | None = None
    if backend in ("auto", "tifffile"):
        import tifffile

        tif = None
        try:
            tif = tifffile.TiffFile(str(path))
            slide = _TiffSlide(path, tif)
        except ReaderError:
            if tif is not None:
                tif.close()
            raise
        except Exception as e:
            if tif is not None:
                tif.close()
            first_error = e
            if backend == "tifffile":
                raise wrap_error(path, "cannot read slide as TIFF (corrupt, truncated or not a TIFF)", e,
                                 _FIX_CORRUPT) from e
        else:
            try:
                yield slide
            finally:
                tif.close()
            return
    try:
        import openslide

        osl = openslide.OpenSlide(str(path))
    except Exception as e:
        raise wrap_error(path, "cannot open slide (not a TIFF tifffile can read, and OpenSlide failed)",
                         first_error or e, _FIX_CORRUPT + "; supported: SVS, NDPI, pyramidal TIFF and "
                         "the OpenSlide formats") from e
    try:
        yield _OpenSlide(path, osl)
    finally:
        osl.close()


def slide_info(path: str | Path, backend: str = "auto") -> SlideInfo:
    """Levels, dimensions, downsamples, mpp and objective power of a slide (reads no pixels)."""
    with open_slide(path, backend) as s:
        return s.info


def _check_level(path: Path, info: SlideInfo, level: int | None) -> int:
    if level is None:
        return info.levels - 1
    lvl = int(level)
    if lvl < 0:
        lvl += info.levels
    if not 0 <= lvl < info.levels:
        raise ReaderError(f"level={level} is out of range: the slide has {info.levels} levels",
                          where=str(path), fix=f"use level 0..{info.levels - 1} (-1 = smallest)")
    return lvl


def _info_meta(info: SlideInfo, level: int) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- public API


def read_wsi(path: Path, *, modality: str | None = None, level: int | None = None,
             backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, **options: Any) -> Sample:
    """A whole level of a slide as an overview (default: the smallest level).

    Args:
        path: the slide.
        modality: defaults to ``"histo"``.
        level: pyramid level (0 = full resolution, -1 / None = smallest).
        backend: ``auto``, ``tifffile`` or ``openslide``.
        max_pixels: refuse to decode a level with more pixels than this.

    Returns:
        Sample ``(3, H, W)`` (0..255 for 8-bit slides); ``meta`` with ``levels``, ``dimensions``
        ``[(w, h)]``, ``downsamples``, ``mpp`` (level 0, µm/pixel, None when unknown),
        ``objective_power``, ``level`` and ``spacing`` in mm at that level.
    """
    pop_options(path, options, ("level", "backend", "max_pixels"), "wsi")
    with open_slide(path, backend) as s:
        info = s.info
        lvl = _check_level(path, info, level)
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
            raise wrap_error(path, f"cannot decode level {lvl} (corrupt tiles?)", e, _FIX_CORRUPT) from e
        return _to_sample(path, pixels, info, lvl, modality)


def read_region(path: str | Path, x: int, y: int, level: int, size: int | tuple[int, int], *,
                modality: str | None = None, backend: str = "auto") -> Sample:
    """Read one region from one pyramid level, decoding only the tiles it touches.

    Args:
        path: the slide.
        x, y: top-left corner in level-0 pixels (OpenSlide convention).
        level: pyramid level to read from.
        size: ``s`` or ``(w, h)`` in pixels of that level.

    Returns:
        Sample ``(C, h, w)``; parts outside the slide are white (255).
    """
    path = Path(path)
    w, h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if w <= 0 or h <= 0:
        raise ReaderError(f"region size {size} must be positive", where=str(path), fix="pass size > 0")
    with open_slide(path, backend) as s:
        info = s.info
        lvl = _check_level(path, info, level)
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
            raise wrap_error(path, f"cannot decode region at level {lvl} (corrupt tiles?)", e,
                             _FIX_CORRUPT) from e
        out = np.full((h, w, inner.shape[-1]), 255, dtype=inner.dtype)
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = inner
        return _to_sample(path, out, info, lvl, modality, region=[int(x), int(y), w, h])


def tissue_mask(path: str | Path, level: int | None = None, *, backend: str = "auto") -> np.ndarray:
    """Tissue mask of a slide at a low level (default: the smallest).

    Returns:
        ``(H, W)`` bool at that level (True = tissue).
    """
    path = Path(path)
    with open_slide(path, backend) as s:
        lvl = _check_level(path, s.info, level)
        try:
            pixels = s.read_level(lvl)
        except Exception as e:
            raise wrap_error(path, f"cannot decode level {lvl}", e, _FIX_CORRUPT) from e
    return tissue_from_pixels(pixels)


def _level_for_magnification(path: Path, info: SlideInfo, magnification: float) -> tuple[int, float]:
    """The pyramid level to read for ``magnification`` and the downsample (vs level 0) it means.

    Objective power comes from the file (AppMag, OpenSlide objective-power), else from mpp with the
    usual convention 10 µm / mpp (0.25 µm/pixel ≈ 40×).
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
    if magnification <= 0 or magnification > power * 1.001:
        raise ReaderError(
            f"magnification {magnification:g}x is not available: the slide was scanned at {power:g}x",
            where=str(path), fix=f"ask for {power:g}x or lower",
        )
    wanted = power / magnification
    candidates = [i for i, d in enumerate(info.downsamples) if d <= wanted * 1.001]
    level = max(candidates, key=lambda i: info.downsamples[i])
    return level, wanted


def tile_slide(path: str | Path, tile_size: int = 224, level: int | None = None,
               magnification: float | None = None, min_tissue: float = 0.5, stride: int | None = None,
               *, backend: str = "auto") -> list[dict[str, Any]]:
    """Plan tiles on the tissue of a slide.

    With ``magnification`` the level is the coarsest one at least that fine, and a tile reads
    ``size`` pixels of that level that are resized to ``tile_size`` (``size == tile_size`` when a
    level matches exactly). Without it, tiles are ``tile_size`` pixels of ``level`` (default 0).

    Args:
        path: the slide.
        tile_size: output tile side in pixels.
        level: pyramid level (exclusive with ``magnification``).
        magnification: wanted objective power, e.g. 20 for 20×.
        min_tissue: minimum tissue fraction (of the mask at the smallest level) to keep a tile
            (0 keeps every tile).
        stride: step between tiles in output pixels (default ``tile_size``: no overlap).

    Returns:
        One dict per tile: ``x``, ``y`` (level-0 pixels of the top-left corner), ``level``,
        ``size`` (pixels to read at ``level``), ``tile_size``, ``tissue`` (fraction).
        Feed ``x, y, level, size`` to :func:`read_region`.
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
            lvl = _check_level(path, info, 0 if level is None else level)
            wanted, size = info.downsamples[lvl], int(tile_size)
        step0 = (stride or tile_size) * wanted  # level-0 pixels between tiles
        mask_level = info.levels - 1
        try:
            mask = tissue_from_pixels(s.read_level(mask_level))
        except Exception as e:
            raise wrap_error(path, f"cannot decode level {mask_level} for the tissue mask", e,
                             _FIX_CORRUPT) from e
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
        y = int(round(iy * step0))
        for ix in range(n_x):
            x = int(round(ix * step0))
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


def is_pyramidal_tiff(path: Path) -> bool:
    """True for TIFFs that are slides (SVS/NDPI, or more than one pyramid level)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            if tif.is_svs or getattr(tif, "is_ndpi", False) or getattr(tif, "is_scn", False):
                return True
            return len(tif.series) > 0 and len(tif.series[0].levels) > 1
    except Exception:
        return False
