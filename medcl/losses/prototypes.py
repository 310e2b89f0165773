"""Cross-entropy to FIXED, maximally separated class prototypes (neural collapse by design)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.losses._common import check_temperature, compute_dtype, ddp_denominator

PROTOTYPE_METHODS = ("auto", "etf", "optimized")


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``(C, D)`` simplex equiangular tight frame: unit vectors with pairwise cosine ``-1/(C-1)``.

    ``M = sqrt(C/(C-1)) * U (I - 11^T/C)`` with ``U`` a seeded random ``(D, C)`` orthonormal basis
    (Papyan, Han, Donoho 2020; Yang et al. 2022 fix the classifier to it). Needs ``D >= C``.
    """
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    c = num_classes
    m = (c / (c - 1)) ** 0.5 * u @ (torch.eye(c, dtype=torch.float64) - 1.0 / c)
    return F.normalize(m.T, dim=1).float()


def optimized_prototypes(num_classes: int, dim: int, seed: int = 0, steps: int = 1000) -> torch.Tensor:
    """``(C, D)`` unit vectors spread on the sphere by minimising a smooth max of pairwise cosines.

    Deterministic (seeded, float64 on CPU). Used when ``D < C`` where no simplex ETF exists
    (Mettes et al., "Hyperspherical Prototype Networks", NeurIPS 2019).
    """
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(num_classes, dim, generator=g, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    eye = torch.eye(num_classes, dtype=torch.bool)
    for _ in range(steps):
        z = F.normalize(p, dim=1)
        cos = (z @ z.T).masked_fill(eye, -2.0)
        loss = torch.logsumexp(cos / 0.05, dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return F.normalize(p.detach(), dim=1).float()


class PrototypeLoss(nn.Module):
    """Cross-entropy of cosine logits to fixed class prototypes spread on the hypersphere.

    The prototypes are not learned: a simplex ETF when ``dim >= num_classes`` (the geometry neural
    collapse converges to), otherwise optimised once for maximal separation, both deterministic given
    ``seed``. ``loss = CE(normalize(f) @ P^T / T, y)``, averaged over labelled rows (``y < 0`` ignored).

    Args:
        num_classes: C (at least 2).
        dim: embedding size D.
        temperature: softmax temperature.
        method: ``"auto"``, ``"etf"`` (needs D >= C) or ``"optimized"``.
        seed: seed of the prototype construction.
        gather_distributed: under DDP, average over the labelled rows of *every* rank (a per-rank mean differs
            from the global one when the ranks hold different numbers of labelled rows); no-op on one process.

    Shapes:
        ``forward(features (N, D) or (N, V, D), labels (N,) int64) -> ()``.
    """

    def __init__(self, num_classes: int = 2, dim: int = 128, temperature: float = 0.1, method: str = "auto",
                 seed: int = 0, gather_distributed: bool = False) -> None:
        """Check the settings and build the fixed prototypes ``(C, D)`` (a buffer, not trained)."""
        super().__init__()
        where = "PrototypeLoss"
        self.temperature = check_temperature(temperature, where)
        if not isinstance(num_classes, int) or num_classes < 2 or not isinstance(dim, int) or dim < 2:
            raise ConfigError(f"num_classes={num_classes!r}, dim={dim!r}: need integers >= 2", where=where,
                              fix="set num_classes (>= 2) and the projection dim")
        if method not in PROTOTYPE_METHODS:
            raise ConfigError(f"method={method!r} is unknown", where=where,
                              fix=f"{did_you_mean(method, PROTOTYPE_METHODS)}"
                              f"use one of {', '.join(PROTOTYPE_METHODS)}")
        if method == "etf" and dim < num_classes:
            raise ConfigError(f"a simplex ETF of {num_classes} classes needs dim >= {num_classes}, got {dim}",
                              where=where, fix="use method='optimized' or a larger projection dim")
        use_etf = method == "etf" or (method == "auto" and dim >= num_classes)
        protos = simplex_etf(num_classes, dim, seed) if use_etf else optimized_prototypes(num_classes, dim, seed)
        self.register_buffer("prototypes", protos)
        self.num_classes, self.dim, self.method = num_classes, dim, "etf" if use_etf else "optimized"
        self.gather_distributed = bool(gather_distributed)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine logits ``(..., C)`` (float32) of features ``(..., D)``."""
        z = F.normalize(features, dim=-1)
        return (z @ self.prototypes.to(z.dtype).T).to(compute_dtype(z.dtype)) / self.temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the cosine logits over the labelled rows (every view counts as a row).

        Args:
            features: ``(N, D)`` or ``(N, V, D)`` projections.
            labels: ``(N,)`` int64 class indices (outside ``[0, C)`` = unlabelled, ignored).

        Returns:
            Scalar loss (0 when nothing is labelled).

        Raises:
            DataError: features not ``(N, D)`` / ``(N, V, D)`` of width ``dim``, or labels not one per row.
        """
        if features.dim() not in (2, 3) or features.shape[-1] != self.dim or labels.shape[:1] != features.shape[:1]:
            raise DataError(f"features {tuple(features.shape)} / labels {tuple(labels.shape)} do not match "
                            f"(N, D={self.dim}) or (N, V, D) with labels (N,)", where="PrototypeLoss",
                            fix="pass projections of size dim and one label per row")
        if features.dim() == 3:
            labels = labels[:, None].expand(-1, features.shape[1]).reshape(-1)
            features = features.reshape(-1, features.shape[-1])
        logits = self.logits(features)
        labels = labels.long()
        valid = (labels >= 0) & (labels < self.num_classes)
        ce = F.cross_entropy(logits, labels.clamp(0, self.num_classes - 1), reduction="none")
        ce = torch.where(valid, ce, torch.zeros_like(ce))
        return ce.sum() / ddp_denominator(valid.sum().to(ce.dtype), self.gather_distributed).clamp_min(
            torch.finfo(ce.dtype).tiny)

    def extra_repr(self) -> str:
        """Classes, width, temperature and prototype method, for ``print(module)``."""
        return f"num_classes={self.num_classes}, dim={self.dim}, temperature={self.temperature}, method={self.method!r}"
