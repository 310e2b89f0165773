"""DICOM series: a folder of CT/MR slices → one volume ``(1, X, Y, Z)`` with its affine.

The folder is scanned header-only, its image files are grouped by ``SeriesInstanceUID`` (several
series in one folder must be chosen with ``series=``), the geometry of every slice is checked
before any pixel is decoded, and slices are ordered by their position along the slice normal
``n = row_cosine × column_cosine``, ``d = n · ImagePositionPatient`` — never by file name or
``InstanceNumber``. Missing slices show up as irregular gaps and are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl import phi
from medcl.errors import ReaderError
from medcl.readers.base import Sample, check_finite, make_meta, pop_options, to_float32, wrap_error
from medcl.readers.dicom_pixels import monochrome_values, pixel_array
from medcl.readers.dicom_tags import (
    FIX_GARBLED,
    dcmread,
    dicom_meta,
    infer_modality,
    pixel_spacing,
    register_phi,
    transfer_syntax,
)


def _iter_dicom_headers(folder: Path) -> list[tuple[Path, Any]]:
    """Headers (no pixels) of the DICOM image files under ``folder``; other files are skipped.

    What is skipped, and only that: hidden files, ``DICOMDIR``, files with other names than ``.dcm`` / ``.dicom``
    / ``.ima`` that are not DICOM (notes, thumbnails, ``.txt``, ``.json``), and readable DICOM objects that are not
    images (structured reports, presentation states, waveforms: no ``Rows`` and a non-image SOP class). Every
    other member that cannot be read is an error naming that file: a ``.dcm`` that is not DICOM, a corrupt
    header, a header that ends before its first data element (a truncated copy: pydicom reads it as an empty
    data set), or an image (by its SOP class) whose header stops before ``Rows``.
    """
    import pydicom

    found: list[tuple[Path, Any]] = []
    broken: list[ReaderError] = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        try:
            ds = _member_header(pydicom, folder, p)
        except ReaderError as e:  # every broken member is reported, not just the first
            broken.append(e)
            continue
        if ds is not None:
            found.append((p, ds))
    if len(broken) == 1:
        raise broken[0]
    if broken:
        shown = "; ".join(e.what.removeprefix("series member ") for e in broken[:8])
        more = f"; and {len(broken) - 8} more" if len(broken) > 8 else ""
        raise ReaderError(f"{len(broken)} series members cannot be read: {shown}{more}", where=str(folder),
                          fix=f"{FIX_GARBLED}, or remove them from the series folder")
    return found


def _member_header(pydicom: Any, folder: Path, p: Path) -> Any | None:
    """The header of one member of a series folder; ``None`` for what the folder may hold besides slices.

    Raises:
        ReaderError: the member cannot be read (the message names it).
    """
    from pydicom.errors import InvalidDicomError

    name = f"series member {p.relative_to(folder)}"
    fix = f"{FIX_GARBLED}, or remove it from the series folder"
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
    except InvalidDicomError as e:
        if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
            raise ReaderError(f"{name} is not a DICOM file (no 'DICM' marker and no readable DICOM header)",
                              where=str(p), fix=fix) from e
        return None
    except Exception as e:
        raise wrap_error(p, f"{name}: corrupt or truncated DICOM header", e, fix) from e
    if len(ds) == 0:
        raise ReaderError(f"{name} is a truncated or corrupt DICOM file: its header ends before the first data "
                          f"element ({p.stat().st_size} bytes)", where=str(p), fix=fix)
    register_phi(ds, p, name)
    if "Rows" not in ds:  # SR, presentation state, waveform: not a slice — unless it says it is an image
        sop = ds.get("SOPClassUID")
        if sop is None or "Image Storage" in getattr(sop, "name", ""):
            raise ReaderError(f"{name} is a DICOM {'image ' if sop is not None else ''}file without Rows: its "
                              f"header is truncated or incomplete ({p.stat().st_size} bytes)", where=str(p), fix=fix)
        return None
    return ds


def _series_groups(folder: Path) -> list[tuple[str, list[tuple[Path, Any]]]]:
    """DICOM image files grouped by SeriesInstanceUID, ordered by (SeriesNumber, UID)."""
    if not folder.exists():
        raise ReaderError("folder does not exist", where=str(folder), fix="check the path")
    if not folder.is_dir():
        raise ReaderError(
            "expected a folder of DICOM slices, found a file", where=str(folder),
            fix='pass the folder holding the slices, or format="dicom" for a single-file image',
        )
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds in _iter_dicom_headers(folder):
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or "unknown"), []).append((p, ds))

    def key(item):
        uid, files = item
        num = files[0][1].get("SeriesNumber", None)
        return (int(num) if num not in (None, "") else 1 << 30, uid)

    return sorted(groups.items(), key=key)


def list_series(folder: str | Path) -> list[dict[str, Any]]:
    """Describe the DICOM series in a folder (what ``series=`` can choose from).

    Returns:
        One dict per series, in the order ``series=INDEX`` uses: ``index``, ``series``
        (pseudonymised SeriesInstanceUID, ``"s-…"``), ``n_slices``, ``description``,
        ``modality``, ``series_number``, ``rows``, ``columns``.
    """
    out = []
    for i, (uid, files) in enumerate(_series_groups(Path(folder))):
        ds0 = files[0][1]
        num = ds0.get("SeriesNumber", None)
        out.append(
            {
                "index": i,
                "series": phi.pseudonymize(uid, prefix="s"),
                "n_slices": len(files),
                "description": str(ds0.get("SeriesDescription", "") or ""),
                "modality": str(ds0.get("Modality", "") or ""),
                "series_number": int(num) if num not in (None, "") else None,
                "rows": int(ds0.get("Rows", 0)),
                "columns": int(ds0.get("Columns", 0)),
            }
        )
    return out


def _describe(index: int, files) -> str:
    """One series for an error message: ``"INDEX: N slices 'description'"``."""
    desc = str(files[0][1].get("SeriesDescription", "") or "")
    return f"{index}: {len(files)} slices" + (f" {desc!r}" if desc else "")


def _choose_series(folder: Path, groups, series) -> tuple[str, list[tuple[Path, Any]]]:
    """The group that ``series`` names: an index into ``groups`` or a (clear or pseudonymised) UID.

    ``series=None`` is fine only when the folder holds exactly one series; a string of fewer than
    six digits is an index, a longer one a UID.
    """
    n = len(groups)
    if n == 0:
        raise ReaderError(
            "no DICOM image files found in the folder (empty series)",
            where=str(folder),
            fix="point the path at the folder that holds the .dcm slices",
        )
    listing = "; ".join(_describe(i, files) for i, (_, files) in enumerate(groups))
    if series is None:
        if n == 1:
            return groups[0]
        raise ReaderError(
            f"the folder holds {n} DICOM series ({listing})",
            where=str(folder),
            fix=f"choose one with series=INDEX (0..{n - 1}) or its SeriesInstanceUID "
            "(in a manifest: a `series` column), or give each series its own folder",
        )
    if isinstance(series, (int, np.integer)) or (isinstance(series, str) and series.strip().isdigit()
                                                  and len(series.strip()) < 6):
        idx = int(series)
        if not 0 <= idx < n:
            raise ReaderError(
                f"series={idx} is out of range: the folder holds {n} series ({listing})",
                where=str(folder), fix=f"use an index from 0 to {n - 1}",
            )
        return groups[idx]
    text = str(series).strip()
    for uid, files in groups:
        if text == uid or text == phi.pseudonymize(uid, prefix="s"):
            return uid, files
    raise ReaderError(
        "no series with that SeriesInstanceUID in the folder",
        where=str(folder),
        fix=f"use an index 0..{n - 1} ({listing}) or a UID listed by `medcl data inspect`",
    )


def _check_geometry(path: Path, files: list[tuple[Path, Any]]) -> tuple[np.ndarray, list[float] | None]:
    """Check on the headers alone that the slices can form one volume.

    Every slice needs ImagePositionPatient/ImageOrientationPatient, and all slices must share the
    size, orientation and pixel spacing of the first one (else the folder mixes series).

    Args:
        path: the series folder, for error messages.
        files: ``(path, header)`` of each slice, the first one being the reference.

    Returns:
        ``(iop, ps)``: the six ImageOrientationPatient cosines of the first slice, ``(6,)``, and
        its ``[row spacing, column spacing]`` (None when unknown).
    """
    first_path, first = files[0]
    missing = [str(p) for p, ds in files if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if missing:
        raise ReaderError(
            f"{len(missing)} slice(s) lack ImagePositionPatient/ImageOrientationPatient, e.g. {missing[0]}",
            where=str(path),
            fix="slices cannot be ordered safely without patient position; re-export the series with "
            "geometry tags (medcl never orders slices by file name or InstanceNumber)",
        )
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    shape = (int(first.Rows), int(first.Columns))
    ps = pixel_spacing(first)
    for p, ds in files[1:]:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise ReaderError(
                f"slices have different sizes: {shape[0]}x{shape[1]} in {first_path.name} but "
                f"{int(ds.Rows)}x{int(ds.Columns)} in {p.name}",
                where=str(path), fix="the folder mixes series (e.g. a localiser); keep one series per folder",
            )
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise ReaderError(
                f"slices have different orientations ({first_path.name} vs {p.name})",
                where=str(path), fix="the folder mixes series or a localiser; keep one series per folder",
            )
        ps_i = pixel_spacing(ds)
        if (ps is None) != (ps_i is None) or (ps is not None and not np.allclose(ps, ps_i, rtol=1e-4)):
            raise ReaderError(
                f"slices have different PixelSpacing ({ps} in {first_path.name}, {ps_i} in {p.name})",
                where=str(path), fix="the folder mixes series; keep one series per folder",
            )
    return iop, ps


def _order_slices(path: Path, files: list[tuple[Path, Any]], iop: np.ndarray,
                  spacing_tolerance: float) -> tuple[list[tuple[Path, Any]], np.ndarray, np.ndarray]:
    """Sort slices along the slice normal and check that their gaps are regular.

    Args:
        path: the series folder, for error messages.
        files: ``(path, header)`` of each slice, in any order.
        iop: the six ImageOrientationPatient cosines shared by the slices.
        spacing_tolerance: largest allowed relative deviation of a gap from the median gap.

    Returns:
        ``(files, ipps, step)``: the slices in order, their ImagePositionPatient ``(Z, 3)`` in
        that order, and the LPS step ``(3,)`` from one slice to the next (for a single slice: the
        normal times SpacingBetweenSlices, else SliceThickness, else 1 mm).
    """
    first = files[0][1]
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    ipps = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in files])
    dist = ipps @ normal
    order = np.argsort(dist, kind="stable")
    files = [files[i] for i in order]
    ipps, dist = ipps[order], dist[order]

    if len(files) > 1:
        gaps = np.diff(dist)
        if np.any(gaps < 1e-4):
            i = int(np.argmin(gaps))
            raise ReaderError(
                f"two slices at the same position ({files[i][0].name} and {files[i + 1][0].name})",
                where=str(path),
                fix="the series holds several volumes (echoes, phases or duplicates); split them into folders",
            )
        med = float(np.median(gaps))
        bad = np.nonzero(np.abs(gaps - med) > spacing_tolerance * med)[0]
        if bad.size:
            i = int(bad[0])
            raise ReaderError(
                f"inconsistent slice spacing: gap of {gaps[i]:.3g} mm between {files[i][0].name} and "
                f"{files[i + 1][0].name}, median gap {med:.3g} mm ({bad.size} irregular gap(s)); "
                "slices are missing or the series is mixed",
                where=str(path),
                fix="re-export the complete series, or raise spacing_tolerance if the scan really has "
                "variable spacing (and resample it)",
            )
        step = (ipps[-1] - ipps[0]) / (len(files) - 1)
    else:
        thick = first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0
        step = normal * float(thick)
    return files, ipps, step


def _decode_slices(path: Path, files: list[tuple[Path, Any]]) -> tuple[np.ndarray, Any]:
    """Decode the slices in order, each through its own modality LUT.

    Returns:
        ``(vol, raw_dtype)``: the float32 volume ``(1, X, Y, Z)`` (X = column index, Y = row
        index, Z = slice order) and the stored dtype of the last slice.
    """
    slices = []
    raw_dtype = None
    for p, _ in files:
        ds = dcmread(p)
        try:
            raw = pixel_array(ds, p)
        except ReaderError as e:  # name the member: a series folder's row would otherwise not say which file
            raise ReaderError(f"series member {p.relative_to(path) if p.is_relative_to(path) else p.name}: {e.what}",
                              where=e.where, fix=e.fix) from e
        if raw.ndim != 2:
            raise ReaderError(
                f"slice has pixel array shape {tuple(raw.shape)}, expected one greyscale frame",
                where=str(p), fix='read multi-frame or colour files with format="dicom"',
            )
        raw_dtype = raw.dtype
        slices.append(monochrome_values(ds, raw).T)  # (rows, cols) -> (cols, rows) = (X, Y)
    vol = np.stack(slices, axis=-1)[None]  # (1, X, Y, Z)
    check_finite(vol, path)
    vol = to_float32(vol, path)
    return vol, raw_dtype


def _affine(iop: np.ndarray, ps: list[float] | None, step: np.ndarray,
            origin: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The RAS affine and voxel spacing of a volume built by :func:`_decode_slices`.

    Args:
        iop: the six ImageOrientationPatient cosines (row cosine, then column cosine).
        ps: ``[row spacing, column spacing]`` in mm; 1 mm each when None.
        step: the LPS step between consecutive slices, ``(3,)``.
        origin: ImagePositionPatient of the first slice, ``(3,)``.

    Returns:
        ``(affine, spacing)``: the 4×4 voxel → RAS mm matrix (nibabel's DICOM convention) and
        ``[sx, sy, sz]`` in mm.
    """
    row_cos, col_cos = iop[:3], iop[3:]
    dr, dc = (ps if ps is not None else [1.0, 1.0])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc  # array axis 0: column index, moves along the row cosine
    lps[:3, 1] = col_cos * dr  # array axis 1: row index, moves along the column cosine
    lps[:3, 2] = step
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    spacing = [float(dc), float(dr), float(np.linalg.norm(step))]
    return affine, spacing


