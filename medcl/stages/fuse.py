"""The ``fuse`` stage: each patient classified from all of its modalities (e.g. fundus + OCT) with gated fusion.

Before it runs, the pipeline gives it one trained encoder per modality of ``fuse.modalities``
(:attr:`RunContext.modalities`: each modality's own pipeline pretrained on this run's training patients, or a given
encoder). Here, on rank 0:

1. every image of a modality is embedded by that modality's encoder (its pipeline's evaluation transforms) and a
   patient's embeddings of one modality are averaged: one ``(D_m,)`` vector per patient and modality, or none;
2. patients lacking a modality are listed (``missing_modalities.json``, pseudonymised) and classified from the
   others — or, with ``fuse.require_all``, stop the run;
3. the gated fusion head (:mod:`medcl.tasks.fusion`) is trained on the training patients with modality dropout and
   mislinked inputs, keeping the weights of the step with the lowest validation loss (``fuse.select_on``); the
   baselines are a head per modality alone (``single``) and the same fusion without gates (``ungated``), trained
   and selected alike;
4. every model is evaluated on the test patients who have every modality, as they are and with each modality
   removed, replaced by another patient's (mislinked) or degraded (``fuse.degraded``: blurred and noisy, an
   ungradable examination) — the unreliable inputs a gate should down-weight — with patient-bootstrap CIs; the
   fusion models also on every test patient.

Metrics: ``test/fusion/<model>/<condition>/<metric>`` (``<model>`` ``gated``, ``ungated`` or ``single_<m>``;
``<condition>`` ``all``, ``complete``, ``without_<m>``, ``mislinked_<m>``, ``degraded_<m>``) and the mean gate of each modality,
``.../gate_<m>``.
"""

from __future__ import annotations

import csv
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.checkpoint_file import save_checkpoint
from medcl.engine.inference import extract_features
from medcl.errors import ConfigError, DataError
from medcl.metric_keys import fusion_tag, metric_key
from medcl.metrics.bootstrap import metrics_with_ci
from medcl.stages.common import (
    jsonable,
    make_encoder,
    make_loader,
    make_transforms,
    model_requirements,
    seed_everything,
)
from medcl.stages.context import RunContext
from medcl.tasks.export import FusionModel, ModelInputs
from medcl.tasks.fusion import (
    Degraded,
    FusionData,
    GatedFusion,
    feature_stats,
    predict_fusion,
    standardise,
    train_fusion,
)

if TYPE_CHECKING:
    from medcl.tracking.protocol import Tracker

