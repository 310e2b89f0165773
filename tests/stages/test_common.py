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
