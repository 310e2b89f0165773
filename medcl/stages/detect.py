"""The ``detect`` stage: one-class detection of a rare finding on the pretrained encoder's features.

"Normal" is learnt from the normal training samples only (``detect.normal_class``; every other class is the
finding), each scorer of :mod:`medcl.tasks.oneclass` scores the test samples, and the threshold is set on the
validation normal samples for ``detect.specificity``. Reported per encoder (the pretrained one, and a random-init
one as the baseline) and scorer: anomaly AUROC and AUPRC, and sensitivity and specificity at that threshold, each
with a patient-bootstrap 95 % CI. Artifacts: ``detect/results.json`` and ``detect/scores_test.csv`` (dataset
positions, never patient ids). Runs on rank 0.
"""

from __future__ import annotations

import csv
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.engine.inference import extract_features
from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.metric_keys import CI_BOUNDS, detect_tag, metric_key
from medcl.metrics.bootstrap import bootstrap_ci
from medcl.stages.common import make_encoder, make_loader, make_transforms
from medcl.tasks.oneclass import DeepSVDD, detection_metrics, knn_scores, threshold_at_specificity

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker

log = logging.getLogger(__name__)
METRICS = ("auroc", "auprc", "sensitivity", "specificity")


def _normal_index(ctx: RunContext) -> int:
    d = ctx.cfg.detect
    classes = list(ctx.data.classes)
    if not d.normal_class:
        raise ConfigError("the detect stage needs the normal class", where="detect.normal_class",
                          fix=f"set detect.normal_class to one of {', '.join(classes)}")
    if d.normal_class not in classes:
        raise ConfigError(f"detect.normal_class {d.normal_class!r} is not a class of the data", where="detect.normal_class",
                          fix=f"{did_you_mean(d.normal_class, classes)}use one of {', '.join(classes)}")
    if ctx.data.y.ndim != 1:
        raise ConfigError("one-class detection needs one label per sample", where="detect",
                          fix="use a binary or multiclass task (data.task)")
    return classes.index(d.normal_class)


