"""Training loop: exact resume, gradient accumulation, clipping, NaN guard, logging, evaluation."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from medcl.distributed import LOCAL
from medcl.engine import (
    Checkpointer,
    EpochStart,
    LoopSettings,
    Optimisation,
    build_optimizer,
    build_scheduler,
    check_amp,
    cosine_momentum,
    epoch_generator,
    evaluate,
    extract_features,
    fit,
    maybe_compile,
    resolve_amp,
    to_device,
    train_one_epoch,
    unwrap_model,
    wrap_ddp,
)
from medcl.errors import ConfigError, TrainingError


# ----------------------------------------------------------------------------- fixtures
class AugmentedSet(Dataset):
    """Random tensors; every draw adds noise from all three global RNGs (torch, numpy, python)."""

    def __init__(self, n: int = 20, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.base = TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        x, y = self.base[i]
        scale = 0.1 * float(np.random.rand()) + 0.05 * random.random()
        return {"image": x + scale * torch.randn_like(x), "label": y, "index": i}


class TinyMethod(nn.Module):
    """Tiny CNN + CE loss, dropout (uses the RNG) and an EMA buffer updated in on_step_end."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4, 3)
        self.register_buffer("ema", self.fc.weight.detach().clone())
        self.hook_calls: list[tuple[int, int]] = []

    def forward(self, batch: dict) -> dict:
        h = F.relu(self.conv(batch["image"])).mean(dim=(2, 3))
        logits = self.fc(self.drop(h))
        loss = F.cross_entropy(logits, batch["label"])
        return {"loss": loss, "acc": (logits.argmax(1) == batch["label"]).float().mean()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        self.hook_calls.append((step, total_steps))
        m = cosine_momentum(step, total_steps, base=0.9)
        self.ema.mul_(m).add_(self.fc.weight, alpha=1 - m)


class ListTracker:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def curve(self, key: str = "train/loss") -> list[tuple[int, float]]:
        return [(s, m[key]) for s, m in self.rows if key in m]


def _loader_factory(ds: Dataset, batch_size: int = 4, seed: int = 7):
    return lambda epoch: DataLoader(ds, batch_size=batch_size, shuffle=True, generator=epoch_generator(seed, epoch))


def _run(ckpt_dir, *, stop_at=None, grad_accum=1, init_seed=0, epochs=3):
    """Build everything from scratch (as a fresh process would) and fit."""
    random.seed(1000 + init_seed), np.random.seed(1000 + init_seed), torch.manual_seed(init_seed)
    model = TinyMethod()
    opt = build_optimizer(model, "adamw", lr=0.05, weight_decay=0.01)
    steps_per_epoch = math.ceil(5 / grad_accum)
    sched = build_scheduler(opt, total_steps=epochs * steps_per_epoch, warmup_steps=2, min_lr_ratio=0.1)
    tracker = ListTracker()
    cp = Checkpointer(ckpt_dir, keep=2, run_id="run-1", config={"lr": 0.05}) if ckpt_dir is not None else None
    settings = LoopSettings(epochs=epochs, log_every=1, max_steps=stop_at, grad_accum=grad_accum, progress=False)
    history = fit(model, _loader_factory(AugmentedSet()), Optimisation(opt, sched), settings, comm=LOCAL,
                  checkpointer=cp, tracker=tracker, resume=cp.load_latest() if cp is not None else None)
    return model, opt, tracker, history


# ----------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("grad_accum,stop_at", [(1, 7), (2, 4)])
def test_resume_mid_epoch_is_bit_identical(tmp_path, grad_accum, stop_at):
    ref_model, ref_opt, ref_tracker, _ = _run(None, grad_accum=grad_accum)

    _, _, t1, h1 = _run(tmp_path, stop_at=stop_at, grad_accum=grad_accum)
    assert h1[-1]["completed"] == 0.0  # really interrupted mid-epoch
    saved = Checkpointer(tmp_path).load_latest()
    assert saved["epoch"] == 1 and 0 < saved["batches_done"] < 5 and saved["global_step"] == stop_at
    assert saved["run_id"] == "run-1" and saved["config"] == {"lr": 0.05}

    model, opt, t2, _ = _run(tmp_path, grad_accum=grad_accum, init_seed=2)  # different init: must be overwritten

    assert t1.curve() + t2.curve() == ref_tracker.curve()
    assert len(ref_tracker.curve()) == 3 * math.ceil(5 / grad_accum)
    ref_sd, sd = ref_model.state_dict(), model.state_dict()
    assert ref_sd.keys() == sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], sd[k]), k
    for a, b in zip(ref_opt.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert model.hook_calls[0][0] == stop_at + 1 and model.hook_calls[-1] == ref_model.hook_calls[-1]


def test_resume_without_checkpoint_differs_from_reference(tmp_path):
    """Guard for the test above: a fresh run from a different init does not match by accident."""
    ref_model, *_ = _run(None)
    other, *_ = _run(None, init_seed=3)
    assert not torch.equal(ref_model.fc.weight, other.fc.weight)


def test_checkpoint_every_and_epoch_end(tmp_path):
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    model = TinyMethod()
    opt = build_optimizer(model, "sgd", lr=0.01)
    cp = Checkpointer(tmp_path, keep=10)
    fit(model, _loader_factory(AugmentedSet()), Optimisation(opt), LoopSettings(epochs=2, checkpoint_every=3, progress=False),
        comm=LOCAL, checkpointer=cp)
    # 5 steps per epoch: mid-epoch saves at 3, 6, 9; epoch ends at 5 and 10
    assert [s for s, _ in cp.checkpoints()] == [3, 5, 6, 9, 10]
    st = cp.load_latest()
    assert (st["epoch"], st["batches_done"], st["global_step"]) == (2, 0, 10)
    from medcl.checkpoint_file import load_checkpoint

    mid = load_checkpoint(cp.path_for(6))
    assert (mid["epoch"], mid["batches_done"], mid["epoch_step"]) == (1, 1, 1)


def test_epoch_end_checkpoints_closer_than_the_interval_are_skipped_but_the_last_is_written(tmp_path):
    """Small data: 5-step epochs would write the whole training state every 5 steps."""
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    model = TinyMethod()
    opt = build_optimizer(model, "sgd", lr=0.01)
    cp = Checkpointer(tmp_path, keep=10)
    fit(model, _loader_factory(AugmentedSet()), Optimisation(opt),
        LoopSettings(epochs=3, checkpoint_every=7, checkpoint_every_s=1e9, progress=False), comm=LOCAL, checkpointer=cp)
    # epoch ends at 5 and 10 are skipped (too soon); every 7th step is asked for; 15 is the last
    assert [s for s, _ in cp.checkpoints()] == [7, 14, 15]
    assert cp.load_latest()["global_step"] == 15


# ----------------------------------------------------------------------------- accumulation, clipping
class LinearMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 2)

    def forward(self, batch):
        return {"loss": F.mse_loss(self.lin(batch["image"]), batch["label"])}


