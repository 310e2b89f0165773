"""Modality presets: eval-time (deterministic) and train-time (random) MONAI dict transform chains.

Each preset is a :class:`Preset` in :data:`PRESETS` with its default parameters; every parameter
can be overridden through :func:`medcl.transforms.build_transforms` (``configs/modality/*.yaml``
holds the user-facing defaults). A chain is built as

    load → deterministic part (orientation, spacing, window/normalise, pad) → random part → to tensor

with the deterministic part first, so ``CacheDataset``/``PersistentDataset`` cache exactly it
(they stop at the first random transform). MONAI is imported inside the builders: importing this
module (e.g. to validate a config) stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medcl.errors import ConfigError
from medcl.lookup import did_you_mean

#: Parameters every preset accepts.
COMMON_DEFAULTS: dict[str, Any] = {
    "keys": ("image",),  # image keys (intensity and spatial transforms)
    "mask_keys": (),  # segmentation masks: spatial transforms only, nearest-neighbour
    "format": None,  # reader format; None = detect from the file
    "reader_options": {},  # extra keyword arguments for medcl.readers.read
    "aligned_views": False,  # views share one draw of the geometric augmentations (dense pretraining)
}


@dataclass(frozen=True)
class Preset:
    """One modality preset.

    Attributes:
        name: registry key, also the reader ``modality``.
        spatial_dims: 1 (signal), 2 or 3; model hint and the length of ``spatial_size``.
        in_channels: default channel count (model hint).
        defaults: preset parameters and their defaults (besides :data:`COMMON_DEFAULTS`).
        build: ``build(params, train) -> (deterministic, random)`` lists of dict transforms
            (``random`` is empty at eval time).
        summary: one line for ``--help`` and docs.
        size_keys: parameters that are spatial sizes (checked against ``spatial_dims``).
        batch_sample_part: for presets whose random part can run on whole batches
            (:mod:`medcl.transforms.batch`, ``augment_on: batch``): ``part(params)`` is the random part that
            stays in the DataLoader (the random crop that makes every sample one size); ``None``: only
            ``augment_on: sample``.
        multi_view: ``multi_view(params, random part, final transform, views)`` → the transform that makes the
            ``V`` views of a training sample; ``None``: :class:`~medcl.transforms.views.MultiViewd` (``V``
            independent draws of the random part). The ECG preset cuts CLOCS views here.
    """

    name: str
    spatial_dims: int
    in_channels: int
    defaults: Mapping[str, Any]
    build: Callable[[dict[str, Any], bool], tuple[list, list]]
    summary: str = ""
    size_keys: tuple[str, ...] = field(default=("spatial_size",))
    batch_sample_part: Callable[[dict[str, Any]], list] | None = None
    multi_view: Callable[[dict[str, Any], list, Any, int], Any] | None = None


def _triple(v: Any) -> tuple[float, float, float]:
    """A per-axis range for three axes: three numbers, or one for every axis (MONAI would move the first axis only)."""
    return (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(x) for x in v)


def _pair(v: Any) -> tuple[float, float]:
    """``x`` → ``(-x, x)`` or ``(1-x, 1+x)`` style ranges are done by MONAI; here just a 2-tuple."""
    return (float(v[0]), float(v[1])) if isinstance(v, Sequence) else (float(v), float(v))


def _interp(p: dict, image: str, mask: str) -> tuple[str, ...]:
    return tuple([image] * len(p["keys"]) + [mask] * len(p["mask_keys"]))


def _all(p: dict) -> list[str]:
    return [*p["keys"], *p["mask_keys"]]


# ------------------------------------------------------------------------------------------------
# 3D: CT and MRI


def _geometry_3d(p: dict) -> list:
    import numpy as np
    from monai import transforms as mt

    return [
        mt.Orientationd(_all(p), axcodes=p["axcodes"], labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(_all(p), pixdim=p["spacing"], mode=_interp(p, "bilinear", "nearest"), dtype=np.float32),
    ]


def _size_3d(p: dict, train: bool) -> tuple[list, list]:
    """Eval: centre crop/pad to ``spatial_size``. Train: pad (cached) then random crop (random)."""
    from monai import transforms as mt

    if not train:
        return [mt.ResizeWithPadOrCropd(_all(p), spatial_size=p["spatial_size"])], []
    from medcl.transforms.spatial import FastRandSpatialCropd  # lazy: monai

    return ([mt.SpatialPadd(_all(p), spatial_size=p["spatial_size"])],
            [FastRandSpatialCropd(_all(p), roi_size=p["spatial_size"], random_size=False)])


def _affine_3d(p: dict) -> Any:
    """The random rotation, scale and translation (voxels) of a 3D view: image bilinear, masks nearest."""
    from monai import transforms as mt

    return mt.RandAffined(_all(p), prob=p["affine_prob"], rotate_range=(p["rotate_range"],) * 3,
                          scale_range=(p["scale_range"],) * 3, translate_range=_triple(p["translate_range"]),
                          mode=_interp(p, "bilinear", "nearest"), padding_mode="zeros")


def _ct(p: dict, train: bool) -> tuple[list, list]:
    from monai import transforms as mt

    lo = p["window_level"] - p["window_width"] / 2
    hi = p["window_level"] + p["window_width"] / 2
    det = [*_geometry_3d(p), mt.ScaleIntensityRanged(p["keys"], a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    size_det, size_rand = _size_3d(p, train)
    if not train:
        return det + size_det, []
    rand = [
        *size_rand,
        # table position, patient size and rotation on the table: per-acquisition nuisances the views must not share
        _affine_3d(p),
        mt.RandShiftIntensityd(p["keys"], offsets=p["intensity_shift"], prob=p["intensity_prob"]),
        # scanner noise differs between acquisitions; the views of one series must not share its noise level
        *([mt.RandGaussianNoised(p["keys"], std=p["noise_std"], prob=p["noise_prob"])] if p["noise_std"] > 0 else []),
    ]
    return det + size_det, rand


def _mri(p: dict, train: bool) -> tuple[list, list]:
    from monai import transforms as mt

    det = [*_geometry_3d(p), mt.NormalizeIntensityd(p["keys"], nonzero=True, channel_wise=True)]
    size_det, size_rand = _size_3d(p, train)
    if not train:
        return det + size_det, []
    rand = [
        *size_rand,
        # head position and rotation in the coil, head size: per-acquisition nuisances the views must not share
        _affine_3d(p),
        mt.RandBiasFieldd(p["keys"], coeff_range=_pair(p["bias_coeff"]), prob=p["bias_prob"]),
        mt.RandAdjustContrastd(p["keys"], gamma=_pair(p["gamma"]), prob=p["gamma_prob"]),
        mt.RandGaussianNoised(p["keys"], std=p["noise_std"], prob=p["noise_prob"]),
    ]
    return det + size_det, rand


# ------------------------------------------------------------------------------------------------
# 2D: histopathology, OCT, fundus


def _scale_2d(p: dict) -> list:
    """Fixed-range scaling to [0, 1] (never per image: gain differences are kept) and optional resize."""
    from monai import transforms as mt

    lo, hi = _pair(p["intensity_range"])
    out = [mt.ScaleIntensityRanged(p["keys"], a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if p.get("resize"):
        out.append(mt.Resized(_all(p), spatial_size=p["resize"], mode=_interp(p, "area", "nearest")))
    return out


def _size_2d(p: dict, train: bool) -> tuple[list, list]:
    return _size_3d(p, train)  # the MONAI crop/pad transforms are dimension-agnostic


def _random_crop_2d(p: dict) -> list:
    """The random crop of the training chain: what stays per sample when the rest runs on batches."""
    return _size_2d(p, True)[1]


def _nothing(p: dict) -> list:
    """No per-sample random part (the deterministic part already makes every sample one size)."""
    return []


def _histo(p: dict, train: bool) -> tuple[list, list]:
    from medcl.transforms.intensity import MacenkoNormalized, RandColorJitterd, RandHEDJitterd  # lazy: monai
    from medcl.transforms.spatial import FastRandFlipd, FastRandRotate90d  # lazy: monai

    if p["stain_normalize"] not in ("none", "macenko"):
        raise ConfigError(f"unknown stain normalisation {p['stain_normalize']!r}", where="transforms.stain_normalize",
                          fix="use none or macenko")
    size_det, size_rand = _size_2d(p, train)
    stain = [MacenkoNormalized(p["keys"])] if p["stain_normalize"] == "macenko" else []
    det = stain + _scale_2d(p) + size_det
    if not train:
        return det, []
    rand = [
        *size_rand,
        RandHEDJitterd(p["keys"], alpha=p["hed_alpha"], beta=p["hed_beta"], prob=p["hed_prob"]),
        FastRandFlipd(_all(p), spatial_axis=0, prob=p["flip_prob"]),
        FastRandFlipd(_all(p), spatial_axis=1, prob=p["flip_prob"]),
        FastRandRotate90d(_all(p), prob=p["rotate90_prob"], max_k=3),
        RandColorJitterd(p["keys"], brightness=p["brightness"], contrast=p["contrast"],
                         saturation=p["saturation"], prob=p["color_prob"]),
    ]
    return det, rand


def _illumination(p: dict) -> list:
    """``[RandIlluminationGradientd]`` when ``p["illumination"] > 0``, else ``[]``: an uneven illumination.

    Intensity × exp(a·row + b·col), the slopes in U(-illumination, illumination) (not MONAI's 2D
    ``RandBiasFieldd(degree=1)``, which has no gradient along the columns; see
    :func:`medcl.transforms.intensity.illumination_gradient`).
    """
    from medcl.transforms.intensity import RandIlluminationGradientd  # lazy: monai

    if p["illumination"] <= 0:
        return []
    return [RandIlluminationGradientd(p["keys"], amount=p["illumination"], prob=p["illumination_prob"])]


def _oct(p: dict, train: bool) -> tuple[list, list]:
    from monai import transforms as mt

    from medcl.transforms.intensity import RandSpeckleNoised  # lazy: monai
    from medcl.transforms.spatial import FastRandFlipd, RandAxisShiftd, RandRotate2Dd  # lazy: monai

    size_det, size_rand = _size_2d(p, train)
    det = _scale_2d(p) + size_det
    if not train:
        return det, []
    # no vertical flip (drusen lie *below* the band: up/down is signal), no blur (drusen are small)
    rand = [
        *size_rand,
        # the rows a shift vacates repeat the edge row by default (shift_padding: border, as the tilt's padding): zero
        # rows would put a black strip, never seen in a real scan, at the top or bottom of the view
        RandAxisShiftd(_all(p), max_shift=p["vertical_shift"], spatial_axis=0, prob=p["shift_prob"],
                       padding_mode=p["shift_padding"]),
        # tilt: the retina's slope in the scan is a per-scan nuisance; without this the views of one
        # scan share it and contrastive learning can tell scans apart by tilt alone
        *([RandRotate2Dd(_all(p), range_x=math.radians(p["tilt_deg"]), prob=p["tilt_prob"],
                         mode=list(_interp(p, "bilinear", "nearest")), padding_mode="border")]
          if p["tilt_deg"] > 0 else []),
        FastRandFlipd(_all(p), spatial_axis=1, prob=p["flip_prob"]),
        mt.RandScaleIntensityd(p["keys"], factors=p["gain"], prob=p["gain_prob"]),
        # additive offset and an illumination gradient (exp(a·row + b·col)): scanners and
        # acquisitions differ in both, and a contrastive method would otherwise tell scans apart by them
        *([mt.RandShiftIntensityd(p["keys"], offsets=p["offset"], prob=p["offset_prob"])] if p["offset"] > 0 else []),
        *_illumination(p),
        mt.RandAdjustContrastd(p["keys"], gamma=_pair(p["gamma"]), prob=p["gamma_prob"]),
        RandSpeckleNoised(p["keys"], std=p["speckle_std"], prob=p["speckle_prob"]),
    ]
    return det, rand


def _fundus(p: dict, train: bool) -> tuple[list, list]:
    from monai import transforms as mt

    from medcl.transforms.intensity import FOVMaskd, RandColorJitterd  # lazy: monai
    from medcl.transforms.spatial import FastRandFlipd, RandRotate2Dd  # lazy: monai

    lo, hi = _pair(p["intensity_range"])
    det = [
        mt.ScaleIntensityRanged(p["keys"], a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        FOVMaskd(_all(p), mode="fit", threshold=p["fov_threshold"], margin=p["fov_margin"], crop=True),
        mt.Resized(_all(p), spatial_size=p["spatial_size"], mode=_interp(p, "area", "nearest")),
        FOVMaskd(_all(p), mode="inscribed"),
    ]
    if not train:
        return det, []
    rand = [
        # the FOV is centred and circular after the crop: any rotation keeps it inside the image
        RandRotate2Dd(_all(p), range_x=math.pi * p["rotate_range"], prob=p["rotate_prob"],
                      mode=list(_interp(p, "bilinear", "nearest")), padding_mode="zeros"),
        FastRandFlipd(_all(p), spatial_axis=0, prob=p["flip_prob"]),
        FastRandFlipd(_all(p), spatial_axis=1, prob=p["flip_prob"]),
        RandColorJitterd(p["keys"], brightness=p["brightness"], contrast=p["contrast"],
                         saturation=p["saturation"], prob=p["color_prob"]),
        mt.RandAdjustContrastd(p["keys"], gamma=_pair(p["gamma"]), prob=p["gamma_prob"]),
        *_illumination(p),  # uneven illumination across the field, all channels alike
        FOVMaskd(_all(p), mode="inscribed"),  # jitter and interpolation leak outside: zero it again
    ]
    return det, rand


# ------------------------------------------------------------------------------------------------
# 1D: ECG


def _ecg(p: dict, train: bool) -> tuple[list, list]:
    from monai import transforms as mt

    from medcl.transforms import signal as st  # lazy: monai

    fs = float(p["sampling_rate"])
    length = int(round(p["window_s"] * fs))
    det = [st.ResampleSignald(p["keys"], sampling_rate=fs),
           st.NormalizeLeadsd(p["keys"], mode=p["normalize"], mv_scale=p["mv_scale"])]
    if not train:
        eval_len = int(round((p["eval_window_s"] or p["window_s"]) * fs))
        return [*det, st.CenterTimeCropd(p["keys"], length=eval_len)], []
    rand = [
        st.RandTimeCropd(p["keys"], length=length),
        st.RandAmplitudeScaled(p["keys"], scale_range=_pair(p["amplitude_scale"]), prob=p["amplitude_prob"]),
        st.RandBaselineWanderd(p["keys"], sampling_rate=fs, max_amplitude=p["wander_amplitude"],
                               freq_range=_pair(p["wander_freq"]), prob=p["wander_prob"]),
        mt.RandGaussianNoised(p["keys"], std=p["noise_std"], prob=p["noise_prob"]),
        st.RandLeadDropoutd(p["keys"], lead_prob=p["lead_dropout"], prob=1.0 if p["lead_dropout"] > 0 else 0.0),
    ]
    if p["lead_group_prob"] > 0:
        rand.append(st.RandLeadGroupd(p["keys"], groups=p["lead_groups"], mode=p["lead_group_mode"],
                                      prob=p["lead_group_prob"]))
    return det, rand


def _ecg_views(p: dict, rand: list, final: Any, views: int) -> Any:
    """The views of an ECG record: independent random windows, or CLOCS's segments / lead groups.

    ``view_mode: random`` draws the whole random part per view; the CLOCS modes
    (:class:`~medcl.transforms.views.ClocsViewsd`) replace the random window and the random lead group, and the
    other augmentations run on each view.
    """
    from medcl.transforms import signal as st  # lazy: monai
    from medcl.transforms.compose import PlainCompose  # lazy: monai
    from medcl.transforms.views import ECG_VIEW_MODES, ClocsViewsd, MultiViewd  # lazy: monai

    mode = p["view_mode"]
    if mode not in ECG_VIEW_MODES:
        raise ConfigError(f"unknown view_mode {mode!r}{did_you_mean(mode, ECG_VIEW_MODES, paren=True)}",
                          where="transforms.view_mode", fix=f"use one of {', '.join(ECG_VIEW_MODES)}")
    if mode == "random":
        return MultiViewd(PlainCompose([*rand, final], copy_inputs=False), views=views, keys=p["keys"])
    per_view = [t for t in rand if not isinstance(t, st.RandTimeCropd | st.RandLeadGroupd)]
    length = int(round(p["window_s"] * float(p["sampling_rate"])))
    return ClocsViewsd(PlainCompose([*per_view, final], copy_inputs=False), views=views, keys=p["keys"],
                       length=length, mode=mode, groups=p["lead_groups"])


# ------------------------------------------------------------------------------------------------
# registry

PRESETS: dict[str, Preset] = {
    "ct": Preset(
        "ct", 3, 1,
        {"spatial_size": (96, 96, 96), "spacing": (1.5, 1.5, 2.0), "axcodes": "RAS",
         "window_level": 40.0, "window_width": 400.0,
         "affine_prob": 0.3, "rotate_range": 0.1, "scale_range": 0.1, "translate_range": (0.0, 0.0, 0.0),
         # ±5 HU of the 400-HU window (a site's calibration offset): Hounsfield units are calibrated, and a ±40 HU
         # shift (0.1) taught SimCLR to ignore a hypodense lesion's density on the CT demo
         "intensity_shift": 0.0125, "intensity_prob": 0.5, "noise_std": 0.0, "noise_prob": 0.5},
        _ct, "RAS, resample, HU window → [0, 1], crop/pad; aug: random crop, affine (rotation, scale, optional "
        "translation), intensity shift, optional Gaussian noise"),
    "mri": Preset(
        "mri", 3, 1,
        {"spatial_size": (96, 96, 96), "spacing": (1.0, 1.0, 1.0), "axcodes": "RAS",
         # without a geometric draw the two views of a volume share the head's position, size and tilt, and
         # instance discrimination needs little else (the MRI demo's SimCLR probe stayed at its random-init one's)
         "affine_prob": 0.3, "rotate_range": 0.1, "scale_range": 0.1, "translate_range": (0.0, 0.0, 0.0),
         "bias_coeff": (0.0, 0.1), "bias_prob": 0.3, "gamma": (0.7, 1.5), "gamma_prob": 0.3,
         "noise_std": 0.05, "noise_prob": 0.3},
        _mri, "RAS, resample, nonzero z-score, crop/pad; aug: random crop, affine (rotation, scale, optional "
        "translation), bias field, gamma, noise"),
    "histo": Preset(
        "histo", 2, 3,
        {"spatial_size": (224, 224), "intensity_range": (0.0, 255.0), "resize": None,
         "hed_alpha": 0.05, "hed_beta": 0.02, "hed_prob": 0.8, "flip_prob": 0.5, "rotate90_prob": 0.75,
         "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "color_prob": 0.8, "stain_normalize": "none"},
        _histo, "optional Macenko stain normalisation, [0, 255] → [0, 1], crop/pad; aug: HED stain jitter, flips, "
        "90° rotations, colour jitter",
        batch_sample_part=_random_crop_2d),
    "oct": Preset(
        "oct", 2, 1,
        {"spatial_size": (64, 64), "intensity_range": (0.0, 255.0), "resize": None,
         "vertical_shift": 0.15, "shift_prob": 0.8, "shift_padding": "border", "tilt_deg": 0.0, "tilt_prob": 0.8,
         "flip_prob": 0.5,
         "gain": 0.15, "gain_prob": 0.5, "offset": 0.0, "offset_prob": 0.5, "illumination": 0.0,
         "illumination_prob": 0.5, "gamma": (0.8, 1.25), "gamma_prob": 0.3, "speckle_std": 0.1,
         "speckle_prob": 0.5},
        _oct, "fixed [0, 255] → [0, 1], crop/pad; aug: vertical shift, tilt (small rotation), horizontal flip, gain, "
        "offset, illumination gradient, gamma, speckle", batch_sample_part=_random_crop_2d),
    "fundus": Preset(
        "fundus", 2, 3,
        {"spatial_size": (224, 224), "intensity_range": (0.0, 255.0), "fov_threshold": 0.04, "fov_margin": 0.0,
         "rotate_range": 1.0, "rotate_prob": 0.8, "flip_prob": 0.5,
         "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "color_prob": 0.8,
         "gamma": (0.8, 1.25), "gamma_prob": 0.3, "illumination": 0.0, "illumination_prob": 0.5},
        _fundus, "[0, 255] → [0, 1], circular FOV mask + crop, resize; aug: rotation, flips, colour/gamma, "
        "illumination gradient", batch_sample_part=_nothing),
    "ecg": Preset(
        "ecg", 1, 12,
        {"sampling_rate": 500.0, "window_s": 2.5, "eval_window_s": None, "normalize": "standardize",
         "mv_scale": 1.0, "amplitude_scale": (0.8, 1.2), "amplitude_prob": 0.5,
         "wander_amplitude": 0.1, "wander_freq": (0.05, 0.5), "wander_prob": 0.5,
         "noise_std": 0.05, "noise_prob": 0.5, "lead_dropout": 0.1,
         "lead_groups": None, "lead_group_mode": "mask", "lead_group_prob": 0.0, "view_mode": "random"},
        _ecg, "resample, per-lead z-score or mV scale, time window; aug: time crop, amplitude, wander, noise, "
              "lead dropout, lead groups; views: random windows or CLOCS (cmsc, cmlc, cmsmlc)", size_keys=(),
        multi_view=_ecg_views),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Raises:
        ConfigError: unknown name, with a did-you-mean suggestion.
    """
    key = str(name).strip().lower()
    if key not in PRESETS:
        hint = did_you_mean(key, PRESETS, cutoff=0.5, paren=True)
        raise ConfigError(f"unknown transform preset {name!r}{hint}",
                          where="transforms.preset", fix=f"use one of {', '.join(PRESETS)}")
    return PRESETS[key]


