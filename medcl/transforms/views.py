"""Multi-view generation for contrastive pretraining.

:class:`MultiViewd` applies ``V`` independent draws of a random augmentation chain to the same
loaded (and cached) sample and stacks them into ``"views"`` ``(V, C, *spatial)``, keeping
``"patient"``, ``"label"``, ``"index"`` and every other entry, so patient-aware positives
(SupCon-style, Khosla et al. 2020; CLOCS, Kiyasseh et al. 2021) can be formed later in the batch.
SimCLR (Chen et al., ICML 2020) uses ``V = 2``; multi-crop methods use more.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import MAX_SEED

from medcl.errors import ConfigError, DataError
from medcl.transforms.compose import PlainCompose
from medcl.transforms.signal import LEAD_GROUPS_12, crop_or_pad_time


class MultiViewd(Randomizable, MapTransform):
    """``V`` random augmentations of one sample, stacked along a new view axis.

    Args:
        aug: random dict transform (usually a MONAI ``Compose``) producing fixed-size arrays.
        views: number of views ``V >= 1``.
        keys: keys to augment; ``keys[0]`` goes to ``out_key``, further keys to ``f"{key}_views"``.
        out_key: output key for ``keys[0]``.
        keep_source: keep the un-augmented source arrays (default: dropped to save memory).

    Returns (per call):
        the input dict with ``out_key``: ``(V, C, *spatial)`` float tensor.

    Raises:
        DataError: the augmentation produced views of different shapes.
    """

    def __init__(self, aug: Callable[[dict], dict], views: int = 2, keys: KeysCollection = ("image",),
                 out_key: str = "views", keep_source: bool = False, allow_missing_keys: bool = False) -> None:
        """Set up the transform; see the class docstring (``allow_missing_keys`` as in MONAI)."""
        MapTransform.__init__(self, keys, allow_missing_keys)
        if int(views) < 1:
            raise ConfigError(f"views must be >= 1, got {views}", where="transforms.views",
                              fix="use 2 for SimCLR-style pretraining")
        self.aug, self.views, self.out_key, self.keep_source = aug, int(views), out_key, bool(keep_source)

    def set_random_state(self, seed: int | None = None, state: Any = None) -> MultiViewd:
        """Seed this transform, then ``aug`` with a seed drawn from it (so one seed fixes every view).

        Returns:
            ``self``.
        """
        super().set_random_state(seed=seed, state=state)
        inner = getattr(self.aug, "set_random_state", None)
        if inner is not None:
            inner(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw here: each view draws its own parameters inside ``aug``."""

    def _out(self, i: int, key: Hashable) -> Hashable:
        """Output key of the ``i``-th augmented key."""
        return self.out_key if i == 0 else f"{key}_views"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Augment ``data`` ``V`` times and stack the views; ``data`` itself is never changed.

        Returns:
            A new dict: ``out_key`` ``(V, C, *spatial)`` (and ``f"{key}_views"`` for further keys),
            the other entries as they were, the sources dropped unless ``keep_source``.
        """
        d = dict(data)
        keys = list(self.key_iterator(d))
        per_view: list[dict] = []
        plain = isinstance(self.aug, PlainCompose)  # it drops metadata anyway: clone plain tensors (cheaper)
        for _ in range(self.views):
            src = {k: v for k, v in d.items()}
            for k in keys:  # never let one view's in-place op leak into the next, nor into the (cached) input
                v = d[k].as_tensor() if plain and isinstance(d[k], MetaTensor) else d[k]
                src[k] = v.clone() if isinstance(v, torch.Tensor) else v
            per_view.append(self.aug(src))
        return self._stack(d, keys, per_view)

    def _stack(self, d: dict[Hashable, Any], keys: list[Hashable], per_view: list[dict]) -> dict[Hashable, Any]:
        """``d`` with each key's views stacked ``(V, C, *spatial)`` under its output key (the source dropped)."""
        for i, k in enumerate(keys):
            arrays = [v[k].as_tensor() if isinstance(v[k], MetaTensor) else torch.as_tensor(v[k]) for v in per_view]
            shapes = {tuple(a.shape) for a in arrays}
            if len(shapes) > 1:
                raise DataError(f"views of {k!r} have different shapes {sorted(shapes)}", where="MultiViewd",
                                fix="end the augmentation with a fixed-size crop/pad (spatial_size)")
            d[self._out(i, k)] = torch.stack(arrays)
            if not self.keep_source:
                d.pop(k, None)
        return d


#: how the views of an ECG record are cut (``transforms.view_mode`` of the ``ecg`` preset)
ECG_VIEW_MODES: tuple[str, ...] = ("random", "cmsc", "cmlc", "cmsmlc")


