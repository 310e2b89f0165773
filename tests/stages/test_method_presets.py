"""Every method preset in configs/method/ runs a few pretraining steps on the demo data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.config import load_config
from medcl.data.prepare import prepare_data
from medcl.errors import ConfigError
from medcl.stages.context import RunContext
from medcl.tracking import NullTracker

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs" / "method").glob("*.yaml"))
#: ECG methods need the multi-label ECG demo; the rest run on OCT B-scans
ECG_METHODS = {"clocs", "supcon-graph"}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from medcl.data.synth import synthesize

    out = tmp_path_factory.mktemp("presets")
    synthesize(out, modalities=["oct", "ecg"], patients=10, seed=0)
    return out


def _pipeline(tmp: Path, preset: Path, demo: Path) -> Path:
    mod = "ecg" if preset.stem in ECG_METHODS else "oct"
    task = "multilabel" if mod == "ecg" else "ordinal"
    encoder = "resnet1d" if mod == "ecg" else "tiny_cnn"
    text = f"""
include: [{REPO}/configs/modality/{mod}.yaml, {preset}]
name: preset-{preset.stem}
stages: [pretrain]
data: {{manifest: {demo / mod / 'manifest.csv'}, task: {task}, batch_size: 8}}
model: {{encoder: {encoder}, proj_hidden_dim: 32, proj_dim: 16}}
pretrain: {{epochs: 1, max_steps: 2, batch_size: 8, warmup_epochs: 0}}
runtime: {{output_dir: {tmp / 'runs'}, progress: false}}
"""
    p = tmp / "p.yaml"
    p.write_text(text)
    return p


def _pretrain(cfg, tmp_path: Path, with_output: bool = False):
    """Run the pretrain stage of ``cfg`` with a recording tracker: ``(tracker, data)`` (``(out, …)`` first)."""
    from medcl.stages.pretrain import run

    data = prepare_data(cfg)
    ctx = RunContext(cfg, "k", tmp_path / "runs" / "r", data, device=torch.device("cpu"))
    ctx.run_dir.mkdir(parents=True)
    tracker = NullTracker()
    out = run(ctx, tracker)
    return (out, tracker, data) if with_output else (tracker, data)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_method_preset_runs_a_few_steps(preset, demo_data, tmp_path):

    overrides = []
    if preset.stem == "oct-severity":
        overrides = ["pretrain.method_options.ae_steps=4", "pretrain.method_options.num_bins=3"]
    if preset.stem == "supcon-hardneg":
        overrides = ["pretrain.method_options.hard_pairs=[[early, intermediate]]"]
    cfg = load_config(_pipeline(tmp_path, preset, demo_data), overrides)
    assert cfg.pretrain.method == preset.stem
    out, tracker, data = _pretrain(cfg, tmp_path, with_output=True)
    assert np.isfinite(out["final_loss"]), out
    assert Path(out["encoder"]).is_file()
    losses = [v for _, v in tracker.metrics.get("train/loss", [])]
    assert losses and all(np.isfinite(losses))


def test_micle_trains_on_patient_grouped_batches(demo_data, tmp_path, monkeypatch):
    """MICLe's batches hold P patients × K images each, so every anchor meets K - 1 images of its patient."""
    from medcl.methods import MICLe

    seen: list[list[int]] = []
    forward = MICLe.forward

    def spy(self, batch):
        if self.training:  # not the memory check's eval-mode probe
            seen.append(batch["patient"].tolist())
        return forward(self, batch)

    monkeypatch.setattr(MICLe, "forward", spy)
    cfg = load_config(_pipeline(tmp_path, REPO / "configs" / "method" / "micle.yaml", demo_data),
                      ["pretrain.samples_per_patient=2"])
    assert cfg.pretrain.batches == "auto"
    tracker, data = _pretrain(cfg, tmp_path)
    assert tracker.params["pretrain.batches_formed"] == "patients (4 x 2)"
    assert seen
    for pats in seen:
        assert len(pats) == 8
        assert all(pats[j] == pats[j + 1] for j in range(0, 8, 2)), pats
        assert len(set(pats)) == 4, pats


def test_shuffled_batches_stay_the_default_of_other_methods(demo_data, tmp_path):

    cfg = load_config(_pipeline(tmp_path, REPO / "configs" / "method" / "simclr.yaml", demo_data))
    tracker, data = _pretrain(cfg, tmp_path)
    assert tracker.params["pretrain.batches_formed"] == "shuffle"


