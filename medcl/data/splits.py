"""Patient-level train/val/test splits: stratified, deterministic, leakage-checked, saved with the run.

Image-level random splits put one patient's scans in train and test and inflate every metric;
here the unit of splitting is the (pseudonymised) patient. The allocation is a systematic
stratified sample: within each class the patients (sorted by pseudonymised id, then shuffled
by ``numpy.random.default_rng(seed)``) get evenly spaced positions ``(rank + 0.5) / n_class``;
all patients are then ordered by position and the first ``n_test`` go to test, the next
``n_val`` to val and the rest to train. Every prefix of that order holds each class in
proportion (±1 patient), so every split keeps the class proportions, and the result depends
only on the seed and the set of (patient, label) pairs — not on row order.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcl.data.manifest import SPLITS, Record, canonical_split
from medcl.errors import ManifestError, PHIError, SplitError

log = logging.getLogger(__name__)

__all__ = [
    "make_splits", "check_leakage", "split_summary", "save_split", "load_split", "record_splits",
    "StratificationWarning", "UNLABELLED",
]

#: Class key used for unlabelled samples in summaries.
UNLABELLED = "unlabelled"

#: What a pseudonymised id looks like (``medcl.phi.pseudonymize``): saved files hold nothing else.
_PSEUDONYM = re.compile(r"^[a-z]+-[0-9a-f]{16}$")


class StratificationWarning(UserWarning):
    """A class has too few patients to appear in every split; its patients go to train."""


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))  # half up, not banker's rounding


def _label_keys(records: Sequence[Record], labels: Sequence[Any] | np.ndarray | None) -> list[str | None]:
    """One hashable label key per record (``None`` = unlabelled)."""
    if labels is None:
        return [r.label for r in records]
    arr = np.asarray(labels, dtype=object) if not isinstance(labels, np.ndarray) else labels
    if len(arr) != len(records):
        raise SplitError(f"{len(arr)} labels for {len(records)} records", where="labels",
                         fix="pass one label per record (from parse_labels)")
    out: list[str | None] = []
    for v in arr:
        if isinstance(v, np.ndarray) and v.ndim == 1:  # multi-label row: stratify by first positive class
            if np.isnan(v.astype(float)).all():
                out.append(None)
            else:
                pos = np.flatnonzero(v.astype(float) > 0.5)
                out.append(str(int(pos[0])) if len(pos) else "none")
        elif (v is None or (isinstance(v, float | np.floating) and np.isnan(v))
              or (isinstance(v, int | np.integer) and int(v) < 0)):
            out.append(None)  # missing, NaN or -1: unlabelled
        else:
            text = str(v).strip()
            out.append(text or None)
    return out


def _patient_labels(records: Sequence[Record], keys: Sequence[str | None]) -> dict[str, str | None]:
    """Majority label per patient (ties: the smallest label), ``None`` if all its rows are unlabelled."""
    votes: dict[str, Counter] = {}
    for r, k in zip(records, keys):
        c = votes.setdefault(r.patient, Counter())
        if k is not None:
            c[k] += 1
    out: dict[str, str | None] = {}
    for p, c in votes.items():
        if not c:
            out[p] = None
        else:
            top = max(c.values())
            out[p] = min(k for k, n in c.items() if n == top)
    return out


def make_splits(
    records: Sequence[Record],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    stratify: bool = True,
    labels: Sequence[Any] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, str]:
    """Assign every patient to ``'train'``, ``'val'`` or ``'test'``.

    When any record has a manifest ``split``, that split is used (every record must have one)
    and only validated. Otherwise patients are allocated as described in the module docstring.

    Args:
        records: manifest records (pseudonymised ``patient``).
        val_fraction: fraction of patients in val (rounded half up; 0 for none).
        test_fraction: fraction of patients in test (rounded half up; 0 for none).
        seed: the split depends only on this seed and the (patient, label) pairs.
        stratify: keep class proportions per split (by each patient's majority label).
        labels: one label per record (strings, ints with ``-1`` unlabelled, or multi-hot rows);
            default ``record.label``.
        class_names: names of integer labels, for messages only (the split does not depend on them).

    Returns:
        ``{pseudonymised patient: split}``, sorted by patient.

    Raises:
        SplitError: empty patient ids, bad fractions, a split that would be empty, a
            manifest split that leaks patients or has no train rows.

    Warns:
        StratificationWarning: a class has fewer patients than there are splits; its patients
            are put in train (a class never seen in training cannot be learned).
    """
    if not records:
        raise SplitError("no records to split", where="manifest", fix="give a manifest with at least one row")
    empty = [r.row for r in records if not r.patient]
    if empty:
        raise SplitError(f"{len(empty)} row(s) have no patient id (rows {', '.join(map(str, empty[:8]))})",
                         where="manifest", fix="give every row its patient's id")
    with_split = [r for r in records if r.split]
    if with_split:
        return _manifest_splits(records)

    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise SplitError(f"{name} = {f} is outside [0, 1)", where=f"data.{name}", fix="use e.g. 0.15")
    if val_fraction + test_fraction >= 1.0:
        raise SplitError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training patients",
                         where="data", fix="make val_fraction + test_fraction well below 1 (e.g. 0.15 + 0.15)")

    keys = _label_keys(records, labels)
    plabel = _patient_labels(records, keys)
    patients = sorted(plabel)
    n_val, n_test = _split_sizes(len(patients), val_fraction, test_fraction)

    rng = np.random.default_rng(seed)
    use_strata = stratify and any(v is not None for v in plabel.values())
    n_splits = 1 + (n_val > 0) + (n_test > 0)
    order, rare = _stratified_order(patients, plabel, rng, use_strata, n_splits, class_names)
    if rare:
        msg = (f"class {', '.join(rare)} has fewer patients than the {n_splits} splits and cannot be "
               "stratified; its patients are put in train first — add patients of that class for a "
               "meaningful evaluation")
        warnings.warn(msg, StratificationWarning, stacklevel=2)
        log.warning(msg)
    order.sort()
    assignment: dict[str, str] = {}
    for i, (_, _, p) in enumerate(order):
        assignment[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return dict(sorted(assignment.items()))


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(n_val, n_test)`` patients of ``n`` (fractions rounded half up).

    Raises:
        SplitError: a non-zero fraction that gives no patient, or no patient left for train.
    """
    n_test, n_val = _round(test_fraction * n), _round(val_fraction * n)
    for name, f, k in (("test", test_fraction, n_test), ("val", val_fraction, n_val)):
        if f > 0 and k == 0:
            raise SplitError(
                f"{name}_fraction {f:g} of {n} patients gives 0 {name} patients",
                where=f"data.{name}_fraction",
                fix=f"add patients, raise {name}_fraction to at least {0.5 / n:.2g}, or set it to 0",
            )
    n_train = n - n_test - n_val
    if n_train < 1:
        raise SplitError(f"{n} patients leave no training patients ({n_val} val, {n_test} test)",
                         where="data", fix="add patients or lower val_fraction/test_fraction")
    return n_val, n_test


def _stratified_order(patients: list[str], plabel: dict[str, Any], rng: np.random.Generator, use_strata: bool,
                      n_splits: int, class_names: Sequence[str] | None) -> tuple[list[tuple[float, float, str]], list[str]]:
    """Interleave the patients of every stratum so that cutting the sorted order keeps class proportions.

    Each patient gets a position ``(rank + 0.5) / stratum size`` from a random permutation of its stratum
    (with a random tie-breaker); patients of a class too rare to be spread over ``n_splits`` splits get
    position 2, so they sort last and land in train.

    Args:
        patients: sorted patient ids (the order makes the result independent of row order).
        plabel: each patient's stratification label (None when unlabelled).
        rng: the split's generator (consumed: one permutation and one tie draw per stratum).
        use_strata: stratify by ``plabel``; otherwise all patients form one stratum.
        n_splits: number of non-empty splits.
        class_names: names of integer labels, for the rare-class message.

    Returns:
        ``(order, rare)``: unsorted ``(position, tie, patient)`` triples, and one description per rare class.
    """
    strata: dict[str, list[str]] = {}
    for p in patients:  # sorted: independent of row order
        k = (plabel[p] if plabel[p] is not None else f"\0{UNLABELLED}") if use_strata else ""
        strata.setdefault(k, []).append(p)
    order: list[tuple[float, float, str]] = []
    rare: list[str] = []
    for k in sorted(strata):
        members = strata[k]
        perm = rng.permutation(len(members))
        ties = rng.random(len(members))
        is_rare = use_strata and not k.startswith("\0") and len(members) < n_splits
        if is_rare:
            name = class_names[int(k)] if class_names and k.isdigit() and int(k) < len(class_names) else k
            rare.append(f"{name!r} ({len(members)} patient{'s' if len(members) > 1 else ''})")
        for rank, (j, t) in enumerate(zip(perm, ties)):
            pos = 2.0 if is_rare else (rank + 0.5) / len(members)  # rare classes sort last → train
            order.append((pos, float(t), members[j]))
    return order, rare


def _manifest_splits(records: Sequence[Record]) -> dict[str, str]:
    missing = [r.row for r in records if not r.split]
    if missing:
        raise SplitError(
            f"the split column is filled for some rows but empty for {len(missing)} "
            f"(rows {', '.join(map(str, missing[:8]))}{' …' if len(missing) > 8 else ''})",
            where="manifest split column",
            fix="give every row a split, or clear the column to let medcl split by patient",
        )
    check_leakage(records, [r.split for r in records])
    assignment = {r.patient: r.split for r in records}
    if "train" not in assignment.values():
        raise SplitError("the manifest's split column has no train rows", where="manifest split column",
                         fix="mark the training rows 'train'")
    return dict(sorted(assignment.items()))


def record_splits(records: Sequence[Record], assignment: Mapping[Any, str] | Sequence[str]) -> list[str]:
    """The split of each record.

    Args:
        records: manifest records.
        assignment: ``{patient: split}`` (str keys), ``{row: split}`` (int keys), or one split per record.

    Raises:
        SplitError: a record without a split, or an unknown split name.
    """
    if isinstance(assignment, Mapping):
        by_row = bool(assignment) and all(isinstance(k, int | np.integer) for k in assignment)
        out = []
        for r in records:
            key = r.row if by_row else r.patient
            if key not in assignment:
                raise SplitError(f"patient {r.patient} (row {r.row}) has no split", where="split assignment",
                                 fix="make the splits from the same manifest (make_splits) or re-run the split")
            out.append(assignment[key])
    else:
        out = list(assignment)
        if len(out) != len(records):
            raise SplitError(f"{len(out)} splits for {len(records)} records", where="split assignment",
                             fix="give one split per record")
    for r, s in zip(records, out):
        if s not in SPLITS:
            raise SplitError(f"row {r.row} has split {s!r}", where="split assignment", fix="use train, val or test")
    return out


def check_leakage(records: Sequence[Record], assignment: Mapping[Any, str] | Sequence[str]) -> None:
    """Raise if any patient has records in two splits — a loud failure, never a warning.

    Args:
        records: manifest records (pseudonymised ``patient``).
        assignment: as for :func:`record_splits`.

    Raises:
        SplitError: ``patient p-… appears in train and test (rows 3, 17)``.
    """
    splits = record_splits(records, assignment)
    seen: dict[str, dict[str, list[int]]] = {}
    for r, s in zip(records, splits):
        seen.setdefault(r.patient, {}).setdefault(s, []).append(r.row)
    leaks = {p: d for p, d in seen.items() if len(d) > 1}
    if not leaks:
        return
    p = min(leaks, key=lambda q: min(min(v) for v in leaks[q].values()))
    d = leaks[p]
    names = sorted(d, key=SPLITS.index)
    rows = sorted(x for s in names for x in d[s])
    shown = ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")
    more = f" ({len(leaks) - 1} more patient(s) leak too)" if len(leaks) > 1 else ""
    raise SplitError(
        f"patient {p} appears in {' and '.join(names)} (rows {shown}){more}",
        where="split",
        fix="split by patient (make_splits), or fix the manifest's split column so each patient is in one split",
    )


def split_summary(
    records: Sequence[Record],
    assignment: Mapping[Any, str] | Sequence[str],
    labels: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Counts of patients and samples per split and class (counts only, no identifiers).

    Returns:
        ``{split: {"patients": int, "samples": int, "classes": {label: {"patients": int,
        "samples": int}}}}`` for ``train``, ``val``, ``test`` and ``"total"``; unlabelled
        samples count under ``"unlabelled"``. A patient counts once per class it has samples of.
    """
    splits = record_splits(records, assignment)
    keys = _label_keys(records, labels)
    out: dict[str, dict[str, Any]] = {}
    for name in (*SPLITS, "total"):
        sel = [(r, k) for r, k, s in zip(records, keys, splits) if name == "total" or s == name]
        classes: dict[str, dict[str, int]] = {}
        for cls in sorted({k if k is not None else UNLABELLED for _, k in sel}):
            rows = [r for r, k in sel if (k if k is not None else UNLABELLED) == cls]
            classes[cls] = {"patients": len({r.patient for r in rows}), "samples": len(rows)}
        out[name] = {"patients": len({r.patient for r, _ in sel}), "samples": len(sel), "classes": classes}
    return out


def save_split(path: str | os.PathLike, records: Sequence[Record], assignment: Mapping[Any, str] | Sequence[str]) -> Path:
    """Write ``row,patient,split`` (pseudonymised ids only, no paths) atomically.

    Raises:
        PHIError: a patient id is not in pseudonymised form (it would be written in clear).
        SplitError: a record has no split.
    """
    splits = record_splits(records, assignment)
    for r in records:
        if not _PSEUDONYM.match(r.patient):
            raise PHIError(f"row {r.row} has a patient id that is not pseudonymised", where=str(path),
                           fix="load records with load_manifest (which pseudonymises ids)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".split-", suffix=".csv", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "patient", "split"])
            for r, s in sorted(zip(records, splits), key=lambda t: t[0].row):
                w.writerow([r.row, r.patient, s])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_split(path: str | os.PathLike) -> dict[str, str]:
    """Read a file written by :func:`save_split` back into ``{patient: split}``.

    Raises:
        SplitError: missing file or columns, bad split names, a patient in two splits.
    """
    p = Path(path)
    if not p.is_file():
        raise SplitError("split file does not exist", where=str(p), fix="re-run the split stage or check the path")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if not {"row", "patient", "split"} <= set(cols):
            raise SplitError(f"expected columns row, patient, split; found {', '.join(cols) or '(none)'}",
                             where=str(p), fix="give a file written by medcl (save_split)")
        assignment: dict[str, str] = {}
        first_row: dict[str, str] = {}
        for i, raw in enumerate(reader, start=1):
            d = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            try:
                s = canonical_split(d["split"], where=f"{p} row {i}")
            except ManifestError as e:
                raise SplitError(e.what, where=e.where, fix=e.fix) from None
            pid = d["patient"]
            if s is None or not pid:
                raise SplitError(f"row {i} has an empty patient or split", where=str(p), fix="fill both cells")
            if pid in assignment and assignment[pid] != s:
                raise SplitError(
                    f"patient {pid} appears in {assignment[pid]} and {s} (rows {first_row[pid]}, {d['row']})",
                    where=str(p), fix="split by patient: each patient belongs to exactly one split")
            assignment[pid] = s
            first_row.setdefault(pid, d["row"])
    return dict(sorted(assignment.items()))
