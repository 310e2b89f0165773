"""Apply a trained run's model to new data: ``medcl predict`` / ``medcl embed RUN|MODEL_URI INPUT --out FILE``.

The model is the one the ``calibrate`` stage logged to MLflow (encoder → head → calibrator,
:class:`medcl.tasks.export.CalibratedClassifier`); its metadata carries the classes, the task, the
operating point and the preprocessing (the modality preset and its parameters), so new files go
through exactly the run's evaluation transforms.

``INPUT`` is a manifest (``.csv`` / ``.json``, patient ids pseudonymised as they are read), a folder
(every file a reader recognises; for CT/MR every DICOM series folder is one sample) or one file.
Every input becomes one output row with its status: a file that cannot be read is reported by name
and the others are still predicted. Two tables are written: per sample (``--out``) and, when the
input names patients, per patient (``<out stem>.patients<suffix>``: the mean of the patient's
calibrated probabilities, called at the same operating point). :func:`embed` writes the features of the
model's encoder instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ConfigError, DataError, MedclError, TrackingError

log = logging.getLogger(__name__)

#: file endings :func:`collect_inputs` picks up in a folder, per kind of preset input
_IMAGE_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_VOLUME = (".nii", ".nii.gz", ".nrrd", ".nhdr")
_SIGNAL = (".hea",)
_MANIFEST = (".csv", ".json", ".tsv")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class LoadedModel:
    """A logged classification model (:class:`medcl.tasks.export.Predictor`: the network, its classes, task,
    operating point and preprocessing) and where it came from."""

    predictor: Any
    model_uri: str
    run_id: str | None

    def __getattr__(self, name: str) -> Any:  # classes, task, model, preprocessing, input_shape, …
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    @property
    def modality(self) -> str | None:
        return self.predictor.meta.get("modality")

    @property
    def operating_point(self) -> dict[str, Any]:
        return self.predictor.meta.get("operating_point") or {}


@dataclass
class InputRow:
    """One sample to predict: ``source`` (the path as the user gave it), the file, the pseudonymised patient."""

    source: str
    path: Path
    patient: str | None = None
    row: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- model
def resolve_model_uri(source: str, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """``(model URI, pipeline run id or None)`` for a pipeline run id, a ``runs:/`` / ``models:/`` URI or a
    local MLflow model folder.

    Raises:
        ConfigError: ``source`` is none of those.
        TrackingError: the run does not exist or has no classification model.
    """
    if "://" in source or source.startswith(("runs:/", "models:/")):
        m = re.match(r"runs:/([0-9a-f]{32})/", source)
        return source, m.group(1) if m else None
    p = Path(source)
    if p.is_dir() and (p / "MLmodel").is_file():
        return str(p.resolve()), None
    if not _RUN_ID.fullmatch(source):
        raise ConfigError(f"{source!r} is not a run id, a model URI or a model folder", where="medcl predict RUN",
                          fix="pass the pipeline's MLflow run id (printed at the end of `medcl run`), "
                          "runs:/<run id>/model, models:/<name>/<version>, or a folder with an MLmodel file")
    from medcl.tracking.reader import RunReader

    reader = RunReader(source, tracking_uri)
    stage = reader.stages.get("calibrate")
    if stage is None:
        raise TrackingError(f"run {reader.run_id} has no classification model", where=f"run {reader.run_id}",
                            fix="predict needs a run with the classify and calibrate stages (the calibrate stage "
                            "logs the model); pass another run, or a model URI")
    return f"runs:/{stage.run_id}/model", reader.run_id


def load_model(source: str, tracking_uri: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load the calibrated classifier behind ``source`` (see :func:`resolve_model_uri`) with its metadata."""
    from medcl.tracking.mlflow_tracker import default_tracking_uri
    from medcl.tracking.pyfunc import load_predictor

    uri = tracking_uri or default_tracking_uri()
    model_uri, run_id = resolve_model_uri(source, uri)
    try:
        predictor, _ = load_predictor(model_uri, uri, device)
    except MedclError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the cause
        raise TrackingError(f"cannot load the model {model_uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where=f"tracking store {uri}",
                            fix="check the run id / URI and --tracking-uri (MLFLOW_TRACKING_URI)") from None
    return LoadedModel(predictor, model_uri, run_id)


# ----------------------------------------------------------------------------------------------- inputs
def _is_dicom_folder(p: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in (".dcm", ".dicom", ".ima") for f in p.iterdir())


