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

This module is the entry point and keeps every name of the command importable from here; the work is split by
concern: :mod:`medcl.predict_model` (which model, loading it), :mod:`medcl.predict_io` (the inputs and the output
tables), :mod:`medcl.predict_masks` (segmentation masks and DICOM SEG) and :mod:`medcl.predict_fusion` (a fusion
run: one row per patient from all its examinations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcl import phi
from medcl.errors import ConfigError, DataError, TrackingError

# re-exported (redundant aliases): `medcl.predict.X` stays the name of every part of the command
from medcl.predict_fusion import predict_patients as predict_patients
from medcl.predict_io import _IMAGE_2D as _IMAGE_2D
from medcl.predict_io import _MANIFEST as _MANIFEST
from medcl.predict_io import _SIGNAL as _SIGNAL
from medcl.predict_io import _VOLUME as _VOLUME
from medcl.predict_io import InputRow as InputRow
from medcl.predict_io import PredictResult as PredictResult
from medcl.predict_io import _check_modality as _check_modality
from medcl.predict_io import _clear_patients as _clear_patients
from medcl.predict_io import _is_dicom_folder as _is_dicom_folder
from medcl.predict_io import _looks_like_manifest as _looks_like_manifest
from medcl.predict_io import _table as _table
from medcl.predict_io import _write as _write
from medcl.predict_io import collect_inputs as collect_inputs
from medcl.predict_masks import _dicom_files as _dicom_files
from medcl.predict_masks import _to_original_grid as _to_original_grid
from medcl.predict_masks import predict_masks as predict_masks
from medcl.predict_masks import write_dicom_seg as write_dicom_seg
from medcl.predict_model import _RUN_ID as _RUN_ID
from medcl.predict_model import LoadedModel as LoadedModel
from medcl.predict_model import _segmenter_uri as _segmenter_uri
from medcl.predict_model import load_model as load_model
from medcl.predict_model import model_kind as model_kind
from medcl.predict_model import resolve_model_uri as resolve_model_uri
from medcl.transforms.presets import preset_info

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- predict
def _call(probs: np.ndarray, lm: LoadedModel) -> str:
    """The class name(s) at the model's operating point, for one sample's probabilities ``(K_out,)``."""
    return lm.predictor.call(probs)


def _prob_columns(lm: LoadedModel) -> list[str]:
    """The names of the model's probability columns, one per output (``p_<class>``)."""
    return lm.predictor.columns


@dataclass
class _Prepared:
    """A checked request: the model, its inputs, the clear patient ids (``--clear-ids``) and the device."""

    lm: LoadedModel
    rows: list[InputRow]
    transform: Any  # the Predictor: .prepare(path) applies the run's evaluation transforms
    clear: dict[str, str]
    device: str


def _prepare(source: str, inp: str | Path, out: Path, *, tracking_uri: str | None, batch_size: int,
             device: str | None, clear_ids: bool, suffixes: tuple[str, ...]) -> _Prepared:
    """Everything checked before any sample is read: the output name, the model, the inputs, their modality."""
    import torch

    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"cannot write {out.name!r}", where="--out", fix=f"name the output {' or '.join(suffixes)}")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1", where="--batch-size", fix="use e.g. 16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(source, tracking_uri, device)
    preset = str(lm.preprocessing["preset"])
    rows = collect_inputs(inp, spatial_dims=int(preset_info(preset).get("spatial_dims", 2)), signal=preset == "ecg")
    _check_modality(rows, lm.modality, inp)
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

    from medcl.engine.progress import StepProgress  # lazy: torch, loaded only once a model is applied

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

    Raises:
        ConfigError: a bad ``out`` suffix or ``batch_size``, or ``source`` names no model.
        TrackingError: the model cannot be found or loaded.
        DataError: the inputs cannot be collected, are of another modality, or differ in size after preprocessing.
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
    when the run's primary model was fine-tuned), with the same preprocessing as :func:`predict`. For a run with
    only a segmentation model, the segmenter's encoder (whole images) and each input's mask
    (:func:`predict_masks`, ``mask`` column).

    Args: as :func:`predict`; ``out`` is ``.parquet`` or ``.csv``.

    Returns:
        :class:`PredictResult` (no per-patient table).

    Raises:
        TrackingError: the classifier has no encoder; otherwise as :func:`predict`.
    """
    import torch

    out = Path(out)
    if model_kind(source, tracking_uri) == "segment":  # a segmentation run: its encoder's features and the masks
        if out.suffix.lower() not in (".parquet", ".csv"):
            raise ConfigError(f"cannot write {out.name!r}", where="--out", fix="name the output .parquet or .csv")
        return predict_masks(source, inp, out, tracking_uri=tracking_uri, device=device, clear_ids=clear_ids,
                             progress=progress, dicom_seg=False, features=True)
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
