"""Attention MIL (Ilse et al. 2018) and mean pooling: what the pooling is, and that attention finds the tiles that
decide a bag."""

from __future__ import annotations

import torch

from medcl.tasks.mil import GatedAttentionMIL, MeanPoolMIL, fit_bags, predict_bags


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