def _lin_data(n=12):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 5, generator=g), torch.randn(n, 2, generator=g)
    return [{"image": x[i], "label": y[i]} for i in range(n)]


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_grad_accum_matches_full_batch_including_short_last_group(opt_name):
    data = _lin_data(12)
    results = []
    for bs, ga in ((8, 1), (4, 2)):  # batches of 8+4 vs groups (4+4) and (4)
        torch.manual_seed(0)
        model = LinearMethod()
        opt = build_optimizer(model.parameters(), opt_name, lr=0.1)
        loader = DataLoader(data, batch_size=bs, shuffle=False)
        out = train_one_epoch(model, loader, Optimisation(opt), LoopSettings(grad_accum=ga, progress=False), comm=LOCAL)
        assert out["steps"] == 2
        results.append(model.lin.weight.detach().clone())
    # a loader without len(): the short last group is detected when the data runs out
    torch.manual_seed(0)
    model = LinearMethod()
    opt = build_optimizer(model.parameters(), opt_name, lr=0.1)
    batches = list(DataLoader(data, batch_size=4, shuffle=False))
    out = train_one_epoch(model, (b for b in batches), Optimisation(opt), LoopSettings(grad_accum=2, progress=False),
                          comm=LOCAL)
    assert out["steps"] == 2 and out["completed"] == 1.0
    results.append(model.lin.weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6, rtol=0)
    assert torch.allclose(results[0], results[2], atol=1e-6, rtol=0)


