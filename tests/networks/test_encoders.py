"""Encoders, heads and local weight loading (CPU, tiny inputs, no network)."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from medcl.errors import CheckpointError, ConfigError
from medcl.networks import ENCODERS, DenseProjectionHead, PredictorHead, ProjectionHead, build_encoder
from medcl.networks.weights import adapt_input_channels

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
    """Any attempt to open a connection (e.g. a hub download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# (name, spatial_dims) -> (input shape without batch, kwargs, expected feature_dim)
CASES: dict[tuple[str, int], tuple[tuple[int, ...], dict, int]] = {
    ("resnet18", 2): ((1, 64, 64), {}, 512),
    ("resnet18", 3): ((1, 16, 32, 32), {}, 512),
    ("resnet18", 1): ((12, 1000), {}, 512),
    ("resnet10", 3): ((1, 16, 32, 32), {}, 512),
    ("resnet10", 1): ((12, 1000), {}, 512),
    ("resnet34", 2): ((3, 32, 32), {}, 512),
    ("resnet34", 3): ((1, 16, 16, 16), {}, 512),
    ("resnet50", 2): ((3, 32, 32), {}, 2048),
    ("resnet50", 3): ((1, 8, 16, 16), {}, 2048),
    ("convnext_tiny", 2): ((3, 32, 32), {}, 768),
    ("vit_small", 2): ((1, 64, 64), {}, 384),
    ("vit_tiny", 2): ((3, 32, 32), {}, 192),
    ("efficientnet_b0", 2): ((3, 32, 32), {}, 1280),
    ("densenet121", 2): ((3, 32, 32), {}, 1024),
    ("swin_unetr_encoder", 3): ((1, 32, 32, 32), {"feature_size": 12}, 192),
    ("swin_unetr_encoder", 2): ((1, 64, 64), {"feature_size": 12}, 192),
    ("unet_encoder", 2): ((1, 32, 32), {}, 256),
    ("unet_encoder", 3): ((1, 32, 32, 32), {"features": (8, 8, 16, 16, 32)}, 32),
    ("unet_encoder2d", 2): ((1, 32, 32), {"features": (8, 8, 16, 16, 32)}, 32),
    ("unet_encoder3d", 3): ((1, 32, 32, 32), {"features": (8, 8, 16, 16, 32)}, 32),
    ("resnet1d", 1): ((12, 1000), {}, 512),
    ("xresnet1d", 1): ((12, 1000), {}, 2048),
    ("xresnet1d101", 1): ((12, 256), {}, 2048),
    ("tiny_cnn", 1): ((12, 1000), {}, 64),
    ("tiny_cnn", 2): ((1, 64, 64), {}, 64),
    ("tiny_cnn", 3): ((1, 16, 32, 32), {}, 64),
}


def test_cases_cover_the_registry():
    registered = {(n, d) for n, spec in ENCODERS.items() for d in spec.by_dims}
    assert registered == set(CASES)


@pytest.mark.parametrize("name,dims", sorted(CASES), ids=[f"{n}-{d}d" for n, d in sorted(CASES)])
def test_encoder_shapes(name, dims):
    shape, kwargs, feature_dim = CASES[(name, dims)]
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=shape[0], spatial_dims=dims, **kwargs).eval()
    assert enc.feature_dim == feature_dim
    assert enc.spatial_dims == dims and enc.in_channels == shape[0] and enc.name == name
    x = torch.randn(2, *shape)
    with torch.no_grad():
        f = enc(x)
        dense = enc.forward_dense(x)
        pyramid = enc.forward_pyramid(x)
    assert f.shape == (2, feature_dim)
    assert torch.isfinite(f).all()
    assert dense.dim() == dims + 2 and dense.shape[:2] == (2, enc.dense_dim)
    assert [p.shape[1] for p in pyramid] == enc.pyramid_channels
    for p in pyramid:
        assert p.dim() == dims + 2 and p.shape[0] == 2
    assert all(s >= 1 for s in dense.shape[2:]) and all(a <= b for a, b in zip(dense.shape[2:], shape[1:]))


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_2d_in_channels(channels):
    enc = build_encoder("resnet18", in_channels=channels, spatial_dims=2).eval()
    assert enc.model.conv1.weight.shape[1] == channels
    with torch.no_grad():
        assert enc(torch.randn(2, channels, 64, 64)).shape == (2, 512)
        assert enc.forward_dense(torch.randn(2, channels, 64, 64)).shape == (2, 512, 2, 2)


