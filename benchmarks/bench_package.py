"""What the Docker image's stages add on top of the base image, and the size of medcl's wheel.

No Docker engine runs on the development machines, so the image itself cannot be built or measured here.
What *can* be measured is what its stages install on top of the base image (which brings Python, CUDA,
PyTorch and torchvision): the installed size of every distribution in the dependency closure, read from
this virtual environment's ``RECORD`` files (the bytes pip put on disk for it).

* **runtime** — the closure of medcl's own requirements (``pyproject.toml`` ``[project] dependencies``, read
  from the installed medcl's metadata)
  minus the closure of ``torch`` and ``torchvision`` (the base image's), plus medcl's wheel: what the
  ``runtime`` stage adds;
* **test** — what the ``[dev]`` extra adds on top of that (the ``test`` stage, not in the runtime image);
* **wheel** — the size of ``medcl-<version>-py3-none-any.whl`` built from this checkout, and how much of it
  is the shipped pipelines, presets and report notebook (``medcl/resources/``).

Sizes in this venv are those of this machine's wheels (Linux x86_64, Python 3.11); the base image's own
Python and conda packages may already hold some of the runtime closure, so the runtime figure is an upper
bound of what the stage adds.

Usage::

    python benchmarks/bench_package.py --out benchmarks/results/package.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, write_results
from packaging.requirements import Requirement

#: what the base image (pytorch/pytorch:*-runtime) brings: these and their own requirements
BASE = ("torch", "torchvision")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Every installed distribution the requirement strings need (recursively, environment markers applied)."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        spec, ex = todo.pop()
        req = Requirement(spec)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (ex or ("",))):
            continue
        name = _norm(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency not installed here
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        todo += [(r, tuple(req.extras)) for r in dist.requires or []]
    return {n for n, _ in seen}


def installed_bytes(name: str) -> int:
    """Bytes on disk of one installed distribution (its RECORD's files)."""
    dist = metadata.distribution(name)
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def build_wheel(work: Path) -> Path:
    """medcl's wheel from the checkout (non-editable build: the shipped files are copied in by setup.py)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work), str(ROOT)], check=True, capture_output=True, text=True)
    return next(work.glob("medcl-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="the same measurement (it takes seconds)")
    args = ap.parse_args()
    t0 = time.time()
    meta = base_meta(args.quick)
    declared = metadata.requires("medcl") or []  # pyproject.toml's, as installed (make install re-installs on change)
    base = closure(list(BASE))
    runtime = closure([r for r in declared if "extra ==" not in r]) - base
    test = closure(declared, ("dev",)) - base - runtime
    rows = []
    for group, names in (("base image (torch, torchvision)", base), ("runtime", runtime), ("test", test)):
        for n in sorted(names):
            rows.append({"group": group, "package": n, "version": metadata.version(n), "bytes": installed_bytes(n)})
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            infos = z.infolist()
            wheel_info = {"file": wheel.name, "bytes": wheel.stat().st_size,
                          "unpacked_bytes": sum(i.file_size for i in infos),
                          "resources_bytes": sum(i.file_size for i in infos if i.filename.startswith("medcl/resources/")),
                          "resources_files": sum(1 for i in infos if i.filename.startswith("medcl/resources/")
                                                 and not i.is_dir())}
    totals = {g: sum(r["bytes"] for r in rows if r["group"] == g) for g in {r["group"] for r in rows}}
    totals["runtime"] += wheel_info["unpacked_bytes"]
    write_results(args.out, meta, rows, t0, wheel=wheel_info, totals=totals,
                  counts={g: sum(1 for r in rows if r["group"] == g) for g in totals})
    print(f"runtime stage adds {totals['runtime'] / 2**20:.0f} MiB ({len(runtime)} packages + medcl), "
          f"test stage {totals['test'] / 2**20:.0f} MiB more; wheel {wheel_info['bytes'] / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
