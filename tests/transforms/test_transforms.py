"""Modality presets, custom transforms and multi-view generation.

Tiny arrays and real files (PNG via Pillow, NIfTI via nibabel, WFDB via wfdb) read by the real
medcl readers; custom math is compared with independent references (scikit-image, torchvision,
NumPy, SciPy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medcl.errors import ConfigError, DataError
from medcl.transforms import PRESETS, build_transforms, preset_info, set_transform_seed

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "modality"
TINY = {  # preset -> (input shape, overrides keeping the chain tiny)
    "ct": ((1, 14, 12, 10), {"spatial_size": [8, 8, 8], "spacing": [1.0, 1.0, 1.0]}),
    "mri": ((1, 14, 12, 10), {"spatial_size": [8, 8, 8], "spacing": [1.0, 1.0, 1.0]}),
    "histo": ((3, 40, 40), {"spatial_size": [32, 32]}),
    "oct": ((1, 48, 40), {"spatial_size": [32, 32]}),
    "fundus": ((3, 48, 64), {"spatial_size": [32, 32]}),
    "ecg": ((12, 2000), {"sampling_rate": 500, "window_s": 1.0}),
}


class _Sample:
    """What a medcl reader returns: ``.array`` and ``.meta``."""

    def __init__(self, array: np.ndarray, meta: dict) -> None:
        self.array, self.meta = array, meta


def _tiny_sample(name: str, seed: int = 0) -> _Sample:
    shape, _ = TINY[name]
    rng = np.random.default_rng(seed)
    if name == "ct":
        arr = rng.uniform(-300, 300, shape)
    elif name == "mri":
        arr = np.zeros(shape)
        arr[:, 2:-2, 2:-2, 2:-2] = rng.uniform(100, 400, (1, shape[1] - 4, shape[2] - 4, shape[3] - 4))
    elif name == "ecg":
        t = np.arange(shape[1]) / 500.0
        arr = np.sin(2 * np.pi * 1.2 * t)[None] * rng.uniform(0.5, 2, (12, 1)) + 0.05 * rng.normal(size=shape)
    elif name == "fundus":
        arr = _fundus_array(shape[1], shape[2], (shape[1] - 1) / 2, (shape[2] - 1) / 2, 20, rng)
    else:
        arr = rng.uniform(0, 255, shape)
    meta = {"affine": np.eye(4).tolist()} if PRESETS[name].spatial_dims == 3 else {}
    if name == "ecg":
        meta["sampling_rate"] = 500.0
    return _Sample(arr.astype(np.float32), meta)


def _fundus_array(h, w, cy, cx, r, rng):
    """Bright textured disc on a dark (below threshold) surround, 0..255."""
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    img = rng.uniform(0, 5, (3, h, w))  # dark surround: < 0.04 * 255
    img[:, inside] = rng.uniform(60, 220, (3, int(inside.sum())))
    return img


def _item(sample, **extra):
    return {"image": sample, "label": 2, "patient": 7, "index": 11, **extra}


# ------------------------------------------------------------------------------------------------
# every preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_eval_and_train_shapes_and_ranges(name):
    shape, kw = TINY[name]
    info = preset_info(name)
    sample = _tiny_sample(name)
    ev = build_transforms(name, train=False, **kw)
    out = ev(_item(sample))
    img = out["image"]
    if name == "ecg":
        expected = (12, 500)
    else:
        expected = (shape[0], *kw["spatial_size"])
    assert type(img) is torch.Tensor and img.dtype == torch.float32
    assert tuple(img.shape) == expected
    assert torch.isfinite(img).all()
    # eval is deterministic
    assert torch.equal(ev(_item(sample))["image"], img)
    if name in ("ct", "histo", "oct", "fundus"):
        assert img.min() >= 0 and img.max() <= 1
    if name == "mri":  # nonzero z-score: brain voxels ~ N(0, 1), background stays 0
        fg = img[img != 0]
        assert abs(float(fg.mean())) < 0.3 and 0.6 < float(fg.std()) < 1.4
    assert out["label"] == 2 and out["patient"] == 7 and out["index"] == 11

    tr = build_transforms(name, train=True, views=2, **kw)
    set_transform_seed(tr, 123)
    views = tr(_item(sample))
    assert "image" not in views and tuple(views["views"].shape) == (2, *expected)
    assert views["views"].dtype == torch.float32 and torch.isfinite(views["views"]).all()
    assert not torch.equal(views["views"][0], views["views"][1])  # independent augmentations
    assert (views["patient"], views["label"], views["index"]) == (7, 2, 11)
    if name in ("histo", "fundus"):
        assert views["views"].min() >= 0 and views["views"].max() <= 1
    if name == "ct":  # window in [0, 1], then an intensity shift of at most 0.1
        assert views["views"].min() >= -0.1 - 1e-6 and views["views"].max() <= 1.1 + 1e-6
    if name == "oct":  # gain and speckle may exceed 1 but never go negative
        assert views["views"].min() >= 0
    assert info["in_channels"] == (expected[0] if name != "ecg" else 12)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_seeded_augmentation_is_reproducible(name):
    _, kw = TINY[name]
    sample = _tiny_sample(name)
    a = build_transforms(name, train=True, views=2, **kw)
    b = build_transforms(name, train=True, views=2, **kw)
    set_transform_seed(a, 5)
    set_transform_seed(b, 5)
    va, vb = a(_item(sample))["views"], b(_item(sample))["views"]
    assert torch.equal(va, vb)
    set_transform_seed(b, 6)
    assert not torch.equal(va, b(_item(sample))["views"])


#: every optional augmentation of a preset switched on (the demos use tilt, offset, illumination)
ALL_ON = {"oct": {"tilt_deg": 15, "offset": 0.08, "illumination": 0.35}, "fundus": {"illumination": 0.3},
          "ecg": {"lead_group_prob": 0.5}}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_in_place_reseeding_equals_monais_set_random_state(name):
    """medcl re-seeds each transform's RandomState in place (fast); the views equal MONAI's own seeding's,
    sample after sample (the in-place states do not drift from freshly built ones)."""
    _, kw = TINY[name]
    kw = {**kw, **ALL_ON.get(name, {})}
    sample = _tiny_sample(name)
    ours = build_transforms(name, train=True, views=2, **kw)
    monai = build_transforms(name, train=True, views=2, **kw)
    for seed in (5, 6, 2**32 - 1):
        set_transform_seed(ours, seed)
        monai.set_random_state(seed=seed)
        assert torch.equal(ours(_item(sample))["views"], monai(_item(sample))["views"]), seed


def test_in_place_reseeding_never_touches_monais_shared_class_state():
    from monai.transforms import RandFlipd, Randomizable

    shared = Randomizable.R.get_state()[1].copy()
    t = RandFlipd(keys="image", prob=0.5)  # unseeded: uses the class-level RandomState
    set_transform_seed(t, 3)
    set_transform_seed(t, 4)
    assert "R" in t.__dict__ and t.R is not Randomizable.R
    assert (Randomizable.R.get_state()[1] == shared).all()


def test_views_one_augments_image_in_place_and_three_views_stack():
    sample = _tiny_sample("oct")
    one = build_transforms("oct", train=True, views=1, spatial_size=[32, 32])
    out = one(_item(sample))
    assert "views" not in out and tuple(out["image"].shape) == (1, 32, 32)
    three = build_transforms("oct", train=True, views=3, spatial_size=[32, 32])
    assert tuple(three(_item(sample))["views"].shape) == (3, 1, 32, 32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_modality_yaml_builds_its_preset(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    params = dict(cfg["transforms"])
    assert params.pop("preset") == name
    assert cfg["data"]["modality"] == name
    info = preset_info(name)
    assert cfg["model"]["spatial_dims"] == info["spatial_dims"]
    assert cfg["model"]["in_channels"] == info["in_channels"]
    build_transforms(name, train=False, **params)
    build_transforms(name, train=True, **params)


# ------------------------------------------------------------------------------------------------
# errors


def test_unknown_preset_and_param_errors_suggest_fix():
    with pytest.raises(ConfigError, match="did you mean 'oct'"):
        build_transforms("otc", train=False)
    with pytest.raises(ConfigError, match="did you mean 'spatial_size'"):
        build_transforms("oct", train=False, spatial_sise=[64, 64])
    with pytest.raises(ConfigError, match="spatial_size needs 2 values"):
        build_transforms("oct", train=False, spatial_size=[64, 64, 64])
    with pytest.raises(ConfigError, match="must be a number"):
        build_transforms("ct", train=False, window_level="forty")
    with pytest.raises(ConfigError, match="views"):
        build_transforms("oct", train=True, views=0)
    with pytest.raises(ConfigError, match="masks"):
        build_transforms("histo", train=True, views=2, mask_keys=["mask"])
    with pytest.raises(ConfigError, match="ECG normalisation"):
        build_transforms("ecg", train=False, normalize="zscore")


def test_wrong_input_shape_is_a_clear_error():
    ev = build_transforms("ecg", train=False)
    with pytest.raises(DataError, match=r"\(leads, T\)"):
        ev({"image": np.zeros((1, 8, 8), np.float32)})


# ------------------------------------------------------------------------------------------------
# real files through the real readers


def test_ct_nifti_orientation_window_and_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.full((10, 12, 14), -1000.0, dtype=np.float32)  # air
    vol[1, 2, 3] = 1000.0  # bone
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])  # LPS-like: first two axes point left/posterior
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    ev = build_transforms("ct", train=False, spatial_size=[10, 12, 14], spacing=[2.0, 2.0, 3.0])
    img = ev({"image": str(path)})["image"]
    assert tuple(img.shape) == (1, 10, 12, 14)
    # RAS: axes 0 and 1 reversed; HU window (40, 400): air -> 0, bone -> 1 (clipped)
    assert img[0, 10 - 1 - 1, 12 - 1 - 2, 3] == pytest.approx(1.0)
    assert float(img.sum()) == pytest.approx(1.0)

    # resampling 1 mm -> 2 mm halves the extent of an 8-voxel bright run
    vol2 = np.full((16, 8, 8), -1000.0, dtype=np.float32)
    vol2[4:12, 4, 4] = 1000.0
    path2 = tmp_path / "ct1mm.nii.gz"
    nib.save(nib.Nifti1Image(vol2, np.eye(4)), str(path2))
    ev2 = build_transforms("ct", train=False, spatial_size=[8, 4, 4], spacing=[2.0, 2.0, 2.0])
    img2 = ev2({"image": str(path2)})["image"]
    assert tuple(img2.shape) == (1, 8, 4, 4)
    assert 3 <= int((img2[0, :, 2, 2] > 0.5).sum()) <= 5


def test_oct_png_fixed_scaling_keeps_gain(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 200, (32, 32)).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "a.png")
    Image.fromarray((base // 2).astype(np.uint8)).save(tmp_path / "b.png")
    ev = build_transforms("oct", train=False, spatial_size=[32, 32])
    a = ev({"image": str(tmp_path / "a.png")})["image"]
    b = ev({"image": str(tmp_path / "b.png")})["image"]
    np.testing.assert_allclose(a[0].numpy(), base / 255.0, atol=1e-6)
    # a darker scan stays darker: no per-image normalisation
    np.testing.assert_allclose(b[0].numpy(), (base // 2) / 255.0, atol=1e-6)


def test_ecg_wfdb_record_is_resampled_and_windowed(tmp_path):
    wfdb = pytest.importorskip("wfdb")
    fs, seconds = 250, 4
    t = np.arange(fs * seconds) / fs
    sig = np.stack([np.sin(2 * np.pi * 1.0 * t) * (i + 1) * 0.1 for i in range(12)], axis=1)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp("rec", fs=fs, units=["mV"] * 12, sig_name=leads, p_signal=sig, fmt=["16"] * 12,
                write_dir=str(tmp_path))
    ev = build_transforms("ecg", train=False, sampling_rate=500, window_s=2.0, normalize="fixed")
    out = ev({"image": str(tmp_path / "rec.hea")})
    img = out["image"]
    assert tuple(img.shape) == (12, 1000)  # 2 s at 500 Hz after resampling from 250 Hz
    # fixed mV scaling keeps the amplitude ratio between leads (standardisation would not)
    amp = img.abs().amax(dim=1)
    assert float(amp[11] / amp[0]) == pytest.approx(12.0, rel=0.05)
    assert out["image_meta_dict"]["sampling_rate"] == 500.0


# ------------------------------------------------------------------------------------------------
# LoadSampled


def test_load_sampled_nifti_gives_metatensor_with_affine_png_gives_tensor(tmp_path):
    nib = pytest.importorskip("nibabel")
    from monai.data import MetaTensor
    from PIL import Image

    from medcl.transforms.io import LoadSampled

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10, -5, 3]
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), str(tmp_path / "v.nii.gz"))
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "x.png")
    d = LoadSampled(keys=("image", "mask"))({"image": str(tmp_path / "v.nii.gz"), "mask": str(tmp_path / "x.png")})
    assert isinstance(d["image"], MetaTensor) and tuple(d["image"].shape) == (1, 4, 5, 6)
    np.testing.assert_allclose(d["image"].affine.numpy(), affine, atol=1e-5)
    assert type(d["mask"]) is torch.Tensor and tuple(d["mask"].shape) == (3, 6, 7)
    assert d["image_meta_dict"]["format"] == "nifti" and d["mask_meta_dict"]["format"] == "image"


def test_load_sampled_reads_only_the_region_of_a_tiled_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from medcl.readers.wsi import read_region
    from medcl.transforms.io import LoadSampled

    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(str(path)) as tw:
        tw.write(level0, tile=(64, 64), photometric="rgb", subifds=1)
        tw.write(level0[::2, ::2].copy(), tile=(64, 64), photometric="rgb", subfiletype=1)
    calls = []

    def recording_read_region(p, region, **kw):
        calls.append(region)
        x, y, level, size = region
        return read_region(p, x, y, level, size, **kw)

    load = LoadSampled(keys=("image",), region_reader=recording_read_region, modality="histo")
    d = load({"image": str(path), "region": (64, 32, 0, 48)})
    assert calls == [(64, 32, 0, 48)]
    np.testing.assert_array_equal(d["image"].numpy(), level0[32:80, 64:112].transpose(2, 0, 1).astype(np.float32))
    # default region reader (medcl.readers.wsi.read_region) gives the same pixels
    d2 = LoadSampled(keys=("image",))({"image": str(path), "region": (64, 32, 0, 48)})
    np.testing.assert_array_equal(d2["image"].numpy(), d["image"].numpy())


def test_load_sampled_rejects_non_path_values():
    from medcl.transforms.io import LoadSampled

    with pytest.raises(DataError, match="not a path or an array"):
        LoadSampled()({"image": 3.5})


# ------------------------------------------------------------------------------------------------
# OCT: never flipped vertically, flipped horizontally sometimes


def test_oct_augmentation_never_flips_vertically():
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 20, :] = 255.0  # bright line above ...
    img[0, 30, :] = 120.0  # ... a dimmer one (up/down is signal: drusen lie below the band)
    img[0, 24:27, 2:6] = 200.0  # a left-side marker to detect horizontal flips
    tr = build_transforms("oct", train=True, views=2, spatial_size=[64, 64])
    h_flips = 0
    for seed in range(15):
        set_transform_seed(tr, seed)
        for v in tr({"image": img})["views"]:
            rows = v[0].mean(dim=1)
            bright, dim = int(rows.argmax()), int(torch.argsort(rows, descending=True)[1])
            assert bright < dim, f"seed {seed}: bright line at {bright} is below the dim one at {dim}"
            assert dim - bright == 10  # integer shift: spacing kept exactly, no resampling
            marker = v[0, bright + 4:bright + 7]
            h_flips += int(marker[:, -8:].mean() > marker[:, :8].mean())
    assert 0 < h_flips < 30


def test_oct_tilt_rotates_the_band_within_the_range_and_is_off_by_default():
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 30:33, :] = 255.0  # a level band

    def slope(v):  # rows per column of the band's brightest row, fitted over the central columns
        cols = np.arange(16, 48)
        rows = v[0].numpy()[:, cols].argmax(axis=0)
        return np.polyfit(cols, rows, 1)[0]

    off = build_transforms("oct", train=True, views=2, spatial_size=[64, 64], shift_prob=0.0, speckle_prob=0.0)
    tilted = build_transforms("oct", train=True, views=2, spatial_size=[64, 64], shift_prob=0.0, speckle_prob=0.0,
                              tilt_deg=15.0, tilt_prob=1.0)
    slopes_off, slopes_on = [], []
    for seed in range(10):
        set_transform_seed(off, seed)
        set_transform_seed(tilted, seed)
        slopes_off += [slope(v) for v in off({"image": img})["views"]]
        slopes_on += [slope(v) for v in tilted({"image": img})["views"]]
    assert max(abs(s) for s in slopes_off) < 1e-9
    limit = np.tan(np.radians(15.0)) + 0.05
    assert all(abs(s) <= limit for s in slopes_on)
    assert max(abs(s) for s in slopes_on) > 0.05 and len({round(s, 3) for s in slopes_on}) > 10


def test_shift_along_axis_matches_numpy_reference():
    from medcl.transforms.spatial import shift_along_axis

    x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    for shift in (-6, -2, 0, 3, 5):
        ref = np.roll(x.numpy(), shift, axis=1)
        if shift > 0:
            ref[:, :shift] = 0
        elif shift < 0:
            ref[:, shift:] = 0
        if abs(shift) >= 5:
            ref[:] = 0
        np.testing.assert_array_equal(shift_along_axis(x, shift, 1).numpy(), ref)


# ------------------------------------------------------------------------------------------------
# histopathology: HED jitter against scikit-image, colour jitter against torchvision


def test_hed_round_trip_and_jitter_match_skimage():
    from skimage.color import hed2rgb, rgb2hed

    from medcl.transforms.intensity import hed_to_rgb, rgb_to_hed

    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.05, 1.0, (3, 9, 7))
    t = torch.as_tensor(rgb)
    np.testing.assert_allclose(rgb_to_hed(t).numpy(), rgb2hed(rgb.transpose(1, 2, 0)).transpose(2, 0, 1), atol=1e-10)
    hed = rgb2hed(rgb.transpose(1, 2, 0))
    np.testing.assert_allclose(hed_to_rgb(torch.as_tensor(hed.transpose(2, 0, 1))).numpy(),
                               hed2rgb(hed).transpose(2, 0, 1), atol=1e-10)


def test_hed_jitter_is_tellez_in_optical_density():
    """Beer–Lambert by hand: a pixel made of known H, E and DAB optical densities along the Ruifrok
    vectors, ``rgb = exp(-(cH h + cE e + cD d))``; jittering must scale/shift those densities exactly,
    and ``alpha = 1, beta = 0`` must give the image back (no clipping of the deconvolution)."""
    from medcl.transforms.intensity import RGB_FROM_HED, hed_jitter

    rng = np.random.default_rng(1)
    conc = np.stack([rng.uniform(0.0, 1.2, (5, 4)), rng.uniform(0.0, 0.8, (5, 4)), rng.uniform(-0.1, 0.1, (5, 4))])
    rgb = np.exp(-np.einsum("dhw,dc->chw", conc, RGB_FROM_HED))
    t = torch.as_tensor(rgb)
    np.testing.assert_allclose(hed_jitter(t, torch.ones(3), torch.zeros(3)).numpy(), rgb, atol=1e-12)
    alpha, beta = np.array([1.04, 0.97, 1.01]), np.array([0.01, -0.02, 0.005])
    want = np.exp(-np.einsum("dhw,dc->chw", conc * alpha[:, None, None] + beta[:, None, None], RGB_FROM_HED))
    np.testing.assert_allclose(hed_jitter(t, torch.as_tensor(alpha), torch.as_tensor(beta)).numpy(),
                               np.clip(want, 0, 1), atol=1e-12)
    # beta is in optical density: +0.05 OD of haematoxylin on white paper darkens it by exp(-0.05 h)
    white = torch.ones(3, 1, 1, dtype=torch.float64)
    out = hed_jitter(white, torch.ones(3), torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64))
    np.testing.assert_allclose(out[:, 0, 0].numpy(), np.exp(-0.05 * RGB_FROM_HED[0]), atol=1e-12)


def test_rand_hed_jitter_keeps_shape_and_range_and_changes_colour():
    from medcl.transforms.intensity import RandHEDJitterd

    img = torch.rand(3, 16, 16) * 0.8 + 0.1
    t = RandHEDJitterd("image", alpha=0.1, beta=0.05, prob=1.0)
    t.set_random_state(0)
    out = t({"image": img})["image"]
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert float((out - img).abs().mean()) > 1e-3
    with pytest.raises(ConfigError, match="RGB"):
        t({"image": torch.rand(1, 8, 8)})


def test_color_jitter_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from medcl.transforms.intensity import color_jitter

    img = torch.rand(3, 10, 12)
    ref = tvf.adjust_saturation(tvf.adjust_contrast(tvf.adjust_brightness(img, 1.2), 0.8), 1.3)
    torch.testing.assert_close(color_jitter(img, 1.2, 0.8, 1.3), ref, atol=1e-6, rtol=0)


def test_histo_mask_stays_aligned_with_image():
    rng = np.random.default_rng(1)
    mask = (rng.random((1, 40, 40)) > 0.7).astype(np.float32)
    image = np.repeat(mask * 255.0, 3, axis=0)
    tr = build_transforms("histo", train=True, views=1, spatial_size=[32, 32], mask_keys=["mask"],
                          hed_prob=0.0, color_prob=0.0)
    for seed in range(5):
        set_transform_seed(tr, seed)
        out = tr({"image": image, "mask": mask})
        assert tuple(out["mask"].shape) == (1, 32, 32)
        torch.testing.assert_close((out["image"][0] > 0.5).float(), out["mask"][0])


# ------------------------------------------------------------------------------------------------
# fundus: circular field of view


@pytest.mark.parametrize("cut", [0, 8])
def test_fov_circle_fit_and_mask(cut):
    from medcl.transforms.intensity import FOVMask, circle_mask, fov_circle

    rng = np.random.default_rng(0)
    h, w, cy, cx, r = 60, 80, 29.5, 41.0, 26.0 + cut
    img = torch.as_tensor(_fundus_array(h, w, cy, cx, r, rng) / 255.0, dtype=torch.float32)
    if cut:  # FOV cut at top and bottom, as in many fundus cameras
        img[:, :cut] = 0.01
        img[:, -cut:] = 0.01
    fy, fx, fr = fov_circle(img, 0.04)
    assert abs(fy - cy) < 1.0 and abs(fx - cx) < 1.0 and abs(fr - r) < 1.0
    out = FOVMask(threshold=0.04)(img)
    outside = ~circle_mask(h, w, fy, fx, fr)
    assert float(out[:, outside].abs().max()) == 0.0
    inside = circle_mask(h, w, cy, cx, r - 2)
    torch.testing.assert_close(out[:, inside], img[:, inside])


def test_fundus_preset_zero_outside_circle_in_eval_and_train():
    from medcl.transforms.intensity import circle_mask

    rng = np.random.default_rng(3)
    img = _fundus_array(60, 80, 30, 38, 26, rng)
    img[:, :, :4] = 30.0  # a bright frame outside the FOV that must not survive
    outside = ~circle_mask(32, 32, 15.5, 15.5, 16.0)
    ev = build_transforms("fundus", train=False, spatial_size=[32, 32])
    out = ev({"image": img})["image"]
    assert float(out[:, outside].abs().max()) == 0.0 and float(out[:, ~outside].mean()) > 0.2
    tr = build_transforms("fundus", train=True, views=2, spatial_size=[32, 32])
    set_transform_seed(tr, 0)
    views = tr({"image": img})["views"]
    assert float(views[:, :, outside].abs().max()) == 0.0
    lit = build_transforms("fundus", train=True, views=2, spatial_size=[32, 32], illumination=0.4,
                           illumination_prob=1.0)
    set_transform_seed(lit, 0)
    views_lit = lit({"image": img})["views"]
    assert float(views_lit[:, :, outside].abs().max()) == 0.0  # the gradient is applied inside the FOV only


def test_illumination_gradient_is_a_smooth_multiplicative_field_shared_by_channels():
    flat = np.full((3, 32, 32), 100.0, np.float32)
    oct_tf = build_transforms("oct", train=True, views=2, spatial_size=[32, 32], illumination=0.4, illumination_prob=1.0,
                              shift_prob=0.0, flip_prob=0.0, gain_prob=0.0, gamma_prob=0.0, speckle_prob=0.0)
    set_transform_seed(oct_tf, 1)
    v = oct_tf({"image": flat[:1]})["views"][0, 0].numpy()
    ratio = v / (100.0 / 255.0)
    assert ratio.std() > 0.01  # not flat any more ...
    # ... and log(field) is bilinear: exp(c0 + c1 x + c2 y + c3 xy) (MONAI's degree-1 Legendre bias field)
    yy, xx = np.mgrid[:32, :32]
    design = np.stack([np.ones(32 * 32), xx.ravel(), yy.ravel(), (xx * yy).ravel()], 1)
    coef, res, *_ = np.linalg.lstsq(design, np.log(ratio).ravel(), rcond=None)
    assert np.abs(design @ coef - np.log(ratio).ravel()).max() < 1e-4
    f_tf = build_transforms("fundus", train=True, views=2, spatial_size=[32, 32], illumination=0.4,
                            illumination_prob=1.0, rotate_prob=0.0, flip_prob=0.0, color_prob=0.0, gamma_prob=0.0)
    set_transform_seed(f_tf, 1)
    img = _fundus_array(32, 32, 15.5, 15.5, 16, np.random.default_rng(0))
    fv = f_tf({"image": img})["views"][0].numpy()
    ev = build_transforms("fundus", train=False, spatial_size=[32, 32])({"image": img})["image"].numpy()
    inside = ev.min(0) > 0.05
    r = fv[:, inside] / ev[:, inside]
    np.testing.assert_allclose(r[0], r[1], rtol=1e-5)  # one field for all colour channels
    np.testing.assert_allclose(r[0], r[2], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# ECG transforms


def test_standardize_and_resample_match_references():
    from scipy.signal import resample_poly

    from medcl.transforms.signal import resample_signal, standardize_leads

    x = torch.randn(3, 400, dtype=torch.float64) * 3 + 1
    x[2] = 5.0  # flat lead
    z = standardize_leads(x).numpy()
    ref = (x[:2].numpy() - x[:2].numpy().mean(1, keepdims=True)) / x[:2].numpy().std(1, keepdims=True)
    np.testing.assert_allclose(z[:2], ref, atol=1e-9)
    assert np.all(z[2] == 0)
    np.testing.assert_allclose(resample_signal(x.float(), 250, 500).numpy(),
                               resample_poly(x.float().numpy(), 2, 1, axis=-1), atol=1e-5)


def test_ecg_views_are_different_time_segments_of_the_same_record():
    t = np.arange(3000) / 500.0
    rec = np.stack([np.sin(2 * np.pi * (0.7 + 0.1 * i) * t + i) for i in range(12)]).astype(np.float32)
    tr = build_transforms("ecg", train=True, views=2, window_s=1.0, amplitude_prob=0.0, wander_prob=0.0,
                          noise_prob=0.0, lead_dropout=0.0)
    set_transform_seed(tr, 1)
    views = tr({"image": rec})["views"]
    from medcl.transforms.signal import standardize_leads

    full = standardize_leads(torch.as_tensor(rec))
    starts = []
    for v in views:
        matches = [s for s in range(0, 3000 - 500 + 1) if torch.allclose(full[:, s:s + 500], v, atol=1e-5)]
        assert len(matches) == 1
        starts.append(matches[0])
    assert starts[0] != starts[1]


def test_lead_group_lead_dropout_and_baseline_wander():
    from medcl.transforms.signal import (
        LEAD_GROUPS_12,
        RandBaselineWanderd,
        RandLeadDropoutd,
        RandLeadGroupd,
    )

    x = torch.ones(12, 1000)
    seen = set()
    group = RandLeadGroupd("image")
    for seed in range(10):
        group.set_random_state(seed)
        kept = tuple(int(i) for i in torch.nonzero(group({"image": x})["image"].abs().sum(1)).ravel())
        assert kept in set(LEAD_GROUPS_12.values())
        seen.add(kept)
    assert len(seen) == 2
    select = RandLeadGroupd("image", mode="select")
    select.set_random_state(0)
    assert tuple(select({"image": x})["image"].shape) == (6, 1000)

    drop = RandLeadDropoutd("image", lead_prob=0.99)
    for seed in range(5):
        drop.set_random_state(seed)
        assert int((drop({"image": x})["image"].abs().sum(1) > 0).sum()) >= 1

    wander = RandBaselineWanderd("image", sampling_rate=100.0, max_amplitude=0.5, freq_range=(0.1, 0.4))
    wander.set_random_state(0)
    added = (wander({"image": torch.zeros(2, 2000)})["image"]).numpy()
    spectrum = np.abs(np.fft.rfft(added, axis=1)) ** 2
    freqs = np.fft.rfftfreq(2000, d=1 / 100.0)
    assert spectrum[:, freqs <= 0.5].sum() > 0.99 * spectrum.sum()
    assert np.abs(added).max() > 0.01


# ------------------------------------------------------------------------------------------------
# multi-view


def test_multiviewd_views_differ_and_keep_patient_label():
    from monai.transforms import Compose, RandGaussianNoised

    from medcl.transforms.views import MultiViewd

    mv = MultiViewd(Compose([RandGaussianNoised("image", prob=1.0, std=0.5)]), views=4)
    mv.set_random_state(0)
    img = torch.zeros(1, 4, 4)
    out = mv({"image": img, "patient": 3, "label": 1, "index": 9})
    v = out["views"]
    assert tuple(v.shape) == (4, 1, 4, 4)
    assert all(not torch.equal(v[i], v[j]) for i in range(4) for j in range(i + 1, 4))
    assert (out["patient"], out["label"], out["index"]) == (3, 1, 9) and "image" not in out
    assert torch.equal(img, torch.zeros(1, 4, 4))  # source untouched


def test_multiviewd_rejects_views_of_different_shapes():
    from monai.transforms import Compose, RandSpatialCropd

    from medcl.transforms.views import MultiViewd

    mv = MultiViewd(Compose([RandSpatialCropd("image", roi_size=(2, 2), max_roi_size=(8, 8), random_size=True)]),
                    views=6)
    mv.set_random_state(0)
    with pytest.raises(DataError, match="different shapes"):
        mv({"image": torch.rand(1, 8, 8)})


def test_oct_tilt_keeps_masks_binary():
    """Masks are rotated with nearest-neighbour interpolation: labels stay labels."""
    img = np.zeros((1, 32, 32), np.float32)
    img[0, 14:18, :] = 255.0
    mask = (img > 0).astype(np.float32)
    tr = build_transforms("oct", train=True, views=1, spatial_size=[32, 32], mask_keys=["mask"], tilt_deg=15.0,
                          tilt_prob=1.0, shift_prob=0.0)
    changed = 0
    for seed in range(5):
        set_transform_seed(tr, seed)
        out = np.asarray(tr({"image": img, "mask": mask})["mask"])
        assert set(np.unique(out).tolist()) <= {0.0, 1.0}
        changed += int(not np.array_equal(out, mask))
    assert changed > 0  # the mask was rotated


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_views_on_plain_tensors_equal_views_on_metatensors(name):
    """The training views' augmentations run with MONAI's track_meta off (speed): the views are the same."""
    from medcl.transforms.compose import MedclCompose, PlainCompose
    from medcl.transforms.views import MultiViewd

    _, kw = TINY[name]
    fast = build_transforms(name, train=True, views=2, **kw)
    ref = build_transforms(name, train=True, views=2, **kw)
    mv = next(t for t in ref.transforms if isinstance(t, MultiViewd))
    assert isinstance(mv.aug, PlainCompose)
    mv.aug = MedclCompose(mv.aug.transforms)  # the same transforms on MetaTensors
    for seed in (3, 4):
        set_transform_seed(fast, seed)
        set_transform_seed(ref, seed)
        sample = _tiny_sample(name, seed)
        a, b = fast(_item(sample))["views"], ref(_item(sample))["views"]
        assert type(a) is torch.Tensor and torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_view_on_plain_tensors_equals_metatensors_with_masks(name):
    """Fine-tuning and segmentation (one view, masks carried along) augment plain tensors too: same image, same
    mask as MONAI's MetaTensor path."""
    from medcl.transforms.compose import MedclCompose, PlainCompose

    _, kw = TINY[name]
    kw = {**kw, **ALL_ON.get(name, {})}
    masks = PRESETS[name].spatial_dims > 1
    extra = {"mask_keys": ["mask"]} if masks else {}
    fast = build_transforms(name, train=True, views=1, **kw, **extra)
    ref = build_transforms(name, train=True, views=1, **kw, **extra)
    plain = [t for t in ref.transforms if isinstance(t, PlainCompose)]
    assert len(plain) == 1
    ref.transforms = [*ref.transforms[:-1], MedclCompose(plain[0].transforms)]
    for seed in (3, 4):
        set_transform_seed(fast, seed)
        set_transform_seed(ref, seed)
        sample = _tiny_sample(name, seed)
        item = _item(sample)
        if masks:
            item["mask"] = (np.asarray(sample.array[:1]) > np.median(sample.array[:1])).astype(np.float32)
        a, b = fast(dict(item)), ref(dict(item))
        assert type(a["image"]) is torch.Tensor and torch.allclose(a["image"], torch.as_tensor(b["image"]), atol=1e-6)
        if masks:
            assert torch.equal(torch.as_tensor(a["mask"]), torch.as_tensor(b["mask"]))


