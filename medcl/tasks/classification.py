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

Label conventions (as ``medcl/README.md``): binary/multiclass/ordinal ``(N,)`` int with ``-1`` =
unlabelled; multilabel ``(N, K)`` float with NaN (or -1) = unlabelled. Binary models have one
output logit, so binary logits are ``(N,)`` and probabilities ``(N,)`` (positive class).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.metrics.classification import check_task

log = logging.getLogger(__name__)

#: default grid of inverse regularisation strengths (features are standardised first).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))

_ABSENT_LOGIT = -1.0e4  # logit given to a class never seen in training (probability ~0)


def num_outputs_for_task(task: str, num_classes: int) -> int:
    """Output logits a head needs: 1 for binary, ``num_classes`` (or labels) otherwise."""
    check_task(task)
    return 1 if task == "binary" else int(num_classes)


# ----------------------------------------------------------------------------- input handling


def _np(x, name: str, dtype=np.float64) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} is not numeric ({exc})", where=name, fix="pass a numeric array") from exc


def _features(x, name: str) -> np.ndarray:
    f = _np(x, name)
    if f.ndim != 2:
        raise DataError(f"{name} must be (N, D), got {f.shape}", where=name,
                        fix="flatten or pool the encoder output to one vector per sample")
    if not np.all(np.isfinite(f)):
        raise DataError(f"{name} contains NaN or infinite values", where=name,
                        fix="check the encoder (a diverged checkpoint gives NaN features)")
    return f


def _labels(y, task: str, n: int) -> np.ndarray:
    """Labels as float array: (N,) with NaN for unlabelled, or (N, K) multilabel with NaN."""
    arr = _np(y, "y").copy()
    if arr.shape[0] != n:
        raise DataError(f"{arr.shape[0]} labels for {n} feature rows", where="y",
                        fix="pass labels and features of the same samples in the same order")
    arr[arr < 0] = np.nan
    if task == "multilabel":
        if arr.ndim != 2:
            raise DataError(f"multilabel labels must be (N, K), got {arr.shape}", where="y",
                            fix="pass one 0/1 column per label")
        return arr
    arr = arr.reshape(-1)
    ok = np.isfinite(arr)
    if np.any(arr[ok] != np.round(arr[ok])):
        raise DataError(f"{task} labels must be integers", where="y", fix="encode classes as 0..K-1")
    if task == "binary" and np.any(~np.isin(arr[ok], (0, 1))):
        raise DataError("binary labels must be 0 or 1", where="y", fix="encode the positive class as 1")
    return arr


# ----------------------------------------------------------------------------- linear models


