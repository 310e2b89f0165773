"""Shared skeleton and helpers of the demo-data synthesisers: seeding, patients, sites, rows, files.

Every random draw comes from a :class:`numpy.random.Generator` seeded by
``(seed, modality code, stream, index)`` so that one modality's output does not depend on which
other modalities were requested, and the same seed always writes bit-identical files.

The skeleton every modality shares is :func:`write_patients`: per-patient classes from
:func:`draw_classes` (stream 2), one :class:`Patient` each (stream 0 for sites / sexes / age groups,
stream ``(1, index)`` for the patient's own generator), then the modality's *patient writer* draws
and writes that patient's samples and yields one :class:`Sample` per file; the skeleton turns them
into manifest rows (:func:`sample_row`). A modality module therefore holds only its image or
signal model, its file format and the per-patient writer.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Stable small integer per modality, mixed into every seed (never reorder).
MODALITY_CODES: dict[str, int] = {"oct": 1, "fundus": 2, "histo": 3, "ct": 4, "mri": 5, "ecg": 6, "cytology": 7,
                               "histo-wsi": 8, "eye": 9, "fundus-lt": 10}

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


@dataclass(frozen=True)
class Sample:
    """One written sample (file, series folder or slide), as its manifest row needs it.

    Attributes:
        path: the sample, relative to the modality folder.
        study: 0-based study index within the patient (``study_id`` is ``<patient_id>-S<study + 1>``).
        mask: the mask file relative to the modality folder, or ``""``.
        extras: the modality's extra manifest columns, in column order.
    """

    path: str
    study: int
    mask: str = ""
    extras: Mapping[str, str] = field(default_factory=dict)


#: A modality's patient writer: draws one patient's samples from ``patient.rng``, writes their
#: files under the modality folder and yields one :class:`Sample` per written sample.
PatientWriter = Callable[[Patient, Path], Iterable[Sample]]


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


def draw_classes(modality: str, n: int, seed: int, n_classes: int) -> list[int]:
    """Balanced per-patient class indices (:func:`balanced_labels`) from the modality's stream 2.

    Args:
        modality: key of :data:`MODALITY_CODES`.
        n: number of patients.
        seed: user seed.
        n_classes: number of classes (or label combinations) to balance.

    Returns:
        ``n`` indices in ``[0, n_classes)``.
    """
    return balanced_labels(n, n_classes, rng_for(seed, modality, 2))


def draw_count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """A count drawn uniformly from the inclusive range ``bounds`` (e.g. samples per patient)."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def label_name(classes: Sequence[str], label: int | tuple[int, ...]) -> str:
    """The manifest ``label``: the class name, or ``;``-joined names for a multi-label tuple."""
    if isinstance(label, tuple):
        return ";".join(classes[i] for i in label)
    return classes[int(label)]


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


def sample_row(p: Patient, modality: str, label: str, sample: Sample) -> dict[str, str]:
    """The manifest row of one sample: :func:`base_row`, then the sample's extra columns."""
    row = base_row(p, modality, sample.path, label, study=sample.study, mask=sample.mask)
    row.update(sample.extras)
    return row


def write_patients(
    modality: str,
    classes: Sequence[str],
    out_dir: str | Path,
    labels: Sequence[int | tuple[int, ...]],
    seed: int,
    write_patient: PatientWriter,
) -> list[dict]:
    """The skeleton of every synthesiser: one patient per label, each written by ``write_patient``.

    Args:
        modality: key of :data:`MODALITY_CODES`.
        classes: the modality's class names (``label`` indexes into them).
        out_dir: the modality folder; ``write_patient`` writes below it.
        labels: one latent label per patient (a class index, or a tuple of them for multi-label).
        seed: user seed.
        write_patient: the modality's writer; bind its own parameters (size, seed) with
            :func:`functools.partial`.

    Returns:
        The manifest rows of all samples, patient by patient (paths relative to ``out_dir``).
    """
    out = Path(out_dir)
    rows: list[dict] = []
    for p in make_patients(modality, len(labels), seed, labels):
        name = label_name(classes, p.label)
        rows.extend(sample_row(p, modality, name, s) for s in write_patient(p, out))
    return rows


def write_csv(path: Path, rows: list[dict], columns: Iterable[str] | None = None) -> Path:
    """Write ``rows`` as CSV: base columns first (in :data:`BASE_COLUMNS` order), then extras.

    Args:
        path: output file.
        rows: dicts of column -> str; missing cells are written empty.
        columns: explicit column order (default: base columns, then extras in first-seen order).

    Returns:
        ``path``.
    """
    if columns is None:
        cols = list(BASE_COLUMNS)
        for r in rows:
            cols.extend(k for k in r if k not in cols)
    else:
        cols = list(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n", extrasaction="raise", restval="")
        w.writeheader()
        w.writerows(rows)
    return path


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


def save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path, *, unscaled: bool = False) -> None:
    """Write ``arr`` as NIfTI-1 with ``affine`` as both qform and sform (code 1, scanner), units mm.

    Args:
        arr: voxel array (its dtype is stored).
        affine: ``(4, 4)`` voxel -> RAS mm.
        path: output file (``.nii.gz`` compresses); parent folders are created.
        unscaled: also store ``scl_slope = 1, scl_inter = 0`` (values are the stored integers).
    """
    import nibabel as nib

    nii = nib.Nifti1Image(arr, affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm")
    if unscaled:
        nii.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nii, path)


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
