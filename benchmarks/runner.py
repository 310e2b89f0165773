"""Run the scripts in ``benchmarks/`` and rewrite ``benchmarks/README.md`` from their results.

``medcl bench ARGS`` (a thin entry in the CLI) runs ``python benchmarks/runner.py ARGS``; so does ``make bench``.

Each benchmark is a script with a ``main()`` that writes ``{"meta", "rows", ...}`` JSON; it runs in
its own subprocess (a crash or an out-of-memory kill in one does not stop the others), its output
goes to ``<out>/logs/<name>.log``. The README is rebuilt from *every* JSON file present, so
``--only`` re-runs some benchmarks and keeps the others' last results (resumable, partial runs);
the learning-quality benchmark also skips the pipeline runs it has already finished.

``--quick`` runs tiny sizes (a minute or two in all) into ``benchmarks/quick/`` so it never
overwrites the real results in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the checkout on sys.path)
from registry import BENCHMARKS, Benchmark

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean

log = logging.getLogger(__name__)


def benchmarks_dir() -> Path:
    """This checkout's ``benchmarks/`` folder."""
    return Path(__file__).resolve().parent


def select_benchmarks(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names: list[str] = []
    for item in only:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in BENCHMARKS:
                raise ConfigError(f"unknown benchmark {name!r}", where="--only",
                                  fix=f"{did_you_mean(name, BENCHMARKS)}use some of {', '.join(BENCHMARKS)}")
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


def main(argv: list[str] | None = None) -> int:
    """``medcl bench``'s command line (see ``--help``)."""
    import shlex

    from medcl.errors import MedclError

    parser = argparse.ArgumentParser(prog="medcl bench", description="run benchmarks/ and rewrite "
                                     "benchmarks/README.md")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--args", dest="bench_args", default="", metavar="'ARGS'",
                        help="more arguments for the selected benchmark scripts, one quoted string, e.g. "
                             "--only quality --args='--budget-min 90 --no-methods' (see python "
                             "benchmarks/bench_NAME.py -h)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where results/, plots/, logs/ and README.md go (default: benchmarks/, or benchmarks/quick/ "
                             "with --quick)")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing: rewrite benchmarks/README.md from the JSON results present (e.g. after "
                             "copying back results/precision_gpu.json from a GPU machine)")
    args = parser.parse_args(argv)
    try:
        if args.readme_only:
            out = args.out or (benchmarks_dir() / "quick" if args.quick else benchmarks_dir())
            print(f"medcl bench: wrote {write_readme(out)}")
            return 0
        extra = shlex.split(args.bench_args)
        if extra and not args.only:
            raise ConfigError("--args needs --only: the arguments are for one benchmark script", where="--args",
                              fix="name the benchmark, e.g. medcl bench --only quality --args='--budget-min 90'")
        return run_benchmarks(only=args.only, quick=args.quick, out_dir=args.out,
                              extra_args={n: extra for n in select_benchmarks(args.only)} if extra else None)
    except MedclError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2


from readme import load_results, write_readme  # noqa: E402  (re-exported)

__all__ = ["BENCHMARKS", "Benchmark", "benchmarks_dir", "load_results", "main", "run_benchmarks",
           "select_benchmarks", "write_readme"]

if __name__ == "__main__":
    sys.exit(main())
