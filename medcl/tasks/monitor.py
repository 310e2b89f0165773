"""Watching pretraining while it runs: an online kNN probe and collapse measures.

Every ``pretrain.probe_every_steps`` optimiser steps the encoder's features of the labelled training
samples (the kNN memory, at most ``pretrain.probe_max_samples``) and of the labelled *validation* patients
are extracted without augmentation; a weighted kNN (Wu et al. 2018) predicts the validation labels and
its macro AUROC is logged, with the effective rank (RankMe, Garrido et al. 2023) of the validation
features overall and per class — a collapsed encoder has an effective rank near 1, and a class whose
features have collapsed shows it even when the overall rank looks healthy. The encoder with the best
probe AUROC is kept (``encoder-best.pt``) so that the pretraining stage can hand it on.

Test patients are never touched here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcl.checkpoint_file import load_checkpoint
from medcl.metrics import classification_metrics
from medcl.tasks.classification import knn_predict
from medcl.tasks.segmentation import metric_name

log = logging.getLogger(__name__)


def effective_rank(features: np.ndarray | torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido, Balestriero, Najman, LeCun 2023): ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum s``.

    Args:
        features: ``(N, D)`` embeddings (not centred, as in the paper).
        eps: added to each ``p_k`` (the paper's epsilon) so that empty directions count as zero.

    Returns:
        A number in ``[1, min(N, D)]``; ``nan`` for fewer than two samples.
    """
    z = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        return float("nan")
    s = torch.linalg.svdvals(z)
    if float(s.sum()) <= 0:
        return 1.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _class_masks(y: np.ndarray, task: str, classes: list[str]) -> dict[str, np.ndarray]:
    if task == "multilabel":
        return {c: np.nan_to_num(y[:, k]) > 0.5 for k, c in enumerate(classes)}
    return {c: y == k for k, c in enumerate(classes)}


class OnlineProbe:
    """kNN probe + collapse measures on the validation patients, every ``every`` optimiser steps.

    Args:
        extract: ``loader -> (features (N, D), dataset indices (N,))`` with the *current* encoder
            (eval mode, no gradient).
        memory: loader of the labelled training samples (the kNN memory) and their labels by index.
        queries: loader of the labelled validation samples.
        labels: ``dataset index -> label`` (``(K,)`` multi-hot for multilabel).
        task, classes: the data's task and class names.
        every: probe every this many optimiser steps (and at the last step).
        save_best: ``(step, auroc) -> None``, called when the probe AUROC improves (keeps the encoder).
        k: neighbours of the kNN.
        best: the best AUROC seen before a resume (``-inf`` for a new run).
    """

    def __init__(self, extract: Callable[[Any], tuple[np.ndarray, np.ndarray]], memory: Any, queries: Any,
                 labels: dict[int, Any], task: str, classes: list[str], every: int,
                 save_best: Callable[[int, float], None], k: int = 20, best: float = -math.inf) -> None:
        """Keep the loaders, labels and settings; the probe starts with no history."""
        self.extract, self.memory, self.queries, self.labels = extract, memory, queries, labels
        self.task, self.classes, self.every, self.k = task, list(classes), max(1, int(every)), int(k)
        self.save_best = save_best
        self.best, self.best_step = best, None
        self.history: list[dict[str, float]] = []

    def _y(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(self.labels[int(i)], dtype=np.float64) for i in idx])

    def __call__(self, step: int) -> dict[str, float]:
        """Probe now; returns the metrics to log (``probe/knn_auroc``, ``probe/effective_rank``, ...)."""
        f_mem, i_mem = self.extract(self.memory)
        f_val, i_val = self.extract(self.queries)
        y_mem, y_val = self._y(i_mem), self._y(i_val)
        probs = knn_predict(f_mem, y_mem, f_val, k=self.k, task=self.task, num_classes=len(self.classes))
        auroc = float(classification_metrics(y_val, probs, self.task)["auroc"])
        out = {"probe/knn_auroc": auroc, "probe/effective_rank": effective_rank(f_val)}
        for name, mask in _class_masks(y_val, self.task, self.classes).items():
            if mask.sum() >= 2:
                out[f"probe/effective_rank/{metric_name(name)}"] = effective_rank(f_val[mask])
        if math.isfinite(auroc) and auroc > self.best:
            self.best, self.best_step = auroc, int(step)
            self.save_best(int(step), auroc)
        out["probe/best_knn_auroc"] = self.best if math.isfinite(self.best) else float("nan")
        self.history.append({"step": float(step), **out})
        log.info("probe at step %d: kNN macro AUROC %.3f on %d validation samples (best %.3f at step %s), "
                 "effective rank %.1f", step, auroc, len(i_val), self.best, self.best_step, out["probe/effective_rank"])
        return out


def best_record(path: Path) -> tuple[float, int | None]:
    """``(auroc, step)`` stored with an ``encoder-best.pt`` (``(-inf, None)`` when there is none)."""
    if not Path(path).is_file():
        return -math.inf, None
    state = load_checkpoint(path)
    return float(state.get("probe_auroc", -math.inf)), state.get("step")