def test_plain_compose_restores_metadata_tracking_even_on_error():
    from monai.data import MetaTensor, get_track_meta
    from monai.transforms import Lambdad

    from medcl.transforms.compose import PlainCompose

    seen = []
    ok = PlainCompose([Lambdad("image", lambda x: seen.append(get_track_meta()) or x * 2)])
    out = ok({"image": MetaTensor(torch.ones(1, 2, 2))})
    assert seen == [False] and get_track_meta() is True
    assert torch.equal(torch.as_tensor(out["image"]), torch.full((1, 2, 2), 2.0))
    bad = PlainCompose([Lambdad("image", lambda x: 1 / 0)])
    with pytest.raises(RuntimeError):
        bad({"image": torch.ones(1)})
    assert get_track_meta() is True


@pytest.mark.parametrize("angle,padding", [(0.3, "zeros"), (-0.5, "border"), (math.pi / 2, "zeros")])
def test_rotate_2d_equals_monais_rotate(angle, padding):
    """medcl's one-call rotation against MONAI's Rotate (the reference), on a non-square image."""
    from monai.transforms import Rotate

    from medcl.transforms.spatial import rotate_2d

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 24, 40, generator=g)
    ref = Rotate(angle, keep_size=True, padding_mode=padding)(x)
    got = rotate_2d(x, angle, padding_mode=padding)
    assert got.shape == x.shape
    assert torch.allclose(got, torch.as_tensor(ref), atol=1e-5)


def test_rand_rotate_2d_turns_image_and_mask_alike_and_keeps_mask_labels():
    from medcl.transforms.spatial import RandRotate2Dd

    img = torch.zeros(1, 32, 32)
    img[0, 4:10, 14:18] = 1.0
    mask = (img > 0).to(torch.int64) * 2
    t = RandRotate2Dd(["image", "mask"], range_x=1.0, prob=1.0, mode=["bilinear", "nearest"])
    t.set_random_state(seed=1)
    out = t({"image": img, "mask": mask})
    assert set(torch.unique(out["mask"]).tolist()) <= {0, 2} and out["mask"].dtype == torch.int64
    moved = (out["image"][0] > 0.5).nonzero().float().mean(0)
    # the blob's centre, 9 px from the image centre, travels along the circle: a chord of 2 * 9 * sin(a / 2)
    chord = 2 * 9 * math.sin(abs(t._angle) / 2)
    assert chord > 3 and abs(float(torch.linalg.norm(moved - torch.tensor([6.5, 15.5]))) - chord) < 1.5
    overlap = ((out["image"][0] > 0.5) & (out["mask"][0] > 0)).sum() / (out["mask"][0] > 0).sum()
    assert overlap > 0.8  # image and mask turned together