def test_clipping_caps_the_norm():
    torch.manual_seed(0)
    model = LinearMethod()
    data = [{"image": d["image"] * 100, "label": d["label"]} for d in _lin_data(8)]
    ref = LinearMethod()
    ref.load_state_dict(model.state_dict())
    # independent reference: the unclipped gradient, then scaled by hand
    ref(next(iter(DataLoader(data, batch_size=8))))["loss"].backward()
    g = torch.cat([p.grad.flatten() for p in ref.parameters()])
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    logs = []
    train_one_epoch(model, DataLoader(data, batch_size=8), Optimisation(opt), LoopSettings(clip_grad=0.5, progress=False),
                    comm=LOCAL, on_step=lambda s, lg: logs.append(lg))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    step = before - after
    assert g.norm() > 10 and logs[0]["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert float(step.norm()) == pytest.approx(0.5, rel=1e-4)
    assert torch.allclose(step, g * 0.5 / g.norm(), atol=1e-6)


# ----------------------------------------------------------------------------- NaN, logs, progress
class NaNAtBatch(LinearMethod):
    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.seen = bad, 0

    def forward(self, batch):
        out = super().forward(batch)
        self.seen += 1
        if self.seen == self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_raises_naming_epoch_and_step_before_backward():
    model = NaNAtBatch(bad=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError) as e:
        train_one_epoch(model, DataLoader(_lin_data(12), batch_size=2), Optimisation(opt), LoopSettings(progress=False),
                        comm=LOCAL, epoch=4, start=EpochStart(global_step=10))
    msg = e.value.line()
    assert "epoch 4" in msg and "step 13" in msg and "learning rate" in msg and "clip" in msg
    assert all(p.grad is None for p in model.parameters())  # backward never ran on the NaN


def test_step_logs_and_epoch_averages():
    torch.manual_seed(0)
    model = TinyMethod()
    opt = build_optimizer(model, "lars", lr=0.1)
    logs = []
    out = train_one_epoch(model, _loader_factory(AugmentedSet())(0), Optimisation(opt), LoopSettings(progress=False),
                          comm=LOCAL, start=EpochStart(global_step=3), on_step=lambda s, lg: logs.append((s, lg)))
    assert [s for s, _ in logs] == [4, 5, 6, 7, 8]
    for _, lg in logs:
        assert {"loss", "acc", "lr", "samples_per_s", "data_wait_fraction"} <= lg.keys()
        assert 0.0 <= lg["data_wait_fraction"] <= 1.0 and lg["samples_per_s"] > 0
    assert 0.0 <= out["data_wait_fraction"] <= 1.0 and out["samples_per_s"] > 0
    assert out["loss"] == pytest.approx(sum(lg["loss"] for _, lg in logs) / 5)
    assert out["completed"] == 1.0 and out["batches_done"] == 5 and out["steps"] == 5
    assert model.hook_calls == [(s, 8) for s in range(4, 9)]


def test_max_steps_and_skip_batches():
    model = LinearMethod()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_lin_data(12), batch_size=2)
    out = train_one_epoch(model, loader, Optimisation(opt), LoopSettings(max_steps=2, progress=False), comm=LOCAL,
                          start=EpochStart(batches_done=2))
    assert (out["steps"], out["batches_done"], out["completed"]) == (2, 4, 0.0)
    with pytest.raises(TrainingError, match="multiple of grad_accum"):
        train_one_epoch(model, loader, Optimisation(opt), LoopSettings(grad_accum=2, progress=False), comm=LOCAL,
                        start=EpochStart(batches_done=1))


def test_progress_without_terminal_logs_lines(caplog):
    model = LinearMethod()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="medcl.engine"):
        train_one_epoch(model, DataLoader(_lin_data(8), batch_size=2), Optimisation(opt),
                        LoopSettings(progress=True, progress_every=2), comm=LOCAL, epoch=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "medcl.engine"]
    assert any(line.startswith("epoch 2 step 2/4") and "loss" in line for line in lines)


