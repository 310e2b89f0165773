"""Class-balanced SupCon for long-tailed medical labels (Cui et al. 2019; BCL, Zhu et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean
from medcl.losses._common import compute_dtype
from medcl.losses.supcon import SupConLoss, label_positives

BALANCE_MODES = ("class_balanced", "prototypes", "both")


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class weights ``∝ (1 - beta) / (1 - beta^n_c)``, normalised to sum to the number of classes.

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019. Classes with
    no sample are treated as having one.

    Args:
        counts: ``(C,)`` samples per class.
        beta: in [0, 1); the effective number of ``n`` samples is ``(1 - beta^n) / (1 - beta)``, so
            ``beta -> 1`` approaches inverse-frequency weights and ``beta = 0`` gives equal weights.

    Returns:
        ``(C,)`` weights.
    """
    n = counts.to(torch.float64).clamp_min(1.0)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), n))
    return w * (len(w) / w.sum())


class BalancedSupConLoss(SupConLoss):
    """SupCon ("out") that keeps rare classes from being drowned by frequent ones.

    * ``mode="class_balanced"``: each anchor's loss is weighted by its class's effective-number weight
      (Cui et al. 2019), from ``class_counts`` (training-set counts) or, when they are not given,
      counts accumulated over the batches seen in training mode.
    * ``mode="prototypes"``: Balanced Contrastive Learning (Zhu et al., "Balanced Contrastive Learning
      for Long-Tailed Visual Recognition", CVPR 2022): ``num_classes`` learnable prototypes join the
      keys (each a positive for its class) and the denominator averages over classes,
      ``sum_c (1/|c|) sum_{k in c} exp(s_ak / T)``, implemented as a ``-log |c|`` logit bias.
    * ``mode="both"``: the two together.

    Args:
        temperature: softmax temperature.
        mode: ``"class_balanced"``, ``"prototypes"`` or ``"both"``.
        num_classes: number of classes C (labels in ``[0, C)``; ``< 0`` = unlabelled).
        dim: embedding size D (needed for prototypes).
        beta: effective-number hyper-parameter in [0, 1).
        class_counts: optional ``(C,)`` training-set counts per class.
        base_temperature, contrast_mode, gather_distributed: as in :class:`SupConLoss`.

    Shapes:
        ``forward(features (N, V, D), labels (N,) int64) -> ()``.
    """

    def __init__(self, temperature: float = 0.1, mode: str = "class_balanced", num_classes: int = 2,
                 dim: int | None = None, beta: float = 0.999, class_counts: Sequence[int] | None = None,
                 base_temperature: float | None = None, contrast_mode: str = "all",
                 gather_distributed: bool = False) -> None:
        """Check the mode, class count, beta and counts; create the prototypes for ``prototypes``/``both``."""
        super().__init__(temperature, base_temperature, contrast_mode, gather_distributed)
        where = "BalancedSupConLoss"
        if mode not in BALANCE_MODES:
            raise ConfigError(f"mode={mode!r} is unknown", where=where,
                              fix=f"{did_you_mean(mode, BALANCE_MODES)}use one of {', '.join(BALANCE_MODES)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r} must be a positive integer", where=where,
                              fix="set num_classes to the number of classes")
        if not 0.0 <= float(beta) < 1.0:
            raise ConfigError(f"beta={beta!r} must be in [0, 1)", where=where, fix="use e.g. beta=0.999")
        self.mode, self.num_classes, self.beta = mode, num_classes, float(beta)
        if class_counts is not None:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
            if counts.shape != (num_classes,) or bool((counts < 0).any()):
                raise ConfigError(f"class_counts has {counts.numel()} entries for {num_classes} classes",
                                  where=where, fix="give one non-negative count per class")
        else:
            counts = torch.zeros(num_classes, dtype=torch.float64)
        self.fixed_counts = class_counts is not None
        self.register_buffer("counts", counts)
        if mode in ("prototypes", "both"):
            if not isinstance(dim, int) or dim < 1:
                raise ConfigError(f"dim={dim!r} is required for prototypes", where=where,
                                  fix="set dim to the projection size D")
            self.prototypes = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)
        else:
            self.prototypes = None

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Class-balanced SupCon loss of a batch.

        In training mode without ``class_counts`` the class counts are first updated with the batch's labels.

        Args:
            features: ``(N, V, D)`` L2-normalised projections of ``V`` views.
            labels: ``(N,)`` int64 class indices (``< 0`` = unlabelled: only its own views are positives).

        Returns:
            Scalar loss.
        """
        vb = self._views(features, labels)
        la, lk = vb.anchor_ids[0].long(), vb.key_ids[0].long()
        c = self.num_classes
        weight = None
        if self.mode in ("class_balanced", "both"):
            if not self.fixed_counts and self.training:
                first = lk[: lk.numel() // features.shape[1]]  # keys are view-major: one view's labels
                seen = first[(first >= 0) & (first < c)]
                self.counts += torch.bincount(seen, minlength=c).to(self.counts)
            cw = effective_number_weights(self.counts, self.beta).to(features.device)
            weight = torch.where((la >= 0) & (la < c), cw[la.clamp(0, c - 1)], torch.ones_like(la, dtype=cw.dtype))
        if self.prototypes is None:
            return self._finish(vb, label_positives(vb), anchor_weight=weight)
        # BCL: prototypes are extra keys (positive for their class); class-averaged denominator.
        protos = nn.functional.normalize(self.prototypes.to(vb.keys.dtype), dim=-1)
        vb.keys = torch.cat([vb.keys, protos], dim=0)
        dev = features.device
        cls = torch.arange(c, device=dev)
        lk = torch.cat([lk, cls])
        vb.key_ids = [lk]
        vb.key_sample = torch.cat([vb.key_sample, torch.full((c,), -1, device=dev, dtype=vb.key_sample.dtype)])
        vb.key_view = torch.cat([vb.key_view, torch.full((c,), -1, device=dev, dtype=vb.key_view.dtype)])
        pos = label_positives(vb)
        # |class of key k| among the keys, minus the anchor itself when it is in that class (as in BCL).
        valid_k = (lk >= 0) & (lk < c)
        dt = compute_dtype(features.dtype)
        per_cls = torch.bincount(lk[valid_k], minlength=c).to(dt)
        size = torch.where(valid_k, per_cls[lk.clamp(0, c - 1)], torch.ones_like(lk, dtype=dt))
        size = size[None, :] - ((la[:, None] == lk[None, :]) & valid_k[None, :]).to(dt)
        bias = -torch.log(size.clamp_min(1.0))
        return self._finish(vb, pos, bias, anchor_weight=weight)

    def extra_repr(self) -> str:
        """The SupCon settings plus mode, class count and beta, for ``print(module)``."""
        return f"{super().extra_repr()}, mode={self.mode!r}, num_classes={self.num_classes}, beta={self.beta}"