def test_monai_resnet_matches_monai_forward():
    """Our pooled features equal MONAI's own headless ResNet forward (independent reference)."""
    enc = build_encoder("resnet10", in_channels=1, spatial_dims=3).eval()
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc(x), enc.net(x), atol=1e-5)


def test_vit_dense_is_patch_token_grid():
    enc = build_encoder("vit_tiny", in_channels=1, spatial_dims=2).eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        tokens = enc.model.forward_features(x)  # (B, 1 + N, D), after the final norm
        dense = enc.forward_dense(x)
    grid = tokens[:, enc.model.num_prefix_tokens :].transpose(1, 2).reshape(2, 192, 4, 3)
    assert torch.allclose(dense, grid, atol=1e-5)


def test_swin_encoder_weights_fit_monai_swinunetr():
    """The encoder's state dict is exactly SwinUNETR's ``swinViT`` part, so segmentation can reuse it."""
    from monai.networks.nets import SwinUNETR

    enc = build_encoder("swin_unetr_encoder", in_channels=1, spatial_dims=3, feature_size=12).eval()
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    res = net.load_state_dict(enc.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert all(not k.startswith("swinViT.") for k in res.missing_keys)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours, theirs = enc.forward_pyramid(x), net.swinViT(x, True)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_swin_rejects_sizes_not_divisible_by_32():
    enc = build_encoder("swin_unetr_encoder", in_channels=1, spatial_dims=3, feature_size=12)
    with pytest.raises(ConfigError, match="divisible by 32"):
        enc(torch.randn(1, 1, 32, 32, 24))


def test_unet_encoder_weights_fit_monai_basicunet():
    from monai.networks.nets import BasicUNet

    enc = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=(8, 8, 16, 16, 32))
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(8, 8, 16, 16, 32, 8), norm=enc.norm)
    res = net.load_state_dict(enc.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert {k.split(".")[0] for k in res.missing_keys} == {"upcat_4", "upcat_3", "upcat_2", "upcat_1", "final_conv"}


def test_basic_unet_segmenter_takes_the_encoders_norm():
    from medcl.tasks.segmentation_networks import _basic_unet

    enc = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=(8, 8, 16, 16, 32))
    net = _basic_unet(3, 1, 2, enc, {})
    assert isinstance(net.conv_0.conv_0.adn.N, torch.nn.BatchNorm3d)
    assert net.load_state_dict(enc.state_dict(), strict=False).unexpected_keys == []


