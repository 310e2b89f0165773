"""Metrics: classification, calibration, segmentation, and patient-level bootstrap CIs.

Everything takes numpy arrays (torch tensors are accepted) and returns plain dicts/floats, so
results go straight to the tracker and the report.

* :mod:`.classification` — :func:`classification_metrics`, :func:`choose_threshold`
* :mod:`.calibration` — :func:`expected_calibration_error`, :func:`brier_score`,
  :func:`negative_log_likelihood`, :func:`reliability_diagram_data`, :func:`calibration_metrics`,
  :func:`ece_noise_floor`
* :mod:`.bootstrap` — :func:`bootstrap_ci`, :func:`bootstrap_se`, :func:`metrics_with_ci`, :func:`subgroup_metrics`
* :mod:`.segmentation` — :func:`segmentation_metrics` (MONAI Dice and HD95, per class)
"""

from medcl.metrics.bootstrap import BootstrapCI, bootstrap_ci, bootstrap_se, metrics_with_ci, subgroup_metrics
from medcl.metrics.calibration import (
    brier_score,
    calibration_bins,
    calibration_metrics,
    ece_noise_floor,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram_data,
)
from medcl.metrics.classification import (
    TASKS,
    average_precision,
    binary_auroc,
    check_task,
    choose_threshold,
    classification_metrics,
    quadratic_weighted_kappa,
)
from medcl.metrics.segmentation import dice_per_class, hd95_per_class, segmentation_metrics

__all__ = [
    "TASKS",
    "BootstrapCI",
    "average_precision",
    "binary_auroc",
    "bootstrap_ci",
    "bootstrap_se",
    "brier_score",
    "calibration_bins",
    "calibration_metrics",
    "check_task",
    "choose_threshold",
    "classification_metrics",
    "dice_per_class",
    "ece_noise_floor",
    "expected_calibration_error",
    "hd95_per_class",
    "metrics_with_ci",
    "negative_log_likelihood",
    "quadratic_weighted_kappa",
    "reliability_diagram_data",
    "segmentation_metrics",
    "subgroup_metrics",
]
