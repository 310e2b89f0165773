"""Metric names: one owner for the format the stages write and the report reads."""

import pytest

from medcl.metric_keys import calibration_key, fraction_tag, metric_key, model_tag, segment_tag


def test_names_as_documented():
    assert [fraction_tag(f) for f in (0.01, 0.1, 0.25, 1.0)] == ["f1", "f10", "f25", "f100"]
    assert model_tag("ssl", "linear", 0.1) == "ssl/linear/f10"
    assert metric_key("ssl/linear/f10", "auroc") == "test/ssl/linear/f10/auroc"
    assert metric_key("ssl/linear/f10", "auroc", "ci_low") == "test/ssl/linear/f10/auroc_ci_low"
    assert metric_key(segment_tag("scratch", 1.0), "dice_mean", "ci_high") == "test/scratch/f100/dice_mean_ci_high"
    assert calibration_key("ece", "after") == "test/ece_after"


def test_unknown_bound_or_moment_is_refused():
    with pytest.raises(ValueError, match="ci_low"):
        metric_key("t", "auroc", "low")
    with pytest.raises(ValueError, match="before"):
        calibration_key("ece", "later")
