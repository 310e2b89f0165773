"""Training-step variants: fp32 vs bf16, channels_last, ``torch.compile`` on/off; images/s and model FLOP utilisation.

For each modality the demo pipeline's method, encoder and batch (``pipelines/demo/<mod>.yaml``) are
trained by ``medcl.engine.loop.train_one_epoch`` — the loop the pretraining stage runs — on one real
batch from the demo loader, moved to the device once and replayed (compute only: no data loading,
no host-to-device copies in the timed steps). Each variant starts from the same seeded weights:

=====================================  =====  =============  =============
variant                                amp    channels_last  torch.compile
=====================================  =====  =============  =============
fp32                                   off    no             no
fp32 + torch.compile                   off    no             yes
bf16                                   bf16   no             no
bf16 + channels_last                   bf16   yes            no
bf16 + channels_last + torch.compile   bf16   yes            yes
=====================================  =====  =============  =============

These are the pipeline's own switches (``pretrain.amp``, ``pretrain.channels_last``,
``pretrain.compile``). All variants of a modality are set up first (warm-up steps, compilation),
then timed round-robin in chunks so that a change of machine load hits every variant alike.
Reported per variant: images/s (augmented views), speed-up over fp32, the memory a step needs above
the resident weights (CUDA), warm-up seconds (including a cold compilation: a fresh Inductor cache),
model FLOPs per step (``_flops.step_flops``) and the achieved FLOP/s as a fraction of the device's
peak (MFU: spec-sheet bf16 peak on known GPUs, and the measured dense matmul peak on every device).

On CPU ``torch.compile`` needs a C++ compiler and takes about a minute per variant; ``--quick``
leaves the compiled variants out unless ``--variants`` names them.

Usage::

    python benchmarks/bench_precision.py --out benchmarks/results/precision.json [--quick]
    python benchmarks/bench_precision.py --device cuda --out benchmarks/results/precision_gpu.json
    python benchmarks/bench_precision.py --merge part1.json part2.json --out benchmarks/results/precision_gpu.json

On a GPU machine without MONAI (the lent ones): ``benchmarks/gpu/README.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, build_method, cpu_name, demo_training_set, quiet_logs, write_results
from _flops import measured_peak_flops, spec_peak_flops, step_flops

MODALITIES = ("oct", "fundus", "histo", "ecg", "ct", "mri")

#: name -> (amp, channels_last, compile)
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "fp32": ("off", False, False),
    "fp32 + torch.compile": ("off", False, True),
    "bf16": ("bf16", False, False),
    "bf16 + channels_last": ("bf16", True, False),
    "bf16 + channels_last + torch.compile": ("bf16", True, True),
}


def _sync(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def demo_batch(modality: str, work: Path, quick: bool):
    """The demo config of ``modality``, its prepared data and one training batch of pretraining views (CPU)."""
    from medcl.data.datasets import build_dataset, build_loader

    cfg, data, items, batch_size, tf = demo_training_set(modality, work, quick)
    loader = build_loader(build_dataset(items, tf, cache="none"), batch_size=batch_size, shuffle=True,
                          num_workers=0, seed=0, epoch=0, drop_last=True)
    return cfg, data, next(iter(loader))


class _Variant:
    """One variant's model, optimiser and device-resident batch, warmed up (compiled) and ready to time."""

    def __init__(self, cfg, data, batch, variant: str, device: str, warmup: int):
        import torch

        from medcl.distributed import LOCAL
        from medcl.engine.batches import to_device
        from medcl.engine.loop import LoopSettings, Optimisation, train_one_epoch
        from medcl.engine.wrap import maybe_compile, model_to_channels_last

        self.name, self.device, self.cfg = variant, device, cfg
        self.amp, self.channels_last, self.compile = VARIANTS[variant]
        method, self.opt = build_method(cfg, data, device)
        if cfg.pretrain.method == "oct-severity":
            method.setup([batch])
        if self.channels_last:
            model_to_channels_last(method)
        self.model = maybe_compile(method, self.compile)
        self.batch = to_device(batch, torch.device(device), self.channels_last)
        self.optim, self.comm = Optimisation(self.opt), LOCAL
        self.settings = LoopSettings(amp=self.amp, device=device, progress=False, channels_last=self.channels_last)
        self._train = train_one_epoch
        self.cuda = torch.device(device).type == "cuda"
        self.seconds, self.steps, self.losses, self.step_memory = 0.0, 0, [], 0.0
        _sync(device)
        t0 = time.perf_counter()
        self._train(self.model, [self.batch] * warmup, self.optim, self.settings, comm=self.comm)
        _sync(device)
        self.warmup_s = time.perf_counter() - t0

    def time_chunk(self, steps: int) -> None:
        """``steps`` optimiser steps, timed; on CUDA also the memory the steps need above what is resident."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = self._train(self.model, [self.batch] * steps, self.optim, self.settings, comm=self.comm)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.steps += steps
        self.losses.append(res.get("loss"))
        if self.cuda:
            self.step_memory = max(self.step_memory, (torch.cuda.max_memory_allocated() - resident) / 2**30)

    def result(self) -> dict:
        b = self.batch["views"] if "views" in self.batch else self.batch["image"]
        return {"variant": self.name, "amp": self.amp, "channels_last": self.channels_last, "compile": self.compile,
                "steps": self.steps, "warmup_s": self.warmup_s, "step_s": self.seconds / self.steps,
                "images_per_s": int(b.shape[0]) * self.cfg.pretrain.views * self.steps / self.seconds,
                "loss": self.losses[0], "step_memory_gb": self.step_memory if self.cuda else None}


def measure(modality: str, work: Path, quick: bool, device: str, variants: list[str], steps: int, warmup: int,
            peaks: dict, min_seconds: float = 0.0) -> list[dict]:
    """Every variant of one modality, timed round-robin: chunks of ``steps`` steps, one variant after the
    other, until each has at least ``min_seconds`` timed (so that a change of machine load hits all alike)."""
    import torch

    from medcl.engine.batches import to_device

    cfg, data, batch = demo_batch(modality, work, quick)
    method, _ = build_method(cfg, data, device)
    if cfg.pretrain.method == "oct-severity":
        method.setup([batch])
    flops = step_flops(method, to_device(batch, torch.device(device)))
    del method
    base = {"modality": modality, "method": cfg.pretrain.method, "encoder": cfg.model.encoder,
            "batch": int(batch["views"].shape[0]), "views": cfg.pretrain.views, "device": device,
            "input_shape": list(batch["views"].shape[2:]), "flops_per_step": flops, "warmup_steps": warmup,
            # channels_last only changes 4-D (2D images) and 5-D (3D volumes) tensors
            "channels_last_applies": batch["views"].ndim - 3 in (2, 3)}
    ready: list[_Variant] = []
    failed: dict[str, dict] = {}
    for v in variants:
        try:
            ready.append(_Variant(cfg, data, batch, v, device, warmup))
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for torch.compile: report, go on
            failed[v] = {**base, "variant": v, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(f"# {modality} {v}: FAILED {failed[v]['error']}", file=sys.stderr, flush=True)
    while ready and (min(x.seconds for x in ready) < min_seconds or min(x.steps for x in ready) < steps):
        for x in ready:
            x.time_chunk(steps)
    results = {x.name: x.result() for x in ready}
    rows = []
    for v in variants:
        if v in failed:
            rows.append(failed[v])
            continue
        r = {**base, **results[v]}
        achieved = flops / r["step_s"]
        r["achieved_tflops"] = achieved / 1e12
        r["mfu_spec"] = achieved / peaks["spec"] if peaks.get("spec") else None
        r["mfu_measured"] = achieved / peaks["measured"] if peaks.get("measured") else None
        rows.append(r)
        print(f"# {modality} {v}: {r['images_per_s']:.1f} images/s, {r['achieved_tflops']:.3f} TFLOP/s "
              f"(warm-up {r['warmup_s']:.1f} s, {r['steps']} steps)", file=sys.stderr, flush=True)
    fp32 = results.get("fp32")
    for r in rows:
        if fp32 and "error" not in r:
            r["speedup_vs_fp32"] = r["images_per_s"] / fp32["images_per_s"]
    del ready
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true",
                        help="8 patients, 1 timed step, OCT only, no compiled variants")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--modalities", nargs="+", default=None, choices=MODALITIES,
                        help="default: oct ecg mri on CPU, all six on a GPU")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="default: all (quick: those without torch.compile)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per chunk (default 5 CPU, 30 GPU; quick 1)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="time chunks of --steps until this many seconds are timed (default 8 CPU, 3 GPU; quick 0)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "precision")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="measure nothing: merge these result files of one device into --out")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    quiet_logs()

    # a fresh Inductor cache: the warm-up of the compiled variants then includes a cold compilation,
    # as in a user's first run, not a reload of kernels compiled by an earlier benchmark run
    cache = tempfile.mkdtemp(prefix="medcl-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        return _run(args, parser)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch (torch.cuda.is_available() is False)")
    cuda = device == "cuda"
    mods = args.modalities or (["oct"] if args.quick else (list(MODALITIES) if cuda else ["oct", "ecg", "mri"]))
    variants = args.variants or [v for v, (_, _, c) in VARIANTS.items() if not (args.quick and c)]
    steps = args.steps or (1 if args.quick else 30 if cuda else 5)
    warmup = args.warmup or (1 if args.quick else 3)
    min_s = args.min_seconds if args.min_seconds is not None else (0.0 if args.quick else 3.0 if cuda else 8.0)
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if cuda else None
    measured = measured_peak_flops(device, n=256 if args.quick and not cuda else None)
    peaks = {"spec": spec_peak_flops(name), "measured": max(measured.values())}
    device_name = name or f"{cpu_name()}, {torch.get_num_threads()} threads"
    meta = {**base_meta(args.quick), "device": device, "device_name": device_name, "steps": steps,
            "min_seconds": min_s,
            "warmup": warmup, "peak_flops_spec": peaks["spec"], "peak_flops_measured": measured}
    rows: list[dict] = []
    for m in mods:  # written after every modality: a run cut short by a time limit keeps what it measured
        rows += measure(m, work, args.quick, device, variants, steps, warmup, peaks, min_s)
        write_results(args.out, {**meta, "modalities_done": list(dict.fromkeys(r["modality"] for r in rows))},
                      rows, t0)
    return 0


def merge(paths: list[Path], out: Path) -> int:
    """One result file from several runs on the same device (e.g. modalities split over time-limited calls)."""
    import json

    parts = []
    for p in paths:
        try:
            parts.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"bench_precision --merge: cannot read {p} ({exc}); pass result files written by "
                             "bench_precision.py") from None
    devices = {d["meta"].get("device_name") for d in parts}
    if len(devices) > 1:
        raise SystemExit(f"bench_precision --merge: the files come from different devices {sorted(devices)}; "
                         "merge runs of one device only")
    rows, seen = [], set()
    for d in reversed(parts):  # a later file wins for a modality measured twice
        mods = {r["modality"] for r in d["rows"]} - seen
        rows = [r for r in d["rows"] if r["modality"] in mods] + rows
        seen |= mods
    meta = {**parts[0]["meta"], "merged_from": [str(p) for p in paths],
            "wall_s": sum(d["meta"].get("wall_s") or 0 for d in parts),
            "load_after": parts[-1]["meta"].get("load_after"),
            "modalities_done": list(dict.fromkeys(r["modality"] for r in rows))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
