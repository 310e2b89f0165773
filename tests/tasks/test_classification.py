"""Linear probe, kNN, label fractions, layer-wise LR groups and the supervised wrapper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError
from medcl.metrics import binary_auroc, classification_metrics
from medcl.tasks.classification import (
    ClassifierModel,
    LinearModel,
    SupervisedWrapper,
    TorchLinearHead,
    knn_predict,
    label_fraction_patients,
    layer_depth,
    layerwise_lr_groups,
    linear_probe,
    loss_for_task,
    num_outputs_for_task,
    patient_cv_splits,
)


def _blobs(n_patients=60, per_patient=3, k=3, d=16, seed=0, sep=3.0):
    """Linearly separable classes: the class shifts a few feature directions; patients share an offset."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per_patient)
    y_pat = rng.integers(0, k, n_patients)
    y = y_pat[groups]
    centers = rng.normal(0, 1, (k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    patient_offset = rng.normal(0, 0.3, (n_patients, d))[groups]
    x = sep * centers[y] + patient_offset + rng.normal(0, 0.5, (y.size, d))
    return x, y, groups


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_recovers_separable_multiclass_signal():
    xa, ya, ga = _blobs(n_patients=90, seed=0)
    tr = ga < 60  # test on 30 unseen patients
    x, y, g, xt, yt = xa[tr], ya[tr], ga[tr], xa[~tr], ya[~tr]
    res = linear_probe(x, y, xt, task="multiclass", groups_train=g, cv=4)
    assert res.probs.shape == (xt.shape[0], 3)
    np.testing.assert_allclose(res.probs.sum(1), 1.0, rtol=1e-9)
    m = classification_metrics(yt, res.probs, "multiclass")
    assert m["accuracy"] > 0.95 and m["auroc"] > 0.98
    from medcl.tasks.classification import DEFAULT_CS

    assert res.C in DEFAULT_CS and res.model.to_dict()["C"] == res.C
    # the saved state predicts the same
    back = LinearModel.from_dict(res.model.to_dict())
    np.testing.assert_allclose(back.predict_logits(xt), res.logits)


def test_linear_probe_binary_and_multilabel():
    x, y, g = _blobs(k=2, seed=1)
    res = linear_probe(x, y, x, task="binary", groups_train=g, cv=3)
    assert res.logits.shape == (x.shape[0],) and binary_auroc(y, res.probs) > 0.98
    rng = np.random.default_rng(2)
    xm = rng.normal(size=(150, 8))
    ym = np.stack([(xm[:, 0] > 0), (xm[:, 1] + 0.2 * xm[:, 2] > 0)], 1).astype(float)
    ym[:10, 1] = np.nan  # unlabelled entries are ignored
    gm = np.repeat(np.arange(50), 3)
    rm = linear_probe(xm, ym, xm, task="multilabel", groups_train=gm, cv=3)
    assert rm.probs.shape == (150, 2)
    assert binary_auroc(ym[:, 0], rm.probs[:, 0]) > 0.97
    assert binary_auroc(ym[10:, 1], rm.probs[10:, 1]) > 0.97


def test_cv_folds_never_share_a_patient():
    x, y, g = _blobs(n_patients=40, per_patient=4, seed=3)
    res = linear_probe(x, y, None, task="multiclass", groups_train=g, cv=5)
    assert len(res.cv_splits) == 5
    seen_val = set()
    for tr, va in res.cv_splits:
        assert not set(g[tr]) & set(g[va])
        assert not set(g[va]) & seen_val
        seen_val |= set(g[va])
    assert seen_val == set(g)
    # multilabel and no-y splits use GroupKFold: still no patient on both sides
    for tr, va in patient_cv_splits(None, g, 4):
        assert not set(g[tr]) & set(g[va])


def test_patient_grouped_cv_resists_leakage():
    # Features identify the patient but carry no class signal; labels are random per patient.
    # Sample-level CV would reward memorising patients (weak regularisation); patient-level CV
    # sees no held-out gain, so the chosen model predicts near chance on new patients.
    rng = np.random.default_rng(0)
    n_pat, per = 40, 6
    g = np.repeat(np.arange(n_pat), per)
    y = rng.integers(0, 2, n_pat)[g]
    x = rng.normal(0, 1, (n_pat, 20))[g] + rng.normal(0, 0.05, (g.size, 20))
    grouped = linear_probe(x, y, None, task="binary", groups_train=g, cv=5, Cs=[1e-4, 1e-2, 1.0, 100.0])
    leaky = linear_probe(x, y, None, task="binary", groups_train=None, cv=5, Cs=[1e-4, 1e-2, 1.0, 100.0])
    assert grouped.C < leaky.C
    assert any("leaks patients" in n for n in leaky.notes)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adamw"])
def test_torch_linear_head_learns_signal(optimizer):
    x, y, g = _blobs(seed=4)
    kw = {"epochs": 50} if optimizer == "lbfgs" else {"epochs": 40, "lr": 0.05, "batch_size": 64}
    res = linear_probe(x, y, x, task="multiclass", backend="torch", optimizer=optimizer, **kw)
    assert res.probs.shape == (x.shape[0], 3)
    assert np.mean(res.probs.argmax(1) == y) > 0.95
    head = TorchLinearHead("binary", epochs=50)
    yb = (y == 0).astype(int)
    model = head.fit(x, yb)
    assert binary_auroc(yb, model.predict_proba(x)) > 0.98


def test_unknown_backend_is_config_error():
    x, y, _ = _blobs(seed=5)
    with pytest.raises(ConfigError, match="backend"):
        linear_probe(x, y, task="multiclass", backend="xgboost")


# ----------------------------------------------------------------------------- kNN


def _naive_knn(xtr, ytr, xte, k, t, n_cls):
    out = []
    for q in xte:
        sims = np.array([q @ v / (np.linalg.norm(q) * np.linalg.norm(v)) for v in xtr])
        nn_idx = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(n_cls)
        for i in nn_idx:
            votes[ytr[i]] += np.exp(sims[i] / t)
        out.append(votes / votes.sum())
    return np.array(out)


def test_knn_matches_naive_loop():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.normal(size=(60, 8)), rng.integers(0, 3, 60)
    xte = rng.normal(size=(15, 8))
    probs = knn_predict(xtr, ytr, xte, k=7, temperature=0.1, task="multiclass", batch_size=4)
    np.testing.assert_allclose(probs, _naive_knn(xtr, ytr, xte, 7, 0.1, 3), rtol=1e-9, atol=1e-12)
    yb = (ytr == 1).astype(int)
    pb = knn_predict(xtr, yb, xte, k=7, temperature=0.1, task="binary")
    np.testing.assert_allclose(pb, _naive_knn(xtr, yb, xte, 7, 0.1, 2)[:, 1], rtol=1e-9, atol=1e-12)
    # multilabel: per-label weighted vote equals the one-vs-rest binary vote
    yml = np.stack([yb, (ytr == 2).astype(int)], 1).astype(float)
    pm = knn_predict(xtr, yml, xte, k=7, temperature=0.1, task="multilabel")
    np.testing.assert_allclose(pm[:, 0], pb, rtol=1e-9)


def test_knn_ignores_unlabelled_training_samples():
    rng = np.random.default_rng(1)
    xtr, ytr = rng.normal(size=(40, 4)), rng.integers(0, 2, 40)
    y_missing = ytr.copy()
    y_missing[:10] = -1
    xte = rng.normal(size=(5, 4))
    got = knn_predict(xtr, y_missing, xte, k=5, task="multiclass", num_classes=2)
    ref = knn_predict(xtr[10:], ytr[10:], xte, k=5, task="multiclass", num_classes=2)
    np.testing.assert_allclose(got, ref)


# ----------------------------------------------------------------------------- label fractions


@dataclass
class _Rec:
    patient: str
    label: object


def test_label_fractions_nested_patient_level_and_stratified():
    rng = np.random.default_rng(0)
    n_pat = 200
    pat_class = np.r_[np.zeros(120), np.ones(60), np.full(20, 2)].astype(int)
    per = rng.integers(1, 5, n_pat)
    patients = np.repeat([f"p{i:03d}" for i in range(n_pat)], per)
    y = np.repeat(pat_class, per)
    masks = label_fraction_patients(patients, y, fractions=[0.01, 0.1, 0.5, 1.0], seed=3)
    assert masks[1.0].all()
    assert (masks[0.01] <= masks[0.1]).all() and (masks[0.1] <= masks[0.5]).all()
    for m in masks.values():  # whole patients only
        for p in np.unique(patients):
            sel = m[patients == p]
            assert sel.all() or not sel.any()
    n_chosen = {f: np.unique(patients[m]).size for f, m in masks.items()}
    assert n_chosen == {0.01: 2, 0.1: 20, 0.5: 100, 1.0: 200}
    # 10 %: every class present, proportions roughly kept (12 / 6 / 2)
    cls_10 = np.bincount(pat_class[np.isin([f"p{i:03d}" for i in range(n_pat)], patients[masks[0.1]])], minlength=3)
    assert (cls_10 > 0).all() and abs(cls_10[0] - 12) <= 2
    # deterministic per seed, different for another seed
    again = label_fraction_patients(patients, y, fractions=[0.1], seed=3)
    assert np.array_equal(again[0.1], masks[0.1])
    other = label_fraction_patients(patients, y, fractions=[0.1], seed=4)
    assert not np.array_equal(other[0.1], masks[0.1])


def test_multilabel_fractions_give_every_label_both_values():
    """1 % of 100 multilabel patients is one patient, on which no label varies; the guarantee adds the few that make
    every label both present and absent (checked from y by hand), and the fractions stay nested and whole-patient."""
    rng = np.random.default_rng(1)
    n_pat, k = 100, 4
    pat_y = (rng.random((n_pat, k)) < [0.5, 0.2, 0.1, 0.05]).astype(float)
    pat_y[:, 3] = 0.0
    pat_y[7, 3] = 1.0  # label 3: one positive patient in the whole set
    per = rng.integers(1, 4, n_pat)
    patients = np.repeat([f"p{i:03d}" for i in range(n_pat)], per)
    y = np.repeat(pat_y, per, axis=0)
    y[0, 0] = -1.0  # an unlabelled entry counts for nothing
    plain = label_fraction_patients(patients, y, fractions=[0.01], seed=0)
    assert np.unique(patients[plain[0.01]]).size == 1
    masks = label_fraction_patients(patients, y, fractions=[0.01, 0.1, 1.0], seed=0, ensure_all_classes=True)
    chosen = y[masks[0.01]]
    for j in range(k):  # every label both ways among the chosen samples
        assert (chosen[:, j] == 1).any() and (chosen[:, j] == 0).any(), j
    assert "p007" in set(patients[masks[0.01]])  # the only patient with label 3
    assert np.unique(patients[masks[0.01]]).size <= 2 * k
    assert (masks[0.01] <= masks[0.1]).all() and (masks[0.1] <= masks[1.0]).all() and masks[1.0].all()
    assert np.unique(patients[masks[0.1]]).size == 10
    for p in np.unique(patients):
        sel = masks[0.01][patients == p]
        assert sel.all() or not sel.any()
    always = np.ones((len(patients), 2))  # a label no patient lacks is not sought: one patient is enough
    one = label_fraction_patients(patients, always, fractions=[0.01], seed=0, ensure_all_classes=True)
    assert np.unique(patients[one[0.01]]).size == 1


def test_label_fractions_from_records_and_class_guarantee():
    recs = [_Rec(f"p{i}", "AMD" if i % 10 == 0 else "normal") for i in range(50)]
    recs += [_Rec("p0", None)]  # an unlabelled extra sample of p0 comes along with p0
    m = label_fraction_patients(recs, fractions=[0.02, 1.0], seed=0)
    assert m[0.02].sum() in (1, 2)  # one patient (p0 has two samples)
    m2 = label_fraction_patients(recs, fractions=[0.02], seed=0, ensure_all_classes=True)
    labels = {recs[i].label for i in np.nonzero(m2[0.02])[0]} - {None}
    assert labels == {"AMD", "normal"}
    with pytest.raises(ConfigError):
        label_fraction_patients(recs, fractions=[0.0])


# ----------------------------------------------------------------------------- fine-tuning


def test_layer_depth_heuristic_on_known_names():
    assert layer_depth("encoder.model.patch_embed.proj.weight") == 0
    assert layer_depth("encoder.model.blocks.0.attn.qkv.weight") == 1
    assert layer_depth("encoder.model.blocks.11.mlp.fc1.weight") == 12
    assert layer_depth("encoder.model.layer1.0.conv1.weight") == 1  # block pattern before stem "conv1"
    assert layer_depth("encoder.model.conv1.weight") == 0
    assert layer_depth("encoder.model.stages.2.blocks.1.conv_dw.weight") == 3
    assert layer_depth("encoder.swinViT.layers2.0.blocks.1.attn.qkv.weight") == 2  # stage, not block
    assert layer_depth("encoder.model.features.transition3.conv.weight") == 3
    assert layer_depth("encoder.down_4.convs.conv_0.conv.weight") == 4
    assert layer_depth("encoder.conv_0.conv_0.conv.weight") == 0
    assert layer_depth("head.weight") is None


@pytest.mark.parametrize("arch", ["vit", "resnet", "convnext"])
def test_layerwise_groups_monotone_in_depth(arch):
    timm = pytest.importorskip("timm")
    if arch == "vit":
        net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=3, img_size=32)
    elif arch == "resnet":
        net = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    else:
        net = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
    net.feature_dim = net.num_features
    model = ClassifierModel(net, 3, "multiclass")
    groups = layerwise_lr_groups(model, base_lr=1e-3, decay=0.5, weight_decay=0.05)
    names_in_groups = [n for grp in groups for n in grp["param_names"]]
    assert sorted(names_in_groups) == sorted(n for n, _ in model.named_parameters())
    # lr strictly increases with layer id, and the head gets the base lr
    by_layer = {}
    for grp in groups:
        by_layer.setdefault(grp["layer_id"], set()).add(grp["lr"])
        assert grp["lr"] == pytest.approx(1e-3 * grp["lr_scale"])
        if all(n.startswith("head.") for n in grp["param_names"]):
            assert grp["lr"] == pytest.approx(1e-3)
        no_decay = all(p.ndim <= 1 or n.endswith(("cls_token", "pos_embed"))
                       for n, p in zip(grp["param_names"], grp["params"]))
        assert grp["weight_decay"] == (0.0 if no_decay else 0.05)
    layers = sorted(by_layer)
    assert all(len(by_layer[layer]) == 1 for layer in layers)
    lrs = [by_layer[layer].pop() for layer in layers]
    assert all(a < b for a, b in zip(lrs, lrs[1:]))
    stem = "encoder.patch_embed.proj.weight" if arch == "vit" else None
    if stem:
        grp = next(g for g in groups if stem in g["param_names"])
        assert grp["layer_id"] == 0 and grp["lr"] == pytest.approx(1e-3 * 0.5**4)  # 3 blocks + head
    # an optimizer accepts the groups as they are
    torch.optim.AdamW(groups, lr=1e-3)


class _TinyEncoder(nn.Module):
    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        return F.relu(self.stem(x))  # (B, 8, H, W): pooled by ClassifierModel


def test_supervised_wrapper_losses_and_training_step():
    torch.manual_seed(0)
    model = ClassifierModel(_TinyEncoder(), 3, "multiclass")
    wrapper = SupervisedWrapper(model)
    x = torch.randn(6, 1, 8, 8)
    x[:, :, :4] += torch.arange(6).remainder(3).view(6, 1, 1, 1).float()  # learnable signal
    labels = torch.tensor([0, 1, 2, 0, 1, -1])  # last one unlabelled
    out = wrapper({"image": x, "label": labels})
    assert out["logits"].shape == (6, 3)
    ref = F.cross_entropy(out["logits"][:5], labels[:5])
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    opt = torch.optim.SGD(wrapper.parameters(), lr=0.5)
    first = out["loss"].item()
    for _ in range(30):
        opt.zero_grad()
        loss = wrapper({"image": x, "label": labels})["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < first
    # all-unlabelled batch: zero loss that still back-propagates (no NaN)
    empty = wrapper({"image": x, "label": torch.full((6,), -1)})["loss"]
    empty.backward()
    assert empty.item() == 0.0


def test_binary_and_multilabel_losses_mask_unlabelled():
    bin_model = ClassifierModel(_TinyEncoder(), num_outputs_for_task("binary", 2), "binary")
    out = SupervisedWrapper(bin_model)({"image": torch.randn(4, 1, 8, 8), "label": torch.tensor([1, 0, -1, 1])})
    assert out["logits"].shape == (4,)
    keep = [0, 1, 3]
    ref = F.binary_cross_entropy_with_logits(out["logits"][keep], torch.tensor([1.0, 0.0, 1.0]))
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    logits = torch.randn(3, 2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [-1.0, 0.0]])
    loss = loss_for_task("multilabel")(logits, y)
    mask = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    ref = F.binary_cross_entropy_with_logits(logits[mask], torch.nan_to_num(y)[mask])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="feature_dim"):
        ClassifierModel(nn.Linear(2, 2), 2)
    with pytest.raises(ConfigError, match="1 output"):
        ClassifierModel(_TinyEncoder(), 2, "binary")


