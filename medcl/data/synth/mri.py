"""Brain MRI-like T2-weighted volumes (NIfTI, int16) with white-matter lesions and a NIfTI mask.

* Volume ``DEFAULT_SIZE``² × ``SLICES`` with non-isotropic voxels (~6 × 6 × 7 mm; the demo is a
  heavily downsampled scan): scalp, dark skull, bright CSF rim, cortex (grey matter), darker white
  matter and bright ventricles (larger in older age groups).
* Class (binary): 1–4 T2-hyperintense white-matter lesions (ellipsoids, semi-axes 9–18 mm) present or absent.
  The mask (uint8, 1 = lesion) shares the image's shape and affine.
* Nuisances: multiplicative smooth bias field (±~30 %), per-volume intensity scale (scanner
  units, stored as int16 with no scaling), Rician noise, head position, and orientation: site-a
  writes RAS, site-b flips the first axis (LAS, negative ``affine[0, 0]``), site-c an oblique
  acquisition (tilted about the left-right axis). The anatomy is rendered in world coordinates, so
  image, mask and affine always agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import Patient, Sample, draw_classes, draw_count, save_nifti, write_patients

MODALITY = "mri"
CLASSES: tuple[str, ...] = ("no_lesion", "lesion")
TASK = "binary"
#: 160, not 40: with 40 the test split held ~8 patients, so a test AUROC moved by 0.1-0.3 with one patient and even
#: a from-scratch fine-tune could not be told from chance (benchmarks/README.md, "Demo data")
DEFAULT_PATIENTS = 160
DEFAULT_SIZE = 32
SLICES = 24
STUDIES_PER_PATIENT = (1, 2)
_SITE_SPACING = {"site-a": (6.0, 6.0, 7.0), "site-b": (5.8, 5.8, 7.5), "site-c": (6.2, 6.2, 6.5)}
_VENTRICLE_SCALE = {"40-59": 1.0, "60-74": 1.25, "75+": 1.5}


def affine_for(site: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Voxel -> RAS mm affine (centred on the head), with the site's axis flip or obliquity.

    In-plane spacing scales with ``DEFAULT_SIZE / size`` so the field of view always holds the head.
    """
    sx, sy, sz = _SITE_SPACING[site]
    sx, sy = sx * DEFAULT_SIZE / size, sy * DEFAULT_SIZE / size
    lin = np.diag([sx, sy, sz])
    if site == "site-b":
        lin = np.diag([-1.0, 1.0, 1.0]) @ lin
    elif site == "site-c":
        t = np.deg2rad(rng.uniform(5.0, 10.0))
        rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        lin = rot @ lin
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0, (SLICES - 1) / 2.0])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = -lin @ centre
    return aff


def anatomy(rng: np.random.Generator, age_group: str) -> dict:
    """A patient's head in RAS mm (semi-axes, ventricle size, lesion sites drawn later)."""
    return {
        "head": np.array([rng.uniform(64, 72), rng.uniform(80, 90), rng.uniform(60, 68)]),
        "vent": _VENTRICLE_SCALE[age_group] * rng.uniform(0.85, 1.15),
        "wm": rng.uniform(0.30, 0.38),
        "gm": rng.uniform(0.52, 0.58),
    }


