"""CLOCS views of an ECG record (Kiyasseh et al. 2021): adjacent non-overlapping segments (CMSC), lead groups of one
window (CMLC), both (CMSMLC). A ramp signal makes every sample's position readable from its value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError
from medcl.transforms import build_transforms
from medcl.transforms.seeding import set_transform_seed
from medcl.transforms.signal import LEAD_GROUPS_12

T, FS, WINDOW_S = 1000, 100, 2.0
L = int(FS * WINDOW_S)
# lead k, sample t -> 10000 k + t (+ 1 so that no real sample is 0)
RAMP = (np.arange(T, dtype=np.float32)[None, :] + 1 + 10000 * np.arange(12, dtype=np.float32)[:, None])


def _views(mode, views=2, seed=0, signal=RAMP, **kw):
    tr = build_transforms("ecg", train=True, views=views, sampling_rate=FS, window_s=WINDOW_S, view_mode=mode,
                          amplitude_prob=0, wander_prob=0, noise_prob=0, lead_dropout=0, normalize="fixed", **kw)
    set_transform_seed(tr, seed)
    return tr({"image": signal})["views"]


def _start(view):
    """Time position of the view's first sample (from any lead that was kept)."""
    lead = int(torch.nonzero(view[:, 0]).flatten()[0])
    return int(view[lead, 0].item() - 1 - 10000 * lead)


@pytest.mark.parametrize("views", [2, 3])
def test_cmsc_views_are_adjacent_non_overlapping_segments_of_the_record(views):
    for seed in range(5):
        v = _views("cmsc", views=views, seed=seed)
        assert v.shape == (views, 12, L)
        starts = [_start(v[i]) for i in range(views)]
        assert all(b - a == L for a, b in zip(starts, starts[1:]))  # adjacent, no overlap, no gap
        assert starts[0] >= 0 and starts[-1] + L <= T
        for i in range(views):  # each view is exactly the record's samples there, all leads
            np.testing.assert_array_equal(v[i].numpy(), RAMP[:, starts[i]:starts[i] + L])


def test_cmlc_views_are_lead_groups_of_one_window():
    groups = [LEAD_GROUPS_12[k] for k in sorted(LEAD_GROUPS_12)]
    v = _views("cmlc", views=2, seed=4)
    s = _start(v[0])
    assert _start(v[1]) == s
    for i, group in enumerate(groups):
        kept = torch.nonzero(v[i].abs().sum(1)).flatten().tolist()
        assert kept == list(group)
        np.testing.assert_array_equal(v[i][list(group)].numpy(), RAMP[list(group), s:s + L])


def test_cmsmlc_views_are_adjacent_segments_each_with_its_lead_group():
    groups = [LEAD_GROUPS_12[k] for k in sorted(LEAD_GROUPS_12)]
    v = _views("cmsmlc", views=2, seed=1)
    assert _start(v[1]) - _start(v[0]) == L
    for i, group in enumerate(groups):
        assert torch.nonzero(v[i].abs().sum(1)).flatten().tolist() == list(group)


def test_views_follow_the_seed():
    assert torch.equal(_views("cmsc", seed=7), _views("cmsc", seed=7))
    assert not all(torch.equal(_views("cmsc", seed=7), _views("cmsc", seed=s)) for s in range(8, 12))


def test_a_record_shorter_than_the_span_is_zero_padded_at_the_end():
    short = RAMP[:, :300]
    v = _views("cmsc", signal=short)
    assert _start(v[0]) == 0 and _start(v[1]) == L
    np.testing.assert_array_equal(v[1][:, :100].numpy(), short[:, 200:300])
    assert (v[1][:, 100:] == 0).all()


def test_bad_view_mode_and_missing_leads_are_named():
    with pytest.raises(ConfigError, match="did you mean 'cmsc'"):
        _views("cmcs")
    with pytest.raises(DataError, match="needs 12 leads, the record has 6"):
        _views("cmlc", signal=RAMP[:6])
