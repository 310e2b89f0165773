"""Downstream stages under ``torchrun`` (gloo, CPU): they use every rank, finish, and fail loudly when stuck.

* Fine-tuning (``classify``) and segmentation training run data-parallel on both ranks and give what one
  process gives at the same global batch, up to float rounding. The networks have no batch-dependent layer
  (the BasicUNet encoder is set to instance norm, its default being batch norm, and medcl's U-Net decoder uses
  instance norm) and train with SGD, for the reasons
  given in ``test_torchrun_pipeline.py``.
* A shipped pipeline with fine-tuning (``pipelines/ecg_rhythm.yaml --smoke``, the command that used to hang
  forever) completes: one MLflow pipeline run, one nested run per stage, all FINISHED, checkpoints written by
  rank 0 only. ``-m slow`` runs every file in ``pipelines/`` the same way.
* A rank that never reaches a collective makes the other one stop after ``runtime.dist_timeout_s`` with one
  line naming the stage, the rank and the collective, a non-zero exit, and MLflow runs marked FAILED.
* Two torchrun launches joined by a c10d rendezvous on localhost (two "nodes") run a pipeline together.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrun_helpers import LAUNCHER, ROOT, free_port, max_abs_diff, runs_by_kind, torchrun_env

PIPELINE = """\
# equality test: instance norm only, SGD (see the module docstring)
name: ddp-downstream
seed: 2
stages: [classify, segment]
data:
  modality: mri
  task: binary
  classes: [no_lesion, lesion]
  val_fraction: 0.2
  test_fraction: 0.25
  batch_size: 4
  cache: none
  num_workers: 0
model:
  encoder: unet_encoder3d
  spatial_dims: 3
  in_channels: 1
  options: {features: [4, 4, 8, 8, 16], norm: instance}  # batch norm (the default) would see per-rank batches
transforms: {preset: mri, spatial_size: [32, 32, 32], spacing: [6.0, 6.0, 10.5]}
classify:
  protocols: [finetune]
  baselines: [scratch]
  label_fractions: [1.0]
  n_boot: 20
  finetune: {optimizer: sgd, lr: 0.05, weight_decay: 0.0, epochs: 1, max_steps: 3, batch_size: 4,
             checkpoint_every_steps: 1, keep_checkpoints: 3}
segment:
  network: encoder_unet
  network_options: {decoder_channels: [8, 8, 4, 4], input_channels: 0}
  optimizer: sgd
  lr: 0.01                 # 0.05 amplifies float rounding through instance norm to ~1e-4 by step 3
  weight_decay: 0.0
  epochs: 1
  max_steps: 3
  batch_size: 4
  num_classes: 2
  roi_size: [32, 32, 32]
  label_fractions: [1.0]
  n_boot: 20
  overlays: 1
