"""Run a pipeline: its stages in order, each a nested MLflow run under the pipeline's run.

``pretrain → classify and/or segment → calibrate → report``. Stages hand artifacts on through
``ctx.outputs[stage]`` (paths in the run folder and MLflow run ids). A failed stage stops the
pipeline with a :class:`StageError` naming it; a re-run of the same resolved config re-opens
the same MLflow run and skips stages that completed, unless ``--force``. ``--resume`` also
re-opens an unfinished stage's run and continues from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medcl import distributed, phi
from medcl.config import (
    PipelineConfig,
    apply_overrides,
    flatten,
    load_config,
    load_raw,
    pipeline_key,
    resolved_dict,
    validate,
)
from medcl.console import print_plan, print_summary
from medcl.data.prepare import check_splits, prepare_data
from medcl.data.splits import save_split
from medcl.data.wsi_plans import plans_table
from medcl.errors import ConfigError, DistributedError, MedclError, StageError, TrackingError
from medcl.lookup import did_you_mean
from medcl.shipped import shipped
from medcl.stages import STAGES
from medcl.stages.context import RunContext
from medcl.tracking import MLflowTracker, NullTracker, default_tracking_uri, runs
from medcl.tracking.protocol import Tracker
from medcl.tracking.runs import RunRef
from medcl.transforms import preset_info

log = logging.getLogger(__name__)

#: what --smoke changes in every pipeline: every stage for a few steps (sizes: :func:`smoke_overrides`)
SMOKE_OVERRIDES = [
    "pretrain.epochs=1", "pretrain.max_steps=2", "pretrain.warmup_epochs=0", "pretrain.warmup_steps=0",
    "classify.finetune.epochs=1", "classify.finetune.max_steps=2", "classify.n_boot=20",
    "segment.epochs=1", "segment.max_steps=2", "segment.n_boot=20", "slides.epochs=2", "slides.n_boot=20",
    "slides.scratch_steps=2",
    "fuse.steps=20", "fuse.n_boot=20",
]
#: --smoke cap on the tiles read per whole-slide image
SMOKE_TILES_PER_SLIDE = 16
#: --smoke caps: batches (pretrain 2D/1D, pretrain 3D, feature extraction, fine-tune, segmentation) and 3D crops
SMOKE_BATCH = {"pretrain": 8, "pretrain3d": 4, "data": 16, "finetune": 8, "segment": 2}
SMOKE_CROP_3D = 32  # voxels per axis; divisible by 32, as every 3D encoder here needs


def smoke_overrides(cfg: PipelineConfig) -> list[str]:
    """The ``--set`` overrides ``--smoke`` adds to the pipeline ``cfg``.

    :data:`SMOKE_OVERRIDES` (two steps per stage) plus smaller batches and, for 3D modalities, smaller crops and
    sliding windows, so that every shipped pipeline's smoke run takes minutes on 2 CPU cores within 24 GiB. Only
    shrinks: a setting already below a cap is kept.
    """
    b = SMOKE_BATCH
    dims = int(preset_info(cfg.transforms.preset)["spatial_dims"])
    out = [*SMOKE_OVERRIDES,
           f"pretrain.batch_size={min(cfg.pretrain.batch_size, b['pretrain3d' if dims == 3 else 'pretrain'])}",
           f"data.batch_size={min(cfg.data.batch_size, b['data'])}",
           f"classify.finetune.batch_size={min(cfg.classify.finetune.batch_size, b['finetune'])}",
           f"segment.batch_size={min(cfg.segment.batch_size, b['segment'])}",
           f"segment.sw_batch_size={min(cfg.segment.sw_batch_size, b['segment'])}",
           f"data.wsi.max_tiles={min(cfg.data.wsi.max_tiles or SMOKE_TILES_PER_SLIDE, SMOKE_TILES_PER_SLIDE)}"]
    if dims == 3:
        params = {**preset_info(cfg.transforms.preset)["defaults"], **(cfg.transforms.model_extra or {})}
        crop = [min(int(v), SMOKE_CROP_3D) for v in params["spatial_size"]]
        out += [f"transforms.spatial_size=[{', '.join(map(str, crop))}]",
                "segment.roi_size=null", "segment.eval_spatial_size=null"]  # both follow the crop
    return out


def load_pipeline(path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> PipelineConfig:
    """Load and validate the pipeline YAML ``path`` with the ``--set`` ``overrides`` applied.

    With ``smoke``, :func:`smoke_overrides` go before the user's ``--set`` ones (which therefore still win).
    """
    cfg = load_config(path, overrides)
    if not smoke:
        return cfg
    sets = smoke_overrides(cfg)
    validate(apply_overrides(load_raw(path), sets), source=str(path))
    return load_config(path, [*sets, *(overrides or [])])


def run_pipeline_file(path: str | Path, *, overrides: list[str] | None = None, force: bool = False,
                      resume: bool = False, dry_run: bool = False, smoke: bool = False) -> int:
    """``medcl run PIPELINE``: load the pipeline (see :func:`load_pipeline`), run it; the exit code (0).

    Errors are raised (:class:`~medcl.errors.MedclError`), for the command line to report.
    """
    cfg = load_pipeline(path, overrides, smoke=smoke)
    run_pipeline(cfg, force=force, resume=resume, dry_run=dry_run, smoke=smoke)
    distributed.cleanup()  # a live gloo group can abort the process's exit, which torchrun reports as a failure
    return 0


def _device(cfg: PipelineConfig, local_rank: int) -> Any:
    """The torch device this rank trains on: CUDA device ``local_rank`` per ``runtime.device``, else the CPU.

    Raises:
        StageError: ``runtime.device`` is ``cuda`` and no GPU is visible.
    """
    import torch

    want = cfg.runtime.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise StageError("runtime.device is cuda but no GPU is visible", where="runtime.device",
                             fix="use runtime.device=auto or cpu, or check CUDA_VISIBLE_DEVICES / the driver")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def run_pipeline(cfg: PipelineConfig, *, force: bool = False, resume: bool = False, dry_run: bool = False,
                 smoke: bool = False) -> RunContext:
    """Run every stage of ``cfg`` (see module docstring); returns the context with all outputs.

    Everything the run creates (run folder, checkpoints, a local MLflow store, the report) is
    readable by its owner only: the process umask is 0o077 while the pipeline runs.
    """
    old_umask = os.umask(0o077)
    try:
        with _sigterm_fails_the_run():
            return _run_pipeline(cfg, force=force, resume=resume, dry_run=dry_run, smoke=smoke)
    finally:
        os.umask(old_umask)


@contextlib.contextmanager
def _sigterm_fails_the_run() -> Iterator[None]:
    """Make SIGTERM raise a :class:`DistributedError` while the pipeline runs (main thread only).

    torchrun stopping the job because another rank failed, ``scancel`` or ``docker stop`` then end the stage and
    pipeline runs FAILED instead of leaving them RUNNING. The previous handler is restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stage = distributed.current_stage()
        raise DistributedError("the process was terminated (SIGTERM)", where=f"stage {stage}" if stage else "medcl run",
                               fix="torchrun stops every rank when one fails: the first error in the log is the "
                                   "cause; otherwise the job was cancelled — re-run with --resume to continue")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: the characters MLflow accepts in a metric name (mlflow.utils.validation)
