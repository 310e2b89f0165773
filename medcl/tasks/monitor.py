"""Watching pretraining while it runs: an online probe, collapse measures, and which encoder to hand on.

Every ``pretrain.probe_every_steps`` optimiser steps the encoder's features of the labelled training
samples (the probe's memory, at most :data:`medcl.stages.pretrain.PROBE_MEMORY`) and of the labelled
*validation* patients are extracted without augmentation. A probe fitted on the training features predicts
the validation labels and its macro AUROC is logged with a patient-level bootstrap standard error:

* ``linear`` (default) — the linear probe of the classify stage (:func:`medcl.tasks.classification.linear_probe`,
  L2 logistic regression, C by patient-grouped CV), so the online figure tracks the figure reported later;
* ``knn`` — a weighted cosine kNN (Wu et al. 2018), cheaper, always logged as ``probe/knn_auroc`` too.

The effective rank (RankMe, Garrido et al. 2023) of the validation features is logged overall and per class:
a collapsed encoder has an effective rank near 1, and a class whose features have collapsed shows it even when
the overall rank looks healthy.

**Which encoder is kept** (``encoder-best.pt``, handed on by ``pretrain.select: best_probe``): the *latest*
probed encoder whose AUROC is within one bootstrap standard error of the best so far. This is the
one-standard-error rule (Breiman, Friedman, Olshen & Stone 1984, CART §3.4.3; Hastie, Tibshirani & Friedman,
ESL §7.10), which there prefers the simplest model within one SE of the best; here it prefers the end of the
configured budget, and an earlier encoder wins only by more than the probe's noise. Computed online it gives
exactly that choice: whenever the best improves, the encoder is saved, and a later one within one SE of it
replaces it. A validation split of a few patients makes a noisy probe; on the histo demo a plain arg-max kept
an early peak of a kNN probe whose later values fell within its noise (``benchmarks/README.md``).

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
from medcl.metrics import bootstrap_se, classification_metrics
from medcl.tasks.classification import knn_predict, linear_probe
from medcl.tasks.segmentation import metric_name

log = logging.getLogger(__name__)

#: the online probes; the one configured (``pretrain.probe_protocol``) selects the encoder handed on
PROTOCOLS = ("linear", "knn")


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
    """Online probe + collapse measures on the validation patients, every ``every`` optimiser steps.

    Args:
        extract: ``loader -> (features (N, D), dataset indices (N,))`` with the *current* encoder
            (eval mode, no gradient).
        memory: loader of the labelled training samples (the probe's training set).
        queries: loader of the labelled validation samples.
        labels: ``dataset index -> label`` (``(K,)`` multi-hot for multilabel).
        task, classes: the data's task and class names.
        every: probe every this many optimiser steps (and at the last step).
        save_best: ``(step, record) -> None``, called when the encoder of this step is the one to keep (the
            one-SE rule, module docstring); ``record`` is :meth:`record` (the kept AUROC, the best, its SE).
        k: neighbours of the kNN.
        protocol: ``"linear"`` or ``"knn"``, the probe whose AUROC selects the encoder.
        patients: ``dataset index -> patient`` (the bootstrap resamples validation *patients*, and the linear
            probe's CV folds are split by patient); ``None``: every sample its own patient.
        n_boot: bootstrap resamples of the standard error.
        seed: seed of the bootstrap and of the linear probe's folds.
        resume: the :meth:`record` stored with the kept encoder before a resume (``None`` for a new run).
    """

    def __init__(self, extract: Callable[[Any], tuple[np.ndarray, np.ndarray]], memory: Any, queries: Any,
                 labels: dict[int, Any], task: str, classes: list[str], every: int,
                 save_best: Callable[[int, dict[str, float]], None], k: int = 20, protocol: str = "linear",
                 patients: dict[int, Any] | None = None, n_boot: int = 200, seed: int = 0,
                 resume: dict[str, Any] | None = None) -> None:
        """Keep the loaders, labels and settings; the probe starts with no history (or a resumed record)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown online probe protocol {protocol!r}; use one of {PROTOCOLS}")
        self.extract, self.memory, self.queries, self.labels = extract, memory, queries, labels
        self.task, self.classes, self.every, self.k = task, list(classes), max(1, int(every)), int(k)
        self.protocol, self.patients, self.n_boot, self.seed = protocol, patients, int(n_boot), int(seed)
        self.save_best = save_best
        r = resume or {}
        self.best = float(r.get("probe_best_auroc", -math.inf))
        self.best_se = float(r.get("probe_best_se", 0.0))
        self.best_step = r.get("probe_best_step")
        self.kept = float(r.get("probe_auroc", -math.inf))
        self.kept_step = r.get("step")
        self.history: list[dict[str, float]] = []

    def _y(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(self.labels[int(i)], dtype=np.float64) for i in idx])

    def _groups(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray([self.patients[int(i)] if self.patients else int(i) for i in idx])

    def _auroc(self, y: np.ndarray, probs: np.ndarray) -> float:
        return float(classification_metrics(y, probs, self.task)["auroc"])

    def standard_error(self, y: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> float:
        """Patient-level bootstrap standard error of the macro AUROC (``nan`` when no resample is valid)."""
        return bootstrap_se(self._auroc, y, probs, groups, n_boot=self.n_boot, seed=self.seed)

    def record(self) -> dict[str, Any]:
        """What a kept encoder stores so that a resumed run goes on choosing as this one would."""
        return {"probe_auroc": self.kept, "step": self.kept_step, "probe_best_auroc": self.best,
                "probe_best_se": self.best_se, "probe_best_step": self.best_step, "probe_protocol": self.protocol}

    def consider(self, step: int, auroc: float, se: float) -> bool:
        """Take one probe result into the one-SE rule; ``True`` when this step's encoder is now the one kept.

        The best so far (and its SE) is updated first; the encoder is kept when its AUROC is within one SE of that
        best, so the kept one is always the latest such encoder. A NaN AUROC changes nothing; a NaN SE counts as 0.
        """
        if not math.isfinite(auroc):
            return False
        if auroc > self.best:
            self.best, self.best_se, self.best_step = auroc, se if math.isfinite(se) else 0.0, int(step)
        if auroc < self.best - self.best_se:
            return False
        self.kept, self.kept_step = auroc, int(step)
        return True

    def __call__(self, step: int) -> dict[str, float]:
        """Probe now; returns the metrics to log (``probe/auroc``, ``probe/auroc_se``, ``probe/knn_auroc``, ...)."""
        f_mem, i_mem = self.extract(self.memory)
        f_val, i_val = self.extract(self.queries)
        y_mem, y_val, g_val = self._y(i_mem), self._y(i_val), self._groups(i_val)
        nc = len(self.classes)
        knn = knn_predict(f_mem, y_mem, f_val, k=self.k, task=self.task, num_classes=nc)
        out = {"probe/knn_auroc": self._auroc(y_val, knn)}
        probs = knn
        if self.protocol == "linear":
            yl = y_mem if self.task == "multilabel" else y_mem.astype(np.int64)
            probs = linear_probe(f_mem, yl, f_val, task=self.task, groups_train=self._groups(i_mem),
                                 num_classes=nc, seed=self.seed).probs
            out["probe/linear_auroc"] = self._auroc(y_val, probs)
        auroc = out[f"probe/{self.protocol}_auroc"]
        se = self.standard_error(y_val, probs, g_val)
        out.update({"probe/auroc": auroc, "probe/auroc_se": se, "probe/effective_rank": effective_rank(f_val)})
        for name, mask in _class_masks(y_val, self.task, self.classes).items():
            if mask.sum() >= 2:
                out[f"probe/effective_rank/{metric_name(name)}"] = effective_rank(f_val[mask])
        if self.consider(step, auroc, se):
            self.save_best(int(step), self.record())
        out["probe/best_auroc"] = self.best if math.isfinite(self.best) else float("nan")
        self.history.append({"step": float(step), **out})
        log.info("probe at step %d: %s macro AUROC %.3f ± %.3f (SE) on %d validation samples of %d patients "
                 "(kNN %.3f); best %.3f at step %s, kept: step %s (the latest within one SE of the best); "
                 "effective rank %.1f", step, self.protocol, auroc, se, len(i_val), len(np.unique(g_val)),
                 out["probe/knn_auroc"], self.best, self.best_step, self.kept_step, out["probe/effective_rank"])
        return out


def best_record(path: Path) -> dict[str, Any] | None:
    """The :meth:`OnlineProbe.record` stored with an ``encoder-best.pt`` (``None`` when there is none)."""
    if not Path(path).is_file():
        return None
    state = load_checkpoint(path)
    auroc, step = float(state.get("probe_auroc", -math.inf)), state.get("step")
    # a file written before the one-SE rule holds the arg-max of a kNN probe: it is its own best, with no SE
    return {"probe_auroc": auroc, "step": step, "probe_best_auroc": float(state.get("probe_best_auroc", auroc)),
            "probe_best_se": float(state.get("probe_best_se", 0.0)), "probe_best_step": state.get("probe_best_step", step),
            "probe_protocol": state.get("probe_protocol", "knn")}
