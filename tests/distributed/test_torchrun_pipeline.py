"""The same pipeline YAML under ``torchrun --nproc_per_node=2`` (gloo, CPU) and under plain ``python``.

What the maths guarantees, and what is checked:

* With ``pretrain.batch_size`` = the GLOBAL batch, DDP splits it as 2 x 4. The loaders use one
  ``DistributedSampler`` permutation (seeded by ``(seed, epoch)``), so ranks 0 and 1 draw the even and odd
  positions of the same order: together they see exactly the single process's batch. Augmentations are
  seeded per sample (``medcl.data.datasets.SeededDataset``; with ``transforms.augment_on: batch``,
  ``BatchAugmentedLoader`` seeds each image by manifest row and view), so a sample gets the same views on
  any rank. NT-Xent with ``gather_distributed`` contrasts every local anchor against all 8 samples'
  keys; the gather's backward sums over ranks and DDP averages, which is the full-batch gradient.
* BatchNorm breaks this: its statistics are computed over each rank's 4 samples, not all 8 (and
  PyTorch's SyncBatchNorm has no CPU kernel). So the equality test uses a model with no
  batch-dependent layer: ViT-Ti (LayerNorm only) and a one-layer (linear) projector.
* SGD, not AdamW: Adam divides every gradient element by its own running magnitude, so on the first
  steps near-zero gradients amplify float-rounding differences between the 1- and 2-process reductions
  to O(lr); SGD keeps them O(rounding). Tolerances are float32 rounding over 3 steps.

Also checked: one MLflow pipeline run with one pretrain child (not one per rank), checkpoints written
by rank 0 only (an audit hook records every file each rank opens for writing), no temp files left,
and a restart with a different number of processes (2 → 1) resumes from rank 0's checkpoint and ends
where the uninterrupted run ends, with a warning that says what is and is not preserved.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchrun_helpers import LAUNCHER, ROOT, free_port, max_abs_diff, runs_by_kind, torchrun_env

SBATCH = ROOT / "scripts" / "slurm" / "medcl.sbatch"

PIPELINE = """\
# equality test: no batch-dependent layers (see the module docstring)
include: [{oct}]
name: ddp-test
stages: [pretrain]
seed: 3
model:
  encoder: vit_tiny
  options: {{}}
data:
  cache: none
  num_workers: 0
pretrain:
  method: simclr           # the NT-Xent of the docstring (the OCT demo's MICLe needs >= 2 patients per rank's batch)
  epochs: 1
  max_steps: 3
  warmup_epochs: 0
  batch_size: 8
  optimizer: sgd
  lr: 0.05
  weight_decay: 0.0
  method_options: {{num_layers: 1}}
  checkpoint_every_steps: 1
  keep_checkpoints: 2
  select: last             # hand on the last weights, not the online probe's best step
runtime:
  device: cpu
  progress: false
