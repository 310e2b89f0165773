"""The step-memory estimate: activations counted by hand on a small network, and the stop before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcl.engine.memory import GIB, StepMemory, activation_bytes, check_step_fits, estimate_step
from medcl.errors import ConfigError


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))

    def forward(self, batch):
        return self.body(batch["image"]).mean()


def test_activation_bytes_match_a_hand_count():
    net = _Net()
    x = torch.zeros(2, 1, 16, 16)
    # conv1: 2×8×16×16, relu: the same, conv2: 2×4×8×8 — float32
    expected = 4 * (2 * 8 * 16 * 16 * 2 + 2 * 4 * 8 * 8)
    assert activation_bytes(net, lambda: net({"image": x})) == expected


def test_the_estimate_scales_the_probe_to_the_batch_and_counts_parameters_four_times():
    net = _Net()
    est = estimate_step(net, {"image": torch.zeros(2, 1, 16, 16)}, batch_size=32)
    n_params = sum(p.numel() for p in net.parameters())
    assert est.activations == 16 * 4 * (2 * 8 * 16 * 16 * 2 + 2 * 4 * 8 * 8)
    assert est.parameters == 4 * n_params and est.batch == 32 * 16 * 16 * 4
    assert est.total == est.activations + 4 * est.parameters + est.batch


def test_a_step_that_cannot_fit_stops_with_one_line_naming_stage_estimate_limit_and_settings():
    est = StepMemory(activations=30 * GIB, parameters=GIB // 8, batch=GIB // 4)
    check_step_fits("pretrain", est, 64 * GIB, batch_key="pretrain.batch_size", batch_size=16,
                    input_shape=(2, 1, 96, 96, 96))  # fits: nothing happens
    check_step_fits("pretrain", est, None, batch_key="pretrain.batch_size", batch_size=16, input_shape=(1,))
    with pytest.raises(ConfigError) as info:
        check_step_fits("pretrain", est, 24 * GIB, batch_key="pretrain.batch_size", batch_size=16,
                        input_shape=(2, 1, 96, 96, 96))
    line = info.value.line()
    assert "stage pretrain" in line and "30.8 GiB" in line and "24.0 GiB available" in line
    assert "pretrain.batch_size" in line and "about 12 would fit" in line and "spatial_size" in line
    assert "\n" not in line


def test_the_pretrain_stage_stops_before_training_when_the_machine_is_too_small(tmp_path, monkeypatch):
    import numpy as np

    from medcl.config import load_config
    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.stages import pretrain
    from medcl.stages.context import RunContext
    from medcl.tracking import NullTracker

    synthesize(tmp_path / "d", modalities=["oct"], patients=6, seed=0, size=32)
    (tmp_path / "p.yaml").write_text(f"""
name: mem
include: [{pretrain.__file__.rsplit('/medcl/', 1)[0]}/configs/modality/oct.yaml]
stages: [pretrain]
data: {{manifest: {tmp_path / 'd' / 'oct' / 'manifest.csv'}, task: ordinal, batch_size: 4}}
model: {{encoder: tiny_cnn, proj_hidden_dim: 16, proj_dim: 8}}
transforms: {{spatial_size: [32, 32]}}
pretrain: {{epochs: 1, max_steps: 1, batch_size: 4, warmup_epochs: 0, probe: false}}
runtime: {{output_dir: {tmp_path / 'runs'}, progress: false}}
""")
    cfg = load_config(tmp_path / "p.yaml")
    ctx = RunContext(cfg, "k", tmp_path / "runs" / "r", prepare_data(cfg), device=torch.device("cpu"))
    ctx.run_dir.mkdir(parents=True)
    tracker = NullTracker()
    out = pretrain.run(ctx, tracker)  # fits: trains, and logs its estimate
    assert np.isfinite(out["final_loss"]) and tracker.metrics["pretrain/step_memory_gib"][-1][1] >= 0
    from medcl.stages import common

    monkeypatch.setattr(common, "available_bytes", lambda device: 1024)  # a 1 KiB machine
    trained = []
    monkeypatch.setattr(pretrain, "fit", lambda *a, **k: trained.append(1))
    with pytest.raises(ConfigError, match="stage pretrain: one optimiser step needs about"):
        pretrain.run(ctx, NullTracker())
    assert trained == []  # stopped before the loop
