"""Every key the config schema accepts has an effect: it changes what a run computes, or how it runs.

Each leaf key of ``PipelineConfig`` is in exactly one table:

* :data:`PERTURB` — a tiny real pipeline (:mod:`key_effects`: a shrunk demo pipeline on synthetic data) runs with
  the scenario's settings and again with the key changed, and the two *outcomes* differ: stage metrics, stage
  outputs read back from disk (encoder/model weights, results, per-case tables, logits), the patient split, the
  sample counts. Logged params and the saved config, which merely echo the settings, are not part of the outcome,
  and a difference only in a field named after the key does not count either. A few keys can only stop a run
  when changed (``error=True``): the run's error is then the outcome.
* :data:`OPERATIONAL` — the key changes how a run executes (workers, checkpoints, tracking, output folders,
  progress, compilation …) and not its numbers; the named test shows that effect.
* :data:`INFORMATIONAL` — the key only describes the run.

The fast tests (``make test``) check that the tables cover the schema exactly once, that every named test exists,
that every perturbed value is accepted, that runs are deterministic, and run a fixed sample of perturbations; the
full sweep, one test per key, is ``@pytest.mark.slow`` (``make test-all``). :data:`NO_EFFECT_FOUND` lists keys
for which no effect could be shown: it must stay empty.
"""

from __future__ import annotations

import ast
import csv
import logging
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
from key_effects import (
    FUSE_TINY,
    REPO,
    SCENARIOS,
    differences,
    echoes,
    isolated,
    outcome,
    overrides,
    pipeline_file,
    run,
    synth_data,
)
from pydantic import BaseModel

from medcl.config.schema import PipelineConfig

THIS = "tests/config/test_every_key_has_an_effect.py"


class Perturb(NamedTuple):
    """Run ``scenario`` (with the ``context`` overrides) as is and with ``<key>=<value>``; the outcomes differ."""

    scenario: str
    value: str
    context: tuple[str, ...] = ()
    error: bool = False  # the changed value stops the run: its error is the outcome


#: fine-tuning as the classify protocol: one epoch of 8-sample steps
FINETUNE = ("classify.protocols=[finetune]", "classify.finetune.epochs=1", "classify.finetune.steps=null",
            "classify.finetune.batch_size=8")
#: multi-label "findings" labels (``none``, ``drusen``, ``drusen/atrophy``) of the OCT scenario's manifest
FINDINGS = ("data.label_column=findings", "data.task=multilabel", "data.classes=null")

