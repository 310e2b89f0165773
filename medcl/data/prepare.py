"""From a pipeline's ``data:`` section to checked records, labels and a patient-level split.

This is the first thing every ``medcl run`` does, before any model is built: read the
manifest, validate every row, stop (or, with ``data.on_error: skip``, exclude and list) bad
rows, parse labels, and split by patient with a leakage check.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.data.manifest import label_problems, load_manifest
from medcl.data.splits import check_leakage, load_split, make_splits, split_summary
from medcl.data.validate import filter_records, row_reader_options, validate_manifest
from medcl.data.wsi_plans import not_slides, plan_slides
from medcl.errors import ConfigError, DataError, SplitError
from medcl.lookup import did_you_mean
from medcl.text.deid import register_found_names, scrub

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    """Everything the stages need to know about the data (no clear patient identifiers).

    Attributes:
        records: kept manifest records, in manifest order.
        excluded: problems of the rows that were excluded (``data.on_error: skip``).
        y: labels aligned with ``records`` — int64 ``(N,)`` (-1 unlabelled) or float ``(N, K)``.
        classes: class names in index order.
        task: the label task.
        assignment: pseudonymised patient → ``train``/``val``/``test``.
        patient_index: pseudonymised patient → int (for patient-aware positives).
    """

    records: list[Any]
    excluded: list[Any]
    y: np.ndarray
    classes: list[str]
    task: str
    assignment: dict[str, str]
    patient_index: dict[str, int]
    manifest_path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    tiles: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # manifest row of a slide -> its tiles
    report_column: str | None = None  # the column holding de-identified report text (None: no reports)
    no_report: list[int] = field(default_factory=list)  # manifest rows whose report cell is empty

    def text_columns(self) -> tuple[str, ...]:
        """Free-text columns: never subgroups, never logged."""
        return (self.report_column,) if self.report_column else ()

    def reports(self, idx: np.ndarray) -> list[str]:
        """The de-identified report of each position in ``idx`` ('' where a row has none)."""
        col = self.report_column
        return [str(self.records[i].extra.get(col) or "") if col else "" for i in idx]

    def indices(self, split: str | None = None, labelled: bool = False) -> np.ndarray:
        """Positions in ``records`` of one split (all when ``None``), optionally labelled only."""
        idx = [i for i, r in enumerate(self.records) if split is None or self.assignment.get(r.patient) == split]
        out = np.asarray(idx, dtype=np.int64)
        if labelled and len(out):
            out = out[self.labelled_mask()[out]]
        return out

    def labelled_mask(self) -> np.ndarray:
        """``(N,)`` bool over ``records``: True where the row has a label (no NaN / not ``-1``)."""
        if self.y.ndim == 2:
            return ~np.isnan(self.y).any(axis=1)
        return self.y >= 0

    def record_ids(self) -> np.ndarray:
        """``(N,)`` int64 recording of each row.

        Rows with the same ``record`` manifest column (within a patient) share one id; without the column every
        row is its own recording (its position).
        """
        if not any("record" in r.extra for r in self.records):
            return np.arange(len(self.records), dtype=np.int64)
        ids: dict[tuple[str, str], int] = {}
        out = np.empty(len(self.records), dtype=np.int64)
        for i, r in enumerate(self.records):
            value = str(r.extra.get("record") or "").strip()
            key = (r.patient, value) if value else ("", f"row-{i}")  # an empty cell: a recording of its own
            out[i] = ids.setdefault(key, len(ids))
        return out

    def items(self, split: str | None = None, labelled: bool = False) -> list[dict[str, Any]]:
        """Dataset items (dicts of path strings and ints) for MONAI datasets.

        Each item: ``image``, ``label``, ``patient`` (int), ``index`` (position in ``records``), ``record``
        (:meth:`record_ids`: the recording, for CLOCS's ``positives: record``) and ``mask`` when the row has one.
        A slide row (one with a tiling plan, :attr:`tiles`) gives one item per tile, each with the slide's label,
        patient, ``index`` and ``record`` and a ``region`` ``[x, y, level, size, tile_size]`` to read.
        """
        out = []
        records = self.record_ids()
        for i in self.indices(split, labelled):
            r = self.records[i]
            lab = self.y[i]
            base: dict[str, Any] = {
                "image": str(r.path),
                "label": lab.astype(np.float32) if self.y.ndim == 2 else int(lab),
                "patient": self.patient_index[r.patient],
                "index": int(i),
                "record": int(records[i]),
            }
            if r.mask is not None:
                base["mask"] = str(r.mask)
            series = row_reader_options(r).get("series")
            if series is not None:
                base["series"] = series
            plan = self.tiles.get(r.row)
            if plan is None:
                out.append(base)
                continue
            out.extend({**base, "region": [t["x"], t["y"], t["level"], t["size"], t["tile_size"]]} for t in plan)
        return out

    def patients_of(self, idx: np.ndarray) -> np.ndarray:
        """Integer patient index (into ``patient_index``) of each position in ``idx``, int64 ``(len(idx),)``."""
        return np.asarray([self.patient_index[self.records[i].patient] for i in idx], dtype=np.int64)

    def column(self, name: str, idx: np.ndarray) -> np.ndarray:
        """A manifest column (``site`` or an extra column) for the given positions; '' when absent."""
        vals = []
        for i in idx:
            r = self.records[i]
            v = getattr(r, name, None) if name in ("site",) else r.extra.get(name)
            vals.append("" if v is None else str(v))
        return np.asarray(vals, dtype=object)


def reader_options(cfg: Any) -> dict[str, Any]:
    """The reader options of every file of a pipeline: ``data.reader_options``, then ``transforms.reader_options``."""
    extra = cfg.transforms.model_extra or {}
    return {**dict(cfg.data.reader_options or {}), **dict(extra.get("reader_options") or {})}


def _relabel(manifest: Any, column: str) -> list[Any]:
    """Take labels from another manifest column (``data.label_column``)."""
    import dataclasses

    col = column.strip().lower()
    found = sorted({k for r in manifest.records for k in r.extra})
    if col not in found:
        raise ConfigError(f"the manifest has no column {column!r}", where="data.label_column",
                          fix=did_you_mean(col, found)
                          + f"the columns besides the standard ones are: {', '.join(found) or '(none)'}")
    return [dataclasses.replace(r, label=(r.extra.get(col) or "").strip() or None) for r in manifest.records]


def _numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def _deidentify_reports(manifest: Any, column: str) -> tuple[str | None, list[int]]:
    """Replace every report cell by its de-identified text (:func:`medcl.text.deid.scrub`), in place.

    The manifest's patient ids are in the PHI registry by now (registered as the manifest was read), so they are
    scrubbed with the names, dates and numbers. The clear text is not kept anywhere.

    Returns:
        ``(column, rows without a report)``, or ``(None, [])`` when no row has the column.
    """
    if not any(column in r.extra for r in manifest.records):
        return None, []
    missing, tags = [], Counter()
    register_found_names(str(r.extra.get(column) or "") for r in manifest.records)  # a name found once: everywhere
    for r in manifest.records:
        text = str(r.extra.get(column) or "").strip()
        if not text:
            missing.append(r.row)
            r.extra[column] = ""
            continue
        out = scrub(text)
        r.extra[column] = out.text
        tags.update(out.counts)
    log.info("reports (column %r): %d de-identified (%s), %d row(s) without a report%s", column,
             len(manifest.records) - len(missing), ", ".join(f"{k} ×{v}" for k, v in sorted(tags.items())) or
             "nothing to replace", len(missing), f": rows {_rows_text(missing)}" if missing else "")
    return column, missing


def _rows_text(rows: list[int], limit: int = 20) -> str:
    return ", ".join(map(str, rows[:limit])) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def prepare_data(cfg: Any, *, check_files: bool | None = None) -> DataBundle:
    """Load, validate, label and split the data of a pipeline config (see module docstring)."""
    d = cfg.data
    if not d.manifest:
        raise ConfigError("no manifest given", where="data.manifest",
                          fix="set data.manifest in the pipeline YAML or pass --set data.manifest=PATH")
    manifest = load_manifest(d.manifest, root=d.root)
    if d.label_column.lower() != "label":
        manifest.records = _relabel(manifest, d.label_column)
    if d.modality:
        other = [r for r in manifest.records if r.modality != d.modality]
        if other:
            log.info("keeping the %d %s rows of %d (other modalities are not part of this pipeline)",
                     len(manifest.records) - len(other), d.modality, len(manifest.records))
            manifest.records = [r for r in manifest.records if r.modality == d.modality]
    if not manifest.records:
        raise DataError(f"no {d.modality or ''} rows in the manifest", where=str(d.manifest),
                        fix="check data.modality and the manifest's modality column")
    report_col, no_report = _deidentify_reports(manifest, d.report_column)
    problems = validate_manifest(
        manifest, classes=d.classes, task=d.task,
        check_files=d.validate_files if check_files is None else check_files, modality=d.modality,
        max_voxels=d.max_voxels, reader_options=reader_options(cfg),
    )
    if d.modality in (None, "histo"):  # slide rows: a tiling plan each (a slide without one is a row problem)
        bad = {p.row for p in problems}
        plans, slide_problems = plan_slides([r for r in manifest.records if r.row not in bad], d.wsi, cfg.seed,
                                            Path(cfg.runtime.output_dir) / "wsi_plans",
                                            progress=None if cfg.runtime.progress else False)
        problems = [*problems, *slide_problems]
        if "slides" in getattr(cfg, "stages", []):  # a slide-level pipeline: every row must be a slide
            bad = {p.row for p in problems}
            problems += not_slides([r for r in manifest.records if r.row not in bad])
        problems = sorted(problems, key=lambda p: p.row)
    else:
        plans = {}
    excluded: list[Any] = []
    records = manifest.records
    if problems:
        if d.on_error == "stop":
            shown = "\n  ".join(p.line() for p in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(
                f"{len(problems)} problem(s) in the data:\n  {shown}{more}\n",
                where=str(d.manifest),
                fix="fix these rows (`medcl data validate MANIFEST` lists them all) or set data.on_error=skip "
                "to exclude them (they are then listed and logged)",
            )
        records, excluded = filter_records(manifest, problems)
        for e in excluded:
            log.warning("excluded: %s", "; ".join(e["problems"]))
        log.warning("excluding %d row(s) with problems (data.on_error=skip); the list is logged as "
                    "excluded_rows.json", len(excluded))
    if not records:
        raise DataError("every row was excluded", where=str(d.manifest), fix="fix the manifest rows listed above")
    y, classes, label_issues = label_problems(records, d.classes, d.task, d.label_sep)
    if label_issues:
        first = label_issues[0]
        more = f" ({len(label_issues)} rows in all; `medcl data validate` lists them)" if len(label_issues) > 1 else ""
        raise DataError(f"data.label_column={d.label_column!r}: {first.what}{more}", where=f"{d.manifest}, row {first.row}"
                        if first.row else str(d.manifest), fix=f"{first.fix}; or fix the labels or data.classes")
    if d.classes is None and d.task in ("binary", "ordinal") and len(classes) >= 2 and not _numeric(classes):
        log.warning("data.classes is not set: the %s classes were ordered alphabetically from the labels, %s — "
                    "so %r is %s; if that is wrong, list them in order in data.classes", d.task, classes,
                    classes[-1], "the positive class" if d.task == "binary" else "the highest grade")
    labels = None
    if y.ndim == 1 and (y >= 0).any():
        labels = y
    if d.split_file:
        assignment = _split_from_file(d.split_file, records)
    else:
        assignment = make_splits(records, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                                 seed=cfg.seed, stratify=d.stratify, labels=labels, class_names=classes)
    check_leakage(records, assignment)
    patient_index = {p: i for i, p in enumerate(sorted({r.patient for r in records}))}
    bundle = DataBundle(records=list(records), excluded=list(excluded), y=y, classes=list(classes), task=d.task,
                        assignment=assignment, patient_index=patient_index, manifest_path=Path(d.manifest),
                        tiles={r.row: plans[r.row] for r in records if r.row in plans}, report_column=report_col,
                        no_report=[r for r in no_report if r in {x.row for x in records}])
    bundle.summary = split_summary(records, assignment, labels)
    return bundle


def _split_from_file(path: str, records: list[Any]) -> dict[str, str]:
    """``data.split_file``: each patient's split from a ``split.csv`` medcl wrote.

    Raises:
        SplitError: the file cannot be read, or patients of the manifest are not in it.
    """
    saved = load_split(path)
    absent = sorted({r.row for r in records if r.patient not in saved})
    if absent:
        raise SplitError(f"{len(absent)} manifest row(s) belong to patients the split file does not list (rows "
                         f"{_rows_text(absent)})", where=f"data.split_file={path}",
                         fix="give the split.csv of a run on the same patients, or unset data.split_file to split "
                         "by patient afresh")
    return {p: saved[p] for p in sorted({r.patient for r in records})}


def check_splits(bundle: DataBundle, needs: dict[str, tuple[tuple[str, bool], ...]]) -> None:
    """Fail before any training when a stage would find a split it needs empty (e.g. no test patients).

    Args:
        bundle: the prepared data.
        needs: ``{stage: ((split, labelled), ...)}`` — what each stage to run declares
            (:attr:`medcl.stages.Stage.splits`).

    Raises:
        SplitError: naming the split, the stage that needs it and the patients per split.
    """
    counts = {s: len({r.patient for r in bundle.records if bundle.assignment.get(r.patient) == s}) for s in SPLITS}
    for stage, splits in needs.items():
        for split, labelled in splits:
            if len(bundle.indices(split, labelled=labelled)):
                continue
            per = ", ".join(f"{counts[s]} {s}" for s in SPLITS)
            kind = "labelled samples" if labelled else "samples"
            raise SplitError(
                f"the {split} split has no {kind} ({per} patients) but stage {stage} needs it",
                where="data",
                fix=(f"give some patients split={split} in the manifest, or clear its split column to let medcl split "
                     f"by patient (data.{split}_fraction)") if split != "train" else
                    "label more patients or lower data.val_fraction/test_fraction",
            )
