"""Downstream classification: linear probe, kNN, label fractions and fine-tuning pieces.

Pure functions and small classes; the pipeline stage (data loading, feature extraction,
tracking) lives with the lead's orchestration and calls these.

* :func:`linear_probe` — standardised features → L2-regularised logistic regression whose C is
  chosen by cross-validation with folds split **by patient** (scikit-learn
  ``LogisticRegressionCV`` with explicit ``StratifiedGroupKFold`` / ``GroupKFold`` splits), or a
  torch head (:class:`TorchLinearHead`) for large sets.
* :func:`knn_predict` — weighted cosine kNN (Wu et al. 2018; Caron et al. 2021 "DINO").
* :func:`label_fraction_patients` — nested, patient-level, stratified label fractions.
* :func:`layerwise_lr_groups`, :class:`ClassifierModel`, :func:`loss_for_task`,
  :class:`SupervisedWrapper` — fine-tuning with layer-wise LR decay (Clark et al. 2020 "ELECTRA";
  Bao et al. 2022 "BEiT"); the wrapper's ``forward(batch) -> {"loss", "logits"}`` plugs into
  ``medcl.engine.loop.train_one_epoch``.

This module is the one import for downstream classification: the probe backends live in
:mod:`medcl.tasks.probes`, the fitted :class:`LinearModel` in :mod:`medcl.tasks.linear_model`, the
fine-tuning pieces in :mod:`medcl.tasks.finetune` and the label fractions in :mod:`medcl.tasks.fractions`,
and are re-exported here.

Label conventions (as ``medcl/README.md``): binary/multiclass/ordinal ``(N,)`` int with ``-1`` =
unlabelled; multilabel ``(N, K)`` float with NaN (or -1) = unlabelled. Binary models have one
output logit, so binary logits are ``(N,)`` and probabilities ``(N,)`` (positive class).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medcl.errors import ConfigError, DataError
from medcl.metrics.classification import check_task
from medcl.tasks.linear_model import LinearModel, _features, _labels
from medcl.tasks.probes import DEFAULT_CS, SklearnLinearProbe, TorchLinearHead, patient_cv_splits

log = logging.getLogger(__name__)


def num_outputs_for_task(task: str, num_classes: int) -> int:
    """Output logits a head needs: 1 for binary, ``num_classes`` (or labels) otherwise."""
    check_task(task)
    return 1 if task == "binary" else int(num_classes)


@dataclass
class ProbeResult:
    """Output of :func:`linear_probe`.

    Attributes:
        model: the fitted :class:`LinearModel` (``predict_logits`` / ``predict_proba`` / ``to_dict``).
        logits: test logits, ``(N,)`` binary or ``(N, K)`` (None without test features).
        probs: test probabilities, same shapes.
        C: chosen regularisation (per label for multilabel).
        cv_splits: the patient-grouped ``(train_idx, val_idx)`` folds used to choose C.
        notes: anything a reader of the results should know.
    """

    model: LinearModel
    logits: np.ndarray | None
    probs: np.ndarray | None
    C: Any
    cv_splits: list
    notes: list[str]


PROBE_BACKENDS = ("sklearn", "torch")


def linear_probe(
    train_feats,
    y_train,
    test_feats=None,
    *,
    task: str,
    groups_train=None,
    cv: int = 5,
    Cs: Sequence[float] = DEFAULT_CS,
    backend: str = "sklearn",
    num_classes: int | None = None,
    max_iter: int = 1000,
    seed: int = 0,
    **torch_kwargs,
) -> ProbeResult:
    """Linear evaluation of frozen features (Kolesnikov et al. 2019; Chen et al. 2020 "SimCLR").

    Args:
        train_feats: ``(N, D)`` training features.
        y_train: labels (``(N,)`` or ``(N, K)`` multilabel; -1/NaN = unlabelled, ignored).
        test_feats: ``(M, D)`` features to predict, or None.
        task: ``"binary"``, ``"multiclass"``, ``"ordinal"`` (fitted as multiclass) or ``"multilabel"``
            (one model per label).
        groups_train: ``(N,)`` patient id per training sample — CV folds are split by patient.
        cv: number of folds used to choose C (sklearn backend).
        Cs: C grid (sklearn backend).
        backend: ``"sklearn"`` (LogisticRegressionCV) or ``"torch"`` (:class:`TorchLinearHead`,
            extra keyword arguments go to it).
        num_classes: K for multiclass/ordinal when a class may be missing from training.
        max_iter: L-BFGS iterations of each logistic regression (sklearn backend).
        seed: seed of the CV fold split (sklearn) or of the weight init and batch order (torch).
        **torch_kwargs: options of :class:`TorchLinearHead` (``weight_decay``, ``optimizer``, ``epochs``,
            ``lr``, ``batch_size``, ``device``); an error with the sklearn backend.

    Returns:
        :class:`ProbeResult`.

    Raises:
        ConfigError: unknown backend, or torch options given to the sklearn backend.
        DataError: features or labels that are not numeric, finite or of matching length.
    """
    check_task(task)
    if backend == "sklearn":
        if torch_kwargs:
            raise ConfigError(f"unexpected options {sorted(torch_kwargs)} for the sklearn probe",
                              where="classify.probe", fix="remove them or use backend 'torch'")
        est: SklearnLinearProbe | TorchLinearHead = SklearnLinearProbe(
            task, cv=cv, Cs=Cs, max_iter=max_iter, num_classes=num_classes, seed=seed)
    elif backend == "torch":
        est = TorchLinearHead(task, num_classes=num_classes, seed=seed, **torch_kwargs)
    else:
        raise ConfigError(f"unknown probe backend {backend!r}", where="classify.backend",
                          fix="use 'sklearn' or 'torch'")
    model = est.fit(train_feats, y_train, groups_train)
    logits = probs = None
    if test_feats is not None:
        logits = model.predict_logits(test_feats)
        probs = model.predict_proba(test_feats)
    return ProbeResult(model, logits, probs, model.C, list(est.cv_splits), list(model.notes))


# ----------------------------------------------------------------------------- kNN


def knn_predict(
    train_feats,
    y_train,
    test_feats,
    k: int = 20,
    temperature: float = 0.07,
    task: str = "multiclass",
    *,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Weighted kNN on cosine similarity (Wu et al. 2018; DINO, Caron et al. 2021).

    Each of the ``k`` most similar training samples votes for its label with weight
    ``exp(cos / temperature)``; the votes are normalised to probabilities.

    Args:
        train_feats: ``(N, D)``.
        y_train: ``(N,)`` int (``-1`` ignored) or ``(N, K)`` multilabel (NaN or -1 ignored per label).
        test_feats: ``(M, D)``.
        k: neighbours (capped at the number of labelled training samples).
        temperature: vote temperature.
        task: task kind.
        num_classes: K for single-label tasks (default ``max(y) + 1``).
        batch_size: test samples compared with the training set at once (bounds the ``(b, N)``
            similarity matrix).

    Returns:
        ``(M,)`` positive-class probability (binary) or ``(M, K)`` probabilities.
    """
    check_task(task)
    xtr = _features(train_feats, "train_feats")
    xte = _features(test_feats, "test_feats")
    yy = _labels(y_train, task, xtr.shape[0])
    if task == "multilabel":
        lab = np.ones(xtr.shape[0], dtype=bool)
        targets = torch.as_tensor(np.nan_to_num(yy, nan=0.0))
        known = torch.as_tensor(np.isfinite(yy).astype(np.float64))
    else:
        lab = np.isfinite(yy)
        kc = int(num_classes or (np.nanmax(yy) + 1)) if task != "binary" else 2
        targets = F.one_hot(torch.as_tensor(yy[lab].astype(np.int64)), kc).double()
        known = torch.ones_like(targets)
    if lab.sum() == 0:
        raise DataError("no labelled training sample for kNN", where="y_train", fix="label some samples")
    tr = F.normalize(torch.as_tensor(xtr[lab]), dim=1)
    te = F.normalize(torch.as_tensor(xte), dim=1)
    kk = min(int(k), tr.shape[0])
    out = []
    for i in range(0, te.shape[0], batch_size):
        sim = te[i : i + batch_size] @ tr.T  # (b, N)
        top, idx = sim.topk(kk, dim=1)
        w = torch.exp((top - top[:, :1]) / temperature)  # shift by the row max: same ratios, no overflow
        votes = (w[..., None] * targets[idx] * known[idx]).sum(1)
        norm = (w[..., None] * known[idx]).sum(1)
        p = votes / norm.clamp_min(1e-300)
        p = torch.where(norm > 0, p, torch.full_like(p, 0.5 if task == "multilabel" else 1.0 / p.shape[1]))
        out.append(p)
    probs = torch.cat(out).numpy()
    return probs[:, 1] if task == "binary" else probs


# Re-exported so ``medcl.tasks.classification`` stays the one import for downstream classification.
from medcl.tasks.finetune import (  # noqa: E402
    ClassifierModel,
    SupervisedWrapper,
    TaskLoss,
    layer_depth,
    layerwise_lr_groups,
    loss_for_task,
)
from medcl.tasks.fractions import label_fraction_patients  # noqa: E402

__all__ = [
    "DEFAULT_CS", "ClassifierModel", "LinearModel", "ProbeResult", "SklearnLinearProbe", "SupervisedWrapper",
    "TaskLoss", "TorchLinearHead", "knn_predict", "label_fraction_patients", "layer_depth", "layerwise_lr_groups",
    "linear_probe", "loss_for_task", "num_outputs_for_task", "patient_cv_splits",
]
