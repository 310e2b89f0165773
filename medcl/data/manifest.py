"""Manifests: one row per sample, read from CSV or a MONAI datalist JSON.

A manifest names, for every sample, the patient, the file and the modality, plus optional
label, segmentation mask, split, study and site; any other column is kept in
:attr:`Record.extra`. Loading is strict about the *file* (encoding, required columns:
a :class:`~medcl.errors.ManifestError`) and lenient about *rows*: a row with an unknown
modality, an empty patient id or an unknown split value is kept and reported as a
:class:`Problem` in :attr:`Manifest.problems`, so that :func:`medcl.data.validate.validate_manifest`
can list every bad row at once (nnU-Net ``verify_dataset_integrity`` style).

Patient identifiers are pseudonymised (:func:`medcl.phi.pseudonymize`) the moment a row is
read; the clear id never reaches a :class:`Record`. Study ids are pseudonymised too (they are
often accession numbers). Clear ids and the path components under the dataset root are
registered with the PHI guard.

Example CSV::

    patient_id,path,modality,label,mask,split
    MRN0042,scans/a.nii.gz,ct,tumour,masks/a.nii.gz,train
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl import phi
from medcl.errors import DataError, ManifestError
from medcl.lookup import did_you_mean

#: Canonical modality names (lower case).
MODALITIES: tuple[str, ...] = ("ct", "mri", "histo", "oct", "fundus", "ecg")

#: Accepted spellings → canonical modality.
MODALITY_ALIASES: dict[str, str] = {
    **{m: m for m in MODALITIES},
    "mr": "mri",
    "histopathology": "histo",
    "wsi": "histo",
    "pathology": "histo",
    "ekg": "ecg",
    "cfp": "fundus",
}

#: Canonical split names.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Accepted spellings → canonical split.
SPLIT_ALIASES: dict[str, str] = {
    **{s: s for s in SPLITS},
    "training": "train",
    "validation": "val",
    "valid": "val",
    "testing": "test",
}

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "path", "modality")
OPTIONAL_COLUMNS: tuple[str, ...] = ("label", "mask", "split", "study_id", "site")

#: Column spellings accepted for a canonical column (only used when the canonical one is absent).
COLUMN_ALIASES: dict[str, str] = {"image": "path"}

#: Label tasks understood by :func:`parse_labels`.
TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel", "ordinal")

#: File suffixes that make a MONAI datalist ``label`` a segmentation mask rather than a class.
_MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".dcm", ".mha", ".mhd")


def canonical_modality(value: str, *, where: str = "") -> str:
    """Map a modality spelling (case-insensitive, aliases allowed) to one of :data:`MODALITIES`.

    Raises:
        ManifestError: unknown modality, with a did-you-mean suggestion.
    """
    key = str(value).strip().lower()
    if key in MODALITY_ALIASES:
        return MODALITY_ALIASES[key]
    raise ManifestError(
        f"unknown modality {value!r}"
        f"{did_you_mean(key, MODALITY_ALIASES, cutoff=0.5, ignore_case=True, paren=True)}",
        where=where,
        fix=f"use one of {', '.join(MODALITIES)}",
    )


def canonical_split(value: str, *, where: str = "") -> str | None:
    """Map a split spelling to ``'train'``, ``'val'``, ``'test'`` (``None`` for an empty cell).

    Raises:
        ManifestError: unknown split value, with a did-you-mean suggestion.
    """
    key = str(value).strip().lower()
    if not key:
        return None
    if key in SPLIT_ALIASES:
        return SPLIT_ALIASES[key]
    raise ManifestError(
        f"unknown split {value!r}"
        f"{did_you_mean(key, SPLIT_ALIASES, cutoff=0.5, ignore_case=True, paren=True)}",
        where=where,
        fix="use train, val or test (or leave the cell empty to let medcl split by patient)",
    )


@dataclass(frozen=True)
class Problem:
    """One problem with one manifest row (``row == 0`` for the manifest as a whole).

    Attributes:
        row: 1-based data row (header not counted); 0 when the problem is not about one row.
        path: the row's path as written in the manifest (or the manifest file for row 0).
        what: what is wrong, with the offending value.
        fix: how to fix it.
        code: short stable identifier, e.g. ``'missing-file'``, ``'label-not-in-classes'``.
    """

    row: int
    path: str
    what: str
    fix: str
    code: str

    def line(self) -> str:
        """``row N (path): what — fix`` (``manifest (path): …`` for row 0)."""
        head = f"row {self.row}" if self.row else "manifest"
        return f"{head} ({self.path}): {self.what} — {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the fields and the formatted ``line``."""
        return {**asdict(self), "line": self.line()}