def test_oct_severity_is_set_up_on_every_training_image_unaugmented(demo_data, tmp_path, monkeypatch):
    """The anomaly model sees the scans themselves (the evaluation chain, no views), each training image once."""
    from medcl.methods import OCTSeverity

    seen: dict[str, object] = {}
    fit_and_score = OCTSeverity._fit_and_score

    def spy(self, loader):
        batches = list(loader)
        seen["keys"] = set().union(*(b.keys() for b in batches))
        seen["rows"] = sorted(i for b in batches for i in b["index"].tolist())
        seen["twice"] = [torch.equal(a["image"], b["image"]) for a, b in zip(batches, list(loader))]
        return fit_and_score(self, batches)

    monkeypatch.setattr(OCTSeverity, "_fit_and_score", spy)
    cfg = load_config(_pipeline(tmp_path, REPO / "configs" / "method" / "oct-severity.yaml", demo_data),
                      ["pretrain.method_options.ae_steps=4", "pretrain.method_options.num_bins=3"])
    _, data = _pretrain(cfg, tmp_path)
    assert "image" in seen["keys"] and "views" not in seen["keys"]
    assert seen["rows"] == sorted(it["index"] for it in data.items("train"))
    assert all(seen["twice"])  # deterministic: no random augmentation


def test_clocs_positives_by_record_work_from_a_pipeline(demo_data, tmp_path, monkeypatch):
    """``positives: record`` gets record ids from the loader (a manifest ``record`` column, else one per row) and
    CLOCS cuts adjacent segments (the preset's view_mode cmsc)."""
    import csv

    from medcl.methods import CLOCS

    # two rows of each patient are the same recording (e.g. two exports of one ECG)
    src = demo_data / "ecg" / "manifest.csv"
    rows = list(csv.DictReader(src.open()))
    seen_patient: dict[str, int] = {}
    for r in rows:
        n = seen_patient[r["patient_id"]] = seen_patient.get(r["patient_id"], -1) + 1
        r["record"] = f"rec-{min(n, 1)}"
    manifest = demo_data / "ecg" / "manifest_records.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    batches: list[dict] = []
    forward = CLOCS.forward

    def spy(self, batch):
        if self.training:
            batches.append({k: batch[k].clone() for k in ("record", "patient")})
        return forward(self, batch)

    monkeypatch.setattr(CLOCS, "forward", spy)
    cfg = load_config(_pipeline(tmp_path, REPO / "configs" / "method" / "clocs.yaml", demo_data),
                      [f"data.manifest={manifest}", "pretrain.method_options.positives=record"])
    assert cfg.transforms.view_mode == "cmsc"
    out, _, data = _pretrain(cfg, tmp_path, with_output=True)
    ids = data.record_ids()
    # rows share an id exactly when they have the same patient and record cell
    keys = [(r.patient, r.extra["record"]) for r in data.records]
    for i in range(len(keys)):
        for j in range(len(keys)):
            assert (ids[i] == ids[j]) == (keys[i] == keys[j])
    assert np.isfinite(out["final_loss"])
    assert batches and all(b["record"].shape == b["patient"].shape for b in batches)
    assert set(torch.cat([b["record"] for b in batches]).tolist()) <= set(ids.tolist())


@pytest.mark.parametrize("method", ["supcon", "supcon-balanced", "prototypes", "supcon-hardneg"])
def test_single_label_methods_refuse_multilabel_data_before_training(method, demo_data, tmp_path, monkeypatch):
    """A method that reads one class per sample, on the multilabel ECG demo: a ConfigError naming pretrain.method and
    the multilabel form, before any step (the loop is never entered)."""
    import medcl.stages.pretrain as pretrain

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pretrain, "fit", never)
    preset = REPO / "configs" / "method" / "supcon-graph.yaml"  # ECG pipeline, then the method swapped
    over = [f"pretrain.method={method}", "pretrain.method_options={}"]
    if method == "supcon-hardneg":
        over = [f"pretrain.method={method}", "pretrain.method_options.hard_pairs=[[AF, BBB]]"]
    cfg = load_config(_pipeline(tmp_path, preset, demo_data), over)
    assert cfg.data.task == "multilabel"
    with pytest.raises(ConfigError, match="multilabel") as info:
        _pretrain(cfg, tmp_path)
    assert info.value.where == "pretrain.method" and "supcon-graph" in info.value.fix
