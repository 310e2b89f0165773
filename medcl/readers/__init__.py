"""File readers: every supported format → :class:`Sample` (``float32`` channel-first array + metadata).

Contract (``medcl/README.md``)::

    read(path, *, format=None, modality=None, **options) -> Sample
    detect_format(path) -> str            # one of READERS' keys
    READERS: dict[str, Reader]            # explicit registry

Readers raise only :class:`~medcl.errors.ReaderError` (which file, what, how to fix). DICOM PHI is
registered with :data:`medcl.phi.REGISTRY` and never copied into ``meta``.

============== ============================================ ==========================
format         files                                        array
============== ============================================ ==========================
dicom_series   folder of CT/MR slices                       ``(1, X, Y, Z)`` + affine
dicom          single/multi-frame DICOM image               ``(C, H, W)`` / ``(C, F, H, W)``
dicom_ecg      DICOM waveform (12-lead ECG)                 ``(leads, T)`` mV
nifti          ``.nii``, ``.nii.gz``                        ``(C, X, Y, Z)`` + affine
nrrd           ``.nrrd``, ``.nhdr``                         ``(C, X, Y, Z)`` + affine
wsi            SVS, NDPI, pyramidal TIFF, OpenSlide formats ``(3, H, W)`` overview
image          PNG, JPEG, BMP, plain TIFF                   ``(C, H, W)``
wfdb           WFDB record (``.hea`` + ``.dat``)            ``(leads, T)`` mV
signal         CSV, ``.npy``, ``.npz`` (+ ``sampling_rate``) ``(leads, T)`` mV
============== ============================================ ==========================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcl.errors import ReaderError
from medcl.lookup import did_you_mean
from medcl.readers.base import Reader, Sample
from medcl.readers.dicom import list_series, read_dicom, read_dicom_ecg, read_dicom_series
from medcl.readers.image import read_image
from medcl.readers.signal import read_signal, read_wfdb
from medcl.readers.volume import read_nifti, read_nrrd
from medcl.readers.wsi import (
    WSI_SUFFIXES,
    is_pyramidal_tiff,
    read_region,
    read_wsi,
    slide_info,
    tile_slide,
    tissue_mask,
)

READERS: dict[str, Reader] = {
    "dicom_series": Reader("dicom_series", read_dicom_series, (), "folder of CT/MR DICOM slices → (1, X, Y, Z)"),
    "dicom": Reader("dicom", read_dicom, (".dcm", ".dicom", ".ima"),
                    "single/multi-frame DICOM image → (C, H, W) or (C, F, H, W)"),
    "dicom_ecg": Reader("dicom_ecg", read_dicom_ecg, (), "DICOM waveform ECG → (leads, T) in mV"),
    "nifti": Reader("nifti", read_nifti, (".nii", ".nii.gz"), "NIfTI volume → (C, X, Y, Z)"),
    "nrrd": Reader("nrrd", read_nrrd, (".nrrd", ".nhdr"), "NRRD volume → (C, X, Y, Z)"),
    "wsi": Reader("wsi", read_wsi, WSI_SUFFIXES, "whole-slide image → (3, H, W) overview level"),
    "image": Reader("image", read_image, (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
                    "PNG/JPEG/TIFF 2D image → (C, H, W)"),
    "wfdb": Reader("wfdb", read_wfdb, (".hea", ".dat"), "WFDB record → (leads, T) in mV"),
    "signal": Reader("signal", read_signal, (".csv", ".npy", ".npz"),
                     "CSV/NumPy signal (needs sampling_rate=) → (leads, T) in mV"),
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_kind(path: Path) -> str:
    """``dicom_ecg`` for waveform objects, else ``dicom`` (reads the header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:
        return "dicom"  # the reader gives the precise error
    return "dicom_ecg" if "WaveformSequence" in ds and "Rows" not in ds else "dicom"


def detect_format(path: str | Path) -> str:
    """Guess the reader for a path from what it is (folder, magic bytes) and its suffix.

    Returns:
        A key of :data:`READERS`.

    Raises:
        ReaderError: the path does not exist or nothing recognises it.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom_series"
    suffix = _suffix(p)
    if not p.exists():
        # a WFDB record is often named without extension
        if p.with_suffix(".hea").is_file():
            return "wfdb"
        raise ReaderError("file does not exist", where=str(p),
                          fix="check the path (relative paths are resolved against the manifest's folder)")
    if suffix in (".dcm", ".dicom", ".ima") or _has_dicom_magic(p):
        return _dicom_kind(p)
    if suffix in (".tif", ".tiff"):
        return "wsi" if is_pyramidal_tiff(p) else "image"
    for name, reader in READERS.items():
        if suffix in reader.suffixes:
            return name
    if suffix == "" and p.with_suffix(".hea").is_file():
        return "wfdb"
    known = sorted({s for r in READERS.values() for s in r.suffixes})
    raise ReaderError(
        f"unknown file type {suffix or '(no suffix)'!r}",
        where=str(p),
        fix=f"pass format= (one of {', '.join(READERS)}); recognised suffixes: {', '.join(known)}",
    )


def get_reader(format: str, where: str = "") -> Reader:
    """Look a reader up by name, with a did-you-mean error."""
    try:
        return READERS[format]
    except KeyError:
        raise ReaderError(f"unknown format {format!r}{did_you_mean(format, READERS, paren=True)}",
                          where=where,
                          fix=f"use one of: {', '.join(READERS)}") from None


def read(path: str | Path, *, format: str | None = None, modality: str | None = None, **options: Any) -> Sample:
    """Read any supported file (or DICOM series folder) into a :class:`Sample`.

    Args:
        path: file or folder.
        format: a key of :data:`READERS`; detected from the path when None.
        modality: recorded in ``meta["modality"]`` (else inferred, or None).
        **options: reader options (``series=`` for ``dicom_series``, ``level=`` for ``wsi``,
            ``sampling_rate=`` for ``signal``, ...); unknown options are an error.

    Returns:
        :class:`Sample` with a ``float32`` channel-first ``array`` and JSON-able ``meta``.
    """
    p = Path(path)
    fmt = format or detect_format(p)
    reader = get_reader(fmt, where=str(p))
    return reader(p, modality=modality, **options)


__all__ = [
    "READERS",
    "Reader",
    "ReaderError",
    "Sample",
    "detect_format",
    "get_reader",
    "list_series",
    "read",
    "read_region",
    "slide_info",
    "tile_slide",
    "tissue_mask",
]
