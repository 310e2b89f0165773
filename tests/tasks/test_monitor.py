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


def _probe(state, labels, **kw):
    def extract(loader):  # the "loader" is the list of dataset indices
        idx = np.asarray(loader)
        return state["feats"][idx], idx

    kept = []
    n = len(labels)
    probe = OnlineProbe(extract, list(range(0, n, 2)), list(range(1, n, 2)), labels, "multiclass",
                        ["a", "b", "c"], every=5, save_best=lambda step, rec: kept.append((step, rec["probe_auroc"])),
                        **kw)
    return probe, kept


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_probe_scores_the_queries_and_keeps_the_best(protocol):
    """Features that carry the label give AUROC 1 and are kept; noise later does not replace them."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    state = {"feats": np.eye(3)[y] * 5 + 0.1 * rng.normal(size=(60, 3))}
    probe, kept = _probe(state, {i: int(y[i]) for i in range(60)}, protocol=protocol)
    out = probe(5)
    assert out["probe/auroc"] == out[f"probe/{protocol}_auroc"] == pytest.approx(1.0)
    assert out["probe/knn_auroc"] == pytest.approx(1.0)
    assert set(out) >= {"probe/effective_rank", "probe/effective_rank/a", "probe/effective_rank/c", "probe/auroc_se"}
    assert kept == [(5, 1.0)]
    state["feats"] = rng.normal(size=(60, 3))  # the encoder got worse: AUROC near chance, far below 1 - SE
    out = probe(10)
    assert out["probe/auroc"] < 0.8 and out["probe/best_auroc"] == 1.0
    assert kept == [(5, 1.0)] and probe.best_step == 5 and probe.kept_step == 5


def test_linear_probe_sees_a_direction_that_cosine_knn_misses():
    """The label lives in three small coordinates beside large noise: cosine kNN is near chance, the linear probe
    (standardised features) separates the classes — and with ``protocol=linear`` it is that AUROC that selects."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    feats = np.concatenate([0.05 * np.eye(3)[y] + 0.005 * rng.normal(size=(120, 3)), rng.normal(size=(120, 30))], 1)
    probe, _ = _probe({"feats": feats}, {i: int(y[i]) for i in range(120)}, protocol="linear")
    out = probe(5)
    assert out["probe/linear_auroc"] > 0.95 and out["probe/knn_auroc"] < 0.75
    assert out["probe/auroc"] == out["probe/linear_auroc"]


def test_one_se_rule_keeps_the_latest_encoder_within_one_se_of_the_best():
    """Online, the kept step is the offline definition: the latest step whose AUROC >= max AUROC - SE(argmax)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        aurocs = rng.uniform(0.5, 1.0, n).round(2)  # rounded: ties happen, the first of equal maxima is the best
        ses = rng.choice([0.0, 0.01, 0.03, 0.1, float("nan")], n)
        probe, _ = _probe({"feats": np.zeros((6, 2))}, {i: 0 for i in range(6)})
        for step, (a, s) in enumerate(zip(aurocs, ses), start=1):
            probe.consider(step, float(a), float(s))
        i_best = int(np.argmax(aurocs))
        tol = 0.0 if np.isnan(ses[i_best]) else ses[i_best]
        expected = max(i for i in range(n) if aurocs[i] >= aurocs[i_best] - tol) + 1
        assert probe.kept_step == expected and probe.best_step == i_best + 1
        assert probe.best == aurocs[i_best]


def test_one_se_rule_resumes_where_it_stopped():
    """A resumed probe given the kept encoder's record chooses as an uninterrupted one would."""
    seq = [(1, 0.80, 0.05), (2, 0.90, 0.05), (3, 0.84, 0.02), (4, 0.87, 0.01), (5, 0.86, 0.01)]
    whole, _ = _probe({"feats": np.zeros((6, 2))}, {i: 0 for i in range(6)})
    first, _ = _probe({"feats": np.zeros((6, 2))}, {i: 0 for i in range(6)})
    for step, a, s in seq:
        whole.consider(step, a, s)
    for step, a, s in seq[:3]:
        first.consider(step, a, s)
    resumed, _ = _probe({"feats": np.zeros((6, 2))}, {i: 0 for i in range(6)}, resume=first.record())
    for step, a, s in seq[3:]:
        resumed.consider(step, a, s)
    assert whole.kept_step == resumed.kept_step == 5  # 0.86 >= 0.90 - 0.05; step 3 (0.84) was not kept
    assert resumed.best_step == 2


def test_bootstrap_se_of_a_patient_mean_matches_the_formula():
    """SE of a mean over patients resampled with replacement: sqrt(var_pop(patient means) / n_patients) (equal
    patient sizes; Efron & Tibshirani 1993 §5.2); ignoring the grouping understates it when a patient's samples
    agree."""
    from medcl.metrics import bootstrap_se

    rng = np.random.default_rng(0)
    per_patient = rng.normal(size=40)
    p = np.repeat(per_patient, 5) + 0.01 * rng.normal(size=200)
    y = np.tile([0, 1], 100)
    groups = np.repeat(np.arange(40), 5)
    mean = lambda yy, pp: float(pp.mean())  # noqa: E731
    expected = math.sqrt(np.var(np.repeat(per_patient, 1)) / 40)
    assert bootstrap_se(mean, y, p, groups, n_boot=4000) == pytest.approx(expected, rel=0.06)
    assert bootstrap_se(mean, y, p, None, n_boot=4000) < 0.6 * expected


def test_a_kept_encoder_written_before_the_one_se_rule_still_resumes(tmp_path):
    """An ``encoder-best.pt`` of an older run (only its kNN AUROC and step) reads back as its own best, SE 0."""
    from medcl.checkpoint_file import save_checkpoint
    from medcl.tasks.monitor import best_record

    path = tmp_path / "encoder-best.pt"
    save_checkpoint(path, {"encoder": {}, "step": 24, "probe_auroc": 0.875})
    assert best_record(path) == {"probe_auroc": 0.875, "step": 24, "probe_best_auroc": 0.875, "probe_best_se": 0.0,
                                 "probe_best_step": 24, "probe_protocol": "knn"}
    assert best_record(tmp_path / "none.pt") is None
