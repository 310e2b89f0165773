"""Segmentation pieces on tiny synthetic tensors (2D 32×32, 3D 16³), checked against MONAI itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError
from medcl.tasks.segmentation import (
    NETWORKS,
    EncoderUNet,
    SegmentationWrapper,
    build_segmentation_network,
    case_mean,
    check_roi_size,
    mask_to_labels,
    mean_dice_ci,
    overlay_figure,
    pick_slice,
    sliding_window_predict,
    summarise_per_class,
    transfer_encoder_weights,
)

# small options per network so every test stays in the sub-second range
SMALL = {
    "unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "basic_unet": {"features": (4, 4, 8, 8, 16, 4)},
    "swin_unetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "encoder_unet": {"decoder_channels": (8, 8), "input_channels": 4},
}


def _encoder(dims: int):
    from medcl.networks import build_encoder

    return build_encoder("tiny_cnn", in_channels=1, spatial_dims=dims, widths=(8, 16, 16))


def _blobs(dims: int, n: int = 4, side: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright box (the mask) on noise: ``(n, 1, *S)`` float and ``(n, 1, *S)`` labels."""
    g = torch.Generator().manual_seed(seed)
    side = side or (32 if dims == 2 else 16)
    shape = (n, 1) + (side,) * dims
    mask = torch.zeros(shape)
    for b in range(n):
        lo = torch.randint(1, side // 2, (dims,), generator=g)
        sl = tuple(slice(int(a), int(a) + side // 3) for a in lo)
        mask[(b, 0, *sl)] = 1.0
    x = mask * 2.0 + 0.3 * torch.randn(shape, generator=g)
    return x, mask


def test_registry_covers_the_config_literal():
    from typing import get_args

    from medcl.config.schema import SegmentConfig

    allowed = set(get_args(SegmentConfig.model_fields["network"].annotation))
    assert allowed == set(NETWORKS)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_networks_give_logits_of_the_input_size(name, dims):
    side = 64 if name == "swin_unetr" else (32 if dims == 2 or name == "basic_unet" else 16)
    enc = _encoder(dims)
    net = build_segmentation_network(name, spatial_dims=dims, in_channels=1, num_classes=3, encoder=enc,
                                     **SMALL[name])
    n = 1 if name == "swin_unetr" and dims == 3 else 2  # 3D SwinUNETR needs 64³: one volume, no gradients
    x = torch.randn((n, 1) + (side,) * dims)
    with torch.no_grad():
        assert net.eval()(x).shape == (n, 3) + (side,) * dims


@pytest.mark.parametrize("dims", [2, 3])
def test_dice_ce_decreases_on_a_learnable_mask(dims):
    torch.manual_seed(0)
    x, m = _blobs(dims)
    net = EncoderUNet(_encoder(dims), 2, decoder_channels=(8, 8), input_channels=4)
    model = SegmentationWrapper(net, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        out = model({"image": x, "mask": m})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert out["logits"].shape == (4, 2) + x.shape[2:]
    assert losses[-1] < 0.7 * losses[0], losses


def test_dice_ce_is_monai_dice_plus_cross_entropy():
    from monai.losses import DiceLoss

    x, m = _blobs(2, n=2)
    logits = torch.randn(2, 3, 32, 32)
    net = torch.nn.Identity()
    wrapper = SegmentationWrapper(net, 3)
    got = wrapper({"image": logits, "mask": m * 2})["loss"]
    y = (m * 2).long()
    want = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)(logits, y)
    assert torch.allclose(got, want + torch.nn.functional.cross_entropy(logits, y[:, 0]), atol=1e-5)
    # by hand: one soft Dice per foreground class over the whole batch
    p = logits.softmax(1)[:, 1:]
    t = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1)[:, 1:].float()
    inter, denom = (p * t).sum((0, 2, 3)), (p + t).sum((0, 2, 3))
    assert torch.allclose(want, (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean(), atol=1e-5)


@pytest.mark.parametrize("background,batch", [(True, True), (False, False), (True, False)])
def test_dice_ce_equals_monai_dice_ce_in_value_and_gradient(background, batch):
    """medcl's DDP-aware DiceCE against MONAI's DiceCELoss (the reference) on one process."""
    from monai.losses import DiceCELoss as MonaiDiceCE

    from medcl.losses.segmentation import DiceCELoss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 6, 5, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (3, 1, 6, 5, 4), generator=g)
    ours = DiceCELoss(include_background=background, batch=batch, lambda_dice=0.7, lambda_ce=1.3)(logits, target)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = MonaiDiceCE(to_onehot_y=True, softmax=True, include_background=background, batch=batch,
                      lambda_dice=0.7, lambda_ce=1.3)(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)


@pytest.mark.parametrize("dims,side,roi", [(2, 32, (16, 16)), (3, 16, (8, 8, 8)), (3, 16, (16, 8, 12))])
def test_sliding_window_keeps_the_input_shape(dims, side, roi):
    net = EncoderUNet(_encoder(dims), 2, decoder_channels=(8, 8), input_channels=4).eval()
    x = torch.randn((2, 1) + (side,) * dims)
    out = sliding_window_predict(net, x, roi, sw_batch_size=3)
    assert out.shape == (2, 2) + (side,) * dims


def test_sliding_window_with_one_window_equals_a_plain_forward():
    net = EncoderUNet(_encoder(3), 2, decoder_channels=(8, 8), input_channels=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        direct = net(x)
    assert torch.allclose(sliding_window_predict(net, x, (16, 16, 16)), direct, atol=1e-5)


def test_sliding_window_rejects_a_roi_of_the_wrong_rank():
    with pytest.raises(ConfigError, match="roi_size"):
        sliding_window_predict(torch.nn.Identity(), torch.zeros(1, 1, 8, 8), (4, 4, 4))


def test_per_class_dice_and_hd95_equal_monai_metrics_on_a_known_pair():
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from medcl.metrics.segmentation import dice_per_class, hd95_per_class, segmentation_metrics

    true = np.zeros((2, 1, 16, 16, 16), np.int64)
    pred = np.zeros_like(true)
    true[0, 0, 2:8, 2:8, 2:8] = 1
    pred[0, 0, 3:9, 2:8, 2:8] = 1  # shifted by one voxel
    true[0, 0, 10:14, 10:14, 10:14] = 2
    pred[0, 0, 10:14, 10:14, 10:13] = 2
    true[1, 0, 4:12, 4:12, 4:12] = 1  # case 2: class 2 absent from truth → undefined
    pred[1, 0, 4:12, 4:12, 4:10] = 1
    spacing = (1.0, 2.0, 3.0)
    d = dice_per_class(pred, true, 3)
    h = hd95_per_class(pred, true, 3, spacing=spacing)
    got = summarise_per_class(d, h, ["a", "b"])

    onehot = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a[:, 0]), 3).movedim(-1, 1).float()  # noqa: E731
    ref_d = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(onehot(pred), onehot(true))
    ref_h = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
        onehot(pred), onehot(true), spacing=list(spacing))
    assert np.allclose(d, ref_d.numpy(), equal_nan=True)
    assert np.allclose(got["dice/a"], np.nanmean(ref_d[:, 0].numpy()))
    assert np.allclose(got["dice/b"], ref_d[0, 1].item())
    assert np.isfinite(ref_h[0, 0].item()) and np.allclose(got["hd95/a"], np.nanmean(ref_h[:, 0].numpy()))
    # hand-computed: class a in case 0 overlaps 5·6·6 of 6·6·6 voxels each way
    assert np.isclose(d[0, 0], 2 * 180 / (216 + 216))
    assert np.isclose(d[1, 0], 2 * 8 * 8 * 6 / (512 + 384))
    assert np.isnan(d[1, 1]) and got["n_cases/b"] == 1
    # and the same numbers as the metrics module's own summary
    sm = segmentation_metrics(pred, true, 3, class_names=["bg", "a", "b"], spacing=spacing)
    for k in ("dice", "hd95", "dice/a", "dice/b", "hd95/a", "hd95/b"):
        assert np.isclose(got[k], sm[k], equal_nan=True), k
    assert np.allclose(case_mean(d), [np.mean(d[0]), d[1, 0]])


