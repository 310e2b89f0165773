"""Fundus photographs of a screening population: the retinopathy grades long-tailed, as in a real clinic.

The demo of class-balanced contrastive learning (``supcon-balanced``, ``prototypes``): in diabetic-retinopathy
screening most eyes have no retinopathy and the other grades are rare. The shares are EyePACS's (Kaggle Diabetic
Retinopathy Detection, 2015, training set: 73.5 % no DR, 7.0 % mild, 15.1 % moderate, 4.5 % severe and proliferative
together). A SupCon loss over such batches is dominated by the frequent classes; the balanced variants exist to keep
the rare ones apart.

* The images are the ``fundus`` demo's (:mod:`medcl.data.synth.fundus`: same anatomy, lesions, sites and reports,
  modality ``fundus``, classes ``no_dr`` … ``severe``), so the fundus pipelines and presets apply unchanged.
* Patients per grade follow ``SHARES`` exactly (rounded, the remainder to ``no_dr``), in a seeded order; every
  grade has at least ``MIN_PER_CLASS`` patients so that each split can hold the rare ones.
* ``RARE``: the class whose AUROC the benchmark reports as the rare-class figure: ``mild``, rare (7 %) *and* the grade
  closest to the head class (a few red dots against none or one), i.e. the one a loss dominated by ``no_dr`` folds
  into it. The rarest grade, ``severe``, is the most distinct one (the most and largest lesions): on an earlier
  version of this set (66 / 20 / 9 / 5 %, ``severe`` as the rare class) every method separated it perfectly, so it
  could not tell the methods apart.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth import fundus as _fundus
from medcl.data.synth.common import rng_for, write_patients

MODALITY = "fundus"  # read and augmented as fundus photographs
NAME = "fundus-lt"
CLASSES: tuple[str, ...] = _fundus.CLASSES
TASK = _fundus.TASK
DEFAULT_PATIENTS = 400
DEFAULT_SIZE = _fundus.DEFAULT_SIZE
#: share of the patients per grade (no_dr, mild, moderate, severe): EyePACS's, rounded
SHARES: tuple[float, ...] = (0.73, 0.07, 0.15, 0.05)
MIN_PER_CLASS = 3
RARE = "mild"


def long_tailed_labels(n: int, shares: tuple[float, ...], rng: np.random.Generator,
                       min_per_class: int = MIN_PER_CLASS) -> list[int]:
    """``n`` class indices, ``round(share * n)`` of each class, in an order drawn from ``rng``.

    Every class but the first gets at least ``min_per_class``; class 0 takes the remainder.

    Raises:
        ValueError: ``n`` cannot hold ``min_per_class`` patients of every class.
    """
    counts = [max(min_per_class, int(round(s * n))) for s in shares[1:]]
    if sum(counts) + min_per_class > n:
        raise ValueError(f"{n} patients cannot hold {min_per_class} of each of {len(shares)} classes")
    labels = np.repeat(np.arange(len(shares)), [n - sum(counts), *counts])
    return [int(v) for v in rng.permutation(labels)]


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write the fundus PNGs of ``patients`` screening patients under ``out_dir``; their manifest rows.

    Args:
        out_dir: the set's folder (``<out>/fundus-lt``).
        patients: number of patients (at least ``MIN_PER_CLASS`` per grade, so >= 12).
        seed: user seed.
        size: image side in pixels (default 64).

    Returns:
        One dict per image (paths relative to ``out_dir``): base columns (modality ``fundus``), ``grade``, ``eye``,
        ``report``.
    """
    size = int(size or DEFAULT_SIZE)
    grades = long_tailed_labels(patients, SHARES, rng_for(seed, NAME, 2))
    rows = write_patients(NAME, CLASSES, out_dir, grades, seed, partial(_fundus._patient, size=size, seed=seed))
    for r in rows:
        r["modality"] = MODALITY
    return rows