"""


def demo_manifest(root: Path, patients: int) -> Path:
    """Tiny synthetic OCT set (its `label` holds the class names the OCT pipeline lists)."""
    from medcl.data.synth import synthesize

    return Path(synthesize(root, modalities=["oct"], patients=patients, seed=0))


def encoder_state(path: Path) -> dict[str, torch.Tensor]:
    from medcl.checkpoint_file import load_checkpoint

    return load_checkpoint(path)["encoder"]


# ---------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One 2-process torchrun run and one single-process run of the same YAML, same global batch."""
    from medcl.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("ddp")
    manifest = demo_manifest(root / "data", patients=16)
    yaml_path = root / "pipeline.yaml"
    yaml_path.write_text(PIPELINE.format(oct=ROOT / "pipelines" / "demo" / "oct.yaml"))

    ddp = root / "ddp"
    ddp.mkdir()
    ddp_uri = f"sqlite:///{ddp / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(LAUNCHER),
           "run", str(yaml_path), "--set", f"data.manifest={manifest}", "--set", f"runtime.output_dir={ddp / 'runs'}"]
    env = torchrun_env(MLFLOW_TRACKING_URI=ddp_uri, MEDCL_TEST_WATCH_DIR=str(ddp / "runs"),
                       MEDCL_TEST_WRITE_LOG=str(ddp / "writes-{rank}.json"))
    proc = subprocess.run(cmd, env=env, cwd=ddp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    single = root / "single"
    single.mkdir()
    single_uri = f"sqlite:///{single / 'mlflow.db'}"
    cfg = load_pipeline(yaml_path, [f"data.manifest={manifest}", f"runtime.output_dir={single / 'runs'}",
                                    f"tracking.uri={single_uri}"])
    ctx = run_pipeline(cfg)
    (run_dir,) = (ddp / "runs").iterdir()
    return {"root": root, "yaml": yaml_path, "manifest": manifest, "ddp": ddp, "ddp_uri": ddp_uri,
            "ddp_run_dir": run_dir, "single_ctx": ctx, "stderr": proc.stderr}


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.distributed
def test_one_mlflow_run_and_rank0_only_writes(world):
    runs = runs_by_kind(world["ddp_uri"])
    assert len(runs["pipeline"]) == 1, "exactly one pipeline run, not one per rank"
    assert [r.data.tags["medcl.stage"] for r in runs["stage"]] == ["pretrain"]
    assert not runs["other"]
    stage = runs["stage"][0]
    assert stage.data.tags["mlflow.parentRunId"] == runs["pipeline"][0].info.run_id
    assert stage.info.status == "FINISHED" and runs["pipeline"][0].info.status == "FINISHED"
    assert stage.data.params["pretrain.world_size"] == "2"
    assert stage.data.params["pretrain.per_rank_batch"] == "4"  # global batch 8 split over 2 ranks

    run_dir = world["ddp_run_dir"]
    ckpt_dir = run_dir / "pretrain" / "checkpoints"
    # steps 1, 2, 3 were checkpointed; keep_checkpoints=2 leaves the last two and the pointer, no temp files
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-00000002.pt", "ckpt-00000003.pt", "latest"]
    assert (ckpt_dir / "latest").read_text().strip() == "ckpt-00000003.pt"
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700

    from medcl.checkpoint_file import load_checkpoint

    state = load_checkpoint(ckpt_dir / "ckpt-00000003.pt")
    assert state["config"]["launch"] == {"world_size": 2, "per_rank_batch": 4, "global_batch": 8, "grad_accum": 1,
                                         "steps_per_epoch": state["config"]["launch"]["steps_per_epoch"],
                                         "cache": "none"}
    assert state["global_step"] == 3

    w0 = json.loads((world["ddp"] / "writes-0.json").read_text())
    w1 = json.loads((world["ddp"] / "writes-1.json").read_text())
    assert w1 == [], f"rank 1 wrote {w1}"
    names = {Path(p).name for p in w0}
    assert {"ckpt-00000001.pt", "ckpt-00000003.pt", "latest", "encoder.pt", "outputs.json"} <= names, names


@pytest.mark.distributed
def test_two_processes_match_one_process(world):
    """Same global batch, same per-sample views, no BatchNorm → same loss and weights (float32 rounding)."""
    out = json.loads((world["ddp_run_dir"] / "pretrain" / "outputs.json").read_text())
    ref = world["single_ctx"].outputs["pretrain"]
    assert out["epochs_run"] == ref["epochs_run"] == 1
    loss, ref_loss = out["final_loss"], ref["final_loss"]
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (loss, ref_loss)

    ddp_w = encoder_state(Path(out["encoder"]))
    ref_w = encoder_state(Path(ref["encoder"]))
    diff = max_abs_diff(ddp_w, ref_w)
    assert diff < 1e-5, diff
    # and the comparison has teeth: one SGD step (2 -> 3) moves the weights far more than that
    from medcl.checkpoint_file import load_checkpoint

    step2 = load_checkpoint(world["ddp_run_dir"] / "pretrain" / "checkpoints" / "ckpt-00000002.pt")["model"]
    step2_enc = {k[len("encoder."):]: v for k, v in step2.items() if k.startswith("encoder.")}
    assert max_abs_diff(step2_enc, ddp_w) > 100 * max(diff, 1e-7)


@pytest.mark.distributed
def test_resume_with_fewer_processes_continues_exactly(world, caplog):
    """Crash after step 2 of the 2-process run, restart on 1 process with --resume: same end point."""
    from mlflow import MlflowClient

    from medcl.pipeline import load_pipeline, run_pipeline

    run_dir = world["ddp_run_dir"]
    ckpt_dir = run_dir / "pretrain" / "checkpoints"
    finished = encoder_state(run_dir / "pretrain" / "encoder.pt")
    # what a crash between the checkpoints of steps 2 and 3 leaves behind
    (ckpt_dir / "ckpt-00000003.pt").unlink()
    (ckpt_dir / "latest").write_text("ckpt-00000002.pt\n")
    (run_dir / "pretrain" / "encoder.pt").unlink()
    stage = runs_by_kind(world["ddp_uri"])["stage"][0]
    MlflowClient(world["ddp_uri"]).set_terminated(stage.info.run_id, "KILLED")

    cfg = load_pipeline(world["yaml"], [f"data.manifest={world['manifest']}",
                                        f"runtime.output_dir={world['ddp'] / 'runs'}",
                                        f"tracking.uri={world['ddp_uri']}"])
    with caplog.at_level(logging.WARNING, logger="medcl.engine.resume"):
        ctx = run_pipeline(cfg, resume=True)
    notes = " ".join(r.getMessage() for r in caplog.records if r.name == "medcl.engine.resume")
    assert "written by 2 process(es) with 1" in notes
    assert "global batch is unchanged (8 = 1 x 8)" in notes
    assert "Without BatchNorm" in notes

    assert ctx.run_dir == run_dir
    resumed = encoder_state(Path(ctx.outputs["pretrain"]["encoder"]))
    assert max_abs_diff(resumed, finished) < 1e-5
    assert max_abs_diff(resumed, encoder_state(Path(world["single_ctx"].outputs["pretrain"]["encoder"]))) < 1e-5
    runs = runs_by_kind(world["ddp_uri"])
    assert len(runs["pipeline"]) == 1 and len(runs["stage"]) == 1  # the same runs were re-opened
    assert runs["stage"][0].info.run_id == stage.info.run_id
    assert runs["stage"][0].info.status == "FINISHED"
    assert runs["stage"][0].data.tags["medcl.resumed_launch"] == "world_size 2 -> 1, global batch 8 -> 8"


@pytest.mark.distributed
def test_sbatch_script_launches_torchrun_with_rendezvous(world, tmp_path):
    """scripts/slurm/medcl.sbatch on this machine, with stand-ins for srun and scontrol: a c10d rendezvous
    with two workers that each run `medcl run --dry-run` (requeued job → --resume is added)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(textwrap.dedent("""\
        #!/bin/sh
        printf '%s\\n' "$@" > "$FAKE_SRUN_LOG"
        while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
        exec "$@"
        """))
    (fake / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    port = free_port()
    env = torchrun_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_SRUN_LOG=str(tmp_path / "srun.txt"),
                       SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost",
                       SLURM_GPUS_ON_NODE="2", SLURM_CPUS_PER_TASK="2", SLURM_RESTART_COUNT="1",
                       MEDCL_PYTHON=sys.executable, MEDCL_RDZV_PORT=str(port))
    proc = subprocess.run(["bash", str(SBATCH), str(world["yaml"]), "--dry-run", "--set",
                           f"data.manifest={world['manifest']}", "--set", f"runtime.output_dir={tmp_path / 'runs'}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("dry run: nothing was trained") == 2  # one per worker
    args = (tmp_path / "srun.txt").read_text().splitlines()
    assert args[0] == "--kill-on-bad-exit=1"
    launch = args[args.index("torch.distributed.run") + 1:]
    assert "--nnodes=1" in launch and "--nproc-per-node=2" in launch
    assert "--rdzv-backend=c10d" in launch and f"--rdzv-endpoint=localhost:{port}" in launch
    assert "--rdzv-id=medcl-4242" in launch
    assert launch[launch.index("-m") + 1:][:3] == ["medcl", "run", str(world["yaml"])]
    assert "--resume" in launch  # SLURM_RESTART_COUNT > 0
    assert not (tmp_path / "runs").exists()  # a dry run trains and writes nothing


# ------------------------------------------------------------------------------- resume report (no torchrun)
NOW = {"world_size": 4, "per_rank_batch": 64, "global_batch": 256, "grad_accum": 1, "steps_per_epoch": 10,
       "cache": "none"}


def test_resume_report_unchanged_launch_says_nothing():
    from medcl.engine.resume import resume_report

    assert resume_report(dict(NOW), NOW, has_batchnorm=True) is None
    assert resume_report(None, NOW, has_batchnorm=True) is None


def test_resume_report_same_global_batch():
    from medcl.engine.resume import resume_report

    saved = {**NOW, "world_size": 8, "per_rank_batch": 32}
    note = resume_report(saved, NOW, has_batchnorm=True)
    assert "written by 8 process(es) with 4" in note
    assert "optimiser state" in note and "restored exactly" in note
    assert "global batch is unchanged (256 = 4 x 64)" in note
    assert "BatchNorm statistics are computed per process (per-rank batch 32 -> 64" in note
    assert "NOT preserved" not in note


def test_resume_report_changed_global_batch_and_cache():
    from medcl.engine.resume import resume_report

    saved = {**NOW, "world_size": 8, "global_batch": 512, "steps_per_epoch": 5}
    note = resume_report(saved, {**NOW, "cache": "memory"}, has_batchnorm=False)
    assert "NOT preserved: the global batch changes from 512 (8 x 64) to 256 (4 x 64)" in note
    assert "10 steps instead of 5" in note
    assert "data.cache=memory" in note
    assert "will not reproduce" in note