def test_mean_dice_ci_is_patient_level_and_skips_undefined_cases():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.4, 0.9, 40)
    dice[::7] = np.nan
    patients = np.repeat(np.arange(10), 4)
    ci = mean_dice_ci(dice, patients, n_boot=300, seed=1)
    assert np.isclose(ci["value"], np.nanmean(dice))
    assert ci["n_cases"] == int(np.isfinite(dice).sum()) and ci["n_patients"] == 10
    assert ci["ci_low"] < ci["value"] < ci["ci_high"]
    # cluster bootstrap: identical cases within a patient make the interval wider than treating them as independent
    same = np.repeat(rng.uniform(0.2, 0.9, 10), 4)
    clustered = mean_dice_ci(same, patients, n_boot=400, seed=2)
    independent = mean_dice_ci(same, np.arange(40), n_boot=400, seed=2)
    assert clustered["ci_high"] - clustered["ci_low"] > 1.3 * (independent["ci_high"] - independent["ci_low"])
    one = mean_dice_ci(np.array([0.5, 0.7]), np.array([3, 3]))
    assert one["value"] == pytest.approx(0.6) and np.isnan(one["ci_low"])
    # two patients: resamples {a,a}, {a,b}, {b,b} all count, so the 95 % interval spans [a, b]
    two = mean_dice_ci(np.array([0.2, 0.8]), np.array([0, 1]), n_boot=500)
    assert two["ci_low"] == pytest.approx(0.2) and two["ci_high"] == pytest.approx(0.8)
    with pytest.raises(DataError):
        mean_dice_ci(np.ones(3), np.arange(2))


