"""``medcl data inspect PATH``: what a file is, as a JSON-able dict and as readable lines.

Reads the file with :func:`medcl.readers.read` and summarises the array (shape, range,
mean) and the metadata a user checks before training: modality, spacing, affine, ECG leads and
sampling rate, slide levels. For a folder with several DICOM series it lists the series instead
of failing, so the user can pick one with ``--option series=N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers import detect_format, list_series, read
from medcl.readers.base import jsonable

#: meta keys copied into the inspect result when present.
_COPY_KEYS = (
    "affine", "leads", "sampling_rate", "duration_s", "units", "levels", "dimensions", "downsamples",
    "mpp", "objective_power", "level", "source_format", "series", "n_slices", "frames", "photometric",
    "channels",
)


def inspect_path(path: str | Path, *, format: str | None = None, modality: str | None = None,
                 **options: Any) -> dict[str, Any]:
    """Summarise one file (or DICOM series folder).

    Args:
        path: file or folder.
        format: a reader name (key of :data:`medcl.readers.READERS`); detected when None.
        modality: passed to the reader, which records it (else infers it from the file, or None).
        **options: reader options, as for :func:`medcl.readers.read` (``series=`` picks one series
            of a DICOM folder that holds several).

    Returns:
        JSON-able dict with ``path``, ``format``, ``modality``, ``shape`` (channel-first),
        ``spacing``, ``dtype`` (as stored in the file), ``min``, ``max``, ``mean``, ``std``; plus
        ``affine`` for volumes, ``leads`` / ``sampling_rate`` / ``duration_s`` for signals,
        ``levels`` / ``dimensions`` / ``mpp`` for slides, ``series`` (list) for DICOM folders.

    Raises:
        ReaderError: the file cannot be read.
    """
    p = Path(path)
    fmt = format or detect_format(p)
    series_list = None
    if fmt == "dicom_series":
        series_list = list_series(p)
        if len(series_list) > 1 and options.get("series") is None:
            return jsonable({
                "path": str(p),
                "format": fmt,
                "modality": modality,
                "shape": None,
                "spacing": None,
                "dtype": None,
                "min": None,
                "max": None,
                "mean": None,
                "series": series_list,
                "note": f"{len(series_list)} series in this folder; choose one with series=INDEX",
            })
    sample = read(p, format=fmt, modality=modality, **options)
    arr = np.asarray(sample.array)
    meta = sample.meta
    info: dict[str, Any] = {
        "path": str(p),
        "format": meta.get("format", fmt),
        "modality": meta.get("modality"),
        "shape": list(arr.shape),
        "spacing": meta.get("spacing"),
        "dtype": meta.get("dtype", str(arr.dtype)),
        "min": float(arr.min()) if arr.size else None,
        "max": float(arr.max()) if arr.size else None,
        "mean": float(arr.mean(dtype=np.float64)) if arr.size else None,
        "std": float(arr.std(dtype=np.float64)) if arr.size else None,
    }
    for key in _COPY_KEYS:
        if key in meta and key not in info:
            info[key] = meta[key]
    if series_list is not None:
        info["series_in_folder"] = series_list
    if "dicom" in meta:
        info["dicom"] = meta["dicom"]
    return jsonable(info)


def _fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _fmt_list(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, (list, tuple)):
        return " x ".join(_fmt_num(x) for x in v)
    return _fmt_num(v)


def format_inspect(info: dict[str, Any]) -> str:
    """Human-readable lines for an :func:`inspect_path` result."""
    lines = [f"path:          {info.get('path', '')}"]
    lines.append(f"format:        {info.get('format')}"
                 + (f" ({info['source_format']})" if info.get("source_format") else ""))
    lines.append(f"modality:      {info.get('modality') or 'unknown'}")
    if info.get("note"):
        lines.append(f"note:          {info['note']}")
    for s in info.get("series") if isinstance(info.get("series"), list) else []:
        desc = f" {s['description']!r}" if s.get("description") else ""
        lines.append(f"  series {s['index']}: {s['n_slices']} slices, {s.get('modality', '')}{desc} "
                     f"({s['rows']}x{s['columns']}, {s['series']})")
    if info.get("shape") is None:
        return "\n".join(lines)
    lines.append(f"shape:         {_fmt_list(info.get('shape'))} (channel-first)")
    sp = info.get("spacing")
    unit = "s" if info.get("sampling_rate") else "mm"
    lines.append(f"spacing:       {_fmt_list(sp)}{'' if sp is None else ' ' + unit}")
    lines.append(f"stored dtype:  {info.get('dtype')}")
    lines.append(f"values:        min {_fmt_num(info.get('min'))}, max {_fmt_num(info.get('max'))}, "
                 f"mean {_fmt_num(info.get('mean'))}, std {_fmt_num(info.get('std'))}")
    if info.get("affine") is not None:
        lines.append("affine (RAS):")
        for row in info["affine"]:
            lines.append("    [" + ", ".join(f"{float(v):9.3f}" for v in row) + "]")
    if info.get("sampling_rate") is not None:
        lines.append(f"sampling rate: {_fmt_num(info['sampling_rate'])} Hz, duration "
                     f"{_fmt_num(info.get('duration_s'))} s, units {info.get('units')}")
        lines.append(f"leads:         {', '.join(str(x) for x in info.get('leads') or [])}")
    if info.get("levels") is not None:
        dims = ", ".join(f"{w}x{h}" for w, h in info.get("dimensions") or [])
        lines.append(f"levels:        {info['levels']} ({dims}); shown: level {info.get('level')}")
        lines.append(f"mpp:           {_fmt_num(info.get('mpp'))} um/pixel at level 0, objective "
                     f"{_fmt_num(info.get('objective_power'))}x")
    if info.get("n_slices") is not None:
        lines.append(f"slices:        {info['n_slices']} (series {info.get('series')})")
    return "\n".join(lines)


__all__ = ["inspect_path", "format_inspect", "ReaderError"]
