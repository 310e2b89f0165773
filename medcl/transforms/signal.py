"""ECG signal transforms on ``(leads, T)`` arrays (MONAI has few 1D ones).

Pure functions do the math; the dict transforms draw random parameters (from their own
``self.R``, so :mod:`medcl.transforms.seeding` controls them) and call the functions.
For CLOCS-style pretraining (Kiyasseh et al., "CLOCS: Contrastive Learning of Cardiac Signals
Across Space, Time, and Patients", ICML 2021) two views of a record are two random time
segments (:class:`RandTimeCropd`) and optionally two lead groups (:class:`RandLeadGroupd`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medcl.errors import ConfigError, DataError
from medcl.transforms.intensity import _RandDictTransform
from medcl.transforms.io import META_SUFFIX

#: Standard 12-lead order (I, II, III, aVR, aVL, aVF, V1–V6) split into CLOCS lead groups.
LEAD_GROUPS_12: dict[str, tuple[int, ...]] = {"limb": (0, 1, 2, 3, 4, 5), "precordial": (6, 7, 8, 9, 10, 11)}

NORMALIZE_MODES = ("standardize", "fixed")


def _as_signal(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise DataError(f"{name} expects a signal (leads, T), got shape {tuple(t.shape)}", where=name,
                        fix="use the ECG preset only on ECG records (the reader gives (leads, T))")
    return t


def standardize_leads(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-lead zero mean, unit standard deviation. ``(leads, T)`` → ``(leads, T)``.

    A flat (all-constant) lead becomes all zeros instead of NaN.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(eps)


def crop_or_pad_time(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Window ``x[:, start:start+length]``, zero-padded at the end when the record is shorter."""
    out = x[..., start:start + length]
    if out.shape[-1] < length:
        out = torch.nn.functional.pad(out, (0, length - out.shape[-1]))
    return out


def baseline_wander(t: int, fs: float, freqs: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> torch.Tensor:
    """Sum of low-frequency sinusoids (respiration / electrode drift), one mix per lead.

    Args:
        t: number of samples.
        fs: sampling rate in Hz.
        freqs: ``(K,)`` frequencies in Hz.
        amps: ``(leads, K)`` amplitudes.
        phases: ``(leads, K)`` phases in radians.

    Returns:
        ``(leads, t)`` float32.
    """
    time = np.arange(t, dtype=np.float64) / fs
    waves = np.sin(2 * np.pi * freqs[None, :, None] * time[None, None, :] + phases[:, :, None])
    return torch.as_tensor((amps[:, :, None] * waves).sum(axis=1), dtype=torch.float32)


def resample_signal(x: torch.Tensor, src_rate: float, dst_rate: float) -> torch.Tensor:
    """Polyphase resampling along time (``scipy.signal.resample_poly``, anti-aliased)."""
    from scipy.signal import resample_poly

    if abs(src_rate - dst_rate) < 1e-9:
        return x
    frac = Fraction(dst_rate / src_rate).limit_denominator(1000)
    y = resample_poly(x.detach().cpu().numpy(), frac.numerator, frac.denominator, axis=-1)
    return torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float32)