@dataclass
class LinearModel:
    """A fitted linear head on standardised features: ``logits = ((x - mean) / std) @ coef.T + intercept``.

    Attributes:
        task: task kind.
        mean, std: ``(D,)`` standardisation fitted on the training features.
        coef: ``(K_out, D)``; ``K_out`` = 1 for binary, classes for multiclass/ordinal, labels for multilabel.
        intercept: ``(K_out,)``.
        C: regularisation chosen (one per output for multilabel), or weight decay for the torch head.
    """

    task: str
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    C: Any = None
    notes: list[str] = field(default_factory=list)

    def predict_logits(self, feats) -> np.ndarray:
        """``(N,)`` for binary, ``(N, K_out)`` otherwise."""
        x = (_features(feats, "feats") - self.mean) / self.std
        z = x @ self.coef.T + self.intercept
        return z[:, 0] if self.task == "binary" else z

    def predict_proba(self, feats) -> np.ndarray:
        """Softmax (multiclass/ordinal) or sigmoid (binary ``(N,)``, multilabel ``(N, K)``)."""
        z = torch.as_tensor(self.predict_logits(feats))
        if self.task in ("multiclass", "ordinal"):
            return torch.softmax(z, dim=1).numpy()
        return torch.sigmoid(z).numpy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (lists)."""
        c = self.C.tolist() if isinstance(self.C, np.ndarray) else self.C
        return {"task": self.task, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "C": c}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearModel:
        return cls(task=d["task"], mean=np.asarray(d["mean"]), std=np.asarray(d["std"]),
                   coef=np.asarray(d["coef"]), intercept=np.asarray(d["intercept"]), C=d.get("C"))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-12] = 1.0  # constant features stay zero after centring
    return mean, std


def patient_cv_splits(
    y: np.ndarray | None, groups, n_splits: int = 5, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that never put one patient on both sides.

    ``StratifiedGroupKFold`` when ``y`` is a single-label vector, ``GroupKFold`` otherwise
    (multilabel or ``y=None``). ``n_splits`` is reduced to the number of patients.

    Returns:
        list of ``(train_idx, val_idx)``; empty if fewer than 2 patients.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    g = np.asarray(groups)
    n_pat = np.unique(g).size
    k = min(int(n_splits), n_pat)
    if k < 2:
        return []
    x_dummy = np.zeros((g.shape[0], 1))
    if y is not None and np.ndim(y) == 1:
        yy = np.asarray(y).astype(np.int64)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
                return [(tr, va) for tr, va in splitter.split(x_dummy, yy, g)]
        except ValueError:  # every class has fewer samples than folds: stratification is impossible
            pass
    return [(tr, va) for tr, va in GroupKFold(n_splits=k).split(x_dummy, None, g)]


def _constant_logit(yb: np.ndarray) -> float:
    """Log-odds of the (smoothed) positive rate, for a label that has one class only."""
    rate = (yb.sum() + 0.5) / (yb.size + 1.0)
    return float(math.log(rate / (1.0 - rate)))


def _fit_logreg(
    x: np.ndarray, y: np.ndarray, groups, *, cv: int, Cs, max_iter: int, seed: int, notes: list[str],
    splits_out: list,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One (multinomial or binary) logistic regression; returns (coef, intercept, classes, C)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    yi = y.astype(np.int64)
    splits = patient_cv_splits(yi, groups, cv, seed=seed) if cv and cv >= 2 else []
    splits_out.extend(splits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = None
        if splits:
            try:
                model = LogisticRegressionCV(
                    Cs=list(Cs), cv=splits, l1_ratios=(0.0,), scoring="neg_log_loss", solver="lbfgs",
                    max_iter=max_iter, use_legacy_attributes=False, random_state=seed,
                ).fit(x, yi)
                c_best = float(model.C_)
            except ValueError as exc:  # a fold without two classes — fall back below
                notes.append(f"cross-validation of C failed ({exc}); used C=1")
                model = None
        else:
            notes.append("fewer than 2 patients (or cv < 2): C not cross-validated, used C=1")
        if model is None:
            model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter).fit(x, yi)
            c_best = 1.0
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"logistic regression did not fully converge in {max_iter} iterations")
    return model.coef_, model.intercept_, model.classes_, c_best


class SklearnLinearProbe:
    """Logistic-regression probe (scikit-learn), C cross-validated over patient-grouped folds.

    Args:
        task: task kind; multilabel fits one binary model per label; ordinal is treated as
            multiclass (report QWK with :func:`medcl.metrics.classification_metrics`).
        cv: number of folds (by patient).
        Cs: grid of inverse regularisation strengths.
        num_classes: K for multiclass/ordinal (default ``max(y) + 1``).
    """

    def __init__(self, task: str, *, cv: int = 5, Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 1000,
                 num_classes: int | None = None, seed: int = 0) -> None:
        self.task = check_task(task)
        self.cv = cv
        self.Cs = tuple(Cs)
        self.max_iter = max_iter
        self.num_classes = num_classes
        self.seed = seed
        self.cv_splits: list[tuple[np.ndarray, np.ndarray]] = []
        self.model_: LinearModel | None = None

    def fit(self, feats, y, groups=None) -> LinearModel:
        x_raw = _features(feats, "train_feats")
        yy = _labels(y, self.task, x_raw.shape[0])
        g = np.arange(x_raw.shape[0]) if groups is None else np.asarray(groups)
        if g.shape[0] != x_raw.shape[0]:
            raise DataError(f"{g.shape[0]} patient ids for {x_raw.shape[0]} samples", where="groups_train",
                            fix="pass one patient id per training sample")
        mean, std = _standardiser(x_raw)
        x = (x_raw - mean) / std
        notes: list[str] = []
        if groups is None:
            notes.append("no patient ids given: CV folds split samples, which leaks patients between folds")
        self.cv_splits = []
        if self.task == "multilabel":
            k = yy.shape[1]
            coef = np.zeros((k, x.shape[1]))
            intercept = np.zeros(k)
            cs = np.full(k, np.nan)
            for j in range(k):
                lab = np.isfinite(yy[:, j])
                yj = yy[lab, j]
                if np.unique(yj).size < 2:
                    intercept[j] = _constant_logit(yj) if yj.size else 0.0
                    notes.append(f"label {j}: one class only in training — constant prediction")
                    continue
                splits: list = []
                c_j, b_j, _, cs[j] = _fit_logreg(x[lab], yj, g[lab], cv=self.cv, Cs=self.Cs,
                                                 max_iter=self.max_iter, seed=self.seed, notes=notes,
                                                 splits_out=splits)
                coef[j], intercept[j] = c_j[0], b_j[0]
                if j == 0 or not self.cv_splits:
                    self.cv_splits = splits
            self.model_ = LinearModel(self.task, mean, std, coef, intercept, cs, notes)
            return self.model_
        lab = np.isfinite(yy)
        x, yl, gl = x[lab], yy[lab].astype(np.int64), g[lab]
        if yl.size == 0:
            raise DataError("no labelled training sample", where="y_train", fix="label some training samples")
        if self.task == "binary":
            if np.unique(yl).size < 2:
                notes.append("one class only in training — constant prediction")
                self.model_ = LinearModel(self.task, mean, std, np.zeros((1, x.shape[1])),
                                          np.array([_constant_logit(yl.astype(float))]), None, notes)
                return self.model_
            c, b, _, cbest = _fit_logreg(x, yl, gl, cv=self.cv, Cs=self.Cs, max_iter=self.max_iter,
                                         seed=self.seed, notes=notes, splits_out=self.cv_splits)
            self.model_ = LinearModel(self.task, mean, std, c.reshape(1, -1), b.reshape(1), cbest, notes)
            return self.model_
        k = int(self.num_classes or (yl.max() + 1))
        coef = np.zeros((k, x.shape[1]))
        intercept = np.full(k, _ABSENT_LOGIT)
        present = np.unique(yl)
        if present.size < 2:
            notes.append("one class only in training — constant prediction")
            intercept[present] = 0.0
            self.model_ = LinearModel(self.task, mean, std, coef, intercept, None, notes)
            return self.model_
        c, b, classes, cbest = _fit_logreg(x, yl, gl, cv=self.cv, Cs=self.Cs, max_iter=self.max_iter,
                                           seed=self.seed, notes=notes, splits_out=self.cv_splits)
        if classes.size == 2:  # sklearn's binary form: one row for classes[1]
            coef[classes[1]], intercept[classes[1]] = c[0], b[0]
            intercept[classes[0]] = 0.0
        else:
            coef[classes], intercept[classes] = c, b
        if present.size < k:
            missing = sorted(set(range(k)) - set(present.tolist()))
            notes.append(f"classes {missing} absent from training: predicted with probability ~0")
        self.model_ = LinearModel(self.task, mean, std, coef, intercept, cbest, notes)
        return self.model_


class TorchLinearHead:
    """Linear head trained with torch on standardised features, for sets too large for scikit-learn.

    Full-batch L-BFGS with an L2 penalty ``weight_decay / 2 * ||W||^2`` (default), or minibatch
    AdamW with decoupled weight decay (Loshchilov & Hutter 2019). Loss: cross-entropy
    (multiclass/ordinal) or BCE-with-logits (binary/multilabel, unlabelled entries masked).

    Args:
        task: task kind.
        weight_decay: L2 strength (no CV here; choose it on validation).
        optimizer: ``"lbfgs"`` or ``"adamw"``.
        epochs: L-BFGS iterations (``"lbfgs"``) or passes over the data (``"adamw"``).
        lr, batch_size: AdamW settings.
        device: torch device for training.
    """

    def __init__(self, task: str, *, weight_decay: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100,
                 lr: float = 1e-3, batch_size: int = 1024, num_classes: int | None = None,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.task = check_task(task)
        if optimizer not in ("lbfgs", "adamw"):
            raise ConfigError(f"unknown optimizer {optimizer!r} for the linear head", where="optimizer",
                              fix="use 'lbfgs' or 'adamw'")
        self.weight_decay = float(weight_decay)
        self.optimizer = optimizer
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.seed = seed
        self.cv_splits: list = []
        self.model_: LinearModel | None = None

    def fit(self, feats, y, groups=None) -> LinearModel:
        x_raw = _features(feats, "train_feats")
        yy = _labels(y, self.task, x_raw.shape[0])
        mean, std = _standardiser(x_raw)
        x = torch.as_tensor((x_raw - mean) / std, dtype=torch.float32, device=self.device)
        if self.task in ("multiclass", "ordinal"):
            lab = np.isfinite(yy)
            k = int(self.num_classes or (np.nanmax(yy) + 1))
            x = x[torch.as_tensor(lab, device=self.device)]
            yt = torch.as_tensor(yy[lab].astype(np.int64), device=self.device)
        else:
            yv = yy.reshape(yy.shape[0], -1)
            k = yv.shape[1]
            yt = torch.as_tensor(yv, dtype=torch.float32, device=self.device)
        gen = torch.Generator().manual_seed(self.seed)
        lin = nn.Linear(x.shape[1], k).to(self.device)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01)
            lin.bias.zero_()
        loss_fn = loss_for_task("multiclass" if self.task == "ordinal" else self.task)

        def batch_loss(xb, yb):
            z = lin(xb)
            return loss_fn(z[:, 0] if self.task == "binary" else z, yb[:, 0] if self.task == "binary" else yb)

        if self.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=self.epochs, history_size=20,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = batch_loss(x, yt) + 0.5 * self.weight_decay * lin.weight.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.AdamW(lin.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            n = x.shape[0]
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=gen).to(self.device)
                for i in range(0, n, self.batch_size):
                    idx = perm[i : i + self.batch_size]
                    opt.zero_grad()
                    batch_loss(x[idx], yt[idx]).backward()
                    opt.step()
        coef = lin.weight.detach().cpu().double().numpy()
        intercept = lin.bias.detach().cpu().double().numpy()
        self.model_ = LinearModel(self.task, mean, std, coef, intercept, self.weight_decay, [])
        return self.model_


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

    Returns:
        :class:`ProbeResult`.
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
        train_feats: ``(N, D)``; y_train: ``(N,)`` int (``-1`` ignored) or ``(N, K)`` multilabel.
        test_feats: ``(M, D)``.
        k: neighbours (capped at the number of labelled training samples).
        temperature: vote temperature.
        task: task kind.
        num_classes: K for single-label tasks (default ``max(y) + 1``).

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