def collect_inputs(inp: str | Path, *, spatial_dims: int, signal: bool = False) -> list[InputRow]:
    """The samples of ``inp``: a manifest's rows, a folder's files (sorted), or one file.

    Args:
        inp: manifest (``.csv``/``.tsv``/``.json``), folder or file.
        spatial_dims: 3 for CT/MR presets (a folder of DICOM slices is one sample), 2 otherwise.
        signal: ECG preset (WFDB ``.hea`` records and CSV signals).

    Raises:
        DataError: ``inp`` does not exist, or a folder holds nothing medcl can read.
    """
    p = Path(inp)
    if not p.exists():
        raise DataError("input does not exist", where=str(p), fix="pass a manifest, a folder or a file")
    if p.is_file() and p.suffix.lower() in _MANIFEST and not (signal and p.suffix.lower() == ".csv"
                                                              and not _looks_like_manifest(p)):
        from medcl.data.manifest import load_manifest

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


def _looks_like_manifest(p: Path) -> bool:
    """A CSV whose header has ``patient_id`` and ``path`` is a manifest (an ECG CSV signal has lead columns)."""
    try:
        head = p.open(encoding="utf-8", errors="replace").readline().lower()
    except OSError:
        return False
    cols = {c.strip() for c in head.replace(";", ",").split(",")}
    return {"patient_id", "path"} <= cols


# ----------------------------------------------------------------------------------------------- predict
@dataclass
class PredictResult:
    """What :func:`predict` wrote: the two tables and the counts."""

    samples: Path
    patients: Path | None
    n_ok: int
    n_failed: int
    model_uri: str


def _call(probs: np.ndarray, lm: LoadedModel) -> str:
    """The class name(s) at the model's operating point, for one sample's probabilities ``(K_out,)``."""
    return lm.predictor.call(probs)


def _prob_columns(lm: LoadedModel) -> list[str]:
    return lm.predictor.columns


@dataclass
class _Prepared:
    lm: LoadedModel
    rows: list[InputRow]
    transform: Any  # the Predictor: .prepare(path) applies the run's evaluation transforms
    clear: dict[str, str]
    device: str


def _prepare(source: str, inp: str | Path, out: Path, *, tracking_uri: str | None, batch_size: int,
             device: str | None, clear_ids: bool, suffixes: tuple[str, ...]) -> _Prepared:
    """Everything checked before any sample is read: the output name, the model, the inputs, their modality."""
    import torch

    from medcl.transforms.presets import preset_info

    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"cannot write {out.name!r}", where="--out", fix=f"name the output {' or '.join(suffixes)}")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1", where="--batch-size", fix="use e.g. 16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(source, tracking_uri, device)
    preset = str(lm.preprocessing["preset"])
    rows = collect_inputs(inp, spatial_dims=int(preset_info(preset).get("spatial_dims", 2)), signal=preset == "ecg")
    if lm.modality:
        wrong = [r for r in rows if r.extra.get("modality") and r.extra["modality"] != lm.modality]
        if wrong:
            raise DataError(f"{len(wrong)} row(s) are {wrong[0].extra['modality']!r} but the model was trained on "
                            f"{lm.modality!r}", where=f"{inp}, row {wrong[0].row}",
                            fix=f"use only {lm.modality} samples with this model (filter the manifest)")
    clear = _clear_patients(Path(inp)) if clear_ids and rows and rows[0].row is not None else {}
    log.info("%d sample(s), model %s (%s, %s), batch %d on %s", len(rows), lm.model_uri, lm.task, preset,
             batch_size, device)
    return _Prepared(lm, rows, lm.predictor, clear, device)


