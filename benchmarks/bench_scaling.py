"""Scaling on CPU: the same pretraining pipeline under ``torchrun`` with 1 and 2 processes (gloo).

The launch follows ``tests/distributed/test_torchrun_pipeline.py``: one pipeline YAML (the OCT demo
with a ViT-Ti encoder and a linear projector — no BatchNorm, whose per-process statistics would make
the runs differ — SGD, a fixed global batch) run by ``torchrun --standalone --nproc_per_node=N -m
medcl run``, each process with ``OMP_NUM_THREADS=1``. Reported per N: samples/s from the engine
(``epoch/samples_per_s`` of the pretrain stage run in MLflow, all ranks together), the stage's wall
time, the final loss, and for N = 2 the largest absolute difference of the encoder weights and the
loss against N = 1 (equal up to float32 rounding is the expectation: same global batch, same
per-sample augmentations, negatives gathered across ranks).

Usage::

    python benchmarks/bench_scaling.py --out benchmarks/results/scaling.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, demo_manifest, write_results

PIPELINE = """\
include: [{oct}]
name: bench-scaling
stages: [pretrain]
seed: 3
model:
  encoder: vit_tiny
  options: {{}}
data:
  cache: none
  num_workers: 0
pretrain:
  method: simclr             # the OCT demo's MICLe needs >= 8 samples per process (4 per patient); the quick
                             # run's global batch of 8 gives 4 per process under 2 processes
  epochs: {epochs}
  max_steps: {steps}
  warmup_epochs: 0
  batch_size: {batch}
  optimizer: sgd
  lr: 0.05
  weight_decay: 0.0
  method_options: {{num_layers: 1}}
runtime:
  device: cpu
  progress: false
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               MLFLOW_ENABLE_ASYNC_LOGGING="false", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def launch(n: int, yaml_path: Path, manifest: Path, work: Path, batch: int) -> dict:
    out = work / f"n{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "medcl",
           "run", str(yaml_path), "--set", f"data.manifest={manifest}", "--set", f"runtime.output_dir={out / 'runs'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(MLFLOW_TRACKING_URI=uri), cwd=out, capture_output=True, text=True,
                          timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"processes": n, "error": (proc.stdout[-1500:] + proc.stderr[-2500:])}
    (run_dir,) = (out / "runs").iterdir()
    outputs = json.loads((run_dir / "pretrain" / "outputs.json").read_text())
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    # rank 0's per-step figures (its own samples / step time; under DDP every rank waits for the
    # slowest in the gradient all-reduce, so rank 0's step time is the step time of the whole job)
    hist = sorted(client.get_metric_history(outputs["run_id"], "train/samples_per_s"), key=lambda m: m.step)
    local = batch // n
    times = [local / m.value for m in hist[1:] if m.value > 0]  # step 1 (warm-up) left out
    sps = len(times) * batch / sum(times) if times else None
    return {"processes": n, "threads_per_process": 1, "samples_per_s": sps, "timed_steps": len(times),
            "steps": len(hist), "stage_s": outputs.get("seconds"),
            "launch_wall_s": wall, "final_loss": outputs["final_loss"], "encoder": outputs["encoder"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="3 steps of a global batch of 8")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "scaling")
    args = parser.parse_args(argv)
    import torch

    from medcl.checkpoint_file import load_checkpoint

    steps, batch = (3, 8) if args.quick else (args.steps, args.batch)
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    manifest = demo_manifest("oct", work / "data", patients=16 if args.quick else None)
    yaml_path = work / "pipeline.yaml"
    yaml_path.write_text(PIPELINE.format(oct=ROOT / "pipelines" / "demo" / "oct.yaml", steps=steps, batch=batch,
                                         epochs=100))
    meta = {**base_meta(args.quick), "global_batch": batch, "max_steps": steps, "encoder": "vit_tiny",
            "method": "simclr (linear projector, SGD)", "backend": "gloo", "OMP_NUM_THREADS": 1}
    rows = [launch(n, yaml_path, manifest, work, batch) for n in (1, 2)]
    summary: dict = {}
    if all("error" not in r for r in rows):
        a = load_checkpoint(rows[0]["encoder"])["encoder"]
        b = load_checkpoint(rows[1]["encoder"])["encoder"]
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        scale = max(float(a[k].float().abs().max()) for k in a)
        summary = {"max_abs_weight_diff": diff, "max_abs_weight": scale,
                   "loss_abs_diff": abs(rows[0]["final_loss"] - rows[1]["final_loss"]),
                   "speedup": (rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
                               if rows[0]["samples_per_s"] and rows[1]["samples_per_s"] else None),
                   "equal": diff < 1e-4}
    for r in rows:
        r.pop("encoder", None)
    del torch
    write_results(args.out, meta, rows, t0, summary=summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
