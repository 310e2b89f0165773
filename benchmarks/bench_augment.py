"""Where augmentation runs and what the encoder learns: the OCT demo's pretraining per sample and per batch.

``transforms.augment_on: batch`` replaces the per-sample MONAI transforms of the 2D presets by vectorised ops on
whole batches; each op is tested to compute what its per-sample transform computes. This benchmark checks the
part a unit test cannot: the encoder SimCLR learns with it. Per seed, the OCT demo's pretraining stage (its
budget, its data from ``medcl data synth --modalities oct``) runs three times on the same split:

* ``sample`` — the random part per sample in the DataLoader (what the demos use);
* ``batch`` — the random part as batch ops (``transforms/batch_ops.py``);
* ``batch, per-sample ops`` — the batch path (``BatchAugmentedLoader``, its per-image seeding) with every batch op
  replaced by a call of the per-sample MONAI transform it mirrors, row by row: separates the loader path from
  the ops.

Recorded per run: the online kNN probe's history on the validation patients, the best and last probe AUROC,
the final loss and images/s.

Usage::

    python benchmarks/bench_augment.py --out benchmarks/results/augment.json [--quick] [--seeds 1]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import ROOT, base_meta, quiet_logs, write_results

ARMS = ("sample", "batch", "batch, per-sample ops")


def per_sample_ops(preset: str, **params: Any):
    """The preset's batch augmentation with every op replaced by its per-sample MONAI transform, row by row."""
    import torch

    from medcl.transforms.batch import BatchAugment, build_batch_augment
    from medcl.transforms.batch_ops import Op
    from medcl.transforms.presets import get_preset, resolve_params

    class PerSample(Op):
        """One per-sample transform, seeded per row from the batch's per-row stream."""

        def __init__(self, transform: Any) -> None:
            object.__setattr__(self, "transform", transform)
            object.__setattr__(self, "prob", 1.0)  # the transform applies its own probability

        def params(self, x, draw):
            return {"seed": (draw.uniform(0, 1, len(x)) * 2**31).long()}

        def image(self, x, q):
            out = []
            for i in range(len(x)):
                self.transform.set_random_state(seed=int(q["seed"][i]))
                out.append(torch.as_tensor(self.transform({"image": x[i].clone()})["image"]).float())
            return torch.stack(out)

    batched = build_batch_augment(preset, **params)
    spec = get_preset(preset)
    rand = [t for t in spec.build(resolve_params(spec, params), True)[1] if type(t).__name__ != "RandSpatialCropd"]
    if len(rand) != len(batched.ops):
        raise RuntimeError(f"{preset}: {len(rand)} per-sample transforms for {len(batched.ops)} batch ops")
    return BatchAugment([PerSample(t) for t in rand], preset)


def run_arm(arm: str, seed: int, manifest: Path, work: Path, quick: bool) -> dict[str, Any]:
    """The OCT demo's pretraining stage with one augmentation arm; its probe history from MLflow."""
    from mlflow import MlflowClient

    import medcl.stages.common as stages_common
    from medcl.pipeline import load_pipeline, run_pipeline

    tag = arm.replace(", ", "-").replace(" ", "-")
    uri = f"sqlite:///{work / f'{tag}-seed{seed}.db'}"
    sets = [f"data.manifest={manifest}", "stages=[pretrain]", f"seed={seed}",
            f"transforms.augment_on={'sample' if arm == 'sample' else 'batch'}",
            f"runtime.output_dir={work / f'{tag}-seed{seed}'}", f"tracking.uri={uri}", "runtime.progress=false",
            "pretrain.probe_protocol=knn",  # the arms compare by the best kNN probe, as the recorded rows did
            "pretrain.method=simclr"]  # as the recorded rows (the OCT demo pretrains with MICLe since fb3594d)
    original = stages_common.build_batch_augment
    if arm == "batch, per-sample ops":
        stages_common.build_batch_augment = per_sample_ops
    try:
        ctx = run_pipeline(load_pipeline(ROOT / "pipelines" / "demo" / "oct.yaml", sets, smoke=quick), smoke=quick)
    finally:
        stages_common.build_batch_augment = original
    out = ctx.outputs["pretrain"]
    history = MlflowClient(uri).get_metric_history(out["run_id"], "probe/knn_auroc")
    keep = ("best_probe_auroc", "last_probe_auroc", "selected_step", "final_loss", "steps_run", "images_per_s",
            "train_seconds")
    return {**{k: out.get(k) for k in keep},
            "probe": [[m.step, round(m.value, 4)] for m in sorted(history, key=lambda m: m.step)],
            "augment_on": ctx.cfg.transforms.augment_on}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="24 patients, a few steps")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM",
                        help=f"the arms to run (default all: {', '.join(ARMS)})")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "augment")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    from medcl.data.synth import synthesize

    manifest = Path(synthesize(work / "data", modalities=["oct"], patients=24 if args.quick else None, seed=0))
    meta = {**base_meta(args.quick), "seeds": args.seeds, "arms": list(args.arms)}
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for arm in args.arms:
            print(f"# augment: {arm}, seed {seed}, {(time.time() - t0) / 60:.1f} min elapsed", file=sys.stderr,
                  flush=True)
            t1 = time.time()
            try:
                res = run_arm(arm, seed, manifest, work, args.quick)
                rows.append({"arm": arm, "seed": seed, "wall_s": round(time.time() - t1, 1), **res})
            except Exception as exc:  # noqa: BLE001 - a failed arm is recorded, the others still run
                traceback.print_exc()
                rows.append({"arm": arm, "seed": seed, "error": f"{type(exc).__name__}: {str(exc)[:800]}"})
            write_results(args.out, meta, rows, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
