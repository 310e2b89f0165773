"""``medcl predict RUN manifest.csv --out FILE`` for a fusion run: each patient classified from all its examinations.

The model is the one the ``fuse`` stage logged (:class:`medcl.tasks.export.FusionModel`: each modality's encoder and
evaluation preprocessing, the training patients' feature statistics, the gated head). The input is a manifest (its
``patient_id``, ``modality`` and ``path`` columns; patient ids pseudonymised as they are read, as in a run), since a
patient's examinations are linked by it. Two tables are written:

* per examination (``--out``): ``row``, ``source``, ``patient``, ``modality``, ``status`` — a file that cannot be
  read is reported by name and the patient is classified from its other examinations;
* per patient (``<out stem>.patients<suffix>``): ``n_<modality>`` (examinations used), ``gate_<modality>`` (how much
  the model counted on it; 0 for a missing one), ``p_<class>``, ``predicted``, ``status``. A patient none of whose
  examinations could be read has ``status`` ``error`` and no probabilities.

Part of :mod:`medcl.predict`, which re-exports :func:`predict_patients`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medcl.errors import ConfigError, DataError
from medcl.predict_io import PredictResult, _clear_patients, _looks_like_manifest, _write, collect_inputs
from medcl.predict_model import fusion_uri, load_logged
from medcl.tracking.mlflow_tracker import default_tracking_uri

log = logging.getLogger(__name__)


def _load(source: str, tracking_uri: str | None, device: str) -> tuple[Any, str, str | None]:
    """``(FusionPredictor, model URI, pipeline run id)`` of ``source``."""
    from medcl.tracking.pyfunc import load_fusion  # lazy: mlflow, loaded only once a model is applied

    uri = tracking_uri or default_tracking_uri()
    model_uri, run_id = fusion_uri(source, uri)
    return load_logged(load_fusion, model_uri, uri, device), model_uri, run_id


def predict_patients(source: str, inp: str | Path, out: str | Path, *, tracking_uri: str | None = None,
                     batch_size: int = 16, device: str | None = None, clear_ids: bool = False,
                     progress: bool = True) -> PredictResult:
    """Classify every patient of the manifest ``inp`` with the fusion model of ``source``; write both tables.

    Args:
        source: pipeline run id (its fuse stage's model), ``runs:/<id>/fusion``, ``models:/…`` or a model folder.
        inp: a manifest with ``patient_id``, ``modality`` and ``path`` (``.csv`` / ``.tsv`` / ``.json``).
        out: the per-examination table, ``.csv`` or ``.parquet``; the per-patient one is written beside it.
        tracking_uri: MLflow store (default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        batch_size: examinations per forward pass.
        device: ``cpu``, ``cuda`` … (default: CUDA when present).
        clear_ids: write the manifest's patient ids in clear (the user's own output), not pseudonymised.
        progress: progress bar.

    Returns:
        :class:`PredictResult` (``n_ok`` / ``n_failed`` count examinations).

    Raises:
        ConfigError: a bad ``out`` suffix or ``batch_size``, or an input that is not a manifest.
        DataError: a row of a modality the model does not take (before anything is read).
        TrackingError: the model cannot be found or loaded.
    """
    import pandas as pd
    import torch

    from medcl.engine.progress import StepProgress  # lazy: torch, loaded only once a model is applied

    out, inp = Path(out), Path(inp)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"cannot write {out.name!r}", where="--out", fix="name the output .csv or .parquet")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1", where="--batch-size", fix="use e.g. 16")
    if not (inp.is_file() and inp.suffix.lower() in (".csv", ".tsv", ".json")
            and (inp.suffix.lower() != ".csv" or _looks_like_manifest(inp))):
        raise ConfigError(f"a fusion model classifies patients from several examinations: {inp.name!r} is not a "
                          "manifest", where=str(inp), fix="pass a manifest with patient_id, modality and path "
                          "columns (one row per examination)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fp, model_uri, run_id = _load(source, tracking_uri, device)
    rows = collect_inputs(inp, spatial_dims=2)
    wrong = [r for r in rows if r.extra.get("modality") not in fp.names]
    if wrong:
        raise DataError(f"{len(wrong)} row(s) are of a modality the model does not take "
                        f"({wrong[0].extra.get('modality')!r}; it takes {', '.join(fp.names)})",
                        where=f"{inp}, row {wrong[0].row}", fix=f"keep only rows of {', '.join(fp.names)} "
                        "(filter the manifest) and give each its modality")
    clear = _clear_patients(inp) if clear_ids else {}
    log.info("%d examination(s) of %d patient(s), fusion model %s (%s), batch %d on %s", len(rows),
             len({r.patient for r in rows}), model_uri, "+".join(fp.names), batch_size, device)
    n_batches = sum((sum(r.extra["modality"] == m for r in rows) + batch_size - 1) // batch_size for m in fp.names)
    failures: dict[int, str] = {}
    with StepProgress(n_batches, "predict", enabled=progress, log_every=max(1, n_batches // 10)) as bar:
        done = [0]

        def tick() -> None:
            done[0] += 1
            bar.update(done[0], {})

        res = fp.predict([r.patient for r in rows], [r.extra["modality"] for r in rows], [r.path for r in rows],
                         batch_size=batch_size, failures=failures, on_batch=tick)
    for i, msg in sorted(failures.items()):
        log.warning("predict: row %s: %s", rows[i].row, msg)
    records = [{"row": r.row, "source": r.source, "patient": clear.get(str(r.row), r.patient),
                "modality": r.extra["modality"], "status": f"error: {failures[i]}" if i in failures else "ok"}
               for i, r in enumerate(rows)]
    patients, probs, gates, counts = res["patients"], res["probabilities"], res["gates"], res["counts"]
    present = counts > 0
    df = pd.DataFrame(records, columns=["row", "source", "patient", "modality", "status"])
    df["model_uri"], df["run_id"] = model_uri, run_id
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(df, out)
    first_row = {}
    for r in rows:
        first_row.setdefault(r.patient, r.row)
    per = []
    for i, p in enumerate(patients):
        row: dict[str, Any] = {"patient": clear.get(str(first_row[p]), p)}
        row.update({f"n_{m}": int(counts[i, j]) for j, m in enumerate(fp.names)})
        if present[i].any():
            row.update({f"gate_{m}": float(gates[i, j]) for j, m in enumerate(fp.names)})
            row.update({c: float(v) for c, v in zip(fp.columns, probs[i])})
            row.update(predicted=fp.call(probs[i]), status="ok")
        else:
            row["status"] = "error: none of the patient's examinations could be read"
        per.append(row)
    cols = ["patient", *[f"n_{m}" for m in fp.names], *[f"gate_{m}" for m in fp.names], *fp.columns, "predicted",
            "status"]
    pdf = pd.DataFrame(per, columns=cols)
    pdf["model_uri"], pdf["run_id"] = model_uri, run_id
    patients_path = out.with_name(f"{out.stem}.patients{out.suffix}")
    _write(pdf, patients_path)
    n_failed = int((df["status"] != "ok").sum())
    lacking = {m: int((~present[:, j] & present.any(1)).sum()) for j, m in enumerate(fp.names)}
    if any(lacking.values()):
        log.info("predict: patients classified without a modality: %s",
                 ", ".join(f"{m}: {n}" for m, n in lacking.items() if n))
    return PredictResult(out, patients_path, len(df) - n_failed, n_failed, model_uri)
