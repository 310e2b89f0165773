"""Abdominal CT-like series (DICOM, one file per slice) with a liver lesion and a NIfTI mask.

* Volume: ``DEFAULT_SIZE``² pixels × ``SLICES`` axial slices of a coarse abdomen (the demo is a
  heavily downsampled CT: ~11–12 mm pixels, 10 mm slices): air (-1000 HU), a body ellipse of soft
  tissue (~40 HU) with a subcutaneous fat ring (-100 HU), the liver (~55 HU) on the patient's
  right, the aorta (~150 HU) and a vertebral body (~600 HU); Gaussian noise.
* Class (binary): a hypodense, roughly spherical liver lesion (0–25 HU, radius 30–50 mm) is
  present or absent. The mask (NIfTI, uint8, 1 = lesion) covers every voxel whose centre lies in
  the lesion.
* Nuisances: body size and table position, pixel spacing (field of view), noise level and a
  small HU calibration offset (site), follow-up studies re-positioned.
* DICOM: CT Image Storage, explicit VR little endian, MONOCHROME2, 16-bit stored values with
  ``HU = stored * RescaleSlope + RescaleIntercept``; the storage differs per site as real
  scanners do: site-a uint16 / slope 1 / intercept -1024, site-b int16 / slope 1 / intercept 0,
  site-c uint16 / slope 0.5 / intercept -1024. ImageOrientationPatient is axial
  ``[1,0,0,0,1,0]``, ImagePositionPatient steps by ``SpacingBetweenSlices`` along the normal,
  PixelSpacing is ``[row, column]`` spacing. File names are random-looking (not in slice order)
  and site-b numbers instances from the top slice down, so only positions give the order.
  Headers carry clearly fake but realistic PHI (``DEMO^PATIENT0001``, ``DEMO-CT-0001``, birth
  date, accession number, institution, physicians) — readers must drop them.
* Mask geometry: array ``(X=columns, Y=rows, Z=slices sorted along the slice normal)``; affine
  = the DICOM geometry in LPS converted to RAS (``diag(-1, -1, 1)``). Manifest ``path`` is the
  series folder, ``mask`` the NIfTI file.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import Patient, Sample, draw_classes, draw_count, save_nifti, write_patients

MODALITY = "ct"
CLASSES: tuple[str, ...] = ("no_lesion", "lesion")
TASK = "binary"
#: 160, not 40: with 40 the test split held ~8 patients, so a test AUROC moved by 0.1-0.3 with one patient and even
#: a from-scratch fine-tune could not be told from chance (benchmarks/README.md, "Demo data")
DEFAULT_PATIENTS = 160
DEFAULT_SIZE = 32
SLICES = 16
STUDIES_PER_PATIENT = (1, 2)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: per-site storage: (pixel representation, slope, intercept, field of view mm, noise HU, HU offset)
_SITE_STORAGE = {
    "site-a": (0, 1.0, -1024.0, 370.0, 12.0, 0.0),
    "site-b": (1, 1.0, 0.0, 390.0, 16.0, 4.0),
    "site-c": (0, 0.5, -1024.0, 355.0, 10.0, -3.0),
}


def anatomy(rng: np.random.Generator) -> dict:
    """A patient's abdomen in LPS millimetres relative to the table centre."""
    return {
        "body": np.array([rng.uniform(140, 170), rng.uniform(100, 125)]),  # semi-axes x, y
        "fat": rng.uniform(10, 22),
        "liver_c": np.array([rng.uniform(-75, -55), rng.uniform(-15, 5), rng.uniform(-15, 15)]),
        "liver_r": np.array([rng.uniform(60, 75), rng.uniform(55, 70), rng.uniform(60, 80)]),
        "liver_hu": rng.uniform(50, 62),
        "tissue_hu": rng.uniform(35, 45),
    }