class ClocsViewsd(MultiViewd):
    """``V`` views of one ECG record as CLOCS cuts them (Kiyasseh, Zhu & Clifton, ICML 2021).

    * ``"cmsc"`` (Contrastive Multi-Segment Coding): ``V`` temporally adjacent, non-overlapping windows of
      ``length`` samples from one random start ``s ~ U{0, ..., T - V * length}``: view ``v`` is
      ``x[:, s + v * length : s + (v + 1) * length]``.
    * ``"cmlc"`` (Contrastive Multi-Lead Coding): ``V`` views of the same random window; view ``v`` keeps lead group
      ``v`` (groups in name order, cycled), the other leads zeroed.
    * ``"cmsmlc"``: both — adjacent windows, view ``v`` with lead group ``v``.

    Each view then goes through ``aug`` (the preset's per-view intensity augmentations, which may do nothing).
    A record shorter than the span is zero-padded at the end (as the random window of the ``random`` mode).

    Differs from the paper: CLOCS feeds each lead to the network as its own single-lead input; here a 12-lead
    encoder sees the view's lead group with the other leads zeroed (so one encoder serves every group), and the
    default groups are limb vs precordial leads (:data:`~medcl.transforms.signal.LEAD_GROUPS_12`).

    Args:
        aug: per-view augmentation applied after cutting.
        views: ``V``.
        keys: signal keys ``(leads, T)``.
        length: window length in samples.
        mode: ``"cmsc"``, ``"cmlc"`` or ``"cmsmlc"``.
        groups: lead groups ``{name: lead indices}`` (``cmlc`` / ``cmsmlc``); default limb vs precordial.
    """

    def __init__(self, aug: Callable[[dict], dict], views: int, keys: KeysCollection, length: int, mode: str,
                 groups: Mapping[str, Any] | None = None, out_key: str = "views") -> None:
        """Check the mode and the groups; see the class docstring."""
        super().__init__(aug, views=views, keys=keys, out_key=out_key)
        if mode not in ECG_VIEW_MODES[1:]:
            raise ConfigError(f"unknown CLOCS view mode {mode!r}", where="transforms.view_mode",
                              fix=f"use one of {', '.join(ECG_VIEW_MODES)}")
        self.length, self.mode = int(length), mode
        self.groups = [tuple(int(i) for i in g) for _, g in sorted((groups or LEAD_GROUPS_12).items())]
        if mode != "cmsc" and len(self.groups) < 2:
            raise ConfigError(f"{mode} needs at least 2 lead groups, got {len(self.groups)}",
                              where="transforms.lead_groups", fix="give e.g. {limb: [0, 1, 2, 3, 4, 5], "
                              "precordial: [6, 7, 8, 9, 10, 11]}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Cut the views (one random start for the record), augment each and stack them ``(V, leads, length)``."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        signals = {k: (d[k].as_tensor() if isinstance(d[k], MetaTensor) else torch.as_tensor(d[k])) for k in keys}
        first = signals[keys[0]]
        if first.ndim != 2:
            raise DataError(f"CLOCS views need a signal (leads, T), got shape {tuple(first.shape)}",
                            where="ClocsViewsd", fix="use view_mode random for non-ECG data")
        segments = self.mode in ("cmsc", "cmsmlc")
        span = self.length * (self.views if segments else 1)
        start = int(self.R.randint(0, max(first.shape[-1] - span, 0) + 1))
        per_view: list[dict] = []
        for v in range(self.views):
            src = dict(d)
            for k, x in signals.items():
                seg = crop_or_pad_time(x, start + (v * self.length if segments else 0), self.length)
                if self.mode != "cmsc":
                    group = self.groups[v % len(self.groups)]
                    if max(group) >= seg.shape[0]:
                        raise DataError(f"lead group {group} needs {max(group) + 1} leads, the record has "
                                        f"{seg.shape[0]}", where="ClocsViewsd",
                                        fix="set transforms.lead_groups to indices that exist in your records")
                    keep = torch.zeros(seg.shape[0], dtype=seg.dtype)
                    keep[list(group)] = 1
                    seg = seg * keep[:, None]
                src[k] = seg.clone()
            per_view.append(self.aug(src))
        return self._stack(d, keys, per_view)


def is_spatial(transform: Any) -> bool:
    """Whether a random transform moves pixels (crop, pad, flip, rotation, affine, zoom …), not their values.

    MONAI's ``spatial`` and ``croppad`` transforms are, and so are their subclasses (medcl's fast flips and crop),
    and any transform with ``spatial = True``.
    """
    if getattr(transform, "spatial", None) is not None:
        return bool(transform.spatial)
    return any(c.__module__.startswith(("monai.transforms.spatial", "monai.transforms.croppad"))
               for c in type(transform).__mro__)


class AlignedViewsd(MultiViewd):
    """``V`` views that share one draw of the geometric augmentations and differ in the intensity ones.

    The spatial part (random crop, flips, affine, ... — :func:`is_spatial`) runs **once** per sample; the intensity
    part (gain, gamma, bias field, noise, ...) then runs ``V`` times, so location ``m`` of every view shows the
    same anatomy: what dense (location-level) contrast needs (Chaitanya et al. 2020 use such views for their
    local loss).

    Args:
        spatial: the geometric random transforms, in their chain order.
        intensity: the per-view part (ending with the final type conversion).
        views, keys, out_key: as :class:`MultiViewd`.
    """

    def __init__(self, spatial: Callable[[dict], dict], intensity: Callable[[dict], dict], views: int = 2,
                 keys: KeysCollection = ("image",), out_key: str = "views") -> None:
        """Keep both parts; see the class docstring."""
        super().__init__(intensity, views=views, keys=keys, out_key=out_key)
        self.spatial_part = spatial

    def set_random_state(self, seed: int | None = None, state: Any = None) -> AlignedViewsd:
        """Seed this transform, the intensity part (as :class:`MultiViewd`) and the spatial part.

        Returns:
            ``self``.
        """
        super().set_random_state(seed=seed, state=state)
        inner = getattr(self.spatial_part, "set_random_state", None)
        if inner is not None:
            inner(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """One geometric draw, then ``V`` intensity draws, stacked ``(V, C, *spatial)``."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        src = dict(d)
        for k in keys:  # the (cached) input is never changed
            v = d[k].as_tensor() if isinstance(d[k], MetaTensor) else d[k]
            src[k] = v.clone() if isinstance(v, torch.Tensor) else v
        moved = self.spatial_part(src)
        per_view = []
        for _ in range(self.views):
            view = dict(moved)
            for k in keys:
                v = moved[k].as_tensor() if isinstance(moved[k], MetaTensor) else moved[k]
                view[k] = v.clone() if isinstance(v, torch.Tensor) else v
            per_view.append(self.aug(view))
        return self._stack(d, keys, per_view)