PERTURB: dict[str, Perturb] = {
    "seed": Perturb("oct", "1"),
    "stages": Perturb("oct", "[pretrain, classify]"),
    # -- data
    "data.manifest": Perturb("oct", "{data}/oct/manifest-fewer.csv"),
    "data.root": Perturb("oct", "{data}/oct"),  # the scan under ../oct-outside now escapes the root: excluded
    "data.modality": Perturb("oct", "null"),  # keeps the row whose modality cell says histo
    "data.classes": Perturb("oct", "[early, normal, intermediate]"),  # another order of the ordinal grades
    "data.task": Perturb("oct", "multiclass"),  # ordinal is fitted as multiclass but adds the weighted kappa
    "data.label_column": Perturb("oct", "sex", ("data.classes=null",)),
    "data.label_sep": Perturb("oct", "/", FINDINGS),  # "drusen/atrophy": two findings, not a class of its own
    "data.on_error": Perturb("oct", "stop", error=True),  # the 3 x 3 scan (bad-shape) now stops the run
    "data.validate_files": Perturb("oct", "false"),  # the 3 x 3 scan is no longer excluded
    "data.val_fraction": Perturb("oct", "0.3"),
    "data.split_file": Perturb("oct", "{data}/oct/split-fixed.csv"),  # another split than the seeded one
    "data.test_fraction": Perturb("oct", "0.3"),
    "data.stratify": Perturb("oct", "false"),
    # the image reader takes no options: every file is refused (a DICOM series chosen by it:
    # tests/data/test_validate.py::test_data_reader_options_reach_validation_and_the_training_reads)
    "data.reader_options": Perturb("oct", "{series: 0}", error=True),
    "data.max_voxels": Perturb("oct", "2000"),  # excludes the 48 x 48 scan
    # tiling of whole-slide images (~0.5 um/px at level 0, 2x and 4x downsampled levels)
    "data.wsi.magnification": Perturb("slides", "10"),
    "data.wsi.mpp": Perturb("slides", "2.0"),
    "data.wsi.level": Perturb("slides", "1"),
    "data.wsi.tile_size": Perturb("slides", "32"),
    "data.wsi.stride": Perturb("slides", "32"),
    "data.wsi.min_tissue": Perturb("slides", "0.9"),
    "data.wsi.max_tiles": Perturb("slides", "3"),
    "data.wsi.sampling": Perturb("slides", "random"),
    # -- model
    "model.encoder": Perturb("oct", "resnet18", ("model.options={}",)),
    "model.in_channels": Perturb("oct", "3", error=True),  # the grey-level scans no longer fit the first layer
    "model.spatial_dims": Perturb("oct", "3", error=True),  # a 3D network on 2D scans
    "model.pretrained_path": Perturb("oct", "{data}/pretrained/tiny_cnn-2d.pt"),
    "model.options": Perturb("oct", "{widths: [8, 8]}"),
    "model.proj_hidden_dim": Perturb("oct", "32"),
    "model.proj_dim": Perturb("oct", "4"),
    # -- transforms
    "transforms.preset": Perturb("bare-mri", "ct"),
    "transforms.augment_on": Perturb("oct", "sample"),  # the OCT demo ships batch
    # -- pretrain
    "pretrain.method": Perturb("oct", "supcon"),
    "pretrain.method_options": Perturb("oct", "{num_layers: 3}"),
    "pretrain.temperature": Perturb("oct", "0.5"),
    "pretrain.epochs": Perturb("oct", "2"),
    "pretrain.steps": Perturb("oct", "2"),
    "pretrain.max_steps": Perturb("oct", "1"),
    "pretrain.batch_size": Perturb("oct", "4"),
    "pretrain.batches": Perturb("oct", "patients"),
    "pretrain.samples_per_patient": Perturb("oct", "2", ("pretrain.batches=patients",)),
    "pretrain.views": Perturb("oct", "3"),
    "pretrain.optimizer": Perturb("oct", "sgd"),
    "pretrain.lr": Perturb("oct", "0.01"),
    "pretrain.weight_decay": Perturb("oct", "0.5"),
    "pretrain.warmup_epochs": Perturb("oct", "1"),
    "pretrain.warmup_steps": Perturb("oct", "2"),
    "pretrain.amp": Perturb("oct", "bf16"),
    "pretrain.grad_accum": Perturb("oct", "2"),
    "pretrain.clip_grad": Perturb("oct", "0.01"),
    "pretrain.probe": Perturb("oct", "false"),
    "pretrain.probe_every_steps": Perturb("oct", "3"),  # probes at the last step only: probe/probes_run 1, not 3
    "pretrain.probe_protocol": Perturb("oct", "knn"),  # the kNN probe selects: another AUROC, another encoder
    "pretrain.select": Perturb("oct", "last"),
    # -- classify
    "classify.protocols": Perturb("oct", "[linear]"),
    "classify.label_fractions": Perturb("oct", "[1.0]"),
    "classify.baselines": Perturb("oct", "[random, raw]"),
    "classify.probe": Perturb("oct", "torch"),
    "classify.knn_k": Perturb("oct", "5"),
    "classify.pairs": Perturb("oct", "[[early, intermediate]]"),  # adds the pair's AUROC to the metrics
    "classify.finetune.optimizer": Perturb("oct", "sgd", FINETUNE),
    "classify.finetune.epochs": Perturb("oct", "2", FINETUNE),
    "classify.finetune.steps": Perturb("oct", "2", FINETUNE),
    "classify.finetune.lr": Perturb("oct", "0.01", FINETUNE),
    "classify.finetune.weight_decay": Perturb("oct", "0.5", FINETUNE),
    "classify.finetune.layer_decay": Perturb("oct", "0.5", FINETUNE),
    "classify.finetune.batch_size": Perturb("oct", "4", FINETUNE),
    "classify.finetune.head_init": Perturb("oct", "probe", FINETUNE),
    "classify.finetune.max_steps": Perturb("oct", "1", FINETUNE),
    "classify.finetune.warmup_steps": Perturb("oct", "0", FINETUNE),
    # binary tasks only: the cytology tiles (normal / malignant); with one malignant validation tile, youden and
    # sensitivity>=0.9 choose the same threshold
    "classify.operating_point": Perturb("cytology", "specificity>=0.95", ("stages=[pretrain, classify]",
                                                                           "classify.n_boot=10")),
    "classify.n_boot": Perturb("oct", "20"),
    # -- segment
    # MONAI's BasicUNet needs sides of 32 or more (multiples of 16)
    "segment.network": Perturb("mri", "basic_unet", ("segment.network_options={}", "transforms.spatial_size=[32, 32, 32]",
                                                     "segment.roi_size=[32, 32, 32]", "segment.max_steps=1")),
    "segment.network_options": Perturb("mri", "{decoder_channels: [4], input_channels: 4}"),
    "segment.optimizer": Perturb("mri", "sgd"),
    "segment.epochs": Perturb("mri", "2"),
    "segment.steps": Perturb("mri", "3"),
    "segment.max_steps": Perturb("mri", "1"),
    "segment.lr": Perturb("mri", "0.01"),
    "segment.weight_decay": Perturb("mri", "0.5"),
    "segment.warmup_steps": Perturb("mri", "0"),
    "segment.batch_size": Perturb("mri", "2"),
    "segment.num_classes": Perturb("mri", "3"),
    "segment.class_names": Perturb("mri", "[background, lesion]"),  # names the logged metrics and tables
    "segment.roi_size": Perturb("mri", "[16, 16, 16]"),
    "segment.eval_spatial_size": Perturb("mri", "[24, 24, 24]"),
    "segment.overlap": Perturb("mri", "0.5"),
    "segment.label_fractions": Perturb("mri", "[0.5, 1.0]"),
    "segment.baseline": Perturb("mri", "false"),
    "segment.pretrained_decoder": Perturb("mri", "false", ("pretrain.method=dense", "transforms.aligned_views=true",
                                                           "pretrain.method_options={decoder: true}")),
    "segment.n_boot": Perturb("mri", "20"),
    "segment.overlays": Perturb("mri", "0"),
    # -- detect
    "detect.normal_class": Perturb("cytology", "malignant"),
    "detect.scorers": Perturb("cytology", "[knn]"),
    "detect.baselines": Perturb("cytology", "[]"),
    "detect.specificity": Perturb("cytology", "0.5"),
    "detect.k": Perturb("cytology", "2"),
    "detect.dsvdd_hidden": Perturb("cytology", "[8, 2]"),
    "detect.dsvdd_epochs": Perturb("cytology", "3"),
    "detect.dsvdd_lr": Perturb("cytology", "0.01"),
    "detect.dsvdd_weight_decay": Perturb("cytology", "0.1"),
    "detect.n_boot": Perturb("cytology", "20"),
    # -- slides
    "slides.poolings": Perturb("slides", "[mean]"),
    "slides.baselines": Perturb("slides", "[]"),
    "slides.hidden": Perturb("slides", "8"),
    "slides.attention_dim": Perturb("slides", "4"),
    "slides.dropout": Perturb("slides", "0.0"),
    "slides.epochs": Perturb("slides", "3"),
    "slides.lr": Perturb("slides", "0.01"),
    "slides.weight_decay": Perturb("slides", "0.1"),
    "slides.n_boot": Perturb("slides", "20"),
    "slides.label_fractions": Perturb("slides", "[0.5, 1.0]"),
    "slides.scratch_steps": Perturb("slides", "4"),
    "slides.scratch_tiles": Perturb("slides", "4"),
    "slides.scratch_lr": Perturb("slides", "0.01"),
    "slides.calibration": Perturb("slides", "none"),
    "slides.calibration_folds": Perturb("slides", "3"),
    # -- fuse
    # the OCT encoder given (a random-init tiny CNN) instead of pretrained by the OCT pipeline
    "fuse.modalities": Perturb("fuse", "{oct: {pipeline: demo/oct.yaml, encoder: {data}/pretrained/tiny_cnn-2d.pt, "
                               "set: [" + FUSE_TINY + "]}, fundus: {pipeline: demo/fundus.yaml, set: [" + FUSE_TINY
                               + "]}}"),
    "fuse.hidden": Perturb("fuse", "4"),
    "fuse.gate_dim": Perturb("fuse", "2"),
    "fuse.gated": Perturb("fuse", "false"),
    "fuse.modality_dropout": Perturb("fuse", "0.0"),
    "fuse.corrupt_prob": Perturb("fuse", "0.5"),
    "fuse.steps": Perturb("fuse", "3"),
    "fuse.select_on": Perturb("fuse", "last"),
    "fuse.degraded": Perturb("fuse", "false"),
    "fuse.degrade_prob": Perturb("fuse", "0.5"),
    "fuse.batch_size": Perturb("fuse", "4"),
    "fuse.lr": Perturb("fuse", "0.01"),
    "fuse.weight_decay": Perturb("fuse", "0.1"),
    "fuse.dropout": Perturb("fuse", "0.5"),
    "fuse.baselines": Perturb("fuse", "[single]"),
    "fuse.require_all": Perturb("fuse", "true", error=True),  # two of the patients lack an examination
    "fuse.n_boot": Perturb("fuse", "20"),
    # -- calibrate
    "calibrate.method": Perturb("oct", "vector"),
    "calibrate.n_bins": Perturb("oct", "5"),
    "calibrate.fit_on": Perturb("oct", "cross_fit"),
    "calibrate.min_val_patients": Perturb("oct", "1", ("calibrate.fit_on=auto",)),
    # cross-fitting on the training patients (the 2 validation patients allow 2 folds at most)
    "calibrate.folds": Perturb("oct", "3", ("calibrate.fit_on=cross_fit",)),
    # any fall of the held-out NLL (0) against none that small (100 SEs): the calibrator applied or refused
    "calibrate.min_gain_se": Perturb("oct", "100", ("calibrate.min_gain_se=0",)),
    # the calibrator's fit against Platt's targets: another temperature (applied: min_gain_se 0)
    "calibrate.target_smoothing": Perturb("oct", "platt", ("calibrate.min_gain_se=0",)),
}

