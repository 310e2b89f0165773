"""Shared helpers of the demo-data synthesisers: seeding, patients, sites, image writing.

Every random draw comes from a :class:`numpy.random.Generator` seeded by
``(seed, modality code, stream, index)`` so that one modality's output does not depend on which
other modalities were requested, and the same seed always writes bit-identical files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Stable small integer per modality, mixed into every seed (never reorder).
MODALITY_CODES: dict[str, int] = {"oct": 1, "fundus": 2, "histo": 3, "ct": 4, "mri": 5, "ecg": 6}

#: Manifest columns every synthesiser writes, in this order; extra columns follow.
BASE_COLUMNS: tuple[str, ...] = (
    "patient_id", "path", "modality", "label", "mask", "study_id", "site", "sex", "age_group",
)

SEXES: tuple[str, ...] = ("F", "M")
AGE_GROUPS: tuple[str, ...] = ("40-59", "60-74", "75+")


@dataclass(frozen=True)
class Site:
    """An acquisition site: nuisance statistics differ slightly between sites.

    Attributes:
        name: site label written in the manifest.
        gain: mean multiplicative gain of the acquisition (1.0 = nominal).
        noise: relative noise / speckle level (1.0 = nominal).
        shift: small site-specific offset (colour cast, HU offset, baseline), modality-defined.
    """

    name: str
    gain: float
    noise: float
    shift: float


SITES: tuple[Site, ...] = (
    Site("site-a", gain=1.00, noise=1.00, shift=0.00),
    Site("site-b", gain=0.85, noise=1.25, shift=0.04),
    Site("site-c", gain=1.12, noise=0.85, shift=-0.03),
)


@dataclass
class Patient:
    """Per-patient latent shared by all of that patient's samples."""

    index: int
    patient_id: str
    label: int | tuple[int, ...]
    site: Site
    sex: str
    age_group: str
    rng: np.random.Generator = field(repr=False)

    @property
    def stem(self) -> str:
        """File-name stem: a plain index (``p0001``), never the patient identifier itself."""
        return f"p{self.index + 1:04d}"


def rng_for(seed: int, modality: str, *stream: int) -> np.random.Generator:
    """Independent generator for ``(seed, modality, *stream)`` (PCG64 via SeedSequence)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, MODALITY_CODES[modality], *[int(s) for s in stream]])


def patient_id(modality: str, index: int) -> str:
    """Clearly fake but identifier-shaped patient id, e.g. ``DEMO-OCT-0001``."""
    return f"DEMO-{modality.upper()}-{index + 1:04d}"


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` labels with every class present (when ``n >= n_classes``) and counts within one."""
    labels = np.arange(n) % n_classes
    return [int(v) for v in rng.permutation(labels)]


def make_patients(modality: str, n: int, seed: int, labels: Sequence[int | tuple[int, ...]]) -> list[Patient]:
    """Patients with balanced sites / sexes / age groups and one generator each.

    Args:
        modality: key of :data:`MODALITY_CODES`.
        n: number of patients.
        seed: user seed.
        labels: the per-patient latent class (length ``n``).
    """
    meta = rng_for(seed, modality, 0)
    sites = meta.permutation(np.arange(n) % len(SITES))
    sexes = meta.permutation(np.arange(n) % len(SEXES))
    ages = meta.permutation(np.arange(n) % len(AGE_GROUPS))
    return [
        Patient(
            index=i,
            patient_id=patient_id(modality, i),
            label=labels[i],
            site=SITES[int(sites[i])],
            sex=SEXES[int(sexes[i])],
            age_group=AGE_GROUPS[int(ages[i])],
            rng=rng_for(seed, modality, 1, i),
        )
        for i in range(n)
    ]


def base_row(p: Patient, modality: str, path: str, label: str, study: int, mask: str = "") -> dict[str, str]:
    """The manifest columns every modality shares."""
    return {
        "patient_id": p.patient_id,
        "path": path,
        "modality": modality,
        "label": label,
        "mask": mask,
        "study_id": f"{p.patient_id}-S{study + 1}",
        "site": p.site.name,
        "sex": p.sex,
        "age_group": p.age_group,
    }


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Clip a float image in [0, 1] and quantise it to uint8 (round half to even, deterministic)."""
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(img: np.ndarray, path: Path) -> None:
    """Write ``(H, W)`` greyscale or ``(H, W, 3)`` RGB as an 8-bit PNG (float in [0, 1] or uint8)."""
    from PIL import Image

    arr = img if img.dtype == np.uint8 else to_uint8(img)
    mode = "L" if arr.ndim == 2 else "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    # optimize=False and no metadata: PNG bytes depend only on the pixels.
    Image.fromarray(arr, mode=mode).save(path, format="PNG", optimize=False, compress_level=6)


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed white noise of ``shape`` (texture and bias fields)."""
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


def gaussian_blobs(
    shape: tuple[int, int], centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray
) -> np.ndarray:
    """Sum of isotropic 2D Gaussians ``amp * exp(-r^2 / 2 sigma^2)`` on a ``(H, W)`` grid.

    Args:
        shape: ``(H, W)``.
        centres: ``(N, 2)`` (row, col) centres in pixels.
        sigmas: ``(N,)`` standard deviations in pixels.
        amps: ``(N,)`` amplitudes.

    Returns:
        ``(H, W)`` float64 image.
    """
    h, w = shape
    out = np.zeros(shape)
    if len(centres) == 0:
        return out
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    for (cy, cx), s, a in zip(centres, sigmas, amps):
        # Evaluate inside a 4-sigma window only: O(N * s^2) instead of O(N * H * W).
        r = int(np.ceil(4 * s))
        y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 2)
        x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        d2 = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2
        out[y0:y1, x0:x1] += a * np.exp(-d2 / (2.0 * s * s))
    return out
