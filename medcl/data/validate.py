"""Manifest validation: every row checked before training starts, one clear line per problem.

Modelled on nnU-Net's ``verify_dataset_integrity``, but it never stops at the first problem:
:func:`validate_manifest` returns every :class:`Problem` sorted by row, each printing as
``row N (path): what — fix`` with a stable ``code``:

============================ ===================================================================
code                         meaning
============================ ===================================================================
``empty-path``               the path cell is empty
``empty-patient-id``         the patient_id cell is empty
``bad-modality``             unknown modality, or not the pipeline's modality
``bad-split``                split value is not train/val/test
``path-escapes-root``        the file (after resolving ``..`` and symlinks) is outside the dataset root
``missing-file``             the file does not exist
``unreadable``               its reader cannot decode it (the reader's what/fix), image or mask
``bad-shape``                shape/channels wrong for the modality (e.g. a 2D PNG given as CT)
``nan-values``               NaN or Inf values in the array
``missing-mask``             the mask file does not exist (or no mask where one is required)
``mask-geometry``            mask spatial shape or affine differs from its image
``label-not-in-classes``     label not in the class list (did-you-mean)
``duplicate-row``            same file as an earlier row (the later row is reported)
``patient-in-two-splits``    one patient's rows are in two splits of the split column
``too-large``                the file decodes to more values than ``data.max_voxels`` allows
============================ ===================================================================

Reading every file can be slow: files are read in a thread pool (``workers``) with a rich
progress bar on a terminal; nothing is cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from medcl.data.manifest import (
    MODALITIES,
    Manifest,
    Problem,
    Record,
    canonical_modality,
    label_problems,
)
from medcl.errors import DataError, ReaderError
from medcl.modalities import IMAGE_2D, VOLUME_3D
from medcl.readers import detect_format, read

__all__ = [
    "Problem", "validate_manifest", "problems_to_json", "filter_records", "check_shape",
    "IMAGE_2D", "VOLUME_3D", "MIN_ECG_SAMPLES", "MAX_ECG_LEADS", "DEFAULT_MAX_VOXELS", "peek_voxels",
]

#: An ECG needs at least this many samples per lead (1 s at 100 Hz).
MIN_ECG_SAMPLES = 100
#: More leads than this is most likely a transposed ``(T, leads)`` array.
MAX_ECG_LEADS = 16
#: Smallest accepted spatial side of an image or volume (in pixels/voxels).
MIN_SIDE = 4
#: A reader's error text about NaN/Inf values (reported as ``nan-values``, not ``unreadable``).
_NONFINITE = re.compile(r"\bNaN\b|\binfinite values\b")
#: Tolerance on the image vs mask affine (mm): ``np.allclose(a, b, rtol, atol)``.
AFFINE_RTOL, AFFINE_ATOL = 1e-4, 1e-3
#: Default of ``data.max_voxels``: values per sample (channels × voxels), 2 GiB as float32.
DEFAULT_MAX_VOXELS = 2**29


def peek_voxels(path: Path) -> int | None:
    """How many values (channels × voxels) a file decodes to, read from its header only.

    Used to refuse a file too large for the memory setting *before* decoding it. Covers NIfTI,
    NRRD, DICOM (single files and series folders) and PNG/JPEG/TIFF images; ``None`` when the
    size cannot be told cheaply (signals, whole-slide images — read at a small level — or a
    header the reader will reject anyway).
    """
    try:
        fmt = detect_format(path)
        if fmt == "nifti":
            import nibabel as nib

            return int(np.prod(nib.load(str(path)).shape, dtype=np.int64))
        if fmt == "nrrd":
            import nrrd

            return int(np.prod(nrrd.read_header(str(path))["sizes"], dtype=np.int64))
        if fmt in ("dicom", "dicom_series"):
            import pydicom

            files = [p for p in sorted(path.iterdir()) if p.is_file()] if path.is_dir() else [path]
            if not files:
                return None
            ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            per_file = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(
                ds.get("NumberOfFrames", 1) or 1)
            return per_file * len(files)
        if fmt == "image":
            from PIL import Image

            with Image.open(path) as im:
                return int(im.width) * int(im.height) * len(im.getbands()) * int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader itself
        return None
    return None


def _too_large(n: int, max_voxels: int) -> tuple[str, str]:
    gib = n * 4 / 2**30
    size = f"{gib:.2f} GiB" if gib >= 0.01 else f"{n * 4 / 2**10:.0f} KiB"
    return (f"too large for the memory setting: {n:,} values ({size} as float32), more than "
            f"data.max_voxels = {max_voxels:,}",
            "raise data.max_voxels (`medcl data validate --max-voxels N`) if the machine has the memory, "
            "or crop/downsample the file")


def check_shape(shape: Sequence[int], modality: str) -> tuple[str, str] | None:
    """Is a channel-first array shape sane for a modality? Pure function.

    Args:
        shape: the reader's array shape, ``(C, H, W)``, ``(C, X, Y, Z)`` or ``(leads, T)``.
        modality: one of :data:`~medcl.data.manifest.MODALITIES`.

    Returns:
        ``None`` if fine, else ``(what, fix)``.
    """
    shape = tuple(int(s) for s in shape)
    if modality in IMAGE_2D:
        if len(shape) != 3:
            return (f"{modality} image has shape {shape}; expected a 2D image (C, H, W)",
                    "give a single 2D image per row (one B-scan / photograph / tile)")
        c, h, w = shape
        if c not in (1, 3):
            return (f"{modality} image has {c} channels (shape {shape}); expected 1 or 3",
                    "save it as grayscale or RGB (drop alpha or extra channels)")
        if modality == "fundus" and c != 3:
            return (f"fundus photograph has {c} channel (shape {shape}); colour fundus photographs are RGB",
                    "give the colour (RGB) photograph, or use modality oct/histo if this is not a fundus photo")
        if min(h, w) < MIN_SIDE:
            return (f"{modality} image is only {h}×{w} pixels", f"give images of at least {MIN_SIDE}×{MIN_SIDE}")
        return None
    if modality in VOLUME_3D:
        if len(shape) == 3:
            return (f"{modality} expects a 3D volume but the file is a 2D image (shape {shape})",
                    "give the whole volume (NIfTI, NRRD or a DICOM series folder), not a single slice")
        if len(shape) != 4:
            return (f"{modality} volume has shape {shape}; expected (1, X, Y, Z)",
                    "give one 3D volume per row")
        if shape[0] != 1:
            return (f"{modality} volume has {shape[0]} channels (shape {shape}); expected 1",
                    "give one sequence/series per row (one row per MRI sequence)")
        if min(shape[1:]) < 2:
            return (f"{modality} volume has a single slice (shape {shape}); a 3D volume is expected",
                    "give the whole volume, not a single slice")
        if min(shape[1:]) < MIN_SIDE and max(shape[1:]) < MIN_SIDE:
            return (f"{modality} volume is only {shape[1:]} voxels", "give a real volume")
        return None
    if modality == "ecg":
        if len(shape) != 2:
            return (f"ECG has shape {shape}; expected (leads, T)", "give one recording per row")
        leads, t = shape
        if leads > MAX_ECG_LEADS:
            hint = " — it looks transposed (T, leads)" if t <= MAX_ECG_LEADS else ""
            return (f"ECG has {leads} leads (shape {shape}){hint}; at most {MAX_ECG_LEADS} are expected",
                    "store the signal as (leads, T)")
        if t < MIN_ECG_SAMPLES:
            return (f"ECG has only {t} samples per lead; at least {MIN_ECG_SAMPLES} are needed",
                    "check the record is complete (header and signal files)")
        return None
    return None  # unknown modality: reported as bad-modality elsewhere


def _escape_problem(rec: Record, root: Path) -> Problem | None:
    """``path-escapes-root`` if the file or its mask resolves outside ``root`` (``..`` and symlinks resolved)."""
    for p, rel, what in ((rec.path, rec.relpath, "the file"), (rec.mask, rec.mask_relpath, "the mask")):
        if p is None:
            continue
        try:
            p.relative_to(root)
        except ValueError:
            return Problem(rec.row, rec.relpath, f"{what} {rel!r} resolves to {p}, outside the dataset root {root}",
                           "move it under the dataset root (symlinks and '..' are resolved), or set the root",
                           "path-escapes-root")
    return None


def _check_row(rec: Record, modality: str, root: Path, read: Callable[..., Any], require_mask: bool,
               max_voxels: int | None = None, options: dict[str, Any] | None = None) -> list[Problem]:
    """File checks for one row (runs in a worker thread); ``options`` go to the image's read (not the mask's)."""
    out: list[Problem] = []
    where = rec.relpath

    def add(what: str, fix: str, code: str) -> None:
        out.append(Problem(rec.row, where, what, fix, code))

    escape = _escape_problem(rec, root)
    if escape is not None:
        return [escape]  # never open a file outside the dataset root
    if not rec.path.exists():
        add("file does not exist", "check the path (relative paths are resolved against the manifest's folder)",
            "missing-file")
        return out
    if max_voxels:
        n = peek_voxels(rec.path)
        if n is not None and n > max_voxels:
            add(*_too_large(n, max_voxels), "too-large")
            return out  # never decode it: that is what could exhaust the memory
    image = None
    try:
        image = read(rec.path, modality=modality if modality in MODALITIES else None, **(options or {}))
    except ReaderError as e:
        # the readers reject NaN/Inf themselves ("3 NaN and 0 infinite values out of …")
        code = "nan-values" if _NONFINITE.search(e.what) else "unreadable"
        add(e.what, e.fix or "re-export the file", code)
    except Exception as e:  # a reader bug must not abort the whole validation
        add(f"reader failed: {type(e).__name__}: {e}", "re-export the file; if it opens elsewhere, report a medcl bug",
            "unreadable")
    if image is not None:
        arr = np.asarray(image.array)
        if max_voxels and arr.size > max_voxels:
            add(*_too_large(int(arr.size), max_voxels), "too-large")
        bad = check_shape(arr.shape, modality)
        if bad:
            add(*bad, "bad-shape")
        if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
            n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if n_bad:
                add(f"{n_bad} of {arr.size} values are NaN or Inf",
                    "re-export the file without NaN/Inf (e.g. fill with the background value)", "nan-values")
    out.extend(_check_mask(rec, image, read, require_mask))
    return out


def _check_mask(rec: Record, image: Any, read: Callable[..., Any], require_mask: bool) -> list[Problem]:
    """Mask checks for one row: given when required, readable, and on the image's grid.

    Args:
        rec: the row.
        image: the row's image as read (a reader ``Sample``), or None when it could not be read
            (then only the mask's own readability is checked).
        read: the reader.
        require_mask: a missing mask is a problem (segmentation tasks).

    Returns:
        The problems, in the order found (``missing-mask``, ``unreadable``, ``bad-shape``,
        ``mask-geometry``).
    """
    out: list[Problem] = []
    where = rec.relpath

    def add(what: str, fix: str, code: str) -> None:
        out.append(Problem(rec.row, where, what, fix, code))

    if rec.mask is None:
        if require_mask:
            add("no mask given", "give a mask for every row of a segmentation task", "missing-mask")
        return out
    mrel = rec.mask_relpath
    if not rec.mask.exists():
        add(f"mask {mrel!r} does not exist", "check the mask path (relative to the manifest's folder)", "missing-mask")
        return out
    try:
        mask = read(rec.mask)
    except ReaderError as e:
        add(f"mask {mrel!r}: {e.what}", e.fix or "re-export the mask", "unreadable")
        return out
    except Exception as e:
        add(f"mask {mrel!r}: reader failed: {type(e).__name__}: {e}", "re-export the mask", "unreadable")
        return out
    if image is None:
        return out
    ishape, mshape = tuple(np.shape(image.array)), tuple(np.shape(mask.array))
    if len(ishape) != len(mshape):
        add(f"mask {mrel!r} has shape {mshape} but the image has shape {ishape}",
            "give a mask with the image's dimensions", "mask-geometry")
        return out
    if mshape[0] != 1:
        add(f"mask {mrel!r} has {mshape[0]} channels (shape {mshape}); a mask is a single-channel label map",
            "save the mask as one channel of integer labels (0 = background)", "bad-shape")
    if ishape[1:] != mshape[1:]:
        add(f"mask {mrel!r} spatial shape {mshape[1:]} differs from the image's {ishape[1:]}",
            "give the mask of this image, resampled to the image grid", "mask-geometry")
        return out
    ia, ma = image.meta.get("affine"), mask.meta.get("affine")
    if ia is not None and ma is not None:
        ia, ma = np.asarray(ia, dtype=float), np.asarray(ma, dtype=float)
        if ia.shape != ma.shape or not np.allclose(ia, ma, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(ia - ma))) if ia.shape == ma.shape else float("inf")
            add(f"mask {mrel!r} affine differs from the image's (max difference {diff:.4g} mm)",
                "resample the mask onto the image grid (same origin, spacing and direction)", "mask-geometry")
    return out


def progress_bar(enabled: bool | None, label: str = "validating"):
    """A rich progress bar on stderr, shown on a terminal (``enabled=None``) or when asked."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    disable = (not console.is_terminal) if enabled is None else not enabled
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=disable, transient=True)


