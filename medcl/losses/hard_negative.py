"""SupCon with up-weighted confusable negatives (expert-guided hard negatives)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean
from medcl.losses._common import check_temperature
from medcl.losses.supcon import SupConLoss, label_positives


def _class_index(name: object, classes: Sequence[str] | None, where: str) -> int:
    if isinstance(name, bool):
        name = str(name)
    if isinstance(name, int):
        if name < 0 or (classes is not None and name >= len(classes)):
            raise ConfigError(f"hard pair class index {name} is out of range", where=where,
                              fix="use class indices in [0, number of classes)")
        return name
    if classes is None:
        raise ConfigError(f"hard pair names class {name!r} but no classes list was given", where=where,
                          fix="pass classes=[...] (names in label order) or use integer class indices")
    if name not in classes:
        raise ConfigError(f"hard pair class {name!r} is not in classes", where=where,
                          fix=f"{did_you_mean(name, classes)}use one of {', '.join(map(str, classes))}")
    return list(classes).index(name)


class HardNegativeSupConLoss(SupConLoss):
    """SupCon ("out") where negatives from confusable class pairs count ``hard_weight`` times in the denominator.

    Expert-guided contrastive learning: clinicians name class pairs that are easy to confuse (e.g.
    ``("drusen", "CNV")``); for an anchor of one class, keys of the other class enter the softmax
    denominator with weight ``w``, implemented as adding ``log w`` to their logits (stable, one matmul).
    Positives and all other negatives are unchanged, so ``hard_weight=1`` is exactly :class:`SupConLoss`.

    Args:
        temperature: softmax temperature.
        hard_pairs: pairs of class names (needs ``classes``) or class indices; symmetric.
        hard_weight: weight ``w > 0`` of hard negatives (> 1 emphasises them).
        classes: class names in label-index order.
        base_temperature: loss scale ``T / base_temperature`` (None: no scaling).
        contrast_mode: ``"all"`` or ``"one"``.
        gather_distributed: keys and labels from all ranks; no-op on one process.

    Shapes:
        ``forward(features (N, V, D), labels (N,) int64) -> ()``; labels ``< 0`` are unlabelled.
    """

    def __init__(self, temperature: float = 0.1, hard_pairs: Sequence[Sequence[object]] = (),
                 hard_weight: float = 2.0, classes: Sequence[str] | None = None,
                 base_temperature: float | None = None, contrast_mode: str = "all",
                 gather_distributed: bool = False) -> None:
        """Resolve the hard pairs to class indices and build the ``log w`` bias table between classes."""
        super().__init__(temperature, base_temperature, contrast_mode, gather_distributed)
        where = "HardNegativeSupConLoss"
        w = check_temperature(hard_weight, where, "hard_weight")
        pairs = []
        for pair in hard_pairs:
            if isinstance(pair, str) or len(pair) != 2:
                raise ConfigError(f"hard pair {pair!r} is not a pair", where=where,
                                  fix='write each pair as ["class_a", "class_b"] or [0, 1]')
            pairs.append((_class_index(pair[0], classes, where), _class_index(pair[1], classes, where)))
        n_cls = len(classes) if classes is not None else (max((max(p) for p in pairs), default=-1) + 1)
        # Row/column n_cls is the "other" class (unlabelled or unlisted labels): bias 0.
        table = torch.zeros(n_cls + 1, n_cls + 1, dtype=torch.float64)
        for a, b in pairs:
            table[a, b] = table[b, a] = math.log(w)
        self.register_buffer("log_weight", table, persistent=False)
        self.hard_pairs = pairs
        self.hard_weight = w
        self.classes = list(classes) if classes is not None else None

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """SupCon loss of a batch with the hard negatives weighted ``hard_weight`` times.

        Args:
            features: ``(N, V, D)`` L2-normalised projections of ``V`` views.
            labels: ``(N,)`` int64 class indices (``< 0`` = unlabelled).

        Returns:
            Scalar loss.
        """
        vb = self._views(features, labels)
        pos = label_positives(vb)
        other = self.log_weight.shape[0] - 1
        la = vb.anchor_ids[0].long()
        lk = vb.key_ids[0].long()
        la = torch.where((la >= 0) & (la < other), la, torch.full_like(la, other))
        lk = torch.where((lk >= 0) & (lk < other), lk, torch.full_like(lk, other))
        bias = self.log_weight.to(features.device)[la[:, None], lk[None, :]]
        bias = bias.masked_fill(pos, 0.0)  # only negatives are re-weighted
        return self._finish(vb, pos, bias)

    def extra_repr(self) -> str:
        """The SupCon settings plus the hard pairs and their weight, for ``print(module)``."""
        return f"{super().extra_repr()}, hard_pairs={self.hard_pairs}, hard_weight={self.hard_weight}"
