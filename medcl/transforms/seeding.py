"""Explicit seeding of random transforms.

MONAI random transforms each own a ``numpy.random.RandomState`` (``self.R``) that a global
``torch.manual_seed`` / ``np.random.seed`` does **not** touch, and every DataLoader worker gets a
copy of that state. medcl therefore re-seeds the transform chain *per sample* from
``(base seed, epoch, partition, index)``: the augmentation a sample receives is then a function of
the seed and the sample only, the same with 0, 2 or 16 workers and whatever order the workers
run in. The per-worker seeding in :func:`medcl.data.datasets.build_loader` only covers code that
draws from the global RNGs.
"""

from __future__ import annotations

import functools

import numpy as np

#: Seeds handed to ``RandomState`` must lie in ``[0, 2**32)``.
MAX_SEED = 2**32


def derive_seed(*parts: int) -> int:
    """Mix integers into one well-spread 32-bit seed (``numpy.random.SeedSequence``).

    Unlike ``seed + epoch + index`` this never maps two different tuples onto correlated
    streams (seed 1 / epoch 2 and seed 2 / epoch 1 differ).

    Args:
        *parts: non-negative integers, e.g. ``(seed, epoch, worker_id, rank)``.

    Returns:
        An int in ``[0, 2**32)``.
    """
    entropy = [int(p) % MAX_SEED for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def set_transform_seed(transform: object, seed: int) -> bool:
    """Seed every random transform inside ``transform`` (a MONAI ``Compose`` or ``Randomizable``).

    Exactly what ``transform.set_random_state(seed=seed)`` does — ``Compose`` draws a distinct child seed for
    each member, so two random transforms in one chain never share a stream — but each transform's
    ``RandomState`` is re-seeded in place instead of being built anew: MONAI builds a new
    ``numpy.random.RandomState`` (~80 µs) per transform per call, which, done for every sample, was the
    largest cost of the training input pipeline (~3 ms per 64×64 sample with two views). The random streams
    are identical (tested against ``set_random_state`` for every preset). Transforms whose own
    ``set_random_state`` does more (e.g. seeds an inner cropper) are seeded through it.

    Args:
        transform: the transform chain; anything without ``set_random_state`` is left alone.
        seed: 32-bit seed.

    Returns:
        ``True`` if the transform could be seeded.
    """
    if getattr(transform, "set_random_state", None) is None:
        return False
    _reseed(transform, int(seed) % MAX_SEED)
    return True


def _own_state(t: object, seed: int) -> np.random.RandomState:
    """Re-seed ``t``'s own ``RandomState`` in place (MONAI's class-level default is shared: never touch it)."""
    r = t.__dict__.get("R")
    if isinstance(r, np.random.RandomState):
        r.seed(seed)
    else:
        r = np.random.RandomState(seed)
        t.R = r  # type: ignore[attr-defined]
    return r


#: MONAI dictionary transforms whose ``set_random_state`` seeds itself and these inner array transforms with the
#: same seed (read in MONAI's source; the in-place path is checked against ``set_random_state`` by the tests)
_SAME_SEED_INNER: dict[str, tuple[str, ...]] = {
    "RandSpatialCropd": ("cropper",), "RandAffined": ("rand_affine",), "RandShiftIntensityd": ("shifter",),
    "RandBiasFieldd": ("rand_bias_field",), "RandAdjustContrastd": ("adjuster",),
    "RandGaussianNoised": ("rand_gaussian_noise",), "RandFlipd": (), "RandRotated": ("rand_rotate",),
    "RandScaleIntensityd": ("scaler",),
}


@functools.cache
def _plan(cls: type) -> tuple[str, tuple[str, ...]]:
    """How :func:`_reseed` seeds an instance of ``cls``: ``(kind, inner attributes)``, worked out once per class.

    ``kind``: ``"inner"`` (a class of :data:`_SAME_SEED_INNER`, or a subclass that keeps its ``set_random_state``
    such as :class:`~medcl.transforms.spatial.FastRandFlipd`: its own state and those attributes, one seed),
    ``"compose"`` / ``"views"`` (its own state, then a drawn seed per random child / for its augmentation),
    ``"own"`` (only its own state) or ``"call"`` (its own ``set_random_state`` does more: call it).
    """
    import monai.transforms as mt
    from monai.transforms import Compose, Randomizable

    from medcl.transforms.views import MultiViewd  # lazy: monai, like the line above

    own = cls.set_random_state  # type: ignore[attr-defined]
    for base in cls.__mro__:
        name = base.__name__
        if name in _SAME_SEED_INNER and getattr(mt, name, None) is base:
            if own is base.set_random_state:
                return "inner", _SAME_SEED_INNER[name]
            break
    if issubclass(cls, Compose) and own is Compose.set_random_state:
        return "compose", ()
    if issubclass(cls, MultiViewd) and own is MultiViewd.set_random_state:
        return "views", ()
    if own is Randomizable.set_random_state:
        return "own", ()
    return "call", ()


def _reseed(t: object, seed: int) -> None:
    from monai.transforms import Randomizable

    kind, inner = _plan(type(t))
    if kind == "inner":
        _own_state(t, seed)
        for attr in inner:
            sub = getattr(t, attr, None)
            if isinstance(sub, Randomizable):
                _reseed(sub, seed)
    elif kind == "compose":
        r = _own_state(t, seed)
        for child in t.transforms:  # type: ignore[attr-defined]
            if isinstance(child, Randomizable):
                _reseed(child, int(r.randint(MAX_SEED, dtype="uint32")))
    elif kind == "views":
        r = _own_state(t, seed)
        if getattr(t.aug, "set_random_state", None) is not None:  # type: ignore[attr-defined]
            _reseed(t.aug, int(r.randint(MAX_SEED, dtype="uint32")))  # type: ignore[attr-defined]
    elif kind == "own":
        _own_state(t, seed)
    else:
        t.set_random_state(seed=seed)  # type: ignore[attr-defined]
