"""Synthetic test images shared by the transform tests."""

from __future__ import annotations

import numpy as np


class ReaderSample:
    """What a medcl reader returns: ``.array`` and ``.meta``."""

    def __init__(self, array: np.ndarray, meta: dict) -> None:
        self.array, self.meta = array, meta


def fundus_array(h, w, cy, cx, r, rng):
    """Bright textured disc on a dark (below threshold) surround, 0..255."""
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    img = rng.uniform(0, 5, (3, h, w))  # dark surround: < 0.04 * 255
    img[:, inside] = rng.uniform(60, 220, (3, int(inside.sum())))
    return img
