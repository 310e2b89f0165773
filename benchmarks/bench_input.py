"""Input pipeline: loader samples/s per modality with 0 and 2 workers; 3D caching (first vs second epoch).

For each modality the demo data (``medcl data synth``) are read through exactly what pretraining
uses: the demo pipeline's config → ``medcl.data.prepare.prepare_data`` → ``build_transforms(train=True,
views=2)`` → ``medcl.data.datasets.build_dataset`` / ``build_loader`` (batch = the demo's pretraining
batch). A pass over the training split is timed with no model attached; samples/s excludes the
first batch (worker start-up is reported separately as ``first_batch_s``).

3D (CT, MRI): ``data.cache`` = ``none``, ``memory`` (MONAI ``CacheDataset``, filled when built) and
``disk`` (``PersistentDataset``, filled on first access), two epochs each with 0 workers; epoch 1
of ``memory`` includes filling the cache (``build_s``).

Usage::

    python benchmarks/bench_input.py --out benchmarks/results/input.json [--quick] [--modalities oct ct]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401
from _common import ROOT, base_meta, demo_config, demo_manifest, quiet_logs, write_results

MODALITIES = ("oct", "fundus", "histo", "ecg", "ct", "mri")
THREE_D = ("ct", "mri")


def timed_pass(loader, max_batches: int | None = None) -> dict[str, float]:
    """Iterate ``loader``; seconds to the first batch and samples/s over the rest."""
    t0 = time.perf_counter()
    first = None
    n_rest = 0
    n_total = 0
    for i, batch in enumerate(loader):
        b = int(batch["index"].shape[0])
        n_total += b
        if first is None:
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
        else:
            n_rest += b
        if max_batches is not None and i + 1 >= max_batches:
            break
    total = time.perf_counter() - t0
    rest = time.perf_counter() - t1 if first is not None else 0.0
    return {"first_batch_s": first or 0.0, "epoch_s": total, "samples": n_total,
            "samples_per_s": n_rest / rest if rest > 0 and n_rest else n_total / total if total > 0 else 0.0,
            "samples_per_s_incl_startup": n_total / total if total > 0 else 0.0}


def modality_loaders(modality: str, data_dir: Path, work: Path, workers: list[int], quick: bool,
                     max_batches: int | None) -> list[dict]:
    from medcl.data.datasets import build_dataset, build_loader
    from medcl.data.prepare import prepare_data
    from medcl.stages.common import make_transforms

    manifest = demo_manifest(modality, data_dir, patients=8 if quick else None)
    cfg = demo_config(modality, manifest, work)
    data = prepare_data(cfg)
    items = data.items("train")
    tf = make_transforms(cfg, train=True, views=cfg.pretrain.views)
    batch = max(2, min(cfg.pretrain.batch_size, len(items)))
    rows = []
    for w in workers:
        ds = build_dataset(items, tf, cache="none")
        loader = build_loader(ds, batch_size=batch, shuffle=True, num_workers=w, seed=0)
        r = timed_pass(loader, max_batches)
        rows.append({"kind": "loader", "modality": modality, "workers": w, "batch": batch, "items": len(items), **r})
        print(f"# {modality} workers={w}: {r['samples_per_s']:.1f} samples/s", file=sys.stderr, flush=True)
    if modality in THREE_D:
        for cache in ("none", "memory", "disk"):
            cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{modality}-", dir=work))
            t0 = time.perf_counter()
            ds = build_dataset(items, tf, cache=cache, cache_dir=cache_dir, num_workers=1)
            build_s = time.perf_counter() - t0
            for epoch in (1, 2):
                loader = build_loader(ds, batch_size=batch, shuffle=True, num_workers=0, seed=0, epoch=epoch)
                r = timed_pass(loader, max_batches)
                extra = build_s if epoch == 1 else 0.0
                rows.append({"kind": "cache", "modality": modality, "cache": cache, "epoch": epoch, "batch": batch,
                             "items": len(items), "build_s": build_s if epoch == 1 else 0.0, **r,
                             "epoch_incl_build_s": r["epoch_s"] + extra,
                             "samples_per_s_incl_build": r["samples"] / (r["epoch_s"] + extra)})
                print(f"# {modality} cache={cache} epoch {epoch}: {r['epoch_s'] + extra:.2f} s", file=sys.stderr,
                      flush=True)
            shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="8 patients per modality, 2 batches")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "input")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    meta = {**base_meta(args.quick), "workers": args.workers,
            "what": "training split of each demo set through the pretraining transforms (2 views), no model"}
    rows: list[dict] = []
    for m in args.modalities:
        rows += modality_loaders(m, work / "data", work, args.workers, args.quick, 2 if args.quick else None)
    write_results(args.out, meta, rows, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