_METRIC_NAME_OK = re.compile(r"[\w\-. :/]+")


def _preflight(cfg: PipelineConfig, data: Any) -> None:
    """Settings a stage would refuse, checked before anything trains (and in a dry run).

    Raises:
        ConfigError: an unknown method or method option, options a method refuses (e.g. ``supcon-hardneg`` without
            pairs), or a ``detect`` stage without a valid ``detect.normal_class``.
    """
    from medcl.methods import METHODS, method_options  # lazy: torch (the plan printing does not need it)

    tile_level = [s for s in cfg.stages if s in ("classify", "calibrate", "segment", "detect")]
    if data.tiles and tile_level:
        raise ConfigError(
            f"{len(data.tiles)} manifest rows are whole-slide images with slide-level labels, and stage(s) "
            f"{', '.join(tile_level)} would train on their tiles as if each tile had its slide's label",
            where="stages", fix="classify slides with the slides stage (attention MIL over each slide's tiles: "
            "stages: [pretrain, slides]); classify tiles cut beforehand with the classify stage")
    dims = preset_info(cfg.transforms.preset)["spatial_dims"]
    if cfg.model.spatial_dims != dims:  # the encoder would meet tensors of another rank at its first step
        raise ConfigError(f"model.spatial_dims is {cfg.model.spatial_dims} but the {cfg.transforms.preset!r} preset "
                          f"makes {dims}D inputs", where="model.spatial_dims",
                          fix=f"set model.spatial_dims: {dims} (or include configs/modality/<modality>.yaml, which "
                          "sets both)")
    named = [s for s in cfg.stages if s in ("classify", "detect", "slides", "calibrate")]
    odd = [c for c in data.classes if not _METRIC_NAME_OK.fullmatch(str(c))]
    if named and odd:  # per-class metric names carry the class: MLflow would refuse them after all the training
        raise ConfigError(f"class name(s) {odd} hold characters MLflow refuses in metric names (stages "
                          f"{', '.join(named)} log per-class metrics)", where="data.classes",
                          fix="rename the classes with letters, digits, spaces and _ - . : / only (the manifest's "
                          "labels and data.classes); labels listing several findings with data.label_sep need "
                          "data.task: multilabel")
    unknown = [k for k in cfg.classify.prompts if k not in data.classes]
    if "classify" in cfg.stages and unknown:  # zero-shot prompts are read after pretraining: check them now
        raise ConfigError(f"classify.prompts names {unknown}, not classes of the data ({list(data.classes)})",
                          where="classify.prompts", fix="one entry per class of data.classes")
    if "classify" in cfg.stages:  # the pairs are read when the test metrics are computed, after all the training
        from medcl.stages.classify_eval import class_pairs  # lazy: the classify stage's imports

        class_pairs(cfg, list(data.classes), data.task)
    if "slides" in cfg.stages and not data.tiles:
        raise ConfigError("the slides stage needs whole-slide images in the manifest (rows pointing at a slide)",
                          where="stages", fix="give slide rows with slide-level labels, or use the classify stage "
                          "for images and tiles")
    if "fuse" in cfg.stages:
        _check_fuse(cfg, data)
    if "pretrain" in cfg.stages:
        allowed = method_options(cfg.pretrain.method)  # an unknown method: did-you-mean
        unknown = [k for k in cfg.pretrain.method_options if k not in allowed]
        if unknown:
            raise ConfigError(f"method {cfg.pretrain.method!r} got unknown option(s) {unknown}",
                              where="pretrain.method_options", fix="accepted: " + ", ".join(allowed))
        check = getattr(METHODS[cfg.pretrain.method], "check_options", None)
        if check is not None:
            check(cfg.pretrain.method_options)
    if "detect" in cfg.stages:
        d = cfg.detect
        if not d.normal_class or d.normal_class not in data.classes:
            raise ConfigError("the detect stage needs the normal class" if not d.normal_class else
                              f"detect.normal_class {d.normal_class!r} is not a class of the data",
                              where="detect.normal_class",
                              fix=f"{did_you_mean(d.normal_class or '', list(data.classes))}set it to one of "
                              f"{', '.join(data.classes)}")


