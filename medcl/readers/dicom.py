"""DICOM readers: slice series (CT/MR), single/multi-frame images (X-ray, OCT, ...), waveform ECG.

pydicom is used directly (not MONAI's ``PydicomReader``) because every pitfall listed in
DESIGN.md lives here and needs exact control:

* slices are ordered by their position along the slice normal
  ``n = row_cosine × column_cosine``, ``d = n · ImagePositionPatient`` — never by file name or
  ``InstanceNumber``;
* ``PixelSpacing`` is ``[row spacing, column spacing]``: the spacing *between rows* (along a
  column, i.e. the Y array axis) comes first;
* MONOCHROME1 (0 = white) is inverted after the modality LUT, within the stored value range;
* several series in one folder are told apart by ``SeriesInstanceUID`` and must be chosen.

Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg: JPEG baseline and
lossless, JPEG-LS, JPEG 2000, RLE). Every dataset read is registered with the PHI guard and only
tags in :data:`medcl.phi.DICOM_ALLOWED_TAGS` are copied into ``meta["dicom"]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medcl import phi
from medcl.errors import ReaderError
from medcl.readers.base import (
    Sample,
    check_finite,
    jsonable,
    make_meta,
    pop_options,
    require_file,
    to_float32,
    wrap_error,
)

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

_FIX_GARBLED = "re-export the file from PACS, or check that the copy is complete"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# --------------------------------------------------------------------------- helpers


def dcmread(path: Path, *, header_only: bool = False):
    """Read a DICOM file with pydicom, turning every failure into a :class:`ReaderError`.

    Args:
        path: the file.
        header_only: stop before the pixel data (fast scan of a folder).
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
            fix=f"{_FIX_GARBLED}; if it is another format, pass format= explicitly",
        ) from e
    except Exception as e:  # pydicom raises many types on damaged headers
        raise wrap_error(path, "corrupt or truncated DICOM header", e, _FIX_GARBLED) from e
    phi.register_dicom_phi(ds)
    return ds


def dicom_meta(ds) -> dict[str, Any]:
    """The allowed (non-PHI) tags of a dataset, as JSON-able values."""
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
    """``given`` if set, else the DICOM ``Modality`` tag mapped by :data:`DICOM_MODALITIES`."""
    if given:
        return given.lower()
    return DICOM_MODALITIES.get(str(ds.get("Modality", "")).upper())


