"""Shared stage helpers: the loaders a stage builds from the config."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medcl.config.schema import PipelineConfig
from medcl.stages.common import make_loader
from medcl.transforms import build_transforms


def _ctx(tmp_path, **data):
    cfg = PipelineConfig(name="t", data={"modality": "oct", **data})
    return SimpleNamespace(cfg=cfg, run_dir=tmp_path, world_size=1, rank=0)


def _items(n=4):
    rng = np.random.default_rng(0)
    return [{"image": rng.uniform(0, 255, (1, 16, 16)).astype(np.float32), "index": i} for i in range(n)]


@pytest.mark.parametrize(("workers", "persistent", "train", "expected"), [
    (2, True, True, True),     # training loaders keep their workers across epochs by default
    (2, True, False, False),   # evaluation loaders are iterated once: no workers left behind
    (2, False, True, False),   # switched off in the config
    (0, True, True, False),    # no worker processes at all
])
def test_train_loaders_keep_their_workers(tmp_path, workers, persistent, train, expected):
    ctx = _ctx(tmp_path, num_workers=workers, persistent_workers=persistent)
    tf = build_transforms("oct", train=train, views=2 if train else 1, spatial_size=[16, 16])
    loader = make_loader(ctx, _items(), tf, batch_size=2, shuffle=train, train=train)
    assert loader.persistent_workers is expected
    assert loader.num_workers == workers


def test_persistent_workers_is_on_by_default():
    assert PipelineConfig(name="t").data.persistent_workers is True


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


@pytest.mark.parametrize(("warmup_steps", "expected_warmup"), [(None, 2), (0, 0), (5, 5)])
def test_supervised_warmup_defaults_to_half_an_epoch_and_follows_warmup_steps(tmp_path, warmup_steps,
                                                                              expected_warmup):
    import torch

    from medcl.stages.common import supervised_setup

    ctx = _ctx(tmp_path)
    w = torch.nn.Parameter(torch.zeros(1))
    tf = build_transforms("oct", train=True, views=1, spatial_size=[16, 16])
    _, opt, sched, _, total = supervised_setup(ctx, _items(8), tf, [w], comm=SimpleNamespace(size=1), batch_size=2,
                                               epochs=1, steps=20, max_steps=None, lr=0.1, weight_decay=0.0,
                                               warmup_steps=warmup_steps)
    lrs = _lrs(sched, expected_warmup + 1)
    # linear warmup (step + 1) / warmup, then the peak: 4 batches per epoch -> half an epoch is 2 steps
    assert lrs[:expected_warmup] == pytest.approx([0.1 * (i + 1) / expected_warmup for i in range(expected_warmup)])
    assert lrs[expected_warmup] == pytest.approx(0.1)
    assert total == 20


@pytest.mark.parametrize(("warmup_epochs", "warmup_steps", "expected_warmup"), [(1.0, None, 3), (1.0, 6, 6),
                                                                                  (2.0, 0, 0)])
def test_pretrain_warmup_steps_override_warmup_epochs(warmup_epochs, warmup_steps, expected_warmup):
    import torch

    from medcl.stages.pretrain import _optimisation

    p = PipelineConfig(name="t", pretrain={"steps": 30, "lr": 0.2, "warmup_epochs": warmup_epochs,
                                           "warmup_steps": warmup_steps}).pretrain
    core = torch.nn.Linear(2, 2)
    _, sched, per_epoch, _, total, warmup = _optimisation(p, core, n_batches=3)
    assert (per_epoch, total, warmup) == (3, 30, expected_warmup)
    lrs = _lrs(sched, expected_warmup + 1)
    assert lrs[:expected_warmup] == pytest.approx([0.2 * (i + 1) / expected_warmup for i in range(expected_warmup)])
    assert lrs[expected_warmup] == pytest.approx(0.2)