def _check_fuse(cfg: PipelineConfig, data: Any) -> None:
    """The fuse stage's modalities: two or more, each in the manifest, each pipeline loadable.

    Raises:
        ConfigError: naming the setting.
    """
    if cfg.data.modality:
        raise ConfigError(f"data.modality is {cfg.data.modality!r}: the fuse stage needs the rows of every modality",
                          where="data.modality", fix="unset data.modality in the fusion pipeline")
    names = list(cfg.fuse.modalities)
    if len(names) < 2:
        raise ConfigError(f"the fuse stage needs two or more modalities, fuse.modalities has {len(names)}",
                          where="fuse.modalities", fix="name each modality with its pipeline, e.g. {oct: {pipeline: "
                          "oct_severity.yaml}, fundus: {pipeline: fundus_grading.yaml}}")
    found = sorted({str(r.modality) for r in data.records})
    for m in names:
        if m not in found:
            raise ConfigError(f"fuse.modalities names {m!r} but the manifest has no {m} rows (modalities: "
                              f"{', '.join(found)})", where=f"fuse.modalities.{m}",
                              fix=f"{did_you_mean(m, found)}use the manifest's modality column values")
        _pipeline_file(cfg.fuse.modalities[m].pipeline, m)
    from medcl.stages.fuse import check_data  # lazy: torch (the plan printing does not need it)

    check_data(cfg, data)