class ResampleSignald(MapTransform):
    """Resample to ``sampling_rate`` using the reader's ``meta["sampling_rate"]`` (no-op if equal/absent)."""

    def __init__(self, keys: KeysCollection, sampling_rate: float, meta_suffix: str = META_SUFFIX,
                 allow_missing_keys: bool = False) -> None:
        """Store the target rate (Hz) and where the reader's metadata lives (``f"{key}{meta_suffix}"``)."""
        super().__init__(keys, allow_missing_keys)
        self.rate, self.meta_suffix = float(sampling_rate), meta_suffix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with each ``(leads, T)`` signal resampled and its ``sampling_rate`` meta updated."""
        d = dict(data)
        for key in self.key_iterator(d):
            meta = d.get(f"{key}{self.meta_suffix}") or {}
            src = meta.get("sampling_rate")
            if src:
                d[key] = resample_signal(_as_signal(d[key], "ResampleSignald"), float(src), self.rate)
                d[f"{key}{self.meta_suffix}"] = {**meta, "sampling_rate": self.rate}
        return d


class NormalizeLeadsd(MapTransform):
    """Per-lead standardisation (``"standardize"``) or fixed scaling ``x / mv_scale`` (``"fixed"``).

    ``"fixed"`` keeps amplitude differences between records and leads (e.g. voltage criteria for
    hypertrophy); ``"standardize"`` removes them.
    """

    def __init__(self, keys: KeysCollection, mode: str = "standardize", mv_scale: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Check and store ``mode`` (one of :data:`NORMALIZE_MODES`) and ``mv_scale`` (mV that maps to 1.0)."""
        super().__init__(keys, allow_missing_keys)
        if mode not in NORMALIZE_MODES:
            raise ConfigError(f"unknown ECG normalisation {mode!r}", where="transforms.normalize",
                              fix=f"use one of {NORMALIZE_MODES}")
        if mv_scale <= 0:
            raise ConfigError(f"mv_scale must be > 0, got {mv_scale}", where="transforms.mv_scale",
                              fix="give the millivolt value that should map to 1.0")
        self.mode, self.mv_scale = mode, float(mv_scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with each ``(leads, T)`` signal normalised."""
        d = dict(data)
        for key in self.key_iterator(d):
            x = _as_signal(d[key], "NormalizeLeadsd").float()
            d[key] = standardize_leads(x) if self.mode == "standardize" else x / self.mv_scale
        return d


class CenterTimeCropd(MapTransform):
    """Centre window of ``length`` samples (zero-padded when shorter): the eval-time crop."""

    def __init__(self, keys: KeysCollection, length: int, allow_missing_keys: bool = False) -> None:
        """Store the window length in samples."""
        super().__init__(keys, allow_missing_keys)
        self.length = int(length)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with each signal cropped (or padded) to ``(leads, length)``."""
        d = dict(data)
        for key in self.key_iterator(d):
            x = _as_signal(d[key], "CenterTimeCropd")
            d[key] = crop_or_pad_time(x, max((x.shape[-1] - self.length) // 2, 0), self.length)
        return d


class RandTimeCropd(_RandDictTransform):
    """Random window of ``length`` samples; start ``~ U{0, ..., T - length}``."""

    spatial = True  # moves samples in time: shared by aligned views

    def __init__(self, keys: KeysCollection, length: int, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        """Store the window length in samples; ``prob < 1`` makes the skipped draws centre crops."""
        super().__init__(keys, prob, allow_missing_keys)
        self.length = int(length)
        self._start = 0

    def draw(self, first: torch.Tensor) -> None:
        """Draw the window start from the first key's length ``T``."""
        self._start = int(self.R.randint(0, max(first.shape[-1] - self.length, 0) + 1))

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """``(leads, length)`` window of ``img`` at the drawn start (zero-padded when too short)."""
        return crop_or_pad_time(_as_signal(img, "RandTimeCropd"), self._start, self.length)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with every key cropped to ``length`` samples, at random or centred."""
        # the crop always happens (prob < 1 would give uneven lengths): a skipped draw is a centre crop
        d = super().__call__(data)
        if not self._do_transform:
            d = CenterTimeCropd(self.keys, self.length, self.allow_missing_keys)(d)
        return d


class RandAmplitudeScaled(_RandDictTransform):
    """Multiply the whole record by a factor ``~ U(low, high)``."""

    def __init__(self, keys: KeysCollection, scale_range: Sequence[float] = (0.8, 1.2), prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Store the factor range ``scale_range = (low, high)``."""
        super().__init__(keys, prob, allow_missing_keys)
        self.low, self.high = (float(v) for v in scale_range)
        self._f = 1.0

    def draw(self, first: torch.Tensor) -> None:
        """Draw the amplitude factor."""
        self._f = float(self.R.uniform(self.low, self.high))

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` times the drawn factor."""
        return img * self._f


class RandBaselineWanderd(_RandDictTransform):
    """Add random baseline wander (:func:`baseline_wander`) to a ``(leads, T)`` signal.

    The wander is ``n_components`` sinusoids with frequencies ``~ U(freq_range)`` Hz, per-lead
    amplitudes ``~ U(0, max_amplitude)`` and random phases.
    """

    def __init__(self, keys: KeysCollection, sampling_rate: float, max_amplitude: float = 0.1,
                 freq_range: Sequence[float] = (0.05, 0.5), n_components: int = 2, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Store the signal's ``sampling_rate`` (Hz) and the wander's ranges."""
        super().__init__(keys, prob, allow_missing_keys)
        self.fs, self.max_amplitude = float(sampling_rate), float(max_amplitude)
        self.freq_range, self.n = tuple(float(f) for f in freq_range), int(n_components)
        self._wave: torch.Tensor | None = None

    def draw(self, first: torch.Tensor) -> None:
        """Draw frequencies, amplitudes and phases and build the ``(leads, T)`` wander of the first key."""
        leads, t = _as_signal(first, "RandBaselineWanderd").shape
        freqs = self.R.uniform(*self.freq_range, size=self.n)
        amps = self.R.uniform(0.0, self.max_amplitude, size=(leads, self.n))
        phases = self.R.uniform(0.0, 2 * np.pi, size=(leads, self.n))
        self._wave = baseline_wander(t, self.fs, freqs, amps, phases)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` plus the drawn wander."""
        return img + self._wave.to(dtype=img.dtype, device=img.device)


class RandLeadDropoutd(_RandDictTransform):
    """Zero each lead independently with probability ``lead_prob`` (at least one lead survives)."""

    def __init__(self, keys: KeysCollection, lead_prob: float = 0.1, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        """Store the per-lead drop probability ``lead_prob``."""
        super().__init__(keys, prob, allow_missing_keys)
        self.lead_prob = float(lead_prob)
        self._keep: np.ndarray | None = None

    def draw(self, first: torch.Tensor) -> None:
        """Draw which leads to keep (one kept at random when the draw drops them all)."""
        leads = _as_signal(first, "RandLeadDropoutd").shape[0]
        keep = self.R.rand(leads) >= self.lead_prob
        if not keep.any():
            keep[self.R.randint(leads)] = True
        self._keep = keep

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` ``(leads, T)`` with the dropped leads zeroed."""
        return img * torch.as_tensor(self._keep, dtype=img.dtype, device=img.device)[:, None]


LEAD_GROUP_MODES = ("mask", "select")


class RandLeadGroupd(_RandDictTransform):
    """Keep one randomly chosen lead group (CLOCS CMLC: views from different leads are positives).

    Args:
        keys: signal keys ``(leads, T)``.
        groups: ``{name: lead indices}``; default :data:`LEAD_GROUPS_12` (limb vs precordial).
        mode: ``"mask"`` zeroes the other leads (shape kept, so one encoder serves all groups);
            ``"select"`` returns only the group's leads (all groups must have the same size).
        prob: probability of applying (otherwise all leads are kept — only valid with ``"mask"``).
    """

    def __init__(self, keys: KeysCollection, groups: Mapping[str, Sequence[int]] | None = None, mode: str = "mask",
                 prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        """Check and store the groups and mode; see the class docstring."""
        super().__init__(keys, prob, allow_missing_keys)
        self.groups = {k: tuple(int(i) for i in v) for k, v in (groups or LEAD_GROUPS_12).items()}
        if mode not in LEAD_GROUP_MODES:
            raise ConfigError(f"unknown lead-group mode {mode!r}", where="RandLeadGroupd.mode",
                              fix=f"use one of {LEAD_GROUP_MODES}")
        if not self.groups:
            raise ConfigError("no lead groups given", where="RandLeadGroupd.groups",
                              fix="give e.g. {limb: [0, 1, 2, 3, 4, 5], precordial: [6, 7, 8, 9, 10, 11]}")
        if mode == "select" and (len({len(v) for v in self.groups.values()}) != 1 or prob < 1):
            raise ConfigError("mode 'select' needs groups of equal size and prob 1 (views must stack)",
                              where="RandLeadGroupd.mode", fix="use mode 'mask', or equal-sized groups with prob 1")
        self.mode = mode
        self._group: tuple[int, ...] = ()

    def draw(self, first: torch.Tensor) -> None:
        """Draw one group (uniformly, groups in name order).

        Raises:
            DataError: the group names a lead the first key's record does not have.
        """
        names = sorted(self.groups)
        self._group = self.groups[names[int(self.R.randint(len(names)))]]
        leads = _as_signal(first, "RandLeadGroupd").shape[0]
        if max(self._group) >= leads:
            raise DataError(f"lead group {self._group} needs {max(self._group) + 1} leads, the record has {leads}",
                            where="RandLeadGroupd", fix="set lead_groups to indices that exist in your records")

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """The drawn group's leads: the others zeroed (``mask``) or dropped (``select``)."""
        idx = torch.as_tensor(self._group, dtype=torch.long, device=img.device)
        if self.mode == "select":
            return img.index_select(0, idx)
        keep = torch.zeros(img.shape[0], dtype=img.dtype, device=img.device)
        keep[idx] = 1
        return img * keep[:, None]
