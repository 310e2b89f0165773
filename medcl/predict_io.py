"""What ``medcl predict`` / ``medcl embed`` read and write: the input samples and the per-sample tables.

``INPUT`` is a manifest (``.csv`` / ``.tsv`` / ``.json``, patient ids pseudonymised as they are read), a folder
(every file a reader recognises; for CT/MR every DICOM series folder is one sample) or one file; each becomes one
:class:`InputRow`. The tables have one row per input with its status, in input order. Part of
:mod:`medcl.predict`, which re-exports every name defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcl.data.manifest import load_manifest
from medcl.errors import DataError

if TYPE_CHECKING:
    from medcl.predict_model import LoadedModel

#: file endings :func:`collect_inputs` picks up in a folder, per kind of preset input
_IMAGE_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_VOLUME = (".nii", ".nii.gz", ".nrrd", ".nhdr")
_SIGNAL = (".hea",)
_MANIFEST = (".csv", ".json", ".tsv")


@dataclass
class InputRow:
    """One sample to predict: ``source`` (the path as the user gave it), the file, the pseudonymised patient."""

    source: str
    path: Path
    patient: str | None = None
    row: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class PredictResult:
    """What :func:`medcl.predict.predict` (``embed``, ``predict_masks``) wrote: the two tables and the counts."""

    samples: Path
    patients: Path | None
    n_ok: int
    n_failed: int
    model_uri: str


# ----------------------------------------------------------------------------------------------- inputs
def _is_dicom_folder(p: Path) -> bool:
    """Whether the folder ``p`` directly holds DICOM files (``.dcm`` / ``.dicom`` / ``.ima``): one series."""
    return any(f.is_file() and f.suffix.lower() in (".dcm", ".dicom", ".ima") for f in p.iterdir())


def collect_inputs(inp: str | Path, *, spatial_dims: int, signal: bool = False) -> list[InputRow]:
    """The samples of ``inp``: a manifest's rows, a folder's files (sorted), or one file.

    Args:
        inp: manifest (``.csv``/``.tsv``/``.json``), folder or file.
        spatial_dims: 3 for CT/MR presets (a folder of DICOM slices is one sample), 2 otherwise.
        signal: ECG preset (WFDB ``.hea`` records and CSV signals).

    Returns:
        One :class:`InputRow` per sample, in manifest or sorted file order.

    Raises:
        DataError: ``inp`` does not exist, or a folder holds nothing medcl can read.
    """
    p = Path(inp)
    if not p.exists():
        raise DataError("input does not exist", where=str(p), fix="pass a manifest, a folder or a file")
    if p.is_file() and p.suffix.lower() in _MANIFEST and not (signal and p.suffix.lower() == ".csv"
                                                              and not _looks_like_manifest(p)):
        m = load_manifest(p)
        return [InputRow(r.relpath, Path(r.path), r.patient, r.row, {"modality": r.modality}) for r in m.records]
    if p.is_file():
        return [InputRow(str(p), p)]
    if spatial_dims == 3 and _is_dicom_folder(p):
        return [InputRow(str(p), p)]
    rows: list[InputRow] = []
    for f in sorted(p.rglob("*")):
        name = f.name.lower()
        if f.is_dir():
            if spatial_dims == 3 and _is_dicom_folder(f):
                rows.append(InputRow(str(f), f))
            continue
        if signal:
            ok = name.endswith(_SIGNAL) or name.endswith(".csv")
        elif spatial_dims == 3:
            ok = name.endswith(_VOLUME)
        else:
            ok = name.endswith(_IMAGE_2D)
        if ok:
            rows.append(InputRow(str(f), f))
    if not rows:
        kinds = "WFDB .hea / CSV signals" if signal else ("NIfTI/NRRD files or DICOM series folders"
                                                          if spatial_dims == 3 else "PNG/JPEG/TIFF/DICOM images")
        raise DataError("the folder holds no file medcl can read for this model", where=str(p),
                        fix=f"this model reads {kinds}; or pass a manifest")
    return rows


def _check_modality(rows: list[InputRow], modality: str | None, inp: str | Path) -> None:
    """Raise DataError when a manifest row names another modality than the model's (before any work)."""
    wrong = [r for r in rows if modality and r.extra.get("modality") and r.extra["modality"] != modality]
    if wrong:
        raise DataError(f"{len(wrong)} row(s) are {wrong[0].extra['modality']!r} but the model was trained on "
                        f"{modality!r}", where=f"{inp}, row {wrong[0].row}",
                        fix=f"use only {modality} samples with this model (filter the manifest)")


def _looks_like_manifest(p: Path) -> bool:
    """A CSV whose header has ``patient_id`` and ``path`` is a manifest (an ECG CSV signal has lead columns)."""
    try:
        head = p.open(encoding="utf-8", errors="replace").readline().lower()
    except OSError:
        return False
    cols = {c.strip() for c in head.replace(";", ",").split(",")}
    return {"patient_id", "path"} <= cols


def _clear_patients(manifest: Path) -> dict[str, str]:
    """Manifest row number → the patient id as written (``--clear-ids``: the user's own output)."""
    import pandas as pd

    if manifest.suffix.lower() == ".json":
        return {}
    sep = "\t" if manifest.suffix.lower() == ".tsv" else ","
    df = pd.read_csv(manifest, sep=sep, dtype=str, keep_default_na=False)
    col = next((c for c in df.columns if c.strip().lower() == "patient_id"), None)
    if col is None:
        return {}
    return {str(i + 1): str(v) for i, v in enumerate(df[col])}


# ----------------------------------------------------------------------------------------------- tables
def _table(records: list[dict[str, Any]], rows: list[InputRow], value_cols: list[str], lm: LoadedModel) -> Any:
    """Records in input order with the fixed columns; ``row`` dropped for folders, ``patient`` when unknown.

    Args:
        records: one dict per input (``row``, ``source``, ``patient``, ``status`` and values); sorted in place.
        rows: the inputs, whose order the table follows.
        value_cols: the value columns, between ``status`` and ``model_uri``.
        lm: the model, for the ``model_uri`` and ``run_id`` columns.

    Returns:
        A pandas DataFrame.
    """
    import pandas as pd

    order = {r.source: i for i, r in enumerate(rows)}
    records.sort(key=lambda d: order.get(d["source"], 0))
    df = pd.DataFrame(records)
    for c in ("row", "source", "patient", "status", *value_cols):
        if c not in df.columns:
            df[c] = None
    df["model_uri"], df["run_id"] = lm.model_uri, lm.run_id
    df = df[["row", "source", "patient", "status", *value_cols, "model_uri", "run_id"]]
    if df["row"].isna().all():
        df = df.drop(columns=["row"])
    if not df["patient"].notna().any():
        df = df.drop(columns=["patient"])
    return df


def _write(df: Any, path: Path) -> None:
    """Write the DataFrame ``df`` as Parquet when ``path`` ends in ``.parquet``, else as CSV (no index)."""
    if path.suffix.lower() == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
