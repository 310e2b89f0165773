"""Nested, patient-level, stratified label fractions (1 % ⊂ 10 % ⊂ 100 % of training patients).

Label-fraction curves show what pretraining buys as labels grow scarce; fractions are drawn
over *patients*, never single images, so no patient is split across a fraction boundary.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from medcl.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _is_unlabelled(v) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() == "" or v.strip() == "-1"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isnan(f) or f < 0


def _patient_strata(pat_str: np.ndarray, uniq: list[str], y_arr: list | None) -> dict[str, Any]:
    """Class of every patient (mode of its labels) when labels are single-label; ``None`` otherwise.

    A patient without a labelled sample, and every patient of multilabel or unlabelled data, gets ``None``.
    """
    strata: dict[str, Any] = {}
    single = y_arr is not None and all(np.ndim(v) == 0 for v in y_arr)
    if single:
        labels_of: dict[str, list] = {p: [] for p in uniq}
        for p, v in zip(pat_str.tolist(), y_arr):
            if not _is_unlabelled(v):
                labels_of[p].append(str(v))
        for p in uniq:
            strata[p] = Counter(labels_of[p]).most_common(1)[0][0] if labels_of[p] else None
    else:
        strata = {p: None for p in uniq}
    return strata


def _multilabel_cover(pat_str: np.ndarray, ranking: list[str], y_arr: list) -> list[str]:
    """Patients that between them have every label of a multilabel ``y`` both present and absent (greedy).

    Each pick is the patient adding the most of the still missing (label, value) states, the earliest in ``ranking``
    among equals; a state no patient has is not sought. Unlabelled samples (negative values or NaN) count for
    nothing. Not multilabel (``y`` not ``(N, K)`` numbers): no patients.
    """
    try:
        y2 = np.asarray(y_arr, dtype=float)
    except (TypeError, ValueError):
        return []
    if y2.ndim != 2 or y2.shape[0] != len(pat_str):
        return []
    states: dict[str, set[tuple[int, int]]] = {p: set() for p in ranking}
    for p, row in zip(pat_str.tolist(), y2):
        states[p].update((k, int(v > 0.5)) for k, v in enumerate(row) if not (math.isnan(v) or v < 0))
    missing = set().union(*states.values()) if states else set()
    cover: list[str] = []
    while missing:
        best = max(ranking, key=lambda p: len(states[p] & missing))  # max keeps the first of equals
        cover.append(best)
        missing -= states[best]
    return cover


def label_fraction_patients(
    records_or_patients,
    y=None,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    *,
    ensure_all_classes: bool = False,
) -> dict[float, np.ndarray]:
    """Nested, patient-level, stratified subsets of the training set for label-fraction curves.

    Patients (never single samples) are ranked once: one patient of every class first (random
    order), then all others interleaved by class so that any prefix keeps the class mix.
    Fraction ``f`` takes the first ``max(1, round(f * P))`` patients, so the 1 % patients are
    inside the 10 % patients, which are inside 100 %. A patient's class is the most common label
    among its samples; multilabel or unlabelled data are sampled without stratification.

    Multilabel ``y`` ``(N, K)`` with ``ensure_all_classes``: the ranking starts with a few patients that between
    them have every label both present and absent (where the training patients have it both ways; a patient has a
    label present when one of its samples does), chosen greedily, each adding the most label states still missing.
    Without them a small fraction of multilabel data can hold one patient, on which no label has two values and
    every probe is constant (chance AUROC by construction).

    Args:
        records_or_patients: manifest ``Record`` objects (``.patient``, ``.label``) or an
            ``(N,)`` array of patient ids.
        y: ``(N,)`` labels (or ``(N, K)`` multilabel); default taken from the records.
        fractions: fractions in (0, 1].
        seed: ranking seed.
        ensure_all_classes: raise the patient count of small fractions to the number of
            classes so every class has a patient (multilabel: to the patients that give every label both
            values, above); the subset is then larger than ``f``.

    Returns:
        ``{fraction: (N,) bool mask}`` selecting every sample of the chosen patients.
    """
    items = list(records_or_patients)
    if items and hasattr(items[0], "patient"):
        patients = np.asarray([r.patient for r in items], dtype=object)
        if y is None:
            y = [getattr(r, "label", None) for r in items]
    else:
        patients = np.asarray(items, dtype=object)
    n = patients.shape[0]
    for f in fractions:
        if not (0.0 < float(f) <= 1.0):
            raise ConfigError(f"label fraction {f} is not in (0, 1]", where="classify.label_fractions",
                              fix="use fractions such as 0.01, 0.1, 1.0")
    pat_str = np.asarray([str(p) for p in patients])
    uniq = sorted(set(pat_str.tolist()))
    y_arr = None if y is None else list(y)
    if y_arr is not None and len(y_arr) != n:
        raise DataError(f"{len(y_arr)} labels for {n} samples", where="y", fix="pass one label per sample")
    strata = _patient_strata(pat_str, uniq, y_arr)
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[str]] = {}
    for p in uniq:
        by_class.setdefault(strata[p], []).append(p)
    keys: dict[str, float] = {}
    firsts = []
    for cls in sorted(by_class, key=lambda c: (c is None, str(c))):
        members = [by_class[cls][i] for i in rng.permutation(len(by_class[cls]))]
        u = rng.random(len(members))
        for i, p in enumerate(members):
            keys[p] = (i + u[i]) / len(members)
        if cls is not None:
            firsts.append(members[0])
    for rank, i in enumerate(rng.permutation(len(firsts))):
        keys[firsts[i]] = -1.0 + rank * 1e-6  # one patient per class before everyone else
    ranking = sorted(uniq, key=lambda p: keys[p])
    n_classes = len(firsts)
    if ensure_all_classes and y_arr is not None and n_classes == 0:
        cover = _multilabel_cover(pat_str, ranking, y_arr)
        first = set(cover)
        ranking = cover + [p for p in ranking if p not in first]
        n_classes = len(cover)
    out: dict[float, np.ndarray] = {}
    for f in fractions:
        m = max(1, int(round(float(f) * len(uniq))))
        if ensure_all_classes:
            m = max(m, n_classes)
        m = min(m, len(uniq))
        chosen = set(ranking[:m])
        out[f] = np.asarray([p in chosen for p in pat_str.tolist()], dtype=bool)
    return out
