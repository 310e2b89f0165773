"""Rank 0's part of the ``classify`` stage: frozen-feature protocols, test metrics of every model, results.

The encoders' features (pretrained, random-init, raw pixels) feed the linear probe and kNN at every label
fraction; the fine-tuned models' gathered logits are scored the same way. Every model gets test metrics with
patient-bootstrap CIs (and per-subgroup tables); the primary model's logits are handed on to ``calibrate``, with
out-of-fold training logits when calibration cross-fits. Part of the ``classify`` stage
(:mod:`medcl.stages.classify`, which re-exports every name defined here).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.errors import ConfigError, PHIError
from medcl.lookup import did_you_mean
from medcl.metric_keys import CI_BOUNDS, metric_key, model_tag
from medcl.stages.classify_report import _log_report_material
from medcl.stages.common import jsonable as _jsonable
from medcl.tasks.primary import PrimaryModel

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl.checkpoint_file import save_checkpoint
from medcl.engine.inference import extract_features
from medcl.metrics import choose_threshold, metrics_with_ci, subgroup_metrics
from medcl.stages.common import make_encoder, make_loader, make_transforms, seed_everything
from medcl.tasks.calibration import logits_to_probs
from medcl.tasks.classification import knn_predict, linear_probe, patient_cv_splits

log = logging.getLogger("medcl.stages.classify")  # the stage's log lines keep the stage's name
MAX_SUBGROUP_LEVELS = 8
#: columns that hold free text (reports): never subgroups, whatever their number of values
FREE_TEXT_COLUMNS = ("report",)
#: a subgroup level longer than this is free text, not a category (the column is left out)
MAX_LEVEL_CHARS = 40


def is_subgroup(name: str, levels: set[str], text_columns: tuple[str, ...] = ()) -> bool:
    """Whether a manifest column with these (non-empty) ``levels`` on the test rows is a subgroup to report.

    2 to :data:`MAX_SUBGROUP_LEVELS` short values, and not a free-text column: a report's text must never become
    a subgroup's name in a table, MLflow or the report.
    """
    return (name not in (*FREE_TEXT_COLUMNS, *text_columns) and 2 <= len(levels) <= MAX_SUBGROUP_LEVELS
            and all(len(v) <= MAX_LEVEL_CHARS and "\n" not in v for v in levels))


# -- features ----------------------------------------------------------------------------------------------------
def _raw_features(ctx: RunContext, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (downsampled to ≤ 1024 values per channel) as a "no learning" baseline: ``((N, F), indices (N,))``."""
    import torch.nn.functional as F

    feats, idx = [], []
    for batch in loader:
        x = batch["image"].float()
        spatial = x.shape[2:]
        if len(spatial) >= 2:
            target = [min(s, 32 if len(spatial) == 2 else 10) for s in spatial]
            x = F.adaptive_avg_pool2d(x, target) if len(spatial) == 2 else F.adaptive_avg_pool3d(x, target)
        else:
            x = F.adaptive_avg_pool1d(x, min(spatial[0], 256))
        feats.append(x.flatten(1).numpy())
        idx.append(batch["index"].numpy())
    return np.concatenate(feats), np.concatenate(idx)


