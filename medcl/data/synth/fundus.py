"""Colour fundus photographs with diabetic-retinopathy-like lesions (8-bit RGB PNG).

* A circular field of view on black; orange-red background with vignetting and choroidal texture;
  a bright optic disc at a random position (left or right eye), a darker macula, and vessel
  arcades leaving the disc;
* class = retinopathy grade 0..3 (ordinal, ICDR-like): the number of small red dots
  (microaneurysms / haemorrhages) and of yellow exudates grows with the grade;
* nuisances: global illumination and an illumination gradient, colour cast, gamma, rotation of the
  whole fundus, sensor noise. Sites differ slightly in colour cast and gain. The demo set
  (:func:`synthesize`) draws them :data:`DEMO_NUISANCE` times and the sensor noise :data:`DEMO_NOISE`,
  larger than the eye and long-tailed sets (which reuse :func:`_patient` with the defaults): with the
  smaller nuisances a linear probe on an untrained ResNet-18 already separated the grades so well that
  the demo's "random init + 0.25" target lay above the largest AUROC, so the demo could not show what
  pretraining buys (DESIGN.md, "Demo data that shows what pretraining buys").

All images of one patient share the grade and the retinal anatomy (disc position, vessel tree);
each image has its own lesions and nuisances.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import (
    Patient,
    Sample,
    Site,
    draw_classes,
    draw_count,
    gaussian_blobs,
    save_png,
    smooth_noise,
    write_patients,
)
from medcl.data.synth.reports import fundus_report, report_rng

MODALITY = "fundus"
CLASSES: tuple[str, ...] = ("no_dr", "mild", "moderate", "severe")
TASK = "ordinal"
DEFAULT_PATIENTS = 150
DEFAULT_SIZE = 64
IMAGES_PER_PATIENT = (2, 3)
#: sensor noise std (on [0, 1]) at a nominal site, and the demo set's
NOISE = 0.012
DEMO_NOISE = 0.036
#: the demo set's acquisition nuisances (gain, gradient, colour cast, gamma, rotation) as a multiple of the defaults
DEMO_NUISANCE = 1.6

# grade -> ((red dots min, max), (exudates min, max))
_LESIONS = {0: ((0, 1), (0, 0)), 1: ((3, 6), (0, 1)), 2: ((8, 13), (1, 3)), 3: ((15, 22), (3, 6))}


def anatomy(rng: np.random.Generator) -> dict:
    """A patient's retinal anatomy in normalised fundus coordinates (FOV radius 1).

    Returns:
        dict with ``disc`` (u, v), ``macula`` (u, v) and ``vessels``: list of ``(K, 3)`` arrays of
        points ``(u, v, width)`` (width relative to the FOV radius).
    """
    side = 1.0 if rng.random() < 0.5 else -1.0  # right / left eye
    disc = np.array([side * rng.uniform(0.35, 0.5), rng.uniform(-0.1, 0.1)])
    macula = disc - np.array([side * rng.uniform(0.75, 0.85), rng.uniform(-0.05, 0.05)])
    vessels = []
    # Four arcades (superior/inferior, temporal/nasal) plus a few branches.
    for up in (1.0, -1.0):
        for temporal in (True, False):
            ang = np.arctan2(up * rng.uniform(0.6, 1.0), -side if temporal else side)
            bend = -up * (-side if temporal else side) * rng.uniform(0.025, 0.045)
            vessels.append(_walk(disc, ang, bend, 0.045, 48 if temporal else 26, rng))
    for _ in range(int(rng.integers(2, 5))):
        parent = vessels[int(rng.integers(0, len(vessels)))]
        start = parent[int(rng.integers(len(parent) // 4, max(len(parent) // 4 + 1, len(parent) * 3 // 4)))]
        ang = rng.uniform(-np.pi, np.pi)
        vessels.append(_walk(start[:2], ang, rng.uniform(-0.03, 0.03), 0.028, 18, rng))
    return {"disc": disc, "macula": macula, "vessels": vessels, "side": side}


def _walk(start, angle, bend, width, steps, rng) -> np.ndarray:
    pts = []
    p = np.array(start, dtype=float)
    for k in range(steps):
        w = width * (1.0 - 0.6 * k / steps)
        pts.append((p[0], p[1], w))
        angle += bend + rng.normal(0.0, 0.06)
        p = p + 0.035 * np.array([np.cos(angle), np.sin(angle)])
        if np.hypot(*p) > 1.05:
            break
    return np.array(pts)


def render(
    grade: int,
    rng: np.random.Generator,
    site: Site,
    size: int = DEFAULT_SIZE,
    *,
    anat: dict | None = None,
    nuisance: float = 1.0,
    signal: float = 1.0,
    drusen: int = 0,
    noise: float = NOISE,
) -> np.ndarray:
    """One fundus photograph in [0, 1].

    Args:
        grade: retinopathy grade 0..3.
        rng: generator (consumed).
        site: acquisition site.
        size: output side ``S``.
        anat: the patient's anatomy from :func:`anatomy` (drawn from ``rng`` when None).
        nuisance: multiplies nuisance amplitudes.
        signal: multiplies lesion contrast.
        noise: sensor noise std at a nominal site (the site's ``noise`` scales it).
        drusen: soft drusen around the macula (age-related macular degeneration, seen as pale yellow deposits
            larger and fainter than exudates); ``0`` draws nothing from ``rng`` (the retinopathy set is unchanged).

    Returns:
        ``(S, S, 3)`` float64 RGB image; pixels outside the field of view are 0.
    """
    anat = anat if anat is not None else anatomy(rng)
    s = int(size)
    radius = 0.47 * s
    pix = 1.0 / radius  # one pixel in normalised units
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    x = (xx - (s - 1) / 2.0) / radius
    y = (yy - (s - 1) / 2.0) / radius
    r2 = x**2 + y**2
    fov = 1.0 / (1.0 + np.exp((np.sqrt(r2) - 1.0) / (0.6 * pix)))

    # Rotation nuisance: anatomy is drawn in a rotated frame (exact, no resampling).
    th = rng.uniform(-25, 25) * nuisance * np.pi / 180.0
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])

    def to_pix(uv: np.ndarray) -> np.ndarray:  # (N, 2) normalised (u, v) -> (N, 2) (row, col)
        xy = uv @ rot.T
        return np.stack([xy[:, 1] * radius + (s - 1) / 2.0, xy[:, 0] * radius + (s - 1) / 2.0], axis=1)

    # Background: orange-red, vignetting, choroidal texture.
    tex = smooth_noise((s, s), 2.0, rng)
    base = np.array([0.82, 0.36, 0.16])
    img = base[None, None, :] * (1.0 - 0.35 * r2)[..., None] * (1.0 + 0.05 * tex)[..., None]
    # Macula (darker) and optic disc (bright yellow, with a brighter cup).
    mac = to_pix(anat["macula"][None])[0]
    dm = ((yy - mac[0]) ** 2 + (xx - mac[1]) ** 2) / (0.16 * radius) ** 2
    img = img * (1.0 - 0.35 * np.exp(-dm))[..., None]
    disc = to_pix(anat["disc"][None])[0]
    dd = np.sqrt((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (0.14 * radius)
    disc_a = 1.0 / (1.0 + np.exp((dd - 1.0) / 0.15))
    img = img * (1 - disc_a[..., None]) + disc_a[..., None] * np.array([1.0, 0.82, 0.55])
    img = img + 0.12 * np.exp(-((dd / 0.45) ** 2))[..., None]
    # Vessels: dark red, drawn as Gaussian splats along each walk.
    pts = np.concatenate(anat["vessels"])
    vmap = gaussian_blobs((s, s), to_pix(pts[:, :2]), np.maximum(pts[:, 2] * radius * 0.5, 0.35), np.full(len(pts), 0.6))
    va = np.clip(vmap, 0.0, 1.0)[..., None]
    img = img * (1 - 0.75 * va) + 0.75 * va * np.array([0.45, 0.08, 0.05])

    # Lesions: red dots (microaneurysms / haemorrhages) and yellow exudates near the macula.
    (r0, r1), (e0, e1) = _LESIONS[int(grade)]
    n_red, n_ex = int(rng.integers(r0, r1 + 1)), int(rng.integers(e0, e1 + 1))
    red_uv = _points_in_fov(n_red, rng, centre=None)
    ex_uv = _points_in_fov(n_ex, rng, centre=anat["macula"])
    red_sig = rng.uniform(0.8, 1.3, n_red) * (1.0 + 0.3 * (grade >= 3)) * s / 64.0
    red = np.clip(gaussian_blobs((s, s), to_pix(red_uv), red_sig, np.full(n_red, 0.9 * signal)), 0, 1)[..., None]
    img = img * (1 - red) + red * np.array([0.35, 0.03, 0.03])
    ex_sig = rng.uniform(0.8, 1.2, n_ex) * s / 64.0
    ex = np.clip(gaussian_blobs((s, s), to_pix(ex_uv), ex_sig, np.full(n_ex, 0.85 * signal)), 0, 1)[..., None]
    img = img * (1 - ex) + ex * np.array([0.98, 0.90, 0.45])
    if drusen:
        dr_uv = anat["macula"] + rng.normal(0.0, 0.12, (int(drusen), 2))
        dr_sig = rng.uniform(1.4, 2.0, int(drusen)) * s / 64.0
        dru = np.clip(gaussian_blobs((s, s), to_pix(dr_uv), dr_sig, np.full(int(drusen), 0.55 * signal)), 0, 1)
        img = img * (1 - dru[..., None]) + dru[..., None] * np.array([0.95, 0.85, 0.55])
    return _acquire(img, rng, site, nuisance, x, y, fov, noise)


def _acquire(img: np.ndarray, rng: np.random.Generator, site: Site, nuisance: float, x: np.ndarray,
             y: np.ndarray, fov: np.ndarray, noise: float = NOISE) -> np.ndarray:
    """Acquisition nuisances of one photograph: gain, gradient, colour cast, gamma, noise; then the FOV.

    Args:
        img: ``(S, S, 3)`` scene in [0, 1].
        rng: the generator :func:`render` is drawing from (consumed, after the scene's draws).
        site: acquisition site (gain, colour shift, noise level).
        nuisance: multiplies nuisance amplitudes.
        x: ``(S, S)`` normalised column coordinates (1 = FOV radius).
        y: ``(S, S)`` normalised row coordinates.
        fov: ``(S, S)`` soft field-of-view mask in [0, 1].
        noise: sensor noise std at a nominal site.

    Returns:
        ``(S, S, 3)`` float64 RGB in [0, 1], 0 outside the field of view.
    """
    gain = site.gain * float(np.exp(rng.normal(0.0, 0.22 * nuisance)))
    g_ang = rng.uniform(0, 2 * np.pi)
    grad = 1.0 + rng.uniform(0.0, 0.45) * nuisance * (np.cos(g_ang) * x + np.sin(g_ang) * y)
    cast = np.exp(rng.normal(0.0, 0.08 * nuisance, 3)) * (1.0 + site.shift * np.array([1.0, 0.0, -1.5]))
    gamma = float(np.exp(rng.normal(0.0, 0.15 * nuisance)))
    img = np.clip(img * gain * grad[..., None] * cast[None, None, :], 0.0, 1.0) ** gamma
    img = img + rng.normal(0.0, noise * site.noise, size=img.shape)
    return np.clip(img * fov[..., None], 0.0, 1.0)


def _points_in_fov(n: int, rng: np.random.Generator, centre) -> np.ndarray:
    """``n`` points inside radius 0.9 (around ``centre`` with spread 0.35 when given)."""
    out = []
    while len(out) < n:
        if centre is None:
            p = rng.uniform(-0.9, 0.9, 2)
        else:
            p = np.asarray(centre) + rng.normal(0.0, 0.3, 2)
        if np.hypot(*p) < 0.9:
            out.append(p)
    return np.array(out).reshape(n, 2)


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write fundus PNGs under ``out_dir`` and return manifest rows (paths relative to ``out_dir``).

    Args:
        out_dir: the modality folder (``<out>/fundus``).
        patients: number of patients (every grade present when >= 4).
        seed: user seed.
        size: image side in pixels (default 64).

    Returns:
        One dict per image: base columns plus ``grade`` (the label's index), ``eye``.
    """
    size = int(size or DEFAULT_SIZE)
    grades = draw_classes(MODALITY, patients, seed, len(CLASSES))
    return write_patients(MODALITY, CLASSES, out_dir, grades, seed, partial(
        _patient, size=size, seed=seed, nuisance=DEMO_NUISANCE, noise=DEMO_NOISE))


def _patient(p: Patient, out_dir: Path, size: int, seed: int = 0, drusen: tuple[int, int] = (0, 0),
             nuisance: float = 1.0, noise: float = NOISE) -> Iterator[Sample]:
    """One eye: its anatomy, then 2-3 photographs (one study each), each with its report.

    ``drusen``: ``(min, max)`` soft drusen per photograph (the eye set's AMD patients; see :func:`render`);
    ``nuisance``, ``noise``: the acquisition's (see :func:`render`).
    """
    rng = p.rng
    grade = int(p.label)
    anat = anatomy(rng)
    eye = "OD" if anat["side"] > 0 else "OS"
    for k in range(draw_count(rng, IMAGES_PER_PATIENT)):
        n_drusen = int(rng.integers(drusen[0], drusen[1] + 1)) if drusen[1] else 0
        img = render(grade, rng, p.site, size, anat=anat, drusen=n_drusen, nuisance=nuisance, noise=noise)
        rel = f"images/{p.stem}_img{k + 1}.png"
        save_png(img, out_dir / rel)
        report = fundus_report(grade, eye, report_rng(seed, MODALITY, p.index, k))
        yield Sample(rel, study=k, extras={"grade": str(grade), "eye": eye, "report": report})
