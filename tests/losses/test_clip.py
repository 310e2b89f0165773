"""CLIP's loss against the paper's pseudo-code (Radford et al. 2021, Figure 3) and soft targets by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError
from medcl.losses import LOSSES, CLIPLoss


def _paper(u: np.ndarray, v: np.ndarray, t: float) -> float:
    """Figure 3 of the paper in numpy: l2-normalise, logits = I_e · T_eᵀ · exp(t), symmetric cross-entropy."""
    ie = u / np.linalg.norm(u, axis=1, keepdims=True)
    te = v / np.linalg.norm(v, axis=1, keepdims=True)
    logits = ie @ te.T * math.exp(t)

    def ce(z):  # cross-entropy with labels arange(n), axis 0 = rows
        z = z - z.max(1, keepdims=True)
        return float(-(np.diag(z) - np.log(np.exp(z).sum(1))).mean())

    return (ce(logits) + ce(logits.T)) / 2


def test_hard_targets_are_the_papers_loss():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    loss = CLIPLoss(0.07).double()
    t = float(loss.logit_scale)  # log(1 / 0.07), as stored
    assert t == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert loss(u, v).item() == pytest.approx(_paper(u.numpy(), v.numpy(), t), rel=1e-10)
    assert LOSSES["clip"] is CLIPLoss


def test_the_temperature_learns_and_is_clamped():
    u, v = torch.randn(6, 4), torch.randn(6, 4)
    loss = CLIPLoss(0.07)
    loss(u, v).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1e4))
    assert loss.scale().item() == pytest.approx(100.0)  # CLIP clamps the scale at 100
    fixed = CLIPLoss(0.1, learn_temperature=False)
    assert not fixed.logit_scale.requires_grad


def test_soft_targets_share_the_mass_between_same_class_pairs():
    """S = I: anchor i's target is uniform over the reports of its class; a row without a label stays one-hot."""
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, -1, 0])
    module = CLIPLoss(0.2, similarity=np.eye(2)).double()
    s = math.exp(float(module.logit_scale))  # 1 / 0.2, as stored
    loss = module(u, v, y).item()
    un, vn = (u / u.norm(dim=1, keepdim=True)).numpy(), (v / v.norm(dim=1, keepdim=True)).numpy()
    logits = un @ vn.T * s
    tgt = np.zeros((5, 5))
    for i in range(5):
        same = [j for j in range(5) if y[i] >= 0 and y[j] == y[i]] or [i]
        tgt[i, same] = 1 / len(same)

    def soft_ce(z, t):
        z = z - z.max(1, keepdims=True)
        return float(-(t * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum())

    expected = (soft_ce(logits, tgt) + soft_ce(logits.T, tgt)) / 10  # mean over the 2N anchors
    assert loss == pytest.approx(expected, rel=1e-10)
    # with S = I and no label repeated the targets are CLIP's own
    hard = CLIPLoss(0.2).double()(u, v).item()
    assert CLIPLoss(0.2, similarity=np.eye(5)).double()(u, v, torch.arange(5)).item() == pytest.approx(hard)


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="ones on its diagonal"):
        CLIPLoss(similarity=[[0.5, 0.1], [0.1, 1.0]])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        CLIPLoss(similarity=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(DataError, match="image .* and text .* embeddings differ"):
        CLIPLoss()(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(DataError, match="labels"):
        CLIPLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(3))
