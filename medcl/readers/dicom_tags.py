"""DICOM file access and tag handling: reading with PHI registration, allowed tags, geometry tags.

Every dataset read through :func:`dcmread` is registered with the PHI guard
(:func:`medcl.phi.register_dicom_phi`), and :func:`dicom_meta` copies only the tags listed in
:data:`medcl.phi.DICOM_ALLOWED_TAGS` into ``meta["dicom"]``. The remaining helpers read tags that
live either at the top level of a dataset or in the functional groups of enhanced multi-frame
objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcl import phi
from medcl.errors import PHIError, ReaderError
from medcl.readers.base import jsonable, require_file, wrap_error

#: DICOM ``Modality`` codes → medcl modality names (None for the rest).
DICOM_MODALITIES: dict[str, str] = {
    "CT": "ct",
    "MR": "mri",
    "OPT": "oct",
    "OP": "fundus",
    "SM": "histo",
    "ECG": "ecg",
    "HD": "ecg",
}

#: The ``fix`` of every error about a damaged or incomplete DICOM file.
FIX_GARBLED = "re-export the file from PACS, or check that the copy is complete"


def dcmread(path: Path, *, header_only: bool = False):
    """Read a DICOM file with pydicom, turning every failure into a :class:`ReaderError`.

    The dataset's PHI (names, ids, dates...) is registered with the PHI guard before it is returned.

    Args:
        path: the file.
        header_only: stop before the pixel data (fast scan of a folder).

    Returns:
        The ``pydicom.Dataset``.

    Raises:
        ReaderError: the file is missing, not DICOM, or has a corrupt or truncated header.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    require_file(path, "DICOM file")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as e:
        raise ReaderError(
            "not a DICOM file (no 'DICM' marker and no readable DICOM header)",
            where=str(path),
            fix=f"{FIX_GARBLED}; if it is another format, pass format= explicitly",
        ) from e
    except Exception as e:  # pydicom raises many types on damaged headers
        raise wrap_error(path, "corrupt or truncated DICOM header", e, FIX_GARBLED) from e
    register_phi(ds, path)
    return ds


def register_phi(ds: Any, path: str | Path, name: str | None = None) -> None:
    """:func:`medcl.phi.register_dicom_phi`, its failure a :class:`ReaderError` about the file ``path``.

    Args:
        ds: the file's header.
        path: the file.
        name: how to name the file in the message (e.g. ``"series member x.dcm"``; default: nothing, the row's
            path says it).
    """
    try:
        phi.register_dicom_phi(ds)
    except PHIError as e:
        raise ReaderError(f"{name + ': ' if name else ''}{e.what}", where=str(path), fix=e.fix) from e


def dicom_meta(ds) -> dict[str, Any]:
    """The allowed (non-PHI) tags of a dataset, as JSON-able values.

    Args:
        ds: a ``pydicom.Dataset``.

    Returns:
        ``{keyword: value}`` for the tags of :data:`medcl.phi.DICOM_ALLOWED_TAGS` that are present
        and not empty, in keyword order; ``TransferSyntaxUID`` comes from the file meta group.
    """
    out: dict[str, Any] = {}
    for kw in sorted(phi.DICOM_ALLOWED_TAGS):
        if kw == "TransferSyntaxUID":
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if ts is not None:
                out[kw] = str(ts)
            continue
        val = ds.get(kw, None)
        if val is None or val == "":
            continue
        out[kw] = jsonable(val)
    return out


def infer_modality(ds, given: str | None) -> str | None:
    """The medcl modality of a dataset.

    Args:
        ds: a ``pydicom.Dataset``.
        given: the caller's modality; wins when set.

    Returns:
        ``given`` lower-cased if set, else the DICOM ``Modality`` tag mapped by
        :data:`DICOM_MODALITIES` (None for codes medcl does not know).
    """
    if given:
        return given.lower()
    return DICOM_MODALITIES.get(str(ds.get("Modality", "")).upper())


def transfer_syntax(ds):
    """The dataset's ``TransferSyntaxUID`` (a ``pydicom.uid.UID``), or None without a file meta group."""
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def functional_group_values(ds, seq: str, keyword: str) -> list[float] | None:
    """Values of ``keyword`` from the per-frame or shared functional groups of a multi-frame dataset.

    Args:
        ds: a ``pydicom.Dataset``.
        seq: the functional group macro, e.g. ``"PixelValueTransformationSequence"``.
        keyword: the attribute inside it, e.g. ``"RescaleSlope"``.

    Returns:
        One value per frame when every per-frame item has it, else the single shared value in a
        one-item list, else None.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame:
        vals = []
        for item in per_frame:
            sub = item.get(seq, None)
            if not sub or keyword not in sub[0]:
                vals = []
                break
            vals.append(float(sub[0].get(keyword)))
        if vals:
            return vals
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if shared:
        sub = shared[0].get(seq, None)
        if sub and keyword in sub[0]:
            return [float(sub[0].get(keyword))]
    return None


def pixel_spacing(ds) -> list[float] | None:
    """``[row spacing, column spacing]`` in mm, or None when the dataset does not say.

    Read from ``PixelSpacing``, then ``ImagerPixelSpacing``, then the functional groups. The
    spacing *between rows* (along a column, the Y array axis) comes first.
    """
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds and ds.get(kw):
            return [float(v) for v in ds.get(kw)]
    vals = functional_group_values(ds, "PixelMeasuresSequence", "PixelSpacing")
    if vals is None:
        shared = ds.get("SharedFunctionalGroupsSequence", None)
        if shared and shared[0].get("PixelMeasuresSequence"):
            ps = shared[0].PixelMeasuresSequence[0].get("PixelSpacing")
            if ps:
                return [float(v) for v in ps]
    return None