#: key -> (why its effect is on how a run executes rather than on what it computes, the test that shows it)
OPERATIONAL: dict[str, tuple[str, str]] = {
    "classify.prompts": ("the class prompts of zero-shot classification, which runs only after clip pretraining "
                         "(none of the scenarios pretrains with clip)",
                         "tests/text/test_clip_pretraining.py::test_zero_shot_and_retrieval_follow_clip_pretraining"),
    "data.report_column": ("the manifest column whose free text is de-identified and kept as the rows' reports "
                           "(no stage trains on text yet)",
                           "tests/text/test_reports_in_manifest.py::test_the_report_column_is_configurable"),
    "name": ("names the run folder (<output_dir>/<name>-<key>) and the MLflow pipeline run",
             f"{THIS}::test_name_and_output_dir_place_the_run_folder"),
    "data.cache": ("keeps decoded samples in memory or on disk (the batches are the same)",
                   f"{THIS}::test_data_cache_and_cache_dir_decide_where_samples_are_kept"),
    "data.cache_dir": ("the folder of the disk cache",
                       f"{THIS}::test_data_cache_and_cache_dir_decide_where_samples_are_kept"),
    "data.batch_size": ("batch of feature extraction and evaluation (eval mode: the features are the same)",
                        f"{THIS}::test_data_batch_size_sets_the_evaluation_batches"),
    "data.num_workers": ("loader worker processes (the batches are the same for any value)",
                         "tests/stages/test_common.py::test_train_loaders_keep_their_workers"),
    "data.persistent_workers": ("training loaders keep their worker processes between epochs",
                                "tests/stages/test_common.py::test_train_loaders_keep_their_workers"),
    "data.synth_patients": ("`medcl demo` only: how many patients it synthesises into an empty data folder",
                            f"{THIS}::test_synth_patients_sets_the_size_of_the_demo_data"),
    "pretrain.channels_last": ("memory layout of the model and batches (speed on GPUs)",
                               f"{THIS}::test_channels_last_lays_out_the_model_channels_last"),
    "pretrain.compile": ("torch.compile of the trained model (speed)", f"{THIS}::test_compile_compiles_the_model"),
    "pretrain.sync_bn": ("SyncBatchNorm across processes under torchrun on GPUs (ignored, with a warning, on CPUs)",
                         f"{THIS}::test_sync_bn_converts_batch_norm_on_gpus_only"),
    "pretrain.checkpoint_every_steps": ("extra checkpoints every N steps (for --resume)",
                                        f"{THIS}::test_checkpoint_every_steps_adds_step_checkpoints"),
    "pretrain.keep_checkpoints": ("how many checkpoints are kept on disk",
                                  f"{THIS}::test_keep_checkpoints_keeps_only_the_newest"),
    "classify.finetune.checkpoint_every_steps": ("extra fine-tuning checkpoints every N steps (for --resume)",
                                                 f"{THIS}::test_finetune_checkpoint_settings"),
    "classify.finetune.keep_checkpoints": ("how many fine-tuning checkpoints are kept on disk",
                                           f"{THIS}::test_finetune_checkpoint_settings"),
    "segment.sw_batch_size": ("sliding windows per forward pass (memory; the predictions are the same)",
                              f"{THIS}::test_sw_batch_size_sets_the_sliding_window_batches"),
    "report.out": ("where the HTML report is written", f"{THIS}::test_report_out_is_where_the_report_is_written"),
    "tracking.experiment": ("the MLflow experiment the runs are logged to",
                            f"{THIS}::test_tracking_uri_and_experiment_choose_where_runs_are_logged"),
    "tracking.uri": ("the MLflow store the runs are logged to",
                     f"{THIS}::test_tracking_uri_and_experiment_choose_where_runs_are_logged"),
    "tracking.retries": ("attempts at a tracking call before the run stops",
                         f"{THIS}::test_tracking_retries_and_retry_wait_s_pace_the_attempts"),
    "tracking.retry_wait_s": ("the wait between those attempts (doubling)",
                              f"{THIS}::test_tracking_retries_and_retry_wait_s_pace_the_attempts"),
    "tracking.register_model": ("registry name of the logged models",
                                f"{THIS}::test_register_model_registers_the_logged_models"),
    "runtime.device": ("the device the run trains on", f"{THIS}::test_runtime_device_chooses_the_training_device"),
    "runtime.output_dir": ("the folder of the run folders", f"{THIS}::test_name_and_output_dir_place_the_run_folder"),
    "runtime.deterministic": ("deterministic algorithms (bit-for-bit repeatable GPU runs)",
                              f"{THIS}::test_deterministic_switches_torch_to_deterministic_algorithms"),
    "runtime.progress": ("progress bar / progress log lines", f"{THIS}::test_progress_reports_training_steps"),
    "runtime.checkpoint_every_s": ("skips epoch-end checkpoints closer together than this",
                                   f"{THIS}::test_checkpoint_every_s_skips_close_epoch_end_checkpoints"),
    "runtime.dist_timeout_s": ("how long a rank waits in a collective under torchrun",
                               "tests/distributed/test_torchrun_downstream.py::"
                               "test_a_stuck_rank_stops_the_job_with_a_clear_line_and_failed_runs"),
}

