"""Whole-slide image backends: opening a slide and reading its levels or a window of a level.

Backends: tifffile for anything that is a TIFF (SVS, NDPI, pyramidal/tiled TIFF with levels in
SubIFDs or successive IFDs — OpenSlide sees SubIFD pyramids as one level); OpenSlide for the
rest (MRXS, VMS, SCN...). Both expose ``info`` (a :class:`SlideInfo`), ``read_level(level)`` and
``read_region(level, x, y, w, h)`` in *level* pixels, returning ``(H, W, C)`` arrays.

Decoded tiles of the tifffile backend are kept in a per-process cache (:class:`TileCache`, least recently used
first out, :data:`TILE_CACHE_BYTES`), as OpenSlide keeps its own: neighbouring tiles of a plan that share a
stored (e.g. JPEG) tile, and tiles read again in a later epoch, decode it once.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import require_file, wrap_error
from medcl.readers.wsi_members import check_slide_members

#: The ``fix`` of every error about a damaged or incomplete slide.
FIX_CORRUPT = "re-export or re-copy the slide (check the copy is complete)"


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
        """Number of pyramid levels (level 0 = full resolution)."""
        return len(self.dimensions)


#: bytes of decoded tiles each process keeps (OpenSlide's default cache is 32 MiB)
TILE_CACHE_BYTES = 64 << 20


class TileCache:
    """Decoded stored tiles, least recently used first out, at most ``max_bytes`` in all (thread-safe).

    Keys are ``(slide token, level, tile index)``: the token is unique to one opened slide in this process
    (:class:`_TiffSlide` draws it), so a slide rewritten and opened again never gets the old pixels. A tile larger
    than an eighth of the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        """An empty cache of ``max_bytes``."""
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        """The tile under ``key`` (now the most recently used), or None."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        """Keep ``tile`` (read-only from now on), dropping the least recently used tiles beyond the budget."""
        if tile.nbytes * 8 > self.max_bytes:
            return
        tile.flags.writeable = False
        with self._lock:
            old = self._tiles.pop(key, None)
            self.bytes += tile.nbytes - (old.nbytes if old is not None else 0)
            self._tiles[key] = tile
            while self.bytes > self.max_bytes:
                _, dropped = self._tiles.popitem(last=False)
                self.bytes -= dropped.nbytes

    def __len__(self) -> int:
        """Tiles kept."""
        return len(self._tiles)


#: this process's decoded tiles (a forked worker starts with a copy of its parent's and adds its own)
TILE_CACHE = TileCache(TILE_CACHE_BYTES)
_TOKENS = itertools.count()


class _TiffSlide:
    """tifffile backend: levels are ``series[0].levels``; regions decode only the touched tiles.

    Decoded tiles are kept in :data:`TILE_CACHE` under this slide's ``token``.
    """

    def __init__(self, path: Path, tif) -> None:
        """Index the levels of ``tif`` (an open ``tifffile.TiffFile``) and read the resolution tags."""
        self.path = path
        self.tif = tif
        self.token = next(_TOKENS)
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
        """``(mpp, objective power, vendor)`` from the Aperio/NDPI tags or the TIFF resolution."""
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
        """A whole level, ``(H, W, C)``."""
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
            key = (self.token, level, idx)
            seg = TILE_CACHE.get(key) if page.is_tiled else None
            if seg is not None:
                sy, sx = (idx // ntx) * tl, (idx % ntx) * tw  # where tifffile puts tile idx of a chunky 2D page
            else:
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
                if page.is_tiled:
                    TILE_CACHE.put(key, seg)
            # overlap of this segment with the wanted window, in level pixels
            y0, y1 = max(y, sy), min(y + h, sy + seg.shape[0], length)
            x0, x1 = max(x, sx), min(x + w, sx + seg.shape[1], width)
            if y1 > y0 and x1 > x0:
                out[y0 - y:y1 - y, x0 - x:x1 - x] = seg[y0 - sy:y1 - sy, x0 - sx:x1 - sx, :spp]
        return out


class _OpenSlide:
    """OpenSlide backend (vendor formats tifffile cannot parse)."""

    def __init__(self, path: Path, slide) -> None:
        """Read the properties of ``slide`` (an open ``openslide.OpenSlide``)."""
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
        """A whole level, ``(H, W, 3)`` uint8."""
        w, h = self.info.dimensions[level]
        return self._read(0, 0, level, w, h)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` of ``level`` (level pixels), ``(h, w, 3)`` uint8."""
        ds = self.info.downsamples[level]
        return self._read(int(round(x * ds)), int(round(y * ds)), level, w, h)

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """OpenSlide's RGBA region at level-0 corner ``(x0, y0)``, composited on white → RGB."""
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
    """``value`` as a positive finite float, or None (unparsable, zero, negative, NaN or inf)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _channels_last(arr: np.ndarray, axes: str) -> np.ndarray:
    """A tifffile array with axes ``axes`` (e.g. ``"YXS"``) as ``(Y, X, samples)``."""
    arr = np.asarray(arr)
    if "S" in axes:
        return np.moveaxis(arr, axes.index("S"), -1).reshape(arr.shape[axes.index("Y")],
                                                             arr.shape[axes.index("X")], -1)
    return arr.reshape(arr.shape[axes.index("Y")], arr.shape[axes.index("X")], 1)


@contextmanager
def open_slide(path: str | Path, backend: str = "auto") -> Iterator[_TiffSlide | _OpenSlide]:
    """Open a slide with tifffile (TIFF-based formats) or OpenSlide; errors are ReaderErrors.

    Args:
        path: the slide.
        backend: ``"auto"`` (tifffile, then OpenSlide if tifffile cannot read it), ``"tifffile"``
            or ``"openslide"``.

    Yields:
        The open backend (its ``info``, ``read_level`` and ``read_region``); closed on exit.

    Raises:
        ReaderError: missing file, unknown backend, or a slide neither backend can open.
    """
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
                                 FIX_CORRUPT) from e
        else:
            try:
                yield slide
            finally:
                tif.close()
            return
    check_slide_members(path)  # a multi-file slide: name every missing or broken member first
    try:
        import openslide

        osl = openslide.OpenSlide(str(path))
    except Exception as e:
        raise wrap_error(path, "cannot open slide (not a TIFF tifffile can read, and OpenSlide failed)",
                         first_error or e, FIX_CORRUPT + "; supported: SVS, NDPI, pyramidal TIFF and "
                         "the OpenSlide formats") from e
    try:
        yield _OpenSlide(path, osl)
    finally:
        osl.close()


#: open slides of this process and thread: ``(pid, thread, path, backend, mtime_ns, size)`` -> (context, slide)
_OPEN: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
#: how many slides :func:`kept_open` keeps open per process and thread
KEEP_OPEN = 128


def kept_open(path: str | Path, backend: str = "auto") -> _TiffSlide | _OpenSlide:
    """An open slide kept for the next region read (tiles of one slide come one after another in training).

    Opening a slide parses its TIFF directories or vendor index, which costs more than reading one tile; a loader
    worker that reads many tiles of one slide opens it once. Handles are per process and thread (never shared
    across a fork or between threads: file offsets would race), at most :data:`KEEP_OPEN` of them (least recently
    used closed first), and keyed on the file's modification time and size, so a slide rewritten in place is
    opened again.
    """
    import os
    import threading

    p = Path(path)
    st = p.stat()
    key = (os.getpid(), threading.get_ident(), str(p.resolve()), backend, st.st_mtime_ns, st.st_size)
    hit = _OPEN.get(key)
    if hit is not None:
        _OPEN.move_to_end(key)
        return hit[1]
    ctx = open_slide(p, backend)
    slide = ctx.__enter__()
    _OPEN[key] = (ctx, slide)
    mine = [k for k in _OPEN if k[:2] == key[:2]]
    for old in mine[:-KEEP_OPEN] if len(mine) > KEEP_OPEN else []:
        old_ctx, _ = _OPEN.pop(old)
        old_ctx.__exit__(None, None, None)
    return slide


def slide_info(path: str | Path, backend: str = "auto") -> SlideInfo:
    """Levels, dimensions, downsamples, mpp and objective power of a slide (reads no pixels)."""
    with open_slide(path, backend) as s:
        return s.info


def check_level(path: Path, info: SlideInfo, level: int | None) -> int:
    """Validate a pyramid level: None is the smallest level, negative counts from the end.

    Returns:
        The level as an index in ``0..info.levels - 1``.

    Raises:
        ReaderError: the level is out of range.
    """
    if level is None:
        return info.levels - 1
    lvl = int(level)
    if lvl < 0:
        lvl += info.levels
    if not 0 <= lvl < info.levels:
        raise ReaderError(f"level={level} is out of range: the slide has {info.levels} levels",
                          where=str(path), fix=f"use level 0..{info.levels - 1} (-1 = smallest)")
    return lvl


def is_pyramidal_tiff(path: Path) -> bool:
    """True for TIFFs that are slides (SVS/NDPI, or more than one pyramid level).

    Raises:
        ReaderError: the TIFF does not open (corrupt, truncated, not a TIFF): whether it is a slide cannot be told,
            and a damaged slide must be reported as such, not handed to the plain-image reader.
    """
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            if len(tif.pages) == 0:  # tifffile opens a file whose first directory is lost, with no page
                raise ValueError("no readable image directory (IFD)")
            if tif.is_svs or getattr(tif, "is_ndpi", False) or getattr(tif, "is_scn", False):
                return True
            return len(tif.series) > 0 and len(tif.series[0].levels) > 1
    except Exception as e:  # noqa: BLE001 - tifffile raises many types on damaged files
        raise wrap_error(path, "cannot read TIFF (corrupt or truncated), so whether it is a slide or an image "
                         "cannot be told", e, FIX_CORRUPT) from e
