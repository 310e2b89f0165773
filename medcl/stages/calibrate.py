"""The ``calibrate`` stage: make the primary model's probabilities trustworthy — or say why not.

Fits the configured calibrator (temperature, vector or Dirichlet scaling) on the *calibration set*: the
validation logits of the primary model from ``classify``, plus — when the validation split is small
(``calibrate.fit_on``) — out-of-fold logits over the training patients from patient-grouped cross-fitting.
A patient-grouped cross-validation on that set decides whether the calibrator lowers the NLL (without raising
the ECE) on data it was not fitted on; if not, it is **not applied** and the report says so. On the *test* split it reports
ECE (equal-width and adaptive bins, bin count stated), MCE, Brier and NLL before and after, with
reliability-diagram data. Then logs the deployable model — encoder → head → calibration → probabilities —
as a pyfunc that bundles the run's preprocessing (:mod:`medcl.tracking.pyfunc`: file paths or raw arrays in),
with the class names, the calibration, the operating point and the input shape as metadata, and registers it
when ``tracking.register_model`` is set. Last, the features of that model's encoder on (at most 1000) training
samples, read exactly as new data are, are logged as ``reference_features.npz`` (features and patient *indices*):
the reference ``medcl evaluate`` measures dataset shift against.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.errors import StageError
from medcl.metric_keys import calibration_key
from medcl.stages.common import data_modality, model_requirements
from medcl.stages.common import jsonable as _jsonable
from medcl.tasks.primary import PrimaryModel

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl.metrics.calibration import calibration_metrics
from medcl.stages.common import make_encoder, make_loader, make_transforms
from medcl.tasks.calibration import calibration_report, cross_validated_calibration
from medcl.tasks.export import CalibratedClassifier, Predictor, calibration_for_export, reference_features

log = logging.getLogger(__name__)


def _load_primary(ctx: RunContext) -> PrimaryModel:
    """The primary model the classify stage handed on.

    Raises:
        StageError: the classify stage did not run (or made no primary model).
    """
    out = ctx.outputs.get("classify") or {}
    if not out.get("primary"):
        raise StageError("no classifier to calibrate", where="stage calibrate",
                         fix="run the classify stage first (add it to stages)")
    return PrimaryModel.load(out["primary"], out["primary_meta"])


def build_export_model(ctx: RunContext, primary: PrimaryModel, calibration: dict[str, Any]) -> Any:
    """The :class:`~medcl.tasks.export.CalibratedClassifier` of the primary model (on CPU, eval mode)."""
    cfg, data = ctx.cfg, ctx.data
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder, w, b = primary.parts(lambda weights: make_encoder(base, weights=weights), data.task, len(data.classes))
    return CalibratedClassifier(encoder, w, b, data.task, calibration).eval()


def _example_input(ctx: RunContext) -> np.ndarray:
    """Two preprocessed samples ``(2, C, *S)`` (test split, else any): the logged model's input example."""
    items = ctx.data.items("test", labelled=True)[:2] or ctx.data.items(None)[:2]
    loader = make_loader(ctx, items, make_transforms(ctx.cfg, train=False), batch_size=2, shuffle=False,
                         train=False, distributed=False)
    x = next(iter(loader))["image"].float().numpy()
    # two rows: a batch dimension of 1 would be specialised away by the model's tracing
    return np.concatenate([x, x])[:2] if len(x) < 2 else x


