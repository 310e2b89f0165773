"""Speed of medcl's training loops against the plain reference loops, on the same data, batch and network.

For each 2D demo modality and ECG: medcl's pretraining stage (SimCLR, the demo's batch and architecture, the
online probe off) against ``benchmarks/reference/simclr.py``, and medcl's from-scratch fine-tuning against
``benchmarks/reference/supervised.py``, each for ``--steps`` optimiser steps. medcl's figure is the loop's wall
time with its data loading, checkpoints and MLflow logging, for the 2D modalities once with the augmentation per
sample in the DataLoader (``transforms.augment_on: sample``) and once on whole batches (``batch``); the plain
loops hold the data in memory and augment whole batches. The pairs run alternately, in alternating order (medcl,
plain; plain, medcl; medcl, plain) so that a change of machine load or speed hits both; each side's best of
``--rounds`` is reported.

Usage::

    python benchmarks/bench_loops.py --out benchmarks/results/loops.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import ROOT, base_meta, quiet_logs, write_results

MODALITIES = ("oct", "fundus", "histo", "ecg")
#: modalities whose presets can augment whole batches (transforms.augment_on: batch)
BATCH_AUGMENTED = ("oct", "fundus", "histo")


def medcl_loop(mod: str, loop: str, steps: int, manifest: Path, work: Path, seed: int,
               augment_on: str | None = None, run: int = 0) -> dict[str, Any]:
    """medcl's stage on the demo pipeline; ``augment_on`` overrides the demo's ``transforms.augment_on``.

    Each ``(augment_on, run)`` gets its own folder and MLflow store (an open store is never deleted under MLflow).
    """
    from medcl.pipeline import load_pipeline, run_pipeline

    out = work / f"medcl-{mod}-{loop}-{augment_on or 'demo'}-{run}"
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"data.manifest={manifest}", f"runtime.output_dir={out / 'runs'}", f"seed={seed}",
            f"tracking.uri=sqlite:///{out / 'mlflow.db'}", "runtime.progress=false", "runtime.device=cpu"]
    if loop == "simclr":
        sets += ["stages=[pretrain]", f"pretrain.steps={steps}", "pretrain.probe=false", "pretrain.method=simclr",
                 "pretrain.method_options={}"]
    else:
        sets += ["stages=[classify]", "classify.protocols=[finetune]", "classify.baselines=[scratch]",
                 "classify.label_fractions=[1.0]", f"classify.finetune.steps={steps}", "classify.n_boot=10"]
    if augment_on:
        sets.append(f"transforms.augment_on={augment_on}")
    cfg = load_pipeline(ROOT / "pipelines" / "demo" / f"{mod}.yaml", sets)
    ctx = run_pipeline(cfg)
    if loop == "simclr":
        o = ctx.outputs["pretrain"]
        res = {"images_per_s": o["images_per_s"], "seconds": o["train_seconds"], "steps": o["steps_run"]}
    else:
        rows = json.loads(Path(ctx.outputs["classify"]["results"]).read_text())
        r = next(x for x in rows if x["protocol"] == "finetune")
        res = {"images_per_s": r["images_per_s"], "seconds": r["train_seconds"], "steps": r["steps"]}
    split = ctx.run_dir / "split.csv"
    return {**res, "batch": cfg.pretrain.batch_size if loop == "simclr" else cfg.classify.finetune.batch_size,
            "split": str(split), "cfg": cfg}


def plain_loop(mod: str, loop: str, steps: int, manifest: Path, split: str, cfg: Any, work: Path,
               seed: int) -> dict[str, Any]:
    out = work / f"plain-{mod}-{loop}.json"
    batch = cfg.pretrain.batch_size if loop == "simclr" else cfg.classify.finetune.batch_size
    size = (cfg.transforms.model_extra or {}).get("spatial_size", [64])[0]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reference" / f"{loop}.py"), "--manifest", str(manifest),
           "--split", split, "--modality", mod, "--label-column", cfg.data.label_column,
           "--classes", ",".join(cfg.data.classes or []), "--steps", str(steps), "--batch", str(batch),
           "--size", str(size), "--seed", str(seed), "--out", str(out),
           "--output-stride", str((cfg.model.options or {}).get("output_stride", 32))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT / "benchmarks" / "reference")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    r = json.loads(out.read_text())
    return {"images_per_s": r["images_per_s"], "seconds": r["seconds"], "steps": r["steps"], "batch": r["batch"]}


def _order(i: int) -> tuple[str, str]:
    """Which side runs first in round ``i``: medcl in even rounds, the plain loop in odd ones.

    The machine's speed changes between rounds, for both sides alike (``results/loops.json`` at 73c2d20: OCT SimCLR
    per sample 90 then 105 images/s, the plain loop 108 then 120), so a fixed order hands one side the same place in
    every round. Alternating it gives each side the early and the late place.
    The plain loop needs medcl's split, so round 0 starts with medcl.
    """
    return ("medcl", "plain") if i % 2 == 0 else ("plain", "medcl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="OCT only, 4 steps, one round")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "loops")
    args = ap.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    mods = ["oct"] if args.quick else args.modalities
    steps, rounds = (4, 1) if args.quick else (args.steps, args.rounds)
    meta = {**base_meta(args.quick), "steps": steps, "rounds": rounds, "order": "alternating"}
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline

    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for mod in mods:
        manifest = work / "data" / mod / "manifest.csv"
        if not manifest.is_file():
            synthesize(work / "data", modalities=[mod], patients=24 if args.quick else None, seed=0)
        # 2D: both places the augmentation can run (the demo's own setting is the one the target is about)
        modes = ("sample", "batch") if mod in BATCH_AUGMENTED else ("sample",)
        shipped = load_pipeline(ROOT / "pipelines" / "demo" / f"{mod}.yaml",
                                [f"data.manifest={manifest}"]).transforms.augment_on
        for loop in ("simclr", "supervised"):
            pair = [{"modality": mod, "loop": loop, "augment_on": m, "shipped": m == shipped, "medcl": [], "plain": []}
                    for m in modes]
            try:
                split = cfg = None
                for i in range(rounds):
                    for side in _order(i):
                        if side == "plain":
                            plain = plain_loop(mod, loop, steps, manifest, split, cfg, work, 0)
                            for row in pair:
                                row["plain"].append(plain)
                            continue
                        for row in pair:
                            m = medcl_loop(mod, loop, steps, manifest, work, 0, row["augment_on"], run=i)
                            cfg, split = m.pop("cfg"), m["split"]
                            row["medcl"].append(m)
                for row in pair:
                    best_m = max(x["images_per_s"] or 0 for x in row["medcl"])
                    best_p = max(x["images_per_s"] or 0 for x in row["plain"])
                    row.update(medcl_images_per_s=best_m, plain_images_per_s=best_p,
                               ratio=round(best_m / best_p, 3) if best_p else None, batch=row["medcl"][0]["batch"])
            except Exception as exc:  # noqa: BLE001 - a failed pair is a row with its error
                for row in pair:
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
            rows.extend(pair)
            for row in pair:
                print(f"{mod} {loop} (augment_on {row['augment_on']}): {row.get('medcl_images_per_s')} vs "
                      f"{row.get('plain_images_per_s')} images/s", flush=True)
            write_results(args.out, meta, rows, t0)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