def test_unet_encoder_pooled_features_keep_each_volumes_level():
    """Instance norm makes every channel zero-mean, unit-variance per sample, so after a convolution with
    bias, a gain ``a·x`` (``a > 0``; zero padding scales with it) gives the same normalised maps and the same
    pooled features: the encoder could not tell a brighter volume from a darker one. The default (batch norm,
    statistics over the batch) keeps the difference."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32, 16)
    batch = torch.cat([x, 2.5 * x])  # the same volume, once 2.5 times brighter, in one training batch
    inst = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=(4, 4, 8, 8, 16),
                         norm=("instance", {"affine": True}))
    default = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=(4, 4, 8, 8, 16))
    with torch.no_grad():
        f_inst, f_default = inst(batch), default(batch)
    assert isinstance(default.conv_0.conv_0.adn.N, torch.nn.BatchNorm3d)
    assert torch.allclose(f_inst[0], f_inst[1], atol=1e-4)
    assert (f_default[0] - f_default[1]).abs().max() > 0.05 * f_default.abs().max()


# ---------------------------------------------------------------- registry errors
def test_unknown_encoder_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean .*'resnet18'"):
        build_encoder("resnet81", in_channels=1)


def test_unsupported_spatial_dims():
    with pytest.raises(ConfigError, match="does not support spatial_dims=3"):
        build_encoder("convnext_tiny", in_channels=1, spatial_dims=3)


def test_unknown_option():
    with pytest.raises(ConfigError, match="unknown option.*'widthz'"):
        build_encoder("tiny_cnn", in_channels=1, spatial_dims=2, widthz=(4,))
    with pytest.raises(ConfigError, match="unknown option.*'featurs'.*accepted options: .*features"):
        build_encoder("unet_encoder", in_channels=1, spatial_dims=2, featurs=(4,))


# ---------------------------------------------------------------- weights
def _outputs(enc, x):
    enc.eval()
    with torch.no_grad():
        return enc(x)


def test_round_trip_medcl_state_dict(tmp_path):
    torch.manual_seed(0)
    a = build_encoder("resnet18", in_channels=1, spatial_dims=2)
    path = tmp_path / "enc.pth"
    torch.save(a.state_dict(), path)
    torch.manual_seed(1)
    b = build_encoder("resnet18", in_channels=1, spatial_dims=2, pretrained_path=path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(_outputs(a, x), _outputs(b, x))


def test_round_trip_timm_safetensors_with_classifier(tmp_path):
    """A timm file (with its classifier, as published) loads; the head is dropped silently."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=10).eval()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = build_encoder("resnet18", in_channels=3, spatial_dims=2, pretrained_path=path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert torch.allclose(_outputs(enc, x), expected, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_rgb_weights_adapted_to_input_channels_like_timm(tmp_path, channels):
    import timm
    from timm.models import adapt_input_conv

    torch.manual_seed(0)
    rgb = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=0)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    enc = build_encoder("resnet18", in_channels=channels, spatial_dims=2, pretrained_path=path)
    expected = adapt_input_conv(channels, rgb.conv1.weight.detach().clone())
    assert torch.allclose(enc.model.conv1.weight, expected, atol=1e-6)
    assert torch.equal(enc.model.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


def test_adapt_input_channels_any_dims():
    w = torch.randn(8, 3, 3, 3, 3)
    assert torch.allclose(adapt_input_channels(w, 1), w.sum(1, keepdim=True))
    w5 = adapt_input_channels(w, 5)
    assert w5.shape == (8, 5, 3, 3, 3)
    assert torch.allclose(w5[:, 3:5], w[:, 0:2] * 3 / 5)


def test_vit_position_embedding_resampled(tmp_path):
    a = build_encoder("vit_tiny", in_channels=3, spatial_dims=2)  # 224 → 14×14 grid
    path = tmp_path / "vit.pth"
    torch.save(a.weights_module().state_dict(), path)
    b = build_encoder("vit_tiny", in_channels=3, spatial_dims=2, img_size=64, pretrained_path=path)
    assert b.model.pos_embed.shape == (1, 1 + 16, 192)
    assert torch.equal(b.model.pos_embed[:, :1], a.model.pos_embed[:, :1])  # class token untouched


def test_round_trip_med3d_style_module_prefix(tmp_path):
    """MedicalNet/Med3D files carry DDP's ``module.`` prefix and no classifier."""
    torch.manual_seed(0)
    a = build_encoder("resnet10", in_channels=1, spatial_dims=3)
    path = tmp_path / "med3d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.net.state_dict().items()}}, path)
    torch.manual_seed(1)
    b = build_encoder("resnet10", in_channels=1, spatial_dims=3, pretrained_path=path)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.equal(_outputs(a, x), _outputs(b, x))


def test_round_trip_xresnet1d(tmp_path):
    torch.manual_seed(0)
    a = build_encoder("xresnet1d", in_channels=12, spatial_dims=1, layers=(1, 1, 1, 1))
    path = tmp_path / "x.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in a.state_dict().items()}, "epoch": 3}, path)
    b = build_encoder("xresnet1d", in_channels=12, spatial_dims=1, layers=(1, 1, 1, 1), pretrained_path=path)
    x = torch.randn(2, 12, 500)
    assert torch.equal(_outputs(a, x), _outputs(b, x))


def test_wrong_architecture_gives_clear_error(tmp_path):
    a = build_encoder("resnet18", in_channels=1, spatial_dims=2)
    path = tmp_path / "r18.pth"
    torch.save(a.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_encoder("resnet34", in_channels=1, spatial_dims=2, pretrained_path=path)
    msg = str(info.value)
    assert "missing key" in msg and "layer1.2" in msg and str(path) in msg and "pretrained_strict" in msg
    assert "norm" not in info.value.fix  # not the hint for weights that differ only in their normalisation layers
    # Non-strict loading takes the matching part.
    b = build_encoder("resnet34", in_channels=1, spatial_dims=2, pretrained_path=path, pretrained_strict=False)
    assert torch.equal(b.model.conv1.weight, a.model.conv1.weight)


@pytest.mark.parametrize(("saved", "wanted", "fix"), [("instance", "batch", "model.options.norm=instance"),
                                                       ("batch", "instance", "model.options.norm=batch")])
def test_other_normalisation_names_the_norm_option(tmp_path, saved, wanted, fix):
    """A unet_encoder3d trained with instance norm (MONAI's parameter-free default, medcl's before batch norm) has no
    norm tensors; loaded into a batch-norm encoder the only missing keys are the norm layers', and the error says
    which option to set (and the reverse for running statistics in the file)."""
    feats = (4, 4, 8, 8, 16)
    a = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=feats, norm=saved)
    path = tmp_path / "old.pth"
    torch.save(a.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=feats, norm=wanted, pretrained_path=path)
    assert fix in info.value.fix and "running_" in str(info.value)
    b = build_encoder("unet_encoder3d", in_channels=1, spatial_dims=3, features=feats, norm=saved, pretrained_path=path)
    x = torch.rand(2, 1, 32, 32, 16)
    assert torch.equal(_outputs(a, x), _outputs(b, x))


def test_width_mismatch_lists_shapes(tmp_path):
    a = build_encoder("tiny_cnn", in_channels=1, spatial_dims=2, widths=(8, 16))
    path = tmp_path / "t.pth"
    torch.save(a.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*file \(16, 8, 3, 3\) vs model \(32, 8, 3, 3\)"):
        build_encoder("tiny_cnn", in_channels=1, spatial_dims=2, widths=(8, 32), pretrained_path=path)


def test_unrelated_file_and_missing_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.bar": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no key of the weights file matches"):
        build_encoder("tiny_cnn", in_channels=1, pretrained_path=path)
    with pytest.raises(CheckpointError, match="not found"):
        build_encoder("tiny_cnn", in_channels=1, pretrained_path=tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_encoder("tiny_cnn", in_channels=1, pretrained_path=bad)


# ---------------------------------------------------------------- heads
def test_projection_head_layout():
    head = ProjectionHead(64, hidden_dim=32, out_dim=16, num_layers=3, last_bn=True)
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    bns = [m for m in head.net if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)  # followed by BN
    assert len(bns) == 3 and not bns[-1].affine and bns[0].affine
    out = head(torch.randn(8, 64))
    assert out.shape == (8, 16)
    # last BN without affine: per-dimension zero mean, unit variance in training mode
    assert torch.allclose(out.mean(0), torch.zeros(16), atol=1e-5)


def test_predictor_and_dense_heads():
    pred = PredictorHead(16, hidden_dim=32)
    assert pred(torch.randn(4, 16)).shape == (4, 16)
    d2 = DenseProjectionHead(64, 32, 8, spatial_dims=2)
    d3 = DenseProjectionHead(64, 32, 8, spatial_dims=3)
    assert d2(torch.randn(2, 64, 5, 6)).shape == (2, 8, 5, 6)
    assert d3(torch.randn(2, 64, 3, 4, 5)).shape == (2, 8, 3, 4, 5)
    # 1×1 convs act per location: equal to the linear map applied to every pixel.
    x = torch.randn(1, 64, 2, 2)
    w1, w2 = d2.net[0].weight[:, :, 0, 0], d2.net[2].weight[:, :, 0, 0]
    ref = torch.relu(x.permute(0, 2, 3, 1) @ w1.T + d2.net[0].bias) @ w2.T + d2.net[2].bias
    assert torch.allclose(d2(x), ref.permute(0, 3, 1, 2), atol=1e-5)
    with pytest.raises(ConfigError):
        ProjectionHead(8, num_layers=0)
