"""A fitted linear head on standardised features, and the input checks every probe shares.

:class:`LinearModel` is what :func:`medcl.tasks.classification.linear_probe` returns, whichever backend
fitted it (:mod:`medcl.tasks.probes`). The helpers turn features and labels into checked NumPy arrays,
raising :class:`~medcl.errors.DataError` with a fix when they do not fit. Label conventions are those
of :mod:`medcl.tasks.classification`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medcl.errors import DataError


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
        """Rebuild a model from :meth:`to_dict` output (the notes are not kept)."""
        return cls(task=d["task"], mean=np.asarray(d["mean"]), std=np.asarray(d["std"]),
                   coef=np.asarray(d["coef"]), intercept=np.asarray(d["intercept"]), C=d.get("C"))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-12] = 1.0  # constant features stay zero after centring
    return mean, std
