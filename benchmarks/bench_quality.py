"""Learning quality on the demo data: what pretraining buys, per modality and per method, over seeds.

Every run is a real pipeline: ``medcl.pipeline.run_pipeline(load_pipeline(YAML, overrides))`` on the
synthetic demo set of the modality (``medcl data synth``), with the demo's own pretraining settings
(``pipelines/demo/<modality>.yaml``). Read back from the stage outputs:

* ``classify/results.json``: linear-probe macro AUROC of the pretrained encoder (``ssl``), the same
  encoder at random init (``random``) and raw pixels (``raw``); fine-tuning from the pretrained
  encoder vs from scratch at label fractions of the training *patients* (1 %, 10 %, 100 %); the
  scratch fine-tune at 100 % is the supervised reference;
* ECE (15 equal-width bins) of the primary fine-tuned model on the test split before and after
  temperature scaling fitted on the validation split — computed from the classify stage's
  ``primary.npz`` with ``medcl.tasks.calibration.calibration_report``, the function the calibrate
  stage calls (the stage itself is left out: it also exports an MLflow model, which is not measured);
* ``segment/results.json`` (CT, MRI): mean Dice of the U-Net on the pretrained encoder vs from scratch
  at 10 % and 100 % of the labelled patients.

Runs, in priority order (the budget stops the list, the rest are reported as not run):
``headline`` — OCT SimCLR over ``--seeds`` seeds; ``modality`` — every other modality's demo pipeline
(its own method) at seed 0; ``extra-seed`` — seeds 1, 2 of the other modalities; ``method`` — OCT with
SimCLR, MoCo, MICLe (patient-aware) and the SupCon variants with the same optimiser, learning rate,
epochs and batch (every method at seed 0, then every method at seed 1, ...; ``--method-seeds``). Results are written after every run; a re-run skips runs already
in the output file (``--fresh`` to redo), so the benchmark can be resumed.

Usage::

    python benchmarks/bench_quality.py --out benchmarks/results/quality.json [--quick] [--budget-min 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import ROOT, base_meta, demo_manifest, quiet_logs, write_results

MODALITIES = ("oct", "fundus", "histo", "ecg", "ct", "mri")
#: OCT method comparison: preset name -> extra settings for the OCT classes
METHODS: dict[str, list[str]] = {
    "simclr": [],
    "moco": [],
    "micle": [],
    "supcon": [],
    "supcon-hardneg": ["pretrain.method_options.hard_pairs=[[early, intermediate]]"],
    "supcon-graph": ["pretrain.method_options.similarity={classes: [normal, early, intermediate], "
                     "edges: [[normal, early, 0.5], [early, intermediate, 0.5]]}"],
    "supcon-balanced": [],
}
FRACTIONS = [0.01, 0.1, 1.0]


def plan(seeds: int, modalities: list[str], methods: list[str], quick: bool,
         method_epochs: int | None = None, method_seeds: int | None = None) -> list[dict[str, Any]]:
    """The runs, highest priority first (the method comparison seed by seed: every method at seed 0 first)."""
    if quick:
        return [{"kind": "headline", "modality": "oct", "method": "simclr", "seed": 0}]
    runs = [{"kind": "headline", "modality": "oct", "method": "simclr", "seed": s} for s in range(seeds)]
    runs += [{"kind": "modality", "modality": m, "method": None, "seed": 0} for m in modalities if m != "oct"]
    runs += [{"kind": "extra-seed", "modality": m, "method": None, "seed": s}
             for s in range(1, seeds) for m in modalities if m != "oct"]
    runs += [{"kind": "method", "modality": "oct", "method": m, "seed": s, "epochs": method_epochs}
             for s in range(seeds if method_seeds is None else method_seeds) for m in methods]
    return runs


def run_key(r: dict[str, Any]) -> str:
    key = f"{r['modality']}/{r['method'] or 'demo'}/seed{r['seed']}"
    if r["kind"] == "method":
        key = f"methods:{key}" + (f"/{r['epochs']}ep" if r.get("epochs") else "")
    return key


def overrides(r: dict[str, Any], quick: bool, work: Path, manifest: Path, finetune_epochs: int | None = None,
              reuse: str | None = None) -> tuple[Path, list[str]]:
    """The pipeline YAML and the ``--set`` overrides of one run."""
    mod = r["modality"]
    yaml_path = ROOT / "pipelines" / "demo" / f"{mod}.yaml"
    demo_raw = _demo_raw(mod)
    sets = [f"data.manifest={manifest}", f"seed={r['seed']}", f"runtime.output_dir={work / 'runs'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "runtime.progress=false", "runtime.device=cpu",
            "classify.n_boot=50", "segment.n_boot=50", "segment.overlays=0"]
    if r["kind"] == "method":
        # the method's preset (temperature, options) with the demo's optimiser, lr, epochs and batch
        p = demo_raw["pretrain"]
        yaml_path = work / f"oct-{r['method']}.yaml"
        yaml_path.write_text(
            f"include: [{ROOT / 'pipelines' / 'demo' / 'oct.yaml'}, {ROOT / 'configs' / 'method' / (r['method'] + '.yaml')}]\n"
            f"name: demo-oct-{r['method']}\n")
        sets += [f"pretrain.optimizer={p['optimizer']}", f"pretrain.lr={p['lr']}",
                 f"pretrain.weight_decay={p['weight_decay']}", f"pretrain.epochs={r.get('epochs') or p['epochs']}",
                 f"pretrain.batch_size={p['batch_size']}", "stages=[pretrain,classify]",
                 "classify.protocols=[linear]", "classify.baselines=[random]", "classify.label_fractions=[1.0]",
                 *METHODS[r["method"]]]
        return yaml_path, sets
    stages = ["pretrain", "classify"] + (["segment"] if "segment" in demo_raw.get("stages", []) else [])
    has_val = float(demo_raw.get("data", {}).get("val_fraction", 0.15)) > 0
    # 1 % of the 3D sets' ~28 training patients is the one-per-class minimum, the same as 10 %
    fractions = "[0.5,1.0]" if quick else ("[0.1,1.0]" if mod in ("ct", "mri") else "[0.01,0.1,1.0]")
    sets += [f"stages=[{','.join(stages)}]", "classify.protocols=[linear,finetune]",
             "classify.baselines=[random,raw,scratch]", f"classify.label_fractions={fractions}",
             f"segment.label_fractions={'[0.5,1.0]' if quick else '[0.1,1.0]'}"]
    if finetune_epochs and not quick:
        sets.append(f"classify.finetune.epochs={finetune_epochs}")
    if reuse:  # the encoder of an earlier pretraining with the same config and seed
        stages.remove("pretrain")
        sets += [f"stages=[{','.join(stages)}]", f"model.pretrained_path={reuse}"]
    if not has_val:
        sets.append("classify.protocols=[linear]")  # no validation split: nothing to calibrate a fine-tune on
    if quick:
        from medcl.pipeline import SMOKE_OVERRIDES

        sets = [*SMOKE_OVERRIDES, *sets]
    return yaml_path, sets


def _demo_raw(mod: str) -> dict[str, Any]:
    from medcl.config import load_raw

    return load_raw(ROOT / "pipelines" / "demo" / f"{mod}.yaml")


def _auroc(row: dict[str, Any]) -> float | None:
    m = row.get("metrics", {}).get("auroc")
    v = m.get("value") if isinstance(m, dict) else None
    return None if v is None else float(v)


def collect(ctx: Any, r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one finished pipeline run."""
    import numpy as np

    from medcl.tasks.calibration import calibration_report

    out: dict[str, Any] = {"seconds": {k: v.get("seconds") for k, v in ctx.outputs.items()},
                           "final_pretrain_loss": ctx.outputs.get("pretrain", {}).get("final_loss"),
                           "method_run": ctx.cfg.pretrain.method, "task": ctx.data.task,
                           "n_patients": len(ctx.data.patient_index), "n_samples": len(ctx.data.records)}
    cls = ctx.outputs.get("classify") or {}
    if cls.get("results"):
        rows = json.loads(Path(cls["results"]).read_text())
        out["classify"] = [{"model": x["model"], "protocol": x["protocol"], "fraction": x["fraction"],
                            "auroc": _auroc(x), "n_train_patients": x.get("n_train_patients")} for x in rows]
        if cls.get("primary"):
            npz = dict(np.load(cls["primary"]))
            meta = json.loads(Path(cls["primary_meta"]).read_text())
            if npz["val_logits"].size and npz["test_logits"].size:
                c = ctx.cfg.calibrate
                rep = calibration_report(npz["val_logits"], npz["val_y"], npz["test_logits"], npz["test_y"],
                                         c.method, c.n_bins, task=ctx.data.task)
                key = next(k for k in ("ece_equal_width", "ece", "ece_adaptive") if k in rep["before"])
                out["calibration"] = {"model": f"{meta['encoder']} {meta['kind']}", "method": c.method,
                                      "n_bins": c.n_bins, "ece_before": float(rep["before"][key]),
                                      "ece_after": float(rep["after"][key]),
                                      "nll_before": float(rep["before"]["nll"]), "nll_after": float(rep["after"]["nll"]),
                                      "temperature": rep.get("temperature")}
    seg = ctx.outputs.get("segment") or {}
    if seg.get("results"):
        rows = json.loads(Path(seg["results"]).read_text())
        out["segment"] = [{"model": x["model"], "fraction": x["fraction"],
                           "dice": (x.get("dice_mean") or {}).get("value"),
                           "n_train_patients": x.get("n_train_patients")} for x in rows]
    return out


