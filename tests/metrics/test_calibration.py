"""Calibration metrics (vs torchmetrics, scikit-learn, naive loops) and post-hoc calibrators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from medcl.errors import ConfigError
from medcl.metrics import (
    brier_score,
    calibration_metrics,
    ece_noise_floor,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram_data,
)
from medcl.tasks.calibration import (
    CALIBRATORS,
    TemperatureScaler,
    calibration_report,
    calibrator_from_dict,
    get_calibrator,
    logits_to_probs,
)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _calibrated_logits(n, k, seed, scale=1.0):
    """Logits of a perfectly calibrated model (labels drawn from its softmax), times ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, k))
    p = _softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z * scale, y


@pytest.fixture
def mc():
    rng = np.random.default_rng(0)
    n, k = 400, 5
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) * 2
    z[np.arange(n), y] += 1.0
    return y, _softmax(z)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_equal_width_ece_and_mce_match_torchmetrics(mc, n_bins):
    y, p = mc
    r = expected_calibration_error(y, p, "multiclass", n_bins=n_bins, scheme="equal-width")
    ref_ece = MulticlassCalibrationError(num_classes=p.shape[1], n_bins=n_bins, norm="l1")
    ref_mce = MulticlassCalibrationError(num_classes=p.shape[1], n_bins=n_bins, norm="max")
    pt, yt = torch.tensor(p), torch.tensor(y)
    assert r["ece"] == pytest.approx(float(ref_ece(pt, yt)), abs=1e-6)
    assert r["mce"] == pytest.approx(float(ref_mce(pt, yt)), abs=1e-6)
    assert r["n_bins"] == n_bins and r["scheme"] == "equal-width" and r["estimator"] == "top-label"


def test_binary_and_multilabel_ece_match_torchmetrics():
    rng = np.random.default_rng(3)
    n = 300
    p = rng.random((n, 2)) * 0.98 + 0.01
    y = (rng.random((n, 2)) < p**1.5).astype(float)
    r = expected_calibration_error(y[:, 0], p[:, 0], "binary", n_bins=10)
    ref = BinaryCalibrationError(n_bins=10, norm="l1")(torch.tensor(p[:, 0]), torch.tensor(y[:, 0]).long())
    assert r["ece"] == pytest.approx(float(ref), abs=1e-6)
    assert r["estimator"] == "binary"
    rml = expected_calibration_error(y, p, "multilabel", n_bins=10, class_names=["x", "z"])
    per = [float(BinaryCalibrationError(n_bins=10)(torch.tensor(p[:, j]), torch.tensor(y[:, j]).long()))
           for j in range(2)]
    assert rml["ece/x"] == pytest.approx(per[0], abs=1e-6)
    assert rml["ece/z"] == pytest.approx(per[1], abs=1e-6)
    assert rml["ece"] == pytest.approx(np.mean(per), abs=1e-6)


def _naive_adaptive_ece(conf, correct, n_bins):
    order = np.argsort(conf, kind="mergesort")
    total = 0.0
    worst = 0.0
    for chunk in np.array_split(order, n_bins):
        if len(chunk) == 0:
            continue
        gap = abs(np.mean(correct[chunk]) - np.mean(conf[chunk]))
        total += gap * len(chunk) / len(conf)
        worst = max(worst, gap)
    return total, worst


@pytest.mark.parametrize("n_bins", [4, 10, 15])
def test_adaptive_ece_matches_naive_reference(mc, n_bins):
    y, p = mc
    r = expected_calibration_error(y, p, "multiclass", n_bins=n_bins, scheme="adaptive")
    e, m = _naive_adaptive_ece(p.max(1), (p.argmax(1) == y).astype(float), n_bins)
    assert r["ece"] == pytest.approx(e, abs=1e-12)
    assert r["mce"] == pytest.approx(m, abs=1e-12)
    assert r["scheme"] == "adaptive" and r["n_bins"] == n_bins
    counts = reliability_diagram_data(y, p, n_bins, "adaptive")["bin_count"]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(y)


