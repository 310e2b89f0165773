"""``medcl predict --task segment``: a run's logged segmenter applied to new files, one mask per input.

Each image/volume is segmented whole (sliding windows) and its label map put back on the input's own grid: NIfTI
for volumes, PNG for 2D images, and a DICOM Segmentation (highdicom) for DICOM series. Part of
:mod:`medcl.predict`, which re-exports every name defined here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcl import __version__, phi
from medcl.errors import ConfigError, DataError, MedclError, TrackingError
from medcl.predict_io import (
    InputRow,
    PredictResult,
    _check_modality,
    _clear_patients,
    _table,
    _write,
    collect_inputs,
)
from medcl.predict_model import LoadedModel, _segmenter_uri
from medcl.tracking.mlflow_tracker import default_tracking_uri

log = logging.getLogger("medcl.predict")  # the name medcl predict's log lines have always carried


def _to_original_grid(labels: np.ndarray, affine: np.ndarray | None,
                      grid: tuple[tuple[int, ...] | None, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray | None]:
    """Put a label map of the preprocessed grid back on the input's own grid.

    Volumes are resampled by the two voxel-to-RAS affines (nearest neighbour, nibabel), 2D images by size
    (nearest).

    Args:
        labels: the label map on the preprocessed grid, ``(X, Y, Z)`` or ``(H, W)``.
        affine: its voxel-to-RAS affine ``(4, 4)`` (volumes), or ``None``.
        grid: the input's own ``(shape, affine)``, as the reader saw it.

    Returns:
        ``(labels as uint8 on the input's grid, the input's affine or None)``.

    Raises:
        DataError: the input's own grid is unknown.
    """
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
    """The DICOM files of ``path``: the file itself, or a folder's ``.dcm`` / ``.dicom`` / ``.ima`` files, sorted."""
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in (".dcm", ".dicom", ".ima"))


