"""The ``pretrain`` stage: contrastive pretraining of the encoder.

Reads like MAE's ``main_pretrain.py``: data → model → loss (inside the method) → loop.
Only the train split's patients are used, so validation and test patients stay unseen.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from medcl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker
from medcl import distributed
from medcl.checkpoint_file import atomic_write_bytes, save_checkpoint
from medcl.engine.checkpoint import Checkpointer
from medcl.engine.inference import extract_features
from medcl.engine.loop import LoopSettings, Optimisation, fit
from medcl.engine.optim import build_optimizer
from medcl.engine.resume import Launch, load_resume_state, saved_launch
from medcl.engine.schedule import build_scheduler
from medcl.engine.wrap import maybe_compile, unwrap_model, wrap_ddp
from medcl.methods import METHODS, Method, build_method, method_options, multilabel_label_methods
from medcl.stages.common import (
    budget,
    check_step_memory,
    data_modality,
    jsonable,
    make_encoder,
    make_loader,
    make_transforms,
    model_requirements,
    seed_everything,
)
from medcl.stages.zero_shot import save_text_model
from medcl.tasks.export import FeatureExtractor
from medcl.tasks.monitor import OnlineProbe, best_record

log = logging.getLogger(__name__)


def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Pretrain the configured encoder with ``pretrain.method`` on the train split (every rank, DDP under torchrun).

    Checkpoints go to ``<run folder>/pretrain/checkpoints`` (``--resume`` continues from the latest); an online
    probe on the validation patients (linear or kNN, ``pretrain.probe_protocol``) watches training when there are
    labels.

    Returns:
        The stage's outputs: ``encoder`` (the path of ``encoder.pt``, for the later stages), ``encoder_uri``,
        ``final_loss``, the summary rows, throughput, and what :func:`_save_encoders` chose.

    Raises:
        DataError: too few training samples for one batch per process.
    """
    import torch


    cfg, p = ctx.cfg, ctx.cfg.pretrain
    seed_everything(cfg.seed, cfg.runtime.deterministic)

    # -- data: the train split, several augmented views per sample -------------------------------
    items = _with_reports(ctx, ctx.data.items("train"), tracker) if "report" in getattr(
        METHODS.get(p.method), "needs", ()) else ctx.data.items("train")
    per_patient = _per_patient(p)
    per_rank_batch = _per_rank_batch(ctx, len(items), per_patient or 1)
    transform = make_transforms(cfg, train=True, views=p.views)
    train_set_loader = make_loader(ctx, items, transform, batch_size=per_rank_batch, shuffle=True, train=True,
                                   drop_last=True, per_patient=per_patient)
    tracker.log_params(_batching_params(train_set_loader, per_patient))

    def loader_factory(epoch: int):
        train_set_loader.set_epoch(epoch)
        return train_set_loader

    # -- model: encoder + heads + loss -------------------------------------------------------------
    encoder = make_encoder(cfg)
    method = _build_method(ctx, encoder)
    if type(method).setup is not Method.setup:  # a method that reads the training set first (oct-severity)
        method.setup(_setup_loader(ctx, items) if ctx.rank == 0 else None)
    diagnostics = {"severity_label_spearman": getattr(method, "label_spearman", None)}  # oct-severity's pseudo-labels
    diagnostics = {k: v for k, v in diagnostics.items() if v is not None}
    if diagnostics:
        tracker.log_metrics({f"pretrain/{k}": float(v) for k, v in diagnostics.items()})
    model = _wrap(ctx, method)

    # -- will one step fit? (before the first one: an OOM kill would end the run without a word) ---------
    core = unwrap_model(model)
    gib = check_step_memory(ctx, "pretrain", core, train_set_loader, per_rank_batch, "pretrain.batch_size")
    tracker.log_metrics({"pretrain/step_memory_gib": round(gib, 3)})  # a metric: a resume may estimate again

    # -- optimisation ----------------------------------------------------------------------------------
    optimizer, scheduler, steps_per_epoch, epochs, total, warmup = _optimisation(p, core, len(train_set_loader))
    ckpt, resume_state = _checkpointing(ctx, tracker, method, per_rank_batch, steps_per_epoch, {
        "pretrain.steps_per_epoch": steps_per_epoch, "pretrain.total_steps": total,
        "pretrain.lr_warmup_steps": warmup,  # what warmup_steps / warmup_epochs came to
        "pretrain.world_size": ctx.world_size, "pretrain.per_rank_batch": per_rank_batch,
        "model.feature_dim": encoder.feature_dim})

    # -- watch it: online probe on the validation patients, collapse measures ---------------------------
    probe = _online_probe(ctx, core.encoder, total, _handoff(core)) if p.probe else None
    if probe is not None:
        tracker.log_params({"pretrain.probe_every_steps": probe.every, "pretrain.probe_protocol": p.probe_protocol})

    t_train = time.perf_counter()
    settings = LoopSettings(epochs=epochs, max_steps=total, total_steps=total, device=ctx.device, amp=p.amp,
                            grad_accum=p.grad_accum, clip_grad=p.clip_grad, channels_last=p.channels_last,
                            checkpoint_every=p.checkpoint_every_steps,
                            checkpoint_every_s=cfg.runtime.checkpoint_every_s, log_every=max(1, min(50, total // 20)),
                            progress=cfg.runtime.progress, label="pretrain")
    history = fit(model, loader_factory, Optimisation(optimizer, scheduler), settings, comm=distributed.world(),
                  checkpointer=ckpt, tracker=tracker, resume=resume_state, monitor=probe)
    # the loop's wall time with data loading, checkpoints and logging, without the online probe
    train_s = time.perf_counter() - t_train - (probe.seconds if probe is not None else 0.0)
    steps_run = int(history[-1]["global_step"]) - int((resume_state or {}).get("global_step", 0)) if history else 0

    hand_on, encoder_uri = _hand_on(ctx, tracker, model, probe)
    text_model = None
    if hasattr(core, "text"):  # clip: the text side and both projections, for zero-shot classification
        text_model = str(ctx.on_main("pretrain: saving the text model", lambda: save_text_model(
            ctx.stage_dir("pretrain") / "text_model.pt", core, cfg.model.encoder)))
    last = history[-1] if history else {}
    loss = float(last.get("loss", float("nan")))
    summary = _summary(p.method, loss, hand_on, last)
    del torch
    images = steps_run * p.grad_accum * per_rank_batch * ctx.world_size * p.views
    return {"encoder": hand_on["encoder"], "encoder_uri": encoder_uri, "final_loss": loss, "epochs_run": len(history), "summary": summary,
            **({"text_model": text_model} if text_model else {}),
            "train_seconds": round(train_s, 2), "steps_run": steps_run,
            "images_per_s": round(images / train_s, 1) if train_s > 0 and steps_run else None,
            **{k: v for k, v in hand_on.items() if k != "encoder"}, **diagnostics}


def _wrap(ctx: RunContext, method: Any) -> Any:
    """``method`` as it trains: DDP-wrapped when there are several ranks, compiled with ``pretrain.compile``.

    ``pretrain.sync_bn`` converts BatchNorm to SyncBatchNorm on GPUs only; elsewhere rank 0 warns that it is ignored.
    """
    p = ctx.cfg.pretrain
    sync_bn = p.sync_bn and ctx.device.type == "cuda"
    if p.sync_bn and not sync_bn and ctx.world_size > 1 and ctx.is_main:
        log.warning("pretrain.sync_bn is ignored on %s: PyTorch's SyncBatchNorm runs on GPUs only, so "
                    "BatchNorm statistics stay per process", ctx.device.type)
    model = wrap_ddp(method, ctx.device, sync_bn=sync_bn) if ctx.world_size > 1 else method
    return maybe_compile(model, p.compile)


def _hand_on(ctx: RunContext, tracker: Tracker, model: Any, probe: Any) -> tuple[dict[str, Any], str | None]:
    """Hand the trained encoder on: rank 0 writes it and logs it as an MLflow model; the others wait until then.

    Returns:
        ``(what :func:`_save_encoders` chose, the logged encoder model's URI or None)``.
    """
    core = unwrap_model(model)
    hand_on = ctx.on_main("pretrain: saving the encoder", lambda: _save_encoders(ctx, core.encoder, probe,
                                                                                 _handoff(core)))
    tracker.log_params({"pretrain.selected": hand_on["selected"]})
    encoder_uri = ctx.on_main("pretrain: logging the encoder model", lambda: _log_encoder_model(ctx, tracker,
                                                                                                 hand_on["encoder"]))
    if hand_on.get("selected_step") is not None:
        tracker.log_metrics({"probe/selected_step": float(hand_on["selected_step"])})
    if probe is not None and ctx.rank == 0:  # how many probes the selection chose among (pretrain.probe_every_steps)
        tracker.log_metrics({"probe/probes_run": float(len(probe.probe.history))})
    return hand_on, encoder_uri


def _setup_loader(ctx: RunContext, items: list[dict]) -> Any:
    """Every training image once, un-augmented, in order (one process): what a method's ``setup`` reads."""
    return make_loader(ctx, items, make_transforms(ctx.cfg, train=False), batch_size=ctx.cfg.data.batch_size,
                       shuffle=False, train=False, distributed=False)


def _per_patient(p: Any) -> int | None:
    """``K`` of patient-grouped batches (``pretrain.batches``, ``auto`` following the method), or ``None``."""
    wants = getattr(METHODS.get(p.method), "batches", "shuffle")
    mode = wants if p.batches == "auto" else p.batches
    if mode == "shuffle" and wants == "patients":
        log.warning("pretrain.batches is shuffle: %s's same-patient positives then meet only by chance in a batch "
                    "(set pretrain.batches: patients or auto)", p.method)
    return int(p.samples_per_patient) if mode == "patients" else None


def _batching_params(loader: Any, per_patient: int | None) -> dict[str, Any]:
    """How the batches are formed, for the run's parameters (with the share of repeated samples when grouped)."""
    if not per_patient:
        return {"pretrain.batches_formed": "shuffle"}
    sampler = getattr(loader, "loader", loader).batch_sampler
    repeats = sampler.repeat_fraction()
    if repeats > 0.25:
        log.warning("patient-grouped batches: %.0f %% of the batch slots repeat a sample (patients with fewer than "
                    "%d training samples); lower pretrain.samples_per_patient", 100 * repeats, per_patient)
    return {"pretrain.batches_formed": f"patients ({sampler.p} x {per_patient})",
            "pretrain.batch_repeat_fraction": round(repeats, 4)}


def _per_rank_batch(ctx: RunContext, n_items: int, multiple: int = 1) -> int:
    """Samples per process and step: ``pretrain.batch_size`` split over the ranks.

    Lowered (with a warning) when the train split is smaller than one global batch; at least 2 (a contrastive
    batch needs negatives). With patient-grouped batches a lowered batch stays a multiple of ``multiple`` (K).

    Raises:
        DataError: fewer than 2 training samples per process.
    """
    p = ctx.cfg.pretrain
    per_rank_batch = p.batch_size // ctx.world_size
    if per_rank_batch < 2 or n_items < p.batch_size:
        if n_items < 2 * ctx.world_size:
            raise DataError(f"only {n_items} training samples for pretraining", where="data",
                            fix="add data or lower data.val_fraction/test_fraction")
        per_rank_batch = max(2, min(per_rank_batch, n_items // ctx.world_size))
        per_rank_batch = max(2 * multiple, per_rank_batch - per_rank_batch % multiple) if multiple > 1 else per_rank_batch
        log.warning("pretrain.batch_size lowered to %d per process for %d samples", per_rank_batch, n_items)
    return per_rank_batch


def _with_reports(ctx: RunContext, items: list[dict], tracker: Any) -> list[dict]:
    """The training items with their de-identified ``report``; rows without one are left out, listed and logged.

    Raises:
        ConfigError: the manifest has no report column, or no training row has a report.
    """
    data = ctx.data
    if not data.report_column:
        raise ConfigError(f"method {ctx.cfg.pretrain.method} learns from the reports next to the images, and the "
                          f"manifest has no {ctx.cfg.data.report_column!r} column", where="data.report_column",
                          fix="add a report column with each sample's free-text report (or name yours with "
                          "data.report_column)")
    texts = data.reports([it["index"] for it in items])
    kept = [{**it, "report": t} for it, t in zip(items, texts) if t.strip()]
    left = sorted({data.records[it["index"]].row for it, t in zip(items, texts) if not t.strip()})
    if not kept:
        raise ConfigError("no training sample has a report", where="data.report_column",
                          fix="fill the report column for the training patients' rows")
    if left:
        log.warning("pretrain: %d training row(s) without a report are left out: rows %s", len(left),
                    ", ".join(map(str, left[:30])) + (f" and {len(left) - 30} more" if len(left) > 30 else ""))
        path = ctx.stage_dir("pretrain") / "rows_without_report.json"
        path.write_text(json.dumps({"rows": left}))
        tracker.log_artifact(path)
    tracker.log_params({"pretrain.n_reports": len(kept), "pretrain.n_without_report": len(left)})
    return kept


def _build_method(ctx: RunContext, encoder: Any) -> Any:
    """The configured pretraining method around ``encoder`` (heads and loss), on ``ctx.device``.

    The method gets the config's values for the options it takes (temperature, projection sizes, cross-rank
    gathering, the classes and their training counts for label-aware methods); ``pretrain.method_options``
    override them.
    """
    cfg, p = ctx.cfg, ctx.cfg.pretrain
    allowed = method_options(p.method)
    kwargs: dict[str, Any] = {}
    defaults = {"temperature": p.temperature, "hidden_dim": cfg.model.proj_hidden_dim,
                "out_dim": cfg.model.proj_dim, "gather_distributed": ctx.world_size > 1,
                "num_classes": len(ctx.data.classes)}
    for k, v in defaults.items():
        if k in allowed:
            kwargs[k] = v
    if "classes" in allowed:
        kwargs["classes"] = ctx.data.classes
    if "reports" in allowed:  # the training split's de-identified reports (the text tokenizer is trained on them)
        kwargs["reports"] = [t for t in ctx.data.reports(ctx.data.indices("train")) if t.strip()]
    if "class_counts" in allowed and ctx.data.y.ndim == 1:
        import numpy as np

        train_y = ctx.data.y[ctx.data.indices("train")]
        kwargs["class_counts"] = np.bincount(train_y[train_y >= 0], minlength=len(ctx.data.classes)).tolist()
    kwargs.update(p.method_options)
    if getattr(METHODS.get(p.method), "single_label", False) and cfg.data.task == "multilabel":
        raise ConfigError(f"method {p.method} needs one class per sample, and data.task is multilabel",
                          where="pretrain.method", fix="use a label-free method (e.g. simclr), or "
                          f"{', '.join(multilabel_label_methods())} for multilabel data")
    if getattr(METHODS.get(p.method), "needs_aligned_views", False) and not (cfg.transforms.model_extra or {}).get(
            "aligned_views"):
        raise ConfigError(f"method {p.method} contrasts locations of two views, which must be spatially aligned",
                          where="transforms.aligned_views",
                          fix="set transforms.aligned_views: true (the dense method preset does): the views then "
                          "share one draw of the geometric augmentations and differ in intensity")
    if kwargs.get("decoder") and cfg.segment.network == "encoder_unet":
        # the decoder is handed on to segment's encoder_unet: same widths, or its weights would not fit
        for key in ("decoder_channels", "input_channels"):
            if key in cfg.segment.network_options and key not in p.method_options:
                kwargs[key] = cfg.segment.network_options[key]
    return build_method(p.method, encoder, **kwargs).to(ctx.device)


def _optimisation(p: Any, core: Any, n_batches: int) -> tuple[Any, Any, int, int, int, int]:
    """Optimiser and warmup + cosine schedule for the method ``core`` (unwrapped), with ``n_batches`` per epoch.

    Returns:
        ``(optimizer, scheduler, optimiser steps per epoch, epochs to run, optimiser steps in total, warmup steps)``
        (warmup: ``pretrain.warmup_steps`` when set, else ``warmup_epochs`` epochs; shorter than the run).
    """
    groups = core.param_groups(p.weight_decay) if hasattr(core, "param_groups") else core
    optimizer = build_optimizer(groups, p.optimizer, lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = max(1, math.ceil(n_batches / p.grad_accum))
    epochs, total = budget(p.steps, p.epochs, steps_per_epoch, p.max_steps)
    warmup = p.warmup_steps if p.warmup_steps is not None else int(p.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(0, total - 1))
    scheduler = build_scheduler(optimizer, total_steps=total, warmup_steps=warmup, min_lr_ratio=0.01)
    return optimizer, scheduler, steps_per_epoch, epochs, total, warmup


def _checkpointing(ctx: RunContext, tracker: Tracker, method: Any, per_rank_batch: int, steps_per_epoch: int,
                   params: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The stage's checkpointer and, with ``--resume``, the state to continue from; logs the launch ``params``.

    Returns:
        ``(Checkpointer of <run folder>/pretrain/checkpoints, resume state or None)``.
    """
    cfg, p = ctx.cfg, ctx.cfg.pretrain
    # What a checkpoint says about how it was launched, so a resume can tell what carries over.
    launch = Launch(world_size=ctx.world_size, per_rank_batch=per_rank_batch, grad_accum=p.grad_accum,
                    steps_per_epoch=steps_per_epoch, cache=cfg.data.cache)
    ckpt = Checkpointer(ctx.stage_dir("pretrain") / "checkpoints", keep=p.keep_checkpoints, is_main=ctx.is_main,
                        run_id=tracker.run_id, config={"launch": launch.record()})
    resume_state = load_resume_state(ckpt, launch, method, is_main=ctx.is_main) if ctx.resume else None
    _log_launch(ctx, tracker, launch, resume_state, params)
    return ckpt, resume_state


def _log_launch(ctx: RunContext, tracker: Tracker, launch: Any, resume_state: Any, params: dict[str, Any]) -> None:
    """Log the launch ``params``; on a resume with another world size or global batch, a tag saying so instead.

    MLflow params are write-once, so a resumed run that changed its launch cannot log them again.
    """
    before = saved_launch(resume_state)
    if before and (before.get("world_size"), before.get("global_batch")) != (launch.world_size, launch.global_batch):
        # MLflow params are write-once: record the new launch as a tag instead of re-logging them.
        tracker.set_tags({"medcl.resumed_launch": f"world_size {before.get('world_size')} -> "
                          f"{ctx.world_size}, global batch {before.get('global_batch')} -> {launch.global_batch}"})
    else:
        tracker.log_params(params)


def _summary(method: str, loss: float, hand_on: dict[str, Any], last: dict[str, Any]) -> list[dict[str, str]]:
    """The stage's rows of the results table: final loss, the online probe's AUROC, the data wait fraction."""
    summary = [{"model": method, "metric": "final loss", "value": f"{loss:.4f}"}]
    if hand_on.get("best_probe_auroc") is not None:
        best = (f"best {hand_on['best_probe_auroc']:.3f} ± {hand_on['best_probe_se']:.3f} at step "
                f"{hand_on['best_probe_step']}")
        summary.append({"model": method, "metric": f"online {hand_on['probe_protocol']} probe AUROC (validation)",
                        "value": f"{hand_on['kept_probe_auroc']:.3f} at step {hand_on['selected_step']} handed on "
                        f"({best})" if hand_on["selected"] == "best_probe" else
                        f"{hand_on['last_probe_auroc']:.3f} (last; {best})"})
    if "data_wait_fraction" in last:
        summary.append({"model": method, "metric": "data wait fraction", "value": f"{last['data_wait_fraction']:.2f}"})
    return summary


# -- the online probe and the encoder handed on ------------------------------------------------------------
#: at most this many labelled training samples form the online probe's memory
PROBE_MEMORY = 4096
PROBE_PROBES = 10  # probes per run when pretrain.probe_every_steps is not set


def _handoff(core: Any) -> Any:
    """What the method hands on besides the encoder (the dense method's pretrained decoder), as a callable.

    It is read each time an encoder checkpoint is written, and its entries are saved in that checkpoint.
    """
    return getattr(core, "handoff_state", dict)


def _online_probe(ctx: RunContext, encoder: Any, total_steps: int, handoff: Any = dict) -> Any:
    """The :class:`~medcl.tasks.monitor.OnlineProbe` of this run, ``None`` without labelled validation patients.

    Under torchrun it runs on rank 0 while the other ranks wait (``ctx.on_main``); the returned callable also
    counts the seconds it took (``.seconds``), which the stage leaves out of its training time.
    """
    import numpy as np


    cfg, data, p = ctx.cfg, ctx.data, ctx.cfg.pretrain
    memory, queries = data.items("train", labelled=True), data.items("val", labelled=True)
    if not data.classes or not memory or not queries:
        if ctx.is_main:
            log.info("online probe off: %s", "no labels" if not data.classes else
                     "no labelled validation patients" if not queries else "no labelled training samples")
        return None
    if len(memory) > PROBE_MEMORY:
        keep = np.random.default_rng(cfg.seed).choice(len(memory), PROBE_MEMORY, replace=False)
        memory = [memory[i] for i in sorted(keep)]
    tf = make_transforms(cfg, train=False)
    loaders = [make_loader(ctx, its, tf, batch_size=cfg.data.batch_size, shuffle=False, train=False,
                           distributed=False) for its in (memory, queries)]
    known = np.concatenate([data.indices("train", True), data.indices("val", True)])
    labels = {int(i): data.y[int(i)] for i in known}
    patients = dict(zip((int(i) for i in known), data.patients_of(known).tolist()))
    best_path = ctx.stage_dir("pretrain") / "encoder-best.pt"

    def extract(loader: Any) -> tuple[np.ndarray, np.ndarray]:
        feats, _, _, idx = extract_features(encoder, loader, device=ctx.device)
        return feats, idx

    def save_best(step: int, record: dict[str, Any]) -> None:
        save_checkpoint(best_path, {"encoder": encoder.state_dict(), "encoder_name": cfg.model.encoder,
                                    "feature_dim": encoder.feature_dim, "method": p.method, **record, "step": step,
                                    **handoff()})

    every = p.probe_every_steps or max(1, total_steps // PROBE_PROBES)
    probe = OnlineProbe(extract, loaders[0], loaders[1], labels, data.task, list(data.classes), every, save_best,
                        protocol=p.probe_protocol, patients=patients, seed=cfg.seed,
                        resume=best_record(best_path) if ctx.resume else None)
    run = probe.__call__

    class OnRankZero:  # every rank calls it at the same step; rank 0 probes, the others wait once
        def __init__(self) -> None:
            self.every, self.probe, self.seconds = probe.every, probe, 0.0

        def __call__(self, step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            out = ctx.on_main("pretrain: online probe", lambda: run(step))
            self.seconds += time.perf_counter() - t0
            return out

    return OnRankZero()


def _save_encoders(ctx: RunContext, encoder: Any, probe: Any, handoff: Any = dict) -> dict[str, Any]:
    """Write ``encoder-last.pt`` and ``encoder.pt``, the one handed on.

    ``encoder.pt`` is the one the online probe kept (the latest within one standard error of the best,
    :mod:`medcl.tasks.monitor`) when ``pretrain.select`` is ``best_probe`` and a probe ran, else the last.

    Returns:
        What was chosen: ``selected``, ``selected_step``, the probe's AUROCs and ``encoder`` (its path).
    """
    cfg, p = ctx.cfg, ctx.cfg.pretrain
    out = ctx.stage_dir("pretrain")
    save_checkpoint(out / "encoder-last.pt", {"encoder": encoder.state_dict(), "encoder_name": cfg.model.encoder,
                                              "feature_dim": encoder.feature_dim, "method": p.method, **handoff()})
    info: dict[str, Any] = {"selected": "last", "selected_step": None, "best_probe_auroc": None}
    kept = best_record(out / "encoder-best.pt")
    history = probe.probe.history if probe is not None else []
    if history:
        info["last_probe_auroc"] = history[-1]["probe/auroc"]
    if probe is not None and kept is not None:
        info.update(best_probe_auroc=kept["probe_best_auroc"], best_probe_se=kept["probe_best_se"],
                    best_probe_step=kept["probe_best_step"], kept_probe_auroc=kept["probe_auroc"],
                    probe_protocol=kept["probe_protocol"])
        if p.select == "best_probe":
            info.update(selected="best_probe", selected_step=kept["step"])
    chosen = out / ("encoder-best.pt" if info["selected"] == "best_probe" else "encoder-last.pt")
    atomic_write_bytes(out / "encoder.pt", chosen.read_bytes())
    info["encoder"] = str(out / "encoder.pt")
    return info


def _log_encoder_model(ctx: RunContext, tracker: Tracker, path: str) -> str | None:
    """Log the handed-on encoder as an MLflow model (``runs:/<this stage's run>/encoder``); its URI.

    The pyfunc gives features of files with the run's preprocessing, and ``model.pretrained_path`` of another
    pipeline can start from it. Registered as ``<tracking.register_model>-encoder`` when a registry name is set.
    ``None`` without a tracking store.
    """
    if not tracker.active:
        return None
    import json

    from medcl.tracking.pyfunc import log_encoder  # lazy: mlflow

    cfg = ctx.cfg
    base = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": None})})
    encoder = make_encoder(base, weights=path).eval()
    meta: dict[str, Any] = {"preprocessing": {"preset": cfg.transforms.preset, **(cfg.transforms.model_extra or {})},
                            "feature_dim": int(encoder.feature_dim), "encoder": cfg.model.encoder,
                            "method": cfg.pretrain.method, "modality": data_modality(ctx), "input_shape": None,
                            "output": "pooled encoder features f0 … fD-1",
                            "model_config": cfg.model.model_dump(exclude={"pretrained_path"})}
    items = ctx.data.items("train")[:1] or ctx.data.items(None)[:1]
    meta["input_shape"] = list(FeatureExtractor(encoder, meta).prepare(items[0]["image"], "a training sample").shape)
    name = f"{cfg.tracking.register_model}-encoder" if cfg.tracking.register_model else None
    log_encoder(tracker, encoder, json.loads(json.dumps(meta, default=jsonable)), ctx.stage_dir("pretrain") / "model",
                registered_model_name=name, pip_requirements=model_requirements())
    return f"runs:/{tracker.run_id}/encoder"