def _run_pipeline(cfg: PipelineConfig, *, force: bool, resume: bool, dry_run: bool, smoke: bool) -> RunContext:
    """The pipeline run itself (see :func:`run_pipeline`): data, the pipeline's MLflow run, then every stage."""
    key = pipeline_key(cfg)
    run_dir = Path(cfg.runtime.output_dir).resolve() / f"{cfg.name}-{key}"
    uri = cfg.tracking.uri or default_tracking_uri()
    if not dry_run:
        distributed.init_distributed(timeout_s=cfg.runtime.dist_timeout_s)
        # Fail in seconds, before validating data or training, if the store/server is unreachable.
        _check_tracking(cfg, uri)
    data = prepare_data(cfg)
    check_splits(data, {s: STAGES[s].splits for s in cfg.stages})
    _preflight(cfg, data)
    if dry_run:
        print_plan(cfg, data, key, run_dir)
        print("dry run: nothing was trained")
        return RunContext(cfg, key, run_dir, data, device=None, smoke=smoke)

    rank, world = distributed.rank(), distributed.world_size()
    ctx = RunContext(cfg, key, run_dir, data, device=_device(cfg, distributed.local_rank()), rank=rank,
                     world_size=world, resume=resume, smoke=smoke)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    distributed.barrier()

    ctx.tracking_uri = uri
    parent, stage_runs = _open_pipeline_run(ctx, force)
    status = "FINISHED"
    try:
        for stage in cfg.stages:
            prev = stage_runs.get(stage)
            if prev and prev.status == "FINISHED" and not force:
                ctx.outputs[stage] = _done_outputs(ctx, stage, prev)
                if ctx.is_main:
                    log.info("stage %s already completed in run %s: skipping (use --force to re-run)", stage,
                             prev.run_id)
                continue
            if stage == "fuse":  # each modality's encoder first: its own pipeline's pretraining, on every rank
                ctx.modalities = _modality_encoders(ctx)
            _run_stage(ctx, parent, stage, prev)
    except BaseException:
        status = "FAILED"
        raise
    finally:
        parent.end(status)
        if ctx.is_main and status == "FINISHED":
            print_summary(ctx)
    return ctx