def render(
    anat: dict,
    lesion: dict | None,
    rng: np.random.Generator,
    size: int,
    spacing: tuple[float, float, float],
    offset: np.ndarray,
    noise: float,
    hu_offset: float,
) -> tuple[np.ndarray, np.ndarray]:
    """HU volume and lesion mask.

    Args:
        anat: from :func:`anatomy`.
        lesion: ``{"c": (3,) mm, "r": mm, "hu": HU}`` (centre relative to the liver centre) or None.
        rng: generator (noise).
        size: in-plane matrix ``N``.
        spacing: ``(col mm, row mm, slice mm)``.
        offset: ``(3,)`` table shift of the patient in mm.
        noise: noise standard deviation in HU.
        hu_offset: calibration offset added to every non-air voxel.

    Returns:
        ``(hu, mask)``: float32 and uint8 arrays of shape ``(N, N, SLICES)`` indexed ``(x=col, y=row, z)``.
    """
    n, nz = int(size), SLICES
    sx, sy, sz = spacing
    x = (np.arange(n) - (n - 1) / 2.0)[:, None, None] * sx - offset[0]
    y = (np.arange(n) - (n - 1) / 2.0)[None, :, None] * sy - offset[1]
    z = (np.arange(nz) - (nz - 1) / 2.0)[None, None, :] * sz - offset[2]

    def soft(d: np.ndarray) -> np.ndarray:  # inside (d < 1) with ~half-voxel partial volume
        return 1.0 / (1.0 + np.exp((d - 1.0) / 0.06))

    a, b = anat["body"]
    body = soft(np.sqrt((x / a) ** 2 + (y / b) ** 2) + 0 * z)
    inner = soft(np.sqrt((x / (a - anat["fat"])) ** 2 + (y / (b - anat["fat"])) ** 2) + 0 * z)
    hu = -1000.0 + body * (900.0 + inner * (anat["tissue_hu"] + 100.0))  # air -> fat -> tissue
    lc, lr = anat["liver_c"], anat["liver_r"]
    liver = soft(np.sqrt(((x - lc[0]) / lr[0]) ** 2 + ((y - lc[1]) / lr[1]) ** 2 + ((z - lc[2]) / lr[2]) ** 2))
    liver = liver * inner
    hu = hu + liver * (anat["liver_hu"] - anat["tissue_hu"])
    aorta = soft(np.sqrt((x - 15.0) ** 2 + (y - 45.0) ** 2) / 12.0 + 0 * z)
    spine = soft(np.sqrt((x / 22.0) ** 2 + ((y - 75.0) / 20.0) ** 2) + 0 * z)
    hu = hu + aorta * (150.0 - anat["tissue_hu"]) + spine * (600.0 - anat["tissue_hu"])
    mask = np.zeros(hu.shape, dtype=np.uint8)
    if lesion is not None:
        c = lc + lesion["c"]
        d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / lesion["r"]
        inside = soft(d) * liver
        hu = hu + inside * (lesion["hu"] - anat["liver_hu"])
        mask = ((d <= 1.0) & (liver > 0.5)).astype(np.uint8)
    hu = hu + body * hu_offset + rng.normal(0.0, noise, hu.shape) * (0.3 + 0.7 * body)
    return hu.astype(np.float32), mask


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write DICOM series and NIfTI masks under ``out_dir`` and return manifest rows.

    Args:
        out_dir: the modality folder (``<out>/ct``).
        patients: number of patients (lesion present in half of them).
        seed: user seed (also the entropy of every UID).
        size: in-plane matrix (default 32).

    Returns:
        One dict per series: base columns plus ``lesion_volume_ml``. (UIDs are
        identifiers under DICOM de-identification, so they stay in the headers only.)
    """
    size = int(size or DEFAULT_SIZE)
    labels = draw_classes(MODALITY, patients, seed, len(CLASSES))
    return write_patients(MODALITY, CLASSES, out_dir, labels, seed, partial(_patient, size=size, seed=seed))


def _patient(p: Patient, out_dir: Path, size: int, seed: int) -> Iterator[Sample]:
    """One abdomen: anatomy and lesion (when labelled), then 1-2 studies, each a series and its mask."""
    rng = p.rng
    anat = anatomy(rng)
    rep, slope, intercept, fov, noise, hu_off = _SITE_STORAGE[p.site.name]
    lesion = None
    if int(p.label) == 1:
        lr = anat["liver_r"]
        lesion = {"c": rng.uniform(-0.45, 0.45, 3) * lr, "r": rng.uniform(30, 50), "hu": rng.uniform(0, 25)}
    for k in range(draw_count(rng, STUDIES_PER_PATIENT)):
        px = fov * rng.uniform(0.97, 1.03) / size
        dz = 10.0
        spacing = (px, px, dz)
        offset = np.array([rng.uniform(-15, 15), rng.uniform(-20, 10), rng.uniform(-15, 15)])
        les = None
        if lesion is not None:
            les = dict(lesion, r=lesion["r"] * (1.0 + 0.15 * k))  # follow-up: the lesion grew
        hu, mask = render(anat, les, rng, size, spacing, offset, noise, hu_off)
        series_rel = f"series/{p.stem}_s{k + 1}"
        mask_rel = f"masks/{p.stem}_s{k + 1}.nii.gz"
        _write_series(out_dir / series_rel, hu, spacing, p, k, seed, rep, slope, intercept, rng)
        save_nifti(mask, ras_affine(spacing, z0=-(SLICES - 1) / 2.0 * dz, size=size), out_dir / mask_rel)
        vol = float(mask.sum()) * px * px * dz / 1000.0
        yield Sample(series_rel, study=k, mask=mask_rel, extras={"lesion_volume_ml": f"{vol:.1f}"})


def lps_affine(spacing: tuple[float, float, float], z0: float, size: int) -> np.ndarray:
    """4×4 LPS affine of voxel ``(col, row, slice)`` for the geometry :func:`_write_series` writes."""
    sx, sy, sz = spacing
    origin = np.array([-(size - 1) / 2.0 * sx, -(size - 1) / 2.0 * sy, z0])
    aff = np.eye(4)
    aff[:3, 0] = [sx, 0, 0]  # row direction cosine (1,0,0) * column spacing
    aff[:3, 1] = [0, sy, 0]  # column direction cosine (0,1,0) * row spacing
    aff[:3, 2] = [0, 0, sz]  # slice normal * slice spacing
    aff[:3, 3] = origin
    return aff


def ras_affine(spacing: tuple[float, float, float], z0: float, size: int) -> np.ndarray:
    """:func:`lps_affine` converted to RAS (nibabel/NIfTI convention): ``diag(-1, -1, 1, 1) @ LPS``."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine(spacing, z0, size)


