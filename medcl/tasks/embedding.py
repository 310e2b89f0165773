"""2-D maps of encoder features for the report (t-SNE, PCA when there are too few samples).

t-SNE: van der Maaten & Hinton, JMLR 2008 (scikit-learn's implementation, PCA-initialised and
after a PCA to at most 50 dimensions, as the paper recommends).
"""

from __future__ import annotations

import numpy as np

#: below this many samples t-SNE is meaningless: PCA is used instead
MIN_TSNE_SAMPLES = 10
#: up to this many samples t-SNE uses exact gradients
EXACT_TSNE_MAX = 300


def reduce_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Project features to 2-D.

    Args:
        features: ``(N, D)`` encoder features.
        seed: random state of t-SNE.

    Returns:
        ``(N, 2)`` float32 coordinates and the method's name (``"t-SNE"`` or ``"PCA"``).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    x = np.nan_to_num(x - x.mean(0))
    n = x.shape[0]
    if n < 3:
        return np.zeros((n, 2), np.float32), "none"
    k = min(50, n - 1, x.shape[1])
    x = PCA(n_components=k, random_state=seed).fit_transform(x) if k >= 2 else np.pad(x, ((0, 0), (0, 2 - k)))
    if n < MIN_TSNE_SAMPLES:
        return x[:, :2].astype(np.float32), "PCA"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    # exact gradients are faster than Barnes-Hut for small n (and exact); Barnes-Hut scales
    method = "exact" if n <= EXACT_TSNE_MAX else "barnes_hut"
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method).fit_transform(x)
    return xy.astype(np.float32), "t-SNE"