def modality_pipeline(cfg: PipelineConfig, data: Any, modality: str, split_file: Path,
                      smoke: bool = False) -> PipelineConfig:
    """The config of ``modality``'s own pipeline in the fusion pipeline ``cfg`` (``fuse.modalities.<modality>``).

    Its pretrain stage alone, on this pipeline's manifest rows of the modality, with this pipeline's labels (for the
    online probe), seed, split (``data.split_file``: no test patient of the fusion is pretrained on), output folder
    and tracking; the modality's ``set`` overrides last.

    Raises:
        ConfigError: the pipeline file is not found, or its config is invalid.
    """
    spec = cfg.fuse.modalities[modality]
    d = cfg.data
    sets = [f"data.manifest={Path(d.manifest or '').resolve()}", f"data.modality={modality}",
            f"data.split_file={split_file}", "stages=[pretrain]", f"name={cfg.name}-{modality}", f"seed={cfg.seed}",
            f"data.task={data.task}", f"data.classes={json.dumps(list(data.classes))}",
            f"data.label_column={d.label_column}", f"data.label_sep={json.dumps(d.label_sep)}",
            f"data.on_error={d.on_error}", f"runtime.output_dir={Path(cfg.runtime.output_dir).resolve()}",
            f"runtime.device={cfg.runtime.device}", f"runtime.progress={str(cfg.runtime.progress).lower()}",
            f"runtime.deterministic={str(cfg.runtime.deterministic).lower()}",
            f"tracking.experiment={cfg.tracking.experiment}"]
    sets += [f"data.root={Path(d.root).resolve()}"] if d.root else []
    sets += [f"tracking.uri={cfg.tracking.uri}"] if cfg.tracking.uri else []
    return load_pipeline(_pipeline_file(spec.pipeline, modality), [*sets, *spec.set], smoke=smoke)


def _pipeline_file(name: str, modality: str) -> Path:
    """A modality's pipeline YAML: as given (absolute, or from the working folder), else in medcl's pipelines/.

    Raises:
        ConfigError: it is in neither place.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return given
    folder = shipped("pipelines")
    if (folder / name).is_file():
        return folder / name
    near = did_you_mean(name, sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml")))
    raise ConfigError(f"pipeline file {name!r} of modality {modality!r} not found (looked in {Path.cwd()} and "
                      f"{folder})", where=f"fuse.modalities.{modality}.pipeline",
                      fix=f"{near}give the path of the modality's pipeline YAML")


def _modality_encoders(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Each modality's encoder for the fuse stage (:attr:`RunContext.modalities`), pretraining where none is given.

    A modality without ``encoder`` runs its pipeline's pretrain stage (:func:`modality_pipeline`, a pipeline run of
    its own, skipped when an identical one completed) on every rank.
    """
    cfg = ctx.cfg
    split_file = ctx.run_dir / "fuse_split.csv"
    if ctx.is_main:
        save_split(split_file, ctx.data.records, ctx.data.assignment)
    distributed.barrier()
    out: dict[str, dict[str, Any]] = {}
    for modality, spec in cfg.fuse.modalities.items():
        sub = modality_pipeline(cfg, ctx.data, modality, split_file, smoke=ctx.smoke)
        if spec.encoder:
            out[modality] = {"config": sub, "encoder": spec.encoder, "run_id": None}
            continue
        if ctx.is_main:
            log.info("fuse: pretraining the %s encoder (%s, its own pipeline run %s)", modality, spec.pipeline,
                     sub.name)
        done = run_pipeline(sub, resume=ctx.resume, smoke=ctx.smoke).outputs["pretrain"]
        out[modality] = {"config": sub, "encoder": done["encoder"], "run_id": done.get("run_id")}
    return out


def _open_pipeline_run(ctx: RunContext, force: bool) -> tuple[Tracker, dict[str, RunRef]]:
    """Start (rank 0) the pipeline's MLflow run and tell every rank its id and its earlier stage runs.

    A run of the same config key is re-opened unless ``force``; a new run gets the pipeline's inputs logged.
    Ranks other than 0 get a :class:`NullTracker`.

    Returns:
        ``(the pipeline run's tracker, {stage: its latest stage run})`` (no stage runs for a new run).
    """
    cfg, uri = ctx.cfg, ctx.tracking_uri
    previous, stage_runs = None, {}
    parent: Tracker = NullTracker(cfg.name)
    if ctx.is_main:
        previous = None if force else runs.pipeline_run(uri, cfg.tracking.experiment, ctx.key)
        parent = MLflowTracker.start(
            cfg.name, uri=uri, experiment=cfg.tracking.experiment, retries=cfg.tracking.retries,
            retry_wait_s=cfg.tracking.retry_wait_s, run_id=previous.run_id if previous else None,
            tags={runs.KIND: "pipeline", runs.KEY: ctx.key, "medcl.smoke": str(ctx.smoke).lower()},
        )
        stage_runs = runs.stage_runs(uri, cfg.tracking.experiment, parent.run_id) if previous else {}
        if not previous:
            _log_pipeline_inputs(parent, cfg, ctx.data, ctx.run_dir)
    ctx.parent_run_id = distributed.broadcast_object(parent.run_id if ctx.is_main else None)
    stage_runs = distributed.broadcast_object(stage_runs)
    return parent, stage_runs