def test_bad_model_output_is_a_training_error():
    class Bad(nn.Module):
        def forward(self, batch):
            return batch["image"].sum()

    with pytest.raises(TrainingError, match="dict with a 'loss'"):
        train_one_epoch(Bad(), DataLoader(_lin_data(4), batch_size=2),
                        Optimisation(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1)), LoopSettings(progress=False),
                        comm=LOCAL)


# ----------------------------------------------------------------------------- device, amp, wrappers
def test_to_device_channels_last():
    b = {"image": torch.randn(2, 3, 4, 5), "views": torch.randn(2, 2, 3, 4, 5), "vol": torch.randn(2, 1, 3, 3, 3),
         "label": torch.tensor([1, 2]), "name": ["a", "b"]}
    out = to_device(b, torch.device("cpu"), channels_last=True)
    assert out["image"].is_contiguous(memory_format=torch.channels_last)
    v1 = out["views"][:, 1]  # each view (B, C, H, W): channels fastest, then W, then H
    assert v1.stride()[1] == 1 and v1.stride()[3] == 3 and v1.stride()[2] == 15
    assert torch.equal(out["image"], b["image"]) and torch.equal(out["views"], b["views"])
    assert out["name"] == ["a", "b"] and out["vol"].is_contiguous()
    vol = to_device({"image": torch.randn(2, 2, 3, 4, 5)}, torch.device("cpu"), channels_last=True)["image"]
    assert vol.is_contiguous(memory_format=torch.channels_last_3d)


def test_amp_decisions():
    assert resolve_amp("fp16", "cpu") == "off"
    assert resolve_amp("bf16", "cpu") == "bf16"
    assert resolve_amp("fp16", "cuda") == "fp16"
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        check_amp("bf61")


def test_bf16_autocast_on_cpu_trains():
    seen = []

    class Probe(LinearMethod):
        def forward(self, batch):
            h = self.lin(batch["image"])
            seen.append(h.dtype)
            return {"loss": F.mse_loss(h.float(), batch["label"])}

    model = Probe()
    out = train_one_epoch(model, DataLoader(_lin_data(4), batch_size=2), Optimisation(torch.optim.SGD(model.parameters(), lr=0.1)),
                          LoopSettings(amp="bf16", progress=False), comm=LOCAL)
    assert seen == [torch.bfloat16, torch.bfloat16] and math.isfinite(out["loss"])
    assert model.lin.weight.dtype == torch.float32


def test_wrappers():
    m = LinearMethod()
    assert maybe_compile(m, False) is m and unwrap_model(m) is m
    with pytest.raises(TrainingError, match="torchrun"):
        wrap_ddp(m, "cpu", sync_bn=True)


# ----------------------------------------------------------------------------- evaluation, features
class MeanMethod(nn.Module):
    def forward(self, batch):
        x = batch["image"]
        return {"loss": x.mean(), "training": torch.tensor(float(self.training))}


def test_evaluate_weights_by_batch_size_and_restores_mode():
    data = [{"image": torch.tensor([float(i)])} for i in range(7)]
    model = MeanMethod().train()
    out = evaluate(model, DataLoader(data, batch_size=3), comm=LOCAL, device="cpu")  # batches of 3, 3, 1
    assert out["loss"] == pytest.approx(3.0) and out["training"] == 0.0
    assert model.training


def test_extract_features():
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(2, 4, 4, generator=g), "label": i % 3, "patient": i // 2, "index": 10 + i}
            for i in range(5)]
    enc = nn.Conv2d(2, 3, 1)
    feats, labels, patients, idx = extract_features(enc, DataLoader(data, batch_size=2), device="cpu")
    assert feats.shape == (5, 3) and feats.dtype == np.float32
    expected = enc(torch.stack([d["image"] for d in data])).mean(dim=(2, 3)).detach().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 0, 1] and patients.tolist() == [0, 0, 1, 1, 2]
    assert idx.tolist() == [10, 11, 12, 13, 14]