def _extract(ctx: RunContext, encoder: Any, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's pooled features over ``loader``: ``((N, D), dataset indices (N,))``."""
    feats, _, _, idx = extract_features(encoder.to(ctx.device), loader, device=ctx.device)
    return feats, idx


def _align(feats: np.ndarray, idx: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The rows of ``feats`` (dataset indices ``idx``) in the order of the dataset indices ``want``."""
    pos = {int(i): k for k, i in enumerate(idx)}
    return feats[[pos[int(i)] for i in want]]


def _subgroups(ctx: RunContext, test_idx: np.ndarray) -> dict[str, np.ndarray]:
    """``site`` and the manifest's extra columns with 2 to ``MAX_SUBGROUP_LEVELS`` values on the test samples."""
    out = {}
    names = ["site"] + sorted({k for r in ctx.data.records for k in r.extra})
    for name in names:
        col = ctx.data.column(name, test_idx)
        if is_subgroup(name, {v for v in col if v != ""}, ctx.data.text_columns()):
            out[name] = col
    return out


def _frozen_features(ctx: RunContext, split_idx: dict[str, np.ndarray], all_items: dict[str, list[dict]],
                     pretrained: Any) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The frozen encoders (``ssl``, ``random``) and every feature set (also ``raw``) of each split.

    Returns:
        ``(encoders by name, {name: {split: features (N_split, D) in the order of split_idx[split]}})``.
    """
    cfg, c = ctx.cfg, ctx.cfg.classify
    eval_tf = make_transforms(cfg, train=False)
    loaders = {s: make_loader(ctx, all_items[s], eval_tf, batch_size=cfg.data.batch_size, shuffle=False,
                              train=False, distributed=False) for s in split_idx if all_items[s]}
    encoders: dict[str, Any] = {}
    if pretrained:
        encoders["ssl"] = make_encoder(cfg, weights=pretrained)
    else:
        log.warning("no pretrained encoder (no pretrain stage and no model.pretrained_path): "
                    "evaluating the random-init encoder only")
    if "random" in c.baselines or not pretrained:
        seed_everything(cfg.seed + 1)
        encoders["random"] = make_encoder(cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"pretrained_path": None})}))
    features: dict[str, dict[str, np.ndarray]] = {}
    for name, enc in encoders.items():
        features[name] = {s: _align(*_extract(ctx, enc, ld), split_idx[s]) for s, ld in loaders.items()}
    if "raw" in c.baselines:
        features["raw"] = {s: _align(*_raw_features(ctx, ld), split_idx[s]) for s, ld in loaders.items()}
    return encoders, features


# -- cross-fitting -----------------------------------------------------------------------------------------------
def cross_fitting(cfg: Any, val_patients: np.ndarray) -> bool:
    """Whether the calibrate stage gets out-of-fold training logits (``calibrate.fit_on``)."""
    c = cfg.calibrate
    if "calibrate" not in cfg.stages or c.fit_on == "validation":
        return False
    return c.fit_on == "cross_fit" or len(np.unique(val_patients)) < c.min_val_patients


def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` patient-grouped ``(train, held-out)`` folds (stratified by ``y`` when it is one label per sample)."""
    return patient_cv_splits(y.astype(np.int64) if y.ndim == 1 else None, groups, k, seed=seed)


def _cross_fit_linear(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, *, k: int, seed: int, c: Any,
                      task: str, num_classes: int) -> dict[str, np.ndarray]:
    """Out-of-fold logits of the linear probe over the training patients (patient-grouped folds)."""
    parts, where = [], []
    folds = _folds(y, groups, k, seed)
    for tr, te in folds:
        pr = linear_probe(feats[tr], y[tr], feats[te], task=task, groups_train=groups[tr], backend=c.probe,
                          num_classes=num_classes, seed=seed)
        parts.append(np.asarray(pr.logits))
        where.append(te)
    order = np.concatenate(where)
    z = np.concatenate([p.reshape(len(p), -1) for p in parts])
    z = z[:, 0] if task == "binary" else z
    return {"logits": z, "y": y[order], "patients": groups[order], "folds": len(folds)}


def class_pairs(cfg: Any, classes: list[str] | None, task: str) -> list[tuple[str, str]]:
    """The class pairs whose one-vs-one AUROC is reported.

    ``classify.pairs``; by default a supcon-hardneg pretraining's ``hard_pairs`` (when they name classes).

    Raises:
        ConfigError: a pair that is not two different classes of the data, or pairs set for a binary/multi-label task.
    """
    given = cfg.classify.pairs
    where = "classify.pairs"
    if given is None:
        hard = (cfg.pretrain.method_options or {}).get("hard_pairs") or []
        given = [list(p) for p in hard if all(isinstance(x, str) for x in p)]
        where = "pretrain.method_options.hard_pairs"
        if task not in ("multiclass", "ordinal"):
            return []
    if given and task not in ("multiclass", "ordinal"):
        raise ConfigError(f"class pairs are for multiclass and ordinal tasks, this one is {task}", where=where,
                          fix="remove classify.pairs (a binary task's AUROC is already its pair's)")
    out = []
    for i, pair in enumerate(given):
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"pair {i} is {list(pair)}: a pair names two different classes", where=f"{where}[{i}]",
                              fix="e.g. [[stroma, normal]]")
        for name in pair:
            if name not in (classes or []):
                raise ConfigError(f"pair {i} names {name!r}, which is not a class of the data"
                                  f"{did_you_mean(name, classes or [], paren=True)}", where=f"{where}[{i}]",
                                  fix=f"name two of {', '.join(classes or [])}")
        out.append((str(pair[0]), str(pair[1])))
    return out


# -- evaluation on rank 0 ----------------------------------------------------------------------------------------
@dataclass
class _Evaluation:
    """What rank 0's evaluation shares: the labelled splits, the test subgroups and the result rows so far.

    ``split_idx``, ``y`` and ``patients`` are per split (``train``/``val``/``test``): dataset positions, labels
    (``(N,)`` or ``(N, K)`` multi-label) and patients; ``fractions`` maps each label fraction to the ``(N_train,)``
    bool selection of training samples.
    """

    ctx: RunContext
    tracker: Tracker
    split_idx: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    patients: dict[str, np.ndarray]
    fractions: dict[float, np.ndarray]
    largest: float
    pretrained: Any
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)

    def score(self, model_name: str, protocol: str, frac: float, probs_test: np.ndarray, extra: dict | None = None,
              val_probs: np.ndarray | None = None) -> dict[str, Any]:
        """Test metrics (patient-bootstrap CIs, subgroups) of one model, logged and added to ``results``.

        Binary models are called at the threshold chosen on ``val_probs`` (``classify.operating_point``).

        Returns:
            The result row.
        """
        cfg, c, data = self.ctx.cfg, self.ctx.cfg.classify, self.ctx.data
        task, classes, y, patients = data.task, data.classes, self.y, self.patients
        thr = None
        if task == "binary" and val_probs is not None and len(y["val"]):
            thr = choose_threshold(y["val"], val_probs, c.operating_point)
        m = metrics_with_ci(y["test"], probs_test, task, patients["test"], threshold=thr, class_names=classes,
                            pairs=class_pairs(cfg, classes, task), n_boot=c.n_boot, seed=cfg.seed)
        tag = model_tag(model_name, protocol, frac)
        flat = {}
        for k, v in m.items():
            if isinstance(v, dict) and "value" in v and np.isscalar(v["value"]):
                flat[metric_key(tag, k)] = v["value"]
                if v.get("ci_low") is not None:
                    flat.update({metric_key(tag, k, b): v[b] for b in CI_BOUNDS})
        self.tracker.log_metrics({k: float(v) for k, v in flat.items() if v is not None and np.isfinite(v)})
        row = {"model": model_name, "protocol": protocol, "fraction": frac, "metrics": m,
               "n_train_patients": int(len(np.unique(patients["train"][self.fractions[frac]]))), **(extra or {})}
        if self.subgroups:
            row["subgroups"] = subgroup_metrics(y["test"], probs_test, task, patients["test"],
                                                groups_by=self.subgroups, threshold=thr, class_names=classes)
        self.results.append(row)
        return row