def test_brier_and_nll_match_sklearn(mc):
    y, p = mc
    onehot = np.eye(p.shape[1])[y]
    assert brier_score(y, p) == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    assert negative_log_likelihood(y, p) == pytest.approx(log_loss(y, p, labels=range(p.shape[1])))
    yb, pb = (y == 0).astype(int), p[:, 0]
    assert brier_score(yb, pb, "binary") == pytest.approx(brier_score_loss(yb, pb))
    assert negative_log_likelihood(yb, pb, "binary") == pytest.approx(log_loss(yb, pb))


def test_reliability_diagram_known_case():
    # 4 samples at confidence 0.25 (1 positive), 4 at 0.75 (3 positives): perfectly calibrated
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    d = reliability_diagram_data(y, p, n_bins=4, scheme="equal-width", task="binary")
    assert d["bin_edges"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert d["bin_count"] == [0, 4, 0, 4]
    assert d["bin_accuracy"][1] == pytest.approx(0.25) and d["bin_accuracy"][3] == pytest.approx(0.75)
    assert d["bin_confidence"][0] is None
    assert expected_calibration_error(y, p, "binary", n_bins=4)["ece"] == pytest.approx(0.0)
    json.dumps(d)  # JSON-ready


def test_unknown_scheme_is_config_error(mc):
    y, p = mc
    with pytest.raises(ConfigError, match="did you mean 'adaptive'"):
        expected_calibration_error(y, p, scheme="adaptiv")


# ----------------------------------------------------------------------------- calibrators


def test_temperature_scaling_recovers_t_and_lowers_nll():
    z_val, y_val = _calibrated_logits(3000, 4, seed=0, scale=5.0)
    z_test, y_test = _calibrated_logits(2000, 4, seed=1, scale=5.0)
    cal = TemperatureScaler("multiclass").fit(z_val, y_val)
    assert cal.temperature == pytest.approx(5.0, rel=0.15)
    before = negative_log_likelihood(y_test, logits_to_probs(z_test, "multiclass"))
    after = negative_log_likelihood(y_test, cal.transform(z_test))
    assert after < before - 0.1
    assert np.array_equal(cal.transform(z_test).argmax(1), z_test.argmax(1))  # accuracy unchanged
    # torch tensors in, same answer
    cal_t = TemperatureScaler("multiclass").fit(torch.tensor(z_val), torch.tensor(y_val))
    assert cal_t.temperature == pytest.approx(cal.temperature, rel=1e-6)


def test_per_label_temperature_for_multilabel_and_binary():
    rng = np.random.default_rng(5)
    n = 4000
    z = rng.normal(0, 2, size=(n, 2))
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-z))).astype(float)
    scaled = z * np.array([4.0, 0.5])  # over-confident label 0, under-confident label 1
    cal = TemperatureScaler("multilabel").fit(scaled, y)
    assert cal.temperature == pytest.approx([4.0, 0.5], rel=0.15)
    calb = TemperatureScaler("binary").fit(scaled[:, 0], y[:, 0])
    assert calb.temperature == pytest.approx(4.0, rel=0.15)
    assert calb.transform(scaled[:, 0]).shape == (n,)