def _transfer_syntax(ds):
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def pixel_array(ds, path: Path) -> np.ndarray:
    """Decode the pixel data, with clear errors for missing, truncated or undecodable data.

    Returns:
        pydicom's ``pixel_array``: ``(H, W)``, ``(F, H, W)``, ``(H, W, 3)`` or ``(F, H, W, 3)``
        (YBR colour is converted to RGB by pydicom).
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        hint = ' (it holds a waveform: use format="dicom_ecg")' if "WaveformSequence" in ds else ""
        raise ReaderError(
            f"DICOM file has no pixel data{hint}",
            where=str(path),
            fix="point the manifest at an image object (not a report, SR or presentation state)",
        )
    ts = _transfer_syntax(ds)
    try:
        compressed = ts is not None and bool(ts.is_compressed)
    except (ValueError, AttributeError, TypeError) as e:  # a garbled or non-transfer-syntax UID
        raise ReaderError(f"the transfer syntax {str(ts)[:64]!r} is not a valid DICOM transfer syntax",
                          where=str(path), fix=_FIX_GARBLED) from e
    if compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
            available = decoder.is_available
            missing = "; ".join(decoder.missing_dependencies) if not available else ""
        except NotImplementedError:
            available, missing = False, "pydicom has no decoder for it"
        if not available:
            raise ReaderError(
                f"cannot decode compressed pixel data: transfer syntax {ts.name} ({ts}): {missing}",
                where=str(path),
                fix="install a pydicom pixel-data plugin for it (e.g. pylibjpeg-libjpeg, "
                "pylibjpeg-openjpeg, pylibjpeg-rle or python-gdcm), or decompress the file first "
                "with `gdcmconv --raw IN OUT`",
            )
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = f" ({ts.name})" if ts is not None else ""
        raise wrap_error(
            path,
            f"pixel data cannot be decoded{syntax}: truncated or corrupt",
            e,
            _FIX_GARBLED + "; if it is compressed, try `gdcmconv --raw IN OUT`",
        ) from e
    return np.asarray(arr)


def _modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    """pydicom's modality LUT (RescaleSlope/Intercept or ModalityLUTSequence), plus the enhanced
    multi-frame case where rescale lives in the functional groups."""
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slopes = _functional_group_values(ds, "PixelValueTransformationSequence", "RescaleSlope")
    icepts = _functional_group_values(ds, "PixelValueTransformationSequence", "RescaleIntercept")
    out = arr.astype(np.float64)
    if slopes is None and icepts is None:
        return out
    nf = out.shape[0] if out.ndim == 3 else 1
    s = np.ones(nf) if slopes is None else np.resize(np.asarray(slopes, dtype=float), nf)
    b = np.zeros(nf) if icepts is None else np.resize(np.asarray(icepts, dtype=float), nf)
    if out.ndim == 3:
        return out * s[:, None, None] + b[:, None, None]
    return out * s[0] + b[0]


def _functional_group_values(ds, seq: str, keyword: str) -> list[float] | None:
    """Values of ``keyword`` from per-frame (one per frame) or shared functional groups."""
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


def _stored_range(ds, data: np.ndarray) -> tuple[float, float]:
    """Range of the stored values after the modality LUT (for MONOCHROME1 inversion)."""
    if "PixelData" in ds and "BitsStored" in ds:
        bits = int(ds.BitsStored)
        if int(ds.get("PixelRepresentation", 0)) == 1:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2**bits - 1
        ends = _modality_lut(np.array([lo, hi], dtype=np.int64), ds)
        return float(ends.min()), float(ends.max())
    return float(np.nanmin(data)), float(np.nanmax(data))


def monochrome_values(ds, arr: np.ndarray) -> np.ndarray:
    """Modality LUT, then MONOCHROME1 inversion ``out = lo + hi - x`` within the stored range."""
    out = _modality_lut(arr, ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        lo, hi = _stored_range(ds, out)
        out = (lo + hi) - out
    return out


def _pixel_spacing(ds) -> list[float] | None:
    """``[row spacing, column spacing]`` in mm (PixelSpacing, ImagerPixelSpacing or functional groups)."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds and ds.get(kw):
            return [float(v) for v in ds.get(kw)]
    vals = _functional_group_values(ds, "PixelMeasuresSequence", "PixelSpacing")
    if vals is None:
        shared = ds.get("SharedFunctionalGroupsSequence", None)
        if shared and shared[0].get("PixelMeasuresSequence"):
            ps = shared[0].PixelMeasuresSequence[0].get("PixelSpacing")
            if ps:
                return [float(v) for v in ps]
    return None


# --------------------------------------------------------------------------- single / multi-frame


def read_dicom(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """Single- or multi-frame DICOM image (CR/DX X-ray, OCT, fundus, secondary capture...).

    Greyscale goes through the modality LUT (RescaleSlope/Intercept) and MONOCHROME1 is inverted
    so that larger is brighter; colour stays RGB in its stored range.

    Args:
        path: the ``.dcm`` file.
        modality: overrides the one inferred from the ``Modality`` tag.

    Returns:
        Sample with ``array`` ``(C, H, W)`` (C = 1 or 3) or ``(C, F, H, W)`` for multi-frame;
        ``meta["spacing"]`` ``[row_mm, col_mm]`` (multi-frame: ``[frame_mm, row_mm, col_mm]``,
        frame spacing 1.0 when the file does not say), None when the file has no spacing.
    """
    pop_options(path, options, (), "dicom")
    ds = dcmread(path)
    raw = pixel_array(ds, path)
    spp = int(ds.get("SamplesPerPixel", 1))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)

    if spp == 1:
        values = monochrome_values(ds, raw)
        arr = values[None]  # (1, H, W) or (1, F, H, W)
    else:
        values = raw.astype(np.float64)
        if values.shape[-1] == 4:  # ARGB / CMYK (retired) — keep three colour samples
            values = values[..., :3]
        arr = np.moveaxis(values, -1, 0)  # (3, H, W) or (3, F, H, W)
    expected_ndim = 4 if n_frames > 1 else 3
    if arr.ndim != expected_ndim:
        raise ReaderError(
            f"decoded pixel array has shape {tuple(raw.shape)}, not what NumberOfFrames={n_frames} "
            f"and SamplesPerPixel={spp} imply",
            where=str(path),
            fix=_FIX_GARBLED,
        )
    out = to_float32(arr, path)
    spacing = _pixel_spacing(ds)
    if spacing is not None and n_frames > 1:
        fz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None)
        if fz is None:
            fz = (_functional_group_values(ds, "PixelMeasuresSequence", "SpacingBetweenSlices") or [1.0])[0]
        spacing = [float(fz), *spacing]
    ts = _transfer_syntax(ds)
    return Sample(
        out,
        make_meta(
            format="dicom",
            modality=infer_modality(ds, modality),
            array=out,
            spacing=spacing,
            dtype=raw.dtype,
            source_format=f"DICOM ({ts.name})" if ts is not None else "DICOM",
            frames=n_frames,
            photometric=str(ds.get("PhotometricInterpretation", "")),
            dicom=dicom_meta(ds),
        ),
    )


