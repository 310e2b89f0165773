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

This module loads manifests; the row and problem types with the column vocabulary live in
:mod:`medcl.data.records` and label parsing in :mod:`medcl.data.labels`. All their public names
are re-exported here.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from medcl import phi
from medcl.data.labels import TASKS, label_problems, parse_labels
from medcl.data.records import (
    COLUMN_ALIASES,
    MODALITIES,
    MODALITY_ALIASES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SPLIT_ALIASES,
    SPLITS,
    Manifest,
    Problem,
    Record,
    canonical_modality,
    canonical_split,
)
from medcl.errors import ManifestError
from medcl.lookup import did_you_mean

__all__ = [
    "COLUMN_ALIASES",
    "MODALITIES",
    "MODALITY_ALIASES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "SPLIT_ALIASES",
    "TASKS",
    "Manifest",
    "Problem",
    "Record",
    "canonical_modality",
    "canonical_split",
    "label_problems",
    "load_manifest",
    "parse_labels",
]

#: File suffixes that make a MONAI datalist ``label`` a segmentation mask rather than a class.
_MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".dcm", ".mha", ".mhd")


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
    found = [h.strip() for h in header if h.strip()]
    if len(found) == 1 and any(req not in names for req in REQUIRED_COLUMNS):
        sep = next((name for ch, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")) if ch in found[0]), None)
        if sep:
            raise ManifestError(f"the header is one column {found[0]!r}: the file is separated by {sep}, not commas",
                                where=where, fix="save it as comma-separated CSV (Excel: 'CSV UTF-8 (comma "
                                "delimited)'), or give a tab-separated file the suffix .tsv")
    for req in REQUIRED_COLUMNS:
        if req not in names:
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
    """Parse CSV text into ``(columns, [(row, {column: cell})])``.

    Rows are numbered from 1 after the header; blank lines are skipped but still counted so that
    row numbers match the file. Short rows are padded with empty cells; cells are stripped.
    """
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
    """``rel`` (``~`` expanded) made absolute against ``base`` and resolved."""
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
    """Turn the cells of one row into a :class:`Record`, reporting (not raising) what is wrong.

    The patient and study ids are pseudonymised here, and the path components under ``root``
    registered with the PHI guard.

    Args:
        row: 1-based data row.
        cells: ``{canonical column: stripped cell}``.
        base: folder that relative paths are resolved against (the manifest's).
        root: dataset root.
        manifest: the manifest path as given, for problems about a row without a path.

    Returns:
        ``(record, problems)``: problems are ``empty-path``, ``empty-patient-id``,
        ``bad-modality`` and ``bad-split``.
    """
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