@dataclass(frozen=True)
class Record:
    """One manifest row.

    Attributes:
        row: 1-based data row (header not counted).
        patient: pseudonymised patient id (``p-`` + 16 hex chars); ``""`` if the cell was empty.
        path: absolute resolved path of the sample.
        relpath: the path as written in the manifest.
        modality: canonical modality (the lower-cased cell if unknown — then reported in
            :attr:`Manifest.problems`).
        label: label string as written (stripped), or ``None`` if empty.
        mask: absolute resolved mask path, or ``None``.
        split: ``'train'``, ``'val'``, ``'test'`` or ``None``.
        study: pseudonymised study id (``s-…``) or ``None``.
        site: acquisition site as written, or ``None``.
        extra: any other columns, ``{column: value}``.
        mask_relpath: the mask path as written, or ``None``.
    """

    row: int
    patient: str
    path: Path
    relpath: str
    modality: str
    label: str | None = None
    mask: Path | None = None
    split: str | None = None
    study: str | None = None
    site: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    mask_relpath: str | None = None


@dataclass
class Manifest:
    """A loaded manifest.

    Attributes:
        path: the manifest file.
        root: dataset root (the manifest's folder unless given); no sample may live outside it.
        records: one :class:`Record` per non-empty data row, in file order.
        columns: canonical column names found (CSV) or keys seen (JSON).
        problems: row-level problems found while parsing (bad modality/split, empty id or path).
    """

    path: Path
    root: Path
    records: list[Record]
    columns: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def patients(self) -> list[str]:
        """Sorted unique pseudonymised patient ids."""
        return sorted({r.patient for r in self.records if r.patient})

    def by_split(self) -> dict[str | None, list[Record]]:
        """Records grouped by their manifest split (``None`` for rows without one)."""
        out: dict[str | None, list[Record]] = {}
        for r in self.records:
            out.setdefault(r.split, []).append(r)
        return out

    def label_counts(self) -> dict[str, int]:
        """Number of rows per label (unlabelled rows are not counted), sorted by label."""
        counts = Counter(r.label for r in self.records if r.label is not None)
        return dict(sorted(counts.items()))

    def to_frame(self):
        """pandas DataFrame, one row per record, with pseudonymised patient ids only.

        Columns: ``row, patient, path, relpath, modality, label, mask, split, study, site`` and
        one column per extra column.
        """
        import pandas as pd

        rows = []
        for r in self.records:
            d = {
                "row": r.row, "patient": r.patient, "path": str(r.path), "relpath": r.relpath,
                "modality": r.modality, "label": r.label,
                "mask": str(r.mask) if r.mask is not None else None,
                "split": r.split, "study": r.study, "site": r.site,
            }
            for k, v in r.extra.items():
                d.setdefault(k, v)
            rows.append(d)
        cols = ["row", "patient", "path", "relpath", "modality", "label", "mask", "split", "study", "site"]
        return pd.DataFrame(rows, columns=cols + sorted({k for r in self.records for k in r.extra} - set(cols)))


# ----------------------------------------------------------------------------------------------
# loading