runtime: {device: cpu, progress: false}
"""

#: each shipped pipeline and the demo modality it runs on, as it is (the synthesised `label` holds its class names)
SHIPPED = {"ecg_rhythm": "ecg", "oct_severity": "oct", "fundus_grading": "fundus", "histo_tissue": "histo",
           "ct_lesion": "ct", "mri_lesion_seg": "mri", "histo_tissue_egcl": "histo", "ct_lesion_dense": "ct",
           "mri_lesion_seg_dense": "mri", "cytology_rare": "cytology", "histo_wsi": "histo-wsi",
           "ecg_report_clip": "ecg", "eye_multimodal": "eye"}


def _launch(cmd_tail: list[str], workdir: Path, *, nproc: int = 2, timeout: int = 600, **env: str):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(LAUNCHER), *cmd_tail]
    env = torchrun_env(MEDCL_TEST_WATCH_DIR=str(workdir / "runs"),
                       MEDCL_TEST_WRITE_LOG=str(workdir / "writes-{rank}.json"), **env)
    return subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def _writes(workdir: Path, rank: int) -> list[str]:
    return json.loads((workdir / f"writes-{rank}.json").read_text())


def _stage_statuses(uri: str) -> tuple[list, dict[str, str]]:
    runs = runs_by_kind(uri)
    return runs["pipeline"], {r.data.tags["medcl.stage"]: r.info.status for r in runs["stage"]}


@pytest.fixture(scope="module")
def mri(tmp_path_factory):
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("ddp-downstream")
    synthesize(root / "data", modalities=["mri"], patients=16, seed=0, size=16)
    yaml_path = root / "pipeline.yaml"
    yaml_path.write_text(PIPELINE)
    return {"root": root, "yaml": yaml_path, "manifest": root / "data" / "mri" / "manifest.csv"}


@pytest.fixture(scope="module")
def downstream(mri):
    """The downstream pipeline under torchrun (2 ranks) and in one process, same global batch."""
    from medcl.pipeline import load_pipeline, run_pipeline

    ddp = mri["root"] / "ddp"
    ddp.mkdir()
    uri = f"sqlite:///{ddp / 'mlflow.db'}"
    proc = _launch(["run", str(mri["yaml"]), "--set", f"data.manifest={mri['manifest']}",
                    "--set", f"runtime.output_dir={ddp / 'runs'}"], ddp, MLFLOW_TRACKING_URI=uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    single = mri["root"] / "single"
    single.mkdir()
    cfg = load_pipeline(mri["yaml"], [f"data.manifest={mri['manifest']}", f"runtime.output_dir={single / 'runs'}",
                                      f"tracking.uri=sqlite:///{single / 'mlflow.db'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same float summation order
    try:
        ctx = run_pipeline(cfg)
    finally:
        torch.set_num_threads(threads)
    (run_dir,) = (ddp / "runs").iterdir()
    return {"ddp": ddp, "uri": uri, "run_dir": run_dir, "single": ctx.run_dir, "stderr": proc.stderr, "ctx": ctx}


@pytest.mark.distributed
def test_finetuning_and_segmentation_train_on_every_rank_like_one_process(downstream):
    from medcl.checkpoint_file import load_checkpoint

    pipelines, stages = _stage_statuses(downstream["uri"])
    assert len(pipelines) == 1 and pipelines[0].info.status == "FINISHED"
    assert stages == {"classify": "FINISHED", "segment": "FINISHED"}
    params = {k: v for r in runs_by_kind(downstream["uri"])["stage"] for k, v in r.data.params.items()}
    assert params["classify.finetune.world_size"] == "2" and params["classify.finetune.per_rank_batch"] == "2"
    assert params["segment.world_size"] == "2" and params["segment.per_rank_batch"] == "2"

    ddp, single = downstream["run_dir"], downstream["single"]
    ft = load_checkpoint(ddp / "classify" / "finetuned-scratch.pt")["model"]
    ft_ref = load_checkpoint(single / "classify" / "finetuned-scratch.pt")["model"]
    diff = max_abs_diff(ft, ft_ref)
    assert diff < 1e-5, diff
    # with teeth: one SGD step (2 -> 3) moves the weights far more than that
    ckpts = ddp / "classify" / "checkpoints" / "finetune-scratch-f100"
    step2 = {k[len("model."):]: v for k, v in load_checkpoint(ckpts / "ckpt-00000002.pt")["model"].items()
             if k.startswith("model.")}
    assert max_abs_diff(step2, ft) > 100 * max(diff, 1e-7)

    # the test logits were predicted on both ranks' shards and gathered in the single process's order
    import numpy as np

    z, z_ref = np.load(ddp / "classify" / "primary.npz"), np.load(single / "classify" / "primary.npz")
    assert np.array_equal(z["test_index"], z_ref["test_index"])
    assert np.abs(z["test_logits"] - z_ref["test_logits"]).max() < 1e-4

    seg = load_checkpoint(ddp / "segment" / "segmenter-scratch.pt")["model"]
    seg_ref = load_checkpoint(single / "segment" / "segmenter-scratch.pt")["model"]
    diff = max_abs_diff(seg, seg_ref)
    # float rounding: ~6e-8 on the machine this was written on, ~1.1e-6 on an AVX2-only EPYC (other kernels, other
    # summation order). That the batch Dice is summed over both ranks (not each rank's own) is tested exactly at the
    # loss level, under torchrun, in tests/losses/test_distributed.py; here the whole stage must agree up to rounding
    assert diff < 3e-6, diff
    from medcl.stages.common import seed_everything
    from medcl.stages.segment import _build

    ctx = downstream["ctx"]
    seed_everything(ctx.cfg.seed)  # how the stage seeds its first (scratch) network
    initial = _build(ctx, None, 3)[0].state_dict()
    assert max_abs_diff(initial, seg) > 100 * max(diff, 1e-7)  # three steps moved the weights
    cases = json.loads((ddp / "segment" / "results.json").read_text())[0]["per_case_dice"]
    cases_ref = json.loads((single / "segment" / "results.json").read_text())[0]["per_case_dice"]
    assert cases.keys() == cases_ref.keys() and len(cases) >= 2  # every test case, sharded over the ranks


@pytest.mark.distributed
def test_only_rank0_writes_downstream_checkpoints(downstream):
    assert _writes(downstream["ddp"], 1) == []
    names = {Path(p).name for p in _writes(downstream["ddp"], 0)}
    assert {"ckpt-00000003.pt", "finetuned-scratch.pt", "segmenter-scratch.pt", "results.json"} <= names, names


def _shipped_params() -> list:
    marks = {"ecg_rhythm": []}  # the pipeline from the issue runs in the default suite; the others with -m slow
    return [pytest.param(name, marks=[pytest.mark.distributed, *marks.get(name, [pytest.mark.slow])], id=name)
            for name in SHIPPED]


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory):
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("shipped")
    synthesize(root, modalities=sorted(set(SHIPPED.values())), patients=24, seed=2)
    return root


@pytest.mark.parametrize("name", _shipped_params())
def test_shipped_pipeline_smoke_completes_under_torchrun(name, demo_sets, tmp_path):
    modality = SHIPPED[name]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _launch(["run", str(ROOT / "pipelines" / f"{name}.yaml"), "--smoke",
                    "--set", f"data.manifest={demo_sets / modality / 'manifest.csv'}",
                    f"runtime.output_dir={tmp_path / 'runs'}"],
                   tmp_path, timeout=900, MLFLOW_TRACKING_URI=uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    from medcl.pipeline import load_pipeline

    cfg = load_pipeline(ROOT / "pipelines" / f"{name}.yaml", ["data.manifest=x.csv"])  # includes resolved
    listed = cfg.stages
    pipelines, stages = _stage_statuses(uri)
    # a fusion pipeline also runs each modality's pipeline (its pretrain stage), a pipeline run each
    assert len(pipelines) == 1 + len(cfg.fuse.modalities) and all(p.info.status == "FINISHED" for p in pipelines)
    assert stages == {s: "FINISHED" for s in [*listed, *(["pretrain"] if cfg.fuse.modalities else [])]}
    parents = {p.info.run_id for p in pipelines}
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in runs_by_kind(uri)["stage"])

    assert _writes(tmp_path, 1) == [], "rank 1 wrote files in the run folder"
    written = [Path(p) for p in _writes(tmp_path, 0)]
    assert any(p.name.startswith("ckpt-") and "pretrain" in p.parts for p in written)
    if "classify" in listed and "finetune" in cfg.classify.protocols:
        assert any(p.name.startswith("ckpt-") and p.parent.name.startswith("finetune-") for p in written)
    assert "[rank 1] " not in proc.stderr  # rank 1 printed no error


@pytest.mark.distributed
def test_a_stuck_rank_stops_the_job_with_a_clear_line_and_failed_runs(mri, tmp_path):
    """Rank 1 sleeps at the start of classify; rank 0 waits 15 s in DDP's start-up broadcast, then stops.

    The store's tables are created before the launch and the timeout leaves room for rank 0's start-up work on a
    loaded machine (with 5 s, rank 1 timed out at the first broadcast while rank 0 created the MLflow tables)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables
    proc = _launch(["run", str(mri["yaml"]), "--set", f"data.manifest={mri['manifest']}",
                    "--set", f"runtime.output_dir={tmp_path / 'runs'}", "--set", "runtime.dist_timeout_s=15"],
                   tmp_path, timeout=300, MLFLOW_TRACKING_URI=uri, MEDCL_TEST_STALL="classify:1:120")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert lines[0].startswith("error: stage classify: rank 0 waited 15 s for the other ranks in DDP's start-up "
                               "broadcast of the weights — "), lines[0]
    assert "runtime.dist_timeout_s" in lines[0]
    assert "Traceback" not in proc.stdout
    pipelines, stages = _stage_statuses(uri)
    assert [p.info.status for p in pipelines] == ["FAILED"]
    assert stages == {"classify": "FAILED"}  # segment never started