def _calibration_set(npz: dict[str, np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The calibration set: validation logits, plus out-of-fold training logits when the classify stage cross-fitted.

    Args:
        npz: the primary model's arrays (``val_logits``, ``val_y``, ``val_patients``, ``oof_*`` …).
        task: binary logits are ``(N,)``, others ``(N, K)``.

    Returns:
        ``(logits, labels, patient groups, description of the set)``.
    """
    parts = [("validation", "val_logits", "val_y", "val_patients"), ("out-of-fold training", "oof_logits", "oof_y",
                                                                        "oof_patients")]
    zs, ys, gs, names = [], [], [], []
    for name, zk, yk, gk in parts:
        if zk in npz and npz[zk].size:
            z = npz[zk]
            zs.append(z.reshape(len(z), -1) if task != "binary" else z.reshape(-1))
            ys.append(npz[yk])
            # older runs have no val_patients: every sample its own group
            gs.append(npz[gk] if gk in npz and len(npz[gk]) == len(z) else -1 - np.arange(len(z)))
            names.append(name)
    if not zs:
        return np.zeros((0,)), np.zeros((0,)), np.zeros((0,), np.int64), "nothing"
    return np.concatenate(zs), np.concatenate(ys), np.concatenate(gs), " + ".join(names) + " patients"


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Fit, check and report the calibration of the primary model, then log it as the deployable model.

    Returns:
        The stage's outputs: ``calibration`` (path of ``calibration.json``), ``model_uri`` (``None`` without a
        tracking store), ``temperature`` and the summary rows.

    Raises:
        StageError: no primary model from ``classify``, or no logits to fit the calibration on.
    """
    cfg, c, data = ctx.cfg, ctx.cfg.calibrate, ctx.data
    primary = _load_primary(ctx)
    npz = primary.arrays
    task = data.task
    z, y, groups, fit_on = _calibration_set(npz, task)
    if len(z) == 0:
        raise StageError("no logits to fit the calibration on: the validation split is empty and no cross-fitting "
                         "was done", where="stage calibrate",
                         fix="set data.val_fraction > 0 (e.g. 0.15), or calibrate.fit_on=cross_fit")
    decision = cross_validated_calibration(z, y, groups, c.method, task=task, n_bins=c.n_bins, folds=c.folds,
                                           seed=cfg.seed, min_gain_se=c.min_gain_se,
                                           target_smoothing=c.target_smoothing)
    log.info("calibration on %s (%d samples, %d patients): %s", fit_on, decision["n"], decision["n_patients"],
             decision["reason"])
    rep = calibration_report(z, y, npz["test_logits"], npz["test_y"], c.method, c.n_bins, task=task,
                             calibrator=decision["calibrator"])
    if not decision["applied"] and decision["method"] != "none" and decision["cv"]:
        # what the refused calibrator would have done to the test set: evidence that refusing it was right (or
        # not), for the benchmark and the report; it changes nothing that is handed on
        probs = decision["fitted"].transform(npz["test_logits"])
        rep["if_applied"] = calibration_metrics(npz["test_y"], probs, task, n_bins=c.n_bins)
    rep["decision"] = {k: v for k, v in decision.items() if k not in ("calibrator", "fitted")} | {"fit_on": fit_on}
    out_dir = ctx.stage_dir("calibrate")
    _log_calibration(tracker, c, rep, decision, fit_on, out_dir)

    # -- the deployable model ---------------------------------------------------------------------------
    calibration = calibration_for_export(rep["state"])
    model = build_export_model(ctx, primary, calibration)
    example = _example_input(ctx)  # one sample's shape after preprocessing: the model's input_shape
    operating_point = _operating_point(model, task, primary.threshold, cfg.classify.operating_point)
    model_uri = None
    if tracker.active:
        model_uri = _log_model(ctx, tracker, model, rep, calibration, operating_point, example, out_dir)
    return {"calibration": str(out_dir / "calibration.json"), "model_uri": model_uri,
            "temperature": rep.get("temperature"), "summary": _summary(primary, rep, decision, c.n_bins)}


def _log_calibration(tracker: Tracker, c: Any, rep: dict[str, Any], decision: dict[str, Any], fit_on: str,
                     out_dir: Any) -> None:
    """Log the calibration's cross-validated decision, test metrics before/after, params and ``calibration.json``.

    Args:
        tracker: the stage's MLflow run.
        c: the ``calibrate`` config section.
        rep: :func:`medcl.tasks.calibration.calibration_report`'s report (``before``, ``after``, ``state`` …).
        decision: :func:`medcl.tasks.calibration.cross_validated_calibration`'s decision (``cv``, ``applied`` …).
        fit_on: what the calibration set is, in words.
        out_dir: the stage's folder.
    """
    cv = decision["cv"]
    tracker.log_metrics({f"calibration_cv/{k}": float(v) for k, v in cv.items()
                         if isinstance(v, (int, float)) and np.isfinite(v)})
    tracker.log_params({"calibrate.applied": decision["applied"], "calibrate.fit_on": fit_on,
                        "calibrate.n_calibration_patients": decision["n_patients"]})
    metrics = {}
    for when in ("before", "after", "if_applied"):
        for k, v in rep.get(when, {}).items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                metrics[calibration_key(k, when)] = float(v)
    tracker.log_metrics(metrics)
    params = {"calibrate.method": c.method, "calibrate.n_bins": c.n_bins,
              "calibrate.estimator": str(rep.get("estimator", ""))}
    if "temperature" in rep:
        params["calibrate.temperature"] = json.dumps(rep["temperature"])
    tracker.log_params(params)
    saved = {k: v for k, v in rep.items() if k != "probs_after"}
    (out_dir / "calibration.json").write_text(json.dumps(saved, indent=2, default=_jsonable))
    tracker.log_artifact(out_dir / "calibration.json")


def _log_model(ctx: RunContext, tracker: Tracker, model: Any, rep: dict[str, Any], calibration: dict[str, Any],
               operating_point: dict[str, Any], example: np.ndarray, out_dir: Any) -> str:
    """Log the model card, the deployable model (registered when configured) and the reference features.

    ``example`` is a preprocessed batch ``(B, C, *S)``; one sample's shape is the model's ``input_shape``. The
    reference features (at most 1000 training samples, read as new data are) are what ``medcl evaluate``
    measures dataset shift against.

    Returns:
        The logged model's URI.
    """
    from medcl.tracking.pyfunc import log_classifier  # lazy: mlflow, imported only when a model is logged

    cfg, c, data, task = ctx.cfg, ctx.cfg.calibrate, ctx.data, ctx.data.task
    preprocessing = {"preset": cfg.transforms.preset, **(cfg.transforms.model_extra or {}),
                     "input": "file paths or raw channel-first arrays; the preset's eval transforms are applied"}
    tracker.log_dict({"classes": data.classes, "task": task, "calibration": c.method,
                      "temperature": rep.get("temperature"), "preprocessing": preprocessing,
                      "operating_point": operating_point, "modality": data_modality(ctx),
                      "encoder": cfg.model.encoder, "output": "calibrated probabilities"},
                     "model_card.json")
    meta_out = json.loads(json.dumps({
        "classes": data.classes, "task": task, "calibration": calibration, "preprocessing": preprocessing,
        "operating_point": operating_point, "modality": data_modality(ctx),
        "input_shape": list(example.shape[1:])}, default=_jsonable))
    model_uri = log_classifier(tracker, model, meta_out, out_dir / "model", pip_requirements=model_requirements(),
                               registered_model_name=cfg.tracking.register_model)
    # the training data as the model sees it: what `medcl evaluate` measures dataset shift against
    ref = reference_features(Predictor(model, meta_out), data.items("train"), seed=cfg.seed)
    np.savez_compressed(out_dir / "reference_features.npz", **ref)
    tracker.log_artifact(out_dir / "reference_features.npz")
    log.info("reference features of %d training samples (%d patients) logged for dataset-shift checks",
             len(ref["patient"]), len(np.unique(ref["patient"])))
    return model_uri


def _summary(primary: PrimaryModel, rep: dict[str, Any], decision: dict[str, Any], n_bins: int) -> list[dict]:
    """The stage's rows of the results table: ECE and NLL before → after, and whether the calibration applies."""
    b, a = rep["before"], rep["after"]
    ece_key = next((k for k in ("ece_equal_width", "ece", "ece_adaptive") if k in b), None)
    summary = []
    if ece_key:
        summary.append({"model": f"{primary.encoder} {primary.kind}", "metric": f"ECE ({n_bins} equal-width bins)",
                        "value": f"{b[ece_key]:.3f} → {a[ece_key]:.3f}"})
    summary.append({"model": f"{primary.encoder} {primary.kind}", "metric": "NLL",
                    "value": f"{b['nll']:.3f} → {a['nll']:.3f}"})
    if not decision["applied"]:
        forced = rep.get("if_applied", {}).get(ece_key) if ece_key else None
        summary.append({"model": f"{primary.encoder} {primary.kind}", "metric": "calibration",
                        "value": "not applied (did not help on held-out calibration data"
                        + (f"; applied, test ECE would be {forced:.3f})" if forced is not None else ")")})
    return summary


def _operating_point(model: Any, task: str, threshold: float | None, rule: str) -> dict[str, Any]:
    """How a class is called from the model's *calibrated* probabilities.

    Binary: ``p >= threshold``, the validation-chosen threshold (``classify.operating_point``, on the
    uncalibrated probabilities) mapped through the calibrator — calibrators are monotone, so the same
    samples are called positive. Multi-label: ``p >= 0.5`` per label. Multi-class / ordinal: the most
    probable class.
    """
    import torch

    if task == "binary":
        t = 0.5 if threshold is None else float(np.asarray(threshold).reshape(-1)[0])
        t = min(max(t, 1e-7), 1 - 1e-7)
        with torch.no_grad():
            cal = float(model.from_logits(torch.tensor([[np.log(t / (1 - t))]], dtype=torch.float32)).reshape(-1)[0])
        return {"rule": "threshold", "threshold": cal, "chosen_by": rule if threshold is not None else "default 0.5",
                "threshold_uncalibrated": t}
    if task == "multilabel":
        return {"rule": "threshold", "threshold": 0.5, "chosen_by": "default 0.5 per label"}
    return {"rule": "argmax", "chosen_by": "most probable class"}