def run_one(r: dict[str, Any], quick: bool, work: Path, finetune_epochs: int | None = None,
            reuse: str | None = None) -> dict[str, Any]:
    from medcl.pipeline import load_pipeline, run_pipeline

    manifest = demo_manifest(r["modality"], work / "data", patients=12 if quick else None)
    yaml_path, sets = overrides(r, quick, work, manifest, finetune_epochs, reuse)
    cfg = load_pipeline(yaml_path, sets)
    t0 = time.time()
    ctx = run_pipeline(cfg)
    res = collect(ctx, r)
    out = {**r, "key": run_key(r), "method_run": res.pop("method_run"), "wall_s": round(time.time() - t0, 1), **res}
    if reuse:
        out["pretrain_reused"] = reuse
    return out


def merge(parts: list[Path], out: Path, todo: list[dict[str, Any]]) -> int:
    """One result file from several partial ones (``--kinds`` runs in parallel processes)."""
    metas, by_key = [], {}
    for p in parts:
        d = json.loads(Path(p).read_text())
        metas.append(d["meta"])
        for r in d["rows"]:
            # a finished run beats a failed one (re-run after a fix), which beats one not run
            rank = 0 if "skipped" in r else 1 if "error" in r else 2
            old = by_key.get(r["key"])
            if old is None or rank > (0 if "skipped" in old else 1 if "error" in old else 2):
                by_key[r["key"]] = r
    rows = [by_key.get(run_key(r), {**r, "key": run_key(r), "skipped": "not run"}) for r in todo]
    loads = [m["load_before"] for m in metas if m.get("load_before")]
    meta = {**metas[0], "parts": metas, "plan": [run_key(r) for r in todo],
            "demo_epochs": _demo_raw("oct")["pretrain"]["epochs"],
            "load_before": max(loads, key=lambda x: x[0]) if loads else None,
            "wall_s": max(m.get("wall_s") or 0 for m in metas),
            "processes": len(parts)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="one OCT run on 12 patients, a few steps per stage")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--budget-min", type=float, default=40.0,
                        help="start no new run after this many minutes (the rest are reported as not run)")
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in --out")
    parser.add_argument("--kinds", nargs="+", default=None, choices=["headline", "modality", "method", "extra-seed"],
                        help="run only these kinds of run (e.g. to split the list over two processes)")
    parser.add_argument("--method-seeds", type=int, default=None,
                        help="seeds of the method comparison (default: --seeds)")
    parser.add_argument("--method-epochs", type=int, default=None,
                        help="pretraining epochs of the method comparison (default: the demo's)")
    parser.add_argument("--finetune-epochs", type=int, default=15,
                        help="classify.finetune.epochs (the demo YAMLs do not fine-tune; 0: the config's default)")
    parser.add_argument("--reuse-encoder", nargs=2, action="append", metavar=("KEY", "ENCODER_PT"), default=[],
                        help="use this pretrained encoder.pt (same config and seed, made earlier) for run KEY")
    parser.add_argument("--keys", nargs="+", default=None, help="run only these run keys (see the plan in meta)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="only merge these result files (of --kinds runs) into --out, in plan order")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "quality")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    todo = plan(args.seeds, args.modalities, args.methods, args.quick, args.method_epochs, args.method_seeds)
    reuse = dict(args.reuse_encoder)
    if args.merge:
        return merge(args.merge, args.out, todo)
    if args.kinds:
        todo = [r for r in todo if r["kind"] in args.kinds]
    if args.keys:
        todo = [r for r in todo if run_key(r) in args.keys]
    done: dict[str, dict] = {}
    if args.out.is_file() and not args.fresh:
        old = json.loads(args.out.read_text())
        if bool(old.get("meta", {}).get("quick")) == args.quick:
            done = {x["key"]: x for x in old.get("rows", []) if "error" not in x and "skipped" not in x}
    meta = {**base_meta(args.quick), "seeds": args.seeds, "budget_min": args.budget_min,
            "finetune_epochs": args.finetune_epochs, "method_epochs": args.method_epochs,
            "demo_epochs": _demo_raw("oct")["pretrain"]["epochs"],
            "plan": [run_key(r) for r in todo]}
    rows: list[dict] = []
    for r in todo:
        key = run_key(r)
        if key in done:
            rows.append(done[key])
            continue
        elapsed = (time.time() - t0) / 60
        if elapsed > args.budget_min:
            rows.append({**r, "key": key, "skipped": f"not run: the {args.budget_min:g}-minute budget was spent"})
            continue
        print(f"# quality: {key} ({r['kind']}), {elapsed:.1f} min elapsed", file=sys.stderr, flush=True)
        try:
            rows.append(run_one(r, args.quick, work, args.finetune_epochs, reuse.get(key)))
        except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others still run
            traceback.print_exc()
            rows.append({**r, "key": key, "error": f"{type(exc).__name__}: {str(exc)[:800]}"})
        write_results(args.out, meta, rows + [{**x, "key": run_key(x), "skipped": "pending"}
                                              for x in todo[len(rows):]], t0)
    write_results(args.out, meta, rows, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