def test_platt_targets_by_hand():
    """Platt 1999, section 2.2: a positive's target (N+ + 1) / (N+ + 2), a negative's 1 / (N- + 2); multiclass the
    same rule per class, the rest shared by the other classes; unlabelled entries stay NaN."""
    from medcl.tasks.calibration import platt_targets

    # 3 positives, 2 negatives: 4/5 and 1/4
    b = platt_targets(torch.tensor([[1.0], [1.0], [0.0], [1.0], [0.0]], dtype=torch.float64), "binary", 1)
    assert b[:, 0].tolist() == pytest.approx([0.8, 0.8, 0.25, 0.8, 0.25])
    # multilabel, label 1 has one unlabelled entry: 1 positive, 1 negative -> 2/3 and 1/3
    m = platt_targets(torch.tensor([[1.0, float("nan")], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
                      "multilabel", 2)
    assert m[:, 0].tolist() == pytest.approx([2 / 3, 0.25, 0.25])
    assert m[1:, 1].tolist() == pytest.approx([2 / 3, 1 / 3]) and torch.isnan(m[0, 1])
    # three classes with 2, 1, 0 samples: class 0 -> 3/4 on it, 1/8 on each other class; class 1 -> 2/3, 1/6
    c = platt_targets(torch.tensor([0, 0, 1]), "multiclass", 3)
    assert c.tolist() == [pytest.approx([0.75, 0.125, 0.125])] * 2 + [pytest.approx([1 / 6, 2 / 3, 1 / 6])]
    # two classes: exactly the binary rule (class 1 = positive)
    two = platt_targets(torch.tensor([1, 1, 0, 1, 0]), "multiclass", 2)
    assert two[:, 1].tolist() == pytest.approx(b[:, 0].tolist())


def test_platt_targets_keep_the_temperature_finite_on_a_set_without_errors():
    """A calibration set the model separates without an error: against the labels (the default) the NLL falls as
    T -> 0, so the fit sharpens the logits as far as the optimiser goes; against Platt's targets it stops at the
    minimum of their cross-entropy, found here independently by scipy on the objective written out in numpy."""
    from scipy.optimize import minimize_scalar

    r = np.random.default_rng(0)
    y = r.integers(0, 2, 60)
    margin = np.where(y == 1, 1, -1) * r.uniform(1.0, 6.0, 60)  # every sample on its right side
    z = np.stack([-margin / 2, margin / 2], axis=1)
    hard = TemperatureScaler("multiclass").fit(z, y)
    assert hard.target_smoothing == "none" and hard.temperature < 0.1  # sharpened towards certainty
    n1, n0 = int(y.sum()), int((1 - y).sum())
    t1 = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))  # target probability of class 1

    def ce(log_t):
        p1 = 1 / (1 + np.exp(-margin / np.exp(log_t)))
        return -np.mean(t1 * np.log(p1) + (1 - t1) * np.log(1 - p1))

    best = np.exp(minimize_scalar(ce, bounds=(-6, 6), method="bounded", options={"xatol": 1e-10}).x)
    platt = TemperatureScaler("multiclass", target_smoothing="platt").fit(z, y)
    assert platt.temperature == pytest.approx(best, rel=1e-4)
    assert 0.3 < platt.temperature < 3  # finite: a model right on every sample is not called certain
    assert TemperatureScaler("binary", target_smoothing="platt").fit(margin, y).temperature == pytest.approx(
        best, rel=1e-4)
    # the setting is kept with the state, and an unknown value is refused
    assert calibrator_from_dict(json.loads(json.dumps(platt.to_dict()))).target_smoothing == "platt"
    with pytest.raises(ConfigError, match="target smoothing"):
        TemperatureScaler("multiclass", target_smoothing="laplace")


@pytest.mark.parametrize("method", ["temperature", "vector", "dirichlet"])
def test_every_calibrator_lowers_nll_on_overconfident_model(method):
    z_val, y_val = _calibrated_logits(1500, 3, seed=2, scale=4.0)
    z_test, y_test = _calibrated_logits(1500, 3, seed=3, scale=4.0)
    # add a class bias that temperature cannot fix but vector/Dirichlet can
    z_val = z_val + np.array([1.5, 0.0, 0.0])
    z_test = z_test + np.array([1.5, 0.0, 0.0])
    cal = get_calibrator(method, task="multiclass").fit(z_val, y_val)
    before = negative_log_likelihood(y_test, logits_to_probs(z_test, "multiclass"))
    after = negative_log_likelihood(y_test, cal.transform(z_test))
    assert after < before - 0.1
    assert cal.fit_nll["after"] < cal.fit_nll["before"]
    if method != "temperature":
        temp_after = negative_log_likelihood(y_test, TemperatureScaler().fit(z_val, y_val).transform(z_test))
        assert after < temp_after


@pytest.mark.parametrize("method", list(CALIBRATORS))
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_state_round_trip_through_json(method, task):
    rng = np.random.default_rng(7)
    if task == "multiclass":
        z, y = _calibrated_logits(300, 3, seed=7, scale=3.0)
    elif task == "binary":
        z = rng.normal(0, 3, 300)
        y = (rng.random(300) < 1 / (1 + np.exp(-z / 3))).astype(int)
    else:
        z = rng.normal(0, 3, (300, 2))
        y = (rng.random((300, 2)) < 1 / (1 + np.exp(-z / 3))).astype(float)
    cal = get_calibrator(method, task=task).fit(z, y)
    state = json.loads(json.dumps(cal.to_dict()))
    back = calibrator_from_dict(state)
    assert type(back) is type(cal)
    np.testing.assert_allclose(back.transform(z), cal.transform(z), rtol=1e-10)


