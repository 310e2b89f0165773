"""Confusable class pairs from a validation confusion matrix, for ``supcon-hardneg`` (``medcl suggest-hard-pairs``).

Expert-guided contrastive learning weighs negatives of *confusable* classes more; which classes are confusable is
the clinician's call. This module proposes candidates from what a finished run's probe actually confused on the
**validation** patients (never the test set: the pairs shape the next run, and the test set must stay unseen),
for the clinician to confirm or reject before they go into the YAML.

A pair ``{a, b}`` is scored by its *mutual confusion rate*: the validation samples of ``a`` predicted ``b`` plus
those of ``b`` predicted ``a``, over the validation samples of ``a`` and ``b``,
``(C[a, b] + C[b, a]) / (n_a + n_b)`` with ``C`` the confusion matrix (rows: truth, columns: prediction).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcl.errors import DataError


@dataclass(frozen=True)
class PairSuggestion:
    """One candidate pair, with the counts behind its rate."""

    a: str
    b: str
    a_as_b: int  # validation samples of a predicted b
    b_as_a: int
    n_a: int  # validation samples of a
    n_b: int

    @property
    def rate(self) -> float:
        """Mutual confusion rate ``(a_as_b + b_as_a) / (n_a + n_b)``."""
        return (self.a_as_b + self.b_as_a) / max(1, self.n_a + self.n_b)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` confusion counts, rows the true class, columns the predicted one."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def suggest_pairs(cm: np.ndarray, classes: list[str], *, min_rate: float = 0.05, min_count: int = 2,
                  top: int = 5) -> list[PairSuggestion]:
    """The class pairs a model confused most, most confused first.

    Args:
        cm: ``(K, K)`` confusion counts (rows truth, columns prediction).
        classes: the ``K`` class names.
        min_rate: leave out pairs whose mutual confusion rate is below this.
        min_count: leave out pairs confused fewer times than this in all (one mistake is no pattern).
        top: at most this many pairs.

    Returns:
        :class:`PairSuggestion` s sorted by rate (then by count), at most ``top``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.sum(1)
    out = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            s = PairSuggestion(classes[i], classes[j], int(cm[i, j]), int(cm[j, i]), int(n[i]), int(n[j]))
            if s.a_as_b + s.b_as_a >= min_count and s.rate >= min_rate:
                out.append(s)
    out.sort(key=lambda s: (-s.rate, -(s.a_as_b + s.b_as_a), s.a, s.b))
    return out[:top]


def read_predictions(path: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` of a ``predictions_val.csv`` (single-label tasks: ``y_true`` and ``y_pred`` columns).

    Raises:
        DataError: a multi-label file (no single true class per row), or a row whose classes are out of range.
    """
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "y_true" not in rows[0]:
        raise DataError(f"{path.name} has no y_true column: a multi-label run has no confusion matrix between classes",
                        where=str(path), fix="name hard pairs for single-label (multiclass, ordinal, binary) tasks")
    y, p = [], []
    for k, r in enumerate(rows, start=2):
        t, q = int(r["y_true"]), int(r["y_pred"])
        if not (0 <= t < len(classes) and 0 <= q < len(classes)):
            raise DataError(f"row {k} has class index {t if not 0 <= t < len(classes) else q}, but the run has "
                            f"{len(classes)} classes", where=f"{path.name}, row {k}",
                            fix="use the predictions file of the same run")
        y.append(t)
        p.append(q)
    return np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.int64)


def format_suggestions(pairs: list[PairSuggestion], cm: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix, the ranked pairs and a YAML snippet to confirm and paste."""
    width = max(8, *(len(c) for c in classes))
    lines = ["validation confusion matrix (rows: truth, columns: prediction):",
             " " * width + " " + " ".join(f"{c:>{width}}" for c in classes)]
    lines += [f"{c:>{width}} " + " ".join(f"{int(v):>{width}}" for v in row) for c, row in zip(classes, cm)]
    if not pairs:
        lines += ["", "no pair was confused often enough to suggest (see --min-rate / --min-count); the probe "
                  "separates these classes on the validation patients"]
        return "\n".join(lines)
    lines += ["", "candidate confusable pairs (most confused first):"]
    for s in pairs:
        lines.append(f"  {s.a} / {s.b}: {s.a_as_b} of {s.n_a} {s.a} predicted {s.b}, {s.b_as_a} of {s.n_b} {s.b} "
                     f"predicted {s.a} ({100 * s.rate:.0f} % mutual confusion)")
    snippet = ", ".join(f"[{s.a}, {s.b}]" for s in pairs)
    lines += ["", "confirm with a clinician which of these are clinically confusable, then state them:",
              "pretrain:", "  method: supcon-hardneg", "  method_options:", f"    hard_pairs: [{snippet}]"]
    return "\n".join(lines)