log = logging.getLogger(__name__)
#: the metrics logged per model and condition (each with its CI)
METRICS = ("auroc", "accuracy", "balanced_accuracy")


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Embed, train the fusion head and its baselines, evaluate (see module docstring); on rank 0.

    Returns:
        The stage's outputs: ``results`` (the path of ``results.csv``), its ``rows`` and the summary rows.

    Raises:
        ConfigError: fewer than two modalities, or one without an encoder.
        DataError: rows of one patient with different labels, no labelled training or test patients, or (with
            ``fuse.require_all``) a patient lacking a modality.
    """
    cfg, f = ctx.cfg, ctx.cfg.fuse
    names = tuple(f.modalities)
    missing_models = [m for m in names if m not in ctx.modalities]
    if len(names) < 2 or missing_models:
        raise ConfigError(f"the fuse stage needs two or more modalities with an encoder each (fuse.modalities: "
                          f"{list(names)})", where="fuse.modalities",
                          fix="name each modality with its pipeline, e.g. {oct: {pipeline: oct_severity.yaml}, "
                          "fundus: {pipeline: fundus_grading.yaml}}")
    seed_everything(cfg.seed, cfg.runtime.deterministic)
    out_dir = ctx.stage_dir("fuse")
    patients, y, split = _patient_labels(ctx.data)
    encoders = {m: make_encoder(ctx.modalities[m]["config"], ctx.modalities[m]["encoder"]) for m in names}
    feats = {m: _embed(ctx, m, encoders[m], patients, degraded=f.degraded) for m in names}
    data = FusionData({m: v[0] for m, v in feats.items()}, np.stack([feats[m][1] for m in names], 1), names,
                      {m: v[2] for m, v in feats.items()} if f.degraded else None)
    _missing(ctx, tracker, data)

    train = np.flatnonzero((split == "train") & _labelled(y))
    val = np.flatnonzero((split == "val") & _labelled(y))
    test = np.flatnonzero((split == "test") & _labelled(y))
    if len(train) < 2 or not len(test):
        raise DataError(f"{len(train)} labelled training and {len(test)} labelled test patients", where="fuse",
                        fix="the train and test splits both need labelled patients")
    raw, stats = data, feature_stats(data, train)
    data = standardise(data, train)
    multilabel = y.ndim == 2
    complete = test[data.present[test].all(1)]
    models = [("gated" if f.gated else "ungated", f.gated, names)]
    if f.gated and "ungated" in f.baselines:
        models.append(("ungated", False, names))
    if "single" in f.baselines:
        models += [(f"single_{m}", False, (m,)) for m in names]
    rows: list[dict[str, Any]] = []
    outputs_model: str | None = None
    for label, gated, mods in models:
        sub = data.only(mods)
        fit_on = train[sub.present[train].any(1)]
        seed_everything(cfg.seed, cfg.runtime.deterministic)  # every model starts from the run's seed
        model = GatedFusion({m: data.feats[m].shape[1] for m in mods}, y.shape[1] if multilabel else len(
            ctx.data.classes), hidden=f.hidden, gate_dim=f.gate_dim, dropout=f.dropout, gated=gated)
        check = val[sub.present[val].any(1)] if f.select_on == "validation" else val[:0]
        fit = train_fusion(model, sub.take(fit_on), y[fit_on], multilabel=multilabel, steps=f.steps,
                           batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                           modality_dropout=f.modality_dropout if len(mods) > 1 else 0.0,
                           corrupt_prob=f.corrupt_prob if len(mods) > 1 else 0.0,
                           degrade_prob=f.degrade_prob if len(mods) > 1 and f.degraded else 0.0, seed=cfg.seed,
                           device=ctx.device or "cpu", progress=cfg.runtime.progress,
                           val=(sub.take(check), y[check]) if len(check) else None)
        _log_fit(tracker, label, fit, len(check), f.select_on)
        save_checkpoint(out_dir / f"{label}.pt", {"state_dict": model.state_dict(), "modalities": list(mods),
                                                  "classes": list(ctx.data.classes)})
        for cond, view, who in _conditions(sub, complete, test, len(mods) > 1, cfg.seed):
            probs, gates = predict_fusion(model, view.take(who), multilabel=multilabel, device=ctx.device or "cpu")
            row = _evaluate(tracker, ctx, label, cond, y[who], probs, f.n_boot, cfg.seed)
            row.update({f"gate_{m}": float(gates[:, j].mean()) for j, m in enumerate(mods)} if gated else {})
            tracker.log_metrics({metric_key(fusion_tag(label, cond), f"gate_{m}"): row[f"gate_{m}"]
                                 for m in mods if f"gate_{m}" in row})
            rows.append({"model": label, "condition": cond, "n_train_patients": int(len(fit_on)), **row})
        log.info("fuse: %s — %s", label, ", ".join(f"{r['condition']} {r['auroc']:.3f}" for r in rows
                                                    if r["model"] == label))
        if label == models[0][0]:  # the run's fusion model: its predictions and the deployable model
            _predictions(ctx, tracker, model, data, patients, split, label, out_dir)
            outputs_model = _log_model(ctx, tracker, encoders, model, raw, stats, label, out_dir)
    return {**_outputs(ctx, tracker, rows, out_dir, names), "model_uri": outputs_model}


def _predictions(ctx: RunContext, tracker: Tracker, model: GatedFusion, data: FusionData, patients: list[str],
                 split: np.ndarray, label: str, out_dir: Any) -> None:
    """``predictions.csv`` (logged): every patient's probabilities and gates from the examinations it has."""
    probs, gates = predict_fusion(model, data, multilabel=ctx.data.y.ndim == 2, device=ctx.device or "cpu")
    if ctx.data.task == "binary":
        probs, cols = probs[:, 1:], [f"p_{ctx.data.classes[1]}"]
    else:
        cols = [f"p_{c}" for c in ctx.data.classes]
    path = out_dir / "predictions.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["patient", "split", "model", *[f"gate_{m}" for m in data.names], *cols])
        for i, p in enumerate(patients):
            w.writerow([p, split[i], label, *[f"{g:.6f}" for g in gates[i]], *[f"{v:.6f}" for v in probs[i]]])
    tracker.log_artifact(path)