def row_reader_options(record: Record, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reader options of one manifest row: ``base`` plus the row's ``series`` column when it has one.

    ``series`` chooses one series of a DICOM folder that holds several: its index (as
    :func:`medcl.readers.list_series` numbers them) or its SeriesInstanceUID.
    """
    opts = dict(base or {})
    value = str(record.extra.get("series", "") or "").strip()
    if value:
        opts["series"] = int(value) if value.isdigit() else value
    return opts


def validate_manifest(
    manifest: Manifest,
    *,
    classes: Sequence[Any] | None = None,
    task: str | None = None,
    check_files: bool = True,
    modality: str | None = None,
    root: str | Path | None = None,
    workers: int = 1,
    label_sep: str = ";",
    require_mask: bool = False,
    progress: bool | None = None,
    max_voxels: int | None = None,
    reader_options: dict[str, Any] | None = None,
) -> list[Problem]:
    """Check every row of a manifest and return all problems, sorted by row.

    Args:
        manifest: from :func:`~medcl.data.manifest.load_manifest`.
        classes: class list; with ``task``, labels are checked against it (inferred if ``None``).
            Labels are checked only when ``classes`` or ``task`` is given.
        task: label task (``multiclass``, ``binary``, ``multilabel``, ``ordinal``).
        check_files: read every file (existence, reader, shape, NaN, mask); ``False`` checks the
            table only (paths escaping the root, duplicates, labels, splits).
        modality: the pipeline's modality; rows of another modality are ``bad-modality``.
        root: dataset root (default ``manifest.root``); no file may resolve outside it.
        workers: reader threads.
        label_sep: multi-label separator.
        require_mask: every row needs a mask (segmentation).
        progress: show a progress bar (default: only on a terminal).
        max_voxels: largest number of values (channels × voxels) a file may decode to; larger
            ones are ``too-large`` problems, found from the header before decoding where possible
            (``None``: no limit).
        reader_options: keyword options of every read (``data.reader_options`` of a pipeline), with each row's own
            (:func:`row_reader_options`: a ``series`` column) on top — files are read as training will read them.

    Returns:
        Problems sorted by row (row 0 — whole-manifest problems — first).
    """
    problems: list[Problem] = list(manifest.problems)
    records = manifest.records
    root_path = Path(root).expanduser().resolve() if root is not None else Path(manifest.root).resolve()
    want = canonical_modality(modality, where="data.modality") if modality else None

    if want:
        for r in records:
            if r.modality in MODALITIES and r.modality != want:
                problems.append(Problem(r.row, r.relpath, f"modality {r.modality!r} but this pipeline is {want!r}",
                                        f"remove the row or give a manifest of {want} data only", "bad-modality"))

    todo = [r for r in records if r.relpath]
    if check_files and todo:
        with progress_bar(progress) as bar, ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            task_id = bar.add_task("validating", total=len(todo))
            futures = [pool.submit(_check_row, r, r.modality, root_path, read, require_mask, max_voxels,
                                   row_reader_options(r, reader_options)) for r in todo]
            for fut in as_completed(futures):
                problems.extend(fut.result())
                bar.advance(task_id)
    else:
        problems.extend(p for p in (_escape_problem(r, root_path) for r in todo) if p is not None)

    if classes is not None or task is not None:
        _, _, label_probs = label_problems(records, classes, task or "multiclass", label_sep)
        problems.extend(label_probs)

    problems.extend(_duplicates(records))
    problems.extend(_split_conflicts(records))
    # stable sort: within a row, the order of the checks above
    return sorted(problems, key=lambda p: p.row)


def _row_key(r: Record) -> tuple:
    return tuple(getattr(r, f.name) for f in fields(r) if f.name not in ("row", "extra")) + (
        tuple(sorted(r.extra.items())),)


def _duplicates(records: Sequence[Record]) -> list[Problem]:
    out: list[Problem] = []
    first_by_path: dict[Path, Record] = {}
    for r in records:
        if not r.relpath:
            continue
        prev = first_by_path.get(r.path)
        if prev is None:
            first_by_path[r.path] = r
            continue
        if _row_key(prev) == _row_key(r):
            what = f"duplicate of row {prev.row} (identical row)"
        else:
            what = f"same file as row {prev.row}"
            if prev.patient != r.patient:
                what += " but a different patient"
        out.append(Problem(r.row, r.relpath, what, f"remove this row or fix the path (row {prev.row} is kept)",
                           "duplicate-row"))
    return out


def _fmt_rows(rows: Sequence[int]) -> str:
    shown = ", ".join(str(x) for x in rows[:8])
    return f"row{'s' if len(rows) > 1 else ''} {shown}{' …' if len(rows) > 8 else ''}"


def _split_conflicts(records: Sequence[Record]) -> list[Problem]:
    by_patient: dict[str, dict[str, list[Record]]] = {}
    for r in records:
        if r.patient and r.split:
            by_patient.setdefault(r.patient, {}).setdefault(r.split, []).append(r)
    out: list[Problem] = []
    for patient, splits in by_patient.items():
        if len(splits) < 2:
            continue
        order = sorted(splits, key=lambda s: splits[s][0].row)  # splits in order of first appearance
        first = order[0]
        for other in order[1:]:
            # every row of the later split is reported, so that skipping them removes the leak
            what = (f"patient {patient} is in {first} ({_fmt_rows([x.row for x in splits[first]])}) "
                    f"and {other} ({_fmt_rows([x.row for x in splits[other]])})")
            for at in splits[other]:
                out.append(Problem(
                    at.row, at.relpath, what,
                    "put all rows of a patient in one split (or clear the split column to let medcl split by patient)",
                    "patient-in-two-splits"))
    return out


def problems_to_json(problems: Sequence[Problem]) -> str:
    """JSON list of problems (fields plus the formatted ``line``), indented."""
    return json.dumps([p.to_dict() for p in problems], indent=2, ensure_ascii=False)


def filter_records(manifest: Manifest, problems: Sequence[Problem]) -> tuple[list[Record], list[dict[str, Any]]]:
    """Drop the rows that have problems (``data.on_error: skip``).

    Args:
        manifest: the manifest validated.
        problems: from :func:`validate_manifest`.

    Returns:
        ``(kept, excluded)``: kept records in file order, and one JSON-ready dict per excluded
        row: ``{"row", "patient" (pseudonymised), "path" (as written), "codes", "problems"
        (lines)}`` — for logging as an artifact.

    Raises:
        DataError: a whole-manifest problem (row 0) that skipping rows cannot fix.
    """
    global_probs = [p for p in problems if p.row == 0]
    if global_probs:
        raise DataError(global_probs[0].what, where=global_probs[0].path, fix=global_probs[0].fix)
    by_row: dict[int, list[Problem]] = {}
    for p in problems:
        by_row.setdefault(p.row, []).append(p)
    kept: list[Record] = []
    excluded: list[dict[str, Any]] = []
    for r in manifest.records:
        probs = by_row.get(r.row)
        if not probs:
            kept.append(r)
            continue
        excluded.append({
            "row": r.row, "patient": r.patient, "path": r.relpath,
            "codes": sorted({p.code for p in probs}), "problems": [p.line() for p in probs],
        })
    return kept, excluded

