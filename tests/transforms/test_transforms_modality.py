"""Modality-specific transforms against independent references.

OCT (never flipped vertically, tilt), histopathology (HED jitter vs scikit-image, colour jitter vs
torchvision), fundus (circular field of view, illumination) and ECG (standardisation, resampling,
windows, lead groups).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transforms_testdata import ReaderSample, fundus_array

from medcl.errors import ConfigError
from medcl.transforms import build_transforms, set_transform_seed

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


def test_illumination_gradient_by_hand():
    from medcl.transforms.intensity import RandIlluminationGradientd, illumination_gradient

    img = torch.full((2, 3, 5), 2.0)
    out = illumination_gradient(img, 0.2, -0.5)
    # rows at -1, 0, 1 and columns at -1, -0.5, 0, 0.5, 1 (linspace): corners and centre by hand
    assert torch.allclose(out[:, 0, 0], torch.full((2,), 2.0 * math.exp(-0.2 + 0.5)))
    assert torch.allclose(out[:, 2, 4], torch.full((2,), 2.0 * math.exp(0.2 - 0.5)))
    assert torch.allclose(out[:, 1, 2], torch.full((2,), 2.0))
    assert torch.allclose(out[:, 2, 1], torch.full((2,), 2.0 * math.exp(0.2 + 0.25)))
    with pytest.raises(ConfigError, match="transforms.illumination"):
        RandIlluminationGradientd(["image"], amount=-0.1)


def test_shift_along_axis_border_matches_numpy_edge_padding():
    from medcl.errors import ConfigError
    from medcl.transforms.spatial import RandAxisShiftd, shift_along_axis

    x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    for shift in (-6, -2, 0, 3, 5):
        s = min(abs(shift), 5)
        padded = np.pad(x.numpy(), ((0, 0), (s, s), (0, 0)), mode="edge")  # numpy's edge padding, both sides
        ref = padded[:, s - shift: s - shift + 5] if abs(shift) < 5 else padded[:, :5] if shift > 0 else padded[:, -5:]
        np.testing.assert_array_equal(shift_along_axis(x, shift, 1, "border").numpy(), ref)
    with pytest.raises(ConfigError, match="padding_mode"):
        shift_along_axis(x, 1, 1, "reflect")
    with pytest.raises(ConfigError, match="padding_mode"):
        RandAxisShiftd(["image"], padding_mode="wrap")


def test_rotate_2d_is_affine_grid_then_grid_sample():
    """The cached base grid gives torch's own ``affine_grid`` (the rotation's reference), bit for bit."""
    import torch.nn.functional as F

    from medcl.transforms.spatial import rotate_2d

    for h, w in ((64, 64), (48, 80), (7, 5)):
        x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h))
        for a in (0.0, 0.3, -1.2):
            theta = torch.tensor([[[math.cos(a), math.sin(a) * h / w, 0.0], [-math.sin(a) * w / h, math.cos(a), 0.0]]])
            grid = F.affine_grid(theta, [1, 3, h, w], align_corners=False)
            want = F.grid_sample(x[None], grid, padding_mode="border", align_corners=False)[0]
            assert torch.equal(rotate_2d(x, a, "bilinear", "border"), want)
    # a quarter turn of a square image: the top row becomes the right column (clockwise as displayed)
    x = torch.arange(16.0).reshape(1, 4, 4)
    want = torch.tensor([[[12.0, 8, 4, 0], [13, 9, 5, 1], [14, 10, 6, 2], [15, 11, 7, 3]]])
    assert torch.allclose(rotate_2d(x, math.pi / 2), want, atol=1e-4)


def test_speckle_noise_is_gamma_with_mean_one_fixed_by_the_seed():
    from scipy import stats

    from medcl.transforms.intensity import RandSpeckleNoised

    ones = {"image": torch.ones(1, 100, 100)}
    for std in (0.2, 1.5):
        t = RandSpeckleNoised(["image"], std=std, prob=1.0)
        t.set_random_state(seed=4)
        first = t(ones)["image"]
        k = 1.0 / std**2
        assert stats.kstest(first.flatten().numpy(), stats.gamma(a=k, scale=1 / k).cdf).pvalue > 1e-3
        assert (first > 0).all() and first.dtype == torch.float32
        assert not torch.equal(t(ones)["image"], first)  # a new field per call
        t.set_random_state(seed=4)
        assert torch.equal(t(ones)["image"], first)  # the seed fixes the field


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
    img = torch.as_tensor(fundus_array(h, w, cy, cx, r, rng) / 255.0, dtype=torch.float32)
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
    img = fundus_array(60, 80, 30, 38, 26, rng)
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
    # ... log(field) is a plane a·row + b·col through 0 at the centre (no brightness term, no saddle), with a slope
    # along each axis within the range (log-slope 0.4 from the centre to an edge: 0.8 over the 31 px between edges)
    yy, xx = np.mgrid[:32, :32]
    design = np.stack([np.ones(32 * 32), yy.ravel(), xx.ravel()], 1)
    coef, res, *_ = np.linalg.lstsq(design, np.log(ratio).ravel(), rcond=None)
    assert np.abs(design @ coef - np.log(ratio).ravel()).max() < 1e-4
    assert abs(np.log(ratio).mean()) < 1e-4
    assert all(0.0 < abs(k) <= 0.8 / 31 + 1e-6 for k in coef[1:])
    f_tf = build_transforms("fundus", train=True, views=2, spatial_size=[32, 32], illumination=0.4,
                            illumination_prob=1.0, rotate_prob=0.0, flip_prob=0.0, color_prob=0.0, gamma_prob=0.0)
    set_transform_seed(f_tf, 1)
    img = fundus_array(32, 32, 15.5, 15.5, 16, np.random.default_rng(0))
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


def _he_render(h_vec, e_vec, seed=0, size=48):
    """An H&E-like tile by Beer-Lambert: stain concentrations (nuclei blobs, eosin background) times stain vectors."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    h = np.zeros((size, size))
    for cy, cx in rng.uniform(4, size - 4, size=(12, 2)):
        h += 1.2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
    e = 0.5 + 0.2 * rng.random((size, size))
    od = h[..., None] * np.asarray(h_vec) + e[..., None] * np.asarray(e_vec)
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


