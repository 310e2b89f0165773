"""The ``segment`` stage: does the pretrained encoder make a better segmenter, and than what?

For every label fraction (of training *patients*, nested) the configured network
(``segment.network``) is trained twice with the same budget — once starting from the encoder
that ``pretrain`` produced (``ctx.outputs["pretrain"]["encoder"]``, or ``model.pretrained_path``)
and once from scratch — with Dice + cross-entropy on the samples that have a mask. Test images
are segmented by sliding-window inference; per-case and per-class Dice and HD95 (MONAI's metrics,
in mm after the preset's resampling) are logged with a patient-level bootstrap CI of mean Dice.
Writes ``segment/results.json``, ``segment/per_case.csv`` and a few overlay PNGs (named by row
index, never by patient).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medcl.errors import ConfigError, DataError
from medcl.metric_keys import CI_BOUNDS, metric_key, segment_tag
from medcl.stages.common import jsonable as _jsonable

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl import distributed
from medcl.checkpoint_file import load_checkpoint, save_checkpoint
from medcl.engine.loop import LoopSettings, Optimisation, fit
from medcl.engine.wrap import wrap_ddp
from medcl.metrics.segmentation import dice_per_class, hd95_per_class
from medcl.readers import read
from medcl.stages.common import (
    check_step_memory,
    data_modality,
    make_encoder,
    make_loader,
    model_requirements,
    seed_everything,
    shard,
    supervised_setup,
    transform_params,
)
from medcl.tasks.classification import label_fraction_patients
from medcl.tasks.segmentation import (
    SegmentationWrapper,
    build_segmentation_network,
    case_mean,
    check_roi_size,
    get_network,
    logits_to_labels,
    mask_to_labels,
    mean_dice_ci,
    metric_name,
    overlay_figure,
    pick_slice,
    sliding_window_predict,
    summarise_per_class,
    transfer_encoder_weights,
)
from medcl.transforms import build_transforms, preset_info

log = logging.getLogger(__name__)


def _transforms(cfg: Any, *, train: bool, spatial_size: list[int] | None = None):
    """The preset's chain with ``"mask"`` carried along (spatial transforms, nearest-neighbour)."""
    params = transform_params(cfg)
    params["mask_keys"] = ("mask",)  # the presets' parameter for segmentation masks
    if spatial_size is not None:
        params["spatial_size"] = list(spatial_size)
    return build_transforms(cfg.transforms.preset, train=train, views=1, augment_on=cfg.transforms.augment_on,
                            **params)


def _sizes(cfg: Any) -> tuple[int, list[int], list[int], list[float] | None]:
    """``(spatial_dims, train patch size, roi size, voxel spacing)`` from the preset and config."""
    info = preset_info(cfg.transforms.preset)
    dims = int(info["spatial_dims"])
    if dims not in (2, 3):
        raise ConfigError(f"preset {cfg.transforms.preset!r} is {dims}D: nothing to segment",
                          where="transforms.preset", fix="segmentation needs a 2D or 3D modality preset")
    params = {**info["defaults"], **(cfg.transforms.model_extra or {})}
    patch = [int(s) for s in params["spatial_size"]]
    roi = [int(s) for s in (cfg.segment.roi_size or patch)]
    if len(roi) != dims:
        raise ConfigError(f"roi_size {roi} has {len(roi)} axes, the {cfg.transforms.preset} preset {dims}",
                          where="segment.roi_size", fix=f"give {dims} sizes")
    spacing = params.get("spacing")
    spacing = [float(s) for s in spacing] if spacing is not None and len(spacing) == dims else None
    return dims, patch, roi, spacing


def _seg_items(ctx: RunContext, split: str) -> list[dict]:
    # The "task" entry changes the items' hash: a disk cache (PersistentDataset keys files by item,
    # not by transform) must not hand back another stage's cached sample, loaded without its mask.
    return [{**it, "task": "segment"} for it in ctx.data.items(split) if it.get("mask")]