class _Features(nn.Module):
    """An "encoder" that hands its input features on unchanged: ``(B, D)`` → ``(B, D)``."""

    def __init__(self, d):
        super().__init__()
        self.feature_dim = d

    def forward(self, x):
        return x


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_head_from_probe_gives_the_probes_logits(task):
    """LP-FT's head: ``head(f)`` equals the probe's ``((f - mean) / std) @ coef.T + intercept`` (its definition,
    computed here by hand) on features far from the training ones too."""
    x, y, groups = _blobs(n_patients=30, k=3, d=6, seed=1)
    x = x * np.array([1, 10, 0.1, 3, 1, 5]) + np.array([0, 5, -2, 1, 0, 3])  # unequal scales and offsets
    if task == "binary":
        y = (y == 0).astype(int)
    elif task == "multilabel":
        y = np.stack([y == 0, y != 1], 1).astype(float)
    probe = linear_probe(x, y, task=task, groups_train=groups, num_classes=3).model
    model = ClassifierModel(_Features(6), num_outputs_for_task(task, y.shape[1] if y.ndim == 2 else 3), task)
    model.head_from_probe(probe)
    f = np.random.default_rng(2).normal(0, 4, (11, 6))
    want = ((f - probe.mean) / probe.std) @ np.asarray(probe.coef).T + np.asarray(probe.intercept)
    got = model(torch.as_tensor(f, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_head_from_a_probe_of_another_shape_or_task_is_refused():
    x, y, groups = _blobs(n_patients=20, k=3, d=6)
    probe = linear_probe(x, y, task="multiclass", groups_train=groups).model
    with pytest.raises(ConfigError, match="does not fit"):
        ClassifierModel(_Features(6), 2, "multiclass").head_from_probe(probe)  # 2 outputs, the probe has 3
    with pytest.raises(ConfigError, match="does not fit"):
        ClassifierModel(_Features(7), 3, "multiclass").head_from_probe(probe)  # 7 features, the probe has 6
    with pytest.raises(ConfigError, match="does not fit"):
        ClassifierModel(_Features(6), 3, "multilabel").head_from_probe(probe)
