"""The online probe's pieces: effective rank (RankMe) against hand computations, the kNN probe, best-keeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medcl.tasks.monitor import OnlineProbe, effective_rank


def test_effective_rank_of_known_spectra():
    # D orthogonal directions of equal energy: p_k = 1/D, entropy log D, rank D
    assert effective_rank(np.eye(6)) == pytest.approx(6.0, rel=1e-5)
    # one direction (rank-1 matrix): every other singular value is 0 -> p = (1, eps, ...) -> rank ~1
    z = np.outer(np.arange(1, 9), np.ones(5))
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-3)
    # two singular values 3 and 1: p = (0.75, 0.25), H = -(.75 ln .75 + .25 ln .25)
    z = np.diag([3.0, 1.0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(z) == pytest.approx(math.exp(h), rel=1e-5)
    assert math.isnan(effective_rank(np.ones((1, 4))))


def test_effective_rank_sees_collapse_of_random_features():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(200, 32, generator=g)
    collapsed = torch.randn(200, 1, generator=g) @ torch.randn(1, 32, generator=g) + 1e-3 * healthy
    assert effective_rank(healthy) > 20 > 2 > effective_rank(collapsed)


def test_probe_scores_the_queries_and_keeps_the_best():
    """Features that carry the label give AUROC 1 and are kept; noise later does not replace them."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    good = np.eye(3)[y] * 5 + 0.1 * rng.normal(size=(30, 3))
    state = {"feats": good}
    labels = {i: int(y[i]) for i in range(30)}

    def extract(loader):  # the "loader" is the list of dataset indices
        idx = np.asarray(loader)
        return state["feats"][idx], idx

    kept = []
    probe = OnlineProbe(extract, list(range(0, 30, 2)), list(range(1, 30, 2)), labels, "multiclass",
                        ["a", "b", "c"], every=5, save_best=lambda step, auc: kept.append((step, auc)))
    out = probe(5)
    assert out["probe/knn_auroc"] == pytest.approx(1.0)
    assert set(out) >= {"probe/effective_rank", "probe/effective_rank/a", "probe/effective_rank/c"}
    assert kept == [(5, 1.0)]
    state["feats"] = rng.normal(size=(30, 3))  # the encoder got worse
    out = probe(10)
    assert out["probe/knn_auroc"] < 1.0 and out["probe/best_knn_auroc"] == 1.0
    assert kept == [(5, 1.0)] and probe.best_step == 5
