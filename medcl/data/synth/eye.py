"""Fundus photographs and OCT B-scans of the same patients: the demo of multimodal fusion (``fuse`` stage).

* One set of patients (``DEMO-EYE-0001``, ...), each with OCT B-scans (:mod:`medcl.data.synth.oct`, 2–4 per
  patient) **and** fundus photographs (:mod:`medcl.data.synth.fundus`, 2–3 per patient) of the same eye; the rows
  carry the modality that reads them (``oct``, ``fundus``) and one patient-level label.
* Label = what the two examinations find together, ``CLASSES``: ``healthy``, ``amd`` (intermediate drusen, seen on
  the OCT, grade 2), ``dr`` (moderate or severe retinopathy, seen on the fundus photograph, grade 2 or 3) or
  ``amd_dr`` (both). OCT alone cannot tell ``healthy`` from ``dr``; the fundus photograph shows the retinopathy
  and, faintly, the drusen of AMD (``FUNDUS_DRUSEN`` pale deposits around the macula, as on real colour
  photographs): it gives weak evidence of AMD where the OCT gives strong evidence. A classifier needs both, which
  is what fusion is for; and the drusen the two examinations share are what lets a gate notice that an OCT does
  not belong with a photograph (another patient's scan: drusen on one, none on the other).
* About ``MISSING_SHARE`` of the patients lack one examination (half of them the OCT, half the fundus photograph),
  as in a real clinic: a fusion model has to classify them from what there is.
* Every image is the modality's own demo image (same nuisances, same reports), so the per-modality pipelines'
  augmentations and budgets apply unchanged. ``oct_grade`` and ``fundus_grade`` are written for reference.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medcl.data.synth import fundus as _fundus
from medcl.data.synth import oct as _oct
from medcl.data.synth.common import balanced_labels, make_patients, rng_for, sample_row

MODALITY = "oct"  # the first of the two modalities its rows carry (oct, fundus)
NAME = "eye"
CLASSES: tuple[str, ...] = ("healthy", "amd", "dr", "amd_dr")
TASK = "multiclass"
DEFAULT_PATIENTS = 160
DEFAULT_SIZE = 64
#: share of the patients with one examination missing
MISSING_SHARE = 0.1
#: soft drusen per fundus photograph of an AMD patient (min, max)
FUNDUS_DRUSEN = (3, 6)


def grades(label: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(OCT drusen grade, fundus retinopathy grade)`` of a patient of class index ``label`` (see module doc)."""
    amd, dr = label in (1, 3), label in (2, 3)
    return (2 if amd else 0), (int(rng.integers(2, 4)) if dr else 0)


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write the OCT and fundus images of ``patients`` linked patients under ``out_dir``; their manifest rows.

    Args:
        out_dir: the set's folder (``<out>/eye``): ``oct/images/*.png`` and ``fundus/images/*.png``.
        patients: number of patients (every class present when >= 4).
        seed: user seed.
        size: image side in pixels (default 64).

    Returns:
        One dict per image (paths relative to ``out_dir``): base columns (``modality`` ``oct`` or ``fundus``,
        ``label`` the patient's class), ``oct_grade``, ``fundus_grade``, ``report``; fundus rows also ``eye``.
    """
    size = int(size or DEFAULT_SIZE)
    labels = balanced_labels(patients, len(CLASSES), rng_for(seed, NAME, 2))
    latent = rng_for(seed, NAME, 3)
    n_missing = int(round(MISSING_SHARE * patients)) if patients >= 8 else 0
    missing = latent.choice(patients, size=n_missing, replace=False)
    lacks = {int(p): ("oct" if k % 2 == 0 else "fundus") for k, p in enumerate(missing)}
    rows: list[dict] = []
    for p in make_patients(NAME, patients, seed, labels):
        oct_grade, fundus_grade = grades(int(p.label), rng_for(seed, NAME, 4, p.index))
        label = CLASSES[int(p.label)]
        extras = {"oct_grade": str(oct_grade), "fundus_grade": str(fundus_grade)}
        for name, mod, grade in (("oct", _oct, oct_grade), ("fundus", _fundus, fundus_grade)):
            if lacks.get(p.index) == name:
                continue
            one = replace(p, label=grade, rng=rng_for(seed, NAME, 10 + (name == "fundus"), p.index))
            more = {"drusen": FUNDUS_DRUSEN} if name == "fundus" and oct_grade else {}
            for s in mod._patient(one, out_dir / name, size, seed, **more):
                row = sample_row(p, name, label, replace(s, path=f"{name}/{s.path}"))
                row.pop("grade", None)
                rows.append({**row, **extras, **{k: v for k, v in s.extras.items() if k != "grade"}})
    return rows