#: key -> why it only describes the run
INFORMATIONAL: dict[str, str] = {
    "description": "free text: the report's 'Purpose' line and a logged param; left out of the config key",
}

#: keys for which no effect could be shown, with what was tried (must stay empty: fix the key or remove it)
NO_EFFECT_FOUND: dict[str, str] = {}

#: perturbations run by ``make test`` (the others are the slow sweep), a few per scenario
FAST = ("data.val_fraction", "transforms.augment_on", "pretrain.temperature", "classify.knn_k", "segment.overlap",
        "detect.k", "fuse.gated")


def _leaves(model: type[BaseModel] = PipelineConfig, prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


# -- the tables -------------------------------------------------------------------------------------------------
def test_every_schema_key_is_classified_exactly_once():
    tables = {"PERTURB": PERTURB, "OPERATIONAL": OPERATIONAL, "INFORMATIONAL": INFORMATIONAL,
              "NO_EFFECT_FOUND": NO_EFFECT_FOUND}
    keys = list(_leaves())
    assert len(keys) == len(set(keys)) > 100
    unclassified = [k for k in keys if not any(k in t for t in tables.values())]
    assert unclassified == [], f"schema keys in no table: {unclassified}"
    twice = [k for k in keys if sum(k in t for t in tables.values()) > 1]
    assert twice == [], f"schema keys in more than one table: {twice}"
    unknown = [k for t in tables.values() for k in t if k not in keys]
    assert unknown == [], f"table keys that are not in the schema: {unknown}"


def test_no_key_is_without_an_effect():
    assert NO_EFFECT_FOUND == {}, f"accepted keys with no effect found: {NO_EFFECT_FOUND}"


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_operational_keys_name_tests_that_exist():
    missing = []
    for key, (_, test) in OPERATIONAL.items():
        file, _, name = test.partition("::")
        path = REPO / file
        if not name.startswith("test") or not path.is_file() or name not in _test_names(path):
            missing.append(f"{key}: {test}")
    assert missing == []


def _get(cfg: PipelineConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_perturbed_values_are_accepted_and_change_the_setting(tmp_path):
    from medcl.pipeline import load_pipeline

    data, uri = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key, p in PERTURB.items():
        assert p.scenario in SCENARIOS, key
        path = pipeline_file(p.scenario, tmp_path)
        base = load_pipeline(path, overrides(p.scenario, data, tmp_path, uri, list(p.context)))
        changed = load_pipeline(path, overrides(p.scenario, data, tmp_path, uri, [*p.context, f"{key}={p.value}"]))
        assert _get(changed, key) != _get(base, key), f"{key}={p.value} is the scenario's own value"


# -- the perturbations ------------------------------------------------------------------------------------------
class World(NamedTuple):
    root: Path
    data: Path
    uri: str
    bases: dict
    runs: list


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """The synthetic data of every scenario and one MLflow store, once per module."""
    root = tmp_path_factory.mktemp("key-effects")
    return World(root, synth_data(root / "data"), f"sqlite:///{root / 'mlflow.db'}", {}, [])


def _outcome(world: World, scenario: str, extra=(), error: bool = False) -> dict:
    world.runs.append(None)
    return outcome(scenario, world.data, world.root / f"run-{len(world.runs)}", world.uri, list(extra),
                   expect_error=error)


def _base(world: World, scenario: str, context: tuple[str, ...] = ()) -> dict:
    """The scenario's outcome (with the ``context`` overrides): run twice the first time, and the same both times."""
    key = (scenario, tuple(context))
    if key not in world.bases:
        first, again = _outcome(world, scenario, context), _outcome(world, scenario, context)
        diffs = differences(first, again)
        assert diffs == [], f"two runs of {scenario} {list(context)} differ at {[d[0] for d in diffs[:10]]}"
        world.bases[key] = first
    return world.bases[key]


def _shows_an_effect(world: World, key: str) -> None:
    p = PERTURB[key]
    base = _base(world, p.scenario, p.context)
    changed = _outcome(world, p.scenario, [*p.context, f"{key}={p.value}"], p.error)
    assert ("error" in changed) == p.error, changed.get("error")
    diffs = differences(base, changed)
    real = [d[0] for d in diffs if not echoes(d, key)]
    assert real, (f"{key}={p.value} left the outcome of {p.scenario} {list(p.context)} unchanged"
                  + (f" but for fields named after it: {[d[0] for d in diffs]}" if diffs else ""))


@pytest.mark.parametrize("scenario", ["oct", "mri", "cytology"])
def test_a_scenario_run_twice_has_the_same_outcome(world, scenario):
    _base(world, scenario)


def test_the_outcome_leaves_out_what_only_echoes_the_settings(world):
    """An informational key is in the logged params and the saved config, and yet the outcome is the same."""
    assert differences(_outcome(world, "oct", ["description=another text"]), _base(world, "oct")) == []


@pytest.mark.parametrize("key", FAST)
def test_a_key_changes_the_outcome(world, key):
    _shows_an_effect(world, key)


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k in PERTURB if k not in FAST])
def test_every_perturbed_key_changes_the_outcome(world, key):
    _shows_an_effect(world, key)