def draw_lesions(anat: dict, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """1–4 white-matter lesions: ``(centre (3,), semi-axes (3,))`` in mm."""
    out = []
    hx, hy, hz = anat["head"]
    for _ in range(int(rng.integers(1, 5))):
        side = rng.choice([-1.0, 1.0])
        c = np.array([side * rng.uniform(22, 0.5 * hx), rng.uniform(-0.45, 0.35) * hy, rng.uniform(-0.1, 0.4) * hz])
        out.append((c, rng.uniform(9.0, 18.0, 3)))
    return out


def render(anat: dict, lesions, affine: np.ndarray, size: int, rng: np.random.Generator,
           shift: np.ndarray, scale: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """T2-like image (scanner units, float) and lesion mask, both ``(N, N, SLICES)``."""
    idx = np.stack(np.meshgrid(np.arange(size), np.arange(size), np.arange(SLICES), indexing="ij"), -1)
    w = idx @ affine[:3, :3].T + affine[:3, 3] - shift  # world mm of voxel centres, head frame
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    a, b, c = anat["head"]

    def soft(d, width=0.08):
        return 1.0 / (1.0 + np.exp((d - 1.0) / width))

    r = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
    head = soft(r, 0.03)
    skull = soft(r * a / (a - 6.0), 0.03)  # inside the skull's inner table
    brain = soft(r * a / (a - 9.0), 0.03)
    wm_core = soft(r * a / (a - 17.0), 0.05)
    img = 0.55 * head  # scalp
    img = img * (1 - (head - skull)) + 0.04 * (head - skull)  # dark bone
    img = img * (1 - (skull - brain)) + 0.9 * (skull - brain)  # CSF rim
    tissue = anat["gm"] * (1 - wm_core) + anat["wm"] * wm_core
    img = img * (1 - brain) + tissue * brain
    v = anat["vent"]
    for sx_ in (-1.0, 1.0):
        d = np.sqrt(((x - sx_ * 7.0 * v) / (5.0 * v)) ** 2 + ((y + 2.0) / (20.0 * v)) ** 2 + ((z - 8.0) / (9.0 * v)) ** 2)
        vent = soft(d, 0.12) * brain
        img = img * (1 - vent) + 0.95 * vent
    mask = np.zeros(img.shape, dtype=np.uint8)
    for centre, axes in lesions:
        d = np.sqrt((((w - centre) / axes) ** 2).sum(-1))
        les = soft(d, 0.12) * wm_core
        img = img * (1 - les) + 0.82 * les
        mask |= ((d <= 1.0) & (wm_core > 0.5)).astype(np.uint8)
    # Bias field: exp of a random low-order polynomial in normalised coordinates.
    u = np.stack([x / 90.0, y / 90.0, z / 90.0])
    coef = rng.normal(0.0, 0.18, 6)
    bias = np.exp(coef[0] * u[0] + coef[1] * u[1] + coef[2] * u[2] + coef[3] * u[0] * u[1]
                  + coef[4] * u[1] * u[2] + coef[5] * u[0] ** 2)
    sig = img * bias * scale
    sd = noise * scale * 0.035
    # Rician magnitude noise: |signal + complex Gaussian|.
    mag = np.sqrt((sig + rng.normal(0, sd, sig.shape)) ** 2 + rng.normal(0, sd, sig.shape) ** 2)
    return mag, mask


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write NIfTI volumes and masks under ``out_dir`` and return manifest rows.

    Args:
        out_dir: the modality folder (``<out>/mri``).
        patients: number of patients (lesions in half of them).
        seed: user seed.
        size: in-plane matrix (default 32).

    Returns:
        One dict per volume: base columns plus ``n_lesions``, ``lesion_volume_ml``.
    """
    size = int(size or DEFAULT_SIZE)
    labels = draw_classes(MODALITY, patients, seed, len(CLASSES))
    return write_patients(MODALITY, CLASSES, out_dir, labels, seed, partial(_patient, size=size))


def _patient(p: Patient, out_dir: Path, size: int) -> Iterator[Sample]:
    """One head: anatomy and lesions (when labelled), then 1-2 studies, each a volume and its mask."""
    rng = p.rng
    anat = anatomy(rng, p.age_group)
    lesions = draw_lesions(anat, rng) if int(p.label) == 1 else []
    for k in range(draw_count(rng, STUDIES_PER_PATIENT)):
        affine = affine_for(p.site.name, size, rng)
        shift = rng.uniform(-8, 8, 3)
        scale = 1000.0 * p.site.gain * float(np.exp(rng.normal(0.0, 0.3)))
        img, mask = render(anat, lesions, affine, size, rng, shift, scale, p.site.noise)
        data = np.clip(np.rint(img), 0, np.iinfo(np.int16).max).astype(np.int16)
        rel = f"images/{p.stem}_s{k + 1}.nii.gz"
        mrel = f"masks/{p.stem}_s{k + 1}.nii.gz"
        save_nifti(data, affine, out_dir / rel, unscaled=True)
        save_nifti(mask, affine, out_dir / mrel)
        vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        yield Sample(rel, study=k, mask=mrel, extras={
            "n_lesions": str(len(lesions)), "lesion_volume_ml": f"{float(mask.sum()) * vox_ml:.1f}",
        })
