"""Gated fusion (medcl.tasks.fusion): the gate as defined (hand computation), missing modalities, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medcl.tasks.fusion import (
    FusionData,
    GatedFusion,
    drop_modalities,
    predict_fusion,
    standardise,
    train_fusion,
)


def _model(gated: bool = True, seed: int = 0) -> GatedFusion:
    torch.manual_seed(seed)
    return GatedFusion({"a": 5, "b": 3, "c": 4}, 2, hidden=6, gate_dim=4, dropout=0.0, gated=gated).eval()


def _inputs(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 3, generator=g), "c": torch.randn(n, 4, generator=g)}
    present = torch.ones(n, 3, dtype=torch.bool)
    present[1, 1] = present[2, 0] = present[2, 2] = present[4, 2] = False
    return feats, present


def test_gate_is_one_minus_the_attention_on_null_computed_by_hand():
    model = _model()
    feats, present = _inputs()
    with torch.no_grad():
        _, gates = model(feats, present)
        h = np.stack([model.proj[m](feats[m]).numpy() for m in "abc"], 1)  # (B, M, H)
        q = np.stack([h[:, i] @ model.query[m].weight.numpy().T + model.query[m].bias.numpy()
                      for i, m in enumerate("abc")], 1)
        k = np.stack([h[:, i] @ model.key[m].weight.numpy().T + model.key[m].bias.numpy() for i, m in enumerate("abc")], 1)
        null = model.null_key.numpy()
    want = np.zeros((len(h), 3))
    for b in range(len(h)):
        for i in range(3):
            if not present[b, i]:
                continue  # a missing modality: gate 0
            others = [j for j in range(3) if present[b, j] and j != i]
            if not others:  # the patient's only modality: nothing to check it against
                want[b, i] = 1.0
                continue
            scores = [q[b, i] @ k[b, j] / math.sqrt(4) for j in others] + [q[b, i] @ null / math.sqrt(4)]
            e = np.exp(np.asarray(scores) - max(scores))
            want[b, i] = 1.0 - e[-1] / e.sum()
    np.testing.assert_allclose(gates.numpy(), want, rtol=1e-5, atol=1e-6)
    several = present.numpy() & (present.numpy().sum(1, keepdims=True) > 1)
    assert ((gates > 0) & (gates < 1)).numpy()[several].all()


def test_a_missing_modality_does_not_reach_the_output():
    model = _model()
    feats, present = _inputs()
    logits, gates = model(feats, present)
    changed = {m: f.clone() for m, f in feats.items()}
    changed["b"][1] += 100.0  # patient 1 has no b
    changed["a"][2] -= 50.0  # patient 2 has no a
    logits2, _ = model(changed, present)
    torch.testing.assert_close(logits2, logits)
    assert gates[1, 1] == 0 and gates[2, 0] == 0
    # ... while a present modality does
    changed["a"][0, 0] += 1.0  # (one feature: the layer norm ignores a shift of them all)
    assert not torch.allclose(model(changed, present)[0][0], logits[0])


def test_the_ungated_baseline_gates_by_presence_only():
    feats, present = _inputs()
    _, gates = _model(gated=False)(feats, present)
    torch.testing.assert_close(gates, present.float())


def test_modality_dropout_never_drops_every_modality_of_a_patient():
    gen = np.random.default_rng(0)
    present = gen.random((2000, 3)) < 0.7
    out = drop_modalities(present, 0.9, gen)
    assert not (out & ~present).any()  # never adds one
    assert (out.sum(1) >= 1)[present.any(1)].all()
    assert 0.05 < out.sum() / present.sum() < 0.5  # most are dropped at p = 0.9


def test_mislinked_gives_everyone_another_patients_features():
    f = np.arange(12, dtype=np.float32).reshape(6, 2)
    present = np.array([[1, 1], [1, 0], [1, 1], [1, 1], [0, 1], [1, 1]], bool)
    d = FusionData({"a": f.copy(), "b": f.copy() + 100}, present, ("a", "b")).mislinked("a", seed=3)
    has = np.flatnonzero(present[:, 0])
    assert not (d.feats["a"][has] == f[has]).all(1).any()  # nobody keeps their own
    assert sorted(map(tuple, d.feats["a"][has])) == sorted(map(tuple, f[has]))  # the same features, moved
    np.testing.assert_array_equal(d.feats["a"][4], f[4])  # a patient without the modality is untouched
    np.testing.assert_array_equal(d.feats["b"], f + 100)


def test_standardise_uses_training_patients_who_have_the_modality():
    f = np.array([[1.0], [3.0], [100.0], [5.0]], np.float32)
    present = np.array([[1], [1], [0], [1]], bool)
    d = standardise(FusionData({"a": f}, present, ("a",)), train=np.array([0, 1, 2]))
    np.testing.assert_allclose(d.feats["a"][:, 0], [(1 - 2) / 1, (3 - 2) / 1, 0.0, (5 - 2) / 1], atol=1e-4)


def _toy(n: int, seed: int) -> tuple[FusionData, np.ndarray]:
    """Four classes; modality a tells the first bit, modality b the second (each sees half of the label)."""
    gen = np.random.default_rng(seed)
    y = gen.integers(0, 4, n)
    a = gen.normal(size=(n, 8)).astype(np.float32)
    b = gen.normal(size=(n, 8)).astype(np.float32)
    a[:, 0] += 4.0 * (y // 2)  # Bayes accuracy per bit: Phi(2) = 0.977
    b[:, 0] += 4.0 * (y % 2)
    return FusionData({"a": a, "b": b}, np.ones((n, 2), bool), ("a", "b")), y


def _trained(train: FusionData, y: np.ndarray, steps: int, corrupt_prob: float) -> GatedFusion:
    model = GatedFusion({"a": 8, "b": 8}, 4, hidden=16, gate_dim=8, dropout=0.0)
    train_fusion(model, train, y, multilabel=False, steps=steps, batch_size=64, lr=3e-3, weight_decay=1e-4,
                 modality_dropout=0.3, corrupt_prob=corrupt_prob, seed=0)
    return model


@pytest.fixture(scope="module")
def trained():
    test, yt = _toy(300, 1)
    return _trained(*_toy(400, 0), steps=300, corrupt_prob=0.2), test, yt


def test_fusion_needs_both_modalities_where_each_sees_half_the_label(trained):
    model, test, yt = trained
    acc = {}
    for name, data in (("both", test), ("without_a", test.dropped("a")), ("without_b", test.dropped("b"))):
        probs, _ = predict_fusion(model, data, multilabel=False)
        acc[name] = float((probs.argmax(1) == yt).mean())
    # each modality alone can tell two of the four classes apart at best (half of the label): at most ~0.5 + noise
    assert acc["both"] > 0.8 > 0.6 > max(acc["without_a"], acc["without_b"])


def _linked(n: int, seed: int) -> tuple[FusionData, np.ndarray]:
    """As :func:`_toy`, plus what the two examinations of one patient share (its anatomy, say): a sign both show.

    Another patient's examination then disagrees with the patient's own on that sign half of the time — what a gate
    can see. (Where the modalities share nothing, a mislinked one looks like any other: no gate can tell.)
    """
    data, y = _toy(n, seed)
    shared = np.random.default_rng(seed + 100).choice([-1.0, 1.0], n).astype(np.float32)
    data.feats["a"][:, 1] += 4.0 * shared
    data.feats["b"][:, 1] += 4.0 * shared
    return data, y


def test_trained_gates_fall_for_a_mislinked_modality():
    test, _ = _linked(300, 1)
    model = _trained(*_linked(600, 0), steps=400, corrupt_prob=0.3)
    _, clean = predict_fusion(model, test, multilabel=False)
    _, wrong = predict_fusion(model, test.mislinked("a", seed=0), multilabel=False)
    _, dropped = predict_fusion(model, test.dropped("a"), multilabel=False)
    assert (dropped[:, 0] == 0).all()
    # the mislinked examinations that contradict the patient's other one get a lower gate than their own would
    disagree = np.sign(test.mislinked("a", seed=0).feats["a"][:, 1]) != np.sign(test.feats["b"][:, 1])
    assert disagree.mean() > 0.3
    assert wrong[disagree, 0].mean() < clean[disagree, 0].mean() - 0.1


def test_validation_selection_keeps_the_weights_of_the_lowest_validation_loss():
    train, y = _toy(40, 0)  # few patients, many steps at a high LR: the head overfits, the validation loss turns up
    val, yv = _toy(200, 2)
    model = GatedFusion({"a": 8, "b": 8}, 4, hidden=32, gate_dim=8, dropout=0.0)
    fit = train_fusion(model, train, y, multilabel=False, steps=300, batch_size=40, lr=1e-2, weight_decay=0.0,
                       modality_dropout=0.3, corrupt_prob=0.0, seed=0, val=(val, yv), val_every=10)
    assert fit.val_steps == list(range(10, 301, 10))
    assert fit.best_step == fit.val_steps[int(np.argmin(fit.val_losses))]
    assert fit.best_step < 300 and min(fit.val_losses) < fit.val_losses[-1]  # it did overfit: there was a choice
    # the kept model's validation loss, recomputed here from its predictions (full + each modality alone), is the min
    terms = []
    for view in (val, _alone(val, "a"), _alone(val, "b")):
        probs, _ = predict_fusion(model, view, multilabel=False)
        terms.append(-np.log(probs[np.arange(len(yv)), yv]).mean())
    assert np.mean(terms) == pytest.approx(min(fit.val_losses), rel=1e-4)
    # without validation patients the last step is kept
    last = GatedFusion({"a": 8, "b": 8}, 4, hidden=32, gate_dim=8, dropout=0.0)
    assert train_fusion(last, train, y, multilabel=False, steps=30, batch_size=40, lr=1e-2, weight_decay=0.0,
                        modality_dropout=0.3, corrupt_prob=0.0, seed=0).best_step == 30


def _alone(data: FusionData, modality: str) -> FusionData:
    """Every patient with only ``modality`` present (the other one marked missing)."""
    other = next(m for m in data.names if m != modality)
    return data.dropped(other)


def test_degrade_blurs_away_fine_detail_and_adds_noise_of_the_images_own_scale():
    import torch

    from medcl.tasks.fusion import degrade

    x = torch.zeros(2, 1, 16, 16)
    x[0, 0] = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2  # a 1-pixel checkerboard: mean 0.5, sd 0.5
    x[1, 0, :, 8:] = 1.0  # a left/right step: survives a 4x reduction
    gen = torch.Generator().manual_seed(0)
    clean = degrade(x, gen, noise=0.0)
    assert torch.allclose(clean[0], torch.full_like(clean[0], 0.5), atol=1e-6)  # every 4x4 block averages to 0.5
    assert clean[1, 0, :, :6].max() < 0.5 < clean[1, 0, :, 10:].min()
    noisy = degrade(x, torch.Generator().manual_seed(0), noise=1.0)
    for i in range(2):
        assert float((noisy[i] - clean[i]).std()) == pytest.approx(float(x[i].std()), rel=0.15)
    for shape in ((3, 2, 40), (2, 1, 8, 8, 8)):  # signals and volumes
        assert degrade(torch.randn(shape), gen).shape == shape


def test_trained_gates_fall_for_a_degraded_modality():
    """Degraded examinations (here: the class signal gone, the features' scale kept) get a lower gate."""
    train, y = _toy(600, 0)
    gen = np.random.default_rng(5)
    train = FusionData(train.feats, train.present, train.names,
                       {m: gen.normal(size=f.shape).astype(np.float32) for m, f in train.feats.items()})
    test, yt = _toy(300, 1)
    test = FusionData(test.feats, test.present, test.names,
                      {m: gen.normal(size=f.shape).astype(np.float32) for m, f in test.feats.items()})
    model = GatedFusion({"a": 8, "b": 8}, 4, hidden=16, gate_dim=8, dropout=0.0)
    train_fusion(model, train, y, multilabel=False, steps=400, batch_size=64, lr=3e-3, weight_decay=1e-4,
                 modality_dropout=0.3, corrupt_prob=0.0, degrade_prob=0.3, seed=0)
    _, clean = predict_fusion(model, test, multilabel=False)
    probs, bad = predict_fusion(model, test.with_degraded("a"), multilabel=False)
    assert bad[:, 0].mean() < clean[:, 0].mean() - 0.1
    # with a degraded, b's half of the label is still known: accuracy on b's bit stays near its Bayes rate
    assert float(((probs.argmax(1) % 2) == (yt % 2)).mean()) > 0.9
