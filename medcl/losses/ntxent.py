"""NT-Xent / InfoNCE loss of SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, arXiv:2002.05709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import DataError
from medcl.losses._common import check_shape, check_temperature, compute_dtype, gather_rows


def ntxent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, gather_distributed: bool = False
           ) -> torch.Tensor:
    """NT-Xent of two aligned views, mean over the 2N anchors.

    For anchor ``i`` (view a) the positive is ``z_b[i]`` and the negatives are the other 2N-2
    embeddings of both views; symmetric for view b. With ``gather_distributed`` the local 2n anchors
    are contrasted against the keys of all ranks (positives at ``offset + i``).

    Args:
        z_a: ``(N, D)`` embeddings of the first views.
        z_b: ``(N, D)`` embeddings of the second views (row i is the same sample as ``z_a[i]``).
        temperature: softmax temperature.
        gather_distributed: use keys from all ranks (no-op on one process).

    Returns:
        Scalar loss (``-log(1/(2N-1))`` when all embeddings are identical).
    """
    n, d = z_a.shape
    za = F.normalize(z_a, dim=1)
    zb = F.normalize(z_b, dim=1)
    g, _, offset = gather_rows(gather_distributed, torch.cat([za, zb], dim=1))
    big_n = g.shape[0]
    keys = torch.cat([g[:, :d], g[:, d:]], dim=0)  # (2N, D): view a of all samples, then view b
    anchors = torch.cat([za, zb], dim=0)  # (2n, D)
    dt = compute_dtype(z_a.dtype)
    logits = (anchors @ keys.T).to(dt).div_(temperature)  # (2n, 2N), one matmul, fp32 from here on
    idx = torch.arange(n, device=z_a.device) + offset
    self_idx = torch.cat([idx, idx + big_n])
    pos_idx = torch.cat([idx + big_n, idx])
    rows = torch.arange(2 * n, device=z_a.device)
    logits[rows, self_idx] = torch.finfo(dt).min  # large finite negative: never -inf
    return F.cross_entropy(logits, pos_idx)


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy), a.k.a. InfoNCE.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.

    Args:
        temperature: softmax temperature (SimCLR uses 0.1–0.5).
        gather_distributed: contrast local anchors against the keys of all ranks (via
            :func:`medcl.distributed.gather_with_grad`); no-op on one process.

    Shapes:
        ``forward(z_a (N, D), z_b (N, D)) -> ()``.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        """Check the temperature and keep the distributed setting."""
        super().__init__()
        self.temperature = check_temperature(temperature, "NTXentLoss")
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """NT-Xent of two aligned views (see :func:`ntxent`).

        Raises:
            DataError: the views are not both ``(N, D)`` of the same shape.
        """
        check_shape(z_a, 2, "NTXentLoss", "z_a", "(N, D)")
        check_shape(z_b, 2, "NTXentLoss", "z_b", "(N, D)")
        if z_a.shape != z_b.shape:
            raise DataError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} differ", where="NTXentLoss",
                            fix="pass the two views' embeddings with the same (N, D) shape")
        return ntxent(z_a, z_b, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        """Temperature and distributed setting, for ``print(module)``."""
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