def _log_model(ctx: RunContext, tracker: Tracker, encoders: dict[str, Any], head: GatedFusion, raw: FusionData,
               stats: dict[str, tuple[np.ndarray, np.ndarray]], label: str, out_dir: Any) -> str | None:
    """Log the fusion model (every modality's encoder and preprocessing, the statistics, the head); its URI.

    ``medcl predict RUN manifest.csv`` applies it to new patients; ``None`` without a tracking store.
    """
    if not tracker.active:
        return None
    from medcl.tracking.pyfunc import log_fusion  # lazy: mlflow

    cfg, mods = ctx.cfg, {}
    for m in raw.names:
        sub_cfg = ctx.modalities[m]["config"]
        pre = {"preset": sub_cfg.transforms.preset, **(sub_cfg.transforms.model_extra or {})}
        item = next(it for it in ctx.data.items() if ctx.data.records[it["index"]].modality == m)
        shape = list(ModelInputs({"preprocessing": pre}).prepare(item["image"], f"a {m} training sample").shape)
        mods[m] = {"preprocessing": pre, "input_shape": shape, "feature_dim": int(raw.feats[m].shape[1]),
                   "encoder": sub_cfg.model.encoder, "encoder_run": ctx.modalities[m].get("run_id")}
    model = FusionModel({m: e.cpu() for m, e in encoders.items()}, stats, head.cpu())
    meta = json.loads(json.dumps({"kind": "fusion", "classes": list(ctx.data.classes), "task": ctx.data.task,
                                  "model": label, "gated": bool(head.gated), "modalities": mods,
                                  "output": "per patient: p_<class>, gate_<modality>, n_<modality>"},
                                 default=jsonable))
    name = f"{cfg.tracking.register_model}-fusion" if cfg.tracking.register_model else None
    uri = log_fusion(tracker, model, meta, out_dir / "model", registered_model_name=name,
                     pip_requirements=model_requirements())
    log.info("fuse: the %s model is logged as %s (medcl predict <run> <manifest> applies it)", label, uri)
    return uri


def _log_fit(tracker: Tracker, label: str, fit: Any, n_val: int, select_on: str) -> None:
    """The training and validation losses, the kept step, and one log line saying which step was kept and why."""
    for step, loss in zip(fit.val_steps, fit.val_losses, strict=True):
        tracker.log_metrics({f"fuse/{label}/val_loss": loss}, step=step)
    tracker.log_metrics({f"fuse/{label}/final_loss": fit.losses[-1], f"fuse/{label}/best_step": float(fit.best_step)})
    if fit.val_losses:
        log.info("fuse: %s — lowest validation loss %.4f at step %d of %d (%d validation patients): its weights are "
                 "kept", label, min(fit.val_losses), fit.best_step, len(fit.losses), n_val)
    elif select_on == "validation":
        log.warning("fuse: %s — no labelled validation patient: the last step's weights are kept (%d steps)", label,
                    len(fit.losses))


def _labelled(y: np.ndarray) -> np.ndarray:
    return ~np.isnan(y).any(1) if y.ndim == 2 else y >= 0


