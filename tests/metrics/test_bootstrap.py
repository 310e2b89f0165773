"""Patient-level bootstrap CIs and subgroup breakdowns."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medcl.errors import DataError
from medcl.metrics import bootstrap_ci, classification_metrics, metrics_with_ci, subgroup_metrics
from medcl.metrics.bootstrap import PatientResampler
from medcl.metrics.classification import binary_auroc


def _binary_patients(n_patients=60, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per_patient)
    y_pat = rng.integers(0, 2, n_patients)
    y = y_pat[groups]
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.2, y.size))))
    return y, p, groups


def test_ci_contains_point_and_is_deterministic_per_seed():
    y, p, g = _binary_patients()
    a = bootstrap_ci(binary_auroc, y, p, g, n_boot=300, seed=1)
    point, lo, hi = a  # unpacks as a 3-tuple
    assert point == pytest.approx(binary_auroc(y, p))
    assert lo < point < hi
    assert a.n_valid == 300 and a.n_skipped == 0
    assert bootstrap_ci(binary_auroc, y, p, g, n_boot=300, seed=1) == a
    assert bootstrap_ci(binary_auroc, y, p, g, n_boot=300, seed=2) != a


def test_resampler_keeps_patients_together():
    groups = np.array(["p3", "p1", "p2", "p1", "p3", "p3", "p2"])
    r = PatientResampler(groups, groups.size, seed=0)
    for _ in range(50):
        idx = r.draw()
        drawn = Counter(groups[idx].tolist())
        sizes = Counter(groups.tolist())
        for pat, count in drawn.items():
            # a patient appears a whole number of times, with all of its samples each time
            assert count % sizes[pat] == 0
            times = count // sizes[pat]
            member_idx = Counter(i for i in idx.tolist() if groups[i] == pat)
            assert set(member_idx.values()) == {times}
        assert sum(drawn[p] // sizes[p] for p in drawn) == 3  # 3 patients drawn


def test_patient_level_ci_is_wider_than_sample_level_with_a_dominant_patient():
    rng = np.random.default_rng(4)
    # 40 small patients (2 samples each) with a clean signal, plus one positive patient with
    # 150 samples whose scores are all low: whether that patient is drawn swings the AUROC.
    g_small = np.repeat(np.arange(40), 2)
    y_small = np.repeat(rng.integers(0, 2, 40), 2)
    p_small = np.clip(0.5 + 0.3 * (2 * y_small - 1) + rng.normal(0, 0.15, y_small.size), 0, 1)
    g = np.r_[g_small, np.full(150, 99)]
    y = np.r_[y_small, np.ones(150, dtype=int)]
    p = np.r_[p_small, rng.uniform(0.0, 0.3, 150)]
    _, lo_p, hi_p = bootstrap_ci(binary_auroc, y, p, g, n_boot=400, seed=0)
    _, lo_s, hi_s = bootstrap_ci(binary_auroc, y, p, None, n_boot=400, seed=0)
    assert (hi_p - lo_p) > 2 * (hi_s - lo_s)


def test_single_class_resamples_are_skipped_and_counted():
    # 2 positive patients among 20: about (18/20)^20 = 12 % of resamples have no positive
    g = np.arange(20)
    y = np.zeros(20, dtype=int)
    y[:2] = 1
    p = np.linspace(0, 1, 20)[::-1]
    res = bootstrap_ci(binary_auroc, y, p, g, n_boot=500, seed=0)
    assert 20 < res.n_skipped < 150
    assert res.n_valid + res.n_skipped == 500
    assert np.isfinite(res.lo) and np.isfinite(res.hi)


def test_metrics_with_ci_structure_and_values():
    y, p, g = _binary_patients(seed=3)
    out = metrics_with_ci(y, p, "binary", g, threshold="youden", n_boot=200, seed=0)
    point = classification_metrics(y, p, "binary", threshold=out["_info"]["threshold"])
    for name in ("auroc", "auprc", "sensitivity", "specificity", "balanced_accuracy", "f1_macro", "accuracy"):
        entry = out[name]
        assert set(entry) >= {"value", "ci_low", "ci_high", "n_boot_valid"}
        assert entry["value"] == pytest.approx(point[name])
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert entry["n_boot_valid"] == 200
    assert out["_info"]["n_patients"] == 60 and out["_info"]["n_samples"] == 180
    assert "threshold" not in out and "notes" not in out


def test_metrics_with_ci_multiclass_per_class_keys():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(50), 2)
    y = np.repeat(rng.integers(0, 3, 50), 2)
    z = rng.normal(size=(100, 3))
    z[np.arange(100), y] += 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    out = metrics_with_ci(y, p, "ordinal", g, class_names=["mild", "mod", "sev"], n_boot=100)
    assert "auroc/sev" in out and "qwk" in out
    assert out["qwk"]["ci_low"] <= out["qwk"]["value"] <= out["qwk"]["ci_high"]


def test_subgroup_metrics_counts_and_small_groups_flagged():
    y, p, g = _binary_patients(n_patients=60, per_patient=3, seed=5)
    site = np.where(g < 50, "A", "B")  # B: 10 patients, 30 samples
    site[g >= 58] = "C"  # C: 2 patients — too few
    sex = np.where(g % 2 == 0, "F", "M")
    res = subgroup_metrics(y, p, "binary", g, groups_by={"site": site, "sex": sex}, threshold=0.5,
                           min_samples=20, min_patients=5)
    assert res["site"]["A"]["n_patients"] == 50 and res["site"]["A"]["n_samples"] == 150
    assert res["site"]["B"]["n_patients"] == 8 and res["site"]["B"]["computed"]
    assert not res["site"]["C"]["computed"] and "too few" in res["site"]["C"]["reason"]
    sel = site == "A"
    ref = classification_metrics(y[sel], p[sel], "binary", threshold=0.5)
    assert res["site"]["A"]["metrics"]["auroc"] == pytest.approx(ref["auroc"])
    assert res["sex"]["F"]["n_patients"] == 30
    with_ci = subgroup_metrics(y, p, "binary", g, groups_by={"site": site}, threshold=0.5, n_boot=50)
    assert "ci_low" in with_ci["site"]["A"]["metrics"]["auroc"]


def test_mismatched_groups_is_data_error():
    y, p, g = _binary_patients()
    with pytest.raises(DataError, match="one patient id per sample"):
        bootstrap_ci(binary_auroc, y, p, g[:-1], n_boot=10)
