"""Signal readers (ECG): WFDB records and plain CSV / NumPy files → ``(leads, T)`` float32 in mV.

(DICOM waveform ECG lives in :mod:`medcl.readers.dicom_ecg`.)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, require_file, to_float32, wrap_error

#: physical units → factor to millivolts.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def _signal_meta(fmt: str, source: str, arr: np.ndarray, fs: float, leads: list[str], units,
                 modality: str | None, dtype, **extra: Any) -> dict[str, Any]:
    return make_meta(
        format=fmt,
        modality=modality or "ecg",
        array=arr,
        spacing=[1.0 / fs],
        dtype=dtype,
        source_format=source,
        leads=leads,
        sampling_rate=float(fs),
        duration_s=arr.shape[-1] / float(fs),
        units=units,
        **extra,
    )


def read_wfdb(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """WFDB record (``.hea`` header + ``.dat`` signal files) via ``wfdb.rdrecord``.

    ``path`` may name the ``.hea``, the ``.dat`` or the record without extension. Signals come
    as wfdb's physical values (``p_signal``) converted to mV where the header's units are volts.

    Returns:
        Sample ``(leads, T)``; ``meta`` with ``leads`` (wfdb ``sig_name``), ``sampling_rate``,
        ``duration_s``, ``units``.
    """
    import wfdb

    pop_options(path, options, (), "wfdb")
    record = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header = record.with_suffix(".hea")
    require_file(header, "WFDB header (.hea)")
    _check_wfdb_members(wfdb, header, record)
    try:
        rec = wfdb.rdrecord(str(record), physical=True)
    except Exception as e:
        raise wrap_error(
            header, "cannot read WFDB record (missing or truncated .dat, or bad header)", e,
            _FIX_WFDB,
        ) from e
    if rec.p_signal is None or rec.p_signal.size == 0:
        raise ReaderError("WFDB record holds no samples", where=str(header), fix="re-export the record")
    if not (np.isfinite(float(rec.fs or 0)) and float(rec.fs or 0) > 0):
        raise ReaderError(f"WFDB header gives a sampling frequency of {rec.fs!r} Hz", where=str(header),
                          fix="fix the record line of the .hea file (name, number of signals, frequency in Hz)")
    sig = np.asarray(rec.p_signal, dtype=np.float64).T  # (leads, T)
    units = []
    for i, u in enumerate(rec.units or ["mV"] * sig.shape[0]):
        factor = _TO_MV.get(str(u).strip().lower())
        if factor is not None:
            sig[i] *= factor
            units.append("mV")
        else:
            units.append(str(u))
    out = to_float32(sig, header)
    return Sample(
        out,
        _signal_meta("wfdb", "WFDB", out, float(rec.fs), [str(n) for n in rec.sig_name],
                     units[0] if len(set(units)) == 1 else units, modality,
                     np.asarray(rec.d_signal).dtype if rec.d_signal is not None else "int16"),
    )


#: bytes per sample of the WFDB storage formats (PhysioNet "WFDB signal files"; 212 packs 2 samples in 3 bytes,
#: 310/311 pack 3 samples in 4 bytes); the FLAC formats (5xx) are compressed and have no fixed size
_WFDB_BYTES = {"8": 1, "16": 2, "61": 2, "80": 1, "160": 2, "24": 3, "32": 4, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
_FIX_WFDB = "check that the .hea and its .dat files are complete and in the same folder"


def _check_wfdb_members(wfdb: Any, header: Path, record: Path) -> None:
    """Every signal file a WFDB header names exists and holds the samples the header promises.

    wfdb itself fails on a short file with "Samples were not loaded correctly", naming neither the file nor
    the shortfall; this names each member (missing, empty or shorter than ``sig_len`` × signals × bytes per
    sample of its format, plus its byte offset). Multi-segment records and FLAC formats are left to wfdb.

    Raises:
        ReaderError: the header cannot be parsed, or members are missing or short — all of them named.
    """
    try:
        head = wfdb.rdheader(str(record))
    except Exception as e:
        raise wrap_error(header, "cannot read WFDB header", e, "fix the .hea file (record line, then one line "
                         "per signal: file name, format, gain...)") from e
    if not getattr(head, "file_name", None) or getattr(head, "seg_name", None):
        return
    files: dict[str, list[int]] = {}
    for i, name in enumerate(head.file_name):
        files.setdefault(str(name), []).append(i)
    problems = []
    for name, signals in files.items():
        member = header.parent / name
        fmt = str(head.fmt[signals[0]])
        if not member.is_file():
            problems.append(f"{name} (missing)")
        elif (size := member.stat().st_size) == 0:
            problems.append(f"{name} (empty: 0 bytes)")
        elif head.sig_len and fmt in _WFDB_BYTES:
            offset = int((head.byte_offset or [0] * len(head.file_name))[signals[0]] or 0)
            want = offset + int(np.ceil(int(head.sig_len) * len(signals) * _WFDB_BYTES[fmt]))
            if size < want:
                problems.append(f"{name} (truncated: {size} bytes, the header promises {want}: {head.sig_len} "
                                f"samples x {len(signals)} signals in format {fmt})")
    if problems:
        noun = "signal file cannot" if len(problems) == 1 else "signal files cannot"
        raise ReaderError(f"WFDB record {record.name}: {len(problems)} {noun} be read: {'; '.join(problems)}",
                          where=str(header), fix=_FIX_WFDB)


def _need_rate(path: Path, sampling_rate) -> float:
    if sampling_rate is None:
        raise ReaderError(
            "sampling_rate is required for CSV/NumPy signals (the file does not store it)",
            where=str(path),
            fix="pass sampling_rate=HZ (in a manifest: a `sampling_rate` column; on the CLI: "
            "--option sampling_rate=500)",
        )
    try:
        fs = float(sampling_rate)
    except (TypeError, ValueError):
        fs = float("nan")
    if not np.isfinite(fs) or fs <= 0:
        raise ReaderError(f"sampling_rate={sampling_rate!r} is not a positive number", where=str(path),
                          fix="pass the sampling rate in Hz, e.g. sampling_rate=500")
    return fs


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise wrap_error(path, "cannot read CSV", e, "save it as UTF-8 text with a header row of lead names") from e
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ReaderError("CSV has no data rows", where=str(path),
                          fix="write a header row of lead names, then one row per sample")
    names = [c.strip() for c in rows[0]]
    data = np.empty((len(rows) - 1, len(names)), dtype=np.float64)
    for i, r in enumerate(rows[1:]):
        if len(r) != len(names):
            raise ReaderError(
                f"data row {i + 1} has {len(r)} values but the header names {len(names)} leads",
                where=str(path), fix="every row needs one value per lead",
            )
        try:
            data[i] = [float(c) for c in r]
        except ValueError as e:
            raise ReaderError(
                f"data row {i + 1} holds a non-numeric value ({e})", where=str(path),
                fix="the first row is the header (lead names); every other value must be a number",
            ) from e
    return data.T, names


def _load_numpy(path: Path, suffix: str, key: str | None) -> np.ndarray:
    """The signal array of a ``.npy`` file, or array ``key`` of a ``.npz`` (picked when ``key`` is None).

    Raises:
        ReaderError: an ambiguous or missing ``.npz`` array, or a file NumPy cannot load (pickles
            are refused).
    """
    try:
        loaded = np.load(str(path), allow_pickle=False)
        if suffix == ".npz":
            with loaded:
                names_in = list(loaded.files)
                if key is None:
                    pick = names_in[0] if len(names_in) == 1 else next(
                        (k for k in ("signal", "ecg", "x", "data") if k in names_in), None)
                    if pick is None:
                        raise ReaderError(
                            f".npz holds several arrays ({', '.join(names_in)}) and none is called "
                            "signal/ecg/x/data", where=str(path), fix="pass key=NAME",
                        )
                elif key not in names_in:
                    raise ReaderError(f"no array {key!r} in the .npz ({', '.join(names_in)})",
                                      where=str(path), fix="pass one of the listed names as key=")
                else:
                    pick = key
                arr = np.asarray(loaded[pick])
        else:
            arr = np.asarray(loaded)
    except ReaderError:
        raise
    except Exception as e:
        raise wrap_error(path, "cannot read NumPy file (corrupt, truncated or pickled)", e,
                         "save it with numpy.save / numpy.savez (no object arrays)") from e
    return arr


def read_signal(path: Path, *, modality: str | None = None, sampling_rate: float | None = None,
                leads: list[str] | None = None, units: str = "mV", key: str | None = None,
                **options: Any) -> Sample:
    """CSV (header = lead names, one row per sample) or ``.npy`` / ``.npz`` → ``(leads, T)``.

    NumPy arrays are taken as ``(leads, T)``; a 2D array with more rows than columns is taken to be
    ``(T, leads)`` and transposed (``meta["transposed"] = True``). A 1D array is one lead.

    Args:
        path: the file.
        modality: defaults to ``"ecg"``.
        sampling_rate: Hz; required (the file does not store it).
        leads: lead names for NumPy files (default ``lead1``, ``lead2``, ...).
        units: units of the stored values (``mV``, ``uV``, ``V``); converted to mV.
        key: array name inside an ``.npz`` (default: its only array, or ``signal``/``ecg``/``x``).
        **options: no other option is accepted: an unknown one raises a :class:`ReaderError`.

    Returns:
        Sample ``(leads, T)`` with ``leads``, ``sampling_rate``, ``duration_s``, ``units``.
    """
    pop_options(path, options, ("sampling_rate", "leads", "units", "key"), "signal")
    require_file(path, "signal file")
    fs = _need_rate(path, sampling_rate)
    suffix = path.suffix.lower()
    transposed = False
    if suffix == ".csv":
        sig, names = _read_csv(path)
        dtype = np.float64
        source = "CSV"
    elif suffix in (".npy", ".npz"):
        arr = _load_numpy(path, suffix, key)
        if arr.dtype.kind not in "biuf":
            raise ReaderError(f"array has dtype {arr.dtype}, expected numbers", where=str(path),
                              fix="store the signal as a numeric array")
        dtype = arr.dtype
        if arr.ndim == 1:
            arr = arr[None]
        elif arr.ndim == 2 and arr.shape[0] > arr.shape[1]:
            arr, transposed = arr.T, True
        elif arr.ndim != 2:
            raise ReaderError(
                f"signal array has {arr.ndim} dimensions {tuple(arr.shape)}; expected (leads, T)",
                where=str(path), fix="store one recording per file as a (leads, T) array",
            )
        sig = arr.astype(np.float64)
        names = list(leads) if leads is not None else [f"lead{i + 1}" for i in range(sig.shape[0])]
        source = "NumPy"
    else:
        raise ReaderError(f"unsupported signal file type {suffix!r}", where=str(path),
                          fix="use .csv, .npy or .npz, or a WFDB record (.hea)")
    if len(names) != sig.shape[0]:
        raise ReaderError(f"{len(names)} lead names for {sig.shape[0]} leads", where=str(path),
                          fix="pass one name per lead")
    if sig.shape[1] < 2:
        raise ReaderError(f"signal has only {sig.shape[1]} sample(s)", where=str(path),
                          fix="check the layout: one row per sample, one column per lead")
    factor = _TO_MV.get(str(units).strip().lower())
    if factor is None:
        raise ReaderError(f"unknown units {units!r}", where=str(path), fix="use units='mV', 'uV' or 'V'")
    out = to_float32(sig * factor, path)
    return Sample(out, _signal_meta("signal", source, out, fs, names, "mV", modality, dtype,
                                    transposed=transposed))