def test_unknown_calibrator_and_unfitted_use_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        get_calibrator("temprature")
    with pytest.raises(ConfigError, match="before fit"):
        TemperatureScaler().transform(np.zeros((2, 3)))


def test_calibration_report_before_after():
    z_val, y_val = _calibrated_logits(1500, 3, seed=10, scale=4.0)
    z_test, y_test = _calibrated_logits(1500, 3, seed=11, scale=4.0)
    rep = calibration_report(z_val, y_val, z_test, y_test, method="temperature", n_bins=10)
    assert rep["n_bins"] == 10 and rep["estimator"] == "top-label"
    for key in ("ece", "ece_adaptive", "mce", "brier", "nll"):
        assert key in rep["before"] and key in rep["after"]
    assert rep["after"]["ece"] < rep["before"]["ece"]
    assert rep["after"]["nll"] < rep["before"]["nll"]
    assert rep["after"]["brier"] < rep["before"]["brier"]
    assert rep["temperature"] == pytest.approx(4.0, rel=0.2)
    assert set(rep["reliability_after"]) == {"equal-width", "adaptive"}
    assert sum(rep["reliability_before"]["equal-width"]["bin_count"]) == len(y_test)
    direct = calibration_metrics(y_test, rep["probs_after"], n_bins=10)
    assert direct["ece"] == pytest.approx(rep["after"]["ece"])
    # the floor of this test set: the over-confident model's ECE is far above what perfect calibration shows
    assert 0 < rep["before"]["ece_floor"] < rep["before"]["ece_floor_q95"] < rep["before"]["ece"] / 2
    assert rep["after"]["ece_floor"] > 0


# ----------------------------------------------------------------------------- the ECE of perfect calibration
def test_ece_noise_floor_by_hand():
    # certain predictions: the outcomes of a perfectly calibrated model are certain too, ECE 0
    assert ece_noise_floor(np.ones(50, int), np.ones(50), "binary")["mean"] == 0.0
    assert ece_noise_floor(np.zeros(20, int), np.eye(4)[[0, 1, 2, 3] * 5], "multiclass")["q95"] == 0.0
    # one case at risk 0.5: its outcome is 0 or 1, the ECE |outcome - 0.5| = 0.5 in every draw
    one = ece_noise_floor([1], [0.5], "binary", draws=50)
    assert one["mean"] == one["q95"] == 0.5 and one["draws"] == 50
    # one case at risk 0.3: ECE 0.7 with probability 0.3, else 0.3: mean 0.42
    assert ece_noise_floor([0], [0.3], "binary", draws=4000)["mean"] == pytest.approx(0.42, abs=0.01)
    with pytest.raises(ConfigError, match="draws must be >= 1"):
        ece_noise_floor([0], [0.3], "binary", draws=0)
    # one bin, N cases at risk 0.5: ECE = |mean of N Bernoulli(0.5) - 0.5|, E = sqrt(2/pi) * 0.5 / sqrt(N)
    n = 400
    got = ece_noise_floor(np.zeros(n, int), np.full(n, 0.5), "binary", n_bins=1, draws=4000)["mean"]
    assert got == pytest.approx(np.sqrt(2 / np.pi) * 0.5 / np.sqrt(n), rel=0.06)


def test_ece_noise_floor_covers_the_ece_of_truly_calibrated_models_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    inside, floors = [], {}
    for rep in range(200):
        z = rng.normal(size=(150, 3)) * 2
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.array([rng.choice(3, p=row) for row in p])  # labels drawn from the probabilities: calibrated
        ece = expected_calibration_error(y, p, "multiclass")["ece"]
        inside.append(ece <= ece_noise_floor(y, p, "multiclass", draws=100, seed=rep + 1)["q95"])
    assert 0.88 <= np.mean(inside) <= 0.995  # a 95 % range
    for n in (100, 1600):
        p = rng.uniform(0.05, 0.95, n)
        floors[n] = ece_noise_floor(np.zeros(n, int), p, "binary")["mean"]
    assert floors[1600] < 0.4 * floors[100]  # ~ 1 / sqrt(N): a 16x larger set, a ~4x lower floor


