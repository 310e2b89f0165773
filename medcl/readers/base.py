"""What every reader shares: its :class:`Sample`, its :class:`Reader` entry, the error checks.

The checks turn library failures into :class:`~medcl.errors.ReaderError` (which file, what, how
to fix).

Array conventions (see ``medcl/README.md``): 2D images ``(C, H, W)``, volumes ``(C, X, Y, Z)``
with a RAS ``affine``, signals ``(leads, T)`` in mV; always ``float32``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import MedclError, ReaderError
from medcl.lookup import did_you_mean


@dataclass
class Sample:
    """One decoded file.

    Attributes:
        array: ``float32`` channel-first array (``(C, H, W)``, ``(C, X, Y, Z)`` or ``(leads, T)``).
        meta: JSON-able metadata; always ``format``, ``modality``, ``spacing``, ``shape``,
            ``dtype`` (the dtype stored in the file) and ``source_format``.
    """

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reader:
    """A registry entry: the function that decodes one format, and what it accepts.

    Attributes:
        name: registry key (``"dicom_series"``, ``"nifti"``, ...).
        fn: ``fn(path: Path, *, modality: str | None, **options) -> Sample``.
        suffixes: file-name endings this reader claims in :func:`detect_format`.
        summary: one line for ``--help`` and error messages.
    """

    name: str
    fn: Callable[..., Sample]
    suffixes: tuple[str, ...]
    summary: str

    def __call__(self, path: str | Path, *, modality: str | None = None, **options: Any) -> Sample:
        """Run the reader; anything but a :class:`~medcl.errors.MedclError` becomes a :class:`ReaderError`.

        The readers turn the failures they know into precise errors; this is the safety net for
        garbled values nobody anticipated (found by fuzzing), so that a damaged file is reported
        as one line about that file instead of stopping a whole validation with a traceback.
        """
        p = Path(path)
        try:
            return self.fn(p, modality=modality, **options)
        except MedclError:
            raise
        except MemoryError as e:
            raise ReaderError("not enough memory to decode the file (its header may claim absurd dimensions)",
                              where=str(p), fix="check the file (re-export it), or lower data.max_voxels") from e
        except Exception as e:  # noqa: BLE001 - the reader contract: only ReaderError leaves a reader
            raise wrap_error(p, f"cannot decode the file: garbled or unexpected values for the {self.name} reader",
                             e, "re-export the file; if other software opens it, please report a medcl bug") from e


def require_file(path: Path, what: str = "file") -> None:
    """Raise a :class:`ReaderError` if ``path`` is not an existing, non-empty regular file."""
    if not path.exists():
        raise ReaderError(
            f"{what} does not exist", where=str(path), fix="check the path (relative paths are resolved "
            "against the manifest's folder)"
        )
    if not path.is_file():
        raise ReaderError(
            f"expected a {what}, found a folder", where=str(path),
            fix='pass a file, or format="dicom_series" for a folder of DICOM slices',
        )
    if path.stat().st_size == 0:
        raise ReaderError("file is empty (0 bytes)", where=str(path), fix="re-export or re-copy the file")


def check_finite(array: np.ndarray, path: Path) -> None:
    """Raise a :class:`ReaderError` saying how many values are NaN or infinite."""
    if array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(array.size - finite.sum() - n_nan)
        raise ReaderError(
            f"{n_nan} NaN and {n_inf} infinite values out of {array.size}",
            where=str(path),
            fix="fix or mask the missing values at the source (or drop this file from the manifest)",
        )


def to_float32(array: np.ndarray, path: Path) -> np.ndarray:
    """Cast to contiguous ``float32`` and reject NaN/Inf (also those created by overflow)."""
    out = np.ascontiguousarray(array, dtype=np.float32)
    check_finite(out, path)
    return out


def jsonable(value: Any) -> Any:
    """Convert numpy / pydicom values to plain JSON types (lists, floats, ints, strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple, MutableSequence)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    # pydicom DSfloat / IS subclass float / int and UID subclasses str (handled above);
    # anything else (PersonName, Decimal) becomes its text.
    return str(value)


def make_meta(
    *,
    format: str,
    modality: str | None,
    array: np.ndarray,
    spacing: Sequence[float] | None,
    dtype: Any,
    source_format: str,
    **extra: Any,
) -> dict[str, Any]:
    """Build the metadata dict every reader returns (JSON-able)."""
    meta: dict[str, Any] = {
        "format": format,
        "modality": modality.lower() if isinstance(modality, str) else None,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "shape": [int(s) for s in array.shape],
        "dtype": str(np.dtype(dtype)) if dtype is not None else str(array.dtype),
        "source_format": source_format,
    }
    meta.update({k: jsonable(v) for k, v in extra.items()})
    return meta


def wrap_error(path: Path, what: str, exc: BaseException, fix: str) -> ReaderError:
    """A :class:`ReaderError` for a library exception (the exception text is kept, shortened)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return ReaderError(f"{what} ({type(exc).__name__}: {text})", where=str(path), fix=fix)


def pop_options(path: Path, options: dict[str, Any], allowed: Sequence[str], reader: str) -> dict[str, Any]:
    """Reject options a reader does not know, suggesting the closest valid one.

    Args:
        path: the file (for the error).
        options: the leftover ``**options`` the reader did not take as keyword arguments.
        allowed: the reader's option names (for the suggestion and the list in the fix).
        reader: reader name.
    """
    if options:
        key = next(iter(options))
        raise ReaderError(
            f"unknown option {key!r} for the {reader} reader{did_you_mean(key, allowed, paren=True)}",
            where=str(path),
            fix=f"valid options: {', '.join(allowed) if allowed else 'none'}",
        )
    return dict(options)
