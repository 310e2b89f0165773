"""Tiling plans of the whole-slide images in a manifest: which tiles of which slide a run reads.

A manifest row may point at a slide (SVS, NDPI, MRXS, pyramidal TIFF) with a slide-level label. Before any
training, every slide gets a plan (:func:`plan_slide`): the pyramid level matching ``data.wsi`` (magnification,
µm per pixel or level), the tiles on tissue (:func:`medcl.readers.wsi_tiles.tile_slide`: Otsu on saturation at
the smallest level, ``min_tissue``), thinned to ``max_tiles`` (evenly over the tissue, or at random seeded by the
run's seed and the slide). Training then reads each tile as a region of that level
(:class:`medcl.transforms.io.LoadSampled`'s ``region``): a level is never decoded whole.

Plans are cached as JSON in ``<runtime.output_dir>/wsi_plans/``, keyed on the slide's content (size and the
SHA-256 of its first and last MiB: a re-copied or re-scanned slide gets a new plan, a renamed one does not), on
the tiling settings and on :data:`PLAN_VERSION`; under ``torchrun`` only rank 0 writes the cache (every rank plans
the same tiles); a plan is computed once per slide and settings, with a progress bar.

A slide the settings cannot serve is a row problem naming the slide (``data.on_error: skip`` excludes and lists
it): a magnification finer than the scan, no tissue found, a pyramid that cannot be decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medcl import distributed
from medcl.data.records import Problem, Record
from medcl.data.validate import progress_bar
from medcl.errors import MedclError
from medcl.readers import detect_format
from medcl.readers.wsi_tiles import tile_slide

log = logging.getLogger(__name__)

#: bytes hashed at each end of a slide for its cache key
_HASHED = 1 << 20
#: the tiling algorithm's version, part of every cache key: a change to how tiles are planned plans again
PLAN_VERSION = 3
#: what a plan's tile holds
TILE_KEYS = ("x", "y", "level", "size", "tile_size", "tissue")


def is_slide(path: Path) -> bool:
    """True when ``path`` is a whole-slide image (the ``wsi`` reader's format); False for anything else."""
    try:
        return path.is_file() and detect_format(path) == "wsi"
    except MedclError:
        return False


def not_slides(records: list[Any]) -> list[Problem]:
    """One row problem for every record that is not a whole-slide image (a slide-level pipeline's rows).

    A TIFF of a single resolution level is named as such (a flat scan export, not a slide: it has no pyramid to
    read tiles from at a magnification); any other image as an image. Rows whose file cannot be read are left to
    the file checks, which name them already.
    """
    out: list[Problem] = []
    for r in records:
        path = Path(r.path)
        if not path.exists() or is_slide(path):
            continue
        try:
            kind = detect_format(path)
        except MedclError:
            continue  # unreadable: the file checks report it
        if path.suffix.lower() in (".tif", ".tiff") and kind == "image":
            what = ("a TIFF with a single resolution level (no pyramid), not a whole-slide image: tiles cannot be "
                    "read from it at a magnification")
            fix = ("save it as a tiled pyramidal TIFF (e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
                   "--tile-width 256 --tile-height 256`), or classify it as an image with the classify stage in a "
                   "pipeline of its own")
        else:
            what = (f"not a whole-slide image (its format reads as {kind!r}): the slides stage classifies slides by "
                    "their label")
            fix = ("give the slides stage a manifest of slides only (SVS, NDPI, MRXS, VMS, pyramidal TIFF); tiles "
                   "with their own labels go to the classify stage in a pipeline of their own")
        out.append(Problem(r.row, r.relpath, what, fix, "not-a-slide"))
    return out


def settings_of(wsi: Any) -> dict[str, Any]:
    """The tiling settings of ``data.wsi`` as a plain dict (what a plan depends on)."""
    return {k: getattr(wsi, k) for k in ("magnification", "mpp", "level", "tile_size", "stride", "min_tissue",
                                         "max_tiles", "sampling")}


def content_key(path: Path) -> str:
    """SHA-256 of a slide's size and its first and last MiB (hex): what its cached plan is keyed on."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_HASHED))
        if size > 2 * _HASHED:
            f.seek(size - _HASHED)
            h.update(f.read(_HASHED))
    return h.hexdigest()


def _thin(tiles: list[dict[str, Any]], max_tiles: int | None, sampling: str, seed: int, key: str) -> list[dict]:
    """At most ``max_tiles`` of ``tiles`` (row-major order kept): evenly spaced, or a seeded random draw."""
    if max_tiles is None or len(tiles) <= max_tiles:
        return tiles
    if sampling == "grid":
        keep = np.unique(np.round(np.linspace(0, len(tiles) - 1, max_tiles)).astype(int))
    else:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])
        keep = np.sort(rng.choice(len(tiles), size=max_tiles, replace=False))
    return [tiles[int(i)] for i in keep]


def plan_slide(path: Path, wsi: Any, seed: int, content: str | None = None) -> list[dict[str, Any]]:
    """The tiles of one slide under ``data.wsi`` (uncached; see :func:`plan_slides`).

    Returns:
        Tiles in row-major order: ``x``, ``y`` (level-0 pixels), ``level``, ``size`` (pixels read at ``level``),
        ``tile_size`` (pixels after resizing), ``tissue`` (fraction).

    Raises:
        ReaderError: the slide cannot be decoded, or the magnification is finer than its scan.
    """
    magnification = wsi.magnification if wsi.mpp is None else 10.0 / wsi.mpp
    tiles = tile_slide(path, tile_size=wsi.tile_size, level=wsi.level, magnification=magnification,
                       min_tissue=wsi.min_tissue, stride=wsi.stride)
    random_draw = wsi.max_tiles is not None and wsi.sampling == "random" and len(tiles) > wsi.max_tiles
    key = (content or content_key(path)) if random_draw else ""  # the slide's content seeds its random draw
    return _thin(tiles, wsi.max_tiles, wsi.sampling, seed, key)


def _cache_file(cache_dir: Path, content: str, wsi: Any, seed: int) -> Path:
    settings = settings_of(wsi)
    if settings["max_tiles"] is not None and settings["sampling"] == "random":
        settings["seed"] = int(seed)  # only a random draw depends on the seed
    settings["plan_version"] = PLAN_VERSION
    key = hashlib.sha256((content + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:32]
    return cache_dir / f"{key}.json"


def plan_slides(records: list[Record], wsi: Any, seed: int, cache_dir: Path | None,
                progress: bool | None = None) -> tuple[dict[int, list[dict[str, Any]]], list[Problem]]:
    """Plans of the slide rows among ``records``, read from or written to ``cache_dir``.

    Args:
        records: manifest records (only slide rows are planned).
        wsi: ``data.wsi`` settings.
        seed: the run's seed (random thinning).
        cache_dir: plan cache folder (None: no cache).
        progress: progress bar (default: only on a terminal).

    Returns:
        ``({row: tiles}, problems)`` — a row with a problem (undecodable pyramid, magnification out of reach, no
        tissue) has no plan and one :class:`Problem` naming the slide and the fix.
    """
    slides = [r for r in records if is_slide(Path(r.path))]
    plans: dict[int, list[dict[str, Any]]] = {}
    problems: list[Problem] = []
    if not slides:
        return plans, problems
    if cache_dir is not None and distributed.rank() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
    computed = 0
    with progress_bar(progress, "tiling slides") as bar:
        task = bar.add_task("tiling slides", total=len(slides))
        for r in slides:
            path = Path(r.path)
            content = content_key(path) if cache_dir is not None else None  # read once: cache key and draw seed
            cached = _cache_file(cache_dir, content, wsi, seed) if content is not None else None
            try:
                if cached is not None and cached.is_file():
                    tiles = json.loads(cached.read_text(encoding="utf-8"))["tiles"]
                else:
                    tiles = plan_slide(path, wsi, seed, content)
                    computed += 1
                    if cached is not None and distributed.rank() == 0:  # other ranks plan alike, write nothing
                        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                        tmp.write_text(json.dumps({"settings": settings_of(wsi), "tiles": tiles}), encoding="utf-8")
                        os.replace(tmp, cached)  # atomic: ranks planning the same slide never read half a file
            except MedclError as e:
                problems.append(Problem(r.row, r.relpath, f"slide cannot be tiled: {e.what}", e.fix or
                                        "check the slide opens in a viewer", "slide-tiling"))
                bar.advance(task)
                continue
            if not tiles:
                problems.append(Problem(
                    r.row, r.relpath, f"no tissue found: no {wsi.tile_size}-pixel tile has a tissue fraction of at "
                    f"least {wsi.min_tissue:g}", "check the slide (blank glass, a failed scan?) or lower "
                    "data.wsi.min_tissue", "slide-no-tissue"))
            else:
                plans[r.row] = tiles
            bar.advance(task)
    log.info("tiling plans of %d slides: %d tiles (%d computed, %d from the cache %s)", len(plans),
             sum(len(t) for t in plans.values()), computed, len(slides) - computed,
             cache_dir if cache_dir is not None else "(none)")
    return plans, problems


def plans_table(plans: dict[int, list[dict[str, Any]]]) -> str:
    """The plans as CSV text (``row, tile`` then :data:`TILE_KEYS`): manifest rows, never slide paths."""
    lines = ["row,tile," + ",".join(TILE_KEYS)]
    for row in sorted(plans):
        for j, t in enumerate(plans[row]):
            lines.append(",".join([str(row), str(j), *(f"{t[k]:.4f}" if k == "tissue" else str(t[k])
                                                      for k in TILE_KEYS)]))
    return "\n".join(lines) + "\n"