# -- operational keys: what each changes in how a run executes ---------------------------------------------------
def _run(world: World, scenario: str, extra=()):
    world.runs.append(None)
    return run(scenario, world.data, world.root / f"run-{len(world.runs)}", world.uri, list(extra))


@pytest.fixture(scope="module")
def tracked(world):
    """A run named ``effects-name`` in its own output folder, MLflow store and experiment, registering its models."""
    (world.root / "tracked").mkdir()
    out, uri = world.root / "tracked" / "runs-here", f"sqlite:///{world.root / 'tracked' / 'store.db'}"
    ctx = _run(world, "bare-mri", ["name=effects-name", f"runtime.output_dir={out}", f"tracking.uri={uri}",
                                   "tracking.experiment=effects-experiment", "tracking.register_model=effects-model"])
    return SimpleNamespace(ctx=ctx, out=out, uri=uri)


def test_name_and_output_dir_place_the_run_folder(tracked):
    from mlflow import MlflowClient

    ctx = tracked.ctx
    assert ctx.run_dir == tracked.out.resolve() / f"effects-name-{ctx.key}"
    assert (ctx.run_dir / "pretrain" / "encoder.pt").is_file()
    assert MlflowClient(tracking_uri=tracked.uri).get_run(ctx.parent_run_id).info.run_name == "effects-name"


