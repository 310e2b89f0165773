"""H&E-like histopathology: one pyramidal TIFF slide per patient plus PNG tiles cut from tissue.

* Slide: tiled pyramidal TIFF (tifffile, JPEG-compressed 256-px tiles, RGB), level 0 of
  ``SLIDE_SIZE`` (768) pixels square at ~0.5 µm/px (site-dependent), then 2× and 4× downsampled levels as
  reduced-resolution pages (``subfiletype=1``), readable by tifffile and OpenSlide's generic-TIFF
  driver. X/YResolution carry the pixel size (pixels per centimetre), so ``mpp = 1e4 / resolution``.
  Mostly white background with one or two tissue regions.
* Tissue (the class, one per patient), always set in a shared stroma background so that colour
  statistics overlap and the architecture carries the class: ``tumour`` (nests of crowded, large,
  irregular nuclei), ``stroma`` (wavy pink collagen fibres with elongated fibroblast nuclei and a
  variable number of inflammatory cells), ``normal`` (gland-like rings: a pale lumen, partly
  filled with mucin, lined by a ring of epithelial nuclei).
* Stain is rendered by Beer–Lambert mixing of haematoxylin and eosin optical densities
  (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001); the nuisance is stain variation: per-slide
  H and E stain vectors and concentrations, section thickness, plus a site shift of the hue.
* Manifest: one row per **tile** (``images/*.png``, the classification unit) with extra columns
  ``slide`` (relative path of the slide the tile was cut from), ``x``, ``y`` (tile origin at
  level 0, pixels), ``tile_size``. Slides are also listed in ``slides.csv``
  (same base columns; ``path`` is the slide; extra ``mpp``, ``levels``, ``width``, ``height``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import (
    Patient,
    Sample,
    draw_classes,
    draw_count,
    sample_row,
    save_png,
    to_uint8,
    write_csv,
    write_patients,
)

MODALITY = "histo"
CLASSES: tuple[str, ...] = ("tumour", "stroma", "normal")
TASK = "multiclass"
DEFAULT_PATIENTS = 90
DEFAULT_SIZE = 64  # tile side
SLIDE_SIZE = 768  # level-0 side of each slide
SLIDE_LEVELS = 3
TILES_PER_PATIENT = (3, 5)
#: level-0 microns per pixel per site (scanners differ slightly)
SITE_MPP = {"site-a": 0.5, "site-b": 0.4986, "site-c": 0.5021}

# Ruifrok & Johnston H&E optical-density vectors (RGB), normalised below.
_H = np.array([0.650, 0.704, 0.286])
_E = np.array([0.072, 0.990, 0.105])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _blur(a: np.ndarray, sigma) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma=sigma, mode="reflect", truncate=3.0)


def _low_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-std smooth noise with correlation length ``sigma`` px, drawn at 1/8 resolution and upsampled."""
    from scipy.ndimage import uniform_filter, zoom

    f = 8
    small = rng.standard_normal((shape[0] // f + 2, shape[1] // f + 2)).astype(np.float32)
    small = _blur(small, sigma / f)
    small /= small.std() + 1e-8
    # Linear upsampling then a box filter: smooth (no kinks) and much cheaper than a cubic zoom.
    return uniform_filter(zoom(small, f, order=1, grid_mode=False)[: shape[0], : shape[1]], f)


def _impulses(shape: tuple[int, int], pts: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    if len(pts):
        r = np.clip(pts[:, 0].astype(int), 0, shape[0] - 1)
        c = np.clip(pts[:, 1].astype(int), 0, shape[1] - 1)
        np.add.at(out, (r, c), weights)
    return out


def _nuclei(shape, pts, sigma, rng, elong: float = 1.0) -> np.ndarray:
    """Nuclei as normalised Gaussian spots (peak ~1) at ``pts``; ``elong`` > 1 stretches them along columns."""
    if len(pts) == 0:
        return np.zeros(shape, dtype=np.float32)
    w = rng.uniform(0.8, 1.2, len(pts)).astype(np.float32)
    sig = (sigma, sigma * elong)
    img = _blur(_impulses(shape, pts, w), sig)
    return np.clip(img * (2 * np.pi * sig[0] * sig[1]), 0.0, 1.5)


def render_tissue(tissue: int, shape: tuple[int, int], rng: np.random.Generator, signal: float = 1.0):
    """Haematoxylin and eosin concentration maps of one tissue type filling ``shape``.

    Args:
        tissue: index into :data:`CLASSES`.
        shape: ``(H, W)`` in level-0 pixels.
        rng: generator.
        signal: scales how distinct the tissue architecture is (1.0 default).

    Returns:
        ``(hema, eosin, lumen)``: float32 ``(H, W)`` concentrations (~0..1.5) and a lumen mask in [0, 1]
        (white space inside glands).
    """
    h, w = shape
    area = h * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = _low_noise(shape, 12.0, rng) * 4.0
    lumen = np.zeros(shape, dtype=np.float32)
    name = CLASSES[tissue]
    # Every tissue sits in stroma: wavy collagen fibres (eosin) with scattered fibroblasts and
    # inflammatory cells, so colour statistics overlap and architecture carries the class.
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(9.0, 14.0)
    wave = _low_noise(shape, 40.0, rng) * 1.5 * period  # fibres undulate across the field
    u = np.cos(ang) * xx + np.sin(ang) * yy + wave + warp
    fibres = np.sin(u * (2 * np.pi / period))
    infl = float(np.exp(rng.normal(0.0, 0.5)))  # inflammatory cell density, varies per slide
    n_fib = int(area / 900 * (1.6 if name == "stroma" else 1.0))
    n_inf = int(area / 700 * infl)
    s_hema = 0.1 + 0.9 * _nuclei(shape, rng.uniform(0, 1, (n_fib, 2)) * [h, w], 1.2, rng, elong=2.2)
    s_hema = s_hema + 0.8 * _nuclei(shape, rng.uniform(0, 1, (n_inf, 2)) * [h, w], 1.3, rng)
    s_eosin = 0.55 + 0.25 * fibres
    if name == "stroma":
        hema, eosin = s_hema, 0.55 + 0.3 * signal * fibres
    elif name == "tumour":
        # Nests of crowded, large pleomorphic nuclei with pale cytoplasm, invading the stroma.
        nest = 1.0 / (1.0 + np.exp(-(_low_noise(shape, 14.0, rng) + rng.uniform(0.0, 0.8)) / 0.25))
        n = int(area / 60)
        pts = rng.uniform(0, 1, (n, 2)) * [h, w]
        pts = pts[rng.uniform(0, 1, n) < nest[pts[:, 0].astype(int), pts[:, 1].astype(int)]]
        big, small = pts[: len(pts) // 2], pts[len(pts) // 2 :]
        t_hema = 0.15 + 0.75 * _nuclei(shape, big, 2.4, rng) + 0.7 * _nuclei(shape, small, 1.8, rng)
        t_eosin = 0.4 + 0.08 * np.sin((xx + warp) / 5.0)
        a = signal * nest
        hema, eosin = a * t_hema + (1 - a) * s_hema, a * t_eosin + (1 - a) * s_eosin
    else:
        # Glands: a lumen (partly filled with pale mucin) lined by a ring of epithelial nuclei.
        from scipy.ndimage import distance_transform_edt

        step = rng.uniform(30.0, 40.0)
        gy, gx = np.mgrid[step / 2 : h : step, step / 2 : w : step]
        centres = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-7, 7, (gy.size, 2))
        radii = rng.uniform(3.0, 8.0, len(centres)).astype(np.float32)
        seeds = np.ones(shape, dtype=bool)
        ci = np.clip(centres.astype(int), 0, [h - 1, w - 1])
        seeds[ci[:, 0], ci[:, 1]] = False
        dist, (iy, ix) = distance_transform_edt(seeds, return_indices=True)
        lookup = np.zeros(shape, dtype=np.float32)
        lookup[ci[:, 0], ci[:, 1]] = radii
        rad = lookup[iy, ix]
        d = dist.astype(np.float32) - rad + 1.5 * warp / 4.0  # <0 inside the (irregular) lumen
        lumen = rng.uniform(0.35, 0.8) / (1.0 + np.exp(d / 0.8))
        ring = np.exp(-0.5 * ((d - 3.0) / 1.3) ** 2)
        theta = np.arctan2(yy - iy, xx - ix)
        beads = 0.5 + 0.5 * np.cos(theta * rng.integers(7, 11) + rng.uniform(0, 6.3))
        epi = 1.0 / (1.0 + np.exp((d - 7.0) / 1.0))  # epithelium + lumen region
        g_hema = 0.12 + 1.0 * ring * beads
        g_eosin = 0.35 + 0.35 * np.exp(-0.5 * ((d - 6.0) / 2.5) ** 2)
        a = signal * epi
        hema, eosin = a * g_hema + (1 - a) * s_hema, a * g_eosin + (1 - a) * s_eosin
    tex = _blur(rng.standard_normal(shape).astype(np.float32), 1.0)
    hema = np.clip(hema * (1 + 0.25 * tex), 0, None)
    eosin = np.clip(eosin * (1 + 0.15 * tex), 0, None)
    return hema.astype(np.float32), eosin.astype(np.float32), lumen.astype(np.float32)


def stain(hema: np.ndarray, eosin: np.ndarray, rng: np.random.Generator, shift: float = 0.0, nuisance: float = 1.0):
    """Beer–Lambert H&E colour from concentrations with a random stain (the nuisance).

    Args:
        hema: ``(H, W)`` haematoxylin concentration.
        eosin: ``(H, W)`` eosin concentration.
        rng: generator for the stain draw (one per slide).
        shift: site offset of the haematoxylin hue.
        nuisance: scales the stain variation.

    Returns:
        ``(H, W, 3)`` float32 RGB in [0, 1].
    """
    hv = _unit(_H + rng.normal(0, 0.08 * nuisance, 3) + np.array([shift, -shift, shift]))
    ev = _unit(_E + rng.normal(0, 0.08 * nuisance, 3))
    thick = float(np.exp(rng.normal(0, 0.2 * nuisance)))  # section thickness scales both stains
    ch = 1.05 * thick * float(np.exp(rng.normal(0, 0.3 * nuisance)))
    ce = 0.75 * thick * float(np.exp(rng.normal(0, 0.3 * nuisance)))
    od = ch * hema[..., None] * hv.astype(np.float32) + ce * eosin[..., None] * ev.astype(np.float32)
    return np.exp(-od).astype(np.float32)


def render_slide(tissue: int, rng: np.random.Generator, site_shift: float = 0.0, size: int = SLIDE_SIZE):
    """Whole slide at level 0.

    Returns:
        ``(rgb, tissue_mask)``: ``(S, S, 3)`` uint8 and ``(S, S)`` bool.
    """
    s = int(size)
    # Tissue outline: one or two blobs from thresholded low-frequency noise inside an ellipse.
    low = _low_noise((s, s), 24.0, rng)
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) / s)
    cy, cx = rng.uniform(0.4, 0.6, 2)
    ell = ((yy - cy) / rng.uniform(0.3, 0.42)) ** 2 + ((xx - cx) / rng.uniform(0.3, 0.42)) ** 2
    mask = (1.0 - ell + 0.25 * low) > 0.0
    hema, eosin, lumen = render_tissue(tissue, (s, s), rng)
    rgb = stain(hema, eosin, rng, site_shift)
    soft = _blur(mask.astype(np.float32), 2.0)[..., None]
    paper = np.array([0.96, 0.95, 0.96], dtype=np.float32)
    rgb = rgb * (1 - lumen[..., None] * 0.85) + paper * lumen[..., None] * 0.85
    rgb = rgb * soft + paper * (1 - soft)
    rgb = rgb + rng.normal(0, 0.01, rgb.shape).astype(np.float32)
    return to_uint8(rgb), mask


def render_tile(tissue: int, rng: np.random.Generator, size: int = DEFAULT_SIZE, shift: float = 0.0,
                nuisance: float = 1.0, signal: float = 1.0) -> np.ndarray:
    """A single tissue tile (no slide), ``(S, S, 3)`` float RGB in [0, 1] — for quick experiments."""
    hema, eosin, lumen = render_tissue(tissue, (size, size), rng, signal)
    rgb = stain(hema, eosin, rng, shift, nuisance)
    paper = np.array([0.96, 0.95, 0.96], dtype=np.float32)
    return rgb * (1 - lumen[..., None] * 0.85) + paper * lumen[..., None] * 0.85


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, levels: int = SLIDE_LEVELS) -> None:
    """Tiled, JPEG-compressed pyramidal TIFF; level ``k`` is ``2**k`` downsampled (box filter)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        level = rgb
        for k in range(levels):
            tif.write(
                level,
                photometric="rgb",
                tile=(256, 256) if min(level.shape[:2]) >= 256 else (128, 128),
                compression="jpeg",
                compressionargs={"level": 90},
                resolution=(res / 2**k, res / 2**k),
                resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1,
                description=f"medcl synthetic H&E slide level {k}" if k == 0 else None,
                metadata=None,
                software="medcl",
            )
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write slides and tiles under ``out_dir``, return tile manifest rows; also writes ``slides.csv``.

    Args:
        out_dir: the modality folder (``<out>/histo``).
        patients: number of patients (one slide each).
        seed: user seed.
        size: tile side in pixels (default 64).

    Returns:
        One dict per tile: base columns plus ``slide``, ``x``, ``y``, ``tile_size``.
    """
    size = int(size or DEFAULT_SIZE)
    out_dir = Path(out_dir)
    tissues = draw_classes(MODALITY, patients, seed, len(CLASSES))
    slides: list[dict] = []
    rows = write_patients(MODALITY, CLASSES, out_dir, tissues, seed, partial(_patient, size=size, slides=slides))
    write_csv(out_dir / "slides.csv", slides)
    return rows