# ----------------------------------------------------------------------------- applying only what helps
def test_cross_validated_calibration_applies_a_calibrator_that_helps_out_of_sample():
    from medcl.tasks.calibration import cross_validated_calibration

    z, y = _calibrated_logits(400, 3, seed=11, scale=4.0)  # over-confident by a factor 4
    groups = np.arange(400) // 4  # 100 patients of 4 samples
    d = cross_validated_calibration(z, y, groups, "temperature", task="multiclass", folds=5)
    assert d["applied"] and d["n_patients"] == 100 and d["cv"]["folds"] == 5
    assert d["cv"]["nll_after"] < d["cv"]["nll_before"]
    assert d["calibrator"].temperature == pytest.approx(4.0, rel=0.25)


def test_cross_validated_calibration_refuses_a_calibrator_that_hurts_out_of_sample():
    """Binary logits already at their maximum-likelihood temperature (sigmoid(z) = 0.8 = the positive rate):
    a fold that holds both negatives sees only positives when fitting, sharpens without bound, and the held-out
    negatives then cost far more than the uncalibrated model — so scaling is not applied."""
    from medcl.tasks.calibration import IdentityCalibrator, cross_validated_calibration

    z = np.full(10, np.log(0.8 / 0.2))
    y = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    d = cross_validated_calibration(z, y, np.arange(10), "temperature", task="binary", folds=5, seed=0)
    assert not d["applied"] and isinstance(d["calibrator"], IdentityCalibrator)
    assert d["cv"]["nll_after"] >= d["cv"]["nll_before"]
    assert "did not lower the NLL on held-out calibration folds" in d["reason"]
    # the identity keeps the model's own probabilities
    np.testing.assert_allclose(d["calibrator"].transform(z), 0.8, atol=1e-6)


def test_cross_validated_calibration_refuses_a_calibrator_that_raises_the_held_out_ece():
    """A weak binary model (logits barely related to the labels): a temperature lowers the held-out NLL a little
    but moves the held-out probabilities away from the observed frequencies — not applied, as on the CT/MRI demos.
    Which of the two rules fires is read from the returned cross-validated figures, recomputed here."""
    from medcl.metrics.calibration import calibration_metrics
    from medcl.tasks.calibration import IdentityCalibrator, cross_validated_calibration, logits_to_probs

    r = np.random.default_rng(152)  # a draw where the two rules disagree (found by search)
    y = r.integers(0, 2, 60)
    z = r.normal(0, 0.8, 60) + 0.3 * (y - 0.5)
    # min_gain_se=0: the fall is within noise here, which alone refuses it (the next test); this one is about the ECE
    d = cross_validated_calibration(z, y, np.repeat(np.arange(20), 3), "temperature", task="binary", folds=5, seed=0,
                                    min_gain_se=0.0)
    cv = d["cv"]
    assert cv["nll_after"] < cv["nll_before"] and cv["ece_after"] > cv["ece_before"]
    assert cv["ece_before"] == pytest.approx(calibration_metrics(y, logits_to_probs(z, "binary"), "binary",
                                                                 n_bins=15)["ece"])
    assert not d["applied"] and isinstance(d["calibrator"], IdentityCalibrator)
    assert "raised their ECE" in d["reason"]


def test_cross_validated_calibration_refuses_a_gain_within_noise():
    """A calibrated model on 23 patients of 3 samples (the OCT demo's validation size): a temperature lowers the
    held-out NLL a little, by less than one patient-level SE of the fall — not applied; with ``min_gain_se=0``
    (any fall) the same figures apply it. The fall and its SE are recomputed here from their definitions."""
    from medcl.metrics.calibration import negative_log_likelihood
    from medcl.tasks.calibration import IdentityCalibrator, cross_validated_calibration

    z, y = _calibrated_logits(69, 3, seed=13)  # a draw whose held-out NLL falls (found by search)
    groups = np.arange(69) // 3
    d = cross_validated_calibration(z, y, groups, "temperature", task="multiclass", folds=5, seed=0)
    cv = d["cv"]
    assert 0 < cv["nll_before"] - cv["nll_after"] < cv["nll_gain_se"]
    assert cv["nll_before"] == pytest.approx(negative_log_likelihood(y, _softmax(z), "multiclass"))
    assert not d["applied"] and isinstance(d["calibrator"], IdentityCalibrator)
    assert "within 1 standard error" in d["reason"]
    anything = cross_validated_calibration(z, y, groups, "temperature", task="multiclass", folds=5, seed=0,
                                           min_gain_se=0.0)
    assert anything["applied"] and anything["cv"]["nll_after"] == pytest.approx(cv["nll_after"])


