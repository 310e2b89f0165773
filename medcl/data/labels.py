"""Manifest labels → class indices, with every bad row reported.

:func:`label_problems` maps the ``label`` cell of each :class:`~medcl.data.records.Record` to a
class index (multi-hot for multi-label tasks) and lists the rows whose label is not a class;
:func:`parse_labels` does the same but raises on any such row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medcl.data.records import Problem, Record
from medcl.errors import DataError
from medcl.lookup import did_you_mean

#: Label tasks understood by :func:`parse_labels`.
TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel", "ordinal")


def _sort_classes(values: Iterable[str]) -> list[str]:
    """Numeric order when every value is a number ('2' < '10'), else lexicographic."""
    vals = sorted(set(values))
    try:
        return sorted(vals, key=float)
    except ValueError:
        return vals


def _column_holding(records: Sequence[Record], classes: set[str], task: str, label_sep: str) -> str | None:
    """The other manifest column whose non-empty values are all class names (and cover ≥ 2 of them), if any.

    For the error when the labels are not the configured classes: a manifest often has the names in one
    column and numeric codes in ``label`` (or the other way round).
    """
    columns = dict.fromkeys(k for r in records for k in r.extra)
    for col in columns:
        seen: set[str] = set()
        ok = True
        for r in records:
            v = str(r.extra.get(col) or "").strip()
            toks = [t.strip() for t in v.split(label_sep) if t.strip()] if task == "multilabel" else [v] if v else []
            if any(t not in classes for t in toks):
                ok = False
                break
            seen.update(toks)
        if ok and len(seen) >= 2:
            return col
    return None


def _class_list(per_row: list[list[str]], classes: Sequence[Any] | None, task: str) -> tuple[list[str], list[Problem]]:
    """The class names in index order, given or inferred from the labels.

    Args:
        per_row: the label tokens of each row.
        classes: the configured classes, or None to infer them (:func:`_sort_classes`).
        task: the label task.

    Returns:
        ``(classes, problems)``: a row-0 ``label-not-in-classes`` problem when a binary task infers
        more than two classes.

    Raises:
        DataError: a configured class listed twice, or a binary task configured without exactly two.
    """
    problems: list[Problem] = []
    if classes is None:
        cls = _sort_classes(t for ts in per_row for t in ts)
        if task == "binary" and len(cls) > 2:
            problems.append(Problem(
                0, "labels", f"a binary task needs 2 classes but the labels have {len(cls)}: "
                f"{', '.join(cls[:10])}{' …' if len(cls) > 10 else ''}",
                "set the task to multiclass, or give the two classes (negative first) in the config",
                "label-not-in-classes"))
    else:
        cls = [str(c).strip() for c in classes]
        dup = [c for c, n in Counter(cls).items() if n > 1]
        if dup:
            raise DataError(f"class {dup[0]!r} is listed twice", where="classes", fix="list each class once")
        if task == "binary" and len(cls) != 2:
            raise DataError(f"a binary task needs exactly 2 classes, got {len(cls)}: {cls}", where="classes",
                            fix="list the negative class then the positive class, or use task multiclass")
    return cls, problems


def label_problems(
    records: Sequence[Record],
    classes: Sequence[Any] | None = None,
    task: str = "multiclass",
    label_sep: str = ";",
) -> tuple[np.ndarray, list[str], list[Problem]]:
    """:func:`parse_labels` without raising: returns ``(y, classes, problems)``.

    Rows whose label is not in the class list get ``-1`` (a NaN row for multi-label) and a
    ``'label-not-in-classes'`` problem.

    Args:
        records: manifest records (their ``label``).
        classes: class names in index order; inferred from the labels when ``None``.
        task: one of :data:`TASKS`.
        label_sep: separator of multi-label labels.

    Returns:
        ``(y, classes, problems)``: ``y`` as for :func:`parse_labels`, the class names used, and
        one :class:`~medcl.data.records.Problem` per bad row (plus a row-0 problem when a binary
        task finds more than two inferred classes).

    Raises:
        DataError: an unknown task, a class listed twice, or a binary class list without exactly
            two classes.
    """
    if task not in TASKS:
        hint = did_you_mean(task, TASKS, cutoff=0.5, ignore_case=True, paren=True)
        raise DataError(f"unknown label task {task!r}{hint}", where="task", fix=f"use one of {', '.join(TASKS)}")
    per_row: list[list[str]] = []
    for r in records:
        if r.label is None or not r.label.strip():
            per_row.append([])
        elif task == "multilabel":
            per_row.append([t.strip() for t in r.label.split(label_sep) if t.strip()])
        else:
            per_row.append([r.label.strip()])
    cls, problems = _class_list(per_row, classes, task)
    index = {c: i for i, c in enumerate(cls)}
    column_hint: str | None = None  # looked up at the first label outside the classes
    n, k = len(records), len(cls)
    if task == "multilabel":
        y = np.full((n, k), np.nan, dtype=np.float32)
    else:
        y = np.full((n,), -1, dtype=np.int64)
    for i, (r, toks) in enumerate(zip(records, per_row)):
        if not toks:
            continue
        bad = [t for t in toks if t not in index]
        if bad:
            hint = did_you_mean(bad[0], cls, ignore_case=True, paren=True)
            if column_hint is None:
                column_hint = _column_holding(records, set(cls), task, label_sep) or ""
            problems.append(Problem(
                r.row, r.relpath, f"label {bad[0]!r} is not one of the classes{hint}",
                (f"the manifest column {column_hint!r} holds these classes: set data.label_column={column_hint}"
                 if column_hint else f"use one of {', '.join(cls[:20])}{' …' if len(cls) > 20 else ''} "
                 "(or leave the label empty for an unlabelled sample)"),
                "label-not-in-classes"))
            continue
        if task == "multilabel":
            y[i] = 0.0
            y[i, [index[t] for t in toks]] = 1.0
        else:
            y[i] = index[toks[0]]
    return y, cls, problems


def parse_labels(
    records: Sequence[Record],
    classes: Sequence[Any] | None = None,
    task: str = "multiclass",
    label_sep: str = ";",
) -> tuple[np.ndarray, list[str]]:
    """Map label strings to class indices.

    Args:
        records: manifest records (their ``label``).
        classes: class names in index order; inferred (numeric order when all labels are numbers,
            else sorted) when ``None``. For ``binary`` the second class is the positive one.
        task: ``'multiclass'``, ``'binary'``, ``'ordinal'`` (classes in their order) or
            ``'multilabel'`` (labels joined by ``label_sep``).
        label_sep: separator of multi-label labels, e.g. ``"effusion;oedema"``.

    Returns:
        ``(y, classes)``: ``y`` is int64 ``(N,)`` with ``-1`` for unlabelled rows, or for
        multi-label float32 ``(N, K)`` multi-hot with an all-NaN row for unlabelled rows.

    Raises:
        DataError: labels outside the class list (every bad row listed, with did-you-mean).
    """
    y, cls, problems = label_problems(records, classes, task, label_sep)
    if problems:
        shown = "; ".join(p.line() for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{len(problems)} label problem(s): {shown}{more}", where="labels",
                        fix="correct the labels in the manifest or the class list in the config")
    return y, cls