def test_tracking_uri_and_experiment_choose_where_runs_are_logged(tracked, world):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracked.uri)
    experiment = client.get_experiment_by_name("effects-experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {tracked.ctx.parent_run_id, tracked.ctx.outputs["pretrain"]["run_id"]}
    assert client.get_experiment_by_name("medcl") is None  # the default experiment was not made
    # the store the scenario names (before tracking.uri was overridden) never saw the run
    assert MlflowClient(tracking_uri=world.uri).get_experiment_by_name("effects-experiment") is None


def test_register_model_registers_the_logged_models(tracked, world):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracked.uri, registry_uri=tracked.uri)
    versions = client.search_model_versions("name='effects-model-encoder'")
    assert [v.run_id for v in versions] == [tracked.ctx.outputs["pretrain"]["run_id"]]
    shared = MlflowClient(tracking_uri=world.uri, registry_uri=world.uri)  # the scenarios' runs register nothing
    assert shared.search_registered_models() == []


def test_data_cache_and_cache_dir_decide_where_samples_are_kept(world, tmp_path):
    import torch
    from monai.data import CacheDataset, PersistentDataset

    from medcl.stages.common import make_loader
    from medcl.transforms import build_transforms

    images = sorted((world.data / "oct" / "images").glob("p*_scan1.png"))[:4]
    items = [{"image": str(p), "index": i} for i, p in enumerate(images)]
    tf = build_transforms("oct", train=False, spatial_size=[32, 32])

    def batches(**data):
        ctx = SimpleNamespace(cfg=PipelineConfig(name="t", data={"modality": "oct", **data}),
                              run_dir=tmp_path / "run", world_size=1, rank=0)
        loader = make_loader(ctx, items, tf, batch_size=2, shuffle=False, train=False)
        return loader.dataset.dataset, torch.cat([b["image"] for b in loader])  # under the seeding wrapper

    plain, x = batches(cache="none")
    memory, x_memory = batches(cache="memory")
    disk, x_disk = batches(cache="disk", cache_dir=str(tmp_path / "mine"))
    default_disk, _ = batches(cache="disk")
    assert not isinstance(plain, (CacheDataset, PersistentDataset)) and isinstance(memory, CacheDataset)
    assert isinstance(disk, PersistentDataset) and len(list((tmp_path / "mine").glob("*.pt"))) == len(items)
    assert len(list((tmp_path / "run" / "cache" / "eval").glob("*.pt"))) == len(items)  # no cache_dir: the run's
    assert torch.equal(x, x_memory) and torch.equal(x, x_disk)  # the same samples either way


def test_data_batch_size_sets_the_evaluation_batches(world, tmp_path, monkeypatch):
    import numpy as np
    import torch

    from medcl.data.prepare import prepare_data
    from medcl.pipeline import load_pipeline
    from medcl.stages import detect
    from medcl.stages.context import RunContext

    sizes, real = [], detect.extract_features

    def extract(encoder, loader, **kw):
        sizes.extend(len(b["index"]) for b in loader)
        return real(encoder, loader, **kw)

    monkeypatch.setattr(detect, "extract_features", extract)
    feats = {}
    for bs in (5, 16):
        cfg = load_pipeline(pipeline_file("oct", tmp_path), overrides("oct", world.data, tmp_path, world.uri,
                                                                       [f"data.batch_size={bs}"]))
        ctx = RunContext(cfg, "k", tmp_path / f"run-{bs}", prepare_data(cfg), device=torch.device("cpu"))
        sizes.clear()
        torch.manual_seed(0)
        with isolated():
            feats[bs] = detect._features(ctx, None)  # a random-init encoder's features of every split
        assert max(sizes) == bs
    for split, (f, idx) in feats[5].items():  # eval mode: the features do not depend on the batch
        assert np.array_equal(idx, feats[16][split][1]) and np.allclose(f, feats[16][split][0], atol=1e-5)