def _features(ctx: RunContext, weights: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (features (N, D), dataset positions (N,))}`` of the labelled samples, by one encoder."""
    cfg = ctx.cfg
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder = make_encoder(base, weights=weights).to(ctx.device)
    tf = make_transforms(cfg, train=False)
    out = {}
    for split in ("train", "val", "test"):
        items = ctx.data.items(split, labelled=True)
        if not items:
            out[split] = (np.zeros((0, 1), np.float32), np.zeros(0, np.int64))
            continue
        loader = make_loader(ctx, items, tf, batch_size=cfg.data.batch_size, shuffle=False, train=False,
                             distributed=False)
        feats, _, _, idx = extract_features(encoder, loader, device=ctx.device)
        out[split] = (feats, idx)
    return out


def _scores(scorer: str, normal: np.ndarray, feats: dict[str, np.ndarray], d: Any, seed: int) -> dict[str, np.ndarray]:
    if scorer == "knn":
        return {s: knn_scores(normal, f, d.k) for s, f in feats.items()}
    model = DeepSVDD(tuple(d.dsvdd_hidden), d.dsvdd_epochs, d.dsvdd_lr, d.dsvdd_weight_decay, seed=seed).fit(normal)
    return {s: model.score(f) for s, f in feats.items()}


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Fit each scorer on the normal training samples of each encoder and measure detection on the test split.

    Returns:
        The stage's outputs: ``results`` (path of ``results.json``), ``scores`` (``scores_test.csv``) and the
        summary rows.

    Raises:
        ConfigError: no or an unknown ``detect.normal_class``, or multi-label data.
        DataError: no normal training samples, or no anomalous test sample to detect.
    """
    d, cfg = ctx.cfg.detect, ctx.cfg
    normal_idx = _normal_index(ctx)
    pretrained = (ctx.outputs.get("pretrain") or {}).get("encoder") or cfg.model.pretrained_path
    encoders: dict[str, str | None] = {}
    if pretrained:
        encoders["ssl"] = str(pretrained)
    else:
        log.warning("detect: no pretrained encoder (no pretrain stage and no model.pretrained_path): baselines only")
    if "random" in d.baselines:
        encoders["random"] = None
    y = ctx.data.y
    results, columns = [], {}
    out_dir = ctx.stage_dir("detect")
    for name, weights in encoders.items():
        feats = _features(ctx, weights)
        normal = feats["train"][0][y[feats["train"][1]] == normal_idx]
        if len(normal) < 2:
            raise DataError(f"{len(normal)} normal training samples ({d.normal_class})", where="detect",
                            fix="the training split needs normal samples to learn what normal is")
        test_idx = feats["test"][1]
        anomalous = (y[test_idx] != normal_idx).astype(int)
        if anomalous.sum() == 0:
            raise DataError("the test split has no sample of the finding to detect", where="detect",
                            fix="give the manifest a split column that puts patients with the finding in every split "
                            "(a split stratified by each patient's majority label may not), add such patients, or "
                            "raise data.test_fraction")
        groups = ctx.data.patients_of(test_idx)
        val_idx = feats["val"][1]
        for scorer in d.scorers:
            s = _scores(scorer, normal, {k: v[0] for k, v in feats.items()}, d, cfg.seed)
            val_normal = s["val"][y[val_idx] == normal_idx]
            threshold_on = "validation normal samples" if len(val_normal) else "training normal samples"
            thr = threshold_at_specificity(val_normal if len(val_normal) else s["train"][y[feats["train"][1]]
                                                                                           == normal_idx], d.specificity)
            point = detection_metrics(anomalous, s["test"], thr)
            row: dict[str, Any] = {"model": name, "scorer": scorer, "threshold": thr, "threshold_on": threshold_on,
                                   "n_train_normal": int(len(normal)), **{k: point[k] for k in ("n", "n_anomalous",
                                                                                                 "prevalence")}}
            tag = detect_tag(name, scorer)
            logged = {}
            for m in METRICS:
                ci = bootstrap_ci(lambda yy, ss, m=m, t=thr: detection_metrics(yy, ss, t)[m], anomalous, s["test"],
                                  groups, n_boot=d.n_boot, seed=cfg.seed)
                row[m] = {"value": point[m], "ci_low": ci[1], "ci_high": ci[2]}
                logged[metric_key(tag, m)] = point[m]
                for bound, v in zip(CI_BOUNDS, ci[1:]):
                    logged[metric_key(tag, m, bound)] = v
            tracker.log_metrics({k: float(v) for k, v in logged.items() if np.isfinite(v)})
            results.append(row)
            columns[f"{name}_{scorer}"] = s["test"]
            log.info("detect %s/%s: AUROC %.3f, AUPRC %.3f (prevalence %.3f), sensitivity %.3f at specificity %.3f",
                     name, scorer, point["auroc"], point["auprc"], point["prevalence"], point["sensitivity"],
                     point["specificity"])
    tracker.log_params({"detect.normal_class": d.normal_class, "detect.specificity": d.specificity,
                        "detect.scorers": ",".join(d.scorers)})
    res_path = out_dir / "results.json"
    res_path.write_text(json.dumps(results, indent=2))
    tracker.log_artifact(res_path)
    scores_path = out_dir / "scores_test.csv"
    with scores_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "anomalous", *columns])
        for i, idx in enumerate(test_idx):
            w.writerow([int(idx), int(anomalous[i]), *[f"{c[i]:.6g}" for c in columns.values()]])
    tracker.log_artifact(scores_path)
    summary = [{"model": f"{r['model']} {r['scorer']}", "metric": m,
                "value": f"{r[m]['value']:.3f} [{r[m]['ci_low']:.3f}, {r[m]['ci_high']:.3f}]"}
               for r in results for m in ("auroc", "auprc", "sensitivity")]
    return {"results": str(res_path), "scores": str(scores_path), "summary": summary}