def _patient(p: Patient, out_dir: Path, size: int, slides: list[dict]) -> Iterator[Sample]:
    """One slide (its ``slides.csv`` row appended to ``slides``), then 3-5 tiles cut from its tissue."""
    rng = p.rng
    tissue = int(p.label)
    rgb, mask = render_slide(tissue, rng, p.site.shift)
    mpp = SITE_MPP[p.site.name]
    slide_rel = f"slides/{p.stem}.tif"
    write_pyramid(out_dir / slide_rel, rgb, mpp)
    slides.append(sample_row(p, MODALITY, CLASSES[tissue], Sample(slide_rel, study=0, extras={
        "mpp": f"{mpp:.4f}", "levels": str(SLIDE_LEVELS), "width": str(rgb.shape[1]), "height": str(rgb.shape[0]),
    })))
    for k, (y, x) in enumerate(_tile_origins(mask, size, rng)):
        tile = rgb[y : y + size, x : x + size]
        rel = f"images/{p.stem}_tile{k + 1}.png"
        save_png(np.ascontiguousarray(tile), out_dir / rel)
        yield Sample(rel, study=0, extras={"slide": slide_rel, "x": str(int(x)), "y": str(int(y)),
                                           "tile_size": str(size)})


def _tile_origins(mask: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Level-0 ``(y, x)`` origins of up to ``TILES_PER_PATIENT`` random tiles whose footprint is (almost) all tissue."""
    from scipy.ndimage import uniform_filter

    frac = uniform_filter(mask.astype(np.float32), size=size, mode="constant")
    half = size // 2
    inner = frac[half : -half or None, half : -half or None]
    # Prefer all-tissue windows; on a small tissue region fall back to the most tissue-filled ones.
    ok = np.argwhere(inner > min(0.97, float(inner.max()) - 1e-6))
    n = draw_count(rng, TILES_PER_PATIENT)
    return ok[rng.choice(len(ok), size=min(n, len(ok)), replace=False)] if len(ok) else np.zeros((0, 2), int)