def test_clustered_mean_se_is_the_plain_se_per_patient_and_ignores_copies_within_a_patient():
    """One sample per patient: ``s / sqrt(N)`` (``ddof=1``). Each sample copied 3 times within its patient adds
    no information: the same SE — where an SE that ignored patients would shrink by ``sqrt(3)``."""
    from medcl.metrics.bootstrap import clustered_mean_se

    v = np.random.default_rng(4).normal(0.1, 0.3, 40)
    plain = v.std(ddof=1) / np.sqrt(40)
    assert clustered_mean_se(v, np.arange(40)) == pytest.approx(plain)
    assert clustered_mean_se(np.repeat(v, 3), np.repeat(np.arange(40), 3)) == pytest.approx(plain)
    assert np.isnan(clustered_mean_se(v, np.zeros(40)))


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_per_sample_nll_averages_to_the_log_loss(task):
    """The per-sample losses average to scikit-learn's log loss (multilabel: per label, all entries labelled)."""
    from sklearn.metrics import log_loss

    from medcl.metrics.calibration import per_sample_nll

    rng = np.random.default_rng(5)
    if task == "multiclass":
        p = _softmax(rng.normal(0, 1, (50, 4)))
        y = rng.integers(0, 4, 50)
        ref = log_loss(y, p, labels=range(4))
    elif task == "binary":
        p, y = rng.uniform(0.05, 0.95, 50), rng.integers(0, 2, 50)
        ref = log_loss(y, p)
    else:
        p, y = rng.uniform(0.05, 0.95, (50, 3)), rng.integers(0, 2, (50, 3))
        ref = np.mean([log_loss(y[:, j], p[:, j]) for j in range(3)])
    assert per_sample_nll(y, p, task).shape == (50,)
    assert per_sample_nll(y, p, task).mean() == pytest.approx(ref)


def test_cross_validated_calibration_needs_two_patients():
    from medcl.tasks.calibration import cross_validated_calibration

    z, y = _calibrated_logits(6, 3, seed=1, scale=2.0)
    d = cross_validated_calibration(z, y, np.zeros(6, dtype=int), "temperature", task="multiclass")
    assert not d["applied"] and "only 1 patient(s)" in d["reason"]


def test_a_refused_calibrator_is_still_returned_for_the_what_if():
    """The refused temperature is the maximum-likelihood one on all calibration data (what would have been applied),
    so the calibrate stage can report the test ECE that refusing avoided."""
    from medcl.tasks.calibration import IdentityCalibrator, TemperatureScaler, cross_validated_calibration

    z = np.full(10, np.log(0.8 / 0.2))
    y = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    d = cross_validated_calibration(z, y, np.arange(10), "temperature", task="binary", folds=5, seed=0)
    assert not d["applied"] and isinstance(d["calibrator"], IdentityCalibrator)
    direct = TemperatureScaler("binary").fit(z, y)
    assert isinstance(d["fitted"], TemperatureScaler)
    assert d["fitted"].temperature == pytest.approx(direct.temperature)


def test_cross_validated_calibration_with_one_sample_per_fold_says_too_few():
    """Two patients of one slide each: a held-out fold leaves one sample to fit on — not enough for a calibrator
    (it raised); the check now reports too few, keeps the model's probabilities."""
    from medcl.tasks.calibration import cross_validated_calibration

    out = cross_validated_calibration(np.array([[2.0, -1.0], [-1.0, 2.0]]), np.array([0, 1]), np.array([7, 9]),
                                      "temperature", task="multiclass", folds=5)
    assert out["applied"] is False and "too few" in out["reason"]