def _mask_classes(items: list[dict], num_classes: int) -> np.ndarray:
    """Which foreground classes each training mask holds: ``(N, num_classes - 1)`` of 0/1, read from the masks.

    The label shares of the segment stage are drawn with it (as multilabel labels with every class kept), so a
    small share holds patients with every class both present and absent: a share whose masks are all background
    (the MRI demo's 10 % share was 2 patients, on one seed both without a lesion) trains a network that segments
    nothing.

    Raises:
        DataError: a mask with non-integer values or a label outside ``0 .. num_classes - 1`` (the training
            check, :func:`~medcl.tasks.segmentation.mask_to_labels`, naming the file), found here before any
            training rather than only when a batch holding it is drawn.
    """
    import torch

    out = np.zeros((len(items), max(1, num_classes - 1)), np.float32)
    for i, it in enumerate(items):
        labels = mask_to_labels(torch.as_tensor(read(it["mask"]).array), num_classes, where=f"mask {it['mask']}")
        fg = torch.unique(labels)
        out[i, (fg[fg >= 1] - 1).numpy()] = 1.0
    return out


def _build(ctx: RunContext, weights: str | None, dims: int) -> tuple[Any, int]:
    """The segmentation network; with ``weights`` the pretrained encoder goes in. Returns (net, n tensors)."""
    cfg, s = ctx.cfg, ctx.cfg.segment
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder = make_encoder(base, weights=weights)
    net = build_segmentation_network(s.network, spatial_dims=dims, in_channels=cfg.model.in_channels,
                                     num_classes=s.num_classes, encoder=encoder, **s.network_options)
    if get_network(s.network).uses_encoder:
        n = len(encoder.state_dict()) if weights else 0
        if weights and str(weights).endswith(".pt") and s.pretrained_decoder:
            n += _load_pretrained_decoder(net, weights)
        elif weights and not s.pretrained_decoder:
            log.info("segment: segment.pretrained_decoder is false: only the encoder is pretrained, the decoder "
                     "starts random")
    else:
        n = transfer_encoder_weights(net, encoder) if weights else 0
    return net, n


def _load_pretrained_decoder(net: Any, weights: str) -> int:
    """Put a decoder pretrained with the encoder (``dense`` with ``decoder: true``) into ``net``; tensors loaded.

    Raises:
        ConfigError: the pretrained decoder's widths differ from ``segment.network_options``.
    """
    ckpt = load_checkpoint(weights)
    state = ckpt.get("decoder")
    if not state:
        return 0
    own = net.state_dict()
    bad = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(f"the decoder pretrained with the encoder ({ckpt.get('decoder_options')}) does not fit "
                          f"segment.network encoder_unet (first mismatch: {bad[0]})",
                          where="segment.network_options",
                          fix="use the same decoder_channels and input_channels in pretrain.method_options and "
                          "segment.network_options (the pretrain stage copies segment's when they are unset)")
    net.load_state_dict(state, strict=False)
    log.info("segment: %d decoder tensors pretrained with the encoder go in", len(state))
    return len(state)


