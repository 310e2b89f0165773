"""The two linear-probe backends behind :func:`medcl.tasks.classification.linear_probe`.

* :class:`SklearnLinearProbe` — L2-regularised logistic regression (scikit-learn) whose C is chosen
  by cross-validation over folds split **by patient** (:func:`patient_cv_splits`).
* :class:`TorchLinearHead` — a linear layer trained with torch (L-BFGS or AdamW), for sets too large
  for scikit-learn.

Both standardise the features and return a :class:`~medcl.tasks.linear_model.LinearModel`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.metrics.classification import check_task
from medcl.tasks.finetune import loss_for_task
from medcl.tasks.linear_model import LinearModel, _features, _labels, _standardiser

#: default grid of inverse regularisation strengths (features are standardised first).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))

_ABSENT_LOGIT = -1.0e4  # logit given to a class never seen in training (probability ~0)


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
        max_iter: L-BFGS iterations of each logistic regression.
        num_classes: K for multiclass/ordinal (default ``max(y) + 1``).
        seed: seed of the fold split and of scikit-learn's solver.

    Attributes:
        cv_splits: the ``(train_idx, val_idx)`` folds of the last fit (of the first label for multilabel).
        model_: the last fitted :class:`LinearModel`.
    """

    def __init__(self, task: str, *, cv: int = 5, Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 1000,
                 num_classes: int | None = None, seed: int = 0) -> None:
        """Check the task and keep the settings; nothing is fitted yet."""
        self.task = check_task(task)
        self.cv = cv
        self.Cs = tuple(Cs)
        self.max_iter = max_iter
        self.num_classes = num_classes
        self.seed = seed
        self.cv_splits: list[tuple[np.ndarray, np.ndarray]] = []
        self.model_: LinearModel | None = None

    def fit(self, feats, y, groups=None) -> LinearModel:
        """Standardise the features and fit the probe, choosing C by patient-grouped cross-validation.

        Unlabelled samples are dropped. A label or task with one class only in training gets a constant
        prediction (noted in :attr:`LinearModel.notes`); classes absent from training get a logit of
        -1e4 (probability ~0).

        Args:
            feats: ``(N, D)`` training features.
            y: ``(N,)`` labels (-1/NaN = unlabelled) or ``(N, K)`` multilabel.
            groups: ``(N,)`` patient ids; without them the folds split samples (noted: it leaks patients).

        Returns:
            The fitted :class:`LinearModel` (also kept as ``model_``).

        Raises:
            DataError: bad features or labels, a patient-id count that differs from the samples, or no
                labelled sample.
        """
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
        fit = self._fit_multilabel if self.task == "multilabel" else self._fit_single_label
        self.model_ = fit(x, yy, g, mean, std, notes)
        return self.model_

    def _fit_multilabel(self, x: np.ndarray, yy: np.ndarray, g: np.ndarray, mean: np.ndarray, std: np.ndarray,
                        notes: list[str]) -> LinearModel:
        """One binary logistic regression per label on its labelled samples; keeps the first fitted label's folds."""
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
        return LinearModel(self.task, mean, std, coef, intercept, cs, notes)

    def _fit_single_label(self, x: np.ndarray, yy: np.ndarray, g: np.ndarray, mean: np.ndarray, std: np.ndarray,
                          notes: list[str]) -> LinearModel:
        """One binary or multinomial logistic regression on the labelled samples (their folds in ``cv_splits``)."""
        lab = np.isfinite(yy)
        x, yl, gl = x[lab], yy[lab].astype(np.int64), g[lab]
        if yl.size == 0:
            raise DataError("no labelled training sample", where="y_train", fix="label some training samples")
        if self.task == "binary":
            if np.unique(yl).size < 2:
                notes.append("one class only in training — constant prediction")
                return LinearModel(self.task, mean, std, np.zeros((1, x.shape[1])),
                                   np.array([_constant_logit(yl.astype(float))]), None, notes)
            c, b, _, cbest = _fit_logreg(x, yl, gl, cv=self.cv, Cs=self.Cs, max_iter=self.max_iter,
                                         seed=self.seed, notes=notes, splits_out=self.cv_splits)
            return LinearModel(self.task, mean, std, c.reshape(1, -1), b.reshape(1), cbest, notes)
        k = int(self.num_classes or (yl.max() + 1))
        coef = np.zeros((k, x.shape[1]))
        intercept = np.full(k, _ABSENT_LOGIT)
        present = np.unique(yl)
        if present.size < 2:
            notes.append("one class only in training — constant prediction")
            intercept[present] = 0.0
            return LinearModel(self.task, mean, std, coef, intercept, None, notes)
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
        return LinearModel(self.task, mean, std, coef, intercept, cbest, notes)


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
        lr: AdamW learning rate.
        batch_size: AdamW minibatch size.
        num_classes: K for multiclass/ordinal (default ``max(y) + 1``).
        device: torch device for training.
        seed: seed of the weight init and the AdamW batch order.

    Raises:
        ConfigError: an optimizer other than ``"lbfgs"`` or ``"adamw"``.
    """

    def __init__(self, task: str, *, weight_decay: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100,
                 lr: float = 1e-3, batch_size: int = 1024, num_classes: int | None = None,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        """Check the task and optimizer and keep the settings; nothing is trained yet."""
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
        """Standardise the features and train the linear layer (unlabelled entries are left out of the loss).

        Args:
            feats: ``(N, D)`` training features.
            y: ``(N,)`` labels (-1/NaN = unlabelled) or ``(N, K)`` multilabel.
            groups: unused (no cross-validation); accepted for the same interface as
                :class:`SklearnLinearProbe`.

        Returns:
            The fitted :class:`LinearModel` (also kept as ``model_``); its ``C`` is the weight decay.
        """
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
