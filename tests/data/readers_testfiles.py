"""Writers of tiny *real* test files (pydicom, tifffile, ...) shared by the reader tests.

Every DICOM written here carries fake PHI (PatientName/PatientID) so the tests can check it never
reaches ``meta``.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np

FAKE_PATIENT = "Testperson^Alice"
FAKE_MRN = "MRN-778899"


def _base_dataset(sop_class, modality: str, series_uid: str | None = None, transfer_syntax=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = FAKE_PATIENT
    ds.PatientID = FAKE_MRN
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.Manufacturer = "medcl-test"
    return ds


def _image_pixels(ds, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None):
    pixels = np.ascontiguousarray(pixels)
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    frames = pixels.shape[0] if (pixels.ndim == 3 and photometric != "RGB") or pixels.ndim == 4 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    hw = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.Rows, ds.Columns = int(hw[0]), int(hw[1])
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()


def write_ct_slice(path: Path, pixels: np.ndarray, *, ipp, iop, pixel_spacing, series_uid: str,
                   instance: int, slope: float = 1.0, intercept: float = -1024.0, modality: str = "CT",
                   description: str = "AXIAL 2.5", series_number: int = 1, thickness: float = 2.5) -> Path:
    """One CT/MR slice (``pixels`` is ``(rows, cols)`` uint16/int16)."""
    from pydicom.uid import CTImageStorage, MRImageStorage

    ds = _base_dataset(CTImageStorage if modality == "CT" else MRImageStorage, modality, series_uid)
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = thickness
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    _image_pixels(ds, pixels, bits_stored=12 if pixels.dtype == np.uint16 else None)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation matrix (z-y-x Euler angles in radians)."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def write_series(folder: Path, *, n_slices: int = 8, rows: int = 12, cols: int = 16,
                 pixel_spacing=(0.5, 0.8), gap: float = 2.5, rot=(0.3, 0.2, 0.1), origin=(-40.0, 25.0, 100.0),
                 series_uid: str | None = None, seed: int = 0, prefix: str = "", skip: tuple[int, ...] = (),
                 modality: str = "CT", description: str = "AXIAL 2.5", series_number: int = 1,
                 slopes=None, instances_in_order: bool = False) -> SimpleNamespace:
    """A shuffled, oblique series: file names and InstanceNumbers disagree with the true order.

    Slice ``k`` (k = position along the normal) holds ``1000 + 100*k + r*cols + c``-ish values so a
    test can tell which slice landed where.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rot_m = rotation(*rot)
    row_cos, col_cos, normal = rot_m[:, 0], rot_m[:, 1], rot_m[:, 2]
    rng = random.Random(seed)
    ks = [k for k in range(n_slices) if k not in skip]
    names = list(range(len(ks)))
    rng.shuffle(names)
    instances = list(range(1, len(ks) + 1))
    if not instances_in_order:
        rng.shuffle(instances)
    base = (np.arange(rows)[:, None] * cols + np.arange(cols)[None, :]).astype(np.uint16)
    truth = {}
    for j, k in enumerate(ks):
        pix = (1000 + 100 * k + base).astype(np.uint16)
        ipp = np.asarray(origin) + k * gap * normal
        slope = 1.0 if slopes is None else slopes[k]
        write_ct_slice(folder / f"{prefix}IMG{names[j]:04d}.dcm", pix, ipp=ipp,
                       iop=[*row_cos, *col_cos], pixel_spacing=pixel_spacing, series_uid=series_uid,
                       instance=instances[j], modality=modality, description=description,
                       series_number=series_number, slope=slope)
        truth[k] = pix
    return SimpleNamespace(folder=folder, uid=series_uid, truth=truth, row_cos=row_cos, col_cos=col_cos,
                           normal=normal, origin=np.asarray(origin), gap=gap, pixel_spacing=pixel_spacing,
                           rows=rows, cols=cols, n=len(ks))


def write_xray(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", slope: float = 1.0,
               intercept: float = 0.0, bits_stored: int | None = None, modality: str = "CR",
               spacing=(0.15, 0.2)) -> Path:
    """A single- or multi-frame greyscale (or RGB) DICOM image, uncompressed."""
    from pydicom.uid import ComputedRadiographyImageStorage

    ds = _base_dataset(ComputedRadiographyImageStorage, modality)
    ds.ImagerPixelSpacing = list(spacing)
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    _image_pixels(ds, pixels, photometric=photometric, bits_stored=bits_stored)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def slide_pixels(size: int = 512, seed: int = 11) -> np.ndarray:
    """RGB slide: near-white glass with a purple 'tissue' rectangle at rows 128:384, cols 64:320."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(238, 4, size=(size, size, 3)), 0, 255)
    tissue = np.clip(rng.normal([170, 90, 160], 15, size=(256, 256, 3)), 0, 255)
    img[128:384, 64:320] = tissue
    return img.astype(np.uint8)


def _levels(img: np.ndarray, n: int) -> list[np.ndarray]:
    out = [img]
    for _ in range(n - 1):
        prev = out[-1].astype(np.float32)
        out.append(((prev[0::2, 0::2] + prev[1::2, 0::2] + prev[0::2, 1::2] + prev[1::2, 1::2]) / 4)
                   .round().astype(np.uint8))
    return out