def _frame_labels(d: Any, labels: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """The labels at the pixels of the DICOM frame ``d``, ``(Rows, Columns)`` uint8 (0 outside the label map).

    Each pixel's patient position (ImagePositionPatient, ImageOrientationPatient, PixelSpacing; LPS → RAS) is
    mapped to a voxel of ``labels`` by ``inv``, the inverse of its voxel-to-RAS affine.
    """
    ipp, iop = np.asarray(d.ImagePositionPatient, float), np.asarray(d.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in d.PixelSpacing)
    r, c = np.mgrid[0:int(d.Rows), 0:int(d.Columns)]
    lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
    ras = lps.reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])
    ijk = np.rint((inv[:3, :3] @ ras.T).T + inv[:3, 3]).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(labels.shape)), axis=1)
    plane = np.zeros(len(ijk), np.uint8)
    plane[ok] = labels[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
    return plane.reshape(int(d.Rows), int(d.Columns))


def write_dicom_seg(source: Path, labels: np.ndarray, affine: np.ndarray, class_names: list[str], out: Path) -> Path:
    """Write a DICOM Segmentation (highdicom) of ``labels`` that references the series in ``source``.

    Each source frame is sampled from the label map at its pixels' patient coordinates (ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing; LPS → RAS), so the SEG needs no assumption about slice order. The SEG
    carries the source study's patient module, as DICOM requires: it is an output for your PACS.

    Args:
        source: the series: a folder of slices or one multi-slice file.
        labels: the label map on the series' own grid, ``(X, Y, Z)``; 0 is background.
        affine: its voxel-to-RAS affine, ``(4, 4)``.
        class_names: every class, background first; each other class is one segment.
        out: the ``.dcm`` file to write.

    Returns:
        ``out``.

    Raises:
        DataError: ``source`` has no image slices with a position.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(f) for f in _dicom_files(source)]
    datasets = [d for d in datasets if "ImagePositionPatient" in d and "PixelData" in d]
    if not datasets:
        raise DataError("no DICOM image slices with a position to reference", where=str(source),
                        fix="DICOM SEG needs the CT/MR series' slices; the NIfTI mask is still written")
    inv = np.linalg.inv(affine)
    pixel = np.stack([_frame_labels(d, labels, inv) for d in datasets])
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


@dataclass
class _Segmenting:
    """What every input of one :func:`predict_masks` call shares."""

    seg: Any  # the loaded medcl.tasks.export.Segmenter
    encoder: Any  # its network's encoder (None when it has none)
    masks: Path  # the folder the masks go to
    root: Path  # the table's folder: mask paths in the table are relative to it
    fg: list[tuple[int, str]]  # (label value, class name) of every foreground class
    features: bool
    dicom_seg: bool


def _load_segmenter(model_uri: str, uri: str, device: str) -> Any:
    """The logged segmenter at ``model_uri`` on ``device``.

    Raises:
        TrackingError: it cannot be loaded (the URI and the cause are named).
    """
    from medcl.tracking.pyfunc import load_segmenter  # lazy: mlflow, loaded only once a model is applied

    try:
        return load_segmenter(model_uri, uri, device)
    except MedclError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"cannot load the segmenter {model_uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where=f"tracking store {uri}", fix="check the run id / URI and --tracking-uri") from None


def _encoder_features(job: _Segmenting, x: Any) -> dict[str, float]:
    """The segmenter's encoder features of one preprocessed input ``x`` ``(C, *S)``, pooled: ``{"f0": …}``."""
    import torch

    seg = job.seg
    with torch.no_grad():  # padded to at least one sliding window, as the network was trained
        from monai.transforms import SpatialPad

        xp = SpatialPad([max(a, b) for a, b in zip(x.shape[1:], seg.roi_size)])(x)
        f = job.encoder(torch.as_tensor(xp)[None].to(next(seg.model.parameters()).device))
        f = f[-1] if isinstance(f, (list, tuple)) else f  # a feature pyramid: its deepest level
        f = (f.flatten(2).mean(-1) if f.ndim > 2 else f)[0].float().cpu().numpy()
    return {f"f{j}": float(v) for j, v in enumerate(f)}


def _segment_one(job: _Segmenting, r: InputRow, n: int, base: dict[str, Any]) -> dict[str, Any]:
    """Segment the ``n``-th input ``r`` (0-based), write its mask file(s) and return its table row.

    The row is ``base`` with status ``ok``, the mask path(s), voxels (and, 3D, volume in ml) per foreground class
    and, with ``job.features``, the encoder features. Raises whatever reading or writing the input raises.
    """
    seg = job.seg
    x, affine = seg.prepare_whole(r.path, r.source)
    labels, orig_affine = _to_original_grid(seg.labels(x), affine, seg.last_source_grid)
    feats = _encoder_features(job, x) if job.features else {}
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", r.path.name.split(".")[0])[:60] or "sample"
    rec = {**base, "status": "ok", **feats}
    if labels.ndim == 3:
        import nibabel as nib

        path = job.masks / f"{n + 1:04d}_{stem}_seg.nii.gz"
        nib.save(nib.Nifti1Image(labels, orig_affine), path)
        ml = abs(float(np.linalg.det(orig_affine[:3, :3]))) / 1000.0
        rec.update({f"volume_ml_{c}": float((labels == k).sum()) * ml for k, c in job.fg})
    else:
        from PIL import Image

        path = job.masks / f"{n + 1:04d}_{stem}_seg.png"
        Image.fromarray(labels).save(path)
    rec["mask"] = str(path.relative_to(job.root))
    rec.update({f"voxels_{c}": int((labels == k).sum()) for k, c in job.fg})
    if job.dicom_seg and labels.ndim == 3 and (r.path.is_dir() or r.path.suffix.lower() in (".dcm", ".dicom")):
        seg_path = write_dicom_seg(r.path, labels, orig_affine, seg.class_names,
                                   job.masks / f"{n + 1:04d}_{stem}_seg.dcm")
        rec["dicom_seg"] = str(seg_path.relative_to(job.root))
    return rec


def _mask_columns(records: list[dict[str, Any]], fg: list[tuple[int, str]]) -> list[str]:
    """The table's value columns: mask, DICOM SEG (if any), voxels and volumes per class, features (if any)."""
    cols = ["mask", *(["dicom_seg"] if any("dicom_seg" in x for x in records) else []),
            *[f"voxels_{c}" for _, c in fg], *([f"volume_ml_{c}" for _, c in fg]
                                                if any(f"volume_ml_{fg[0][1]}" in x for x in records) else [])]
    dim = max((sum(1 for k in x if re.fullmatch(r"f\d+", k)) for x in records), default=0)
    return cols + [f"f{j}" for j in range(dim)]


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

    Args:
        source: pipeline run id with a segment stage, a segmenter's ``runs:/`` / ``models:/`` URI or folder.
        inp: manifest, folder or file (see :func:`medcl.predict.collect_inputs`).
        out: the per-sample table, ``.csv`` or ``.parquet``.
        tracking_uri: MLflow store (default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        device: ``cpu``, ``cuda`` … (default: CUDA when present).
        clear_ids: write the manifest's patient ids in clear (the user's own output), not pseudonymised.
        progress: progress bar.
        dicom_seg: write a DICOM SEG for each DICOM series input.
        features: add the encoder features ``f0 … fD-1``.

    Returns:
        :class:`PredictResult` (no per-patient table).

    Raises:
        ConfigError: ``out`` is not ``.csv`` / ``.parquet``.
        TrackingError: the segmenter cannot be loaded, or ``features`` and it has no separate encoder.
        DataError: the inputs cannot be collected, or are of another modality than the model's.
    """
    import torch

    from medcl.engine.progress import StepProgress  # lazy: torch, loaded only once a model is applied

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"cannot write {out.name!r}", where="--out", fix="name the output .csv or .parquet")
    uri = tracking_uri or default_tracking_uri()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_uri, run_id = _segmenter_uri(source, uri)
    seg = _load_segmenter(model_uri, uri, device)
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
    job = _Segmenting(seg, encoder, masks, out.parent, fg, features, dicom_seg)
    log.info("%d sample(s), segmenter %s, on %s; masks in %s", len(rows), model_uri, device, masks)
    records: list[dict[str, Any]] = []
    with StepProgress(len(rows), "segment", enabled=progress, log_every=max(1, len(rows) // 10)) as bar:
        for n, r in enumerate(rows):
            base = {"row": r.row, "source": r.source,
                    "patient": clear.get(str(r.row), r.patient) if clear else r.patient}
            try:
                records.append(_segment_one(job, r, n, base))
            except Exception as exc:  # noqa: BLE001 - one bad file is a row with its error; the others run
                msg = phi.redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
                records.append({**base, "status": f"error: {msg}"})
                log.warning("segment: %s: %s", phi.redact(r.source), msg)
            bar.update(n + 1, {})
    lm = LoadedModel(seg, model_uri, run_id)
    df = _table(records, rows, _mask_columns(records, fg), lm)
    _write(df, out)
    n_failed = int((df["status"] != "ok").sum())
    return PredictResult(out, None, len(df) - n_failed, n_failed, model_uri)
