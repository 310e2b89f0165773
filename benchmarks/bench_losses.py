"""Contrastive-loss benchmark: medcl vs pytorch-metric-learning vs MONAI (vs lightly) side by side.

For each batch size N (default 256 and 1024) and D=128 it runs, on the same seeded inputs:

* NT-Xent: ``medcl.losses.NTXentLoss``, pml ``NTXentLoss`` (labels pairing the two views),
  MONAI ``ContrastiveLoss``, lightly ``NTXentLoss``;
* SupCon (10 classes, 2 views): ``medcl.losses.SupConLoss``, pml ``SupConLoss``;

and reports the loss value, the median wall time of forward+backward over ``--reps`` runs (after
the value and memory calls, which warm up; a run slower than 2 s per call is timed from those two
calls only) and the peak extra memory of one forward+backward:

* CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call;
* CPU: the process's resident-set high-water mark: ``/proc/self/clear_refs`` (write ``5``) resets
  ``VmHWM`` right before the call, and the result is ``VmHWM`` after it minus ``VmRSS`` before it.
  This counts every byte the call made resident (tensors, autograd buffers, allocator overhead);
  glibc serves large tensors with mmap and returns them on free, so the retained heap from earlier
  calls does not hide allocations (we set ``MALLOC_MMAP_THRESHOLD_`` by re-running ourselves when
  it is unset, to make that hold for every size). Linux only; elsewhere memory is reported as null.

Usage::

    python benchmarks/bench_losses.py --out results/bench_losses.json [--sizes 256 1024] [--device cuda]

Writes JSON to ``--out`` and prints a markdown table. Runs whose estimated memory exceeds
``--max-gib`` (default 70 % of free RAM / 80 % of free GPU memory) are reported as skipped
(pml's NT-Xent builds a positive-pairs × negative-pairs matrix: O(N³) memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _proc_status() -> dict[str, int] | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"{key}:\s+(\d+)\s+kB", text)
        if m is None:
            return None
        out[key] = int(m.group(1)) * 1024
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(step: Callable[[], object], device: torch.device) -> int | None:
    """Peak extra bytes of one call of ``step`` (see the module docstring for the method)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    before = _proc_status()
    if before is None or not _reset_hwm():
        return None
    before = _proc_status()
    step()
    after = _proc_status()
    return int(after["VmHWM"] - before["VmRSS"]) if after else None


