"""Intensity transforms MONAI lacks: HED stain jitter, colour jitter, speckle, illumination gradient, circular FOV mask.

Array math lives once in a pure function (``torch`` in, ``torch`` out, channel-first
``(C, H, W)``); the dict transforms only draw the random parameters and call it, MONAI style
(``d`` suffix for dict transforms, ``Rand`` prefix for random ones). Random dict transforms draw
their parameters once per call and apply them to every key, so an image and its companion
channels stay consistent.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from medcl.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# HED stain jitter

#: Ruifrok & Johnston (2001) H&E-DAB stain vectors, as in ``skimage.color.rgb_from_hed``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = float(np.log(1e-6))


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution RGB → HED (``skimage.color.rgb2hed`` math, channel-first).

    Args:
        rgb: ``(3, H, W)`` in ``[0, 1]``.

    Returns:
        ``(3, H, W)`` stain concentrations (haematoxylin, eosin, DAB), ``>= 0``.
    """
    m = torch.as_tensor(HED_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("chw,cd->dhw", od, m).clamp_min(0.0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed` (``skimage.color.hed2rgb`` math), clipped to ``[0, 1]``."""
    m = torch.as_tensor(RGB_FROM_HED, dtype=hed.dtype, device=hed.device)
    log_rgb = torch.einsum("chw,cd->dhw", hed * _LOG_ADJUST, m)
    return torch.exp(log_rgb).clamp(0.0, 1.0)


def hed_jitter(rgb: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Stain augmentation in HED space: ``hed' = hed * alpha + beta`` per stain channel.

    Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference
    to train distilled stain-invariant convolutional networks", IEEE TMI 2018; Tellez et al.,
    "Quantifying the effects of data augmentation and stain color normalization", MedIA 2019.

    The stain concentrations are natural-log optical densities, ``od = -ln(rgb)``, deconvolved with
    the Ruifrok & Johnston vectors (:data:`HED_FROM_RGB`), as in scikit-image before 0.16, which the
    papers' code used: ``beta`` is in OD units (HED-light: ``|beta| <= 0.05``). Two differences from
    :func:`rgb_to_hed` (today's ``skimage.color.rgb2hed``), both deliberate: no division by
    ``ln(1e-6)`` (that scale makes a given ``beta`` 13.8× stronger) and no clipping of negative
    concentrations (clipping changes colours that are not exact H/E/DAB mixtures even at
    ``alpha = 1, beta = 0``); here ``alpha = 1, beta = 0`` is the identity.

    Args:
        rgb: ``(3, H, W)`` RGB in ``[0, 1]``.
        alpha: ``(3,)`` multiplicative factors (around 1).
        beta: ``(3,)`` additive shifts in optical density (around 0).

    Returns:
        ``(3, H, W)`` RGB in ``[0, 1]``.
    """
    # od' = R^T (a * (H^T od) + b), od = -ln rgb  ->  ln rgb' = (R^T diag(a) H^T) ln rgb - R^T b: one 3x3 product
    to_hed = torch.as_tensor(HED_FROM_RGB, dtype=torch.float64)
    to_od = torch.as_tensor(RGB_FROM_HED, dtype=torch.float64)
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(3).cpu()
    b = torch.as_tensor(beta, dtype=torch.float64).reshape(3).cpu()
    m = (to_od.T * a) @ to_hed.T
    c = to_od.T @ b
    log_rgb = torch.log(rgb.clamp_min(1e-6)).reshape(3, -1)
    out = torch.addmm(-c.to(rgb)[:, None], m.to(rgb), log_rgb)
    return torch.exp(out).reshape(rgb.shape).clamp(0.0, 1.0)


def _check_rgb(img: torch.Tensor, name: str) -> None:
    if img.ndim != 3 or img.shape[0] != 3:
        raise ConfigError(
            f"{name} needs an RGB image (3, H, W), got shape {tuple(img.shape)}",
            where=name,
            fix="use it only in the histopathology/fundus presets on 3-channel images",
        )


class _RandDictTransform(RandomizableTransform, MapTransform):
    """Base for medcl's random dict transforms: draw ``prob`` then parameters, apply to every key."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def draw(self, first: torch.Tensor) -> None:  # pragma: no cover - overridden
        """Draw the random parameters for this call (``first`` is the first key's array)."""

    def apply(self, img: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        """Apply the drawn parameters to one array."""
        return img

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform or not keys:
            return d
        self.draw(d[keys[0]])
        for key in keys:
            d[key] = self.apply(torch.as_tensor(d[key]))
        return d


class RandHEDJitterd(_RandDictTransform):
    """Random HED stain jitter (:func:`hed_jitter`); ``alpha ~ U(1-a, 1+a)``, ``beta ~ U(-b, b)``.

    Args:
        keys: RGB image keys, ``(3, H, W)`` in ``[0, 1]``.
        alpha: half-width of the multiplicative range (Tellez "HED-light": 0.05).
        beta: half-width of the additive range.
        prob: probability of applying.
    """

    def __init__(self, keys: KeysCollection, alpha: float = 0.05, beta: float = 0.02, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Store the jitter ranges; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        self.alpha, self.beta = float(alpha), float(beta)
        self._a = np.ones(3)
        self._b = np.zeros(3)

    def draw(self, first: torch.Tensor) -> None:
        """Draw one ``alpha`` and one ``beta`` per stain channel (H, E, D)."""
        self._a = self.R.uniform(1 - self.alpha, 1 + self.alpha, size=3)
        self._b = self.R.uniform(-self.beta, self.beta, size=3)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """Jitter an RGB ``(3, H, W)`` image with the drawn parameters (:func:`hed_jitter`)."""
        _check_rgb(img, "RandHEDJitterd")
        return hed_jitter(img, torch.as_tensor(self._a), torch.as_tensor(self._b))


# ------------------------------------------------------------------------------------------------
# colour jitter

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision rounds it


def color_jitter(img: torch.Tensor, brightness: float = 1.0, contrast: float = 1.0,
                 saturation: float = 1.0) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (torchvision ``ColorJitter`` formulas, no hue).

    Args:
        img: ``(C, H, W)`` in ``[0, 1]``; saturation needs ``C == 3`` and is skipped otherwise.
        brightness: multiplicative factor.
        contrast: factor blending with the image's mean grey level.
        saturation: factor blending with the per-pixel grey level.

    Returns:
        ``(C, H, W)`` in ``[0, 1]`` (clipped after each step, as torchvision does).
    """
    out = (img * brightness).clamp_(0.0, 1.0)
    rgb = out.shape[0] == 3
    luma = torch.tensor(_LUMA, dtype=out.dtype, device=out.device) if rgb else None
    if contrast != 1.0:  # the mean grey level: the luma weights applied to the channel means
        grey = (out.mean((-2, -1)) @ luma) if rgb else out.mean()
        out = out.sub_(grey).mul_(contrast).add_(grey).clamp_(0.0, 1.0)
    if saturation != 1.0 and rgb:
        grey = torch.tensordot(luma, out, dims=1)[None]  # (1, H, W) per-pixel grey
        out = out.sub_(grey).mul_(saturation).add_(grey).clamp_(0.0, 1.0)
    return out


class RandColorJitterd(_RandDictTransform):
    """Random :func:`color_jitter`; each factor ``~ U(1-x, 1+x)``.

    Args:
        keys: image keys ``(C, H, W)`` in ``[0, 1]``.
        brightness: half-width of the brightness factor range.
        contrast: half-width of the contrast factor range.
        saturation: half-width of the saturation factor range (RGB images only).
        prob: probability of applying.
    """

    def __init__(self, keys: KeysCollection, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        """Store the factor ranges; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        self.ranges = (float(brightness), float(contrast), float(saturation))
        self._f = (1.0, 1.0, 1.0)

    def draw(self, first: torch.Tensor) -> None:
        """Draw the brightness, contrast and saturation factors."""
        self._f = tuple(float(self.R.uniform(1 - r, 1 + r)) for r in self.ranges)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """:func:`color_jitter` with the drawn factors."""
        return color_jitter(img, *self._f)


# ------------------------------------------------------------------------------------------------
# speckle


def speckle(img: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Multiplicative speckle: ``img * noise`` (``noise`` has mean 1, e.g. gamma-distributed).

    Speckle in coherent imaging (OCT, ultrasound) is multiplicative: bright tissue gets stronger
    noise, background stays dark. Goodman, "Speckle Phenomena in Optics", 2007.
    """
    return img * noise


class RandSpeckleNoised(_RandDictTransform):
    """Random multiplicative speckle with gamma noise of mean 1 and standard deviation ``std``.

    Gamma noise is never negative, so a non-negative image stays non-negative (additive Gaussian
    noise would make the dark background negative).

    Args:
        keys: image keys.
        std: standard deviation of the multiplicative noise (shape ``1/std**2``).
        prob: probability of applying.
    """

    def __init__(self, keys: KeysCollection, std: float = 0.1, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Check and store ``std``; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        if std <= 0:
            raise ConfigError(f"speckle std must be > 0, got {std}", where="RandSpeckleNoised.std",
                              fix="use a small positive value such as 0.1, or prob 0 to switch it off")
        self.std = float(std)
        self._noise: np.ndarray | None = None

    def draw(self, first: torch.Tensor) -> None:
        """Draw a noise field of the first key's shape: Gamma(k, 1/k) with ``k = 1/std²`` (mean 1).

        The field comes from a NumPy ``Generator`` seeded by one draw of ``self.R`` (so the transform's seed still
        fixes it): its float32 gamma sampler takes half the time of ``RandomState.gamma`` on a 64×64 field.
        """
        k = 1.0 / self.std**2
        rng = np.random.Generator(np.random.PCG64(int(self.R.randint(2**32, dtype=np.uint32))))
        self._noise = rng.standard_gamma(k, size=tuple(first.shape), dtype=np.float32) / np.float32(k)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """Multiply by the drawn noise field (:func:`speckle`); every key gets the same field."""
        return speckle(img, torch.as_tensor(self._noise, device=img.device).to(img.dtype))


# ------------------------------------------------------------------------------------------------
# illumination gradient


def illumination_gradient(img: torch.Tensor, a_row: float, a_col: float) -> torch.Tensor:
    """``img * exp(a_row * r + a_col * c)``: a log-linear illumination gradient across the field.

    ``r`` and ``c`` run over ``linspace(-1, 1)`` along the rows and columns, so the factor is 1 at the centre and
    the mean log-intensity of the image is unchanged. MONAI's ``RandBiasField(degree=1)`` is not this in 2D: it
    fills the Legendre coefficients ``c[0,0], c[1,0], c[1,1]``, i.e. ``exp(c0 + c1 r + c2 r c)``: a brightness
    term, a gradient along the rows only and a saddle, and no gradient along the columns.

    Args:
        img: ``(C, H, W)``; every channel gets the same factor.
        a_row: log-intensity slope from the top (``-a_row``) to the bottom row (``+a_row``).
        a_col: the same along the columns.

    Returns:
        ``(C, H, W)``, the dtype of ``img``.
    """
    h, w = img.shape[-2:]
    r = torch.linspace(-1.0, 1.0, h, device=img.device)[:, None]
    c = torch.linspace(-1.0, 1.0, w, device=img.device)[None, :]
    return img * torch.exp(a_row * r + a_col * c).to(img.dtype)


class RandIlluminationGradientd(_RandDictTransform):
    """Random illumination gradient (:func:`illumination_gradient`), slopes ``a_row, a_col ~ U(-amount, amount)``.

    Uneven illumination across a scan or photograph (a tilted light source, vignetting off-centre): a nuisance
    a contrastive method would otherwise use to tell images apart.

    Args:
        keys: image keys ``(C, H, W)``.
        amount: largest log-intensity slope from the centre to an edge (``0.3``: up to ×1.35 at the edge).
        prob: probability of applying.
    """

    def __init__(self, keys: KeysCollection, amount: float = 0.3, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Check and store ``amount``; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        if amount < 0:
            raise ConfigError(f"illumination amount must be >= 0, got {amount}", where="transforms.illumination",
                              fix="use a small positive value such as 0.3, or 0 to switch it off")
        self.amount = float(amount)
        self._a = (0.0, 0.0)

    def draw(self, first: torch.Tensor) -> None:
        """Draw the two slopes."""
        self._a = tuple(float(v) for v in self.R.uniform(-self.amount, self.amount, 2))

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """Multiply by the drawn gradient; every key gets the same one."""
        return illumination_gradient(img, *self._a)


# ------------------------------------------------------------------------------------------------
# circular field of view (fundus)


def fov_circle(img: torch.Tensor, threshold: float) -> tuple[float, float, float]:
    """Fit the circular field of view of a fundus photograph.

    The FOV is the set of pixels whose channel mean exceeds ``threshold`` (holes filled); its
    outline, minus the parts lying on the image border or on the FOV's bounding-box rows and
    columns (FOVs are often cut flat at top and bottom), is fitted with an algebraic least-squares circle (Kasa, IEEE TIM 1976). Falls back to the
    inscribed circle when too few outline points remain.

    Args:
        img: ``(C, H, W)``.
        threshold: intensity separating FOV from the dark surround, in image units.

    Returns:
        ``(cy, cx, r)`` in pixels (row, column, radius).
    """
    from scipy import ndimage

    h, w = img.shape[-2:]
    inscribed = ((h - 1) / 2, (w - 1) / 2, min(h, w) / 2)
    mask = (torch.as_tensor(img).float().mean(0) > threshold).cpu().numpy()
    if mask.sum() < 10:
        return inscribed
    mask = ndimage.binary_fill_holes(mask)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    # drop the image border and straight chords where the FOV is cut (its bounding-box rows/columns)
    rows, cols = np.nonzero(mask)
    edge[[0, -1, rows.min(), rows.max()], :] = False
    edge[:, [0, -1, cols.min(), cols.max()]] = False
    ys, xs = np.nonzero(edge)
    if len(ys) < 8:
        return inscribed
    a = np.stack([2 * xs, 2 * ys, np.ones_like(xs)], axis=1).astype(np.float64)
    b = (xs.astype(np.float64) ** 2 + ys.astype(np.float64) ** 2)
    (cx, cy, c), *_ = np.linalg.lstsq(a, b, rcond=None)
    r2 = c + cx**2 + cy**2
    if r2 <= 0:
        return inscribed
    return float(cy), float(cx), float(np.sqrt(r2))


def circle_mask(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    """Boolean ``(H, W)`` mask, ``True`` inside the circle of centre ``(cy, cx)`` and radius ``r``."""
    yy = torch.arange(h, dtype=torch.float64)[:, None]
    xx = torch.arange(w, dtype=torch.float64)[None, :]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def crop_to_circle(img: torch.Tensor, cy: float, cx: float, r: float) -> torch.Tensor:
    """Square crop ``(C, 2r, 2r)`` centred on the circle, zero-padded where it leaves the image."""
    side = max(int(round(2 * r)), 1)
    y0 = int(round(cy - (side - 1) / 2))
    x0 = int(round(cx - (side - 1) / 2))
    h, w = img.shape[-2:]
    out = img.new_zeros((*img.shape[:-2], side, side))
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, h), min(x0 + side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = img[..., sy0:sy1, sx0:sx1]
    return out


FOV_MODES = ("fit", "inscribed")


def find_fov(img: torch.Tensor, mode: str = "fit", threshold: float = 0.04,
             margin: float = 0.0) -> tuple[float, float, float]:
    """The FOV circle ``(cy, cx, r)``: fitted (:func:`fov_circle`) or inscribed, shrunk by ``margin``."""
    if mode not in FOV_MODES:
        raise ConfigError(f"unknown FOV mode {mode!r}", where="FOVMask.mode", fix=f"use one of {FOV_MODES}")
    h, w = img.shape[-2:]
    if mode == "fit":
        cy, cx, r = fov_circle(img, threshold)
    else:
        cy, cx, r = (h - 1) / 2, (w - 1) / 2, min(h, w) / 2
    return cy, cx, max(r - margin, 1.0)


@functools.lru_cache(maxsize=64)
def _fov_weights(h: int, w: int, cy: float, cx: float, r: float, dtype: torch.dtype) -> torch.Tensor:
    """:func:`circle_mask` as 0/1 weights of ``dtype`` (CPU); read only.

    Kept between calls: after the crop and resize, every view of a fundus set has the same inscribed circle.
    """
    return circle_mask(h, w, cy, cx, r).to(dtype)


def apply_fov(img: torch.Tensor, circle: tuple[float, float, float], crop: bool = False) -> torch.Tensor:
    """Zero ``img`` ``(C, H, W)`` outside ``circle``; optionally :func:`crop_to_circle`."""
    h, w = img.shape[-2:]
    weights = _fov_weights(int(h), int(w), *(float(v) for v in circle), img.dtype).to(img.device)
    out = img * weights
    return crop_to_circle(out, *circle) if crop else out


class FOVMask(Transform):
    """Zero every pixel outside the circular field of view of a ``(C, H, W)`` image.

    Args:
        mode: ``"fit"`` (fit the circle with :func:`fov_circle`) or ``"inscribed"`` (the circle
            inscribed in the image — after ``crop`` and resizing the FOV is exactly that).
        threshold: FOV / background intensity threshold in image units (after scaling to [0, 1]).
        margin: pixels to shrink the radius by (drops the blurry rim).
        crop: also crop to the square around the circle (FOV centred, rotations stay inside it).
    """

    def __init__(self, mode: str = "fit", threshold: float = 0.04, margin: float = 0.0, crop: bool = False) -> None:
        """Check and store the parameters; see the class docstring."""
        if mode not in FOV_MODES:
            raise ConfigError(f"unknown FOV mode {mode!r}", where="FOVMask.mode", fix=f"use one of {FOV_MODES}")
        self.mode, self.threshold, self.margin, self.crop = mode, float(threshold), float(margin), bool(crop)

    def circle(self, img: torch.Tensor) -> tuple[float, float, float]:
        """The FOV circle ``(cy, cx, r)`` of a ``(C, H, W)`` image, in pixels (:func:`find_fov`)."""
        return find_fov(img, self.mode, self.threshold, self.margin)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` ``(C, H, W)`` zeroed outside its FOV (and cropped to it with ``crop``)."""
        img = torch.as_tensor(img)
        return apply_fov(img, self.circle(img), self.crop)


class FOVMaskd(MapTransform):
    """Dict version of :class:`FOVMask` (deterministic; usable as preprocessing).

    The circle is found on the first key and applied to every key (image and mask alike).
    """

    def __init__(self, keys: KeysCollection, mode: str = "fit", threshold: float = 0.04, margin: float = 0.0,
                 crop: bool = False, allow_missing_keys: bool = False) -> None:
        """Build the inner :class:`FOVMask` from the same parameters."""
        super().__init__(keys, allow_missing_keys)
        self.fov = FOVMask(mode=mode, threshold=threshold, margin=margin, crop=crop)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with every key masked (and cropped) by the first key's FOV circle."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        circle = self.fov.circle(torch.as_tensor(d[keys[0]]))
        for key in keys:
            d[key] = apply_fov(torch.as_tensor(d[key]), circle, self.fov.crop)
        return d


# ------------------------------------------------------------------------------------------------
# stain normalisation


class MacenkoNormalized(MapTransform):
    """H&E stain normalisation by MONAI's ``NormalizeHEStains`` (Macenko et al. 2009).

    Macenko et al. 2009, "A method for normalizing histology slides for quantitative analysis".

    Each image's H and E stain vectors are estimated from its optical densities (the angular extremes in the plane
    of the two main directions), its stain concentrations are rescaled to MONAI's reference maxima and re-rendered
    with MONAI's reference stain matrix, so slides from different sites or stainings look alike before training.

    Args:
        keys: RGB image keys, ``(3, H, W)`` in ``[0, 255]`` (before intensity scaling).
        tli: transmitted light intensity (the glass's brightness).
        beta: optical-density threshold below which a pixel is glass and not used to estimate the stains.

    What differs from normalising a whole slide: the stains are estimated per tile, not once per slide. A tile with
    no stained pixel (every optical density below ``beta``: glass) has no stain to estimate and is returned
    unchanged.
    """

    def __init__(self, keys: KeysCollection, tli: float = 240.0, beta: float = 0.15,
                 allow_missing_keys: bool = False) -> None:
        """Build MONAI's normaliser; see the class docstring."""
        from monai.apps.pathology.transforms import NormalizeHEStains

        super().__init__(keys, allow_missing_keys)
        self.normalize = NormalizeHEStains(tli=tli, beta=beta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise every key; returns a new dict."""
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            _check_rgb(torch.as_tensor(img), "MacenkoNormalized")
            hwc = np.clip(np.moveaxis(np.asarray(img, dtype=np.float32), 0, -1), 0, 255).round().astype(np.uint8)
            try:
                out = self.normalize(hwc)
            except ValueError as e:
                if "below the absorbance threshold" not in str(e):
                    raise
                continue  # glass only: nothing to normalise
            t = torch.as_tensor(np.moveaxis(out, -1, 0).astype(np.float32))
            d[key] = t if isinstance(img, torch.Tensor) else t.numpy()
        return d
