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