@pytest.mark.distributed
def test_two_nodes_joined_by_a_c10d_rendezvous_run_a_pipeline(mri, tmp_path):
    """Two torchrun launches (--nnodes 2, one process each) on localhost, as SLURM's srun starts them."""
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = torchrun_env(MLFLOW_TRACKING_URI=uri)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", f"--rdzv-id=medcl-{port}",
           "-m", "medcl", "run", str(mri["yaml"]), "--set", f"data.manifest={mri['manifest']}",
           "--set", f"runtime.output_dir={tmp_path / 'runs'}", "--set", "segment.label_fractions=[1.0]"]
    nodes = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    for n, (out, err) in zip(nodes, outs):
        assert n.returncode == 0, out[-2000:] + err[-4000:]
    pipelines, stages = _stage_statuses(uri)
    assert len(pipelines) == 1 and pipelines[0].info.status == "FINISHED"
    assert stages == {"classify": "FINISHED", "segment": "FINISHED"}
    params = {k: v for r in runs_by_kind(uri)["stage"] for k, v in r.data.params.items()}
    assert params["classify.finetune.world_size"] == "2" and params["segment.world_size"] == "2"


# ------------------------------------------------------------------------------- without torchrun
def test_local_section_is_a_world_of_one_and_refuses_a_world_comm():
    from medcl import distributed
    from medcl.errors import DistributedError

    two_ranks = distributed.Comm(size=2, rank=0)
    with distributed.local_section("classify: probes"):
        assert not distributed.is_distributed() and distributed.world_size() == 1
        assert distributed.world() == distributed.LOCAL
        assert distributed.all_reduce_mean(3.0) == 3.0  # the module's helpers are no-ops inside
        with pytest.raises(DistributedError, match=r"all_reduce over 2 ranks was asked for inside "
                                                   r"'classify: probes', which runs on rank 0 alone"):
            two_ranks.all_reduce_mean(torch.ones(2))
        with pytest.raises(DistributedError, match="all_gather_object over 2 ranks"):
            two_ranks.gather_objects([1])
    assert distributed.LOCAL.all_reduce_mean(torch.ones(2)).tolist() == [1.0, 1.0]
    assert distributed.run_on_main(lambda: 41 + 1, "one process") == 42