def test_pretrained_basic_unet_and_swin_encoders_transfer_into_monai_networks():
    from medcl.networks import build_encoder

    enc = build_encoder("unet_encoder2d", in_channels=1, spatial_dims=2, features=(4, 4, 8, 8, 16))
    net = build_segmentation_network("basic_unet", spatial_dims=2, in_channels=1, num_classes=2, encoder=enc)
    n = transfer_encoder_weights(net, enc)
    assert n == len(enc.state_dict())
    sd = net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in enc.state_dict().items())

    swin = build_encoder("swin_unetr_encoder", in_channels=1, spatial_dims=2, feature_size=12)
    snet = build_segmentation_network("swin_unetr", spatial_dims=2, in_channels=1, num_classes=2, encoder=swin)
    assert transfer_encoder_weights(snet, swin) == len(swin.state_dict())
    # a plain MONAI UNet shares nothing with a medcl encoder
    unet = build_segmentation_network("unet", spatial_dims=2, in_channels=1, num_classes=2, **SMALL["unet"])
    assert transfer_encoder_weights(unet, enc) == 0


def test_encoder_unet_trains_the_encoder_it_was_given():
    enc = _encoder(2)
    net = EncoderUNet(enc, 2)
    assert net.encoder is enc
    x, m = _blobs(2, n=2)
    SegmentationWrapper(net, 2)({"image": x, "mask": m})["loss"].backward()
    assert all(p.grad is not None for p in enc.parameters())
    # without the full-resolution input branch the finest decoder stage (stride 2 here) is upsampled
    bare = EncoderUNet(_encoder(2), 3, input_channels=0)
    assert bare.input_branch is None and bare(x).shape == (2, 3, 32, 32)


def test_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match="did you mean 'unet'") as e:
        build_segmentation_network("unett", spatial_dims=2, in_channels=1, num_classes=2)
    assert e.value.where == "segment.network"
    with pytest.raises(ConfigError, match="multiples of 16") as e:
        check_roi_size("unet", (24, 32), {"strides": (2, 2, 2, 2)})
    assert "[32, 32]" in e.value.fix
    with pytest.raises(ConfigError, match="at least 64"):
        check_roi_size("swin_unetr", (32, 64))
    check_roi_size("unet", (24, 32), {"strides": (2, 2, 2)})
    check_roi_size("encoder_unet", (13, 7))
    with pytest.raises(ConfigError, match="decoder_channels"):
        EncoderUNet(_encoder(2), 2, decoder_channels=(8,))
    with pytest.raises(ConfigError, match="bad option"):
        build_segmentation_network("unet", spatial_dims=2, in_channels=1, num_classes=2, nonsense=1)
    with pytest.raises(DataError, match="num_classes"):
        mask_to_labels(torch.full((1, 1, 4, 4), 3.0), 2)
    with pytest.raises(DataError, match="non-integer"):
        mask_to_labels(torch.full((1, 1, 4, 4), 0.5), 2)
    with pytest.raises(DataError, match="mask"):
        SegmentationWrapper(torch.nn.Identity(), 2)({"image": torch.zeros(1, 2, 4, 4)})


def test_overlay_shows_the_slice_with_the_most_foreground(tmp_path):
    m = np.zeros((8, 8, 6), np.uint8)
    m[2:5, 2:5, 1] = 1
    m[1:7, 1:7, 4] = 1
    assert pick_slice(m) == 4
    assert pick_slice(np.zeros((4, 4, 6))) == 3
    img = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    fig = overlay_figure(img, m[..., 4], {"pretrained": m[..., 4], "scratch": np.zeros((8, 8))}, title="row 3",
                         dice={"pretrained": 1.0, "scratch": 0.0})
    assert len(fig.axes) == 2 and "Dice 1.00" in fig.axes[0].get_title()
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"


def test_whole_image_segmentation_keeps_the_affine_of_a_2d_image(tmp_path):
    """A 2D preset's deterministic part runs on plain tensors in training; for whole-image segmentation it must
    keep the affine, so masks map back to the input's pixels: resizing 40×24 to 20×12 makes each output pixel
    two input pixels along both axes."""
    import numpy as np
    from monai.data import MetaTensor
    from PIL import Image

    from medcl.tasks.export import whole_image_transform

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 24), dtype=np.uint8)).save(tmp_path / "s.png")
    out = whole_image_transform({"preset": "oct", "resize": [20, 12], "spatial_size": [16, 16]})(
        {"image": str(tmp_path / "s.png")})["image"]
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 20, 12)
    np.testing.assert_allclose(np.diag(np.asarray(out.affine))[:2], [2.0, 2.0])
