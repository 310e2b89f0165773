"""External validation: ``medcl evaluate RUN MANIFEST`` — a trained run's model on another site's labelled data.

The run's logged calibrated classifier (:mod:`medcl.predict`) reads every row of the new manifest with exactly the
run's evaluation preprocessing. On the rows that were read and labelled it measures:

* the run's metrics with patient-level bootstrap CIs (:func:`medcl.metrics.metrics_with_ci`), at the run's
  operating point;
* calibration on the new site before and after the run's calibrator (ECE, Brier score, NLL): a calibrator fitted
  at the training site may not hold here;
* per-subgroup tables for the manifest's ``site`` and other columns with 2 to 8 values;
* dataset shift: kernel MMD with a permutation p-value (:func:`medcl.metrics.shift.shift_test`) between the
  encoder's features of the new data and of the run's training data (``reference_features.npz``, logged by the
  calibrate stage), one unit per patient, with a plain-language reading.

Everything is logged as a nested MLflow run of the pipeline run (``medcl.kind = evaluation``), which the report's
"External validation" section reads; the per-sample table (``predictions.csv``: status of every input row,
pseudonymised patients; the logged copy links rows by manifest row number, without the file names, which often
carry record numbers) and ``evaluation.json`` are written to ``--out`` and logged with it. Rows that cannot be
read, or have no label, are listed with their status and left out of the metrics (never silently).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.data.manifest import label_problems, load_manifest
from medcl.data.prepare import _relabel
from medcl.errors import ConfigError, DataError, MedclError, TrackingError
from medcl.metrics import calibration_metrics, metrics_with_ci, subgroup_metrics
from medcl.metrics.shift import shift_test
from medcl.predict import InputRow, _batches, _Prepared, load_model
from medcl.reporting.html import build_report
from medcl.stages.classify_eval import is_subgroup
from medcl.stages.common import jsonable
from medcl.tracking.mlflow_tracker import MLflowTracker
from medcl.tracking.reader import RunReader

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class EvaluateResult:
    """What :func:`evaluate` measured and wrote."""

    name: str
    out_dir: Path
    evaluation_run_id: str | None
    n_ok: int
    n_excluded: int
    metrics: dict[str, Any]
    calibration: dict[str, Any]
    shift: dict[str, Any]
    subgroups: dict[str, Any]
    report: Path | None = None
    summary: list[dict[str, str]] = field(default_factory=list)


def _site_name(manifest: Path, name: str | None) -> str:
    """The evaluation's name: ``name``, or the manifest's file name without suffix.

    Raises:
        ConfigError: it is not a short plain name (it names an MLflow run and a folder).
    """
    n = (name or manifest.stem).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", n):
        raise ConfigError(f"the evaluation name {n!r} is not a short plain name", where="--name",
                          fix="use letters, digits, spaces, '.', '_' or '-' (at most 64), e.g. --name site-b-2026")
    return n


def _labelled_rows(manifest: Path, lm: Any, label_column: str, label_sep: str) -> tuple[list[Any], np.ndarray]:
    """The manifest's records and their labels as the model's class indices (``-1`` / NaN row: no label).

    Raises:
        DataError: a label is not one of the model's classes (names the column, the row and the classes), a row is
            of another modality, or no row has a label.
    """
    m = load_manifest(manifest)
    if label_column.strip().lower() != "label":
        m.records = _relabel(m, label_column)
    if lm.modality:
        wrong = [r for r in m.records if r.modality and r.modality != lm.modality]
        if wrong:
            raise DataError(f"{len(wrong)} row(s) are {wrong[0].modality!r} but the model was trained on "
                            f"{lm.modality!r}", where=f"{manifest}, row {wrong[0].row}",
                            fix=f"evaluate only {lm.modality} samples with this model (filter the manifest)")
    y, _, problems = label_problems(m.records, lm.classes, lm.task, label_sep)
    if problems:
        rows = ", ".join(str(p.row) for p in problems[:8]) + (" …" if len(problems) > 8 else "")
        raise DataError(f"column {label_column!r}: {problems[0].what} ({len(problems)} row(s): {rows})",
                        where=f"{manifest}, row {problems[0].row}",
                        fix=f"the model's classes are {', '.join(lm.classes)}; map this site's labels to them, or "
                        "pass --label-column with the column that holds them")
    labelled = ~np.isnan(y).any(axis=1) if y.ndim == 2 else y >= 0
    if not labelled.any():
        raise DataError(f"no row has a label in column {label_column!r}", where=str(manifest),
                        fix="external validation needs labels; fill the column or pass --label-column")
    return m.records, y


def _subgroup_columns(records: list[Any], keep: np.ndarray) -> dict[str, np.ndarray]:
    """``site`` and the extra columns with 2 to ``MAX_SUBGROUP_LEVELS`` values (the classify stage's rule)."""
    out = {}
    names = ["site"] + sorted({k for r in records for k in r.extra})
    for name in names:
        col = np.asarray([("" if (v := (r.site if name == "site" else r.extra.get(name))) is None else str(v))
                          for r in records], dtype=object)[keep]
        if is_subgroup(name, {v for v in col if v != ""}):
            out[name] = col
    return out


@dataclass
class _Applied:
    """The model's outputs on the labelled rows of the manifest (see :func:`_apply`)."""

    recs: list[dict[str, Any]]  # one per manifest row: ok, failed or excluded, with its status
    idx: np.ndarray  # (N,) positions in the manifest's records of the N rows read, in prediction order
    probs: np.ndarray  # (N, K_out) calibrated probabilities
    probs_before: np.ndarray  # (N, K_out) before the run's calibrator
    features: np.ndarray  # (N, D) the encoder's pooled features


def _check_request(source: str, manifest: Path, n_boot: int, n_permutations: int, batch_size: int) -> None:
    """Refuse a request before any work: ``source`` must be a run id, ``manifest`` a file, the counts >= 1.

    Raises:
        ConfigError: ``source`` is not a pipeline run id, or a count is below 1.
        DataError: the manifest does not exist.
    """
    if not _RUN_ID.fullmatch(source):
        raise ConfigError(f"{source!r} is not a pipeline run id", where="medcl evaluate RUN",
                          fix="pass the run id printed at the end of `medcl run` (the evaluation is logged as a "
                          "nested run of it, and dataset shift is measured against its training data)")
    if not manifest.is_file():
        raise DataError("manifest not found", where=str(manifest), fix="pass the new site's manifest (.csv/.json)")
    if n_boot < 1 or n_permutations < 1 or batch_size < 1:
        raise ConfigError("--n-boot, --permutations and --batch-size must be >= 1", where="medcl evaluate",
                          fix="e.g. --n-boot 1000 --permutations 1000 --batch-size 16")


def _apply(lm: Any, records: list[Any], labelled: np.ndarray, manifest: Path, label_column: str, batch_size: int,
           device: str, progress: bool) -> _Applied:
    """Apply the model ``lm`` to the labelled ``records`` (``labelled``: ``(len(records),)`` bool).

    Unlabelled rows are listed as excluded (with a warning), rows that cannot be read as failed.

    Raises:
        DataError: none of the labelled rows could be read.
    """
    rows = [InputRow(r.relpath, Path(r.path), r.patient, r.row, {"modality": r.modality})
            for r, ok in zip(records, labelled) if ok]
    excluded = [{"row": r.row, "source": r.relpath, "patient": r.patient, "status": "excluded: no label"}
                for r, ok in zip(records, labelled) if not ok]
    for e in excluded:
        log.warning("evaluate: row %s has no label in column %r: left out of the metrics", e["row"], label_column)
    by_row = {r.row: k for k, r in enumerate(records)}
    prepared = _Prepared(lm, rows, lm.predictor, {}, device)
    cols = lm.predictor.columns
    recs: list[dict[str, Any]] = list(excluded)
    feats, cal, uncal, idx = [], [], [], []
    for ok, x, failed in _batches(prepared, batch_size, progress, "evaluate"):
        recs += failed
        if x is None:
            continue
        parts = lm.predictor.parts(x)
        for base, pc, pu in zip(ok, parts["probabilities"], parts["uncalibrated"]):
            recs.append({**base, "status": "ok", **{c: float(v) for c, v in zip(cols, pc)},
                         **{f"{c}_uncalibrated": float(v) for c, v in zip(cols, pu)},
                         "predicted": lm.predictor.call(pc)})
            idx.append(by_row[base["row"]])
        feats.append(parts["features"])
        cal.append(parts["probabilities"])
        uncal.append(parts["uncalibrated"])
    if not idx:
        raise DataError(f"none of the {len(rows)} labelled row(s) could be read", where=str(manifest),
                        fix="see the errors above (file formats, paths relative to the manifest's folder)")
    return _Applied(recs, np.asarray(idx), np.concatenate(cal), np.concatenate(uncal), np.concatenate(feats))


def _add_labels(recs: list[dict[str, Any]], records: list[Any], y_all: np.ndarray, classes: list[str]) -> None:
    """Give every row of ``recs`` its label as class name(s) (``;``-joined for multi-label; ``""``: none)."""
    labels = {r.row: (";".join(c for c, v in zip(classes, y_all[k]) if v == 1) if y_all.ndim == 2
                      else (classes[int(y_all[k])] if y_all[k] >= 0 else ""))
              for k, r in enumerate(records)}
    for rec in recs:
        rec["label"] = labels.get(rec.get("row"), "")


def _measure(lm: Any, applied: _Applied, y: np.ndarray, patients: np.ndarray, records: list[Any], source: str,
             tracking_uri: str | None, n_boot: int, n_permutations: int, seed: int) -> tuple[dict, dict, dict, dict]:
    """``(metrics, calibration before/after, subgroup metrics, shift)`` of the rows read.

    ``y`` (``(N,)`` class indices or ``(N, K)`` multi-label) and ``patients`` (``(N,)``) follow ``applied.idx``;
    metrics are called at the run's operating point.
    """
    task, classes, op = lm.task, lm.classes, lm.operating_point
    probs = applied.probs
    threshold = float(op["threshold"]) if task in ("binary", "multilabel") and "threshold" in op else None
    y_metric = y.astype(np.int64) if y.ndim == 1 else y
    t0 = time.time()
    metrics = metrics_with_ci(y_metric, probs, task, patients, threshold=threshold, class_names=classes,
                              n_boot=n_boot, seed=seed)
    calibration = {"before": calibration_metrics(y_metric, applied.probs_before, task),
                   "after": calibration_metrics(y_metric, probs, task)}
    groups = _subgroup_columns(records, applied.idx)
    subgroups = subgroup_metrics(y_metric, probs, task, patients, groups_by=groups, threshold=threshold,
                                 class_names=classes, n_boot=0) if groups else {}
    shift = _shift(source, tracking_uri, applied.features, patients, n_permutations, seed)
    log.info("evaluate: metrics, calibration and shift computed in %.1f s", time.time() - t0)
    return metrics, calibration, subgroups, shift


def evaluate(source: str, manifest: str | Path, *, name: str | None = None, out: str | Path | None = None,
             tracking_uri: str | None = None, batch_size: int = 16, device: str | None = None, n_boot: int = 1000,
             n_permutations: int = 1000, label_column: str = "label", label_sep: str = ";", seed: int = 0,
             progress: bool = True, report: bool = True) -> EvaluateResult:
    """Validate the run ``source``'s model on the labelled ``manifest`` of another site (see the module docstring).

    Args:
        source: the pipeline run id (the evaluation is nested under it; its training data are the shift reference).
        manifest: the new site's manifest (CSV/TSV/JSON) with labels in ``label_column``.
        name: what to call this evaluation (default: the manifest's file name without suffix).
        out: folder for ``predictions.csv``, ``evaluation.json`` (and ``report.html``); default
            ``medcl-evaluations/<name>``.
        tracking_uri: MLflow store (default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        batch_size: samples per forward pass.
        device: ``cpu``, ``cuda`` … (default: CUDA when present).
        n_boot: patient-bootstrap resamples for the CIs.
        n_permutations: permutations for the shift test's p-value.
        label_column: the manifest column that holds the labels (class names of the model).
        label_sep: separator of a multi-label row's labels.
        seed: seed of the bootstrap and the permutations.
        progress: progress bar.
        report: rebuild the run's HTML report (with the new "External validation" section) into ``out``.

    Returns:
        :class:`EvaluateResult`: what was measured, where it was written, the nested run's id.

    Raises:
        ConfigError: ``source`` is not a run id, or a bad option.
        DataError: the manifest's labels do not match the model's classes, or no row could be evaluated.
        TrackingError: the run has no classification model, or the store cannot be reached.
    """
    source, manifest = str(source), Path(manifest)
    _check_request(source, manifest, n_boot, n_permutations, batch_size)
    site = _site_name(manifest, name)
    out_dir = Path(out) if out else Path("medcl-evaluations") / site.replace(" ", "_")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(source, tracking_uri, device)
    records, y_all = _labelled_rows(manifest, lm, label_column, label_sep)
    labelled = ~np.isnan(y_all).any(axis=1) if y_all.ndim == 2 else y_all >= 0
    applied = _apply(lm, records, labelled, manifest, label_column, batch_size, device, progress)
    recs, idx_arr = applied.recs, applied.idx
    y = y_all[idx_arr]
    patients = np.asarray([records[i].patient for i in idx_arr], dtype=object)
    task, classes = lm.task, lm.classes
    _add_labels(recs, records, y_all, classes)
    op = lm.operating_point
    metrics, calibration, subgroups, shift = _measure(lm, applied, y, patients, records, source, tracking_uri,
                                                      n_boot, n_permutations, seed)

    n_excl = len(recs) - len(idx_arr)
    summary = _summary(metrics, calibration, shift, task)
    result = {"name": site, "manifest": manifest.name, "model_uri": lm.model_uri, "run_id": lm.run_id,
              "task": task, "classes": classes, "n_samples": len(idx_arr),
              "n_patients": int(len(np.unique(patients))),
              "n_excluded": n_excl, "excluded": [{k: r.get(k) for k in ("row", "status")}
                                                 for r in recs if r.get("status") != "ok"],
              "operating_point": op, "metrics": metrics, "calibration": calibration, "subgroups": subgroups,
              "shift": shift, "n_boot": n_boot, "seed": seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = _write_predictions(recs, out_dir / "predictions.csv", lm.predictor.columns, lm)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2, default=jsonable))
    eval_run = _log(source, tracking_uri, site, manifest, result, out_dir, pred_path)
    report_path = None
    if report:
        report_path = build_report(source, out=out_dir / "report.html", tracking_uri=tracking_uri)
    return EvaluateResult(site, out_dir, eval_run, len(idx_arr), n_excl, metrics, calibration, shift, subgroups,
                          report_path, summary)