def _evaluate_on_main(ctx: RunContext, tracker: Tracker, split_idx: dict[str, np.ndarray], all_items: dict[str, list[dict]],
                      y: dict[str, np.ndarray], patients: dict[str, np.ndarray], fractions: dict[float, np.ndarray],
                      pretrained: Any, finetuned: list[dict[str, Any]], largest: float,
                      oof: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Frozen-feature protocols, test metrics of every model, results and report material (rank 0).

    Returns:
        The stage's outputs: ``results`` (path of ``results.json``), ``summary`` and, when there is a primary
        model, ``primary`` / ``primary_meta`` (its files) and ``pretrained_encoder``.
    """
    encoders, features = _frozen_features(ctx, split_idx, all_items, pretrained)
    ev = _Evaluation(ctx, tracker, split_idx, y, patients, fractions, largest, pretrained,
                     _subgroups(ctx, split_idx["test"]))
    primary = _frozen_protocols(ev, features)
    primary = _score_finetuned(ev, finetuned, primary)
    return _hand_on(ev, primary, encoders, features, oof)


def _frozen_protocols(ev: _Evaluation, features: dict[str, dict[str, np.ndarray]]) -> PrimaryModel | None:
    """Linear probe (also for raw pixels) and kNN on every feature set at every label fraction, scored.

    Returns:
        The primary model when it is a linear probe (the pretrained encoder's at the largest fraction without
        fine-tuning, or the random-init one's without a pretrained encoder), else ``None``.
    """
    cfg, c, data = ev.ctx.cfg, ev.ctx.cfg.classify, ev.ctx.data
    task, classes = data.task, data.classes
    y, patients, split_idx, largest, pretrained = ev.y, ev.patients, ev.split_idx, ev.largest, ev.pretrained
    primary: PrimaryModel | None = None
    for frac in c.label_fractions:
        sel = ev.fractions[frac]
        for name, feats in features.items():
            if "linear" in c.protocols or name == "raw":
                pr = linear_probe(feats["train"][sel], y["train"][sel], feats["test"], task=task,
                                  groups_train=patients["train"][sel], backend=c.probe, num_classes=len(classes),
                                  seed=cfg.seed)
                val_logits = pr.model.predict_logits(feats["val"]) if len(split_idx["val"]) else None
                val_probs = pr.model.predict_proba(feats["val"]) if val_logits is not None else None
                ev.score(name, "linear", frac, pr.probs, {"C": pr.C, "notes": pr.notes}, val_probs)
                if name == "ssl" and frac == largest and "finetune" not in c.protocols or (
                        not pretrained and name == "random" and frac == largest and primary is None):
                    primary = PrimaryModel("linear", name, head=pr.model.to_dict(),
                                           arrays={"val_logits": _arr(val_logits), "test_logits": _arr(pr.logits)})
            if "knn" in c.protocols and name != "raw":
                probs = knn_predict(feats["train"][sel], y["train"][sel], feats["test"], k=c.knn_k, task=task,
                                    num_classes=len(classes))
                ev.score(name, "knn", frac, probs)
    return primary


def _score_finetuned(ev: _Evaluation, finetuned: list[dict[str, Any]],
                     primary: PrimaryModel | None) -> PrimaryModel | None:
    """Score the fine-tuned models (trained on every rank, logits gathered); the one kept becomes the primary.

    Its weights are saved as ``classify/finetuned-<name>.pt``. Returns the primary model (``primary`` when no
    fine-tuned model was kept).
    """
    task = ev.ctx.data.task
    ft_dir = ev.ctx.stage_dir("classify")
    for ft in finetuned:
        zt, zv = ft["test_logits"], ft["val_logits"]
        ev.score(ft["name"], "finetune", ft["frac"], logits_to_probs(zt, task), ft.get("train"),
                 logits_to_probs(zv, task) if zv is not None else None)
        if ft["model"] is not None:

            path = ft_dir / f"finetuned-{ft['name']}.pt"
            save_checkpoint(path, {"model": ft["model"].state_dict()})
            primary = PrimaryModel("finetune", ft["name"], weights=str(path),
                                   arrays={"val_logits": _arr(zv), "test_logits": _arr(zt)})
    return primary


def _hand_on(ev: _Evaluation, primary: PrimaryModel | None, encoders: dict[str, Any],
             features: dict[str, dict[str, np.ndarray]], oof: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Write and log the results; save the primary model for ``calibrate`` and log the report material.

    ``oof``: the fine-tuned primary model's out-of-fold training logits (a linear primary's are made here).
    """
    ctx, tracker, c = ev.ctx, ev.tracker, ev.ctx.cfg.classify
    task, classes = ctx.data.task, ctx.data.classes
    ft_dir = ctx.stage_dir("classify")
    results_path = ft_dir / "results.json"
    results_path.write_text(json.dumps(ev.results, indent=2, default=_jsonable))
    tracker.log_artifact(results_path)
    tracker.log_dict({"classes": classes, "task": task,
                      "fractions": {str(f): int(m.sum()) for f, m in ev.fractions.items()}}, "classify_setup.json")
    out: dict[str, Any] = {"results": str(results_path), "summary": _summary(ev.results, ev.largest)}
    if primary is not None:
        if primary.kind == "linear" and cross_fitting(ctx.cfg, ev.patients["val"]):
            sel = ev.fractions[ev.largest]
            oof = _cross_fit_linear(features[primary.encoder]["train"][sel], ev.y["train"][sel],
                                    ev.patients["train"][sel], k=ctx.cfg.calibrate.folds, seed=ctx.cfg.seed, c=c,
                                    task=task, num_classes=len(classes))
        prim_path, meta_path = _save_primary(ev, primary, encoders, oof)
        out.update({"primary": str(prim_path), "primary_meta": str(meta_path), "pretrained_encoder": ev.pretrained})
        # what the report shows beyond metrics (predictions, feature map, saliency): never patient ids.
        # A failure here must not throw away the evaluation above: the report then says what is missing.
        try:
            _log_report_material(ctx, tracker, primary, features, ev.results, ev.split_idx, ev.y, ev.subgroups,
                                 ev.largest)
        except PHIError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("classify: the report's predictions/feature map/saliency could not be made (%s: %s); "
                        "the report will show them as missing", type(exc).__name__, exc)
    return out


def _save_primary(ev: _Evaluation, primary: PrimaryModel, encoders: dict[str, Any],
                  oof: dict[str, np.ndarray] | None) -> tuple[Any, Any]:
    """Complete the primary model (labels, indices, patients, out-of-fold logits, threshold, encoder) and save it.

    Returns:
        ``(its arrays file, its metadata file)`` in the stage's folder.
    """
    ft_dir = ev.ctx.stage_dir("classify")
    y, split_idx, patients = ev.y, ev.split_idx, ev.patients
    empty = np.zeros((0,), np.float32)
    primary.arrays.update(val_y=y["val"], test_y=y["test"], val_index=split_idx["val"],
                          test_index=split_idx["test"], test_patients=patients["test"],
                          val_patients=patients["val"], oof_logits=_arr(oof["logits"]) if oof else empty,
                          oof_y=oof["y"] if oof else empty,
                          oof_patients=oof["patients"] if oof else np.zeros((0,), np.int64))
    primary.cross_fit_folds = int(oof["folds"]) if oof else 0
    # the binary operating point chosen on the validation patients (classify.operating_point), for predict
    prow = next((r for r in ev.results if r["model"] == primary.encoder and r["protocol"] == primary.kind
                 and r["fraction"] == ev.largest), None)
    primary.threshold = (prow or {}).get("metrics", {}).get("_info", {}).get("threshold")
    if primary.kind == "linear":  # the frozen encoder it was fitted on: pretrained, or this random init
        primary.encoder_weights = ev.pretrained if primary.encoder == "ssl" else PrimaryModel.save_encoder(
            encoders[primary.encoder], ft_dir / f"primary-encoder-{primary.encoder}.pt")
    return primary.save(ft_dir)


def _arr(x: Any) -> np.ndarray:
    """``x`` as a float32 array; ``None`` as an empty one."""
    return np.zeros((0,), np.float32) if x is None else np.asarray(x, np.float32)


def _summary(results: list[dict[str, Any]], largest: float) -> list[dict[str, str]]:
    """The stage's rows of the results table: AUROC / QWK (with CI) of every model at the largest fraction."""
    rows = []
    for r in results:
        if r["fraction"] != largest:
            continue
        for name in ("auroc", "qwk"):
            m = r["metrics"].get(name)
            if isinstance(m, dict) and m.get("value") is not None and np.isfinite(m["value"]):
                ci = f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m.get("ci_low") is not None and np.isfinite(
                    m["ci_low"]) else ""
                rows.append({"model": f"{r['model']} {r['protocol']}", "metric": name,
                             "value": f"{m['value']:.3f}{ci}"})
    return rows
