"""Cytology-like smears where malignant cells are rare: the demo of one-class detection (``detect`` stage).

The seed problem (Needle in a Haystack): in a cervical or effusion smear a few malignant cells hide among
thousands of normal ones, so a classifier sees almost no positives. medcl learns "normal" from normal tiles only
and scores how far a tile is from it.

* Tiles (``images/*.png``, RGB, ``DEFAULT_SIZE`` px): pale glass with scattered cells, each an eosin-stained
  cytoplasm with a haematoxylin nucleus (Beer–Lambert colour, :func:`medcl.data.synth.histo.stain`, so the
  ``histo`` preset and reader apply: the manifest's modality is ``histo``). Nuisance: per-patient stain and
  site hue, cell density, small dense lymphocytes and debris (dark but small: a confounder).
* ``malignant`` tiles hold one to three malignant cells: enlarged, irregular (elongated, lobed), hyperchromatic
  nuclei with a high nucleus-to-cytoplasm ratio, next to normal cells. ``normal`` tiles hold normal cells only.
* Rarity: about a third of the patients have malignant cells, and only in a few of their tiles; over the whole
  set at most ``MAX_MALIGNANT_SHARE`` (2 %) of the tiles are malignant. The label is per **tile**
  (``normal`` / ``malignant``); every patient has normal tiles.
* ``split``: patients with malignant tiles are dealt to test, validation and train (30 / 20 / 50 %), the others
  likewise, so each split has the finding (a split stratified by each patient's majority label would not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcl.data.synth.common import Patient, Sample, make_patients, rng_for, sample_row, save_png, to_uint8
from medcl.data.synth.histo import _blur, _impulses, stain

MODALITY = "histo"  # read and augmented as stained microscopy tiles
NAME = "cytology"
CLASSES: tuple[str, ...] = ("normal", "malignant")
TASK = "binary"
DEFAULT_PATIENTS = 40
DEFAULT_SIZE = 64
TILES_PER_PATIENT = 25
MAX_MALIGNANT_SHARE = 0.02


def _cells(shape: tuple[int, int], n: int, rng: np.random.Generator, *, nuc_sigma: float, cyto_sigma: float,
           nuc_weight: float = 1.0, elong: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin maps of ``n`` cells at random places: nuclei in round cytoplasm."""
    pts = rng.uniform(4, np.array(shape) - 4, size=(n, 2))
    hema = np.zeros(shape, np.float32)
    for (r, c) in pts:  # each nucleus its own orientation when elongated
        sig = (nuc_sigma, nuc_sigma * elong) if rng.random() < 0.5 else (nuc_sigma * elong, nuc_sigma)
        spot = _blur(_impulses(shape, np.array([[r, c]])), sig) * (2 * np.pi * sig[0] * sig[1])
        hema += nuc_weight * rng.uniform(0.8, 1.2) * spot
    eosin = _blur(_impulses(shape, pts, rng.uniform(0.8, 1.2, n)), cyto_sigma) * (2 * np.pi * cyto_sigma**2)
    return hema, 0.6 * np.clip(eosin, 0, 1.2)


def render_tile(malignant: int, rng: np.random.Generator, stain_rng_seed: int, size: int = DEFAULT_SIZE,
                shift: float = 0.0) -> np.ndarray:
    """One ``(size, size, 3)`` float RGB tile in [0, 1]; ``malignant`` malignant cells among the normal ones."""
    shape = (size, size)
    n_normal = int(rng.integers(3, 9))
    hema, eosin = _cells(shape, n_normal, rng, nuc_sigma=1.2, cyto_sigma=4.5)
    lymph, _ = _cells(shape, int(rng.integers(0, 5)), rng, nuc_sigma=0.9, cyto_sigma=1.0, nuc_weight=1.6)
    hema += lymph
    debris = _blur(_impulses(shape, rng.uniform(0, size, (int(rng.integers(0, 6)), 2))), 0.7) * 4.0
    hema += np.clip(debris, 0, 1.0)
    if malignant:
        mh, me = _cells(shape, malignant, rng, nuc_sigma=2.6, cyto_sigma=4.0, nuc_weight=1.5,
                        elong=float(rng.uniform(1.3, 1.9)))
        hema += mh
        eosin += 0.7 * me
    hema = np.clip(hema + 0.03 * rng.standard_normal(shape).astype(np.float32), 0, 2.0)
    eosin = np.clip(eosin + 0.03 * rng.standard_normal(shape).astype(np.float32), 0, 1.5)
    # the stain of the smear: one draw per patient (same generator state for all of its tiles)
    return stain(hema, eosin, np.random.default_rng(stain_rng_seed), shift=shift)


def _malignant_tiles(patients: list[Patient], tiles: int, seed: int) -> dict[tuple[int, int], int]:
    """``{(patient, tile): malignant cells}``: about a third of the patients, a few tiles each, ≤ 2 % of all."""
    rng = rng_for(seed, NAME, 7)
    budget = max(1, int(MAX_MALIGNANT_SHARE * len(patients) * tiles))
    chosen = rng.permutation(len(patients))[: max(1, len(patients) // 3)]
    out: dict[tuple[int, int], int] = {}
    for k in range(budget):  # deal the malignant tiles over the chosen patients
        p = int(chosen[k % len(chosen)])
        t = int(rng.integers(tiles))
        while (p, t) in out:
            t = (t + 1) % tiles
        out[(p, t)] = int(rng.integers(1, 4))
    return out


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write the tiles under ``out_dir`` and return their manifest rows (label per tile).

    Args:
        out_dir: the data set's folder (``<out>/cytology``).
        patients: number of patients (one smear each, ``TILES_PER_PATIENT`` tiles).
        seed: user seed.
        size: tile side in pixels (default 64).

    Returns:
        One dict per tile: base columns (``modality`` histo, ``label`` normal / malignant) plus ``tile`` and
        ``malignant_cells``.
    """
    size = int(size or DEFAULT_SIZE)
    out_dir = Path(out_dir)
    people = make_patients(NAME, patients, seed, [0] * patients)  # its own streams and ids (DEMO-CYTOLOGY-…)
    malignant = _malignant_tiles(people, TILES_PER_PATIENT, seed)
    split = _splits(people, {pi for pi, _ in malignant})
    rows: list[dict] = []
    for p in people:
        stain_seed = int(p.rng.integers(2**31))
        for t in range(TILES_PER_PATIENT):
            m = malignant.get((p.index, t), 0)
            rgb = render_tile(m, p.rng, stain_seed, size, p.site.shift)
            rel = f"images/{p.stem}_tile{t + 1:02d}.png"
            save_png(to_uint8(rgb), out_dir / rel)
            row = sample_row(p, MODALITY, CLASSES[1 if m else 0], Sample(rel, study=0, extras={
                "tile": str(t + 1), "malignant_cells": str(m)}))
            row["split"] = split[p.index]
            rows.append(row)
    return rows


def _splits(people: list[Patient], with_finding: set[int]) -> dict[int, str]:
    """A ``split`` per patient that puts patients with malignant tiles in every split.

    A patient-level split by majority label would see only normal patients. Of each group (with and without the
    finding): 30 % test, 20 % validation, the rest train.
    """
    out: dict[int, str] = {}
    for group in (sorted(p.index for p in people if p.index in with_finding),
                  sorted(p.index for p in people if p.index not in with_finding)):
        n_test, n_val = max(1, round(0.3 * len(group))), max(1, round(0.2 * len(group)))
        for k, i in enumerate(group):
            out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out
