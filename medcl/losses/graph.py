"""Multi-label SupCon with ontology-weighted positives (label-graph contrastive learning)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean, nearest
from medcl.losses.supcon import SupConLoss

GRAPH_MODES = ("shortest_path", "adjacency")


def ontology_similarity(spec: Mapping[str, object], mode: str = "shortest_path") -> tuple[torch.Tensor, list[str]]:
    """Turn an ontology spec into a ``(K, K)`` class-similarity matrix with ones on the diagonal.

    Args:
        spec: ``{"classes": [name, ...], "edges": [[a, b, w], ...]}``; ``w`` in (0, 1] is how similar
            two directly linked classes are (default 1 when an edge has two entries). Edges are undirected.
        mode: ``"adjacency"``: ``S = I + W`` (only direct links); ``"shortest_path"``: ``S_ab`` = the
            largest product of edge weights along a path from a to b (a shortest path with edge length
            ``-log w``, Floyd–Warshall), 0 when unconnected.

    Returns:
        ``(S (K, K) float32, classes)``.

    Raises:
        ConfigError: unknown keys, classes or modes, weights outside (0, 1].
    """
    where = "GraphSupConLoss.similarity"
    if not isinstance(spec, Mapping) or "classes" not in spec:
        raise ConfigError("ontology spec must be a mapping with 'classes' and 'edges'", where=where,
                          fix="write similarity: {classes: [a, b, c], edges: [[a, b, 0.5], ...]}")
    unknown = set(spec) - {"classes", "edges"}
    if unknown:
        key = sorted(unknown)[0]
        close = nearest(key, ["classes", "edges"])
        raise ConfigError(f"unknown key {key!r} in ontology spec", where=where,
                          fix=f"did you mean {close[0]!r}?" if close else "use only 'classes' and 'edges'")
    if mode not in GRAPH_MODES:
        raise ConfigError(f"mode={mode!r} is unknown", where=where,
                          fix=f"{did_you_mean(mode, GRAPH_MODES)}use one of {', '.join(GRAPH_MODES)}")
    classes = [str(c) for c in spec["classes"]]  # type: ignore[union-attr]
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    length = torch.full((k, k), math.inf, dtype=torch.float64)
    length.fill_diagonal_(0.0)
    for edge in spec.get("edges", []) or []:  # type: ignore[union-attr]
        if isinstance(edge, str) or len(edge) not in (2, 3):
            raise ConfigError(f"edge {edge!r} is not [a, b] or [a, b, w]", where=where, fix="write edges as [a, b, w]")
        a, b = str(edge[0]), str(edge[1])
        for c in (a, b):
            if c not in index:
                raise ConfigError(f"edge {edge!r} names unknown class {c!r}", where=where,
                                  fix=f"{did_you_mean(c, classes)}add it to classes or fix the edge")
        w = float(edge[2]) if len(edge) == 3 else 1.0
        if not 0 < w <= 1:
            raise ConfigError(f"edge {edge!r} weight {w} is outside (0, 1]", where=where,
                              fix="use a similarity in (0, 1] for each edge")
        i, j = index[a], index[b]
        length[i, j] = length[j, i] = min(length[i, j].item(), -math.log(w))
    if mode == "adjacency":
        sim = torch.where(torch.isfinite(length), torch.exp(-length), torch.zeros_like(length))
    else:
        for m in range(k):  # Floyd–Warshall, K is the number of classes (small)
            length = torch.minimum(length, length[:, m:m + 1] + length[m:m + 1, :])
        sim = torch.exp(-length)  # exp(-inf) = 0 for unconnected classes
    return sim.float(), classes


def label_set_similarity(ya: torch.Tensor, yk: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """Soft-cosine similarity of multi-hot label sets under a class-similarity kernel.

    ``s(i, j) = y_i S y_j / sqrt((y_i S y_i)(y_j S y_j))`` (Sidorov et al. 2014): 1 for identical
    sets, plain cosine of the multi-hot vectors when ``S = I``, 0 when a sample has no label.

    Args:
        ya: ``(A, K)`` multi-hot (or soft) labels of the anchors.
        yk: ``(B, K)`` labels of the keys.
        sim: ``(K, K)`` class-similarity kernel ``S``.

    Returns:
        ``(A, B)`` similarities in [0, 1] for non-negative inputs.
    """
    sa = ya @ sim
    cross = sa @ yk.T
    na = (sa * ya).sum(1).clamp_min(0)
    nk = ((yk @ sim) * yk).sum(1).clamp_min(0)
    den = torch.sqrt(na[:, None] * nk[None, :])
    return torch.where(den > 0, cross / den.clamp_min(1e-12), torch.zeros_like(cross)).clamp(0, 1)


class GraphSupConLoss(SupConLoss):
    """Multi-label SupCon whose positive weights are ontology-aware label-set similarities.

    For multi-label data (ECG statements, fundus findings) two samples are "more positive" the closer
    their label sets are in a class ontology (MAR-ECG-style label-graph contrast): the weight of key
    ``j`` for anchor ``i`` is :func:`label_set_similarity` under the class-similarity matrix ``S``
    (other views of the anchor's own sample always weigh 1). The loss per anchor is the weighted
    SupCon "out" average ``-sum_j w_ij log p_ij / sum_j w_ij``; anchors whose weights are all zero are
    skipped.

    Args:
        temperature: softmax temperature.
        similarity: ``(K, K)`` class-similarity tensor/list, or an ontology spec
            ``{"classes": [...], "edges": [[a, b, w], ...]}`` (see :func:`ontology_similarity`);
            None means the identity (plain soft-cosine of label sets).
        graph_mode: how a spec is turned into ``S``: ``"shortest_path"`` or ``"adjacency"``.
        min_similarity: weights below this become 0 (not positives).
        base_temperature, contrast_mode, gather_distributed: as in :class:`SupConLoss`.

    Shapes:
        ``forward(features (N, V, D), labels (N, K) multi-hot) -> ()``.
    """

    def __init__(self, temperature: float = 0.1, similarity: object = None, graph_mode: str = "shortest_path",
                 min_similarity: float = 0.0, base_temperature: float | None = None, contrast_mode: str = "all",
                 gather_distributed: bool = False) -> None:
        """Build or check the class-similarity matrix ``S`` (kept as a non-persistent buffer)."""
        super().__init__(temperature, base_temperature, contrast_mode, gather_distributed)
        where = "GraphSupConLoss"
        self.classes: list[str] | None = None
        if isinstance(similarity, Mapping):
            sim, self.classes = ontology_similarity(similarity, graph_mode)
        elif similarity is None:
            sim = None
        else:
            sim = torch.as_tensor(similarity, dtype=torch.float32)
            if sim.dim() != 2 or sim.shape[0] != sim.shape[1] or bool((sim < 0).any()):
                raise ConfigError(f"similarity must be a non-negative (K, K) matrix, got shape {tuple(sim.shape)}",
                                  where=where, fix="pass a square class-similarity matrix or an ontology spec")
        self.register_buffer("similarity", sim, persistent=False)
        self.min_similarity = float(min_similarity)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Ontology-weighted multi-label SupCon loss of a batch.

        Args:
            features: ``(N, V, D)`` L2-normalised projections of ``V`` views.
            labels: ``(N, K)`` multi-hot labels (NaN entries count as absent).

        Returns:
            Scalar loss.

        Raises:
            DataError: labels that are not ``(N, K)`` with ``K`` matching the similarity matrix.
        """
        vb = self._views(features, labels, label_ndim=2)
        la, lk = vb.anchor_ids[0], vb.key_ids[0]
        if la is None or la.dim() != 2 or (self.similarity is not None and la.shape[1] != self.similarity.shape[0]):
            k = "K" if self.similarity is None else str(self.similarity.shape[0])
            raise DataError(f"labels must be multi-hot (N, {k}), got {None if la is None else tuple(labels.shape)}",
                            where="GraphSupConLoss", fix="pass batch['label'] of the multi-label task")
        dt = torch.promote_types(features.dtype, torch.float32)
        sim = (torch.eye(la.shape[1], device=features.device, dtype=dt) if self.similarity is None
               else self.similarity.to(features.device, dt))
        # NaN (unlabelled) entries count as absent labels: such rows only match their own views.
        w = label_set_similarity(torch.nan_to_num(la.to(dt)), torch.nan_to_num(lk.to(dt)), sim)
        w = torch.where(w >= self.min_similarity, w, torch.zeros_like(w))
        w = torch.where(vb.same_sample, torch.ones_like(w), w).masked_fill(vb.self_mask, 0.0)
        return self._finish(vb, w)
