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
from transforms_testdata import ReaderSample, fundus_array

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


def _tiny_sample(name: str, seed: int = 0) -> ReaderSample:
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
        arr = fundus_array(shape[1], shape[2], (shape[1] - 1) / 2, (shape[2] - 1) / 2, 20, rng)
    else:
        arr = rng.uniform(0, 255, shape)
    meta = {"affine": np.eye(4).tolist()} if PRESETS[name].spatial_dims == 3 else {}
    if name == "ecg":
        meta["sampling_rate"] = 500.0
    return ReaderSample(arr.astype(np.float32), meta)


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


def _on_metatensors(transforms: list) -> list:
    """``transforms`` with every :class:`PlainCompose` replaced by a MONAI ``Compose`` of the same transforms, and
    every :class:`PlainChain` by a deterministic step that runs a MONAI ``Compose`` (on MetaTensors)."""
    from monai.transforms import Transform

    from medcl.transforms.compose import MedclCompose, PlainChain, PlainCompose

    class OnMetaTensors(Transform):
        def __init__(self, ts):
            self.compose = MedclCompose(list(ts))

        def __call__(self, data):
            return self.compose(data)

    return [MedclCompose(t.transforms) if isinstance(t, PlainCompose) else
            OnMetaTensors(t.transforms) if isinstance(t, PlainChain) else t for t in transforms]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_evaluation_chain_on_plain_tensors_equals_metatensors(name):
    """1D/2D presets scale and resize on plain tensors (MONAI's track_meta off, for speed): the same tensors as
    MONAI's MetaTensor path; 3D presets keep the metadata (spacing and orientation need the affine)."""
    from medcl.transforms.compose import PlainChain

    _, kw = TINY[name]
    fast = build_transforms(name, train=False, **kw)
    ref = build_transforms(name, train=False, **kw)
    assert any(isinstance(t, PlainChain) for t in fast.transforms) == (PRESETS[name].spatial_dims < 3)
    ref.transforms = _on_metatensors(ref.transforms)
    for seed in (3, 4):
        sample = _tiny_sample(name, seed)
        a, b = fast(_item(sample))["image"], ref(_item(sample))["image"]
        assert type(a) is torch.Tensor and a.shape == b.shape and torch.allclose(a, torch.as_tensor(b), atol=1e-6)


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
    ref.transforms = _on_metatensors(ref.transforms)  # and the deterministic part (plain for 1D/2D presets)
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
    from medcl.transforms.compose import PlainChain, PlainCompose

    _, kw = TINY[name]
    kw = {**kw, **ALL_ON.get(name, {})}
    masks = PRESETS[name].spatial_dims > 1
    extra = {"mask_keys": ["mask"]} if masks else {}
    fast = build_transforms(name, train=True, views=1, **kw, **extra)
    ref = build_transforms(name, train=True, views=1, **kw, **extra)
    assert len([t for t in ref.transforms if isinstance(t, PlainCompose)]) == 1  # the augmentation
    # 1D/2D: the deterministic part too
    assert len([t for t in ref.transforms if isinstance(t, PlainChain)]) == (PRESETS[name].spatial_dims < 3)
    ref.transforms = _on_metatensors(ref.transforms)
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


def test_overlapping_plain_composes_in_threads_restore_metadata_tracking():
    """Threads filling a memory cache run PlainComposes at once: A enters, B enters, A leaves, B leaves. B must still
    run without metadata after A has left, and MONAI's process-wide switch must be on again at the end (restoring
    each call's own "before" would leave it off)."""
    import threading

    from monai.data import get_track_meta
    from monai.transforms import Lambdad

    from medcl.transforms.compose import PlainCompose

    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen_by_b = []

    def in_a(x):
        a_inside.set()
        assert b_inside.wait(10)
        return x

    def in_b(x):
        b_inside.set()
        assert a_done.wait(10)
        seen_by_b.append(get_track_meta())
        return x

    def run_a():
        PlainCompose([Lambdad("image", in_a)])({"image": torch.ones(1)})
        a_done.set()

    a = threading.Thread(target=run_a)
    a.start()
    assert a_inside.wait(10)
    b = threading.Thread(target=lambda: PlainCompose([Lambdad("image", in_b)])({"image": torch.ones(1)}))
    b.start()
    a.join(10)
    b.join(10)
    assert seen_by_b == [False] and get_track_meta() is True


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


@pytest.mark.parametrize("preset,shape,params", [
    ("histo", (3, 40, 40), {"spatial_size": [32, 32], "hed_prob": 0.0, "color_prob": 0.0}),
    ("oct", (1, 40, 40), {"spatial_size": [32, 32], "tilt_deg": 10.0, "gain_prob": 0.0, "offset_prob": 0.0,
                          "gamma_prob": 0.0, "speckle_prob": 0.0}),
    ("ct", (1, 20, 20, 20), {"spatial_size": [16, 16, 16], "intensity_prob": 0.0, "affine_prob": 0.0}),
])
def test_aligned_views_share_every_geometric_draw(preset, shape, params):
    """With the intensity augmentations off, aligned views are the same image (crop, flips, quarter turns, shift
    and tilt drawn once); without aligning, the same chain gives views that differ (so the check can fail)."""
    x = {"image": torch.rand(*shape, generator=torch.Generator().manual_seed(0))}
    for aligned in (True, False):
        views = build_transforms(preset, train=True, views=2, aligned_views=aligned, **params).transforms[-1]
        same = []
        for seed in range(12):
            set_transform_seed(views, seed)
            v = views(dict(x))["views"]
            same.append(torch.equal(v[0], v[1]))
        assert all(same) if aligned else not all(same), (preset, aligned, same)


def test_ct_views_keep_hounsfield_units_within_a_sites_offset(tmp_path):
    """CT numbers are calibrated: a training view may move them by a site's few HU (±5 HU of the 400-HU window),
    never by tens — a ±40 HU shift taught SimCLR to ignore a hypodense lesion 30-55 HU below the liver."""
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 40.0, dtype=np.float32), np.eye(4)), str(path))  # window centre
    tr = build_transforms("ct", train=True, spatial_size=[8, 8, 8], spacing=[1.0, 1.0, 1.0], affine_prob=0.0)
    set_transform_seed(tr, 0)
    values = torch.cat([torch.as_tensor(tr({"image": str(path)})["views"]).flatten() for _ in range(40)])
    hu = values.double() * 400.0 - 160.0  # window [0, 1] back to HU
    assert float((hu - 40.0).abs().max()) <= 5.0 + 1e-3
    assert float((hu - 40.0).abs().max()) > 1.0  # the site offset is drawn at all
