"""Whole-slide tiles, slide to augmented tensor: tiles/s of medcl's loader against a naive OpenSlide loop and MONAI's
``PatchWSIDataset``, on the same slides and tile plan; and the share of a training step spent waiting for tiles.

Slides: ``medcl data synth --modalities histo`` (one pyramidal TIFF per patient, 768 px at ~0.5 µm/pixel), tiled
by ``data.wsi`` (10x, 64-pixel tiles read from level 1, min tissue 0.5). Every arm reads the
same tiles in the same shuffled order, in ``--workers`` DataLoader processes, and applies the same augmentation (the
histo preset's training chain, two views); they differ only in how a tile gets from the slide to an array:

* ``medcl``: the plan's tile items through :class:`~medcl.transforms.io.LoadSampled` (a region read from the
  matching level of a slide kept open in the worker);
* ``naive openslide``: ``openslide.OpenSlide(path).read_region(...)`` in ``__getitem__`` (the slide opened for
  every tile, as a first loop is written), RGBA to RGB, the same area resize;
* ``monai PatchWSIDataset``: MONAI's dataset with its OpenSlide reader (``reader="OpenSlide"``), the same resize.

``wait`` rows: a ResNet-18 step (forward and backward on the two views of a batch) fed by each loader; the share of
the wall time spent in ``next(batch)``. ``read`` rows: the same loaders without the augmentation (slide to tensor),
where the read is all the work. ``extract`` rows: the slides stage's per-slide feature extraction — the frozen
ResNet-18 embeds every planned tile of each slide (medcl's evaluation chain and loader, as the stage runs it): seconds
per slide and tiles/s, and the share of that time spent waiting for tiles.

Usage::

    python benchmarks/bench_wsi.py --out benchmarks/results/wsi.json [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _common  # noqa: F401
import numpy as np
import torch
from _common import base_meta, write_results


def _resize(arr: np.ndarray, out: int) -> np.ndarray:
    """``(C, s, s)`` → ``(C, out, out)``: area averaging when shrinking, bilinear when enlarging (what medcl's
    region read does between levels)."""
    if arr.shape[-1] == out:
        return arr
    t = torch.as_tensor(arr, dtype=torch.float32)[None]
    mode = {"mode": "area"} if out < arr.shape[-1] else {"mode": "bilinear", "align_corners": False}
    return torch.nn.functional.interpolate(t, size=(out, out), **mode)[0].numpy()


class NaiveOpenSlide(torch.utils.data.Dataset):
    """Open the slide, read the region, close it: one tile per ``__getitem__``."""

    def __init__(self, items, augment):
        self.items, self.augment = items, augment

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import openslide

        it = self.items[i]
        x, y, level, size, out = it["region"]
        slide = openslide.OpenSlide(it["image"])
        try:
            rgba = np.asarray(slide.read_region((x, y), level, (size, size)))
        finally:
            slide.close()
        img = _resize(np.moveaxis(rgba[..., :3], -1, 0).astype(np.float32), out)
        return self.augment({"image": torch.as_tensor(img), "label": it["label"]})


class MonaiPatches(torch.utils.data.Dataset):
    """MONAI's ``PatchWSIDataset`` (OpenSlide reader) for the read, then the shared resize and augmentation."""

    def __init__(self, items, augment):
        from monai.data import PatchWSIDataset

        # MONAI's keys (WSIPatchKeys): location (row, column) of the top-left corner at level 0, size, level
        data = [{"image": it["image"], "location": [it["region"][1], it["region"][0]], "size": it["region"][3],
                 "level": it["region"][2], "label": it["label"]} for it in items]
        self.ds = PatchWSIDataset(data, center_location=False, reader="OpenSlide")
        self.out = [it["region"][4] for it in items]
        self.augment = augment

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        d = self.ds[i]
        img = _resize(np.asarray(d["image"], dtype=np.float32)[:3], self.out[i])
        return self.augment({"image": torch.as_tensor(img), "label": d["label"]})


#: the arm whose augmentation runs on whole batches in the training process (``transforms.augment_on: batch``)
BATCHED = "medcl, augment_on: batch"


