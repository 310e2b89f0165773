"""Pretraining methods: forward/backward on tiny batches, MoCo EMA, oct-severity labelling."""

from __future__ import annotations

import copy
import math
import os
import socket

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError
from medcl.methods import (
    METHODS,
    assign_severity,
    build_method,
    fit_severity_model,
    method_options,
    severity_bin_edges,
    severity_scores,
)
from medcl.methods.dense import apply_flips, random_flip_masks
from medcl.networks import build_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny CPU ops: one intra-op thread avoids OpenMP spin-wait storms on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


B = 6
HEAD = {"hidden_dim": 32, "out_dim": 16}
#: Extra options per method for a 3-class toy task.
OPTIONS = {
    "moco": {"queue_size": 16, "hidden_dim": 32, "out_dim": 16},
    "supcon-hardneg": {"hard_pairs": [(0, 1)], "hard_weight": 3.0},
    "supcon-graph": {"similarity": [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]},
    "supcon-balanced": {"num_classes": 3},
    "prototypes": {"num_classes": 3},
    "oct-severity": {"num_bins": 3, "ae_epochs": 2, "ae_widths": (4, 8)},
    "clip": {"reports": ["small drusen", "no drusen seen", "large drusen, early AMD"] * 3, "text_dim": 16,
             "text_depth": 1, "text_heads": 2, "vocab_size": 60, "soft_targets": True, "num_classes": 3},
}
#: Modality each method is exercised on: (spatial_dims, channels, spatial shape).
MODALITY = {"clocs": (1, 12, (500,))}
DEFAULT_MODALITY = (2, 1, (32, 32))


def make_batch(spatial_dims: int, channels: int, spatial: tuple[int, ...], views: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "views": torch.randn(B, views, channels, *spatial, generator=g),
        "image": torch.randn(B, channels, *spatial, generator=g),
        "label": torch.tensor([0, 1, 2, 0, 1, -1]),
        "patient": torch.tensor([0, 0, 1, 1, 2, -1]),
        "index": torch.arange(B),
        "report": ["small drusen", "no drusen", "large drusen", "small drusen", "no drusen seen", "drusen"],
    }


def build(name: str, spatial_dims: int, channels: int, encoder: str = "tiny_cnn", **extra):
    torch.manual_seed(0)
    enc = build_encoder(encoder, in_channels=channels, spatial_dims=spatial_dims)
    allowed = method_options(name)
    opts = {**{k: v for k, v in HEAD.items() if k in allowed}, **OPTIONS.get(name, {}), **extra}
    return build_method(name, enc, **opts)


def check_step(method, batch):
    method.train()
    out = method(batch)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss), out
    for k, v in out.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0, k
        if k != "loss":
            assert not v.requires_grad, k
    loss.backward()
    grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0, "no gradient reached the encoder"
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_method_forward_backward(name):
    dims, channels, spatial = MODALITY.get(name, DEFAULT_MODALITY)
    method = build(name, dims, channels)
    batch = make_batch(dims, channels, spatial)
    if name == "supcon-graph":
        batch["label"] = torch.tensor(
            [[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1], [float("nan")] * 3], dtype=torch.float32
        )
    if name == "oct-severity":
        method.setup([batch])
    check_step(method, batch)
    method.on_step_end(1, 10)


@pytest.mark.parametrize(
    "name,dims,channels,spatial,encoder",
    [
        ("simclr", 3, 1, (16, 16, 16), "tiny_cnn"),
        ("simclr", 1, 12, (1000,), "xresnet1d"),
        ("dense", 3, 1, (16, 16, 16), "tiny_cnn"),
        ("dense", 2, 1, (32, 32), "resnet18"),
        ("moco", 2, 3, (32, 32), "resnet18"),
        ("micle", 3, 1, (32, 32, 32), "unet_encoder3d"),
    ],
)
def test_methods_on_other_modalities(name, dims, channels, spatial, encoder):
    extra = {"layers": (1, 1, 1, 1)} if encoder == "xresnet1d" else {}
    torch.manual_seed(0)
    enc = build_encoder(encoder, in_channels=channels, spatial_dims=dims, **extra)
    if encoder == "unet_encoder3d":
        enc = build_encoder(encoder, in_channels=channels, spatial_dims=dims, features=(4, 4, 8, 8, 16))
    method = build_method(name, enc, **{**HEAD, **OPTIONS.get(name, {})})
    batch = make_batch(dims, channels, spatial)
    batch["views"] = batch["views"][:4]
    for k in ("label", "patient", "index", "image"):
        batch[k] = batch[k][:4]
    check_step(method, batch)