# --------------------------------------------------------------------------- series


def _iter_dicom_headers(folder: Path) -> list[tuple[Path, Any]]:
    """Headers (no pixels) of the DICOM image files under ``folder``; other files are skipped.

    A file ending in ``.dcm`` that cannot be parsed is an error (it is meant to be DICOM);
    files with other names that are not DICOM (notes, thumbnails) are ignored.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: list[tuple[Path, Any]] = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except InvalidDicomError as e:
            if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
                raise ReaderError(
                    "not a DICOM file (no 'DICM' marker and no readable DICOM header)",
                    where=str(p), fix=f"{_FIX_GARBLED}, or remove it from the series folder",
                ) from e
            continue
        except Exception as e:
            raise wrap_error(p, "corrupt or truncated DICOM header", e,
                             f"{_FIX_GARBLED}, or remove it from the series folder") from e
        phi.register_dicom_phi(ds)
        if "Rows" not in ds:  # SR, presentation state, waveform: not a slice
            continue
        found.append((p, ds))
    return found


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
    desc = str(files[0][1].get("SeriesDescription", "") or "")
    return f"{index}: {len(files)} slices" + (f" {desc!r}" if desc else "")


def _choose_series(folder: Path, groups, series) -> tuple[str, list[tuple[Path, Any]]]:
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

    Returns:
        Sample, ``meta`` with ``affine`` (4×4 list), ``spacing`` ``[sx, sy, sz]``,
        ``series`` (pseudonymised UID) and ``n_slices``.
    """
    pop_options(path, options, ("series", "spacing_tolerance"), "dicom_series")
    groups = _series_groups(path)
    uid, files = _choose_series(path, groups, series)
    if len(files) == 1 and int(files[0][1].get("NumberOfFrames", 1) or 1) > 1:
        raise ReaderError(
            "the series is a single multi-frame file, not a folder of slices",
            where=str(files[0][0]), fix='read it with format="dicom"',
        )

    # geometry checks on the headers, before decoding any pixels
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
    ps = _pixel_spacing(first)
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
        ps_i = _pixel_spacing(ds)
        if (ps is None) != (ps_i is None) or (ps is not None and not np.allclose(ps, ps_i, rtol=1e-4)):
            raise ReaderError(
                f"slices have different PixelSpacing ({ps} in {first_path.name}, {ps_i} in {p.name})",
                where=str(path), fix="the folder mixes series; keep one series per folder",
            )
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

    # decode pixels in slice order; each slice through its own modality LUT
    slices = []
    raw_dtype = None
    for p, _ in files:
        ds = dcmread(p)
        raw = pixel_array(ds, p)
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

    dr, dc = (ps if ps is not None else [1.0, 1.0])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc  # array axis 0: column index, moves along the row cosine
    lps[:3, 1] = col_cos * dr  # array axis 1: row index, moves along the column cosine
    lps[:3, 2] = step
    lps[:3, 3] = ipps[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    spacing = [float(dc), float(dr), float(np.linalg.norm(step))]
    ts = _transfer_syntax(first)
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


# --------------------------------------------------------------------------- waveform ECG

#: Channel sensitivity units → factor to millivolts.
_TO_MV = {"uv": 1e-3, "µv": 1e-3, "mv": 1.0, "v": 1e3, "nv": 1e-6}


def _lead_name(item, index: int) -> str:
    """'Lead I (Einthoven)' → 'I', 'Lead aVR' → 'aVR', 'Lead V1' → 'V1'; else label or chN."""
    src = item.get("ChannelSourceSequence", None)
    meaning = str(src[0].get("CodeMeaning", "")) if src else ""
    if meaning:
        m = re.match(r"^\s*lead\s+([^\s(]+)", meaning, re.IGNORECASE)
        return m.group(1) if m else meaning.strip()
    label = str(item.get("ChannelLabel", "") or "")
    return label or f"ch{index + 1}"


def read_dicom_ecg(path: Path, *, modality: str | None = None, group: int = 0, **options: Any) -> Sample:
    """DICOM waveform (12-lead ECG and other WaveformSequence objects) → ``(leads, T)`` in mV.

    Physical value = ``raw × ChannelSensitivity × ChannelSensitivityCorrectionFactor +
    ChannelBaseline`` (PS3.3 C.10.9.1.4), then converted from the sensitivity units (µV, mV, V)
    to mV. Channels in other units (e.g. pressure) keep their units.

    Args:
        path: the ``.dcm`` file.
        modality: defaults to ``"ecg"``.
        group: which multiplex group of WaveformSequence (0 = first, usually the rhythm strip).

    Returns:
        Sample; ``meta`` with ``leads``, ``sampling_rate`` (Hz), ``duration_s``, ``units``,
        ``spacing`` ``[1 / sampling_rate]`` (seconds per sample).
    """
    pop_options(path, options, ("group",), "dicom_ecg")
    ds = dcmread(path)
    seq = ds.get("WaveformSequence", None)
    if not seq:
        raise ReaderError(
            "DICOM file has no WaveformSequence (not a waveform object)",
            where=str(path), fix='read images with format="dicom"',
        )
    if not 0 <= int(group) < len(seq):
        raise ReaderError(
            f"group={group} is out of range: the file has {len(seq)} waveform group(s)",
            where=str(path), fix=f"use group=0..{len(seq) - 1}",
        )
    item = seq[int(group)]
    required = ("NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
                "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData")
    missing = [k for k in required if k not in item]
    if missing:
        raise ReaderError(f"waveform group {group} lacks {', '.join(missing)}", where=str(path),
                          fix=_FIX_GARBLED)
    n_ch, n_s = int(item.NumberOfWaveformChannels), int(item.NumberOfWaveformSamples)
    expected = n_ch * n_s * int(item.WaveformBitsAllocated) // 8
    if len(item.WaveformData) < expected:
        raise ReaderError(
            f"WaveformData is truncated: {len(item.WaveformData)} bytes, {expected} expected for "
            f"{n_ch} channels x {n_s} samples",
            where=str(path), fix=_FIX_GARBLED,
        )
    from pydicom.waveforms import multiplex_array

    try:
        raw = multiplex_array(ds, int(group), as_raw=True)  # (T, channels)
    except Exception as e:
        raise wrap_error(path, "waveform data cannot be decoded", e, _FIX_GARBLED) from e
    chans = list(item.get("ChannelDefinitionSequence", []) or [])
    if len(chans) != n_ch:
        raise ReaderError(
            f"ChannelDefinitionSequence has {len(chans)} items for {n_ch} channels",
            where=str(path), fix=_FIX_GARBLED,
        )
    sig = np.empty((n_ch, n_s), dtype=np.float64)
    leads, units = [], []
    for i, ch in enumerate(chans):
        sens = float(ch.get("ChannelSensitivity", 1.0) or 1.0)
        corr = float(ch.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        base = float(ch.get("ChannelBaseline", 0.0) or 0.0)
        useq = ch.get("ChannelSensitivityUnitsSequence", None)
        unit = str(useq[0].get("CodeValue", "")) if useq else ("uV" if "ChannelSensitivity" in ch else "")
        values = raw[:, i].astype(np.float64) * sens * corr + base
        factor = _TO_MV.get(unit.lower())
        if factor is not None:
            values = values * factor
            unit = "mV"
        sig[i] = values
        leads.append(_lead_name(ch, i))
        units.append(unit or "unknown")
    out = to_float32(sig, path)
    fs = float(item.SamplingFrequency)
    return Sample(
        out,
        make_meta(
            format="dicom_ecg",
            modality=(modality or "ecg"),
            array=out,
            spacing=[1.0 / fs],
            dtype=raw.dtype,
            source_format="DICOM waveform",
            leads=leads,
            sampling_rate=fs,
            duration_s=n_s / fs,
            units=units[0] if len(set(units)) == 1 else units,
            n_groups=len(seq),
            dicom=dicom_meta(ds),
        ),
    )
