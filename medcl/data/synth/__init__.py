"""Embedded demo-data synthesiser: small, realistic-format data sets for all six modalities.

``synthesize(out_dir)`` writes, per modality, real files with the reference libraries
(PNG via Pillow, pyramidal TIFF via tifffile, DICOM via pydicom, NIfTI via nibabel, WFDB via wfdb)
and a manifest, then a combined manifest and a README::

    <out>/manifest.csv               all requested modalities, paths relative to <out>
    <out>/README.md                  what the set contains (classes, task, counts, files)
    <out>/<modality>/manifest.csv    one row per sample, paths relative to <out>/<modality>
    <out>/<modality>/...             the files (see each module's docstring)

Manifest columns: ``patient_id, path, modality, label, mask, study_id, site, sex, age_group``
then modality extras. ``label`` is the class name (one of the module's ``CLASSES``) for binary,
multi-class and ordinal tasks, so the shipped pipelines (whose ``data.classes`` are these names) run on
a synthesised manifest as it is; OCT and fundus also have the numeric ``grade`` (the index into
``CLASSES``). The multi-label ECG task has ``;``-separated class names (``NORM`` is exclusive).

The data are designed like a real acquisition (DESIGN.md, "Demo data that shows what pretraining
buys"): nuisance variation that augmentations cover is large, the class signal is small but survives
them. Output is bit-identical for the same seed, and one modality's files do not depend on which
other modalities were requested.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

from medcl.data.synth import ct as _ct
from medcl.data.synth import cytology as _cytology
from medcl.data.synth import ecg as _ecg
from medcl.data.synth import eye as _eye
from medcl.data.synth import fundus as _fundus
from medcl.data.synth import fundus_lt as _fundus_lt
from medcl.data.synth import histo as _histo
from medcl.data.synth import histo_wsi as _histo_wsi
from medcl.data.synth import mri as _mri
from medcl.data.synth import oct as _oct
from medcl.data.synth.common import write_csv
from medcl.errors import DataError
from medcl.lookup import look_up

__all__ = ["EXTRA_SETS", "SYNTHESISERS", "synthesize", "write_csv"]

#: modality -> module with ``CLASSES``, ``TASK``, ``DEFAULT_PATIENTS``, ``DEFAULT_SIZE`` and
#: ``synthesize(out_dir, *, patients, seed, size) -> list[dict]`` (rows with paths relative to out_dir),
#: each a thin call of :func:`medcl.data.synth.common.write_patients` with the module's patient writer.
SYNTHESISERS: dict[str, ModuleType] = {
    "oct": _oct,
    "fundus": _fundus,
    "histo": _histo,
    "ct": _ct,
    "mri": _mri,
    "ecg": _ecg,
}

#: further demo sets, written only when named (``--modalities cytology``); their rows carry the modality that
#: reads them (cytology tiles are ``histo``)
EXTRA_SETS: dict[str, ModuleType] = {
    "cytology": _cytology,
    "histo-wsi": _histo_wsi,
    "eye": _eye,
    "fundus-lt": _fundus_lt,
}

_MARKER = ".medcl-synth"


def _lookup(name: str) -> ModuleType:
    return look_up(name, {**SYNTHESISERS, **EXTRA_SETS}, what="modality or demo set",
                   where="synthesize(modalities=...)", error=DataError, verb="choose from",
                   normalize=lambda s: s.strip().lower())


def _per_modality(value, modality: str, default: int | None, what: str) -> int | None:
    if isinstance(value, Mapping):
        value = value.get(modality, default)
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise DataError(
            f"{what} must be a positive integer, got {value!r}",
            where=f"synthesize({what}=...) for {modality}",
            fix=f"pass a whole number >= 1 (e.g. {what}={default or 8})",
        )
    return n


def _prepare(folder: Path) -> None:
    """Empty a folder this synthesiser wrote before; refuse to touch anything else."""
    if folder.exists():
        if not folder.is_dir():
            raise DataError(
                "exists and is not a folder", where=str(folder), fix="choose another --out folder"
            )
        if any(folder.iterdir()):
            if not (folder / _MARKER).is_file():
                raise DataError(
                    "folder is not empty and was not written by `medcl data synth`",
                    where=str(folder),
                    fix="choose an empty or new --out folder (medcl never deletes files it did not write)",
                )
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _MARKER).write_text("written by medcl.data.synth; safe to delete\n", encoding="utf-8")


def synthesize(
    out_dir: str | Path,
    modalities: Iterable[str] | str | None = None,
    patients: int | Mapping[str, int] | None = None,
    seed: int = 0,
    size: int | Mapping[str, int] | None = None,
) -> Path:
    """Write the demo data set and return the path of the combined manifest.

    Args:
        out_dir: output folder (created). A modality folder inside it is replaced only if an
            earlier run of this function wrote it.
        modalities: names from :data:`SYNTHESISERS` or :data:`EXTRA_SETS` (a list or a comma-separated string);
            None writes the six modalities.
        patients: patients per modality — one int for all, a ``{modality: n}`` mapping, or None
            for each module's ``DEFAULT_PATIENTS``.
        seed: the seed; the same seed writes bit-identical files.
        size: image side in pixels — OCT/fundus images, histopathology tiles, CT/MRI in-plane
            matrix (``{modality: n}`` or one int; None keeps each module's ``DEFAULT_SIZE``).

    Returns:
        ``<out_dir>/manifest.csv``.

    Raises:
        DataError: unknown modality, non-positive counts, or an output folder medcl did not write.
    """
    out = Path(out_dir)
    if isinstance(modalities, str):
        modalities = [m for m in modalities.split(",") if m.strip()]
    names = list(SYNTHESISERS) if modalities is None else [m.strip().lower() for m in modalities]
    if not names:
        raise DataError("no modality requested", where="synthesize(modalities=...)",
                        fix=f"name at least one of {', '.join(SYNTHESISERS)}")
    mods = {n: _lookup(n) for n in dict.fromkeys(names)}
    plan = {
        n: (_per_modality(patients, n, m.DEFAULT_PATIENTS, "patients"), _per_modality(size, n, m.DEFAULT_SIZE, "size"))
        for n, m in mods.items()
    }
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", where=str(out), fix="choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)

    combined: list[dict] = []
    summary: list[tuple[str, ModuleType, int, list[dict]]] = []
    for name, mod in mods.items():
        n_pat, side = plan[name]
        folder = out / name
        _prepare(folder)
        rows = mod.synthesize(folder, patients=n_pat, seed=int(seed), size=side)
        write_csv(folder / "manifest.csv", rows)
        for r in rows:
            c = dict(r)
            c["path"] = f"{name}/{r['path']}"
            if r.get("mask"):
                c["mask"] = f"{name}/{r['mask']}"
            combined.append(c)
        summary.append((name, mod, n_pat, rows))
    manifest = write_csv(out / "manifest.csv", combined)
    (out / "README.md").write_text(_readme(summary, int(seed)), encoding="utf-8")
    return manifest


def _readme(summary, seed: int) -> str:
    lines = [
        "# medcl synthetic demo data",
        "",
        "Written by `medcl data synth` (medcl.data.synth) with seed "
        f"{seed}. Everything here is synthetic: patient names and IDs (`DEMO-...`) are fake but",
        "are treated as identifiers by medcl, exactly like real ones. The same seed rewrites",
        "bit-identical files.",
        "",
        "`manifest.csv` combines the modalities below (paths relative to this folder); each modality",
        "folder has its own `manifest.csv` (paths relative to that folder). `label` is the class",
        "name (multi-label ECG: `;`-separated class names, `NORM` exclusive); OCT and fundus also",
        "have the numeric `grade`.",
        "Sites (`site-a/b/c`) differ slightly in nuisance statistics; `sex` and `age_group` are",
        "balanced subgroups for fairness breakdowns.",
        "",
        "| modality | task | classes | patients | samples | files |",
        "|---|---|---|---|---|---|",
    ]
    files = {
        "oct": "8-bit greyscale PNG B-scans",
        "fundus": "8-bit RGB PNG photographs",
        "histo": "pyramidal JPEG-tiled TIFF slides (`slides/`, listed in `slides.csv`) and PNG tiles",
        "ct": "DICOM CT series (one folder per series) + NIfTI lesion masks",
        "mri": "NIfTI T2-like volumes + NIfTI lesion masks",
        "ecg": "12-lead WFDB records (.hea + .dat), mV",
        "cytology": "RGB PNG tiles of cytology-like smears, label per tile, malignant tiles rare (≤ 2 %)",
        "histo-wsi": "pyramidal TIFF slides, label per slide, tumour in 10–25 % of a tumour slide's tissue",
        "eye": "OCT B-scans and fundus photographs (PNG) of the same patients, one label per patient from both",
        "fundus-lt": "8-bit RGB PNG fundus photographs, grades long-tailed as in EyePACS (73 / 7 / 15 / 5 % of the "
                     "patients)",
    }
    for name, mod, n_pat, rows in summary:
        lines.append(
            f"| {name} | {mod.TASK} | {', '.join(mod.CLASSES)} | {n_pat} | {len(rows)} | {files[name]} |"
        )
    lines += ["", "## Modalities", ""]
    for name, mod, _, _ in summary:
        doc = (mod.__doc__ or "").strip()
        lines += [f"### {name}", "", doc, ""]
    return "\n".join(lines) + "\n"