def median_time(step: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of ``reps`` calls (the caller has already warmed up)."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def implementations(temperature: float) -> dict[str, dict[str, Callable]]:
    """``{task: {impl: fn(z_a, z_b, labels) -> loss}}``; libraries are imported here (MONAI is slow)."""
    from lightly.loss import NTXentLoss as LightlyNTXent
    from monai.losses import ContrastiveLoss
    from pytorch_metric_learning import losses as pml

    from medcl.losses import NTXentLoss, SupConLoss

    ours_nt, ours_sc = NTXentLoss(temperature), SupConLoss(temperature)
    pml_nt, pml_sc = pml.NTXentLoss(temperature=temperature), pml.SupConLoss(temperature=temperature)
    monai_nt, lightly_nt = ContrastiveLoss(temperature=temperature), LightlyNTXent(temperature=temperature)

    def pair_labels(z: torch.Tensor) -> torch.Tensor:
        return torch.arange(z.shape[0], device=z.device).repeat(2)

    return {
        "ntxent": {
            "medcl": lambda a, b, y: ours_nt(a, b),
            "pml": lambda a, b, y: pml_nt(torch.cat([a, b]), pair_labels(a)),
            "monai": lambda a, b, y: monai_nt(a, b),
            "lightly": lambda a, b, y: lightly_nt(a, b),
        },
        "supcon": {
            "medcl": lambda a, b, y: ours_sc(torch.stack([a, b], dim=1), y),
            "pml": lambda a, b, y: pml_sc(torch.cat([a, b]), y.repeat(2)),
        },
    }


def estimated_bytes(task: str, impl: str, n: int, d: int) -> int:
    """Rough peak-memory estimate, used only to skip runs that cannot fit (and say so)."""
    m = 2 * n
    if task == "ntxent" and impl == "pml":
        # pml's GenericPairLoss: a (positive pairs × negative pairs) float matrix, ~m × m² entries.
        return 16 * m * m * (m - 2)
    if task == "ntxent" and impl == "monai":
        return 24 * m * m * d  # measured ~23 m²d bytes: cosine_similarity(z[:, None], z[None]): several m × m × d tensors
    return 64 * m * m


def run(sizes: list[int], dim: int, reps: int, device: torch.device, temperature: float, classes: int,
        budget: int) -> list[dict]:
    """Benchmark every implementation at every size; runs estimated above ``budget`` bytes are skipped."""
    rows = []
    impls = implementations(temperature)
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        za = torch.randn(n, dim, generator=g).to(device)
        zb = torch.randn(n, dim, generator=g).to(device)
        y = torch.randint(0, classes, (n,), generator=g).to(device)
        for task, fns in impls.items():
            ref_value = None
            for name, fn in fns.items():
                need = estimated_bytes(task, name, n, dim)
                if need > budget:
                    rows.append({"task": task, "N": n, "D": dim, "impl": name, "loss": None,
                                 "abs_diff_vs_medcl": None, "time_ms": None, "peak_mib": None,
                                 "skipped": f"needs ~{need / 2**30:.0f} GiB (estimated) > budget "
                                            f"{budget / 2**30:.0f} GiB"})
                    print(f"# {task} N={n} {name}: skipped, {rows[-1]['skipped']}", file=sys.stderr, flush=True)
                    continue
                a = za.clone().requires_grad_()
                b = zb.clone().requires_grad_()

                def step(fn=fn, a=a, b=b, y=y) -> float:
                    a.grad = b.grad = None
                    loss = fn(a, b, y)
                    loss.backward()
                    return float(loss.detach())

                t0 = time.perf_counter()
                value = step()
                first = time.perf_counter() - t0
                a.grad = b.grad = None
                t0 = time.perf_counter()
                mem = peak_memory(step, device)
                second = time.perf_counter() - t0
                a.grad = b.grad = None
                if first > 2.0:  # multi-second runs (the N×N×D or N³ ones): two timed calls are enough
                    sec = statistics.median([first, second])
                else:
                    sec = median_time(step, device, reps)
                if ref_value is None:
                    ref_value = value
                rows.append({"task": task, "N": n, "D": dim, "impl": name, "loss": value,
                             "abs_diff_vs_medcl": abs(value - ref_value), "time_ms": 1e3 * sec,
                             "peak_mib": None if mem is None else mem / 2**20})
                print(f"# {task} N={n} {name}: loss={value:.6f} time={1e3 * sec:.2f} ms "
                      f"peak={'n/a' if mem is None else f'{mem / 2**20:.1f} MiB'}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """Markdown table with ratios to medcl's row of the same task and N."""
    ours = {(r["task"], r["N"]): r for r in rows if r["impl"] == "medcl"}
    lines = ["| loss | N | implementation | value | abs diff vs medcl | time fwd+bwd (ms) | peak memory (MiB) "
             "| memory / medcl | time / medcl |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['task']} | {r['N']} | {r['impl']} | skipped: {r['skipped']} | | | | | |")
            continue
        o = ours[(r["task"], r["N"])]
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        mratio = ("n/a" if r["peak_mib"] is None or not o["peak_mib"] else f"{r['peak_mib'] / o['peak_mib']:.1f}×")
        lines.append(f"| {r['task']} | {r['N']} | {r['impl']} | {r['loss']:.6f} | {r['abs_diff_vs_medcl']:.1e} | "
                     f"{r['time_ms']:.2f} | {mem} | {mratio} | {r['time_ms'] / o['time_ms']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-gib", type=float, default=None,
                        help="skip runs estimated to need more (default: 70%% of free RAM / 80%% of free GPU memory)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu" and MMAP_ENV not in os.environ and sys.platform.startswith("linux"):
        # A fixed mmap threshold makes glibc return every large tensor to the OS on free (see docstring).
        env = dict(os.environ, **{MMAP_ENV: "131072"})
        cmd = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        return subprocess.call(cmd, env=env)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.max_gib is not None:
        budget = int(args.max_gib * 2**30)
    elif device.type == "cuda":
        budget = int(0.8 * torch.cuda.mem_get_info(device)[0])
    else:
        import psutil

        budget = int(0.7 * psutil.virtual_memory().available)
    rows = run(args.sizes, args.dim, args.reps, device, args.temperature, args.classes, budget)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "reps": args.reps,
        "cpu_count": os.cpu_count(), "load_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "temperature": args.temperature, "memory_method": "cuda max_memory_allocated" if device.type == "cuda"
        else "RSS high-water (VmHWM reset via /proc/self/clear_refs) minus RSS before",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
