"""One-class detection of rare findings: learn "normal" from normal samples only, score how far a sample is from it.

For findings too rare to train a classifier on (malignant cells in a cytology smear: a few in thousands), the
detector is fitted on *normal* training samples alone and every test sample gets an anomaly score (higher =
less normal). Two scorers work on features of a (pretrained) encoder ``(N, D)``:

* :class:`DeepSVDD` — Deep Support Vector Data Description (Ruff et al., "Deep One-Class Classification", ICML
  2018, the one-class objective): a bias-free network ``phi`` maps normal samples close to a fixed centre ``c``
  (the mean of ``phi`` at initialisation); the score is ``||phi(x) - c||^2``. Differs from the paper: ``phi`` is
  a small MLP on the frozen encoder's features (the paper trains the whole network), trained with Adam and
  weight decay for ``epochs`` full passes.
* :func:`knn_scores` — the mean cosine distance to the ``k`` nearest normal training features, the one-class
  classifier Sohn et al. use on top of their DROC representations ("Learning and Evaluating Representations for
  Deep One-class Classification", ICLR 2021) next to OC-SVM and KDE.

:func:`detection_metrics` measures a score against the truth (positive = anomalous): anomaly AUROC and AUPRC, and
sensitivity / specificity at a threshold chosen on *validation* normal samples for a target specificity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medcl.errors import DataError


class DeepSVDD:
    """One-class Deep SVDD on fixed features.

    Args:
        hidden: widths of the bias-free MLP ``phi`` (the last is the output size).
        epochs: full passes over the normal features.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (the paper's regulariser on the network weights).
        batch_size: samples per Adam step.
        seed: initialisation and shuffling.

    Shapes:
        ``fit(features (N, D))``; ``score(features (M, D)) -> (M,)``.
    """

    def __init__(self, hidden: tuple[int, ...] = (128, 32), epochs: int = 50, lr: float = 1e-3,
                 weight_decay: float = 1e-6, batch_size: int = 128, seed: int = 0) -> None:
        """Keep the settings; :meth:`fit` builds and trains ``phi``."""
        self.hidden, self.epochs, self.lr = tuple(int(h) for h in hidden), int(epochs), float(lr)
        self.weight_decay, self.batch_size, self.seed = float(weight_decay), int(batch_size), int(seed)
        self.net: nn.Module | None = None
        self.center: torch.Tensor | None = None
        self.mean = self.std = None
        self.losses: list[float] = []

    def _phi(self, d: int) -> nn.Module:
        layers: list[nn.Module] = []
        for i, h in enumerate(self.hidden):  # no biases: a bias lets phi map everything onto c (Ruff et al., 3.3)
            layers.append(nn.Linear(d if i == 0 else self.hidden[i - 1], h, bias=False))
            if i < len(self.hidden) - 1:
                layers.append(nn.LeakyReLU(0.1))
        return nn.Sequential(*layers)

    def _standardise(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(x, np.float32) - self.mean) / self.std)

    def fit(self, normal: np.ndarray) -> DeepSVDD:
        """Train ``phi`` to map the normal features ``(N, D)`` close to the centre.

        Raises:
            DataError: fewer than 2 normal samples.
        """
        x = np.asarray(normal, np.float32)
        if x.ndim != 2 or len(x) < 2:
            raise DataError(f"Deep SVDD needs at least 2 normal samples (N, D), got {x.shape}", where="detect",
                            fix="check detect.normal_class: the training split needs normal samples")
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self._phi(x.shape[1])
        xt = self._standardise(x)
        with torch.no_grad():
            c = self.net(xt).mean(0)
            # Ruff et al.: a centre coordinate near 0 is trivially reached by zero weights; push it away
            c = torch.where(c.abs() < 0.1, torch.where(c < 0, -0.1, 0.1), c)
        self.center = c
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            order = torch.randperm(len(xt), generator=g)
            total = 0.0
            for s in range(0, len(xt), self.batch_size):
                z = self.net(xt[order[s:s + self.batch_size]])
                loss = ((z - c) ** 2).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(z)
            self.losses.append(total / len(xt))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores ``(M,)``: squared distance of ``phi(x)`` to the centre."""
        if self.net is None:
            raise DataError("Deep SVDD scored before fit()", where="detect", fix="call fit(normal features) first")
        with torch.no_grad():
            z = self.net(self._standardise(features))
            return ((z - self.center) ** 2).sum(1).numpy().astype(np.float64)


def knn_scores(normal: np.ndarray, features: np.ndarray, k: int = 5, *, exclude_self: bool = False) -> np.ndarray:
    """Mean cosine distance of each row of ``features`` ``(M, D)`` to its ``k`` nearest rows of ``normal`` ``(N, D)``.

    Args:
        normal: the normal training features.
        features: the features to score.
        k: neighbours (at most ``N``).
        exclude_self: ``features`` is ``normal`` itself: leave each row's own match out.
    """
    a = torch.nn.functional.normalize(torch.as_tensor(np.asarray(normal, np.float32)), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features, np.float32)), dim=1)
    dist = 1.0 - b @ a.T
    if exclude_self:
        dist.fill_diagonal_(float("inf"))
    kk = max(1, min(int(k), a.shape[0] - int(exclude_self)))
    return dist.topk(kk, dim=1, largest=False).values.mean(1).numpy().astype(np.float64)


def threshold_at_specificity(normal_scores: np.ndarray, specificity: float) -> float:
    """The score above which a sample is called anomalous, for a ``specificity`` share of normal samples below it.

    The ``specificity`` quantile of ``normal_scores`` (the higher of two neighbours, so at least that share of
    them is not called anomalous).
    """
    s = np.sort(np.asarray(normal_scores, np.float64))
    if s.size == 0:
        raise DataError("no normal validation scores to set the threshold on", where="detect",
                        fix="give the validation split normal samples (data.val_fraction > 0)")
    i = min(len(s) - 1, int(np.ceil(float(specificity) * len(s))) - 1)
    return float(s[max(i, 0)])


def detection_metrics(anomalous: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Anomaly AUROC and AUPRC (positive = anomalous), and sensitivity / specificity at ``threshold``.

    Args:
        anomalous: ``(M,)`` 0/1, 1 = the rare finding.
        scores: ``(M,)`` anomaly scores (higher = less normal).
        threshold: scores strictly above it are called anomalous.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # lazy: sklearn (~0.5 s)

    y = np.asarray(anomalous).astype(int)
    s = np.asarray(scores, np.float64)
    out = {"n": float(len(y)), "n_anomalous": float(y.sum()), "prevalence": float(y.mean()) if len(y) else np.nan}
    both = 0 < y.sum() < len(y)
    out["auroc"] = float(roc_auc_score(y, s)) if both else float("nan")
    out["auprc"] = float(average_precision_score(y, s)) if both else float("nan")
    called = s > threshold
    out["sensitivity"] = float(called[y == 1].mean()) if y.sum() else float("nan")
    out["specificity"] = float((~called[y == 0]).mean()) if (y == 0).any() else float("nan")
    return out
