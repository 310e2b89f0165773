"""12-lead ECGs (WFDB records, mV) with rhythm and conduction labels (multi-label).

* Beats are sums of Gaussian P, Q, R, S, T waves of a rotating cardiac dipole: each wave has a
  3D direction and every lead is the projection of the dipole on its lead vector, so the limb
  leads obey Einthoven (III = II − I) and Goldberger (aVR = −(I + II)/2, aVL = I − II/2,
  aVF = II − I/2) exactly, and R waves progress V1 → V6. (A simplified dipole variant of
  McSharry et al., IEEE TBME 2003.)
* Labels (``CLASSES``, several per record, ``;``-separated in the manifest, ``NORM`` exclusive):
  ``NORM`` sinus rhythm 55–95 bpm, narrow QRS; ``AF`` irregularly irregular RR, no P waves,
  4–8 Hz fibrillatory waves; ``BBB`` bundle-branch block: QRS ≥ 120 ms (right: late R′ in V1,
  left: broad notched R in V5–V6); ``TACHY`` rate > 100 bpm.
* Nuisances: electrical axis and wave amplitudes (per patient), global amplitude scale and
  per-lead electrode gain, baseline wander (0.05–0.5 Hz), white and muscle noise (site-dependent).
* Files: ``records/<name>.hea`` + ``.dat`` (format 16, gain 1000 adu/mV, 100 Hz, 10 s, units mV);
  the manifest ``path`` is the ``.hea`` file. Header comments carry the labels, not the patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from medcl.data.synth.common import Patient, Sample, draw_classes, draw_count, write_patients
from medcl.data.synth.reports import ecg_report, report_rng

MODALITY = "ecg"
CLASSES: tuple[str, ...] = ("NORM", "AF", "BBB", "TACHY")
TASK = "multilabel"
DEFAULT_PATIENTS = 150
DEFAULT_SIZE = None  # signals have no image size
FS = 100
DURATION_S = 10.0
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
RECORDS_PER_PATIENT = (2, 3)
#: label combinations cycled over patients (NORM twice: it is the most common finding).
COMBOS: tuple[tuple[str, ...], ...] = (
    ("NORM",), ("NORM",), ("AF",), ("BBB",), ("TACHY",), ("AF", "TACHY"), ("BBB", "TACHY"), ("AF", "BBB"),
)

# Precordial lead directions in the horizontal plane (x: patient left, z: anterior), degrees from +x.
_V_ANGLES = (120.0, 95.0, 75.0, 55.0, 30.0, 0.0)


def lead_vectors() -> np.ndarray:
    """``(8, 3)`` lead vectors for I, II, V1..V6 in (x: left, y: inferior, z: anterior)."""
    i = [1.0, 0.0, 0.0]
    ii = [np.cos(np.deg2rad(60)), np.sin(np.deg2rad(60)), 0.0]
    v = [[np.cos(np.deg2rad(a)), 0.0, np.sin(np.deg2rad(a))] for a in _V_ANGLES]
    return np.array([i, ii, *v])


def limb_to_12(i: np.ndarray, ii: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Leads I, II ``(T,)`` and V1..V6 ``(6, T)`` -> 12 leads ``(12, T)`` (Einthoven/Goldberger)."""
    iii = ii - i
    avr = -(i + ii) / 2.0
    avl = i - ii / 2.0
    avf = ii - i / 2.0
    return np.vstack([i, ii, iii, avr, avl, avf, v])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def patient_heart(rng: np.random.Generator, labels: tuple[str, ...]) -> dict:
    """A patient's dipole waves: ``name -> (amplitude mV, direction (3,), width s, offset s)``."""
    axis = np.deg2rad(rng.uniform(20, 75))
    r_dir = _unit([np.cos(axis), np.sin(axis), -rng.uniform(0.3, 0.6)])
    waves = {
        "P": (rng.uniform(0.12, 0.2), _unit([0.5, 0.8, 0.2]), 0.022, -0.16),
        "Q": (rng.uniform(0.1, 0.2), _unit([-0.5, -0.1, 0.8]), 0.010, -0.028),
        "R": (rng.uniform(1.0, 1.6), r_dir, 0.012, 0.0),
        "S": (rng.uniform(0.3, 0.5), _unit([-0.3, -0.5, -0.6]), 0.012, 0.03),
        "T": (rng.uniform(0.25, 0.4), _unit(r_dir + [0.0, 0.0, 0.5]), 0.05, 0.28),
    }
    bbb = None
    if "BBB" in labels:
        bbb = "RBBB" if rng.random() < 0.5 else "LBBB"
        a, d, _, o = waves["R"]
        waves["R"] = (a * 0.85, d, rng.uniform(0.026, 0.034), o)
        a, d, _, o = waves["S"]
        waves["S"] = (a, d, 0.026, o + 0.045)
        if bbb == "RBBB":  # terminal rightward-anterior force: R' in V1
            waves["R2"] = (rng.uniform(0.5, 0.8), _unit([-0.6, 0.0, 0.8]), 0.022, 0.075)
        else:  # LBBB: delayed leftward-posterior force, notched broad R in V5-V6
            waves["R2"] = (rng.uniform(0.6, 0.9), _unit([0.9, 0.1, -0.4]), 0.024, 0.06)
            a, d, w, o = waves["T"]
            waves["T"] = (a, -d, w, o)  # discordant T
    return {"waves": waves, "bbb": bbb}


