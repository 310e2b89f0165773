"""Pretraining throughput per modality on CPU, and the share of a step spent waiting for data.

For each modality, the demo pipeline's method, encoder and batch (``pipelines/demo/<mod>.yaml``)
are trained by ``medcl.engine.loop.train_one_epoch``:

* **compute only**: batches taken from the real loader beforehand and replayed from memory — images/s
  of model + loss + optimiser (each sample has two views; images/s counts views);
* **end to end**: straight from the loader with 0 and 2 worker processes, over the dataset as the demo
  pipeline configures it (``data.cache: memory`` in the demos: files read and resized once per run); ``data_wait_fraction`` is
  the engine's own figure (time blocked in ``next(loader)`` / step time). As in the pretraining
  stage, one loader with persistent workers serves every epoch (``data.persistent_workers``, on by
  default), so worker start-up is paid once, in the first step; the ``steady`` value leaves that
  step out, ``all`` keeps it. Target (issue 8): < 10 % with 2 workers.

Precision, memory layout, ``torch.compile`` and model FLOP utilisation (CPU, and GPU when one is
lent) are measured by ``bench_precision.py``.

Usage::

    python benchmarks/bench_train.py --out benchmarks/results/train.json [--quick] [--modalities oct ecg]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, build_method, demo_training_set, quiet_logs, write_results

MODALITIES = ("oct", "fundus", "histo", "ecg", "ct", "mri")


def measure(modality: str, work: Path, quick: bool, workers: list[int], steps: int) -> list[dict]:
    import torch

    from medcl.data.datasets import build_dataset, build_loader
    from medcl.distributed import LOCAL
    from medcl.engine.loop import LoopSettings, Optimisation, train_one_epoch

    cfg, data, items, batch, tf = demo_training_set(modality, work, quick)
    method, opt = build_method(cfg, data)
    if hasattr(method, "setup") and cfg.pretrain.method == "oct-severity":
        method.setup(build_loader(build_dataset(items, tf), batch_size=batch, shuffle=True, num_workers=0, seed=0))
    method.train()
    rows = []
    # the dataset as the demo pipeline configures it (data.cache): a memory or disk cache is filled once
    # per run, before the first epoch, like the workers' start-up; its time is reported, not timed per step
    t_fill = time.perf_counter()
    ds = build_dataset(items, tf, cache=cfg.data.cache, cache_dir=work / "cache" / modality,
                       num_workers=cfg.data.num_workers)
    base = {"modality": modality, "method": cfg.pretrain.method, "encoder": cfg.model.encoder, "batch": batch,
            "views": cfg.pretrain.views, "device": "cpu", "cache": cfg.data.cache,
            "cache_fill_s": time.perf_counter() - t_fill}

    def loader_for(w: int, epoch: int, persistent: bool = False):
        return build_loader(ds, batch_size=batch, shuffle=True, num_workers=w, seed=0, epoch=epoch, drop_last=True,
                            persistent_workers=persistent)

    # -- compute only: replayed batches ------------------------------------------------------------------------
    cached = []
    epoch = 0
    while len(cached) < steps + 1:
        cached += list(loader_for(0, epoch))
        epoch += 1
    cached = cached[: steps + 1]
    train_one_epoch(method, cached[:1], Optimisation(opt), LoopSettings(progress=False), comm=LOCAL)  # warm-up
    t0 = time.perf_counter()
    res = train_one_epoch(method, cached[1:], Optimisation(opt), LoopSettings(progress=False), comm=LOCAL)
    sec = time.perf_counter() - t0
    n = sum(int(b["index"].shape[0]) for b in cached[1:])
    rows.append({**base, "mode": "compute only", "workers": None, "steps": len(cached) - 1,
                 "samples_per_s": n / sec, "images_per_s": n * cfg.pretrain.views / sec, "loss": res.get("loss")})
    print(f"# {modality} compute: {rows[-1]['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)

    # -- end to end from the loader ---------------------------------------------------------------------------
    for w in workers:
        per_step: list[dict] = []
        done = 0
        t0 = time.perf_counter()
        epochs = 0
        total_samples = 0
        loader = loader_for(w, 100, persistent=True)  # as the pretrain stage: one loader, set_epoch per epoch
        while done < steps:
            loader.set_epoch(100 + epochs)
            settings = LoopSettings(progress=False, max_steps=steps - done)
            out = train_one_epoch(method, loader, Optimisation(opt), settings, comm=LOCAL, epoch=epochs,
                                  on_step=lambda s, logs, acc=per_step: acc.append(dict(logs)))
            done += int(out["steps"])
            total_samples += int(out["batches_done"]) * batch
            epochs += 1
            if out["steps"] == 0:
                break
        sec = time.perf_counter() - t0
        del loader  # stops its persistent workers
        # the engine's per-step figures: wait / step time; the first step of each epoch starts the workers
        waits = [s["data_wait_fraction"] for s in per_step]
        # one loader for all epochs: only the very first step waits for the worker processes to start
        firsts = [s["data_wait_fraction"] for s in per_step[:1]]
        steady = [s["data_wait_fraction"] for s in per_step[1:]]
        sps = [s["samples_per_s"] for s in per_step]
        rows.append({**base, "mode": "end to end", "workers": w, "steps": done, "epochs": epochs, "persistent_workers": True,
                     "samples_per_s": total_samples / sec, "images_per_s": total_samples * cfg.pretrain.views / sec,
                     "data_wait_fraction_all": _weighted_wait(per_step),
                     "data_wait_fraction_steady": _weighted_wait(per_step[1:]) if steady else None,
                     "data_wait_fraction_first_step": statistics.mean(firsts) if firsts else None,
                     "step_samples_per_s_median": statistics.median(sps) if sps else None,
                     "per_step_wait": waits})
        print(f"# {modality} workers={w}: {rows[-1]['images_per_s']:.1f} images/s, wait all "
              f"{rows[-1]['data_wait_fraction_all']:.2f}", file=sys.stderr, flush=True)
    del torch
    return rows


def _weighted_wait(per_step: list[dict]) -> float | None:
    """Total wait / total step time over all steps (steps weighted by their duration)."""
    if not per_step:
        return None
    # samples_per_s = samples / step time, wait fraction = wait / step time -> recover the times
    times = [1.0 / s["samples_per_s"] if s["samples_per_s"] > 0 else 0.0 for s in per_step]  # per sample
    total = sum(times)
    return sum(t * s["data_wait_fraction"] for t, s in zip(times, per_step)) / total if total > 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="8 patients, 2 steps, one modality")
    parser.add_argument("--modalities", nargs="+", default=None, choices=MODALITIES)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per measurement")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "train")
    args = parser.parse_args(argv)
    quiet_logs()
    mods = args.modalities or (["oct"] if args.quick else list(MODALITIES))
    steps = 2 if args.quick else args.steps
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    meta = {**base_meta(args.quick), "steps": steps, "workers": args.workers}
    rows: list[dict] = []
    for m in mods:
        rows += measure(m, work, args.quick, args.workers, steps)
    write_results(args.out, meta, rows, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