def load_manifest(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Manifest:
    """Read a manifest CSV or MONAI datalist JSON.

    Args:
        path: ``.csv`` (or any other suffix: read as CSV) or ``.json`` file.
        root: dataset root; defaults to the manifest's folder. Relative sample paths are always
            resolved against the manifest's folder.

    Returns:
        The :class:`Manifest` (row-level issues in ``manifest.problems``).

    Raises:
        ManifestError: the file is missing, not UTF-8, not valid JSON, or lacks a required column.
    """
    mpath = Path(path).expanduser().resolve()
    if not mpath.is_file():
        raise ManifestError(
            "manifest file does not exist", where=str(path),
            fix="check the path (relative paths are resolved against the working directory)",
        )
    base = mpath.parent
    root_path = Path(root).expanduser().resolve() if root is not None else base
    raw = mpath.read_bytes()
    text = _decode_utf8(raw, str(path))
    if mpath.suffix.lower() == ".json":
        columns, rows = _rows_from_datalist(text, str(path))
    else:
        columns, rows = _rows_from_csv(text, str(path))
    records: list[Record] = []
    problems: list[Problem] = []
    for row, cells in rows:
        rec, probs = _make_record(row, cells, base=base, root=root_path, manifest=str(path))
        records.append(rec)
        problems.extend(probs)
    return Manifest(path=mpath, root=root_path, records=records, columns=columns, problems=problems)


def _decode_utf8(raw: bytes, where: str) -> str:
    """Strict UTF-8 decode (a BOM is dropped); a clear error pointing at the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start
        line = raw.count(b"\n", 0, start) + 1
        bad = raw[start : start + 1].hex()
        raise ManifestError(
            f"not valid UTF-8: byte 0x{bad} at byte offset {start} (line {line} of the file, "
            f"data row {line - 1})",
            where=where,
            fix="re-save the manifest as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`)",
        ) from None


def _canonical_columns(header: Sequence[str], where: str) -> list[str]:
    """Normalise header names (strip, lower-case, aliases) and check the required ones exist."""
    names = [h.strip().lower() for h in header]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n and n in seen:
            raise ManifestError(
                f"column {n!r} appears twice (columns {seen[n] + 1} and {i + 1}; names are case-insensitive)",
                where=where, fix="rename or remove one of them",
            )
        seen[n] = i
    for alias, canon in COLUMN_ALIASES.items():
        if alias in seen and canon not in seen:
            names[seen[alias]] = canon
    for req in REQUIRED_COLUMNS:
        if req not in names:
            found = [h.strip() for h in header if h.strip()]
            raise ManifestError(
                f"missing required column {req!r}"
                f"{did_you_mean(req, found, cutoff=0.5, ignore_case=True, paren=True)}; "
                f"columns found: {', '.join(found) if found else '(none)'}",
                where=where,
                fix=f"add or rename a column so the header has {', '.join(REQUIRED_COLUMNS)} "
                f"(optional: {', '.join(OPTIONAL_COLUMNS)})",
            )
    return names


def _rows_from_csv(text: str, where: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(
            "the manifest is empty", where=where,
            fix=f"write a header line ({', '.join(REQUIRED_COLUMNS)}, ...) and one row per sample",
        ) from None
    except csv.Error as e:  # pragma: no cover - csv rarely fails on the header
        raise ManifestError(f"cannot parse the CSV header: {e}", where=where, fix="check the quoting") from None
    names = _canonical_columns(header, where)
    rows: list[tuple[int, dict[str, str]]] = []
    row = 0
    try:
        for cells in reader:
            row += 1
            if not any(c.strip() for c in cells):
                continue  # blank line: still counted so row numbers match the file
            padded = list(cells) + [""] * (len(names) - len(cells))
            rows.append((row, {n: c.strip() for n, c in zip(names, padded) if n}))
    except csv.Error as e:
        raise ManifestError(
            f"cannot parse the CSV near data row {row + 1}: {e}", where=where,
            fix="check the quoting of that row (a cell with a comma must be in double quotes)",
        ) from None
    return [n for n in names if n], rows


def _rows_from_datalist(text: str, where: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """MONAI datalist: ``{"training": [...], "validation": [...], "test": [...]}``.

    ``image`` → ``path``; the section gives the split unless the entry has its own ``split``;
    a ``label`` that is a file path (segmentation datalists) becomes ``mask``; a top-level
    ``"modality"`` string is the default modality; bare strings (Decathlon ``test``) are paths.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", where=where,
            fix="fix the JSON syntax (a MONAI datalist is {\"training\": [{\"image\": ..., ...}], ...})",
        ) from None
    sections = {"training": "train", "validation": "val", "valid": "val", "test": "test", "testing": "test"}
    if not isinstance(data, dict) or not any(k in data for k in sections):
        raise ManifestError(
            "not a MONAI datalist: expected an object with 'training', 'validation' and/or 'test' lists",
            where=where, fix="write {\"training\": [{\"image\": ..., \"patient_id\": ..., \"modality\": ...}]}",
        )
    default_modality = data.get("modality") if isinstance(data.get("modality"), str) else None
    rows: list[tuple[int, dict[str, str]]] = []
    keys: list[str] = []
    row = 0
    for section, split in sections.items():
        entries = data.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ManifestError(f"section {section!r} is not a list", where=where, fix="make it a list of entries")
        for entry in entries:
            row += 1
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict):
                raise ManifestError(
                    f"entry {row} in {section!r} is a {type(entry).__name__}, not an object",
                    where=where, fix="write each entry as {\"image\": ..., \"patient_id\": ...}",
                )
            cells: dict[str, str] = {}
            lowered = {str(k).strip().lower() for k in entry}
            for k, v in entry.items():
                name = str(k).strip().lower()
                if name in COLUMN_ALIASES and COLUMN_ALIASES[name] not in lowered:
                    name = COLUMN_ALIASES[name]
                if isinstance(v, list | dict):
                    raise ManifestError(
                        f"entry {row} ({section!r}) key {k!r} holds a {type(v).__name__}; "
                        "medcl takes one file per entry",
                        where=where, fix="stack multi-file inputs into one file, or write one entry per file",
                    )
                cells[name] = "" if v is None else str(v).strip()
                if name not in keys:
                    keys.append(name)
            if "mask" not in cells and cells.get("label", "").lower().endswith(_MASK_SUFFIXES):
                cells["mask"] = cells.pop("label")
            if not cells.get("split"):
                cells["split"] = split
            if not cells.get("modality") and default_modality:
                cells["modality"] = default_modality
            rows.append((row, cells))
    if rows:
        present = set().union(*(c.keys() for _, c in rows))
        for req in REQUIRED_COLUMNS:
            if req not in present:
                raise ManifestError(
                    f"missing required key {req!r}"
                    f"{did_you_mean(req, sorted(present), cutoff=0.5, ignore_case=True, paren=True)}; "
                    f"keys found: {', '.join(sorted(present))}",
                    where=where,
                    fix=f"give every entry {', '.join(REQUIRED_COLUMNS)} ('image' is accepted for 'path'; "
                    "a top-level \"modality\" sets it for all entries)",
                )
    return keys, rows


