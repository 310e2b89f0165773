"""Segmentation metrics: thin per-class wrappers over MONAI's DiceMetric and HausdorffDistanceMetric.

Dice (Dice 1945) and the 95th-percentile symmetric Hausdorff distance (HD95; Huttenlocher et al.
1993, as used by the Medical Segmentation Decathlon). MONAI does the math; this module only
converts label maps to one-hot, passes the voxel spacing (so HD95 is in millimetres), and names
the per-class values. MONAI is imported inside the functions (``import monai`` is slow).

Inputs are integer label maps ``(B, *spatial)`` or ``(B, 1, *spatial)`` (0 = background) for both
prediction and ground truth; ``num_classes`` counts the background.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from medcl.errors import DataError


def _to_onehot(labels, num_classes: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if t.dtype.is_floating_point:
        if not torch.all(t == torch.round(t)):
            raise DataError(f"{name} must be an integer label map", where=name,
                            fix="argmax the network output before computing metrics")
        t = t.long()
    if t.ndim < 3:
        raise DataError(f"{name} must be (B, *spatial) or (B, 1, *spatial), got {tuple(t.shape)}", where=name,
                        fix="add the batch dimension")
    if t.ndim >= 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.min() < 0 or t.max() >= num_classes:
        raise DataError(f"{name} holds labels outside [0, {num_classes})", where=name,
                        fix="check num_classes (it counts the background)")
    return torch.nn.functional.one_hot(t.long(), num_classes).movedim(-1, 1).float()


def _names(num_classes: int, include_background: bool, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        names = [str(i) for i in range(num_classes)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != num_classes:
            raise DataError(f"{len(names)} class names for {num_classes} classes", where="class_names",
                            fix="name every class, background included")
    return names if include_background else names[1:]


def dice_per_class(pred, target, num_classes: int, *, include_background: bool = False) -> np.ndarray:
    """Dice per case and class with ``monai.metrics.DiceMetric``.

    Returns:
        ``(B, C')`` float array (``C' = num_classes - 1`` without background); NaN where the class
        is absent from the ground truth (MONAI ``ignore_empty=True``).
    """
    from monai.metrics import DiceMetric

    if pred is None or target is None:
        raise DataError("pred and target are required", where="dice_per_class", fix="pass both label maps")
    p = _to_onehot(pred, num_classes, "pred")
    y = _to_onehot(target, num_classes, "target")
    metric = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)
    return metric(p, y).cpu().numpy().astype(np.float64)


def hd95_per_class(
    pred, target, num_classes: int, *, include_background: bool = False, spacing=None
) -> np.ndarray:
    """95th-percentile Hausdorff distance per case and class (``HausdorffDistanceMetric(percentile=95)``).

    Args:
        pred: predicted label map ``(B, *S)`` or ``(B, 1, *S)``, integers in ``[0, num_classes)``.
        target: ground-truth label map, same layout.
        num_classes: ``K`` including background 0.
        include_background: also score class 0.
        spacing: voxel spacing per spatial axis (mm); ``None`` = voxel units.

    Returns:
        ``(B, C')`` float array; NaN/inf where the class is empty in prediction or ground truth.
    """
    from monai.metrics import HausdorffDistanceMetric

    p = _to_onehot(pred, num_classes, "pred")
    y = _to_onehot(target, num_classes, "target")
    metric = HausdorffDistanceMetric(include_background=include_background, percentile=95, reduction="none")
    kwargs = {} if spacing is None else {"spacing": [float(s) for s in spacing]}
    with warnings.catch_warnings():
        # empty classes are reported in our notes; MONAI would warn once per case and class
        warnings.filterwarnings("ignore", message=r"the (ground truth|prediction) of class", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy", category=FutureWarning)
        out = metric(p, y, **kwargs).cpu().numpy().astype(np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def segmentation_metrics(
    pred,
    target,
    num_classes: int,
    *,
    include_background: bool = False,
    class_names: Sequence[str] | None = None,
    spacing=None,
) -> dict:
    """Mean Dice and HD95, overall and per class.

    Returns:
        ``{"dice", "hd95", "dice/<class>", "hd95/<class>", "notes"}``: per-class values average the
        cases where they are defined; the summary averages the classes.
    """
    names = _names(num_classes, include_background, class_names)
    dice = dice_per_class(pred, target, num_classes, include_background=include_background)
    hd = hd95_per_class(pred, target, num_classes, include_background=include_background, spacing=spacing)
    out: dict = {}
    notes: list[str] = []
    per_d, per_h = [], []
    for j, name in enumerate(names):
        d = dice[:, j]
        h = hd[:, j]
        per_d.append(float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"))
        per_h.append(float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"))
        if not np.isfinite(d).all():
            notes.append(f"class {name}: empty in the ground truth of {int((~np.isfinite(d)).sum())} case(s)")
        if not np.isfinite(h).all():
            notes.append(f"class {name}: HD95 undefined (empty mask) in {int((~np.isfinite(h)).sum())} case(s)")
        out[f"dice/{name}"] = per_d[-1]
        out[f"hd95/{name}"] = per_h[-1]
    out["dice"] = float(np.nanmean(per_d)) if np.isfinite(per_d).any() else float("nan")
    out["hd95"] = float(np.nanmean(per_h)) if np.isfinite(per_h).any() else float("nan")
    out["notes"] = notes
    return out
