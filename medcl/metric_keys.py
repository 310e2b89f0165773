"""The names of the metrics medcl logs to MLflow: built here by the stages, read back here by the report.

* classification: ``test/<model>/<protocol>/f<percent>/<metric>`` (+ ``_ci_low`` / ``_ci_high``), e.g.
  ``test/ssl/linear/f10/auroc``; ``<model>`` is ``ssl``, ``random``, ``raw`` or ``scratch``, ``<protocol>``
  ``linear``, ``knn`` or ``finetune``;
* segmentation: ``test/<model>/f<percent>/<metric>``, e.g. ``test/ssl/f100/dice_mean``;
* one-class detection: ``test/detect/<model>/<scorer>/<metric>``, e.g. ``test/detect/ssl/dsvdd/auroc``;
* slide-level classification: ``test/slides/<model>/<pooling>/f<percent>/<level>/<metric>``, e.g.
  ``test/slides/ssl/attention/f100/slide/auroc`` (``<level>``: ``slide`` or ``patient``);
* multimodal fusion: ``test/fusion/<model>/<condition>/<metric>``, e.g. ``test/fusion/gated/without_oct/auroc``
  (``<model>``: ``gated``, ``ungated``, ``single_<modality>``);
* calibration: ``test/<metric>_before`` / ``test/<metric>_after``, e.g. ``test/ece_after``.
"""

from __future__ import annotations

CI_BOUNDS = ("ci_low", "ci_high")


def fraction_tag(fraction: float) -> str:
    """A label fraction as it appears in metric names: ``0.1 -> "f10"``, ``1.0 -> "f100"``."""
    return f"f{round(float(fraction) * 100):g}"


def model_tag(model: str, protocol: str, fraction: float) -> str:
    """``ssl/linear/f10``: which encoder, evaluated how, trained on which share of the training patients."""
    return f"{model}/{protocol}/{fraction_tag(fraction)}"


def metric_key(tag: str, metric: str, bound: str | None = None) -> str:
    """``test/<tag>/<metric>`` or, with ``bound`` in :data:`CI_BOUNDS`, ``test/<tag>/<metric>_<bound>``."""
    if bound is not None and bound not in CI_BOUNDS:
        raise ValueError(f"bound must be one of {CI_BOUNDS}, not {bound!r}")
    return f"test/{tag}/{metric}" + (f"_{bound}" if bound else "")


def detect_tag(model: str, scorer: str) -> str:
    """``detect/ssl/dsvdd``: one-class detection with which encoder and which anomaly scorer."""
    return f"detect/{model}/{scorer}"


def slides_tag(model: str, pooling: str, fraction: float, level: str) -> str:
    """``slides/ssl/attention/f100/slide``: slide-level classification (encoder, pooling, share of labels, unit)."""
    return f"slides/{model}/{pooling}/{fraction_tag(fraction)}/{level}"


def fusion_tag(model: str, condition: str) -> str:
    """``fusion/gated/without_oct``: a fusion model (or one modality's head) under a test condition."""
    return f"fusion/{model}/{condition}"


def segment_tag(model: str, fraction: float) -> str:
    """``ssl/f10``: the segmentation network's encoder start and its share of the training patients."""
    return f"{model}/{fraction_tag(fraction)}"


def calibration_key(metric: str, when: str) -> str:
    """A test-set calibration metric's key: ``test/ece_before``, ``test/ece_after`` or ``test/ece_if_applied``.

    Without the calibrator, with it, or with the calibrator the cross-validated check refused (what refusing
    it avoided).
    """
    if when not in ("before", "after", "if_applied"):
        raise ValueError(f"when must be 'before', 'after' or 'if_applied', not {when!r}")
    return f"test/{metric}_{when}"
