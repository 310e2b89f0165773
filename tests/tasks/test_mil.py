"""Attention MIL (Ilse et al. 2018) and mean pooling: what the pooling is, and that attention finds the tiles that
decide a bag."""

from __future__ import annotations

import pytest
import torch

from medcl.tasks.mil import GatedAttentionMIL, MeanPoolMIL, bag_logits, fit_bags, predict_bags


def test_gated_attention_is_a_distribution_over_the_bag_and_ignores_the_bag_order():
    torch.manual_seed(0)
    model = GatedAttentionMIL(in_dim=6, n_classes=3, hidden=16, attention_dim=8, dropout=0.0).eval()
    bag = torch.randn(11, 6)
    logits, a = model(bag)
    assert logits.shape == (3,) and a.shape == (11,)
    assert torch.all(a >= 0) and torch.isclose(a.sum(), torch.tensor(1.0))
    perm = torch.randperm(11)
    logits_p, a_p = model(bag[perm])
    assert torch.allclose(logits, logits_p, atol=1e-6) and torch.allclose(a[perm], a_p, atol=1e-6)
    # eq. 9 written out: a = softmax(w^T (tanh(V h) * sigmoid(U h))), z = a @ h
    h = model.embed(bag)
    gate = torch.tanh(model.attention_v(h)) * torch.sigmoid(model.attention_u(h))
    expect = torch.softmax(model.attention_w(gate).squeeze(-1), 0)
    assert torch.allclose(a, expect) and torch.allclose(logits, model.classifier(expect @ h))


def test_mean_pooling_weighs_every_tile_alike():
    torch.manual_seed(0)
    model = MeanPoolMIL(in_dim=4, n_classes=2, hidden=8, dropout=0.0).eval()
    bag = torch.randn(5, 4)
    logits, a = model(bag)
    assert torch.allclose(a, torch.full((5,), 0.2))
    assert torch.allclose(logits, model.classifier(model.embed(bag).mean(0)))


def test_attention_finds_the_one_tile_that_decides_a_bag():
    g = torch.Generator().manual_seed(0)

    def bags(n):
        out, labels, key = [], [], []
        for i in range(n):
            bag = torch.randn(30, 8, generator=g)
            pos = i % 2
            k = int(torch.randint(0, 30, (1,), generator=g))
            if pos:
                bag[k, 0] += 4.0  # one tile of thirty shows the finding
            out.append(bag)
            labels.append(pos)
            key.append(k)
        return out, labels, key

    train, y_train, _ = bags(80)
    test, y_test, key = bags(40)
    torch.manual_seed(0)
    model = GatedAttentionMIL(8, 2, hidden=32, attention_dim=16, dropout=0.0)
    history = fit_bags(model, train, y_train, epochs=15, lr=2e-3, weight_decay=1e-4, seed=0)
    assert history[-1] < history[0]
    probs, attention = predict_bags(model, test)
    assert probs.shape == (40, 2) and torch.allclose(probs.sum(1), torch.ones(40))
    positives = [i for i in range(40) if y_test[i]]
    found = sum(int(attention[i].argmax()) == key[i] for i in positives)
    assert found >= 0.8 * len(positives)  # the attention points at the planted tile


def test_bag_logits_are_what_the_probabilities_come_from():
    torch.manual_seed(0)
    model = GatedAttentionMIL(6, 3, hidden=8, attention_dim=4, dropout=0.5)
    bags = [torch.randn(k, 6) for k in (3, 7, 1)]
    probs, _ = predict_bags(model, bags)
    z = bag_logits(model, bags)
    assert z.shape == (3, 3) and torch.allclose(torch.softmax(z, -1), probs)


def test_end_to_end_mil_trains_the_encoder_with_a_warmup_then_cosine_schedule():
    """The scratch baseline: gradients reach the encoder; lr rises over the first tenth, then decays to ~0."""
    from torch import nn

    from medcl.tasks.mil import EndToEndMIL, fit_end_to_end

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = EndToEndMIL(encoder, MeanPoolMIL(4, 2, hidden=8, dropout=0.0))
    before = [p.detach().clone() for p in encoder.parameters()]
    # class 1 slides: one bright tile among dark ones (drawn with the loop's generator, as the stage does)
    labels = [0, 1] * 4

    def draw_bag(i, g):
        tiles = torch.rand(5, 1, 8, 8, generator=g) * 0.1
        if labels[i]:
            tiles[0] += 1.0
        return tiles

    lrs = []
    opt_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return opt_step(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        history = fit_end_to_end(model, draw_bag, labels, steps=40, lr=1e-2, weight_decay=0.0, seed=0)
    finally:
        torch.optim.AdamW.step = opt_step
    assert len(history) == 40
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert lrs[0] == pytest.approx(1e-2 / 4) and lrs[3] == pytest.approx(1e-2)  # 4 warmup steps (10 % of 40)
    assert lrs[-1] < 1e-2 * 0.01  # cosine to ~0
    assert sum(history[-10:]) / 10 < sum(history[:10]) / 10