def test_macenko_normalisation_brings_two_stainings_of_one_tissue_together():
    import torch
    from monai.apps.pathology.transforms import NormalizeHEStains

    from medcl.transforms.intensity import MacenkoNormalized

    h, e = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])  # Ruifrok & Johnston's H and E
    site_a = _he_render(h, e)
    norm = MacenkoNormalized(keys=("image",))

    def normalised(rgb):
        return norm({"image": torch.as_tensor(np.moveaxis(rgb, -1, 0).astype(np.float32))})["image"].numpy()

    np.testing.assert_array_equal(normalised(site_a), np.moveaxis(NormalizeHEStains()(site_a), -1, 0))  # MONAI's
    for h_scale, e_scale in ((1.5, 0.7), (0.7, 1.3)):  # the same tissue stained stronger/weaker in another lab
        site_b = _he_render(h * h_scale, e * e_scale)
        before = np.abs(site_a.astype(float) - site_b.astype(float)).mean()
        after = np.abs(normalised(site_a) - normalised(site_b)).mean()
        assert after < 0.3 * before  # concentrations rescaled to the reference maxima: the labs' tiles agree
    glass = torch.full((3, 16, 16), 238.0)  # no stained pixel: nothing to estimate, left as it is
    assert torch.equal(norm({"image": glass})["image"], glass)


def test_the_histo_preset_normalises_stains_only_when_asked():
    from medcl.errors import ConfigError
    from medcl.transforms import build_transforms
    from medcl.transforms.intensity import MacenkoNormalized

    def has_macenko(**kw):
        tf = build_transforms("histo", train=False, spatial_size=[32, 32], **kw)
        steps = [u for t in tf.transforms for u in getattr(t, "transforms", [t])]  # the det. part is nested
        return any(isinstance(t, MacenkoNormalized) for t in steps)

    assert not has_macenko() and has_macenko(stain_normalize="macenko")
    with pytest.raises(ConfigError, match="unknown stain normalisation 'reinhard'"):
        build_transforms("histo", train=False, spatial_size=[32, 32], stain_normalize="reinhard")


