"""Classification metrics against scikit-learn and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from medcl.errors import ConfigError, DataError
from medcl.metrics import average_precision, binary_auroc, choose_threshold, classification_metrics


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def multiclass_data():
    rng = np.random.default_rng(0)
    n, k = 240, 4
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.2
    return y, _softmax(z)


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(1)
    n = 200
    y = rng.integers(0, 2, n)
    # rounded scores create many ties, which is where AUROC/AP implementations disagree
    p = np.round(np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1), 1)
    return y, p


def test_binary_ranking_metrics_match_sklearn_with_ties(binary_data):
    y, p = binary_data
    assert binary_auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_binary_threshold_metrics_match_sklearn(binary_data):
    y, p = binary_data
    m = classification_metrics(y, p, "binary", threshold=0.6)
    pred = (p >= 0.6).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["threshold"] == 0.6
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    # (N, 2) probabilities are accepted and give the same numbers
    m2 = classification_metrics(y, np.stack([1 - p, p], 1), "binary", threshold=0.6)
    assert m2["auroc"] == m["auroc"] and m2["sensitivity"] == m["sensitivity"]


def test_multiclass_matches_sklearn_and_monai(multiclass_data):
    from monai.metrics import compute_roc_auc

    y, p = multiclass_data
    k = p.shape[1]
    m = classification_metrics(y, p, "multiclass", class_names=["a", "b", "c", "d"])
    pred = p.argmax(1)
    onehot = np.eye(k)[y]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["auroc"] == pytest.approx(
        float(compute_roc_auc(torch.tensor(p), torch.tensor(onehot), average="macro")), abs=1e-6
    )
    per_monai = compute_roc_auc(torch.tensor(p), torch.tensor(onehot), average="none")
    for c, name in enumerate("abcd"):
        assert m[f"auroc/{name}"] == pytest.approx(float(per_monai[c]), abs=1e-6)
        assert m[f"auprc/{name}"] == pytest.approx(average_precision_score(y == c, p[:, c]))
        cm = confusion_matrix(y == c, pred == c).ravel()
        tn, fp, _, _ = cm
        assert m[f"specificity/{name}"] == pytest.approx(tn / (tn + fp))
    assert m["auprc"] == pytest.approx(average_precision_score(onehot, p, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert "qwk" not in m
    assert m["notes"] == []


def test_ordinal_reports_quadratic_weighted_kappa(multiclass_data):
    y, p = multiclass_data
    m = classification_metrics(y, p, "ordinal")
    ref = cohen_kappa_score(y, p.argmax(1), weights="quadratic")
    assert m["qwk"] == pytest.approx(ref)
    # ordinal keeps all multiclass metrics too
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))


def test_multilabel_matches_sklearn_and_masks_unlabelled():
    rng = np.random.default_rng(2)
    n, k = 150, 3
    y = (rng.random((n, k)) < [0.3, 0.5, 0.2]).astype(float)
    p = np.clip(0.35 * y + rng.random((n, k)) * 0.65, 0, 1)
    m = classification_metrics(y, p, "multilabel")
    pred = (p >= 0.5).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    # unlabelled entries (NaN or -1) are excluded label by label
    y_missing = y.copy()
    y_missing[:40, 0] = np.nan
    y_missing[40:60, 1] = -1
    m2 = classification_metrics(y_missing, p, "multilabel")
    assert m2["auroc/0"] == pytest.approx(roc_auc_score(y[40:, 0], p[40:, 0]))
    keep = np.r_[np.arange(40), np.arange(60, n)]
    assert m2["auroc/1"] == pytest.approx(roc_auc_score(y[keep, 1], p[keep, 1]))
    assert m2["auroc/2"] == pytest.approx(m["auroc/2"])


def test_multilabel_threshold_rule_per_label_and_bootstrap():
    from medcl.metrics import metrics_with_ci

    rng = np.random.default_rng(6)
    n = 120
    y = (rng.random((n, 2)) < 0.4).astype(float)
    p = np.clip(0.3 * y + rng.random((n, 2)) * 0.7, 0, 1)
    m = classification_metrics(y, p, "multilabel", threshold="youden")
    assert m["threshold"] == pytest.approx([choose_threshold(y[:, j], p[:, j]) for j in range(2)])
    fixed = classification_metrics(y, p, "multilabel", threshold=m["threshold"])
    assert fixed["sensitivity/1"] == pytest.approx(m["sensitivity/1"])
    out = metrics_with_ci(y, p, "multilabel", np.repeat(np.arange(60), 2), threshold="youden", n_boot=50)
    assert out["_info"]["threshold"] == m["threshold"]
    assert out["sensitivity"]["value"] == pytest.approx(m["sensitivity"])


def test_absent_class_gives_nan_with_note_not_crash(multiclass_data):
    y, p = multiclass_data
    keep = y != 2
    m = classification_metrics(y[keep], p[keep], "multiclass")
    assert np.isnan(m["auroc/2"]) and np.isnan(m["sensitivity/2"])
    assert any("absent" in note and "2" in note for note in m["notes"])
    present = [m[f"auroc/{c}"] for c in (0, 1, 3)]
    assert m["auroc"] == pytest.approx(np.mean(present))
    # binary with a single class
    mb = classification_metrics(np.zeros(10, dtype=int), np.linspace(0, 1, 10), "binary")
    assert np.isnan(mb["auroc"]) and np.isnan(mb["sensitivity"]) and np.isfinite(mb["specificity"])
    assert mb["notes"]


def test_choose_threshold_youden_matches_brute_force(binary_data):
    y, p = binary_data
    t = choose_threshold(y, p, "youden")

    def youden_j(c):
        return recall_score(y, p >= c) + recall_score(1 - y, p < c) - 1

    best = max(youden_j(c) for c in np.unique(p))
    assert youden_j(t) == pytest.approx(best)


def test_choose_threshold_sensitivity_rule(binary_data):
    y, p = binary_data
    t = choose_threshold(y, p, "sensitivity>=0.9")
    assert recall_score(y, p >= t) >= 0.9
    higher = np.unique(p)[np.unique(p) > t]
    if higher.size:  # the next stricter threshold would miss the target
        assert recall_score(y, p >= higher.min()) < 0.9
    ts = choose_threshold(y, p, "specificity >= 0.8")
    assert recall_score(1 - y, p < ts) >= 0.8
    m = classification_metrics(y, p, "binary", threshold="youden")
    assert m["threshold"] == pytest.approx(choose_threshold(y, p, "youden"))
    assert any("optimistic" in n for n in m["notes"])


def test_errors_are_medcl_errors_with_hints(multiclass_data):
    y, p = multiclass_data
    with pytest.raises(ConfigError, match="did you mean 'multiclass'"):
        classification_metrics(y, p, "multiclas")
    with pytest.raises(ConfigError, match="did you mean"):
        choose_threshold((y == 0).astype(int), p[:, 0], "youdn")
    with pytest.raises(DataError):
        classification_metrics(y[:-1], p, "multiclass")
    with pytest.raises(DataError, match="labels must lie"):
        classification_metrics(np.full_like(y, 7), p, "multiclass")


def test_pair_auroc_is_hand_and_till_and_averages_to_sklearns_ovo(multiclass_data):
    """The one-vs-one AUROC of a pair, on its two classes' samples; the mean over all pairs is sklearn's "ovo"."""
    from itertools import combinations

    y, p = multiclass_data
    k = p.shape[1]
    names = [f"c{i}" for i in range(k)]
    pairs = [(names[a], names[b]) for a, b in combinations(range(k), 2)]
    out = classification_metrics(y, p, "multiclass", class_names=names, pairs=pairs)
    for a, b in combinations(range(k), 2):
        m = (y == a) | (y == b)
        # Hand & Till (2001): A(a|b) from column a, A(b|a) from column b, each on the two classes' samples only
        expect = (roc_auc_score(y[m] == a, p[m, a]) + roc_auc_score(y[m] == b, p[m, b])) / 2
        assert out[f"auroc_pair/c{a}_vs_c{b}"] == pytest.approx(expect, abs=1e-12)
    ovo = np.mean([out[f"auroc_pair/{a}_vs_{b}"] for a, b in pairs])
    assert ovo == pytest.approx(roc_auc_score(y, p, multi_class="ovo", average="macro"), abs=1e-12)
    assert not any(key.startswith("auroc_pair/") for key in classification_metrics(y, p, "multiclass"))


def test_a_confusable_pair_at_chance_under_a_high_macro_auroc():
    """Two classes the scores cannot tell apart: their pair sits at 0.5, the one-vs-rest macro AUROC stays high."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 200)
    p = np.where(y[:, None] == 0, [0.8, 0.1, 0.1], [0.1, 0.45, 0.45]) + rng.uniform(0, 1e-3, (600, 3))
    out = classification_metrics(y, p / p.sum(1, keepdims=True), "multiclass", class_names=["a", "b", "c"],
                                 pairs=[("b", "c")])
    assert out["auroc_pair/b_vs_c"] == pytest.approx(0.5, abs=0.06)
    assert out["auroc"] > 0.75


def test_pairs_name_classes_of_a_multiclass_task(multiclass_data, binary_data):
    y, p = multiclass_data
    names = [f"c{i}" for i in range(p.shape[1])]
    with pytest.raises(ConfigError, match="'cc1'.*did you mean 'c1'"):
        classification_metrics(y, p, "multiclass", class_names=names, pairs=[("c0", "cc1")])
    yb, pb = binary_data
    with pytest.raises(ConfigError, match="multiclass and ordinal"):
        classification_metrics(yb, pb, "binary", pairs=[("0", "1")])
