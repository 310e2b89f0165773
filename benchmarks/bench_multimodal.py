"""Learning from reports and from several modalities, on the demo data, per seed.

Three runs per seed, each a shipped demo pipeline at its own budgets (resumable: a re-run skips the runs already
finished in ``--out`` and retries failed ones):

* ``clip`` — ``pipelines/demo/ecg-report-clip.yaml`` (ECGs and their de-identified reports, CLIP pretraining) with
  the linear probe at 1 %, 10 % and 100 % of the training patients: zero-shot classification from the class prompts
  (no labels) next to the probe, and ECG↔report retrieval;
* ``simclr`` — the same pipeline, data, encoder, budget and probes with ``pretrain.method: simclr`` (the reports
  unused): what the reports add as a linear probe;
* ``fusion`` — ``pipelines/demo/eye-multimodal.yaml`` (fundus + OCT of the same patients, an encoder per modality
  pretrained by its own demo pipeline): the gated fusion against each modality alone and fusion without gates, on
  the test patients with every modality, with one modality removed and with one mislinked.

Usage::

    python benchmarks/bench_multimodal.py --out benchmarks/results/multimodal.json [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import ROOT, base_meta, finished_rows, git_commit, quiet_logs, write_results

KINDS = ("clip", "simclr", "fusion")
FRACTIONS = (0.01, 0.1, 1.0)


def _classify_metrics(uri: str, run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    return dict(MlflowClient(uri).get_run(run_id).data.metrics)


def run_ecg(kind: str, seed: int, manifest: Path, work: Path, quick: bool) -> dict[str, Any]:
    """The ECG–report demo pretrained with clip or simclr: probe per fraction, zero-shot, retrieval."""
    from medcl.metric_keys import metric_key, model_tag
    from medcl.pipeline import load_pipeline, run_pipeline

    out = work / f"{kind}-seed{seed}"
    uri = f"sqlite:///{out}.db"
    sets = [f"data.manifest={manifest}", f"seed={seed}", f"runtime.output_dir={out}", f"tracking.uri={uri}",
            "runtime.progress=false", "stages=[pretrain, classify]", "classify.protocols=[linear]",
            f"classify.label_fractions=[{', '.join(map(str, FRACTIONS))}]", "classify.baselines=[random]"]
    if kind == "simclr":
        sets += ["pretrain.method=simclr", "pretrain.method_options={}"]
    cfg = load_pipeline(ROOT / "pipelines" / "demo" / "ecg-report-clip.yaml", sets, smoke=quick)
    ctx = run_pipeline(cfg, smoke=quick)
    m = _classify_metrics(uri, ctx.outputs["classify"]["run_id"])
    row: dict[str, Any] = {"method": cfg.pretrain.method, "steps": ctx.outputs["pretrain"].get("steps_run")}
    for model in ("ssl", "random"):
        for f in FRACTIONS:
            key = metric_key(model_tag(model, "linear", f), "auroc")
            row[f"{model}_linear_f{round(f * 100)}"] = m.get(key)
    results = json.loads(Path(ctx.outputs["classify"]["results"]).read_text())
    row["train_patients"] = {f"f{round(x['fraction'] * 100)}": x.get("n_train_patients") for x in results
                             if x["model"] == "ssl" and x["protocol"] == "linear"}
    row["zero_shot_auroc"] = m.get("test/zero_shot/auroc")
    row["zero_shot_ci"] = [m.get("test/zero_shot/auroc_ci_low"), m.get("test/zero_shot/auroc_ci_high")]
    row["retrieval"] = {k.removeprefix("test/retrieval/"): v for k, v in m.items() if k.startswith("test/retrieval/")}
    return row


def run_fusion(seed: int, manifest: Path, work: Path, quick: bool, force: bool = False) -> dict[str, Any]:
    """The eye demo: the fuse stage's results table (AUROC, accuracy, gates per model and condition).

    ``force`` re-runs the fuse stage of a finished run (after its code changed); each modality's pretraining, a
    pipeline run of its own, is reused when its config is unchanged.
    """
    from medcl.pipeline import load_pipeline, run_pipeline

    out = work / f"fusion-seed{seed}"
    sets = [f"data.manifest={manifest}", f"seed={seed}", f"runtime.output_dir={out}",
            f"tracking.uri=sqlite:///{out}.db", "runtime.progress=false", "stages=[fuse]"]
    ctx = run_pipeline(load_pipeline(ROOT / "pipelines" / "demo" / "eye-multimodal.yaml", sets, smoke=quick),
                       smoke=quick, force=force)
    with open(ctx.outputs["fuse"]["results"], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    keep = ("auroc", "auroc_ci_low", "auroc_ci_high", "accuracy", "n_patients")
    return {"results": {f"{r['model']}/{r['condition']}": {k: float(r[k]) for k in keep if r.get(k) not in (None, "")}
                        | {k: float(v) for k, v in r.items() if k.startswith("gate_") and v not in (None, "")}
                        for r in table},
            "pretrain_runs": {m: v.get("run_id") for m, v in ctx.modalities.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="few patients, every stage for a few steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in --out")
    parser.add_argument("--redo", nargs="+", default=[], choices=list(KINDS), metavar="KIND",
                        help="re-run the finished runs of these kinds (fusion: its fuse stage, on the pretrained "
                             "encoders of the earlier run)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "multimodal")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    from medcl.data.synth import synthesize

    data = work / "data"
    for name in ("ecg", "eye"):
        if not (data / name / "manifest.csv").is_file():
            synthesize(data, modalities=[name], patients=24 if args.quick else None, seed=0)
    plan = [{"kind": k, "seed": s} for s in range(args.seeds) for k in args.kinds]
    done = {k: x for k, x in finished_rows(args.out, args.quick, args.fresh).items() if x["kind"] not in args.redo}
    commit = git_commit()
    meta = {**base_meta(args.quick), "seeds": args.seeds, "fractions": list(FRACTIONS)}
    rows: dict[str, dict] = {}
    for r in plan:
        key = f"{r['kind']}/seed{r['seed']}"
        if key in done:
            rows[key] = done[key]
            continue
        print(f"# multimodal: {key}, {(time.time() - t0) / 60:.1f} min elapsed", file=sys.stderr, flush=True)
        t1 = time.time()
        try:
            res = (run_fusion(r["seed"], data / "eye" / "manifest.csv", work, args.quick, "fusion" in args.redo)
                   if r["kind"] == "fusion"
                   else run_ecg(r["kind"], r["seed"], data / "ecg" / "manifest.csv", work, args.quick))
            rows[key] = {**r, "key": key, "commit": commit, "wall_s": round(time.time() - t1, 1), **res}
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the others still run
            traceback.print_exc()
            rows[key] = {**r, "key": key, "commit": commit, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
        # every planned run as it stands, in plan order: a run stopped now keeps what it had not reached yet
        write_results(args.out, meta, [rows.get(k) or done.get(k) or {**x, "key": k, "skipped": "pending"}
                                       for x in plan for k in [f"{x['kind']}/seed{x['seed']}"]], t0)
    write_results(args.out, meta, [rows[f"{x['kind']}/seed{x['seed']}"] for x in plan], t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