def test_synth_patients_sets_the_size_of_the_demo_data(tmp_path, monkeypatch):
    from medcl import demo

    monkeypatch.setattr(demo, "run_pipeline", lambda cfg, **kw: None)
    for n in (2, 3):
        demo.run_demo("oct", data_dir=tmp_path / str(n), overrides=[f"data.synth_patients={n}"])
        with open(tmp_path / str(n) / "oct" / "manifest.csv", newline="") as fh:
            assert len({r["patient_id"] for r in csv.DictReader(fh)}) == n


class Spied(NamedTuple):
    channels_last: int  # models laid out channels-last
    compiled: int  # torch.compile calls
    deterministic: list  # torch's deterministic-algorithms flag as each training loop starts
    progress: list  # whether each training loop shows its progress
    lines: list  # progress lines logged (without a terminal)


@pytest.fixture(scope="module")
def spied(world):
    """``spied(*overrides)``: what a pretraining run (bare-mri) did, with those overrides (cached)."""
    cache: dict[tuple[str, ...], Spied] = {}

    def get(*extra: str) -> Spied:
        if extra not in cache:
            cache[extra] = _spied_run(world, list(extra))
        return cache[extra]

    return get


def _spied_run(world: World, extra: list[str]) -> Spied:
    import torch

    from medcl.engine import loop
    from medcl.stages import pretrain

    seen = Spied(0, 0, [], [], [])
    counts = {"channels_last": 0, "compiled": 0}
    real_layout, real_fit, real_progress = loop.model_to_channels_last, pretrain.fit, loop.StepProgress

    def layout(model):
        counts["channels_last"] += 1
        return real_layout(model)

    def compile_(model, **kw):
        counts["compiled"] += 1
        return model  # compiling for real takes minutes on a CPU

    def fit(*a, **kw):
        seen.deterministic.append(torch.are_deterministic_algorithms_enabled())
        return real_fit(*a, **kw)

    def progress(*a, **kw):
        shown = real_progress(*a, **kw)
        seen.progress.append(shown.enabled)
        return shown

    class Lines(logging.Handler):
        def emit(self, record):
            if " step " in record.getMessage():
                seen.lines.append(record.getMessage())

    logger, handler, level = logging.getLogger("medcl.engine"), Lines(), logging.getLogger("medcl.engine").level
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "model_to_channels_last", layout)
        mp.setattr(loop, "StepProgress", progress)
        mp.setattr(torch, "compile", compile_)
        mp.setattr(pretrain, "fit", fit)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            with isolated():
                torch.use_deterministic_algorithms(False)
                _run(world, "bare-mri", extra)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return seen._replace(**counts)


def test_channels_last_lays_out_the_model_channels_last(spied):
    assert spied("pretrain.channels_last=true").channels_last == 1
    assert spied().channels_last == 0


def test_compile_compiles_the_model(spied):
    assert spied("pretrain.compile=true").compiled == 1
    assert spied().compiled == 0


def test_deterministic_switches_torch_to_deterministic_algorithms(spied):
    assert spied().deterministic == [True]  # the scenarios run with runtime.deterministic: true
    assert spied("runtime.deterministic=false").deterministic == [False]


def test_progress_reports_training_steps(spied):
    shown, quiet = spied("runtime.progress=true"), spied()
    assert shown.progress and all(shown.progress) and not any(quiet.progress)
    if not sys.stderr.isatty():  # a progress bar on a terminal, log lines elsewhere (CI, SLURM)
        assert shown.lines and all(line.startswith("pretrain") for line in shown.lines)
    assert quiet.lines == []


def test_sync_bn_converts_batch_norm_on_gpus_only(monkeypatch, caplog):
    import torch

    from medcl.stages import pretrain

    calls = []
    monkeypatch.setattr(pretrain, "wrap_ddp", lambda m, device, sync_bn=False: calls.append(
        (torch.device(device).type, sync_bn)) or m)
    method = torch.nn.BatchNorm1d(2)
    for device in ("cuda", "cpu"):  # only the device's type is read: no GPU is needed
        for sync_bn in (True, False):
            ctx = SimpleNamespace(cfg=PipelineConfig(name="t", pretrain={"sync_bn": sync_bn}),
                                  device=torch.device(device), world_size=2, is_main=True)
            assert pretrain._wrap(ctx, method) is method
    assert calls == [("cuda", True), ("cuda", False), ("cpu", False), ("cpu", False)]
    assert "pretrain.sync_bn is ignored on cpu" in caplog.text


