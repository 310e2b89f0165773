"""``medcl bench``: run the scripts in ``benchmarks/`` and rewrite ``benchmarks/README.md`` from their results.

Each benchmark is a script with a ``main()`` that writes ``{"meta", "rows", ...}`` JSON; it runs in
its own subprocess (a crash or an out-of-memory kill in one does not stop the others), its output
goes to ``<out>/logs/<name>.log``. The README is rebuilt from *every* JSON file present, so
``--only`` re-runs some benchmarks and keeps the others' last results (resumable, partial runs);
the learning-quality benchmark also skips the pipeline runs it has already finished.

``--quick`` runs tiny sizes (a minute or two in all) into ``benchmarks/quick/`` so it never
overwrites the real results in ``benchmarks/results/``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from medcl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """One script of ``benchmarks/``: its arguments for a full and a ``--quick`` run."""

    script: str
    title: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=lambda: ["--quick"])


#: name -> benchmark (also the JSON file name under results/)
BENCHMARKS: dict[str, Benchmark] = {
    "losses": Benchmark("bench_losses.py", "Contrastive losses: value, time, peak memory",
                        ["--sizes", "256", "1024", "4096"], ["--sizes", "64", "256", "--reps", "2"]),
    "train_loss": Benchmark("bench_train_loss.py", "SimCLR ResNet-18 training throughput: medcl vs lightly loss"),
    "input": Benchmark("bench_input.py", "Input pipeline", [], ["--quick", "--modalities", "oct", "ct"]),
    "train": Benchmark("bench_train.py", "Pretraining throughput and data waiting per modality"),
    "precision": Benchmark("bench_precision.py", "bf16, channels_last, torch.compile and MFU (CPU; GPU when visible)"),
    "scaling": Benchmark("bench_scaling.py", "Scaling: 1 vs 2 processes under torchrun (CPU)"),
    "smoke": Benchmark("bench_smoke.py", "--smoke of every shipped pipeline under torchrun (CPU)"),
    "loops": Benchmark("bench_loops.py", "medcl's training loops against the plain reference loops (images/s)"),
    "quality": Benchmark("bench_quality.py", "Learning quality on the demo data (resumable)"),
    "package": Benchmark("bench_package.py", "What the Docker image's stages install; the wheel's size"),
}


def benchmarks_dir() -> Path:
    """The checkout's ``benchmarks/`` folder (``MEDCL_BENCHMARKS`` overrides)."""
    env = os.environ.get("MEDCL_BENCHMARKS")
    for c in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1] / "benchmarks",
                                              Path.cwd() / "benchmarks"]:
        if (c / "bench_losses.py").is_file():
            return c
    raise ConfigError("cannot find the benchmarks/ folder", where="medcl bench",
                      fix="run from the medcl checkout, or set MEDCL_BENCHMARKS to its benchmarks/ folder")


def select_benchmarks(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names: list[str] = []
    for item in only:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in BENCHMARKS:
                near = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
                raise ConfigError(f"unknown benchmark {name!r}", where="--only",
                                  fix=(f"did you mean {near[0]!r}? " if near else "")
                                  + f"use some of {', '.join(BENCHMARKS)}")
            if name not in names:
                names.append(name)
    return names


def run_benchmarks(only: list[str] | None = None, quick: bool = False, out_dir: str | Path | None = None,
                   extra_args: dict[str, list[str]] | None = None) -> int:
    """Run the selected benchmarks, each in a subprocess, then rewrite the README.

    Args:
        only: benchmark names (``losses``, ``train_loss``, ``input``, ``train``, ``precision``,
            ``scaling``, ``smoke``, ``loops``, ``quality``, ``package``; comma-separated strings accepted); default all.
        quick: tiny sizes, written under ``benchmarks/quick/`` unless ``out_dir`` is given.
        out_dir: where ``results/``, ``plots/``, ``logs/`` and ``README.md`` go (default
            ``benchmarks/`` for full runs).
        extra_args: more arguments per benchmark name (e.g. ``{"quality": ["--budget-min", "30"]}``).

    Returns:
        0 when every selected benchmark finished, 1 otherwise (the README is written either way).
    """
    names = select_benchmarks(only)
    bdir = benchmarks_dir()
    out = Path(out_dir) if out_dir else (bdir / "quick" if quick else bdir)
    results, logs = out / "results", out / "logs"
    results.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    status_path = results / "_status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_ENABLE_ASYNC_LOGGING="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(bdir.parent), os.environ.get("PYTHONPATH")])))
    failed = []
    for name in names:
        b = BENCHMARKS[name]
        cmd = [sys.executable, str(bdir / b.script), "--out", str(results / f"{name}.json"),
               *(b.quick if quick else b.full), *((extra_args or {}).get(name, []))]
        print(f"medcl bench: {name} ({b.title}) … log: {logs / (name + '.log')}", flush=True)
        t0 = time.time()
        with open(logs / f"{name}.log", "w", encoding="utf-8") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=bdir.parent)
        status[name] = {"rc": rc, "seconds": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "quick": quick}
        status_path.write_text(json.dumps(status, indent=2))
        if rc != 0:
            failed.append(name)
            print(f"medcl bench: {name} failed (exit {rc}); see {logs / (name + '.log')}", file=sys.stderr, flush=True)
    readme = write_readme(out)
    print(f"medcl bench: wrote {readme}")
    return 1 if failed else 0


# ================================================================================================ README


from medcl.bench.readme import load_results, write_readme  # noqa: E402  (re-exported)

__all__ = ["BENCHMARKS", "Benchmark", "benchmarks_dir", "load_results", "run_benchmarks", "select_benchmarks",
           "write_readme"]
