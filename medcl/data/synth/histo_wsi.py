"""Whole slides whose label is decided by a minority of their tissue: the demo of slide-level MIL (``slides`` stage).

* One pyramidal TIFF per patient (:func:`medcl.data.synth.histo.write_pyramid`, ``SLIDE_SIZE`` px at the site's
  µm per pixel), label per **slide**: ``benign`` or ``tumour``. The manifest's rows point at the slides
  (modality ``histo``); there are no tiles on disk — the pipeline tiles the slides (``data.wsi``).
* Tissue: one or two blobs of benign tissue (stroma with gland-like normal epithelium,
  :func:`medcl.data.synth.histo.render_tissue`). A ``tumour`` slide has one tumour focus (crowded, large, irregular
  nuclei) covering ``TUMOUR_SHARE`` (10–25 %) of its tissue, somewhere in it; the rest looks like a benign slide.
  So most tiles of a tumour slide are benign-looking and a tile-level label copied from the slide would be wrong:
  the slide's class is in a few tiles, which is what attention MIL is for.
* Nuisances: per-slide H&E stain (Beer–Lambert, the site's hue shift), glass background, and on about a third of
  the slides a pen mark (a saturated blue-green stroke a pathologist drew, partly over tissue, partly on glass).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcl.data.synth.common import Sample, make_patients, sample_row, to_uint8
from medcl.data.synth.histo import (
    SITE_MPP,
    SLIDE_LEVELS,
    SLIDE_SIZE,
    _blur,
    _low_noise,
    render_tissue,
    stain,
    write_pyramid,
)

MODALITY = "histo"  # read and augmented as H&E slides
NAME = "histo-wsi"
CLASSES: tuple[str, ...] = ("benign", "tumour")
TASK = "binary"
DEFAULT_PATIENTS = 40
DEFAULT_SIZE = SLIDE_SIZE
#: the share of a tumour slide's tissue that is tumour
TUMOUR_SHARE = (0.10, 0.25)
_NORMAL, _STROMA, _TUMOUR = 2, 1, 0  # indices into medcl.data.synth.histo.CLASSES


def _tissue_mask(s: int, rng: np.random.Generator) -> np.ndarray:
    low = _low_noise((s, s), 24.0, rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    cy, cx = rng.uniform(0.4, 0.6, 2)
    ell = ((yy - cy) / rng.uniform(0.3, 0.42)) ** 2 + ((xx - cx) / rng.uniform(0.3, 0.42)) ** 2
    return (1.0 - ell + 0.25 * low) > 0.0


def _focus(mask: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A blob covering about ``share`` of ``mask``, centred on a tissue pixel."""
    s = mask.shape[0]
    ys, xs = np.nonzero(mask)
    k = rng.integers(len(ys))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dist = np.hypot(yy - ys[k], xx - xs[k]) + 12.0 * _low_noise((s, s), 16.0, rng)
    inside = dist[mask]
    return mask & (dist <= np.quantile(inside, share))


def _pen_mark(s: int, rng: np.random.Generator) -> np.ndarray:
    """``(S, S)`` float opacity of a pen stroke: a thick curve across part of the slide."""
    t = np.linspace(0, 1, 400)
    y0, x0 = rng.uniform(0.1, 0.9, 2) * s
    ang = rng.uniform(0, 2 * np.pi)
    ys = y0 + np.sin(ang) * t * s * 0.6 + 20 * np.sin(6 * t + rng.uniform(0, 6))
    xs = x0 + np.cos(ang) * t * s * 0.6
    line = np.zeros((s, s), np.float32)
    keep = (ys >= 0) & (ys < s) & (xs >= 0) & (xs < s)
    line[ys[keep].astype(int), xs[keep].astype(int)] = 1.0
    return np.clip(_blur(line, 5.0) * 40.0, 0, 0.85)


def render_wsi(tumour: bool, rng: np.random.Generator, site_shift: float = 0.0, size: int = SLIDE_SIZE):
    """One slide at level 0: ``(rgb (S, S, 3) uint8, tissue mask, tumour mask)`` (masks ``(S, S)`` bool)."""
    s = int(size)
    mask = _tissue_mask(s, rng)
    hema, eosin, lumen = render_tissue(_NORMAL, (s, s), rng)
    focus = np.zeros((s, s), bool)
    if tumour:
        focus = _focus(mask, float(rng.uniform(*TUMOUR_SHARE)), rng)
        t_hema, t_eosin, t_lumen = render_tissue(_TUMOUR, (s, s), rng)
        w = _blur(focus.astype(np.float32), 3.0)
        hema, eosin, lumen = (hema * (1 - w) + t_hema * w, eosin * (1 - w) + t_eosin * w, lumen * (1 - w) + t_lumen * w)
    rgb = stain(hema, eosin, rng, site_shift)
    paper = np.array([0.96, 0.95, 0.96], dtype=np.float32)
    rgb = rgb * (1 - lumen[..., None] * 0.85) + paper * lumen[..., None] * 0.85
    soft = _blur(mask.astype(np.float32), 2.0)[..., None]
    rgb = rgb * soft + paper * (1 - soft)
    if rng.random() < 1 / 3:
        ink = _pen_mark(s, rng)[..., None]
        rgb = rgb * (1 - ink) + np.array([0.15, 0.45, 0.55], np.float32) * ink
    rgb = rgb + rng.normal(0, 0.01, rgb.shape).astype(np.float32)
    return to_uint8(rgb), mask, focus


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write one slide per patient under ``out_dir/slides`` and return their manifest rows.

    Args:
        out_dir: the data set's folder (``<out>/histo-wsi``).
        patients: number of patients (one slide each; about half ``tumour``).
        seed: user seed.
        size: level-0 side of each slide in pixels (default ``SLIDE_SIZE``).

    Returns:
        One dict per slide: base columns (``modality`` histo, ``label`` benign / tumour) plus ``mpp`` and
        ``tumour_share`` (the share of the tissue that is tumour).
    """
    out_dir = Path(out_dir)
    labels = [i % 2 for i in range(patients)]
    people = make_patients(NAME, patients, seed, labels)
    rows = []
    for p in people:
        rgb, mask, focus = render_wsi(bool(p.label), p.rng, p.site.shift, int(size or SLIDE_SIZE))
        mpp = SITE_MPP[p.site.name]
        rel = f"slides/{p.stem}.tif"
        write_pyramid(out_dir / rel, rgb, mpp, SLIDE_LEVELS)
        rows.append(sample_row(p, MODALITY, CLASSES[int(p.label)], Sample(rel, study=0, extras={
            "mpp": f"{mpp:.4f}", "tumour_share": f"{focus.sum() / max(int(mask.sum()), 1):.3f}"})))
    return rows