def _phi(p: Patient) -> dict:
    """Clearly fake, realistic-looking patient/institution tags (readers must drop them)."""
    n = p.index + 1
    year = {"40-59": 1972, "60-74": 1957, "75+": 1944}[p.age_group] - (n % 7)
    return {
        "PatientName": f"DEMO^PATIENT{n:04d}",
        "PatientID": p.patient_id,
        "PatientBirthDate": f"{year}{1 + n % 12:02d}{1 + n % 28:02d}",
        "PatientSex": p.sex,
        "AccessionNumber": f"DEMOACC{n:06d}",
        "InstitutionName": f"Demo General Hospital {p.site.name[-1].upper()}",
        "InstitutionAddress": f"{n} Synthetic Street, Demo City",
        "ReferringPhysicianName": "DEMO^REFERRER",
        "OperatorsName": "DEMO^TECHNOLOGIST",
        "OtherPatientIDs": f"DEMO-MRN-{n:06d}",
    }


def _write_series(folder: Path, hu, spacing, p: Patient, study: int, seed: int, rep: int, slope: float,
                  intercept: float, rng: np.random.Generator) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ent = ["medcl-synth", "ct", str(seed), p.patient_id, str(study)]
    study_uid = generate_uid(entropy_srcs=[*ent, "study"])
    series_uid = generate_uid(entropy_srcs=[*ent, "series"])
    frame_uid = generate_uid(entropy_srcs=[*ent, "frame"])
    sx, sy, sz = spacing
    n = hu.shape[0]
    z0 = -(SLICES - 1) / 2.0 * sz
    stored = np.rint((hu - intercept) / slope)
    dtype = np.int16 if rep == 1 else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)
    date = f"2024{1 + p.index % 12:02d}{1 + (p.index + 7 * study) % 28:02d}"
    names = [f"{int(v):08x}.dcm" for v in rng.choice(16**8, size=SLICES, replace=False)]
    for k in range(SLICES):
        sop_uid = generate_uid(entropy_srcs=[*ent, "sop", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        for key, val in _phi(p).items():
            setattr(ds, key, val)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = f"{study + 1}"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + p.index % 8:02d}{(7 * p.index) % 60:02d}00"
        ds.Modality = "CT"
        ds.Manufacturer = "medcl-synth"
        ds.ManufacturerModelName = f"Demo CT {p.site.name}"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SeriesDescription = "ABD PORTAL VENOUS 10mm"
        ds.SeriesNumber = 2
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "FFS"
        # Site-b counts instances from the top slice down: instance order != position order.
        ds.InstanceNumber = (SLICES - k) if p.site.name == "site-b" else (k + 1)
        pos_z = z0 + k * sz
        ds.ImagePositionPatient = [f"{-(n - 1) / 2.0 * sx:.4f}", f"{-(n - 1) / 2.0 * sy:.4f}", f"{pos_z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # [row spacing, column spacing]
        ds.SliceThickness = f"{sz:.2f}"
        ds.SpacingBetweenSlices = f"{sz:.2f}"
        ds.SliceLocation = f"{pos_z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = n
        ds.Columns = n
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = rep
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        # Stored pixels are (rows, columns) = hu[:, :, k].T since hu is indexed (col, row, slice).
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return str(series_uid)
