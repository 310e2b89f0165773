"""FastRandFlipd / FastRandRotate90d / FastRandSpatialCropd are MONAI's RandFlipd / RandRotate90d / RandSpatialCropd:
same draws, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor, get_track_meta, set_track_meta

from medcl.transforms.seeding import set_transform_seed
from medcl.transforms.spatial import FastRandFlipd, FastRandRotate90d, FastRandSpatialCropd


@pytest.fixture
def no_meta():
    before = get_track_meta()
    set_track_meta(False)
    yield
    set_track_meta(before)


def _pairs():
    yield mt.RandFlipd, FastRandFlipd, {"spatial_axis": 0}, (3, 8, 6)
    yield mt.RandFlipd, FastRandFlipd, {"spatial_axis": 1}, (1, 8, 6)
    yield mt.RandFlipd, FastRandFlipd, {"spatial_axis": None}, (2, 5, 6, 4)
    yield mt.RandFlipd, FastRandFlipd, {"spatial_axis": [0, -1]}, (2, 5, 6, 4)
    yield mt.RandRotate90d, FastRandRotate90d, {"max_k": 3}, (3, 7, 7)
    yield mt.RandRotate90d, FastRandRotate90d, {"max_k": 3, "spatial_axes": (0, 2)}, (1, 5, 6, 4)
    yield mt.RandSpatialCropd, FastRandSpatialCropd, {"roi_size": (5, 4), "random_size": False}, (3, 8, 6)
    yield mt.RandSpatialCropd, FastRandSpatialCropd, {"roi_size": (8, 6), "random_size": False}, (1, 8, 6)  # whole
    yield mt.RandSpatialCropd, FastRandSpatialCropd, {"roi_size": (3, 4, 2), "random_size": True}, (2, 5, 6, 4)


@pytest.mark.parametrize("monai_cls,fast_cls,kw,shape", list(_pairs()))
def test_plain_tensors_get_monai_s_result_draw_for_draw(no_meta, monai_cls, fast_cls, kw, shape):
    """An image and its mask, 40 calls from one seed: every output equals MONAI's (including the no-op draws)."""
    g = torch.Generator().manual_seed(0)
    x = {"image": torch.rand(*shape, generator=g), "mask": (torch.rand(*shape, generator=g) > 0.5).long()}
    prob = {} if monai_cls is mt.RandSpatialCropd else {"prob": 0.6}  # a crop always applies
    ref, fast = monai_cls(["image", "mask"], **prob, **kw), fast_cls(["image", "mask"], **prob, **kw)
    ref.set_random_state(7)
    fast.set_random_state(7)
    changed = 0
    for _ in range(40):
        want, got = ref(x), fast(x)
        for k in x:
            assert type(got[k]) is torch.Tensor and torch.equal(got[k], want[k])
        changed += not torch.equal(got["image"], x["image"])
    if monai_cls is mt.RandSpatialCropd:
        # a crop to the image's own size keeps it; a smaller one (or a random size, now and then the whole) does not
        assert changed == 0 if kw["roi_size"] == shape[1:] else changed > 30
    else:
        assert 5 < changed < 40  # both branches ran


@pytest.mark.parametrize("monai_cls,fast_cls,kw,shape", list(_pairs())[:1] + list(_pairs())[4:5])
def test_metatensors_take_monai_s_own_path(monai_cls, fast_cls, kw, shape):
    """With metadata on, a MetaTensor comes back a MetaTensor with MONAI's affine and transform record."""
    x = {"image": MetaTensor(torch.rand(*shape), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))}
    ref, fast = monai_cls(["image"], prob=1.0, **kw), fast_cls(["image"], prob=1.0, **kw)
    ref.set_random_state(1)
    fast.set_random_state(1)
    want, got = ref(x)["image"], fast(x)["image"]
    assert isinstance(got, MetaTensor) and torch.equal(got.as_tensor(), want.as_tensor())
    assert torch.equal(got.affine, want.affine) and len(got.applied_operations) == len(want.applied_operations) == 1


def test_per_sample_seeding_seeds_them_like_monai(no_meta):
    """medcl's in-place per-sample seeding gives the same stream as ``set_random_state`` (what MONAI does)."""
    chain = mt.Compose([FastRandFlipd(["image"], prob=0.5, spatial_axis=0), FastRandRotate90d(["image"], prob=0.5)])
    twin = mt.Compose([FastRandFlipd(["image"], prob=0.5, spatial_axis=0), FastRandRotate90d(["image"], prob=0.5)])
    x = {"image": torch.rand(1, 6, 6)}
    for seed in range(12):
        assert set_transform_seed(chain, seed)
        twin.set_random_state(seed=seed)
        np.testing.assert_array_equal(chain(x)["image"].numpy(), twin(x)["image"].numpy())
