"""``kill -9`` a real ``medcl run`` process, ``--resume`` it, and get bit-identical results (CPU).

Every run here is ``python -m medcl run pipelines/demo/oct.yaml`` in a subprocess (one thread) on a
tiny synthetic OCT set, tiny CNN, a checkpoint after every step. A kill comes from outside, when a
chosen checkpoint file has appeared (seeded choice, no sleeps), or from inside half-way through a
checkpoint write (``crash_launcher.py``). The resumed run must end with the same encoder weights
(``torch.equal``), the same logged loss at every step and the same final metrics as an
uninterrupted run. The same seed twice gives the same split and loss curve (determinism).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import PYTHON, REPO, subprocess_env

HERE = Path(__file__).resolve().parent
PIPELINE = REPO / "pipelines" / "demo" / "oct.yaml"
COMMON = ["model.encoder=tiny_cnn", "model.options={}", "model.proj_hidden_dim=32", "model.proj_dim=16", "runtime.progress=false",
          "runtime.device=cpu", "data.batch_size=16", "transforms.spatial_size=[32, 32]"]
PRETRAIN = ["stages=[pretrain]", "pretrain.epochs=3", "pretrain.batch_size=8", "pretrain.warmup_steps=0",
            "pretrain.checkpoint_every_steps=1", "pretrain.keep_checkpoints=3", *COMMON]
FINETUNE = ["stages=[classify]", "classify.protocols=[finetune]", "classify.baselines=[]",
            "classify.label_fractions=[1.0]", "classify.n_boot=10", "classify.finetune.epochs=3",
            "classify.finetune.batch_size=8", "classify.finetune.checkpoint_every_steps=1",
            "classify.finetune.keep_checkpoints=3", *COMMON]
TIMEOUT = 420


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("crash-data")
    synthesize(root, modalities=["oct"], patients=12, seed=0)
    return root / "oct" / "manifest.csv"


class Run:
    """One run folder + MLflow store; ``start``/``run`` launch ``medcl run`` into it."""

    def __init__(self, root: Path, manifest: Path, settings: list[str]) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.args = ["run", str(PIPELINE), *[a for s in [f"data.manifest={manifest}",
                                                          f"runtime.output_dir={root / 'runs'}", *settings]
                                            for a in ("--set", s)]]

    def start(self, *extra: str, launcher: list[str] | None = None, **env: str) -> subprocess.Popen:
        cmd = [PYTHON, *(launcher or ["-m", "medcl"]), "--log-dir", str(self.root / "logs"), *self.args, *extra]
        return subprocess.Popen(cmd, cwd=self.root, env=subprocess_env(MLFLOW_TRACKING_URI=self.uri, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, *extra: str, **env: str) -> str:
        p = self.start(*extra, **env)
        out, _ = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, out[-3000:]
        return out

    def stage_dir(self, stage: str) -> Path:
        dirs = sorted((self.root / "runs").glob(f"*/{stage}"))
        assert len(dirs) == 1, dirs
        return dirs[0]

    def checkpoint_dir(self, stage: str) -> Path:
        base = (self.root / "runs")
        found = sorted({p.parent for p in base.rglob("ckpt-*.pt") if stage in p.parts})
        return found[0] if found else base / "none"

    def history(self, stage: str, metric: str) -> dict[int, set[float]]:
        """``{step: {values logged}}`` of a stage run's metric (a resumed run may log a step twice)."""
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, f"tags.`medcl.stage` = '{stage}'")
        out: dict[int, set[float]] = {}
        for r in runs:
            for m in client.get_metric_history(r.info.run_id, metric):
                out.setdefault(m.step, set()).add(m.value)
        return out

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted((self.root / "logs").glob("*.log")))