# ------------------------------------------------------------------------------------------------
# CT and MRI: table or head position (translation) and scanner noise as augmentations

#: the intensity augmentations of each 3D preset, switched off so that only geometry changes a view
_GEOMETRY_ONLY = {"ct": {"intensity_prob": 0.0}, "mri": {"bias_prob": 0.0, "gamma_prob": 0.0, "noise_prob": 0.0}}


def _ct_views(params: dict, seeds: range, preset: str = "ct") -> list[torch.Tensor]:
    """The first view of each seed's two, ``(16, 16, 8)``."""
    vol = np.full((1, 16, 16, 8), -160.0, np.float32)  # the window's floor (0 after windowing; < 0 after a z-score) ...
    vol[0, 6:10, 6:10, 3:5] = 240.0  # ... and one bright block at its ceiling (1; > 0 after a z-score)
    params = {**_GEOMETRY_ONLY[preset], **params}
    chain = build_transforms(preset, train=True, spatial_size=[16, 16, 8], spacing=[1.0, 1.0, 1.0], rotate_range=0.0,
                             scale_range=0.0, **params)
    out = []
    for seed in seeds:
        set_transform_seed(chain, seed)
        out.append(chain({"image": ReaderSample(vol, {"affine": np.eye(4).tolist()})})["views"][0, 0])
    return out


def _centre_of_mass(x: torch.Tensor) -> np.ndarray:
    w = x.clamp(min=0).double()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in x.shape], indexing="ij")
    return np.array([float((g * w).sum() / w.sum()) for g in grids])


@pytest.mark.parametrize("preset", ["ct", "mri"])
def test_translate_range_moves_the_volume_within_the_range_along_the_named_axes(preset):
    """RandAffine's translation is uniform in ``[-r, r]`` voxels per axis: the block's centre of mass moves by at
    most ``r`` along the first axis and not at all along the others; the default (0) never moves it. MRI's views
    move the head as CT's move the patient on the table (without it, the two views of a volume share its position)."""
    still = _ct_views({"affine_prob": 1.0}, range(4), preset)
    assert all(np.allclose(_centre_of_mass(v), [7.5, 7.5, 3.5], atol=1e-6) for v in still)
    moved = np.array([_centre_of_mass(v) - [7.5, 7.5, 3.5]
                      for v in _ct_views({"affine_prob": 1.0, "translate_range": [3, 0, 0]}, range(12), preset)])
    assert np.abs(moved[:, 0]).max() <= 3.0 + 1e-6 and np.abs(moved[:, 1:]).max() < 1e-6
    assert moved[:, 0].std() > 0.5  # it does move, by a different amount per draw
    unmoved = [_centre_of_mass(v) for v in _ct_views({"affine_prob": 0.0, "translate_range": [3, 0, 0]}, range(4),
                                                     preset)]
    assert np.allclose(unmoved, [7.5, 7.5, 3.5], atol=1e-6)  # affine_prob 0: the translation is never drawn


def test_ct_noise_std_adds_zero_mean_gaussian_noise_up_to_that_std():
    """MONAI's RandGaussianNoise draws the noise's std uniformly in ``[0, noise_std]`` per sample."""
    clean = _ct_views({"affine_prob": 0.0}, range(1))[0]
    residuals = [v - clean for v in _ct_views({"affine_prob": 0.0, "noise_std": 0.05, "noise_prob": 1.0}, range(8))]
    stds = np.array([float(r.std()) for r in residuals])
    assert stds.max() <= 0.05 * 1.1 and stds.min() > 0 and stds.std() > 0.002
    assert all(abs(float(r.mean())) < 4 * float(r.std()) / math.sqrt(r.numel()) + 1e-6 for r in residuals)


@pytest.mark.parametrize("preset", ["ct", "mri"])
def test_translate_range_needs_one_or_three_numbers(preset):
    with pytest.raises(ConfigError, match="translate_range"):
        build_transforms(preset, train=True, translate_range=[1, 2])
