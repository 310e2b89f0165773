"""DICOM pixel data: decoding (with clear errors), the modality LUT and MONOCHROME1 inversion.

Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg: JPEG baseline and
lossless, JPEG-LS, JPEG 2000, RLE). Greyscale values go through the modality LUT
(RescaleSlope/Intercept, a ModalityLUTSequence, or the rescale of the functional groups of an
enhanced multi-frame object); MONOCHROME1 (0 = white) is then inverted within the stored value
range so that larger is always brighter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import wrap_error
from medcl.readers.dicom_tags import FIX_GARBLED, functional_group_values, transfer_syntax

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def pixel_array(ds, path: Path) -> np.ndarray:
    """Decode the pixel data, with clear errors for missing, truncated or undecodable data.

    Args:
        ds: a ``pydicom.Dataset`` read with its pixel data.
        path: the file, for error messages.

    Returns:
        pydicom's ``pixel_array``: ``(H, W)``, ``(F, H, W)``, ``(H, W, 3)`` or ``(F, H, W, 3)``
        (YBR colour is converted to RGB by pydicom).

    Raises:
        ReaderError: no pixel data, an invalid transfer syntax, no installed decoder for it, or
            pixel data that cannot be decoded.
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        hint = ' (it holds a waveform: use format="dicom_ecg")' if "WaveformSequence" in ds else ""
        raise ReaderError(
            f"DICOM file has no pixel data{hint}",
            where=str(path),
            fix="point the manifest at an image object (not a report, SR or presentation state)",
        )
    ts = transfer_syntax(ds)
    try:
        compressed = ts is not None and bool(ts.is_compressed)
    except (ValueError, AttributeError, TypeError) as e:  # a garbled or non-transfer-syntax UID
        raise ReaderError(f"the transfer syntax {str(ts)[:64]!r} is not a valid DICOM transfer syntax",
                          where=str(path), fix=FIX_GARBLED) from e
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
            FIX_GARBLED + "; if it is compressed, try `gdcmconv --raw IN OUT`",
        ) from e
    return np.asarray(arr)


def modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    """Apply the modality LUT of a dataset to stored values.

    pydicom's ``apply_modality_lut`` (RescaleSlope/Intercept or ModalityLUTSequence), or, for
    enhanced multi-frame objects, the rescale found in the functional groups (one slope and
    intercept per frame, or one shared pair).

    Args:
        arr: stored values, ``(H, W)`` or ``(F, H, W)``.
        ds: the dataset holding the rescale tags.

    Returns:
        float64 array of the same shape (unchanged values when the dataset has no rescale).
    """
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slopes = functional_group_values(ds, "PixelValueTransformationSequence", "RescaleSlope")
    icepts = functional_group_values(ds, "PixelValueTransformationSequence", "RescaleIntercept")
    out = arr.astype(np.float64)
    if slopes is None and icepts is None:
        return out
    nf = out.shape[0] if out.ndim == 3 else 1
    s = np.ones(nf) if slopes is None else np.resize(np.asarray(slopes, dtype=float), nf)
    b = np.zeros(nf) if icepts is None else np.resize(np.asarray(icepts, dtype=float), nf)
    if out.ndim == 3:
        return out * s[:, None, None] + b[:, None, None]
    return out * s[0] + b[0]


def _stored_range(ds, data: np.ndarray) -> tuple[float, float]:
    """Range of the stored values after the modality LUT (for MONOCHROME1 inversion).

    From ``BitsStored``/``PixelRepresentation`` when the dataset has integer pixel data, else the
    range of ``data`` itself.
    """
    if "PixelData" in ds and "BitsStored" in ds:
        bits = int(ds.BitsStored)
        if int(ds.get("PixelRepresentation", 0)) == 1:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2**bits - 1
        ends = modality_lut(np.array([lo, hi], dtype=np.int64), ds)
        return float(ends.min()), float(ends.max())
    return float(np.nanmin(data)), float(np.nanmax(data))


def monochrome_values(ds, arr: np.ndarray) -> np.ndarray:
    """Greyscale values where larger is brighter: the modality LUT, then MONOCHROME1 inversion.

    MONOCHROME1 is inverted as ``out = lo + hi - x`` within the stored range ``[lo, hi]``.

    Args:
        ds: the dataset (rescale and ``PhotometricInterpretation`` tags).
        arr: stored values, ``(H, W)`` or ``(F, H, W)``.

    Returns:
        float64 array of the same shape.
    """
    out = modality_lut(arr, ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        lo, hi = _stored_range(ds, out)
        out = (lo + hi) - out
    return out
