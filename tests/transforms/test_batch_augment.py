"""Batched augmentation (``transforms.augment_on: batch``) against the per-sample transforms it mirrors.

Each op, given the same parameters, must compute what MONAI's or medcl's per-sample transform computes; each
preset's batched chain must list the per-sample chain's random transforms in the same order; the whole chain
must give views equal in distribution; each sample's views must follow (seed, epoch, sample, view) alone, so
batch composition, rank and number of processes do not change them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt

from medcl.data.datasets import BatchAugmentedLoader, build_dataset, build_loader
from medcl.errors import ConfigError
from medcl.transforms import batch as B
from medcl.transforms import batch_ops as O
from medcl.transforms import build_transforms
from medcl.transforms.intensity import apply_fov, color_jitter, find_fov, hed_jitter
from medcl.transforms.spatial import rotate_2d, shift_along_axis

OCT = {"vertical_shift": 0.2, "shift_prob": 1.0, "tilt_deg": 15, "gain": 0.35, "gain_prob": 0.8, "offset": 0.08,
       "illumination": 0.35, "speckle_std": 0.2}


def _images(n: int = 6, c: int = 1, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.05


def _per_sample(x: torch.Tensor, f) -> torch.Tensor:
    return torch.stack([torch.as_tensor(f(i, x[i])).float() for i in range(len(x))])


# -- each op equals its per-sample transform for the same parameters ----------------------------------------


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_axis_shift_is_shift_along_axis_per_sample(padding):
    x = _images()
    shift = torch.tensor([-5, -1, 0, 2, 7, 20])
    got = O.AxisShift(max_shift=0.5, axis=0, padding_mode=padding).image(x, {"shift": shift})
    want = _per_sample(x, lambda i, s: shift_along_axis(s, int(shift[i]), 1, padding))
    assert torch.equal(got, want)
    m = (x > 0.5).float()[:, :1]
    assert torch.equal(O.AxisShift(axis=1, padding_mode=padding).mask(m, {"shift": shift}),
                       _per_sample(m, lambda i, s: shift_along_axis(s, int(shift[i]), 2, padding)))


def test_oct_shift_fills_with_the_border_row_in_both_chains():
    """The OCT preset's vertical shift repeats the edge row (as its tilt's border padding), per sample and batched."""
    from medcl.transforms.presets import get_preset, resolve_params
    from medcl.transforms.spatial import RandAxisShiftd

    _, rand = get_preset("oct").build(resolve_params(get_preset("oct"), {}), True)
    (per_sample,) = [t for t in rand if isinstance(t, RandAxisShiftd)]
    (batched,) = [o for o in B.build_batch_augment("oct").ops if isinstance(o, O.AxisShift)]
    assert per_sample.padding_mode == batched.padding_mode == "border"
    img = torch.linspace(0.1, 1.0, 10)[None, :, None].expand(1, 10, 4)  # rows 0.1 .. 1.0
    per_sample.set_random_state(seed=0)
    for _ in range(20):
        out = per_sample({"image": img.clone()})["image"]
        assert float(out.min()) >= 0.1 - 1e-6  # no zero row
    # transforms.shift_padding: zeros switches both chains back to zero rows; anything else is refused by name
    _, rand = get_preset("oct").build(resolve_params(get_preset("oct"), {"shift_padding": "zeros"}), True)
    assert [t.padding_mode for t in rand if isinstance(t, RandAxisShiftd)] == ["zeros"]
    assert [o.padding_mode for o in B.build_batch_augment("oct", shift_padding="zeros").ops
            if isinstance(o, O.AxisShift)] == ["zeros"]
    for build in (lambda: get_preset("oct").build(resolve_params(get_preset("oct"), {"shift_padding": "edge"}), True),
                  lambda: B.build_batch_augment("oct", shift_padding="edge")):
        with pytest.raises(ConfigError, match="transforms.shift_padding"):
            build()


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_rotation_is_rotate_2d_per_sample(padding):
    x = _images(h=12, w=20)
    angle = torch.linspace(-1.2, 2.5, len(x))
    op = O.Rotate(range_x=3.0, padding_mode=padding)
    got = op.image(x, {"angle": angle})
    want = _per_sample(x, lambda i, s: rotate_2d(s, float(angle[i]), "bilinear", padding))
    assert torch.allclose(got, want, atol=1e-5)
    m = (x > 0.5).to(torch.int64)[:, :1]
    got_m = op.mask(m, {"angle": angle})
    assert got_m.dtype == torch.int64
    assert torch.equal(got_m, _per_sample(m, lambda i, s: rotate_2d(s, float(angle[i]), "nearest", padding)).long())


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_is_monai_flip(axis):
    x = _images(c=3)
    assert torch.equal(O.Flip(axis=axis).image(x, {}), _per_sample(x, lambda i, s: mt.Flip(spatial_axis=axis)(s)))


def test_quarter_turns_are_monai_rotate90_and_need_square_images():
    x = _images(c=3)
    k = torch.tensor([1, 2, 3, 1, 3, 2])
    got = O.Rot90().image(x, {"k": k})
    assert torch.equal(got, _per_sample(x, lambda i, s: mt.Rotate90(k=int(k[i]))(s)))
    with pytest.raises(ConfigError, match="square"):
        O.Rot90().image(_images(h=8, w=12), {"k": k})


def test_intensity_scale_and_shift_are_monai_s():
    x = _images()
    u = torch.linspace(-0.3, 0.3, len(x))
    assert torch.allclose(O.ScaleIntensity(factor=0.3).image(x, {"u": u}),
                          _per_sample(x, lambda i, s: mt.ScaleIntensity(minv=None, maxv=None, factor=float(u[i]))(s)))
    assert torch.allclose(O.ShiftIntensity(offset=0.3).image(x, {"u": u}),
                          _per_sample(x, lambda i, s: mt.ShiftIntensity(offset=float(u[i]))(s)))


def test_illumination_gradient_op_is_the_per_sample_transform_for_its_drawn_slopes():
    from medcl.transforms.intensity import RandIlluminationGradientd

    x = _images(c=2, h=10, w=14)
    slopes, want = [], []
    for i in range(len(x)):
        t = RandIlluminationGradientd(["image"], amount=0.4, prob=1.0)
        t.set_random_state(seed=i)
        want.append(t({"image": x[i]})["image"])
        slopes.append(t._a)
    got = O.IlluminationGradient(amount=0.4).image(x, {"a": torch.tensor(slopes, dtype=torch.float32)})
    assert torch.allclose(got, torch.stack(want).float(), atol=1e-5)


def test_gamma_is_monai_adjust_contrast():
    x = _images(c=2)
    g = torch.linspace(0.8, 1.25, len(x))
    got = O.Gamma(lo=0.8, hi=1.25).image(x, {"g": g})
    assert torch.allclose(got, _per_sample(x, lambda i, s: mt.AdjustContrast(gamma=float(g[i]))(s)), atol=1e-6)


def test_hed_and_colour_jitter_and_fov_are_medcl_s_per_sample_functions():
    x = _images(c=3)
    gen = torch.Generator().manual_seed(1)
    a, b = 1 + 0.1 * (torch.rand(len(x), 3, generator=gen) - 0.5), 0.05 * (torch.rand(len(x), 3, generator=gen) - 0.5)
    assert torch.allclose(O.hed_jitter(x, a, b), _per_sample(x, lambda i, s: hed_jitter(s, a[i], b[i])), atol=1e-5)
    f = 1 + 0.4 * (torch.rand(3, len(x), generator=gen) - 0.5)
    for c in (1, 3):  # saturation only for RGB, as the per-sample function
        y = x[:, :c]
        got = O.color_jitter(y, f[0], f[1], f[2])
        want = _per_sample(y, lambda i, s: color_jitter(s, float(f[0, i]), float(f[1, i]), float(f[2, i])))
        assert torch.allclose(got, want, atol=1e-6)
    y = _images(c=3, h=12, w=17)
    want = _per_sample(y, lambda i, s: apply_fov(s, find_fov(s, mode="inscribed")))
    assert torch.equal(O.InscribedFOV().image(y, {}), want)


def test_speckle_noise_is_gamma_with_mean_one_and_the_given_std():
    from scipy import stats

    for std in (0.2, 1.5):  # k = 25 (Marsaglia-Tsang) and k < 1 (the boost)
        k = 1.0 / std**2
        n = O.Draw(3).gamma(k, (20, 1000)).flatten().numpy()
        assert stats.kstest(n, stats.gamma(a=k, scale=1 / k).cdf).pvalue > 1e-3
        assert (n > 0).all()


# -- parameters and probabilities ---------------------------------------------------------------------------


def test_parameters_span_the_per_sample_ranges():
    x = _images(n=4000, h=20, w=20)
    shift = O.AxisShift(max_shift=0.2, axis=0).params(x, O.Draw(0))["shift"]
    assert set(shift.tolist()) == set(range(-4, 5))  # round(0.2 * 20) = 4, both ends included
    angle = O.Rotate(range_x=0.5).params(x, O.Draw(0))["angle"]
    assert -0.5 <= angle.min() < -0.49 and 0.49 < angle.max() <= 0.5
    assert set(O.Rot90().params(x, O.Draw(0))["k"].tolist()) == {1, 2, 3}


def test_prob_applies_an_op_to_that_share_of_samples():
    x = _images(n=2000)
    for prob in (0.0, 0.3, 1.0):
        out, _ = B.BatchAugment([O.ShiftIntensity(prob, offset=0.5)], "oct").images(x, O.Draw(0))
        changed = (out != x).flatten(1).any(1).float().mean().item()
        assert abs(changed - prob) < 0.04


def test_each_view_of_each_sample_gets_its_own_draw_and_masks_follow_the_image():
    aug = B.build_batch_augment("oct", **OCT)
    img = _images(n=1)
    out = aug({"views": img[:, None].expand(3, 4, 1, 16, 16).clone()}, O.Draw(0))["views"]
    flat = out.flatten(2)
    assert all(not torch.equal(flat[i, j], flat[k, m]) for i in range(3) for j in range(4)
               for k in range(3) for m in range(4) if (i, j) < (k, m))
    fundus = B.build_batch_augment("fundus", rotate_prob=1.0, flip_prob=0.5)
    x = torch.zeros(8, 3, 24, 24)
    x[:, :, 4:10, 6:12] = 0.8
    mask = (x[:, :1] > 0).long()
    got = fundus({"image": x, "mask": mask, "label": torch.arange(8)}, O.Draw(1))
    assert got["mask"].dtype == torch.int64 and torch.equal(got["label"], torch.arange(8))
    inside = got["image"].mean(1, keepdim=True) > 0.3
    assert (inside == got["mask"].bool()).float().mean() > 0.97  # the square moved with its mask


# -- the chains mirror the per-sample presets ---------------------------------------------------------------

#: per-sample transform class → the batch op that mirrors it
MIRRORS = {"RandAxisShiftd": "AxisShift", "RandRotate2Dd": "Rotate", "FastRandFlipd": "Flip", "FastRandRotate90d": "Rot90",
           "RandScaleIntensityd": "ScaleIntensity", "RandShiftIntensityd": "ShiftIntensity",
           "RandIlluminationGradientd": "IlluminationGradient", "RandAdjustContrastd": "Gamma", "RandSpeckleNoised": "Speckle",
           "RandHEDJitterd": "HEDJitter", "RandColorJitterd": "ColorJitter", "FOVMaskd": "InscribedFOV"}


@pytest.mark.parametrize("preset,params", [("oct", OCT), ("oct", {}), ("fundus", {"illumination": 0.2}),
                                           ("histo", {})])
def test_each_batched_chain_lists_the_per_sample_chain_s_random_transforms(preset, params):
    from medcl.transforms.presets import get_preset, resolve_params

    p = resolve_params(get_preset(preset), params)
    _, rand = get_preset(preset).build(p, True)
    per_sample = [MIRRORS[type(t).__name__] for t in rand if type(t).__name__ != "FastRandSpatialCropd"]
    ops = B.build_batch_augment(preset, **params).ops
    assert [type(o).__name__ for o in ops] == per_sample
    probs = [getattr(t, "prob", 1.0) for t in rand if type(t).__name__ != "FastRandSpatialCropd"]
    assert [o.prob for o in ops] == pytest.approx(probs)


@pytest.mark.parametrize("preset,c,params", [("oct", 1, OCT), ("fundus", 3, {}), ("histo", 3, {})])
def test_views_are_distributed_as_the_per_sample_chain_s(preset, c, params):
    """Pixel mean, spread and local contrast of 400 views of one image: per-sample MONAI chain vs batch ops."""
    img = torch.zeros(c, 32, 32)
    img[:, 8:20, 6:26] = torch.linspace(0.3, 0.9, c)[:, None, None]
    img += 0.1
    chain = build_transforms(preset, train=True, views=1, **params).transforms[-1]  # the random part + EnsureTyped
    chain.set_random_state(seed=0)
    ref = torch.stack([torch.as_tensor(chain({"image": img.clone()})["image"]) for _ in range(400)])
    got, _ = B.build_batch_augment(preset, **params).images(img.expand(400, c, 32, 32), O.Draw(0))

    def stats_of(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([v.mean((1, 2, 3)).mean(), v.mean((1, 2, 3)).std(), v.std((1, 2, 3)).mean(),
                            (v[..., 1:] - v[..., :-1]).abs().mean()])

    assert torch.allclose(stats_of(got), stats_of(ref), rtol=0.08, atol=0.005)


def test_batch_mode_errors_name_the_setting_and_the_fix():
    with pytest.raises(ConfigError, match="augment_on: batch is not available for the 'ct' preset"):
        B.build_batch_augment("ct")
    with pytest.raises(ConfigError, match="augment_on"):
        build_transforms("ecg", train=True, views=2, augment_on="batch")
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        build_transforms("oct", train=True, views=2, augment_on="batc")
    with pytest.raises(ConfigError, match="keys"):
        B.build_batch_augment("oct", keys=["image", "other"])


def test_in_batch_mode_the_loader_only_crops(tmp_path):
    from PIL import Image

    img = np.zeros((40, 40), np.uint8)
    img[10:30, 5:35] = 200
    Image.fromarray(img).save(tmp_path / "a.png")
    tf = build_transforms("oct", train=True, views=2, augment_on="batch", spatial_size=(32, 32))
    tf.set_random_state(seed=0)
    views = tf({"image": str(tmp_path / "a.png")})["views"]
    assert views.shape == (2, 1, 32, 32)
    values = torch.unique(views)  # cropped, never jittered: only the two grey levels of the image
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(200 / 255)


# -- the loader ---------------------------------------------------------------------------------------------


def _loader(tmp_path, seed: int = 0, batch_size: int = 4, rank: int = 0, world_size: int = 1):
    from PIL import Image

    items = []
    for i in range(10):
        a = np.full((16, 16), 20 * i, np.uint8)
        a[4:8] = 250
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png"), "label": i % 2, "patient": i, "index": i})
    tf = build_transforms("oct", train=True, views=2, augment_on="batch", spatial_size=(16, 16))
    base = build_loader(build_dataset(items, tf), batch_size=batch_size, shuffle=True, num_workers=0, seed=seed,
                        distributed=world_size > 1, rank=rank, world_size=world_size)
    return BatchAugmentedLoader(base, B.build_batch_augment("oct", **OCT), "cpu", seed=seed, rank=rank)


def _views_by_sample(loader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): b["views"][j] for b in loader for j, i in enumerate(b["index"])}


def test_a_samples_views_do_not_depend_on_its_batch_its_rank_or_the_number_of_processes(tmp_path):
    one = _views_by_sample(_loader(tmp_path), epoch=1)
    assert sorted(one) == list(range(10))
    other_batches = _views_by_sample(_loader(tmp_path, batch_size=3), epoch=1)
    two_ranks = {**_views_by_sample(_loader(tmp_path, batch_size=2, rank=0, world_size=2), epoch=1),
                 **_views_by_sample(_loader(tmp_path, batch_size=2, rank=1, world_size=2), epoch=1)}
    for got in (other_batches, two_ranks):
        assert sorted(got) == list(range(10))
        for i in range(10):
            assert torch.equal(got[i], one[i]), i
    # and the check has teeth: the views of two samples, or of one sample in two epochs, differ
    later = _views_by_sample(_loader(tmp_path), epoch=2)
    assert not torch.equal(later[3], one[3]) and not torch.equal(one[3][0], one[3][1])


def test_rows_draw_from_their_own_seed_alone():
    x = _images(n=3)
    aug = B.build_batch_augment("oct", **OCT)
    abc, _ = aug.images(x, O.Draw([11, 22, 33]))
    cb, _ = aug.images(x[[2, 1]], O.Draw([33, 22]))
    assert torch.equal(cb[0], abc[2]) and torch.equal(cb[1], abc[1])
    assert not torch.equal(aug.images(x[:1], O.Draw([12]))[0][0], abc[0])
    with pytest.raises(ValueError, match="3 row seeds, row 3"):
        O.Draw([1, 2, 3]).uniform(0, 1, 4)


def test_the_stream_follows_seed_and_epoch_so_a_resumed_epoch_sees_the_same_views(tmp_path):
    a, b = _loader(tmp_path), _loader(tmp_path)
    a.set_epoch(1)
    b.set_epoch(1)
    first, second = list(a), list(b)
    assert len(first) == len(a) == 3
    for x, y in zip(first, second):
        assert torch.equal(x["views"], y["views"]) and torch.equal(x["index"], y["index"])
    it = iter(b)
    next(it)  # a resumed epoch draws and discards the batches it already trained on
    assert torch.equal(next(it)["views"], first[1]["views"])
    b.set_epoch(2)
    assert not torch.equal(next(iter(b))["views"], first[0]["views"])
    assert first[0]["views"].shape == (4, 2, 1, 16, 16)
    assert not torch.equal(first[0]["views"][:, 0], first[0]["views"][:, 1])