def _resolve(rel: str, base: Path) -> Path:
    p = Path(rel).expanduser()
    if not p.is_absolute():
        p = base / p
    return p.resolve()  # follows symlinks and '..'; strict=False: missing files are fine here


def _register_path(p: Path, root: Path) -> None:
    """Register the path components under ``root`` with the PHI guard.

    A path outside the root (reported as ``path-escapes-root`` by validation) registers only its
    file name: registering every folder of an absolute path ("/data/...") would make the guard
    refuse any logged value containing "data".
    """
    try:
        p.relative_to(root)
    except ValueError:
        phi.REGISTRY.add(p.stem)
        return
    phi.register_path_parts(p, root)


def _make_record(row: int, cells: dict[str, str], *, base: Path, root: Path, manifest: str) -> tuple[Record, list[Problem]]:
    problems: list[Problem] = []
    relpath = cells.get("path", "")
    where = relpath or manifest
    if not relpath:
        problems.append(Problem(row, manifest, "the path cell is empty", "give the file of this sample", "empty-path"))
    path = _resolve(relpath, base) if relpath else base
    clear_id = cells.get("patient_id", "")
    if clear_id:
        patient = phi.pseudonymize(clear_id)  # registers the clear id with the PHI guard
    else:
        patient = ""
        problems.append(Problem(row, where, "the patient_id cell is empty",
                                "give every row its patient's id (splits and leakage checks are per patient)",
                                "empty-patient-id"))
    raw_mod = cells.get("modality", "")
    try:
        modality = canonical_modality(raw_mod)
    except ManifestError as e:
        modality = raw_mod.lower()
        problems.append(Problem(row, where, e.what if raw_mod else "the modality cell is empty", e.fix, "bad-modality"))
    try:
        split = canonical_split(cells.get("split", ""))
    except ManifestError as e:
        split = None
        problems.append(Problem(row, where, e.what, e.fix, "bad-split"))
    mask_rel = cells.get("mask") or None
    mask = _resolve(mask_rel, base) if mask_rel else None
    study = phi.pseudonymize(cells["study_id"], prefix="s") if cells.get("study_id") else None
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    extra = {k: v for k, v in cells.items() if k not in known}
    for p in (path, mask):
        if p is not None and relpath:
            _register_path(p, root)
    rec = Record(
        row=row, patient=patient, path=path, relpath=relpath, modality=modality,
        label=cells.get("label") or None, mask=mask, split=split, study=study,
        site=cells.get("site") or None, extra=extra, mask_relpath=mask_rel,
    )
    return rec, problems


# ----------------------------------------------------------------------------------------------
# labels


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


def label_problems(
    records: Sequence[Record],
    classes: Sequence[Any] | None = None,
    task: str = "multiclass",
    label_sep: str = ";",
) -> tuple[np.ndarray, list[str], list[Problem]]:
    """:func:`parse_labels` without raising: returns ``(y, classes, problems)``.

    Rows whose label is not in the class list get ``-1`` (a NaN row for multi-label) and a
    ``'label-not-in-classes'`` problem.
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