def test_simclr_more_than_two_views():
    method = build("simclr", 2, 1)
    check_step(method, make_batch(2, 1, (32, 32), views=3))


def test_micle_needs_patient():
    method = build("micle", 2, 1)
    batch = make_batch(2, 1, (32, 32))
    del batch["patient"]
    with pytest.raises(DataError, match="patient"):
        method(batch)


def test_views_shape_checked():
    method = build("simclr", 2, 1)
    with pytest.raises(DataError, match="views"):
        method({"views": torch.randn(B, 1, 1, 32, 32)})
    with pytest.raises(DataError, match="views"):
        method({"image": torch.randn(B, 1, 32, 32)})


def test_registry_errors():
    enc = build_encoder("tiny_cnn", in_channels=1)
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        build_method("simclrr", enc)
    with pytest.raises(ConfigError, match="'temprature': did you mean 'temperature'"):
        build_method("simclr", enc, temprature=0.2)


# ---------------------------------------------------------------- MoCo
def test_moco_target_gets_no_gradient_and_moves_by_ema():
    method = build("moco", 2, 1, base_momentum=0.9, final_momentum=1.0)
    batch = make_batch(2, 1, (32, 32))
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.5)
    online_before = [p.detach().clone() for p in method.encoder.parameters()]
    target_before = [p.detach().clone() for p in method.target_encoder.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(online_before, target_before))  # starts as a copy

    check_step(method, batch)
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    assert all(not p.requires_grad for p in method.target_encoder.parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not trainable & {id(p) for p in method.target_encoder.parameters()}
    opt.step()
    online_after = [p.detach().clone() for p in method.encoder.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(online_before, online_after))
    # target unchanged by the optimiser
    assert all(torch.equal(a, p) for a, p in zip(target_before, method.target_encoder.parameters()))

    step, total = 3, 10
    method.on_step_end(step, total)
    m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2  # MoCo v3 cosine schedule
    assert method.momentum == pytest.approx(m)
    for t0, o, t1 in zip(target_before, online_after, method.target_encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * o, atol=1e-6)
    # BN running statistics are copied from the online network
    for bt, bo in zip(method.target_encoder.buffers(), method.encoder.buffers()):
        assert torch.equal(bt, bo)
    method.on_step_end(total, total)
    assert method.momentum == pytest.approx(1.0)


def test_moco_projector_depth_follows_the_papers_code_for_the_encoder():
    """MoCo v3's code (facebookresearch/moco-v3, builder.py): ``MoCo_ResNet`` builds a 2-layer projector, ``MoCo_ViT``
    a 3-layer one, each ending in BN without affine parameters; the predictor has 2 layers and no BN at the end."""
    def linears(m):
        return [x for x in m.modules() if isinstance(x, torch.nn.Linear)]

    cnn = build("moco", 2, 1)
    assert len(linears(cnn.projector)) == 2 and len(linears(cnn.target_projector)) == 2
    last = list(cnn.projector.modules())[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine
    assert len(linears(cnn.predictor)) == 2
    assert not isinstance(list(cnn.predictor.modules())[-1], torch.nn.BatchNorm1d)
    torch.manual_seed(0)
    vit = build_method("moco", build_encoder("vit_tiny", in_channels=1, spatial_dims=2, img_size=32),
                       hidden_dim=32, out_dim=16)
    assert len(linears(vit.projector)) == 3
    assert len(linears(build("moco", 2, 1, projector_layers=3).projector)) == 3  # the setting overrides it
    bare = build("moco", 2, 1, predictor=False)  # the ablation's MoCo: queries straight from the projector
    assert linears(bare.predictor) == [] and isinstance(bare.predictor, torch.nn.Identity)
    bare.train()
    out = bare(make_batch(2, 1, (32, 32)))
    assert torch.isfinite(out["loss"])


def test_moco_queue_fills_in_training_only():
    method = build("moco", 2, 1)
    batch = make_batch(2, 1, (32, 32))
    method.eval()
    with torch.no_grad():
        method(batch)
    assert int(method.queue.filled) == 0
    method.train()
    method(batch)
    assert int(method.queue.filled) == 2 * B
    out = method(batch)  # second step uses the queue as extra negatives
    assert torch.isfinite(out["loss"])


# ---------------------------------------------------------------- optimiser groups
def test_param_groups_no_decay_on_bias_and_norm():
    method = build("simclr", 2, 1)
    groups = method.param_groups(0.05)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in method.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert any(names[id(p)].endswith("bias") for p in no_decay["params"])
    assert any(".1.weight" in names[id(p)] for p in no_decay["params"])  # BN gamma in stages.i.1
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in method.parameters() if p.requires_grad)


def test_method_checkpoint_feeds_encoder(tmp_path):
    """A medcl checkpoint of a MoCo method loads the ONLINE encoder (not the target) into build_encoder."""
    method = build("moco", 2, 1, encoder="resnet18")
    with torch.no_grad():
        for p in method.target_encoder.parameters():
            p.add_(1.0)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": method.state_dict(), "step": 5}, path)
    enc = build_encoder("resnet18", in_channels=1, spatial_dims=2, pretrained_path=path).eval()
    method.encoder.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), method.encoder(x))