def _loader(ds, batch, workers, seed):
    from medcl.data.datasets import collate_samples

    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g,
                                       collate_fn=collate_samples, drop_last=False, persistent_workers=False)


def _views(batch):
    return batch["views"].flatten(0, 1)  # (B, V, C, H, W) -> (B * V, C, H, W)


def time_loading(loader, device: str = "cpu") -> tuple[int, float]:
    """``(tiles, seconds)`` to iterate the loader once (workers started inside the timing)."""
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += int((b["views"] if "views" in b else b["image"]).shape[0])
    _sync(device)  # a batch augmented on the GPU is done when the kernels are
    return n, time.perf_counter() - t0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_training(loader, steps: int, device: str = "cpu") -> dict:
    """A ResNet-18 SimCLR-sized step per batch; the share of time spent waiting for the next batch."""
    import timm

    net = timm.create_model("resnet18", num_classes=0, in_chans=3).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    wait = total = 0.0
    done = 0
    t0 = time.perf_counter()
    it = iter(loader)
    while done < steps:
        tw = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        wait += time.perf_counter() - tw
        loss = net(_views(batch).to(device, non_blocking=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        done += 1
    total = time.perf_counter() - t0
    return {"steps": done, "seconds": round(total, 2), "wait_share": round(wait / total, 3)}


def time_extraction(ctx, cfg, items: list[dict], device: str) -> dict:
    """The slides stage's feature extraction: a frozen ResNet-18 over every planned tile, one loader for the split
    (as :func:`medcl.stages.slides._bags`); seconds per slide are the total over the slides."""
    from medcl.stages.common import make_encoder, make_loader, make_transforms

    encoder = make_encoder(cfg).to(device).eval()
    loader = make_loader(ctx, items, make_transforms(cfg, train=False), batch_size=cfg.data.batch_size,
                         shuffle=False, train=False, distributed=False)
    wait, tiles = 0.0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        it = iter(loader)
        while True:
            tw = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            encoder(batch["image"].to(device, non_blocking=True))
            tiles += int(batch["image"].shape[0])
        _sync(device)
    total = time.perf_counter() - t0
    n_slides = len({it["image"] for it in items})
    return {"tiles_read": tiles, "seconds": round(total, 2), "seconds_per_slide": round(total / n_slides, 3),
            "tiles_per_s": round(tiles / total, 1), "wait_share": round(wait / total, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="12 slides, 256 tiles, 3 training steps")
    ap.add_argument("--tiles", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12, help="training steps of the wait rows")
    ap.add_argument("--device", default="cpu", help="where the training and extraction steps run (cpu, cuda)")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work" / "wsi")
    args = ap.parse_args(argv)
    if args.quick:
        args.tiles, args.steps, args.batch = 256, 3, 32
    t0 = time.time()
    meta = {**base_meta(args.quick), "workers": args.workers, "batch": args.batch, "device": args.device,
            "tiling": "10x, 64-pixel tiles (read from level 1, 2x below the ~20x scan), min tissue 0.5",
            "augment": "histo preset training chain, 2 views"}
    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline
    from medcl.stages.common import make_transforms
    from medcl.transforms import build_transforms

    # the arm the shipped whole-slide pipeline runs (the speed target is about it)
    meta["shipped_augment_on"] = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "histo_wsi.yaml",
                                               []).transforms.augment_on
    work = args.work / ("quick" if args.quick else "full")
    slides = work / "data" / "histo" / "slides.csv"
    if not slides.is_file():
        synthesize(work / "data", modalities=["histo"], patients=12 if args.quick else None, seed=0)
    cfg = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "demo" / "histo.yaml", [
        f"data.manifest={slides}", f"runtime.output_dir={work / 'runs'}", "runtime.progress=false",
        "stages=[pretrain]", "data.wsi.magnification=10", "data.wsi.tile_size=64", "data.cache=none",
        "data.val_fraction=0.0", "data.test_fraction=0.0"])
    data = prepare_data(cfg)
    items = data.items()
    rng = np.random.default_rng(0)
    items = [items[i] for i in sorted(rng.choice(len(items), size=min(args.tiles, len(items)), replace=False))]
    medcl_tf = make_transforms(cfg, train=True, views=2)
    rest = build_transforms("histo", train=True, views=2, spatial_size=[64, 64])
    augment = type(rest)(rest.transforms[1:])  # the same chain without the file loading

    from monai.data import Dataset

    from medcl.data.datasets import SeededDataset

    # medcl with ``transforms.augment_on: batch``: the workers only read the tiles, the histo preset's random part
    # runs once per batch in the training process (on --device) — what the stage's loader does with that setting
    from medcl.stages.common import make_loader
    from medcl.stages.context import RunContext

    bcfg = cfg.model_copy(update={
        "transforms": cfg.transforms.model_copy(update={"augment_on": "batch"}),
        "data": cfg.data.model_copy(update={"num_workers": args.workers, "batch_size": args.batch})})
    bctx = RunContext(cfg=bcfg, key="bench-batch", run_dir=work / "runs" / "batch", data=data,
                      device=torch.device(args.device))
    batch_tf = make_transforms(bcfg, train=True, views=2)

    def batched():
        return make_loader(bctx, items, batch_tf, batch_size=args.batch, shuffle=True, train=True, distributed=False)

    arms = {
        "medcl": lambda: SeededDataset(Dataset(items, medcl_tf), seed=0),
        "naive openslide": lambda: NaiveOpenSlide(items, augment),
        "monai PatchWSIDataset": lambda: MonaiPatches(items, augment),
    }
    loaders = {BATCHED: batched}  # arms that bring their own loader
    def ident(d):
        return d

    from medcl.transforms.io import LoadSampled

    ours = [LoadSampled(keys=("image",))(dict(it))["image"].numpy() for it in items[:16]]
    meta["max_pixel_difference"] = {  # the same tiles, un-augmented: the three readers must agree
        name: float(max(np.abs(np.asarray(ds[i]["image"], dtype=np.float32) - ours[i]).max() for i in range(len(ours))))
        for name, ds in (("naive openslide", NaiveOpenSlide(items[:16], ident)),
                         ("monai PatchWSIDataset", MonaiPatches(items[:16], ident)))}
    medcl_read = make_transforms(cfg, train=False)  # slide to un-augmented tensor (load, scale)

    def to_tensor(d):
        return {**d, "image": torch.as_tensor(d["image"])}

    readers = {
        "medcl": lambda: SeededDataset(Dataset(items, medcl_read), seed=0),
        "naive openslide": lambda: NaiveOpenSlide(items, to_tensor),
        "monai PatchWSIDataset": lambda: MonaiPatches(items, to_tensor),
    }
    rows = []

    def record(row: dict, measure) -> None:
        try:
            row.update(measure())
        except Exception as e:  # noqa: BLE001 - a failed arm is a row with its error
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        print(row, flush=True)
        rows.append(row)
        write_results(args.out, meta, rows, t0)

    def loader_of(name, make):
        return loaders[name]() if name in loaders else _loader(make(), args.batch, args.workers, 0)

    def loading(name, make):
        loader = loader_of(name, make)
        n, sec = time_loading(loader, args.device)
        return {"tiles_read": n, "seconds": round(sec, 2), "tiles_per_s": round(n / sec, 1)}

    n_slides = len({it["image"] for it in items})
    for measure, table in (("load", {**arms, **loaders}), ("wait", {**arms, **loaders}), ("read", readers)):
        for name, make in table.items():
            row = {"arm": name, "measure": measure, "tiles": len(items), "slides": n_slides}
            if measure == "wait":
                record(row, lambda name=name, make=make: time_training(loader_of(name, make), args.steps, args.device))
            else:
                record(row, lambda name=name, make=make: loading(name, make))
    # the slides stage's extraction: every planned tile of every slide, slide by slide
    every = data.items()
    ecfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": args.workers,
                                                                      "batch_size": args.batch})})
    ctx = RunContext(cfg=ecfg, key="bench", run_dir=work / "runs" / "extract", data=data,
                     device=torch.device(args.device))
    record({"arm": "medcl", "measure": "extract", "tiles": len(every), "slides": len({it["image"] for it in every})},
           lambda: time_extraction(ctx, ecfg, every, args.device))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