@pytest.fixture(scope="module")
def checkpoints(world):
    """``checkpoints(*overrides)``: the steps of the pretraining checkpoints left on disk (2 epochs of bare-mri)."""
    cache: dict[tuple[str, ...], list[int]] = {}

    def steps(*extra: str) -> list[int]:
        if extra not in cache:
            ctx = _run(world, "bare-mri", ["pretrain.epochs=2", *extra])
            files = (ctx.run_dir / "pretrain" / "checkpoints").glob("ckpt-*.pt")
            cache[extra] = sorted(int(p.stem.split("-")[1]) for p in files)
            cache[extra, "steps"] = ctx.outputs["pretrain"]["steps_run"]
        return cache[extra]

    steps.total = lambda *extra: cache[extra, "steps"]
    return steps


def test_checkpoint_every_steps_adds_step_checkpoints(checkpoints):
    plain, every = checkpoints(), checkpoints("pretrain.checkpoint_every_steps=2")
    assert plain == [checkpoints.total()]  # the last only: the first epoch's end is within checkpoint_every_s
    assert every == [plain[0] - 2, plain[0]]  # steps 2, 4, 6 were saved; keep_checkpoints (2) left two


def test_keep_checkpoints_keeps_only_the_newest(checkpoints):
    assert len(checkpoints("pretrain.checkpoint_every_steps=2")) == 2
    assert checkpoints("pretrain.checkpoint_every_steps=2", "pretrain.keep_checkpoints=1") == checkpoints()


def test_checkpoint_every_s_skips_close_epoch_end_checkpoints(checkpoints):
    assert len(checkpoints()) == 1
    last = checkpoints.total()
    assert checkpoints("runtime.checkpoint_every_s=0") == [last // 2, last]  # both epoch ends


def test_finetune_checkpoint_settings(world):
    def steps(*extra: str) -> list[int]:
        ctx = _run(world, "oct", ["stages=[classify]", "model.pretrained_path={data}/pretrained/tiny_cnn-2d.pt",
                                  "classify.label_fractions=[1.0]", *FINETUNE, "classify.finetune.epochs=2", *extra])
        folder = ctx.run_dir / "classify" / "checkpoints" / "finetune-ssl-f100"
        return sorted(int(p.stem.split("-")[1]) for p in folder.glob("ckpt-*.pt"))

    plain = steps()
    every = steps("classify.finetune.checkpoint_every_steps=1")
    assert len(plain) == 1 and every == [plain[0] - 1, plain[0]]
    assert steps("classify.finetune.checkpoint_every_steps=1", "classify.finetune.keep_checkpoints=1") == plain


def test_sw_batch_size_sets_the_sliding_window_batches(world, monkeypatch):
    from medcl.stages import segment

    real, windows = segment.sliding_window_predict, []

    def predict(net, images, roi, **kw):
        def counted(x):
            windows.append(x.shape[0])
            return net(x)
        return real(counted, images, roi, **kw)

    monkeypatch.setattr(segment, "sliding_window_predict", predict)
    dice = {}
    for sw in (1, 3):
        windows.clear()
        ctx = _run(world, "mri", ["stages=[segment]", f"segment.sw_batch_size={sw}"])
        assert max(windows) == sw
        dice[sw] = ctx.outputs["segment"]["summary"]
    assert dice[1] == dice[3]  # the same predictions


def test_report_out_is_where_the_report_is_written(tmp_path, monkeypatch):
    from medcl.stages import report

    written = []
    monkeypatch.setattr(report, "build_report", lambda run_id, out, tracking_uri: written.append(out) or out)
    for out in (None, str(tmp_path / "elsewhere" / "r.html")):
        ctx = SimpleNamespace(cfg=PipelineConfig(name="t", report={"out": out}), run_dir=tmp_path / "run",
                              parent_run_id="0123", tracking_uri="sqlite://")
        assert report.run(ctx, SimpleNamespace(active=True))["html"] == str(written[-1])
    assert written == [tmp_path / "run" / "report.html", tmp_path / "elsewhere" / "r.html"]


def test_tracking_retries_and_retry_wait_s_pace_the_attempts(world, tmp_path, monkeypatch):
    import time

    from medcl.errors import TrackingError
    from medcl.pipeline import load_pipeline, run_pipeline

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would back off for minutes
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    for retries, wait, expected in ((2, 0.25, [0.25, 0.5]), (0, 0.25, [])):
        waits.clear()
        cfg = load_pipeline(pipeline_file("bare-mri", tmp_path), overrides(
            "bare-mri", world.data, tmp_path, f"http://127.0.0.1:{port}",
            [f"tracking.retries={retries}", f"tracking.retry_wait_s={wait}"]))
        with pytest.raises(TrackingError, match=f"failed after {retries + 1} attempts"):
            run_pipeline(cfg)
        assert waits == expected


def test_runtime_device_chooses_the_training_device():
    import torch

    from medcl.errors import StageError
    from medcl.pipeline import _device

    def device(name):
        return _device(PipelineConfig(name="t", runtime={"device": name}), 0)

    assert device("cpu").type == "cpu"
    assert device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert device("cuda").type == "cuda"
    else:
        with pytest.raises(StageError, match="runtime.device is cuda but no GPU is visible"):
            device("cuda")
