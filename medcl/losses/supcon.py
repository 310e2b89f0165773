"""Supervised contrastive loss, "out" formulation (Khosla et al., NeurIPS 2020, arXiv:2004.11362)."""

from __future__ import annotations

import torch
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.losses._common import (
    ViewBatch,
    check_ids,
    check_shape,
    check_temperature,
    masked_contrastive,
    view_batch,
    weighted_mean,
)

CONTRAST_MODES = ("all", "one")


def check_contrast_mode(mode: str, where: str) -> str:
    """Return ``mode`` when it is ``"all"`` or ``"one"``.

    Raises:
        ConfigError: any other mode (with a did-you-mean), naming ``where``.
    """
    if mode not in CONTRAST_MODES:
        raise ConfigError(f"contrast_mode={mode!r} is unknown", where=where,
                          fix=f"{did_you_mean(mode, CONTRAST_MODES)}use one of {', '.join(CONTRAST_MODES)}")
    return mode


def label_positives(vb: ViewBatch, label_index: int = 0) -> torch.Tensor:
    """``(A, K)`` bool positives: other views of the same sample, or the same label (labels ``>= 0``).

    Negative labels (``-1``: unlabelled) only match their own sample's views, so unlabelled rows
    behave as in SimCLR.
    """
    pos = vb.same_sample
    la, lk = vb.anchor_ids[label_index], vb.key_ids[label_index]
    if la is not None:
        pos = pos | ((la[:, None] == lk[None, :]) & (la[:, None] >= 0))
    return pos & ~vb.self_mask


class SupConLoss(nn.Module):
    """Supervised contrastive loss, "out" average over positives (Khosla et al. 2020).

    For anchor ``a`` with positive set ``P(a)`` (same label, other views of itself) and all other
    keys ``A(a)``: ``L_a = -(T/T_base) / |P(a)| * sum_{p in P(a)} log softmax_{A(a)}(z_a·z_p / T)``;
    the loss is the mean over anchors that have at least one positive (others are skipped, not NaN).
    With ``labels=None`` it is SimCLR's NT-Xent over V views.

    Args:
        temperature: softmax temperature T.
        base_temperature: loss scale ``T / base_temperature`` (None → T, i.e. no scaling; the
            reference code uses 0.07).
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (only view 0 is).
        gather_distributed: keys (and labels) from all ranks; no-op on one process. Each rank returns
            the mean over its own anchors, so DDP's average over ranks is the global mean whenever
            every rank has the same number of anchors with positives (always true with V >= 2).

    Shapes:
        ``forward(features (N, V, D), labels (N,) int or None) -> ()``. Labels ``< 0`` mean unlabelled.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None,
                 contrast_mode: str = "all", gather_distributed: bool = False) -> None:
        """Check the temperatures and contrast mode and keep the settings."""
        super().__init__()
        where = type(self).__name__
        self.temperature = check_temperature(temperature, where)
        self.base_temperature = (self.temperature if base_temperature is None
                                 else check_temperature(base_temperature, where, "base_temperature"))
        self.contrast_mode = check_contrast_mode(contrast_mode, where)
        self.gather_distributed = bool(gather_distributed)

    def _views(self, features: torch.Tensor, *ids: torch.Tensor | None, names: tuple[str, ...] = ("labels",),
               label_ndim: int = 1) -> ViewBatch:
        where = type(self).__name__
        check_shape(features, 3, where, "features", "(N, V, D)")
        for t, name in zip(ids, names):
            check_ids(t, features.shape[0], where, name)
            if t is not None and t.dim() != label_ndim:
                layout = "(N,) integer ids" if label_ndim == 1 else "(N, K) multi-hot"
                raise DataError(f"{name} must be {layout}, got shape {tuple(t.shape)}", where=where,
                                fix=f"pass {name} as {layout}")
        return view_batch(features, list(ids), contrast_mode=self.contrast_mode, gather=self.gather_distributed)

    def _finish(self, vb: ViewBatch, pos: torch.Tensor, bias: torch.Tensor | None = None,
                anchor_weight: torch.Tensor | None = None, exclude: torch.Tensor | None = None) -> torch.Tensor:
        exclude = vb.self_mask if exclude is None else exclude
        loss, valid = masked_contrastive(vb.anchors, vb.keys, pos, exclude, self.temperature, bias)
        return (self.temperature / self.base_temperature) * weighted_mean(loss, valid, anchor_weight,
                                                                           self.gather_distributed)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """SupCon loss of a batch (SimCLR's NT-Xent over the views when ``labels`` is None).

        Args:
            features: ``(N, V, D)`` L2-normalised projections of ``V`` views.
            labels: ``(N,)`` int class indices (``< 0`` = unlabelled), or None.

        Returns:
            Scalar loss.
        """
        vb = self._views(features, labels)
        return self._finish(vb, label_positives(vb))

    def extra_repr(self) -> str:
        """Temperatures, contrast mode and distributed setting, for ``print(module)``."""
        return (f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"contrast_mode={self.contrast_mode!r}, gather_distributed={self.gather_distributed}")