def kill_when(proc: subprocess.Popen, ready, timeout: float = TIMEOUT, allow_finish: bool = False) -> str:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled every 2 ms); returns its output.

    With ``allow_finish``, the process may also end successfully before ``ready()``."""
    t0 = time.monotonic()
    while proc.poll() is None and not ready():
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the process never reached the kill point")
        time.sleep(0.002)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    ok = (-signal.SIGKILL, 0) if allow_finish else (-signal.SIGKILL,)
    assert proc.returncode in ok, f"not killed (exit {proc.returncode}):\n{out[-3000:]}"
    return out


def load_weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    from medcl.checkpoint_file import load_checkpoint

    return load_checkpoint(path)[key]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


def assert_same_curve(reference: dict[int, set[float]], resumed: dict[int, set[float]]) -> None:
    assert reference and all(len(v) == 1 for v in reference.values())
    assert resumed == reference  # every step: the same value(s), also the ones logged again after a resume


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> Run:
    """The uninterrupted pretraining run everything is compared with."""
    run = Run(tmp_path_factory.mktemp("reference"), manifest, PRETRAIN)
    run.run()
    return run


def _steps(run: Run) -> int:
    return max(run.history("pretrain", "train/loss"))


def test_kill_9_after_a_checkpoint_then_resume_gives_identical_weights_and_curve(reference, manifest, tmp_path):
    total = _steps(reference)
    assert total >= 6
    k = random.Random(20261).randint(2, total - 3)  # seeded choice of the kill point
    run = Run(tmp_path, manifest, PRETRAIN)
    proc = run.start()
    kill_when(proc, lambda: (run.checkpoint_dir("pretrain") / f"ckpt-{k:08d}.pt").exists())
    assert not list((tmp_path / "runs").glob("*/pretrain/encoder.pt")), "the kill came after the end"
    run.run("--resume")
    assert "resuming at epoch" in run.log_text()
    assert_same_weights(load_weights(reference.stage_dir("pretrain") / "encoder.pt", "encoder"),
                        load_weights(run.stage_dir("pretrain") / "encoder.pt", "encoder"))
    assert_same_curve(reference.history("pretrain", "train/loss"), run.history("pretrain", "train/loss"))
    assert_same_curve(reference.history("pretrain", "epoch/loss"), run.history("pretrain", "epoch/loss"))
    ref_out = json.loads((reference.stage_dir("pretrain") / "outputs.json").read_text())
    out = json.loads((run.stage_dir("pretrain") / "outputs.json").read_text())
    assert out["final_loss"] == ref_out["final_loss"]


def test_kill_9_during_a_checkpoint_write_and_a_corrupt_latest_checkpoint(reference, manifest, tmp_path):
    """Killed half-way through writing checkpoint 5; then checkpoint 4 (the latest) is corrupted too:
    the resume ignores the half-written file, warns and falls back to checkpoint 3, and still
    ends bit-identical to the uninterrupted run."""
    run = Run(tmp_path, manifest, PRETRAIN)
    proc = run.start(launcher=[str(HERE / "crash_launcher.py")], MEDCL_CRASH_IN_WRITE="5")
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    ckpt = run.checkpoint_dir("pretrain")
    assert sorted(p.name for p in ckpt.glob("ckpt-*.pt")) == [f"ckpt-{s:08d}.pt" for s in (2, 3, 4)]
    assert (ckpt / "latest").read_text().strip() == "ckpt-00000004.pt"
    partial = list(ckpt.glob(".ckpt-00000005.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the half-written file
    latest = ckpt / "ckpt-00000004.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))

    run.run("--resume")
    log = run.log_text()
    assert "ckpt-00000004.pt is unusable (checkpoint checksum mismatch" in log and "falling back to" in log
    assert "resuming at epoch 0, batch 3 (global step 3)" in log or "(global step 3)" in log
    assert not list(ckpt.glob("*.tmp")), "the half-written temporary file is cleaned up"
    assert_same_weights(load_weights(reference.stage_dir("pretrain") / "encoder.pt", "encoder"),
                        load_weights(run.stage_dir("pretrain") / "encoder.pt", "encoder"))
    assert_same_curve(reference.history("pretrain", "train/loss"), run.history("pretrain", "train/loss"))


def test_same_seed_same_split_and_loss_curve(reference, manifest, tmp_path):
    """Determinism: a second, independent run (new folder, new store) repeats the first exactly."""
    run = Run(tmp_path, manifest, PRETRAIN)
    run.run()
    ref_split = next((reference.root / "runs").glob("*/split.csv")).read_text()
    assert next((tmp_path / "runs").glob("*/split.csv")).read_text() == ref_split
    assert_same_curve(reference.history("pretrain", "train/loss"), run.history("pretrain", "train/loss"))
    assert_same_weights(load_weights(reference.stage_dir("pretrain") / "encoder.pt", "encoder"),
                        load_weights(run.stage_dir("pretrain") / "encoder.pt", "encoder"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_times_twice_then_resume(reference, manifest, tmp_path, seed):
    """Kills at random (seeded, bounded) times after training got under way — during a step or a
    checkpoint write alike; the resumed run is killed again; the final resume still matches."""
    rng = random.Random(seed)
    run = Run(tmp_path, manifest, PRETRAIN)

    def names() -> set[str]:
        return {p.name for p in run.checkpoint_dir("pretrain").glob("ckpt-*.pt")}

    extra: list[str] = []
    kills = 0
    for _ in range(2):
        proc = run.start(*extra)
        before, delay, first = names(), rng.uniform(0.0, 0.8), []

        def due(before=before, delay=delay, first=first) -> bool:
            if not names() - before:
                return False
            first.append(first[0] if first else time.monotonic())
            return time.monotonic() - first[0] >= delay

        kill_when(proc, due, allow_finish=True)
        kills += proc.returncode == -signal.SIGKILL
        extra = ["--resume"]
    assert kills >= 1
    run.run("--resume")
    assert_same_weights(load_weights(reference.stage_dir("pretrain") / "encoder.pt", "encoder"),
                        load_weights(run.stage_dir("pretrain") / "encoder.pt", "encoder"))
    assert_same_curve(reference.history("pretrain", "train/loss"), run.history("pretrain", "train/loss"))
    assert_same_curve(reference.history("pretrain", "epoch/loss"), run.history("pretrain", "epoch/loss"))


@pytest.mark.slow
def test_finetune_kill_9_then_resume_gives_identical_model_and_metrics(manifest, tmp_path):
    """The classify stage's fine-tuning protocol checkpoints and resumes exactly too."""
    ref = Run(tmp_path / "ref", manifest, FINETUNE)
    ref.run()
    last = max(int(p.stem.split("-")[1]) for p in ref.checkpoint_dir("classify").glob("ckpt-*.pt"))
    assert last >= 6, last
    k = random.Random(99).randint(2, last - 3)
    run = Run(tmp_path / "killed", manifest, FINETUNE)
    proc = run.start()
    kill_when(proc, lambda: (run.checkpoint_dir("classify") / f"ckpt-{k:08d}.pt").exists())
    assert not list((tmp_path / "killed" / "runs").glob("*/classify/results.json"))
    run.run("--resume")
    assert "resuming at epoch" in run.log_text()
    assert_same_weights(load_weights(ref.stage_dir("classify") / "finetuned-scratch.pt", "model"),
                        load_weights(run.stage_dir("classify") / "finetuned-scratch.pt", "model"))
    ref_results = json.loads((ref.stage_dir("classify") / "results.json").read_text())
    results = json.loads((run.stage_dir("classify") / "results.json").read_text())
    per_process = ("steps_run", "train_seconds", "images_per_s")  # what this process ran and how fast
    assert [r["steps"] for r in results] == [r["steps"] for r in ref_results]
    assert [r["steps_run"] for r in results] < [r["steps_run"] for r in ref_results]
    assert ([{k: v for k, v in r.items() if k not in per_process} for r in results]
            == [{k: v for k, v in r.items() if k not in per_process} for r in ref_results])
    ref_primary, primary = (np.load(r.stage_dir("classify") / "primary.npz") for r in (ref, run))
    for name in ref_primary.files:
        np.testing.assert_array_equal(primary[name], ref_primary[name])