def _shift(run_id: str, tracking_uri: str | None, features: np.ndarray, patients: np.ndarray, n_permutations: int,
           seed: int) -> dict[str, Any]:
    """The shift test against the run's reference features, or why it could not be done."""
    reader = RunReader(run_id, tracking_uri)
    p = reader.artifact_path("reference_features.npz", stage="calibrate")
    if p is None:
        reason = ("the run has no reference_features.npz (runs made before medcl logged the training data's features "
                  "at the calibrate stage): re-run the calibrate stage (`medcl run PIPELINE --force calibrate`) to "
                  "measure dataset shift")
        log.warning("evaluate: dataset shift not measured: %s", reason)
        return {"unavailable": reason}
    ref = np.load(p)
    if ref["features"].shape[1] != features.shape[1]:
        raise TrackingError(f"the run's reference features have {ref['features'].shape[1]} dimensions but its model "
                            f"gives {features.shape[1]}", where=f"run {run_id}",
                            fix="re-run the calibrate stage so the model and its reference match")
    return shift_test(features, ref["features"], new_patients=patients, reference_patients=ref["patient"],
                      n_permutations=n_permutations, seed=seed)


def _summary(metrics: dict[str, Any], calibration: dict[str, Any], shift: dict[str, Any], task: str) -> list[dict]:
    """The console table's rows (``metric``, ``value``): headline metrics with CIs, ECE before → after, shift."""
    rows = []
    for k in ("auroc", "auprc", "balanced_accuracy", "accuracy", "qwk"):
        m = metrics.get(k)
        if m:
            rows.append({"metric": k, "value": f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"})
    b, a = calibration["before"], calibration["after"]
    ece = next((k for k in ("ece_equal_width", "ece") if k in b), None)
    if ece:
        rows.append({"metric": "ECE, before → after the run's calibrator", "value": f"{b[ece]:.3f} → {a[ece]:.3f}"})
    if "unavailable" in shift:
        rows.append({"metric": "dataset shift", "value": "not measured (see the log)"})
    else:
        rows.append({"metric": f"dataset shift (MMD², per {shift['unit']})",
                     "value": f"{shift['mmd2']:.4f}, p = {shift['p_value']:.3g}"
                     + (" — shifted" if shift["shifted"] else " — none detected")})
    return rows


def _write_predictions(recs: list[dict], path: Path, cols: list[str], lm: Any) -> Path:
    """Write ``predictions.csv`` (one row per manifest row, in manifest order, fixed columns) and return its path."""
    import pandas as pd

    recs = sorted(recs, key=lambda d: d.get("row") or 0)  # manifest order
    df = pd.DataFrame(recs)
    value_cols = [*cols, *(f"{c}_uncalibrated" for c in cols), "predicted"]
    for c in ("row", "source", "patient", "label", "status", *value_cols):
        if c not in df.columns:
            df[c] = None
    df["model_uri"], df["run_id"] = lm.model_uri, lm.run_id
    df = df[["row", "source", "patient", "label", "status", *value_cols, "model_uri", "run_id"]]
    df.to_csv(path, index=False)
    return path


def _log(run_id: str, tracking_uri: str | None, site: str, manifest: Path, result: dict[str, Any], out_dir: Path,
         pred_path: Path) -> str | None:
    """A nested run of the pipeline run with the evaluation's params, metrics and files; its id."""
    try:
        client, uri, exp_id = MLflowTracker.connect(tracking_uri)
        run = client.get_run(run_id)
        parent = MLflowTracker(client, uri, run_id, run.info.experiment_id)
        child = parent.child(f"evaluate: {site}", tags={"medcl.kind": "evaluation", "medcl.evaluation": site})
    except MedclError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
        raise TrackingError(f"cannot log the evaluation to run {run_id}: {type(exc).__name__}: {str(exc)[:200]}",
                            where="tracking store", fix="check --tracking-uri (MLFLOW_TRACKING_URI)") from None
    status = "FAILED"
    try:
        child.log_params({"evaluate.manifest": manifest.name, "evaluate.n_samples": result["n_samples"],
                          "evaluate.n_patients": result["n_patients"], "evaluate.n_excluded": result["n_excluded"],
                          "evaluate.n_boot": result["n_boot"], "evaluate.model_uri": result["model_uri"]})
        metrics = {}
        for k, v in result["metrics"].items():
            if k != "_info" and isinstance(v, dict) and np.isfinite(v.get("value", np.nan)):
                metrics[f"external/{k}"] = v["value"]
                for b in ("ci_low", "ci_high"):
                    if v.get(b) is not None and np.isfinite(v[b]):
                        metrics[f"external/{k}_{b}"] = v[b]
        for when in ("before", "after"):
            for k, v in result["calibration"][when].items():
                if isinstance(v, (int, float)) and np.isfinite(v):
                    metrics[f"external/{k}_{when}"] = float(v)
        sh = result["shift"]
        if "mmd2" in sh:
            metrics.update({"shift/mmd2": sh["mmd2"], "shift/p_value": sh["p_value"]})
        child.log_metrics(metrics)
        child.log_artifact(out_dir / "evaluation.json")
        import tempfile

        import pandas as pd

        with tempfile.TemporaryDirectory(prefix="medcl-evaluate-") as tmp:  # file names often carry MRNs: the
            logged = Path(tmp) / pred_path.name                             # logged copy links rows by number
            pd.read_csv(pred_path, dtype={"row": "Int64"}).drop(columns=["source"]).to_csv(logged, index=False)
            child.log_artifact(logged)
        status = "FINISHED"
    finally:
        child.end(status)
    log.info("evaluation logged as run %s, nested in %s", child.run_id, run_id)
    return child.run_id