def test_engine_reduces_over_the_comm_it_is_given_not_global_state():
    """train_one_epoch has no default for ``comm``: every caller says who it reduces over."""
    import inspect

    from medcl.engine.inference import evaluate
    from medcl.engine.loop import fit, train_one_epoch

    for fn in (train_one_epoch, fit, evaluate):
        p = inspect.signature(fn).parameters["comm"]
        assert p.default is inspect.Parameter.empty and p.kind is inspect.Parameter.KEYWORD_ONLY


def test_pipeline_declares_which_stages_run_on_rank0_alone():
    from medcl.stages import STAGES

    assert {n for n, s in STAGES.items() if s.main_only} == {"detect", "slides", "fuse", "calibrate", "report"}
    src = "".join((ROOT / "medcl" / "stages" / f"{n}.py").read_text() for n in STAGES)
    assert "distributed.barrier()" not in src  # the pipeline waits once; no stage keeps its own barrier


def test_smoke_shrinks_batches_and_3d_crops_of_every_shipped_pipeline():
    from medcl.pipeline import SMOKE_BATCH, SMOKE_CROP_3D, load_pipeline

    for name in SHIPPED:
        path = ROOT / "pipelines" / f"{name}.yaml"
        full, smoke = load_pipeline(path, ["data.manifest=m.csv"]), load_pipeline(path, ["data.manifest=m.csv"],
                                                                                   smoke=True)
        assert smoke.pretrain.max_steps == 2 and smoke.classify.finetune.max_steps == 2
        # every other training loop too: the slide stage's end-to-end scratch baseline (300 steps of 16 tiles of
        # 224 px by default: histo_wsi's smoke ran past 15 minutes), segmentation, fusion heads
        assert smoke.slides.scratch_steps == 2 and smoke.segment.max_steps == 2 and smoke.fuse.steps <= 20
        assert smoke.pretrain.batch_size <= min(full.pretrain.batch_size, SMOKE_BATCH["pretrain"])
        assert smoke.data.batch_size == min(full.data.batch_size, SMOKE_BATCH["data"])
        if full.model.spatial_dims == 3:
            assert all(s <= SMOKE_CROP_3D for s in smoke.transforms.model_extra["spatial_size"])
            assert smoke.segment.roi_size is None and smoke.segment.eval_spatial_size is None
    # the user's --set still wins over --smoke's
    cfg = load_pipeline(ROOT / "pipelines" / "ct_lesion.yaml", ["data.manifest=m.csv", "pretrain.batch_size=6"],
                        smoke=True)
    assert cfg.pretrain.batch_size == 6


def test_every_shipped_pipeline_is_in_the_torchrun_test():
    """A new file in pipelines/ must be added to SHIPPED, so that it is run under torchrun too."""
    assert SHIPPED.keys() == {p.stem for p in (ROOT / "pipelines").glob("*.yaml")}
