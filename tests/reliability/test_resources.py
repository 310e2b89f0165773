"""Resource guards: too-large volumes, empty splits, a single-patient class, a full disk mid-run.

Each must end in one clear error (or, for the single-patient class, a clear warning and a run
that completes) and leave everything already written intact.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import REPO

PIPELINE = REPO / "pipelines" / "demo" / "oct.yaml"


@pytest.fixture(scope="module")
def oct_manifest(tmp_path_factory) -> Path:
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("resources-data")
    synthesize(root, modalities=["oct"], patients=12, seed=0)
    return root / "oct" / "manifest.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def tiny(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.manifest={manifest}", f"runtime.output_dir={out}", "runtime.progress=false", "runtime.device=cpu",
            "model.encoder=tiny_cnn", "model.options={}", "model.proj_hidden_dim=32", "model.proj_dim=16", "pretrain.epochs=1",
            "pretrain.batch_size=8", "pretrain.warmup_steps=0", "pretrain.checkpoint_every_steps=1",
            "pretrain.keep_checkpoints=5", "transforms.spatial_size=[32, 32]", "data.batch_size=16",
            "classify.n_boot=10", "classify.label_fractions=[1.0]", "classify.baselines=[]", *extra]


# --------------------------------------------------------------------------------- too-large volume
def test_default_memory_setting():
    from medcl.config.schema import DataConfig
    from medcl.data.validate import DEFAULT_MAX_VOXELS

    assert DataConfig().max_voxels == DEFAULT_MAX_VOXELS == 2**29  # 2 GiB per sample as float32
    assert DataConfig(max_voxels=None).max_voxels is None


def test_too_large_volume_is_refused_from_its_header_before_decoding(tmp_path, tracking_uri):
    """The volume's data are cut off: decoding it would fail differently. The guard answers from the
    header alone, naming the file, its size and the setting to change, before any training."""
    import nibabel as nib

    from medcl.data.manifest import load_manifest
    from medcl.data.validate import validate_manifest
    from medcl.errors import DataError
    from medcl.pipeline import load_pipeline, run_pipeline

    img = nib.Nifti1Image(np.zeros((64, 64, 48), np.float32), np.eye(4))
    nib.save(img, tmp_path / "big.nii")
    data = (tmp_path / "big.nii").read_bytes()
    (tmp_path / "big.nii").write_bytes(data[: len(data) // 10])  # header intact, data truncated
    (tmp_path / "m.csv").write_text("patient_id,path,modality,label\nP1,big.nii,ct,lesion\n")
    m = load_manifest(tmp_path / "m.csv")
    [p] = validate_manifest(m, max_voxels=100_000)
    assert p.code == "too-large" and p.row == 1 and p.path == "big.nii"
    assert p.line() == ("row 1 (big.nii): too large for the memory setting: 196,608 values (768 KiB as float32), "
                        "more than data.max_voxels = 100,000 — raise data.max_voxels (`medcl data validate "
                        "--max-voxels N`) if the machine has the memory, or crop/downsample the file")
    [p] = validate_manifest(m, max_voxels=None)  # without the limit the reader reports the truncation
    assert p.code == "unreadable" and "truncated" in p.what
    cfg = load_pipeline(REPO / "pipelines" / "demo" / "ct.yaml", [
        f"data.manifest={tmp_path / 'm.csv'}", f"runtime.output_dir={tmp_path / 'runs'}", "data.max_voxels=100000",
        "data.label_column=label"])
    with pytest.raises(DataError, match=r"row 1 \(big\.nii\): too large for the memory setting: 196,608 values"):
        run_pipeline(cfg)
    assert not (tmp_path / "runs").exists()


def test_too_large_checked_after_decoding_when_the_header_cannot_tell(tmp_path):
    """ECG records have no cheap size: the decoded array is checked instead."""
    from bad_inputs import wfdb_record

    from medcl.data.manifest import load_manifest
    from medcl.data.validate import validate_manifest

    wfdb_record(tmp_path, "rec", np.zeros((1000, 2)))
    (tmp_path / "m.csv").write_text("patient_id,path,modality,label\nP1,rec.hea,ecg,\n")
    [p] = validate_manifest(load_manifest(tmp_path / "m.csv"), max_voxels=1500)
    assert p.code == "too-large" and "2,000 values" in p.what


# --------------------------------------------------------------------------------- empty split
def test_empty_test_split_fails_before_anything_is_trained_or_tracked(oct_manifest, tmp_path, tracking_uri):
    from mlflow import MlflowClient

    from medcl.errors import SplitError
    from medcl.pipeline import load_pipeline, run_pipeline

    rows = read_rows(oct_manifest)
    for r in rows:
        r["split"] = "val" if r["patient_id"].endswith(("01", "02")) else "train"
    m = oct_manifest.parent / "all-train.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = load_pipeline(PIPELINE, tiny(m, tmp_path / "runs", "stages=[pretrain, classify, calibrate]"))
    with pytest.raises(SplitError) as e:
        run_pipeline(cfg)
    assert e.value.line() == (
        "data: the test split has no labelled samples (10 train, 2 val, 0 test patients) but stage classify needs "
        "it — give some patients split=test in the manifest, or clear its split column to let medcl split by patient "
        "(data.test_fraction)")
    assert not (tmp_path / "runs").exists()
    client = MlflowClient(tracking_uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


# --------------------------------------------------------------------------------- full disk mid-run
def _fail_fsync_of(monkeypatch, prefix: str) -> None:
    """``os.fsync`` in the checkpoint module fails with ENOSPC for files whose name starts with ``prefix``."""
    from medcl import checkpoint_file as checkpoint

    real = os.fsync

    def fsync(fd):
        try:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        except OSError:
            name = ""
        if name.startswith(prefix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor")
def test_full_disk_during_a_checkpoint_write_in_a_stage(oct_manifest, tmp_path, tracking_uri, monkeypatch):
    """The disk fills while pretraining writes checkpoint 3: the stage fails with one clear line, every
    file written before is intact, and once space is free ``--resume`` finishes the run exactly as an
    uninterrupted one."""
    from mlflow import MlflowClient

    from medcl.checkpoint_file import load_checkpoint
    from medcl.engine.checkpoint import Checkpointer
    from medcl.errors import StageError
    from medcl.pipeline import load_pipeline, run_pipeline

    cfg = load_pipeline(PIPELINE, tiny(oct_manifest, tmp_path / "runs", "stages=[pretrain]"))
    with monkeypatch.context() as mp:
        _fail_fsync_of(mp, ".ckpt-00000003.pt.")
        with pytest.raises(StageError) as e:
            run_pipeline(cfg)
    run_dir = next((tmp_path / "runs").iterdir())
    ckpt_dir = run_dir / "pretrain" / "checkpoints"
    assert e.value.line() == (
        f"stage pretrain: {ckpt_dir / 'ckpt-00000003.pt'}: the disk is full while writing a checkpoint in {ckpt_dir} "
        "(No space left on device) — free space there or point the checkpoint directory at a larger disk; the "
        "previous checkpoint is untouched — fix the cause above and re-run; completed stages are skipped")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-00000001.pt", "ckpt-00000002.pt", "latest"]
    assert Checkpointer(ckpt_dir).load_latest()["global_step"] == 2
    assert load_checkpoint(ckpt_dir / "ckpt-00000001.pt")["global_step"] == 1
    config_before = (run_dir / "config.yaml").read_bytes()
    split_before = (run_dir / "split.csv").read_bytes()
    assert b"pretrain:" in config_before and split_before.startswith(b"row,patient,split")
    client = MlflowClient(tracking_uri)
    exps = [x.experiment_id for x in client.search_experiments()]
    [stage] = client.search_runs(exps, "tags.`medcl.stage` = 'pretrain'")
    assert stage.info.status == "FAILED"

    ctx = run_pipeline(cfg, resume=True)  # space is free again
    assert (run_dir / "config.yaml").read_bytes() == config_before
    assert (run_dir / "split.csv").read_bytes() == split_before
    resumed = load_checkpoint(ctx.outputs["pretrain"]["encoder"])["encoder"]

    ref_cfg = load_pipeline(PIPELINE, tiny(oct_manifest, tmp_path / "ref", "stages=[pretrain]"))
    ref = load_checkpoint(run_pipeline(ref_cfg).outputs["pretrain"]["encoder"])["encoder"]
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)


# --------------------------------------------------------------------------------- single-patient class
@pytest.mark.slow
def test_single_patient_class_warns_and_the_run_completes(oct_manifest, tmp_path, tracking_uri, caplog):
    from medcl.pipeline import load_pipeline, run_pipeline

    rows = read_rows(oct_manifest)
    keep = next(r["patient_id"] for r in rows if r["label"] == "intermediate")
    for r in rows:
        if r["label"] == "intermediate" and r["patient_id"] != keep:
            r["label"] = "early"
    m = oct_manifest.parent / "single.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = load_pipeline(PIPELINE, tiny(m, tmp_path / "runs", "stages=[pretrain, classify, calibrate]",
                                       "classify.protocols=[linear]"))
    ctx = run_pipeline(cfg)
    assert "class 'intermediate' (1 patient) has fewer patients than the 3 splits" in caplog.text
    lonely = {r.patient for r in ctx.data.records if r.label == "intermediate"}
    assert len(lonely) == 1 and ctx.data.assignment[lonely.pop()] == "train"
    assert ctx.outputs["calibrate"]["run_id"]
