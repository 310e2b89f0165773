"""``--smoke`` under ``torchrun`` for every shipped pipeline: wall time and peak memory on this machine.

Each file in ``pipelines/`` runs as a new user would check it on their data::

    torchrun --standalone --nproc-per-node=2 -m medcl run pipelines/<name>.yaml --smoke \
        --set data.manifest=<demo set>/<modality>/manifest.csv

on the demo sets of ``medcl data synth --seed 2`` (default sizes), with gloo on the CPU. Recorded per
pipeline: the exit status, the wall time of the whole launch (start-up, data validation, every stage, the
report), the wall time of each stage (its ``outputs.json``) and the peak resident memory of the largest
process (``ru_maxrss`` of the launch's processes, read by a wrapper around it). A failed launch is a row with its error.

Usage::

    python benchmarks/bench_smoke.py --out benchmarks/results/smoke.json [--quick] [--pipelines ecg_rhythm ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, stage_seconds, write_results

#: pipeline -> the demo modality it runs on (as it is: the synthesised `label` holds the pipeline's class names)
PIPELINES = {"ecg_rhythm": "ecg", "oct_severity": "oct", "fundus_grading": "fundus", "histo_tissue": "histo",
             "histo_tissue_egcl": "histo", "cytology_rare": "cytology", "ct_lesion": "ct", "ct_lesion_dense": "ct",
             "mri_lesion_seg": "mri", "mri_lesion_seg_dense": "mri", "histo_wsi": "histo-wsi",
             "ecg_report_clip": "ecg", "eye_multimodal": "eye"}


#: runs the launch and writes the peak resident memory of its largest process (its children's ru_maxrss, KiB)
_WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", MLFLOW_ENABLE_ASYNC_LOGGING="false",
               MEDCL_PSEUDONYM_KEY="medcl-bench-key", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "OMP_NUM_THREADS"):
        env.pop(k, None)
    return env


def run_one(name: str, data: Path, work: Path, nproc: int) -> dict:
    modality = PIPELINES[name]
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "medcl", "run", str(ROOT / "pipelines" / f"{name}.yaml"), "--smoke",
           "--set", f"data.manifest={data / modality / 'manifest.csv'}", f"runtime.output_dir={out / 'runs'}"]
    rss = out / "maxrss.txt"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, str(rss), *cmd],
                          env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{out / 'mlflow.db'}"), cwd=out,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    row: dict = {"pipeline": name, "modality": modality, "processes": nproc, "rc": proc.returncode,
                 "wall_s": round(wall, 1),
                 "peak_rss_gb": round(int(rss.read_text()) / 2**20, 2) if rss.is_file() else None}
    if proc.returncode != 0:
        row["error"] = (proc.stdout[-800:] + proc.stderr[-1500:]).strip()
        return row
    stages = row["stages_s"] = stage_seconds(out / "runs")
    print(f"{name}: {wall:.0f} s, stages {stages}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="12 patients per modality, ECG and OCT only")
    ap.add_argument("--pipelines", nargs="*", default=None, choices=list(PIPELINES))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    t0 = time.time()
    meta = {**base_meta(args.quick), "nproc": args.nproc, "backend": "gloo", "data": "medcl data synth --seed 2"}
    names = args.pipelines or (["ecg_rhythm", "oct_severity"] if args.quick else list(PIPELINES))
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"medcl-bench-smoke-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        from medcl.data.synth import synthesize

        data = work / "data"
        synthesize(data, modalities=sorted({PIPELINES[n] for n in names}), patients=12 if args.quick else None,
                   seed=2)
        rows = []
        for name in names:
            rows.append(run_one(name, data, work, args.nproc))
            write_results(args.out, meta, rows, t0)  # a run cut short keeps what it finished
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