def _train(ctx: RunContext, net: Any, items: list[dict], transform: Any, seed_offset: int, comm: Any,
           label: str = "segment") -> list[dict[str, float]]:
    """Dice + CE training of ``net``; under torchrun every rank trains (DDP over ``comm``, the batch split)."""
    s = ctx.cfg.segment
    wrapper = SegmentationWrapper(net, s.num_classes).to(ctx.device)
    factory, opt, sched, epochs, steps = supervised_setup(
        ctx, items, transform, wrapper, comm=comm, batch_size=s.batch_size, epochs=s.epochs, steps=s.steps,
        max_steps=s.max_steps, lr=s.lr, weight_decay=s.weight_decay, optimizer=s.optimizer, seed_offset=seed_offset,
        warmup_steps=s.warmup_steps)
    check_step_memory(ctx, "segment", wrapper, factory(0), max(1, min(s.batch_size, len(items)) // comm.size),
                      "segment.batch_size")
    trained = wrap_ddp(wrapper, ctx.device) if comm.size > 1 else wrapper
    settings = LoopSettings(epochs=epochs, max_steps=steps, total_steps=steps, device=ctx.device,
                            log_every=max(1, steps // 10), progress=ctx.cfg.runtime.progress, label=label)
    return fit(trained, factory, Optimisation(opt, sched), settings, comm=comm)


def _evaluate(ctx: RunContext, net: Any, items: list[dict], transform: Any, roi: list[int], spacing: list[float] | None,
              keep_slices: bool, comm: Any) -> dict[str, Any]:
    """Sliding-window predictions on ``items``; per-case Dice/HD95 and, optionally, display slices.

    Each rank segments its shard of the test cases with the plain network (no DDP wrapper: no collective
    per batch); the per-case results are gathered, in item order, on every rank.
    """
    import torch


    s = ctx.cfg.segment
    mine = shard(items, comm)
    loader = make_loader(ctx, mine, transform, batch_size=max(1, min(s.batch_size, len(mine))), shuffle=False,
                         train=False, distributed=False) if mine else []
    net.eval()
    dice, hd, index, fg_true, fg_pred, slices = [], [], [], [], [], {}
    with torch.no_grad():
        for batch in loader:
            img = batch["image"].to(ctx.device).float()
            pred = logits_to_labels(sliding_window_predict(net, img, roi, sw_batch_size=s.sw_batch_size,
                                                           overlap=s.overlap)).cpu()
            true = mask_to_labels(batch["mask"], s.num_classes, where="test mask")
            dice.append(dice_per_class(pred, true, s.num_classes))
            hd.append(hd95_per_class(pred, true, s.num_classes, spacing=spacing))
            index.extend(int(i) for i in batch["index"])
            fg_true.extend(int(v) for v in (true > 0).flatten(1).sum(1))
            fg_pred.extend(int(v) for v in (pred > 0).flatten(1).sum(1))
            if keep_slices:
                for b, i in enumerate(batch["index"]):
                    t, p, x = true[b, 0].numpy(), pred[b, 0].numpy(), batch["image"][b, 0].float().numpy()
                    if t.ndim == 3:  # RAS volume: axial slice shown as (Y, X), anterior up
                        k = pick_slice(t)
                        t, p, x = t[..., k].T, p[..., k].T, x[..., k].T
                    slices[int(i)] = (x.astype(np.float32), t.astype(np.uint8), p.astype(np.uint8))
    net.train()
    parts = comm.gather_objects({"dice": dice, "hd95": hd, "index": index, "fg_true": fg_true, "fg_pred": fg_pred,
                                 "slices": slices})
    order = np.argsort(np.concatenate([np.asarray(p["index"], np.int64) for p in parts]), kind="stable")
    cat = {k: [v for p in parts for v in p[k]] for k in ("dice", "hd95")}
    return {"dice": np.concatenate(cat["dice"])[order], "hd95": np.concatenate(cat["hd95"])[order],
            "index": np.concatenate([np.asarray(p["index"], np.int64) for p in parts])[order],
            "fg_true": np.concatenate([np.asarray(p["fg_true"], np.int64) for p in parts])[order],
            "fg_pred": np.concatenate([np.asarray(p["fg_pred"], np.int64) for p in parts])[order],
            "slices": {i: sl for p in parts for i, sl in p["slices"].items()}}


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Training and test-set segmentation on every rank (DDP, sharded evaluation), then results on rank 0."""
    cfg, s, data = ctx.cfg, ctx.cfg.segment, ctx.data
    seed_everything(cfg.seed, cfg.runtime.deterministic)

    # -- data: samples with a mask; train with random crops, test whole (eval_spatial_size) ------------
    dims, patch, roi, spacing = _sizes(cfg)
    check_roi_size(s.network, patch, s.network_options)
    check_roi_size(s.network, roi, s.network_options)
    train_items, test_items = _seg_items(ctx, "train"), _seg_items(ctx, "test")
    for split, its in (("train", train_items), ("test", test_items)):
        if not its:
            raise DataError(f"no {split} samples with a mask", where="segment",
                            fix="add a 'mask' column to the manifest (label map files, 0 = background)")
    names = list(s.class_names or [str(k) for k in range(s.num_classes)])
    fg_names = names[1:]
    train_tf = _transforms(cfg, train=True)
    eval_tf = _transforms(cfg, train=False, spatial_size=s.eval_spatial_size)
    train_idx = np.asarray([it["index"] for it in train_items], np.int64)
    present = _mask_classes(train_items, s.num_classes) if min(s.label_fractions) < 1.0 else None
    fractions = label_fraction_patients(data.patients_of(train_idx), present, s.label_fractions, seed=cfg.seed,
                                        ensure_all_classes=present is not None)

    # -- starting points: the pretrained encoder vs from scratch ------------------------------------------
    pretrained = (ctx.outputs.get("pretrain") or {}).get("encoder") or cfg.model.pretrained_path
    starts: dict[str, str | None] = {}
    if pretrained:
        starts["pretrained"] = str(pretrained)
    else:
        log.warning("segment: no pretrained encoder (no pretrain stage and no model.pretrained_path): "
                    "training from scratch only")
    if pretrained and not get_network(s.network).uses_encoder and _build(ctx, pretrained, dims)[1] == 0:
        log.warning("segment: network %s shares no weights with encoder %s, so the pretrained encoder cannot "
                    "go in: training from scratch only (use network encoder_unet, or basic_unet with "
                    "unet_encoder3d / swin_unetr with swin_unetr_encoder)", s.network, cfg.model.encoder)
        starts.pop("pretrained")
    if s.baseline or not starts:
        starts["scratch"] = None
    tracker.log_params({"segment.roi_size": json.dumps(roi), "segment.patch_size": json.dumps(patch),
                        "segment.spacing_mm": json.dumps(spacing), "segment.n_train": len(train_items),
                        "segment.n_test": len(test_items), "segment.network": s.network})

    # -- every rank trains each model (DDP) and segments its shard of the test cases ---------------------
    comm = distributed.world()
    tracker.log_params({"segment.world_size": comm.size, "segment.per_rank_batch": max(1, s.batch_size // comm.size)})
    largest = max(s.label_fractions)
    trained: list[dict[str, Any]] = []
    for frac in s.label_fractions:
        sel = fractions[frac]
        items = [it for it, keep in zip(train_items, sel) if keep]
        for k, (name, weights) in enumerate(starts.items()):
            seed_everything(cfg.seed + 7 * k, cfg.runtime.deterministic)
            net, n_loaded = _build(ctx, weights, dims)
            net = net.to(ctx.device)
            history = _train(ctx, net, items, train_tf, seed_offset=k, comm=comm,
                             label=f"segment {name} ({round(frac * 100):g} % of patients)")
            ev = _evaluate(ctx, net, test_items, eval_tf, roi, spacing, keep_slices=frac == largest, comm=comm)
            trained.append({"name": name, "frac": frac, "n_loaded": n_loaded, "history": history, "ev": ev,
                            "n_items": len(items), "n_patients": int(len(np.unique(data.patients_of(train_idx[sel])))),
                            "net": net if frac == largest else None})
    return ctx.on_main("segment: results and overlays", lambda: _results_on_main(
        ctx, tracker, trained, fg_names, spacing, dims, largest, pretrained))


def _results_on_main(ctx: RunContext, tracker: Tracker, trained: list[dict[str, Any]], fg_names: list[str],
                     spacing: list[float] | None, dims: int, largest: float, pretrained: Any) -> dict[str, Any]:
    """Evaluate and save on rank 0: per-model Dice/HD95 with patient-bootstrap CIs, tables, overlays, networks.

    Writes the per-case table, the overlays and the trained networks of the largest label fraction
    (``segment/segmenter-<model>.pt``).
    """
    cfg, s, data = ctx.cfg, ctx.cfg.segment, ctx.data
    out_dir = ctx.stage_dir("segment")
    results: list[dict[str, Any]] = []
    case_rows: list[dict[str, Any]] = []
    shown: dict[str, dict[str, Any]] = {}
    for t in trained:
        name, frac, history, ev = t["name"], t["frac"], t["history"], t["ev"]
        pats = data.patients_of(ev["index"])
        per_class = summarise_per_class(ev["dice"], ev["hd95"], fg_names)
        cd = case_mean(ev["dice"])
        ci = mean_dice_ci(cd, pats, n_boot=s.n_boot, seed=cfg.seed)
        tag = segment_tag(name, frac)
        metrics = {metric_key(tag, "dice_mean"): ci["value"], metric_key(tag, "hd95_mean"): per_class["hd95"],
                   **{metric_key(tag, "dice_mean", b): ci[b] for b in CI_BOUNDS},
                   metric_key(tag, "final_loss"): float(history[-1]["loss"]) if history else float("nan")}
        for c in fg_names:
            metrics[metric_key(tag, f"dice_{metric_name(c)}")] = per_class[f"dice/{c}"]
            metrics[metric_key(tag, f"hd95_{metric_name(c)}")] = per_class[f"hd95/{c}"]
        tracker.log_metrics({m: float(v) for m, v in metrics.items() if v is not None and math.isfinite(v)})
        results.append({
            "model": name, "fraction": frac, "network": s.network, "n_train_samples": t["n_items"],
            "n_train_patients": t["n_patients"],
            "pretrained_tensors_loaded": t["n_loaded"], "steps": int(history[-1]["global_step"]) if history else 0,
            "final_loss": metrics[metric_key(tag, "final_loss")],
            "dice_mean": ci, "hd95_mean": per_class["hd95"], "hd95_unit": "mm" if spacing else "voxels",
            "per_class": {c: {"dice": per_class[f"dice/{c}"], "hd95": per_class[f"hd95/{c}"],
                              "n_cases": per_class[f"n_cases/{c}"]} for c in fg_names},
            "per_case_dice": {str(i): (None if not np.isfinite(v) else float(v)) for i, v in zip(ev["index"], cd)},
        })
        for j, i in enumerate(ev["index"]):
            row = {"model": name, "fraction": frac, "index": int(i), "patient": int(pats[j]),
                   "dice_mean": cd[j], "fg_voxels_true": int(ev["fg_true"][j]),
                   "fg_voxels_pred": int(ev["fg_pred"][j])}
            row.update({f"dice_{c}": ev["dice"][j, q] for q, c in enumerate(fg_names)})
            row.update({f"hd95_{c}": ev["hd95"][j, q] for q, c in enumerate(fg_names)})
            case_rows.append(row)
        if frac == largest:
            shown[name] = {"slices": ev["slices"], "dice": dict(zip(ev["index"].tolist(), cd.tolist()))}
        if t.get("net") is not None:
            weights = out_dir / f"segmenter-{name}.pt"
            save_checkpoint(weights, {"model": t["net"].state_dict(), "network": s.network,
                                      "num_classes": s.num_classes, "model_name": name})
            results[-1]["weights"] = str(weights)

    segmenter_uri = _log_segmenter_model(ctx, tracker, trained, largest)

    # -- artifacts: results, per-case table, overlays -------------------------------------------------------
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=_jsonable))
    tracker.log_artifact(results_path)
    cases_path = _write_cases(out_dir / "per_case.csv", case_rows)
    tracker.log_artifact(cases_path)
    overlays = _overlays(out_dir / "overlays", shown, s.overlays, dims)
    if overlays:
        tracker.log_artifact(out_dir / "overlays", "overlays")
    return {"results": str(results_path), "per_case": str(cases_path), "overlays": [str(p) for p in overlays],
            "segmenter_uri": segmenter_uri,
            "pretrained_encoder": pretrained, "summary": _summary(results, largest)}


def _log_segmenter_model(ctx: RunContext, tracker: Tracker, trained: list[dict[str, Any]], largest: float) -> str | None:
    """Log the segmenter of the largest label fraction as an MLflow model; its URI.

    The pretrained one when there is one, as ``runs:/<this stage's run>/segmenter`` (``medcl predict --task
    segment`` and the pyfunc apply it to whole images with the run's preprocessing). ``None`` without a tracking
    store.
    """
    if not tracker.active:
        return None
    import copy

    from medcl.tracking.pyfunc import log_segmenter  # lazy: mlflow, imported only when a model is logged

    cfg, s = ctx.cfg, ctx.cfg.segment
    nets = {t["name"]: t["net"] for t in trained if t["frac"] == largest and t.get("net") is not None}
    name = "pretrained" if "pretrained" in nets else next(iter(nets), None)
    if name is None:
        return None
    dims, patch, roi, _ = _sizes(cfg)
    preprocessing = {"preset": cfg.transforms.preset, **(cfg.transforms.model_extra or {})}
    if s.eval_spatial_size:
        preprocessing["spatial_size"] = list(s.eval_spatial_size)
    meta = {"kind": "segmenter", "preprocessing": preprocessing,
            "class_names": list(s.class_names or [str(k) for k in range(s.num_classes)]), "roi_size": roi,
            "overlap": s.overlap, "sw_batch_size": s.sw_batch_size, "spatial_dims": dims,
            "in_channels": cfg.model.in_channels, "modality": data_modality(ctx), "network": s.network,
            "trained_from": name, "label_fraction": largest}
    net = copy.deepcopy(nets[name]).cpu().eval()
    registered = f"{cfg.tracking.register_model}-segmenter" if cfg.tracking.register_model else None
    log_segmenter(tracker, net, json.loads(json.dumps(meta, default=_jsonable)), ctx.stage_dir("segment") / "model",
                  registered_model_name=registered, pip_requirements=model_requirements())
    return f"runs:/{tracker.run_id}/segmenter"


def _write_cases(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float | np.floating) and np.isfinite(v) else
                            ("" if isinstance(v, float | np.floating) else v)) for k, v in r.items()})
    return path


def _overlays(folder: Path, shown: dict[str, dict[str, Any]], n: int, dims: int) -> list[Path]:
    """Up to ``n`` PNGs of test cases (those with foreground first), one panel per model."""
    if n <= 0 or not shown:
        return []
    first = next(iter(shown.values()))["slices"]
    order = sorted(first, key=lambda i: (not (first[i][1] > 0).any(), i))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in order:
        image, truth, _ = first[i]
        preds = {m: v["slices"][i][2] for m, v in shown.items()}
        dice = {m: v["dice"].get(i) for m, v in shown.items()}
        fig = overlay_figure(image, truth, preds, title=f"test case (row {i})", dice=dice,
                             origin="lower" if dims == 3 else "upper")
        path = folder / f"case-row{i:05d}.png"
        fig.savefig(path, dpi=80)
        paths.append(path)
    return paths


def _summary(results: list[dict[str, Any]], largest: float) -> list[dict[str, str]]:
    rows = []
    for r in results:
        if r["fraction"] != largest:
            continue
        d = r["dice_mean"]
        ci = (f" [{d['ci_low']:.3f}, {d['ci_high']:.3f}]" if np.isfinite(d["ci_low"]) else "")
        val = f"{d['value']:.3f}{ci}" if np.isfinite(d["value"]) else "n/a (no foreground in test masks)"
        rows.append({"model": f"{r['model']} {r['network']}", "metric": "Dice (mean)", "value": val})
        if np.isfinite(r["hd95_mean"]):
            rows.append({"model": f"{r['model']} {r['network']}", "metric": f"HD95 ({r['hd95_unit']})",
                         "value": f"{r['hd95_mean']:.2f}"})
    return rows