def resolve_params(preset: Preset, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``preset`` overridden by ``params``, checked.

    Sequences become tuples; ``spatial_size`` must have ``spatial_dims`` positive entries.

    Raises:
        ConfigError: unknown parameter (did-you-mean), or a value of the wrong kind.
    """
    defaults = {**COMMON_DEFAULTS, **preset.defaults}
    out = dict(defaults)
    for k, v in params.items():
        where = f"transforms.{k}"
        if k not in defaults:
            hint = did_you_mean(k, defaults, cutoff=0.5, paren=True)
            raise ConfigError(f"unknown parameter {k!r} for preset {preset.name!r}{hint}",
                              where=where, fix=f"use one of {', '.join(sorted(defaults))}")
        d = defaults[k]
        if k in ("keys", "mask_keys"):
            v = (v,) if isinstance(v, str) else tuple(v or ())
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(d, tuple) and d and isinstance(v, tuple) and len(v) != len(d) and k not in ("keys",):
            raise ConfigError(f"{k} needs {len(d)} values, got {list(v)}", where=where,
                              fix=f"give a list of {len(d)} numbers like {list(d)}")
        if type(d) in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{k} must be a number, got {v!r}", where=where, fix=f"e.g. {d}")
        if type(d) is str and not isinstance(v, str):
            raise ConfigError(f"{k} must be a string, got {v!r}", where=where, fix=f"e.g. {d!r}")
        out[k] = v
    for k in preset.size_keys:
        size = out[k]
        if (not isinstance(size, tuple) or len(size) != preset.spatial_dims
                or not all(isinstance(s, int) and s > 0 for s in size)):
            raise ConfigError(f"{k} must be {preset.spatial_dims} positive integers for {preset.name!r}, got {size!r}",
                              where=f"transforms.{k}", fix=f"e.g. {list(preset.defaults[k])}")
    out["keys"] = tuple(out["keys"])
    out["mask_keys"] = tuple(out["mask_keys"])
    return out


#: where the random part of a training chain runs: per sample in the DataLoader, or per batch on the device
AUGMENT_ON: tuple[str, ...] = ("sample", "batch")


def build_transforms(preset: str, *, train: bool, views: int = 2, augment_on: str = "sample", **params: Any):
    """Build the MONAI ``Compose`` of a modality preset.

    Args:
        preset: one of :data:`PRESETS` (``ct``, ``mri``, ``histo``, ``oct``, ``fundus``, ``ecg``).
        train: ``False``: deterministic eval chain (load, geometry, window/normalise, centre
            crop/pad). ``True``: the cacheable deterministic part, then random augmentations.
        views: with ``train`` and ``views >= 2`` the augmentations run ``views`` times through
            :class:`~medcl.transforms.views.MultiViewd` and the sample gets ``"views"``
            ``(V, C, *spatial)`` instead of ``"image"``; ``views == 1`` augments ``"image"`` in place
            (supervised fine-tuning, segmentation). Ignored when ``train`` is ``False``.
        augment_on: ``"sample"``: the whole random part runs here, per sample. ``"batch"``: only the preset's
            :attr:`Preset.batch_sample_part` (a random crop) runs here; the rest runs on whole batches
            (:func:`medcl.transforms.batch.build_batch_augment`), so the views leave the loader un-augmented.
        **params: overrides of the preset's defaults (see ``PRESETS[name].defaults`` and
            :data:`COMMON_DEFAULTS`).

    Returns:
        :class:`~medcl.transforms.compose.MedclCompose` (a MONAI ``Compose`` that lets medcl errors
        through unwrapped): item dict ``{"image": path, ...}`` → dict with ``float32``
        tensors ``"image"`` ``(C, *spatial)`` (or ``"views"``) and ``"image_meta_dict"``.

    Raises:
        ConfigError: unknown preset or parameter, bad value, masks combined with ``views >= 2``, ``augment_on``
            unknown or ``"batch"`` for a preset without a batched chain.
    """
    import torch
    from monai import transforms as mt

    from medcl.transforms.compose import MedclCompose, PlainChain, PlainCompose  # lazy: monai
    from medcl.transforms.io import LoadSampled  # lazy: monai
    from medcl.transforms.views import AlignedViewsd, MultiViewd, is_spatial  # lazy: monai

    spec = get_preset(preset)
    p = resolve_params(spec, params)
    if train and int(views) >= 2 and p["mask_keys"]:
        raise ConfigError("multi-view augmentation does not carry segmentation masks", where="transforms.views",
                          fix="use views: 1 for segmentation (masks are augmented with the image)")
    if int(views) < 1:
        raise ConfigError(f"views must be >= 1, got {views}", where="transforms.views", fix="use 2 for pretraining")
    load = LoadSampled(_all(p), format=p["format"], modality=spec.name, **dict(p["reader_options"]))
    det, rand = spec.build(p, bool(train))
    if augment_on not in AUGMENT_ON:
        raise ConfigError(f"unknown augment_on {augment_on!r}{did_you_mean(augment_on, AUGMENT_ON, paren=True)}",
                          where="transforms.augment_on", fix="use sample or batch")
    if train and augment_on == "batch":
        if spec.batch_sample_part is None:
            batched = ", ".join(k for k, v in PRESETS.items() if v.batch_sample_part is not None)
            raise ConfigError(f"augment_on: batch is not available for the {spec.name!r} preset",
                              where="transforms.augment_on", fix=f"use augment_on: sample, or a preset of {batched}")
        rand = spec.batch_sample_part(p)
    final = mt.EnsureTyped(_all(p), data_type="tensor", dtype=torch.float32, track_meta=False)
    if spec.spatial_dims < 3 and det:
        # 1D/2D: no step needs the affine (no spacing, no orientation) and ``final`` drops the metadata anyway, so
        # the deterministic part runs on plain tensors too: MONAI's per-op metadata tracking cost more than the
        # scaling and resizing themselves (profiled on histo tiles; benchmarks/README.md section 4e measures the loader).
        # PlainChain, not PlainCompose: a Compose is randomizable to MONAI, whose caches would stop in front of it
        det = [PlainChain(det)]
    if not train:
        return MedclCompose([load, *det, final])
    if int(views) >= 2:
        # the views' augmentations run on plain tensors (PlainCompose): same output, half the CPU time
        if p["aligned_views"]:
            if augment_on == "batch":
                raise ConfigError("aligned_views needs augment_on: sample", where="transforms.aligned_views",
                                  fix="set transforms.augment_on: sample")
            spatial = [t for t in rand if is_spatial(t)]
            return MedclCompose([load, *det, AlignedViewsd(
                PlainCompose(spatial, copy_inputs=False), PlainCompose([t for t in rand if not is_spatial(t)] + [final],
                                                                      copy_inputs=False),
                views=int(views), keys=p["keys"])])
        if spec.multi_view is not None and augment_on == "sample":
            return MedclCompose([load, *det, spec.multi_view(p, rand, final, int(views))])
        return MedclCompose([load, *det, MultiViewd(PlainCompose([*rand, final], copy_inputs=False), views=int(views),
                                                    keys=p["keys"])])
    # one view (fine-tuning, segmentation with masks): the same plain-tensor augmentation, image and masks alike
    return MedclCompose([load, *det, PlainCompose([*rand, final])])


def preset_info(name: str) -> dict[str, Any]:
    """Model hints and defaults of a preset: ``{spatial_dims, in_channels, defaults, summary}``."""
    spec = get_preset(name)
    return {"spatial_dims": spec.spatial_dims, "in_channels": spec.in_channels,
            "defaults": {**COMMON_DEFAULTS, **spec.defaults}, "summary": spec.summary}