def _batches(p: _Prepared, batch_size: int, progress: bool, what: str):
    """Yield ``(rows read, their preprocessed batch (B, C, *S) or None, rows that failed with their status)``.

    A file that cannot be read, or is not of the kind the model takes, is a failed row (its error, PHI-redacted);
    the others of the batch are still returned.
    """
    import torch

    from medcl import phi
    from medcl.engine.progress import StepProgress

    n_batches = (len(p.rows) + batch_size - 1) // batch_size
    with StepProgress(n_batches, what, enabled=progress, log_every=max(1, n_batches // 10)) as bar:
        for b in range(n_batches):
            xs, ok, failed = [], [], []
            for r in p.rows[b * batch_size:(b + 1) * batch_size]:
                base = {"row": r.row, "source": r.source,
                        "patient": p.clear.get(str(r.row), r.patient) if p.clear else r.patient}
                try:
                    x = p.transform.prepare(r.path, r.source)  # the run's evaluation transforms, shape checked
                except Exception as exc:  # noqa: BLE001 - one bad file is a row with its error; the others run
                    msg = phi.redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
                    failed.append({**base, "status": f"error: {msg}"})
                    log.warning("%s: %s: %s", what, phi.redact(r.source), msg)
                    continue
                xs.append(x)
                ok.append(base)
            if xs and len({tuple(x.shape) for x in xs}) > 1:
                raise DataError(f"samples of different sizes after preprocessing: "
                                f"{sorted({tuple(x.shape) for x in xs})[:3]}", where=what,
                                fix="the model's preset must crop/resize to one size (spatial_size)")
            yield ok, (torch.stack(xs).to(p.device) if xs else None), failed
            bar.update(b + 1, {})


def _table(records: list[dict[str, Any]], rows: list[InputRow], value_cols: list[str], lm: LoadedModel) -> Any:
    """Records in input order with the fixed columns; ``row`` dropped for folders, ``patient`` when unknown."""
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


def predict(source: str, inp: str | Path, out: str | Path, *, tracking_uri: str | None = None, batch_size: int = 16,
            device: str | None = None, clear_ids: bool = False, progress: bool = True) -> PredictResult:
    """Predict every sample of ``inp`` with the model of ``source`` and write the tables.

    Args:
        source: pipeline run id, ``runs:/…`` / ``models:/…`` URI or a local MLflow model folder.
        inp: manifest, folder or file (see :func:`collect_inputs`).
        out: the per-sample table, ``.csv`` or ``.parquet``.
        tracking_uri: MLflow store (default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        batch_size: samples per forward pass.
        device: ``cpu``, ``cuda`` … (default: CUDA when present).
        clear_ids: write the manifest's patient ids in clear (the user's own output), not pseudonymised.
        progress: progress bar.

    Returns:
        :class:`PredictResult`.
    """

    out = Path(out)
    p = _prepare(source, inp, out, tracking_uri=tracking_uri, batch_size=batch_size, device=device,
                 clear_ids=clear_ids, suffixes=(".csv", ".parquet"))
    lm, cols = p.lm, _prob_columns(p.lm)
    records: list[dict[str, Any]] = []
    for ok, x, failed in _batches(p, batch_size, progress, "predict"):
        records += failed
        if x is None:
            continue
        probs = lm.predictor.probabilities(x)
        records += [{**base, "status": "ok", **{c: float(v) for c, v in zip(cols, pr)}, "predicted": _call(pr, lm)}
                    for base, pr in zip(ok, probs)]
    df = _table(records, p.rows, [*cols, "predicted"], lm)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(df, out)
    patients_path = None
    if "patient" in df.columns:
        good = df[df["status"] == "ok"]
        per = good.groupby("patient", sort=True)[cols].mean().reset_index()
        per.insert(1, "n_samples", good.groupby("patient", sort=True).size().to_numpy())
        per["predicted"] = [_call(np.asarray(v, dtype=np.float64), lm) for v in per[cols].to_numpy()]
        per["model_uri"], per["run_id"] = lm.model_uri, lm.run_id
        patients_path = out.with_name(f"{out.stem}.patients{out.suffix}")
        _write(per, patients_path)
    n_failed = int((df["status"] != "ok").sum())
    return PredictResult(out, patients_path, len(df) - n_failed, n_failed, lm.model_uri)


def embed(source: str, inp: str | Path, out: str | Path, *, tracking_uri: str | None = None, batch_size: int = 16,
          device: str | None = None, clear_ids: bool = False, progress: bool = True) -> PredictResult:
    """Encoder features of every sample of ``inp``: one row per input, ``f0 … f{D-1}`` (pooled, float32).

    The encoder is the one inside the run's logged classifier (the pretrained encoder, or the fine-tuned one
    when the run's primary model was fine-tuned), with the same preprocessing as :func:`predict`.

    Args: as :func:`predict`; ``out`` is ``.parquet`` or ``.csv``.
    """
    import torch

    out = Path(out)
    p = _prepare(source, inp, out, tracking_uri=tracking_uri, batch_size=batch_size, device=device,
                 clear_ids=clear_ids, suffixes=(".parquet", ".csv"))
    encoder = getattr(p.lm.model, "encoder", None)
    if encoder is None:
        raise TrackingError(f"the model {p.lm.model_uri} has no encoder to take features from", where=p.lm.model_uri,
                            fix="embed needs a classifier logged by medcl's calibrate stage")
    records: list[dict[str, Any]] = []
    dim = 0
    for ok, x, failed in _batches(p, batch_size, progress, "embed"):
        records += failed
        if x is None:
            continue
        with torch.no_grad():
            f = encoder(x)
            f = (f.flatten(2).mean(-1) if f.ndim > 2 else f).float().cpu().numpy()
        dim = f.shape[1]
        records += [{**base, "status": "ok", **{f"f{j}": float(v) for j, v in enumerate(row)}}
                    for base, row in zip(ok, f)]
    df = _table(records, p.rows, [f"f{j}" for j in range(dim)], p.lm)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(df, out)
    n_failed = int((df["status"] != "ok").sum())
    return PredictResult(out, None, len(df) - n_failed, n_failed, p.lm.model_uri)


def _write(df: Any, path: Path) -> None:
    if path.suffix.lower() == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


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
