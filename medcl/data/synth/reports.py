"""Free-text reports for the demo samples, written from their latent findings (the ``report`` manifest column).

Each report says what the sample shows in one of several wordings, names findings that are absent (negations),
and — like a real report — carries PHI that de-identification must remove: a reporting physician, a date and, now
and then, a record number. The wording is drawn from its own generator (seeded by the data seed, the patient and
the sample), never from the patient's image generator, so the images are the same with or without reports.
"""

from __future__ import annotations

import numpy as np

#: reporting physicians (fictional) and record-number prefixes: the PHI the reports plant
_PHYSICIANS = ("Dr. Aurelia Penhallow", "Dr. Tobias Merriweather", "Dr. Ines Okafor-Lindqvist", "Dr. Samir Qureshi",
               "Dr. Hedda Brannigan")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def report_rng(seed: int, modality: str, patient: int, sample: int) -> np.random.Generator:
    """The wording's own generator."""
    return np.random.default_rng([int(seed), sum(map(ord, modality)), int(patient), int(sample), 0x5E9])


def _pick(g: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(g.integers(len(options)))]


def _signature(g: np.random.Generator) -> str:
    date = (f"{int(g.integers(1, 29))} {_pick(g, _MONTHS)} {int(g.integers(2015, 2025))}" if g.random() < 0.5 else
            f"{int(g.integers(2015, 2025))}-{int(g.integers(1, 13)):02d}-{int(g.integers(1, 29)):02d}")
    mrn = f" MRN {int(g.integers(1_000_000, 9_999_999))}." if g.random() < 0.3 else ""
    return f" Reported by {_pick(g, _PHYSICIANS)} on {date}.{mrn}"


def oct_report(grade: int, g: np.random.Generator) -> str:
    """An OCT B-scan report: drusen by grade (normal, early, intermediate AMD)."""
    findings = {
        0: ("No drusen. Retinal layers intact.", "Normal foveal contour without drusen.",
            "Unremarkable scan; no drusen seen."),
        1: ("A few small drusen beneath the RPE.", "Small drusen, early age-related macular degeneration.",
            "Scattered small drusen; early AMD."),
        2: ("Multiple medium and large drusen.", "Numerous large drusen elevating the RPE: intermediate AMD.",
            "Confluent medium-sized drusen; intermediate AMD."),
    }[int(grade)]
    negations = ("No subretinal fluid.", "No geographic atrophy.", "No intraretinal cysts.")
    neg = " ".join(n for n in negations if g.random() < 0.5)
    return f"{_pick(g, findings)} {neg}".strip() + _signature(g)


def fundus_report(grade: int, eye: str, g: np.random.Generator) -> str:
    """A fundus photograph report: diabetic retinopathy by grade (none, mild, moderate, severe)."""
    side = {"OD": "right eye", "OS": "left eye"}.get(eye, "eye")
    findings = {
        0: ("No diabetic retinopathy.", "No microaneurysms or haemorrhages.", "Normal fundus."),
        1: ("Microaneurysms only; mild non-proliferative diabetic retinopathy.", "A few microaneurysms: mild NPDR."),
        2: ("Dot and blot haemorrhages with hard exudates; moderate NPDR.",
            "Several haemorrhages and exudates: moderate non-proliferative retinopathy."),
        3: ("Extensive haemorrhages in all four quadrants; severe NPDR.",
            "Numerous haemorrhages and venous beading: severe non-proliferative retinopathy."),
    }[int(grade)]
    neg = _pick(g, ("No neovascularisation.", "No macular oedema.", "")) if grade < 3 else "No neovascularisation."
    return f"{side.capitalize()}: {_pick(g, findings)} {neg}".strip() + _signature(g)


_ECG = {
    "NORM": ("Sinus rhythm.", "Normal sinus rhythm."),
    "AF": ("Atrial fibrillation.", "Irregularly irregular rhythm without P waves: atrial fibrillation."),
    "TACHY": ("Sinus tachycardia.", "Tachycardia at {hr} bpm."),
}


def ecg_report(labels: tuple[str, ...], heart_rate: float, bbb_type: str, g: np.random.Generator) -> str:
    """A 12-lead ECG report: one statement per finding (several per record), rate, negations."""
    hr = f"{heart_rate:.0f}"
    parts = []
    for lab in labels:
        if lab == "BBB":
            kind = {"LBBB": "left", "RBBB": "right"}.get(bbb_type, "")
            parts.append(_pick(g, (f"Complete {kind} bundle branch block.".replace("  ", " "),
                                   f"Broad QRS: {kind} bundle branch block.".replace("  ", " "))))
        else:
            parts.append(_pick(g, _ECG[lab]).format(hr=hr))
    parts.append(f"Ventricular rate {hr} bpm.")
    if "AF" not in labels and g.random() < 0.5:
        parts.append("No atrial fibrillation.")
    if "BBB" not in labels and g.random() < 0.5:
        parts.append("QRS duration normal.")
    parts.append(_pick(g, ("No acute ST changes.", "No ST elevation.", "")))
    return " ".join(p for p in parts if p) + _signature(g)