# ---------------------------------------------------------------- dense
def test_flips_are_self_inverse_and_per_sample():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    masks = torch.tensor([[True, False], [False, True]])
    y = apply_flips(x, masks)
    assert torch.equal(y[0], x[0].flip(1)) and torch.equal(y[1], x[1].flip(2))
    assert torch.equal(apply_flips(y, masks), x)
    assert random_flip_masks(5, 3, 0.0).sum() == 0 and random_flip_masks(5, 3, 1.0).all()


def test_dense_rejects_1d_encoder():
    enc = build_encoder("tiny_cnn", in_channels=12, spatial_dims=1)
    with pytest.raises(ConfigError, match="2D or 3D"):
        build_method("dense", enc)


# ---------------------------------------------------------------- oct-severity
def _oct_like(n: int, seed: int, drusen: bool = False) -> torch.Tensor:
    """Synthetic B-scans: a bright retinal band at a random height; 'drusen' adds bright bumps."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    out = []
    for _ in range(n):
        c = g.uniform(12, 20)
        img = np.exp(-((yy - c) ** 2) / 8.0) + 0.05 * g.standard_normal((32, 32))
        if drusen:
            for cx in (8, 16, 24):
                img += 1.5 * np.exp(-(((yy - c + 5) ** 2) + (xx - cx) ** 2) / 3.0)
        out.append(img)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


@pytest.fixture(scope="module")
def severity_model():
    normal = _oct_like(64, seed=1)
    abnormal = _oct_like(8, seed=2, drusen=True)
    images = torch.cat([normal, abnormal])
    labels = torch.tensor([0] * 64 + [1] * 8)
    return fit_severity_model(images, labels, normal_label=0, epochs=12, batch_size=16, widths=(8, 16), seed=0)


@pytest.mark.parametrize("wrt", ["decoder", "input", "error"])
def test_severity_ranks_planted_abnormal_higher(severity_model, wrt):
    normal = _oct_like(12, seed=3)
    planted = _oct_like(1, seed=4, drusen=True)
    scores = severity_scores(severity_model, torch.cat([normal, planted]), wrt=wrt)
    assert scores.shape == (13,) and torch.isfinite(scores).all()
    assert scores[-1] > scores[:-1].max()


def test_severity_decoder_gradient_matches_autograd(severity_model):
    """Per-sample vmap gradients equal a plain per-image autograd loop (independent reference)."""
    images = _oct_like(3, seed=5)
    scores = severity_scores(severity_model, images, wrt="decoder")
    for i in range(3):
        model = copy.deepcopy(severity_model)
        params = list(model.decoder.parameters())
        for p in params:
            p.requires_grad_(True)
        x = images[i : i + 1]
        loss = (model(x) - x).pow(2).mean()
        grads = torch.autograd.grad(loss, params)
        ref = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        assert scores[i] == pytest.approx(float(ref), rel=1e-4)


def test_severity_bins_match_numpy_quantiles():
    scores = torch.tensor([0.3, 5.0, 1.0, 2.5, 0.1, 4.0, 3.3, 0.7, 2.0, 1.5])
    edges = severity_bin_edges(scores, 4)
    ref_edges = np.quantile(scores.numpy().astype(np.float64), [0.25, 0.5, 0.75])
    assert np.allclose(edges.numpy(), ref_edges, atol=1e-6)
    labels = assign_severity(scores, edges)
    assert torch.equal(labels, torch.from_numpy(np.digitize(scores.numpy(), ref_edges.astype(np.float32))))
    assert set(labels.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ConfigError):
        severity_bin_edges(scores, 1)


def test_oct_severity_setup_gives_configured_bins_and_survives_checkpoint():
    normal = _oct_like(12, seed=6)
    sick = _oct_like(4, seed=7, drusen=True)
    images = torch.cat([normal, sick])
    labels = torch.tensor([0] * 12 + [1] * 4)
    loader = [
        {"image": images[i : i + 8], "views": images[i : i + 8, None].repeat(1, 2, 1, 1, 1),
         "label": labels[i : i + 8], "index": torch.arange(i, i + 8)}
        for i in (0, 8)
    ]
    method = build("oct-severity", 2, 1, num_bins=4, ae_epochs=10)
    method.setup(loader)
    pl = method.pseudo_labels
    assert pl.shape == (16,) and set(pl.tolist()) == {0, 1, 2, 3}
    assert torch.bincount(pl, minlength=4).tolist() == [4, 4, 4, 4]
    assert method.bin_edges.shape == (3,)
    assert pl[12:].float().mean() > pl[:12].float().mean()  # planted drusen land in the severe bins
    # the diagnostic: the scores' rank correlation with the grades, positive when drusen score higher
    assert method.label_spearman is not None and method.label_spearman > 0
    check_step(method, loader[1])
    # checkpoint round trip restores the labels and skips the fit
    fresh = build("oct-severity", 2, 1, num_bins=4, ae_epochs=10)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.pseudo_labels, pl) and bool(fresh.fitted)
    fresh.setup(None)  # no refit, no error
    # rows not seen in setup are scored on the fly with the stored edges
    batch = {**loader[0], "index": torch.arange(100, 108)}
    assert fresh.severity_labels(batch).shape == (8,)


def test_flatten_retina_straightens_the_rpe_keeps_drusen_and_ignores_gain_offset_illumination():
    """A hand-made B-scan: a bright RPE line on a known tilted, curved course with one druse lifting it 4 rows."""
    from medcl.methods.severity import flatten_retina

    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    course = 40 + 0.2 * (xx[0] - 32) + 0.004 * (xx[0] - 32) ** 2  # healthy RPE row of each column
    lift = 4.0 * np.exp(-0.5 * ((xx[0] - 20) / 2.0) ** 2)  # a druse at column 20
    img = 0.05 + np.exp(-0.5 * ((yy - (course - lift)[None, :]) / 1.5) ** 2)
    x = torch.from_numpy(img[None, None]).float()
    out = flatten_retina(x)
    assert out.shape == (1, 1, 32, 64)
    anchor = round(0.75 * 32)
    peak = out[0, 0].argmax(0)  # the RPE's row in each output column
    far = (np.abs(np.arange(w) - 20) > 8)
    assert (peak[torch.from_numpy(far)] - anchor).abs().max() <= 1  # the healthy course is one straight row
    assert peak[20] == anchor - 4  # the druse stays, 4 rows above it
    rpe_row = out[0, 0, anchor, torch.from_numpy(far)]
    assert (rpe_row / rpe_row.mean() - 1).abs().max() < 0.15  # one RPE brightness in every column
    # gain, offset and a lateral illumination gradient: the same flattened scan
    illum = torch.from_numpy(1.0 + 0.5 * xx / w).float()
    shaded = 0.1 + 1.7 * x * illum
    torch.testing.assert_close(flatten_retina(1.7 * x + 0.1), out, atol=1e-4, rtol=0)
    assert (flatten_retina(shaded)[0, 0].argmax(0) == peak).all()
    shaded_row = flatten_retina(shaded)[0, 0, anchor, torch.from_numpy(far)]
    assert (shaded_row / rpe_row - 1).abs().max() < 0.1  # the lateral gradient is gone
    with pytest.raises(ConfigError, match="2D B-scans"):
        flatten_retina(torch.zeros(1, 1, 8, 8, 8))


def test_severity_autoencoder_budget_in_optimiser_steps(monkeypatch):
    calls = []
    original = torch.optim.Adam.step

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    images = _oct_like(20, seed=8)
    fit_severity_model(images, torch.zeros(20, dtype=torch.long), steps=7, batch_size=16, widths=(4, 8))
    assert len(calls) == 7  # 2 batches per pass: the data are passed over 4 times, stopping at the 7th step
    calls.clear()
    fit_severity_model(images, torch.zeros(20, dtype=torch.long), epochs=3, batch_size=16, widths=(4, 8))
    assert len(calls) == 6
    with pytest.raises(ConfigError, match="both ae_epochs and ae_steps"):
        build("oct-severity", 2, 1, ae_epochs=2, ae_steps=5)
    with pytest.raises(ConfigError, match="flatten"):
        build("oct-severity", 3, 1)


def test_flattened_loader_flattens_each_scan_once_over_many_passes(monkeypatch):
    """The un-augmented setup loader gives the same scans every pass: the first pass is replayed, not recomputed."""
    import medcl.methods.severity as sev

    reads = []

    class Source:
        def __iter__(self):
            reads.append(1)
            images = _oct_like(8, seed=9)
            yield from ({"image": images[i:i + 4], "label": torch.zeros(4, dtype=torch.long)} for i in (0, 4))

    view = sev._Flattened(Source())
    first = [b["image"] for b in view]
    fit_severity_model(view, steps=7, widths=(4, 8))  # 2 batches a pass: 4 passes
    assert len(reads) == 1
    torch.testing.assert_close(torch.cat(first), sev.flatten_retina(_oct_like(8, seed=9)))
    big = sev._Flattened(Source(), max_bytes=1)  # too big to keep: read again each pass
    list(big), list(big)
    assert len(reads) == 3


def test_oct_severity_without_normal_scans():
    method = build("oct-severity", 2, 1)
    batch = make_batch(2, 1, (32, 32))
    batch["label"] = torch.ones(B, dtype=torch.long)
    with pytest.raises(DataError, match="no normal scan"):
        method.setup([batch])
    with pytest.raises(ConfigError, match="setup"):
        method(batch)


def test_supcon_graph_on_single_label_grades_equals_the_one_hot_multilabel_loss():
    """Ordinal grades (B,) with a graph spec: the same loss as the one-hot multi-hot labels, graph in data order."""
    spec = {"classes": ["early", "normal", "intermediate"],  # not the data's order on purpose
            "edges": [["normal", "early", 0.5], ["early", "intermediate", 0.5]]}
    data_classes = ["normal", "early", "intermediate"]
    single = build("supcon-graph", 2, 1, similarity=spec, classes=data_classes)
    sim = single.criterion.similarity
    # in data order: normal-early 0.5, early-intermediate 0.5, normal-intermediate 0.25 (path product)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 1.0]]))
    batch = make_batch(2, 1, (32, 32))  # labels [0, 1, 2, 0, 1, -1]
    multi = build("supcon-graph", 2, 1, similarity=sim.tolist())
    one_hot = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [float("nan")] * 3])
    torch.testing.assert_close(single.labels(batch), torch.nan_to_num(one_hot))
    single.train()
    multi.train()
    multi.load_state_dict(single.state_dict())
    a = single(batch)["loss"]
    b = multi({**batch, "label": one_hot})["loss"]
    torch.testing.assert_close(a, b)


def test_supcon_graph_refuses_a_graph_whose_classes_differ_from_the_data():
    spec = {"classes": ["normal", "early"], "edges": [["normal", "early", 0.5]]}
    with pytest.raises(ConfigError, match=r"not in the graph: \['intermediate'\]"):
        build("supcon-graph", 2, 1, similarity=spec, classes=["normal", "early", "intermediate"])
    with pytest.raises(ConfigError, match="needs a class similarity graph"):
        build("supcon-graph", 2, 1, similarity=None).labels({"label": torch.tensor([0, 1])})



def test_severity_label_spearman_by_hand():
    from medcl.methods.severity import severity_label_spearman

    # ranks of the scores 1..4 against the grades' mid-ranks 1.5, 1.5, 3.5, 3.5: rho = 4 / sqrt(5 * 4) = 0.894
    rho = severity_label_spearman(torch.tensor([0.1, 0.2, 0.3, 0.4, 9.0]), torch.tensor([0, 0, 1, 1, -1]))
    assert rho == pytest.approx(4 / 20 ** 0.5, abs=1e-9)  # the unlabelled image (-1) is left out
    assert severity_label_spearman(torch.tensor([0.3, 0.1, 0.2]), torch.tensor([1, 1, 1])) is None  # one class
    assert severity_label_spearman(torch.tensor([0.3, 0.1]), torch.tensor([0, 1])) is None  # too few