def _out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation the allocator refused."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc))


def _run_stage(ctx: RunContext, parent: Tracker, stage: str, prev: RunRef | None) -> None:
    """Run ``stage`` as a nested run of ``parent`` and record its outputs in ``ctx.outputs[stage]``.

    With ``--resume`` an unfinished earlier run ``prev`` of the stage is re-opened. The stage runs on every rank, or
    on rank 0 alone while the others wait (``main_only``).

    Raises:
        DistributedError: a rank failed or the process was terminated.
        StageError: the stage failed (the cause chained); its run ends FAILED.
    """
    reopen = prev.run_id if (prev and ctx.resume and ctx.is_main) else None
    child = parent.child(stage, tags={runs.STAGE: stage, runs.KIND: "stage"}, run_id=reopen)
    child.run_id = distributed.broadcast_object(child.run_id)  # every rank's outputs name the run
    t0 = time.time()
    if ctx.is_main:
        log.info("stage %s: starting (MLflow run %s)", stage, child.run_id)
    spec = STAGES[stage]
    try:
        with distributed.stage_scope(stage):
            if spec.main_only:  # rank 0 works alone; the other ranks wait here, once
                out = distributed.run_on_main(functools.partial(spec.run, ctx, child), f"stage {stage}")
            else:
                out = spec.run(ctx, child)
    except DistributedError:
        child.end("FAILED")
        raise
    except MedclError as exc:
        child.end("FAILED")
        raise StageError(exc.line(), where=f"stage {stage}",
                         fix="fix the cause above and re-run; completed stages are skipped") from exc
    except Exception as exc:
        child.end("FAILED")
        if _out_of_memory(exc):  # CUDA out of memory (or a CPU allocation refused): the same line as the pre-check
            raise StageError(f"out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                             where=f"stage {stage}",
                             fix="lower the stage's batch size (pretrain.batch_size, classify.finetune.batch_size, "
                             "segment.batch_size; pretrain.grad_accum keeps the effective batch), the crop "
                             "(transforms.spatial_size), the encoder width, or use amp: bf16 on a GPU") from exc
        with distributed.stage_scope(stage):
            lost = distributed.explain(exc)
        if lost is not None:
            raise lost from exc
        raise StageError(f"{type(exc).__name__}: {exc}", where=f"stage {stage}",
                         fix="see the log file for the traceback; completed stages are skipped on a re-run"
                         ) from exc
    out = {**(out or {}), "run_id": child.run_id, "seconds": round(time.time() - t0, 1)}
    ctx.outputs[stage] = out
    if ctx.is_main:
        (ctx.stage_dir(stage) / "outputs.json").write_text(json.dumps(out, indent=2, default=str))
        child.set_tags({runs.OUTPUTS: json.dumps(out, default=str)[:5000]})
    child.end("FINISHED")


def _done_outputs(ctx: RunContext, stage: str, prev: RunRef) -> dict[str, Any]:
    """The outputs a completed stage recorded.

    Its MLflow tag, or its folder's ``outputs.json`` when the tag was cut (long outputs).

    Raises:
        StageError: the tag was cut and ``outputs.json`` is missing.
    """
    if prev.outputs is not None:
        return prev.outputs
    path = ctx.run_dir / stage / "outputs.json"
    if not path.is_file():
        raise StageError(f"stage {stage} completed in run {prev.run_id} but its outputs cannot be read (the MLflow "
                         f"tag is cut and {path} is missing)", where=f"stage {stage}",
                         fix="re-run it with --force, or restore the run folder")
    return json.loads(path.read_text())


