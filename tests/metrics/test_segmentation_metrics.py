"""Segmentation metric wrappers against MONAI and a hand-computed mask pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcl.errors import DataError
from medcl.metrics import dice_per_class, hd95_per_class, segmentation_metrics


def _pair():
    """Ground truth: a 4x4 square of class 1; prediction: the same square shifted one column."""
    target = np.zeros((1, 8, 8), dtype=np.int64)
    target[0, 2:6, 2:6] = 1
    pred = np.zeros((1, 8, 8), dtype=np.int64)
    pred[0, 2:6, 3:7] = 1
    return pred, target


def test_known_answer_dice_and_hd95():
    pred, target = _pair()
    m = segmentation_metrics(pred, target, num_classes=2)
    assert m["dice/1"] == pytest.approx(2 * 12 / (16 + 16))  # 12 pixels overlap
    assert m["hd95/1"] == pytest.approx(1.0)  # one-pixel shift
    assert m["dice"] == pytest.approx(0.75) and m["notes"] == []
    # spacing is honoured: the shift is along the last axis
    m_mm = segmentation_metrics(pred, target, num_classes=2, spacing=(2.0, 3.0))
    assert m_mm["hd95/1"] == pytest.approx(3.0)


def test_matches_monai_functional_on_random_masks():
    from monai.metrics import compute_dice, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (2, 1, 12, 12))
    pred = np.where(rng.random(target.shape) < 0.8, target, rng.integers(0, 3, target.shape))
    oh = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a[:, 0]), 3).permute(0, 3, 1, 2).float()  # noqa: E731
    ref_d = compute_dice(oh(pred), oh(target), include_background=False).numpy()
    ref_h = compute_hausdorff_distance(oh(pred), oh(target), include_background=False, percentile=95).numpy()
    np.testing.assert_allclose(dice_per_class(pred, target, 3), ref_d, rtol=1e-6)
    np.testing.assert_allclose(hd95_per_class(pred, target, 3), ref_h, rtol=1e-6)
    m = segmentation_metrics(pred, target, 3, class_names=["bg", "a", "b"])
    assert m["dice/a"] == pytest.approx(ref_d[:, 0].mean(), rel=1e-6)
    assert m["hd95/b"] == pytest.approx(ref_h[:, 1].mean(), rel=1e-6)
    assert "dice/bg" not in m


def test_absent_class_is_nan_with_note():
    pred, target = _pair()
    m = segmentation_metrics(pred, target, num_classes=3)  # class 2 appears nowhere
    assert np.isnan(m["dice/2"]) and np.isnan(m["hd95/2"])
    assert m["dice"] == pytest.approx(0.75)
    assert any("class 2" in n for n in m["notes"])


def test_labels_outside_range_are_data_errors():
    pred, target = _pair()
    with pytest.raises(DataError, match="num_classes"):
        segmentation_metrics(pred * 5, target, num_classes=2)
