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
    when the run's primary model was fine-tuned), with the same preprocessing as :func:`predict`. For a run with
    only a segmentation model, the segmenter's encoder (whole images) and each input's mask
    (:func:`predict_masks`, ``mask`` column).

    Args: as :func:`predict`; ``out`` is ``.parquet`` or ``.csv``.
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


# ----------------------------------------------------------------------------------------------- segmentation
def model_kind(source: str, tracking_uri: str | None = None, task: str = "auto") -> str:
    """``classify`` or ``segment``: what ``medcl predict`` applies for ``source``.

    ``task="auto"``: a run with a calibrated classifier predicts classes, a run with only a segmentation model
    segments; a model URI or folder by its metadata. ``task="segment"`` / ``"classify"`` asks for one.

    Raises:
        ConfigError: an unknown ``task``.
        TrackingError: the run has no model of that kind.
    """
    if task not in ("auto", "classify", "segment"):
        raise ConfigError(f"unknown task {task!r}", where="--task", fix="use auto, classify or segment")
    if not _RUN_ID.fullmatch(source):
        if task != "auto":
            return task
        from medcl.tracking.pyfunc import model_metadata

        try:
            kind = model_metadata(resolve_model_uri(source, tracking_uri)[0], tracking_uri).get("kind")
        except MedclError:  # an unreadable URI is reported by the loader, with its cause
            kind = None
        return "segment" if kind == "segmenter" else "classify"
    from medcl.tracking.reader import RunReader

    stages = RunReader(source, tracking_uri).stages
    has = {"classify": "calibrate" in stages, "segment": "segment" in stages}
    if task == "auto":
        task = "classify" if has["classify"] else ("segment" if has["segment"] else "classify")
    if not has[task] and task == "segment":
        raise TrackingError(f"run {source} has no segmentation model", where=f"run {source}",
                            fix="segmentation needs a run with the segment stage; pass another run or --task classify")
    return task


def _segmenter_uri(source: str, tracking_uri: str | None) -> tuple[str, str | None]:
    if not _RUN_ID.fullmatch(source):
        return resolve_model_uri(source, tracking_uri)
    from medcl.tracking.reader import RunReader

    reader = RunReader(source, tracking_uri)
    return f"runs:/{reader.stages['segment'].run_id}/segmenter", reader.run_id


def _to_original_grid(labels: np.ndarray, affine: np.ndarray | None,
                      grid: tuple[tuple[int, ...] | None, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray | None]:
    """A label map of the preprocessed grid on the input's own grid ``(shape, affine)``: by the two voxel-to-RAS
    affines (nearest neighbour, nibabel) for volumes, by size (nearest) for 2D images. Returns ``(labels, the
    input's affine)``."""
    shape, orig_affine = grid
    if shape is None:
        raise DataError("the input's own grid is unknown (no reader metadata)", where="segmentation",
                        fix="segment files medcl reads, not raw arrays")
    if labels.ndim == 3 and affine is not None and orig_affine is not None:
        import nibabel as nib
        from nibabel.processing import resample_from_to

        img = nib.Nifti1Image(labels.astype(np.int16), affine)
        out = resample_from_to(img, (shape, orig_affine), order=0, mode="constant", cval=0)
        return np.asarray(out.dataobj).astype(np.uint8), orig_affine
    if labels.shape != shape:
        from PIL import Image

        labels = np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST))
    return labels.astype(np.uint8), None


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in (".dcm", ".dicom", ".ima"))


