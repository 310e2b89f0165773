"""What a manifest is made of: the vocabulary of its columns, its rows and their problems.

* the canonical modality and split names and their accepted spellings
  (:func:`canonical_modality`, :func:`canonical_split`);
* the required and optional columns;
* :class:`Record` (one row, patient id already pseudonymised), :class:`Problem` (one thing wrong
  with one row, reported rather than raised) and :class:`Manifest` (a loaded file).

Loading lives in :mod:`medcl.data.manifest`, label parsing in :mod:`medcl.data.labels`; both
re-export these names through :mod:`medcl.data.manifest`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medcl.errors import ManifestError
from medcl.lookup import did_you_mean
from medcl.modalities import MODALITIES

#: Canonical modality names (lower case).

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
        """Number of records (non-empty data rows)."""
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        """The records in file order."""
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
        """A pandas DataFrame, one row per record, with pseudonymised patient ids only.

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