def read_dicom_series(path: Path, *, modality: str | None = None, series: int | str | None = None,
                      spacing_tolerance: float = 0.05, **options: Any) -> Sample:
    """A folder of CT/MR slices → one volume ``(1, X, Y, Z)`` in the units of the modality LUT (HU for CT).

    Slices are sorted by ``d = n · IPP`` with ``n`` the slice normal (cross product of the two
    ImageOrientationPatient cosines). The affine follows nibabel's DICOM convention (array axis
    0 runs along a row, i.e. the column index; axis 1 along a column; axis 2 along the normal)
    converted from DICOM LPS to RAS.

    Args:
        path: the folder (searched recursively; non-DICOM files are ignored).
        modality: overrides the one inferred from the ``Modality`` tag.
        series: index (see :func:`list_series`) or SeriesInstanceUID (clear or pseudonymised)
            when the folder holds more than one series.
        spacing_tolerance: largest allowed relative deviation of a slice gap from the median
            gap before the series is rejected as having missing slices.
        **options: no other option is accepted: an unknown one raises a :class:`ReaderError`.

    Returns:
        Sample, ``meta`` with ``affine`` (4×4 list), ``spacing`` ``[sx, sy, sz]``,
        ``series`` (pseudonymised UID) and ``n_slices``.

    Raises:
        ReaderError: no or ambiguous series, a multi-frame file, missing geometry tags, mixed
            series, duplicate or missing slices, or undecodable pixels.
    """
    pop_options(path, options, ("series", "spacing_tolerance"), "dicom_series")
    groups = _series_groups(path)
    uid, files = _choose_series(path, groups, series)
    if len(files) == 1 and int(files[0][1].get("NumberOfFrames", 1) or 1) > 1:
        raise ReaderError(
            "the series is a single multi-frame file, not a folder of slices",
            where=str(files[0][0]), fix='read it with format="dicom"',
        )

    first = files[0][1]  # its tags describe the series (before slices are reordered)
    iop, ps = _check_geometry(path, files)  # on the headers, before decoding any pixels
    files, ipps, step = _order_slices(path, files, iop, spacing_tolerance)
    vol, raw_dtype = _decode_slices(path, files)
    affine, spacing = _affine(iop, ps, step, ipps[0])
    ts = transfer_syntax(first)
    return Sample(
        vol,
        make_meta(
            format="dicom_series",
            modality=infer_modality(first, modality),
            array=vol,
            spacing=spacing,
            dtype=raw_dtype,
            source_format=f"DICOM series ({ts.name})" if ts is not None else "DICOM series",
            affine=affine,
            series=phi.pseudonymize(uid, prefix="s"),
            n_slices=len(files),
            n_series_in_folder=len(groups),
            pixel_spacing_known=ps is not None,
            dicom=dicom_meta(first),
        ),
    )