def _patient_labels(data: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(patients, labels (P,) or (P, K), split (P,))`` of the :class:`DataBundle` ``data``: one label per patient.

    Raises:
        DataError: rows of one patient carry different labels (fusion classifies patients).
    """
    patients = sorted(data.patient_index, key=data.patient_index.get)
    first: dict[str, int] = {}
    for i, r in enumerate(data.records):
        j = first.setdefault(r.patient, i)
        a, b = data.y[i], data.y[j]
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=data.y.ndim == 2):
            raise DataError(f"rows {data.records[j].row} and {r.row} are of one patient but carry different labels",
                            where=f"{data.manifest_path}, row {r.row}", fix="the fuse stage classifies patients: "
                            "give every row of a patient the patient's label")
    y = np.stack([data.y[first[p]] for p in patients]) if data.y.ndim == 2 else np.asarray(
        [data.y[first[p]] for p in patients], dtype=np.int64)
    split = np.asarray([data.assignment.get(p, "") for p in patients], dtype=object)
    return patients, y, split


def _embed(ctx: RunContext, modality: str, encoder: Any, patients: list[str], *,
           degraded: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(features (P, D), has (P,) bool, degraded (P, D) or None)``: each patient's mean embedding of ``modality``.

    ``encoder``: the modality's pretrained encoder, loaded once by the stage and logged with the fusion model.

    With ``degraded``, also the mean embedding of the same images degraded (:func:`medcl.tasks.fusion.degrade`:
    blurred and noisy, seeded by the run's seed), the ungradable examinations of the training and test conditions.
    """
    sub_cfg = ctx.modalities[modality]["config"]
    data = ctx.data
    items = [it for it in data.items() if data.records[it["index"]].modality == modality]
    sub = RunContext(sub_cfg, ctx.key, ctx.stage_dir("fuse") / modality, data, ctx.device)
    loader = make_loader(sub, items, make_transforms(sub_cfg, train=False), batch_size=sub_cfg.data.batch_size,
                         shuffle=False, train=False, distributed=False)
    encoder = encoder.to(ctx.device or "cpu").eval()
    feats, _, _, index = extract_features(encoder, loader, device=ctx.device or "cpu")
    row_patient = np.asarray([data.patient_index[data.records[i].patient] for i in index], dtype=np.int64)
    bad = None
    if degraded:
        bad, _, _, bad_index = extract_features(Degraded(encoder, ctx.cfg.seed), loader, device=ctx.device or "cpu")
        assert np.array_equal(bad_index, index)  # the same loader, unshuffled
    out = np.zeros((len(patients), feats.shape[1] if len(feats) else 1), np.float32)
    out_bad = np.zeros_like(out) if degraded else None
    has = np.zeros(len(patients), bool)
    for p in np.unique(row_patient):
        out[p] = feats[row_patient == p].mean(0)
        if out_bad is not None:
            out_bad[p] = bad[row_patient == p].mean(0)
        has[p] = True
    log.info("fuse: %s — %d images of %d patients embedded (%d features)%s", modality, len(items), int(has.sum()),
             out.shape[1], ", and degraded" if degraded else "")
    return out, has, out_bad


def lacking_modalities(data: Any, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Pseudonymised patient -> the modalities of ``names`` it has no row of (patients with every one left out)."""
    has: dict[str, set[str]] = {}
    for r in data.records:
        has.setdefault(r.patient, set()).add(str(r.modality))
    return {p: [m for m in names if m not in got] for p, got in sorted(has.items()) if not set(names) <= got}


def check_data(cfg: Any, data: Any) -> None:
    """Before anything trains: one label per patient and, with ``fuse.require_all``, every modality per patient.

    Raises:
        DataError: naming the manifest rows.
    """
    _patient_labels(data)
    lacking = lacking_modalities(data, tuple(cfg.fuse.modalities))
    if cfg.fuse.require_all and lacking:
        p, miss = next(iter(lacking.items()))
        rows = [r.row for r in data.records if r.patient == p]
        raise DataError(f"{len(lacking)} patient(s) lack a modality; the first, at manifest row(s) "
                        f"{', '.join(map(str, rows[:5]))}, has no {', '.join(miss)} row", where=str(data.manifest_path),
                        fix="add the missing examinations, or set fuse.require_all: false (such patients are then "
                        "listed and classified from the modalities they have)")


def _missing(ctx: RunContext, tracker: Tracker, data: FusionData) -> None:
    """List the patients lacking a modality: one log line, ``missing_modalities.json`` (pseudonymised), params."""
    lacking = lacking_modalities(ctx.data, data.names)
    if not lacking:
        return
    counts = {m: sum(m in v for v in lacking.values()) for m in data.names}
    text = ", ".join(f"{m}: {n}" for m, n in counts.items() if n)
    rows: dict[str, list[int]] = {}
    for r in ctx.data.records:
        if r.patient in lacking:
            rows.setdefault(r.patient, []).append(r.row)
    path = ctx.stage_dir("fuse") / "missing_modalities.json"
    path.write_text(json.dumps([{"patient": p, "rows": rows[p], "missing": v} for p, v in lacking.items()], indent=1))
    tracker.log_artifact(path)
    tracker.log_params({f"fuse.patients_without_{m}": n for m, n in counts.items()})
    log.warning("fuse: %d patient(s) lack a modality (%s): classified from the modalities they have; listed in "
                "missing_modalities.json", len(lacking), text)


def _conditions(data: FusionData, complete: np.ndarray, test: np.ndarray, several: bool, seed: int):
    """``(condition, data, test patients)`` to evaluate: as they are, and each modality removed, mislinked or degraded."""
    out = [("complete", data, complete)]
    if several:
        out.append(("all", data, test))
        for m in data.names:
            out += [(f"without_{m}", data.dropped(m), complete), (f"mislinked_{m}", data.mislinked(m, seed), complete)]
            if data.degraded is not None:
                out.append((f"degraded_{m}", data.with_degraded(m), complete))
    return out


def _evaluate(tracker: Tracker, ctx: RunContext, model: str, condition: str, y: np.ndarray, probs: np.ndarray,
              n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics with patient-bootstrap CIs of one model and condition, logged; the row of the results table."""
    task = ctx.data.task
    p = probs[:, 1] if task == "binary" else probs
    res = metrics_with_ci(y, p, task, class_names=ctx.data.classes, n_boot=n_boot, seed=seed)
    tag = fusion_tag(model, condition)
    logged = {}
    for name in METRICS:
        if name in res:
            logged[metric_key(tag, name)] = res[name]["value"]
            logged[metric_key(tag, name, "ci_low")] = res[name]["ci_low"]
            logged[metric_key(tag, name, "ci_high")] = res[name]["ci_high"]
    tracker.log_metrics({k: v for k, v in logged.items() if np.isfinite(v)})
    row = {"n_patients": int(len(y))}
    for name in METRICS:
        if name in res:
            row.update({name: res[name]["value"], f"{name}_ci_low": res[name]["ci_low"],
                        f"{name}_ci_high": res[name]["ci_high"]})
    return row


def _outputs(ctx: RunContext, tracker: Tracker, rows: list[dict[str, Any]], out_dir: Any,
             names: tuple[str, ...]) -> dict[str, Any]:
    """Write and log ``results.csv``; the stage's outputs with the summary rows."""
    path = out_dir / "results.csv"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    tracker.log_artifact(path)
    tracker.log_params({f"fuse.{m}.encoder_run": ctx.modalities[m].get("run_id") or "given" for m in names})
    best = {r["model"]: r for r in rows if r["condition"] == "complete"}
    summary = [{"model": r["model"], "metric": "macro AUROC (test patients with every modality)",
                "value": f"{r['auroc']:.3f} [{r['auroc_ci_low']:.3f}, {r['auroc_ci_high']:.3f}]"}
               for r in best.values() if "auroc" in r]
    main = rows[0]["model"]
    summary += [{"model": main, "metric": f"macro AUROC {r['condition'].replace('_', ' ')}",
                 "value": f"{r['auroc']:.3f}"} for r in rows if r["model"] == main and r["condition"] != "complete"
                and "auroc" in r]
    return {"results": str(path), "summary": summary, "rows": json.loads(json.dumps(rows, default=jsonable))}

