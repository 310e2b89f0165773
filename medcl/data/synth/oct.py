"""OCT-like B-scans: a retinal band with drusen-like bumps under it (8-bit greyscale PNG).

What a B-scan looks like here (rows = depth, columns = lateral position):

* dark vitreous above, a retinal band of random depth, tilt and slight curvature, a bright RPE line
  at its bottom and a textured choroid below;
* class = drusen severity grade (AREDS-like, ordinal): 0 normal, 1 early (a few small drusen),
  2 intermediate (more and larger drusen). Drusen are dome-shaped elevations of the RPE line with
  a mid-reflective core — a *local shape* signal that survives shifts, small rotations, flips,
  gain/offset and mild blur;
* nuisances are much larger than the signal (see DESIGN.md, "Demo data that shows what
  pretraining buys"): band position and tilt, gain and offset (not normalised per image),
  a lateral and axial illumination gradient, and multiplicative speckle. Sites differ slightly
  in gain and speckle.

All B-scans of one patient share the grade and the retinal thickness (the same eye), each scan
has its own drusen positions and nuisances (different slices, different visits).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import Patient, Sample, Site, draw_classes, draw_count, save_png, write_patients
from medcl.data.synth.reports import oct_report, report_rng

MODALITY = "oct"
CLASSES: tuple[str, ...] = ("normal", "early", "intermediate")
TASK = "ordinal"
DEFAULT_PATIENTS = 150
DEFAULT_SIZE = 64
#: B-scans per patient are drawn from this inclusive range.
SCANS_PER_PATIENT = (2, 4)

# Drusen per grade: (min count, max count), height range and half-width (sigma) range, in pixels at 64 px.
_DRUSEN = {
    0: ((0, 0), (0.0, 0.0), (1.0, 1.0)),
    1: ((2, 4), (2.5, 4.0), (1.5, 2.5)),
    2: ((5, 8), (4.0, 6.0), (2.5, 3.5)),
}


def drusen_profile(
    grade: int, width: int, rng: np.random.Generator, scale: float = 1.0, signal: float = 1.0
) -> np.ndarray:
    """RPE elevation (pixels, >= 0) along the B-scan for a drusen grade.

    Args:
        grade: 0, 1 or 2.
        width: number of columns ``W``.
        rng: generator.
        scale: image size / 64.
        signal: multiplies drusen heights (1.0 = default difficulty).

    Returns:
        ``(W,)`` elevation of the RPE above its healthy course, a sum of Gaussian domes.
    """
    (n0, n1), (h0, h1), (w0, w1) = _DRUSEN[int(grade)]
    n = int(rng.integers(n0, n1 + 1))
    x = np.arange(width)
    elev = np.zeros(width)
    for _ in range(n):
        c = rng.uniform(0.12, 0.88) * width
        h = rng.uniform(h0, h1) * scale * signal
        s = rng.uniform(w0, w1) * scale
        elev = np.maximum(elev, h * np.exp(-0.5 * ((x - c) / s) ** 2))
    return elev


def render(
    grade: int,
    rng: np.random.Generator,
    site: Site,
    size: int = DEFAULT_SIZE,
    *,
    thickness: float = 11.0,
    nuisance: float = 1.0,
    signal: float = 1.0,
) -> np.ndarray:
    """One B-scan in [0, 1].

    Args:
        grade: drusen grade 0..2.
        rng: generator (consumed).
        site: acquisition site (gain and speckle statistics).
        size: output side ``S`` in pixels.
        thickness: retinal thickness in pixels at 64 px (a per-patient latent).
        nuisance: multiplies every nuisance amplitude (1.0 = default).
        signal: multiplies the drusen heights (1.0 = default).

    Returns:
        ``(S, S)`` float64 image.
    """
    h = w = int(size)
    s = size / 64.0
    y = np.arange(h, dtype=float)[:, None]
    xc = np.arange(w, dtype=float)[None, :] - (w - 1) / 2.0

    # Geometry nuisances: depth, tilt, curvature of the retina in the scan.
    centre = h * (0.5 + rng.uniform(-0.2, 0.2) * nuisance)
    tilt = rng.uniform(-0.3, 0.3) * nuisance  # rows per column
    curv = rng.uniform(-1.0, 1.0) * nuisance * 0.004 / s
    rpe = centre + thickness * s / 2.0 + tilt * xc + curv * xc**2  # (1, W) healthy RPE row
    elev = drusen_profile(grade, w, rng, s, signal)[None, :]
    rpe_d = rpe - elev  # RPE pushed up by drusen
    ilm = rpe - thickness * s  # inner limiting membrane (top of retina)

    def band(centre_row: np.ndarray, half: float) -> np.ndarray:
        return np.exp(-0.5 * ((y - centre_row) / (half * s)) ** 2)

    # Retina: soft layered band between ILM and RPE, brightest at the nerve fibre layer and RPE.
    inside = 1.0 / (1.0 + np.exp(-(y - ilm) / (0.7 * s))) * 1.0 / (1.0 + np.exp((y - rpe_d) / (0.7 * s)))
    layers = 0.30 + 0.10 * np.cos(2 * np.pi * (y - ilm) / (thickness * s / 2.5))
    img = 0.05 + inside * layers
    img = img + 0.55 * band(ilm + 1.2 * s, 1.0)  # nerve fibre layer
    img = img + 0.95 * band(rpe_d, 1.1)  # RPE (follows the drusen)
    # Drusen core: mid-reflective material between the elevated RPE and Bruch's membrane.
    core = (y > rpe_d) & (y < rpe) & (elev > 0.4 * s)
    img = img + 0.22 * core
    img = img + 0.35 * band(rpe + 1.5 * s, 0.9) * (elev < 0.4 * s)  # Bruch's membrane / choriocapillaris
    below = 1.0 / (1.0 + np.exp(-(y - rpe - 2.0 * s) / (1.0 * s)))
    choroid = 0.28 * np.exp(-np.clip(y - rpe, 0, None) / (18.0 * s))
    img = img + below * choroid

    # Acquisition nuisances (not normalised away per image, on purpose).
    gain = site.gain * float(np.exp(rng.normal(0.0, 0.30 * nuisance)))
    offset = rng.uniform(-0.04, 0.12) * nuisance
    gx = rng.uniform(-0.7, 0.7) * nuisance
    gy = rng.uniform(-0.4, 0.4) * nuisance
    illum = np.clip(1.0 + gx * xc / w + gy * (y - h / 2.0) / h, 0.2, None)
    looks = 4.0 / (site.noise * nuisance) ** 2  # gamma speckle, std = 1/sqrt(looks)
    speckle = rng.gamma(looks, 1.0 / looks, size=(h, w))
    out = offset + gain * illum * img * speckle + rng.normal(0.0, 0.015, size=(h, w))
    return np.clip(out, 0.0, 1.0)


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write B-scan PNGs under ``out_dir`` and return manifest rows (paths relative to ``out_dir``).

    Args:
        out_dir: the modality folder (``<out>/oct``).
        patients: number of patients (every grade present when >= 3).
        seed: user seed.
        size: B-scan side in pixels (default 64).

    Returns:
        One dict per B-scan with the base manifest columns plus ``grade`` (the label's index).
    """
    size = int(size or DEFAULT_SIZE)
    grades = draw_classes(MODALITY, patients, seed, len(CLASSES))
    return write_patients(MODALITY, CLASSES, out_dir, grades, seed, partial(_patient, size=size, seed=seed))


def _patient(p: Patient, out_dir: Path, size: int, seed: int = 0) -> Iterator[Sample]:
    """One eye: its thickness, then 2-4 B-scans (two per study), each with its report."""
    rng = p.rng
    grade = int(p.label)
    thickness = rng.uniform(9.5, 13.0)
    for k in range(draw_count(rng, SCANS_PER_PATIENT)):
        img = render(grade, rng, p.site, size, thickness=thickness)
        rel = f"images/{p.stem}_scan{k + 1}.png"
        save_png(img, out_dir / rel)
        report = oct_report(grade, report_rng(seed, MODALITY, p.index, k))
        yield Sample(rel, study=k // 2, extras={"grade": str(grade), "report": report})