def _check_tracking(cfg: PipelineConfig, uri: str) -> None:
    """Rank 0 opens the experiment (with the configured retries); every rank fails alike if it cannot.

    Under torchrun the other ranks would otherwise wait for rank 0 in the next collective.
    """
    error = None
    if distributed.is_main_process():
        try:
            MLflowTracker.connect(uri, cfg.tracking.experiment, cfg.tracking.retries, cfg.tracking.retry_wait_s)
        except TrackingError as exc:
            error = (exc.what, exc.where, exc.fix)
    error = distributed.broadcast_object(error)
    if error is not None:
        what, where, fix = error
        raise TrackingError(what, where=where, fix=fix)


def excluded_rows(excluded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The excluded rows as logged: row numbers, pseudonymised patients and problem codes only.

    Paths and problem lines can carry identifiers, so they are left out. The codes are medcl's own words
    ("missing-file"): a file that happens to be named like one of them ("missing.png", registered as a path part)
    must not make the PHI guard refuse the list.
    """
    phi.REGISTRY.allow(w for e in excluded for code in e["codes"] for w in str(code).split("-"))
    return [{"row": e["row"], "patient": e.get("patient"), "codes": e["codes"]} for e in excluded]


def _log_pipeline_inputs(parent: Any, cfg: PipelineConfig, data: Any, run_dir: Path) -> None:
    """Resolved config, params, split and exclusions: logged once per pipeline run."""
    import yaml


    resolved = resolved_dict(cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    parent.log_artifact(run_dir / "config.yaml")
    params = {k: v for k, v in flatten(resolved).items() if not k.startswith(("data.manifest", "data.root",
                                                                                 "data.cache_dir", "runtime.output_dir",
                                                                                 "model.pretrained_path"))}
    parent.log_params(params)
    if str(cfg.model.pretrained_path or "").startswith(("runs:/", "models:/")):  # a model URI, not a local path
        parent.log_params({"model.pretrained_uri": cfg.model.pretrained_path})
    split_path = run_dir / "split.csv"
    save_split(split_path, data.records, data.assignment)
    parent.log_artifact(split_path)
    parent.log_dict(data.summary, "data_summary.json")
    if data.tiles:  # the tiling plans: manifest rows and level-0 coordinates, never slide paths
        (run_dir / "wsi_tiles.csv").write_text(plans_table(data.tiles), encoding="utf-8")
        parent.log_artifact(run_dir / "wsi_tiles.csv")
        parent.log_params({"data.n_slides": len(data.tiles), "data.n_tiles": sum(map(len, data.tiles.values()))})
    parent.log_params({"data.n_samples": len(data.records), "data.n_patients": len(data.patient_index),
                       "data.n_excluded": len(data.excluded), "data.class_names": json.dumps(data.classes),
                       "data.manifest_name": Path(cfg.data.manifest or "").name, **_software_versions()})
    sites: dict[str, dict[str, dict[str, int]]] = {}
    for r in data.records:  # counts per split and site, for the report's cohort table
        if r.site:
            cell = sites.setdefault(data.assignment.get(r.patient, "none"), {}).setdefault(
                str(r.site), {"patients": set(), "samples": 0})
            cell["patients"].add(r.patient)
            cell["samples"] += 1
    if sites:
        parent.log_dict({s: {k: {"patients": len(v["patients"]), "samples": v["samples"]} for k, v in per.items()}
                         for s, per in sites.items()}, "site_summary.json")
    if data.excluded:
        parent.log_dict(excluded_rows(data.excluded), "excluded_rows.json")
    os.chmod(run_dir / "config.yaml", 0o600)


def _software_versions() -> dict[str, str]:
    """``software.<package>`` params: the versions a run was made with (for the report)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"software.python": platform.python_version()}
    for pkg in ("medcl", "torch", "monai", "mlflow", "timm"):
        try:
            out[f"software.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"software.{pkg}"] = "not installed"
    return out
