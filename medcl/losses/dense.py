"""Global + local (dense) contrastive loss for 2D and 3D feature maps.

Chaitanya et al., "Contrastive learning of global and local features for medical image segmentation
with limited annotations", NeurIPS 2020 (arXiv:2006.10511); DeCon / DenseCL-style dense heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.losses._common import check_temperature, compute_dtype
from medcl.losses.ntxent import ntxent

LOCAL_NEGATIVES = ("image", "batch")


def sample_locations(num_locations: int, num_samples: int | None, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Indices of ``min(num_samples, num_locations)`` distinct flattened locations (CPU, sorted)."""
    if num_samples is None or num_samples >= num_locations:
        return torch.arange(num_locations)
    return torch.randperm(num_locations, generator=generator)[:num_samples].sort().values


def local_ntxent_per_image(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent within each image: location ``m`` of view a ↔ location ``m`` of view b.

    Args:
        a: ``(N, M, D)`` L2-normalised local features of view a at M locations.
        b: ``(N, M, D)`` the same for view b, at the same locations.
        temperature: softmax temperature.

    Returns:
        Scalar: mean over the ``2 N M`` anchors; negatives are the other ``2M - 2`` locations of
        the same image (one batched matmul, ``(N, 2M, 2M)`` logits).
    """
    n, m, _ = a.shape
    x = torch.cat([a, b], dim=1)  # (N, 2M, D)
    dt = compute_dtype(a.dtype)
    logits = torch.bmm(x, x.transpose(1, 2)).to(dt) / temperature
    eye = torch.eye(2 * m, dtype=torch.bool, device=a.device)
    logits = logits.masked_fill(eye, torch.finfo(dt).min)
    idx = torch.arange(m, device=a.device)
    target = torch.cat([idx + m, idx]).expand(n, -1)
    return F.cross_entropy(logits.reshape(n * 2 * m, 2 * m), target.reshape(-1))


class DenseContrastLoss(nn.Module):
    """``global_weight * NT-Xent(pooled) + (1 - global_weight) * local NT-Xent(sampled locations)``.

    The global term contrasts average-pooled feature maps of two views (SimCLR). The local term
    contrasts, at ``num_samples`` randomly chosen locations (the same for both views and all images,
    bounding memory at ``(2M)^2`` logits per image), location ``m`` of view a with location ``m`` of
    view b; negatives are the other sampled locations of the same image (``local_negatives="image"``,
    as in Chaitanya et al.'s local loss) or of every image in the batch (``"batch"``). The two views
    must be spatially aligned: warp/crop them onto the same grid before calling (location (i, j[, k])
    of ``f_a`` must show the same anatomy as in ``f_b``).

    Args:
        temperature: softmax temperature.
        spatial_dims: 2 (``(N, D, H, W)``) or 3 (``(N, D, X, Y, Z)``).
        global_weight: weight of the global term in [0, 1].
        num_samples: locations sampled per call (None: all).
        local_negatives: ``"image"`` or ``"batch"``.
        gather_distributed: global term (and ``"batch"`` local term) uses keys from all ranks.

    Shapes:
        ``forward(f_a (N, D, *S), f_b (N, D, *S), generator=None) -> ()``.
    """

    def __init__(self, temperature: float = 0.1, spatial_dims: int = 2, global_weight: float = 0.5,
                 num_samples: int | None = 256, local_negatives: str = "image",
                 gather_distributed: bool = False) -> None:
        """Check the temperature, dimensions, weight, sample count and negatives mode."""
        super().__init__()
        where = "DenseContrastLoss"
        self.temperature = check_temperature(temperature, where)
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims={spatial_dims!r} must be 2 or 3", where=where, fix="use 2 or 3")
        if not 0.0 <= float(global_weight) <= 1.0:
            raise ConfigError(f"global_weight={global_weight!r} is outside [0, 1]", where=where, fix="use e.g. 0.5")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 2):
            raise ConfigError(f"num_samples={num_samples!r} must be an integer >= 2 or None", where=where,
                              fix="use e.g. 256")
        if local_negatives not in LOCAL_NEGATIVES:
            raise ConfigError(f"local_negatives={local_negatives!r} is unknown", where=where,
                              fix=f"{did_you_mean(local_negatives, LOCAL_NEGATIVES)}"
                              f"use one of {', '.join(LOCAL_NEGATIVES)}")
        self.spatial_dims, self.global_weight = spatial_dims, float(global_weight)
        self.num_samples, self.local_negatives = num_samples, local_negatives
        self.gather_distributed = bool(gather_distributed)

    def forward(self, f_a: torch.Tensor, f_b: torch.Tensor, generator: torch.Generator | None = None,
                g_a: torch.Tensor | None = None, g_b: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the global and local NT-Xent terms.

        Args:
            f_a: ``(N, D, *S)`` dense features of view a (the local term's locations).
            f_b: ``(N, D, *S)`` dense features of view b, spatially aligned with ``f_a``.
            generator: seeds the choice of locations (the global RNG without it).
            g_a: ``(N, D', *S')`` map whose mean-pooled features the global term contrasts instead of ``f_a``'s
                (e.g. the encoder's map when the local term is on decoder features).
            g_b: the same for view b.

        Returns:
            Scalar loss.

        Raises:
            DataError: the maps are not both float ``(N, D, *S)`` of the same shape.
        """
        nd = 2 + self.spatial_dims
        if f_a.dim() != nd or f_a.shape != f_b.shape or not f_a.is_floating_point():
            raise DataError(f"f_a {tuple(f_a.shape)} / f_b {tuple(f_b.shape)} must both be (N, D, *S) with "
                            f"{self.spatial_dims} spatial dims", where="DenseContrastLoss",
                            fix="pass aligned dense feature maps of the two views")
        n, d = f_a.shape[:2]
        fa = f_a.reshape(n, d, -1)
        fb = f_b.reshape(n, d, -1)
        total = fa.new_zeros((), dtype=compute_dtype(f_a.dtype))
        if self.global_weight > 0:
            pa = fa.mean(-1) if g_a is None else g_a.flatten(2).mean(-1)
            pb = fb.mean(-1) if g_b is None else g_b.flatten(2).mean(-1)
            g = ntxent(pa, pb, self.temperature, self.gather_distributed)
            total = total + self.global_weight * g
        if self.global_weight < 1:
            idx = sample_locations(fa.shape[-1], self.num_samples, generator).to(f_a.device)
            la = F.normalize(fa.index_select(-1, idx).transpose(1, 2), dim=-1)  # (N, M, D)
            lb = F.normalize(fb.index_select(-1, idx).transpose(1, 2), dim=-1)
            if self.local_negatives == "image":
                loc = local_ntxent_per_image(la, lb, self.temperature)
            else:
                loc = ntxent(la.reshape(-1, d), lb.reshape(-1, d), self.temperature, self.gather_distributed)
            total = total + (1.0 - self.global_weight) * loc
        return total
