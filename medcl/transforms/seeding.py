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

    ``Compose.set_random_state`` draws a distinct child seed for each member, so two random
    transforms in one chain never share a stream.

    Args:
        transform: the transform chain; anything without ``set_random_state`` is left alone.
        seed: 32-bit seed.

    Returns:
        ``True`` if the transform could be seeded.
    """
    setter = getattr(transform, "set_random_state", None)
    if setter is None:
        return False
    setter(seed=int(seed) % MAX_SEED)
    return True