def beat_times(labels: tuple[str, ...], rng: np.random.Generator, duration: float) -> tuple[np.ndarray, float]:
    """R-peak times (s) and the mean heart rate (bpm) for a label set."""
    tachy = "TACHY" in labels
    hr = rng.uniform(105, 150) if tachy else rng.uniform(55, 95)
    rr = 60.0 / hr
    cv = rng.uniform(0.18, 0.3) if "AF" in labels else rng.uniform(0.01, 0.035)
    t = [rng.uniform(0.05, rr)]
    while t[-1] < duration + 1.0:
        t.append(t[-1] + max(0.28, rr * (1.0 + cv * rng.standard_normal())))
    t = np.array(t)
    return t, 60.0 / float(np.diff(t).mean())


def render(labels: tuple[str, ...], heart: dict, rng: np.random.Generator, noise: float = 1.0,
           fs: int = FS, duration: float = DURATION_S) -> tuple[np.ndarray, float]:
    """One 12-lead record.

    Args:
        labels: label names (from :data:`CLASSES`).
        heart: from :func:`patient_heart`.
        rng: generator.
        noise: site noise factor.
        fs: sampling rate (Hz).
        duration: seconds.

    Returns:
        ``(signal, heart_rate)``: ``(12, T)`` float64 mV and the mean rate in bpm.
    """
    n = int(round(fs * duration))
    t = np.arange(n) / fs
    peaks, hr = beat_times(labels, rng, duration)
    af = "AF" in labels
    lv = lead_vectors()
    base = np.zeros((8, n))
    for tp in peaks:
        rr_scale = np.sqrt(60.0 / hr)  # Bazett-like QT scaling
        for name, (amp, d, width, off) in heart["waves"].items():
            if name == "P" and af:
                continue
            o = off * rr_scale if name == "T" else off
            g = np.exp(-0.5 * ((t - tp - o) / (width * (1.0 + 0.3 * (name == "T") * (rr_scale - 1)))) ** 2)
            sign = -1.0 if name in ("Q", "S") else 1.0
            base += sign * amp * (lv @ d)[:, None] * g[None, :]
    if af:  # fibrillatory waves, strongest in II and V1
        f = sum(rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 6.3))
                for _ in range(3))
        base += (lv @ _unit([-0.2, 0.6, 0.7]))[:, None] * f[None, :]
    # Nuisances on the 8 independent leads (I, II, V1..V6), before the limb leads are derived
    # (as an electrocardiograph does), so Einthoven/Goldberger hold exactly in every record.
    sig = base * float(np.exp(rng.normal(0, 0.2))) * np.exp(rng.normal(0, 0.1, (8, 1)))
    for _ in range(2):
        fw = rng.uniform(0.05, 0.5)
        sig += rng.uniform(0.03, 0.25, (8, 1)) * np.sin(2 * np.pi * fw * t + rng.uniform(0, 6.3, (8, 1)))
    sig += rng.normal(0, 0.015 * noise, sig.shape)
    sig += rng.normal(0, 0.03 * noise, sig.shape) * (rng.random((8, 1)) < 0.3)  # muscle noise
    return limb_to_12(sig[0], sig[1], sig[2:]), hr


def synthesize(out_dir: Path, *, patients: int = DEFAULT_PATIENTS, seed: int = 0, size: int | None = None) -> list[dict]:
    """Write WFDB records under ``out_dir`` and return manifest rows.

    Args:
        out_dir: the modality folder (``<out>/ecg``).
        patients: number of patients (label combinations cycle through :data:`COMBOS`).
        seed: user seed.
        size: ignored (signals have no image size).

    Returns:
        One dict per record: base columns (``label`` = ``;``-joined names) plus ``heart_rate``,
        ``bbb_type``, ``sampling_rate``.
    """
    combos = [COMBOS[i] for i in draw_classes(MODALITY, patients, seed, len(COMBOS))]
    labels = [tuple(CLASSES.index(c) for c in k) for k in combos]
    return write_patients(MODALITY, CLASSES, out_dir, labels, seed, partial(_patient, seed=seed))


def _patient(p: Patient, out_dir: Path, seed: int = 0) -> Iterator[Sample]:
    """One heart: its dipole waves, then 2-3 records (one study each), each with its report."""
    import wfdb

    rng = p.rng
    labels = tuple(CLASSES[i] for i in p.label)
    heart = patient_heart(rng, labels)
    folder = out_dir / "records"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(draw_count(rng, RECORDS_PER_PATIENT)):
        sig, hr = render(labels, heart, rng, p.site.noise)
        name = f"{p.stem}_r{k + 1}"
        # Fixed ADC (1 µV per unit, 16-bit) so the stored values do not depend on the signal range.
        wfdb.wrsamp(
            name, fs=FS, units=["mV"] * 12, sig_name=list(LEADS), p_signal=np.ascontiguousarray(sig.T),
            fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
            comments=[f"Dx: {','.join(labels)}", f"Sex: {p.sex}", f"AgeGroup: {p.age_group}"],
            write_dir=str(folder),
        )
        report = ecg_report(labels, hr, heart["bbb"] or "", report_rng(seed, MODALITY, p.index, k))
        yield Sample(f"records/{name}.hea", study=k, extras={
            "heart_rate": f"{hr:.0f}", "bbb_type": heart["bbb"] or "", "sampling_rate": str(FS), "report": report,
        })