def write_dicom_seg(source: Path, labels: np.ndarray, affine: np.ndarray, class_names: list[str], out: Path) -> Path:
    """A DICOM Segmentation (highdicom) of ``labels`` — on the series' own grid ``(X, Y, Z)`` with voxel-to-RAS
    ``affine`` — referencing the series in ``source`` (a folder of slices or one multi-slice file).

    Each source frame is sampled from the label map at its pixels' patient coordinates (ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing; LPS → RAS), so the SEG needs no assumption about slice order. The SEG
    carries the source study's patient module, as DICOM requires: it is an output for your PACS.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medcl import __version__

    datasets = [pydicom.dcmread(f) for f in _dicom_files(source)]
    datasets = [d for d in datasets if "ImagePositionPatient" in d and "PixelData" in d]
    if not datasets:
        raise DataError("no DICOM image slices with a position to reference", where=str(source),
                        fix="DICOM SEG needs the CT/MR series' slices; the NIfTI mask is still written")
    inv = np.linalg.inv(affine)
    frames = []
    for d in datasets:
        ipp, iop = np.asarray(d.ImagePositionPatient, float), np.asarray(d.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in d.PixelSpacing)
        r, c = np.mgrid[0:int(d.Rows), 0:int(d.Columns)]
        lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        ras = lps.reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint((inv[:3, :3] @ ras.T).T + inv[:3, 3]).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(labels.shape)), axis=1)
        plane = np.zeros(len(ijk), np.uint8)
        plane[ok] = labels[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
        frames.append(plane.reshape(int(d.Rows), int(d.Columns)))
    pixel = np.stack(frames)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=str(class_names[k])[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="medcl", version=__version__,
                                                                    family=codes.cid7162.ArtificialIntelligence))
        for k in range(1, len(class_names))]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medcl", manufacturer_model_name="medcl segmenter",
        software_versions=__version__, device_serial_number="none", series_description="medcl segmentation")
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out


def predict_masks(source: str, inp: str | Path, out: str | Path, *, tracking_uri: str | None = None,
                  device: str | None = None, clear_ids: bool = False, progress: bool = True,
                  dicom_seg: bool = True, features: bool = False) -> PredictResult:
    """Segment every sample of ``inp`` with the run's logged segmenter and write one mask per input.

    Each image/volume is read with the run's preprocessing (whole, no crop), segmented with sliding windows, and
    its label map put back on the input's own grid: NIfTI (``.nii.gz``, the input's affine) for volumes, PNG
    for 2D images, in ``<out stem>_masks/``; a DICOM series also gets a DICOM SEG (highdicom) unless
    ``dicom_seg=False``. The table ``out`` has one row per input: status, mask file(s), voxels and (3D) volume in
    ml per foreground class, model and run id; with ``features`` (``medcl embed`` on a segmentation run) also the
    segmenter's encoder features ``f0 … fD-1`` (pooled over the whole image).
    """
    import torch

    from medcl import phi
    from medcl.engine.progress import StepProgress
    from medcl.tracking.mlflow_tracker import default_tracking_uri
    from medcl.tracking.pyfunc import load_segmenter

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"cannot write {out.name!r}", where="--out", fix="name the output .csv or .parquet")
    uri = tracking_uri or default_tracking_uri()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_uri, run_id = _segmenter_uri(source, uri)
    try:
        seg = load_segmenter(model_uri, uri, device)
    except MedclError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"cannot load the segmenter {model_uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where=f"tracking store {uri}", fix="check the run id / URI and --tracking-uri") from None
    encoder = getattr(seg.model, "encoder", None)
    if features and encoder is None:
        raise TrackingError(f"the segmenter {model_uri} ({seg.meta.get('network')}) has no separate encoder to take "
                            "features from", where=model_uri,
                            fix="embed needs a segmenter built on an encoder (segment.network: encoder_unet), or "
                            "use a run with a classifier")
    rows = collect_inputs(inp, spatial_dims=seg.spatial_dims)
    _check_modality(rows, seg.meta.get("modality"), inp)
    clear = _clear_patients(Path(inp)) if clear_ids and rows and rows[0].row is not None else {}
    masks = out.parent / f"{out.stem}_masks"
    masks.mkdir(parents=True, exist_ok=True)
    fg = [(k, c) for k, c in enumerate(seg.class_names) if k > 0]
    log.info("%d sample(s), segmenter %s, on %s; masks in %s", len(rows), model_uri, device, masks)
    records: list[dict[str, Any]] = []
    with StepProgress(len(rows), "segment", enabled=progress, log_every=max(1, len(rows) // 10)) as bar:
        for n, r in enumerate(rows):
            base = {"row": r.row, "source": r.source,
                    "patient": clear.get(str(r.row), r.patient) if clear else r.patient}
            try:
                x, affine = seg.prepare_whole(r.path, r.source)
                labels, orig_affine = _to_original_grid(seg.labels(x), affine, seg.last_source_grid)
                feats = {}
                if features:
                    with torch.no_grad():  # padded to at least one sliding window, as the network was trained
                        from monai.transforms import SpatialPad

                        xp = SpatialPad([max(a, b) for a, b in zip(x.shape[1:], seg.roi_size)])(x)
                        f = encoder(torch.as_tensor(xp)[None].to(next(seg.model.parameters()).device))
                        f = f[-1] if isinstance(f, (list, tuple)) else f  # a feature pyramid: its deepest level
                        f = (f.flatten(2).mean(-1) if f.ndim > 2 else f)[0].float().cpu().numpy()
                    feats = {f"f{j}": float(v) for j, v in enumerate(f)}
                stem = re.sub(r"[^A-Za-z0-9._-]+", "_", r.path.name.split(".")[0])[:60] or "sample"
                rec = {**base, "status": "ok", **feats}
                if labels.ndim == 3:
                    import nibabel as nib

                    path = masks / f"{n + 1:04d}_{stem}_seg.nii.gz"
                    nib.save(nib.Nifti1Image(labels, orig_affine), path)
                    ml = abs(float(np.linalg.det(orig_affine[:3, :3]))) / 1000.0
                    rec.update({f"volume_ml_{c}": float((labels == k).sum()) * ml for k, c in fg})
                else:
                    from PIL import Image

                    path = masks / f"{n + 1:04d}_{stem}_seg.png"
                    Image.fromarray(labels).save(path)
                rec["mask"] = str(path.relative_to(out.parent))
                rec.update({f"voxels_{c}": int((labels == k).sum()) for k, c in fg})
                if dicom_seg and labels.ndim == 3 and (r.path.is_dir() or r.path.suffix.lower() in (".dcm", ".dicom")):
                    seg_path = write_dicom_seg(r.path, labels, orig_affine, seg.class_names,
                                               masks / f"{n + 1:04d}_{stem}_seg.dcm")
                    rec["dicom_seg"] = str(seg_path.relative_to(out.parent))
                records.append(rec)
            except Exception as exc:  # noqa: BLE001 - one bad file is a row with its error; the others run
                msg = phi.redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
                records.append({**base, "status": f"error: {msg}"})
                log.warning("segment: %s: %s", phi.redact(r.source), msg)
            bar.update(n + 1, {})
    cols = ["mask", *(["dicom_seg"] if any("dicom_seg" in x for x in records) else []),
            *[f"voxels_{c}" for _, c in fg], *([f"volume_ml_{c}" for _, c in fg]
                                                if any(f"volume_ml_{fg[0][1]}" in x for x in records) else [])]
    dim = max((sum(1 for k in x if re.fullmatch(r"f\d+", k)) for x in records), default=0)
    cols += [f"f{j}" for j in range(dim)]
    lm = LoadedModel(seg, model_uri, run_id)
    df = _table(records, rows, cols, lm)
    _write(df, out)
    n_failed = int((df["status"] != "ok").sum())
    return PredictResult(out, None, len(df) - n_failed, n_failed, model_uri)
