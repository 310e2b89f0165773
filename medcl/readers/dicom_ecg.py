"""DICOM waveform objects (12-lead ECG and other ``WaveformSequence`` data) → ``(leads, T)`` in mV.

Physical value = ``raw × ChannelSensitivity × ChannelSensitivityCorrectionFactor +
ChannelBaseline`` (PS3.3 C.10.9.1.4), then converted from the sensitivity units (µV, mV, V) to
mV. Lead names come from the channel source code meaning (``"Lead I (Einthoven)"`` → ``"I"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, to_float32, wrap_error
from medcl.readers.dicom_tags import FIX_GARBLED, dcmread, dicom_meta

#: Channel sensitivity units → factor to millivolts.
_TO_MV = {"uv": 1e-3, "µv": 1e-3, "mv": 1.0, "v": 1e3, "nv": 1e-6}


def _lead_name(item, index: int) -> str:
    """'Lead I (Einthoven)' → 'I', 'Lead aVR' → 'aVR', 'Lead V1' → 'V1'; else label or chN."""
    src = item.get("ChannelSourceSequence", None)
    meaning = str(src[0].get("CodeMeaning", "")) if src else ""
    if meaning:
        m = re.match(r"^\s*lead\s+([^\s(]+)", meaning, re.IGNORECASE)
        return m.group(1) if m else meaning.strip()
    label = str(item.get("ChannelLabel", "") or "")
    return label or f"ch{index + 1}"


def _waveform_group(path: Path, ds, group: int):
    """The multiplex group ``group`` of a dataset's WaveformSequence, checked for completeness.

    Returns:
        ``(seq, item)``: the whole WaveformSequence and its item ``group``.

    Raises:
        ReaderError: no WaveformSequence, ``group`` out of range, a required attribute missing,
            or WaveformData shorter than channels × samples × bytes per sample.
    """
    seq = ds.get("WaveformSequence", None)
    if not seq:
        raise ReaderError(
            "DICOM file has no WaveformSequence (not a waveform object)",
            where=str(path), fix='read images with format="dicom"',
        )
    if not 0 <= int(group) < len(seq):
        raise ReaderError(
            f"group={group} is out of range: the file has {len(seq)} waveform group(s)",
            where=str(path), fix=f"use group=0..{len(seq) - 1}",
        )
    item = seq[int(group)]
    required = ("NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
                "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData")
    missing = [k for k in required if k not in item]
    if missing:
        raise ReaderError(f"waveform group {group} lacks {', '.join(missing)}", where=str(path),
                          fix=FIX_GARBLED)
    n_ch, n_s = int(item.NumberOfWaveformChannels), int(item.NumberOfWaveformSamples)
    expected = n_ch * n_s * int(item.WaveformBitsAllocated) // 8
    if len(item.WaveformData) < expected:
        raise ReaderError(
            f"WaveformData is truncated: {len(item.WaveformData)} bytes, {expected} expected for "
            f"{n_ch} channels x {n_s} samples",
            where=str(path), fix=FIX_GARBLED,
        )
    return seq, item


def _channel_values(path: Path, item, raw: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """Scale each channel to physical units (mV when the sensitivity unit is a volt unit).

    Args:
        path: the file, for error messages.
        item: the WaveformSequence item (its ChannelDefinitionSequence).
        raw: stored samples, ``(T, channels)``.

    Returns:
        ``(sig, leads, units)``: float64 ``(channels, T)``, one lead name and one unit per channel
        (``"mV"``, another unit code as written, or ``"unknown"``).
    """
    n_ch, n_s = int(item.NumberOfWaveformChannels), int(item.NumberOfWaveformSamples)
    chans = list(item.get("ChannelDefinitionSequence", []) or [])
    if len(chans) != n_ch:
        raise ReaderError(
            f"ChannelDefinitionSequence has {len(chans)} items for {n_ch} channels",
            where=str(path), fix=FIX_GARBLED,
        )
    sig = np.empty((n_ch, n_s), dtype=np.float64)
    leads, units = [], []
    for i, ch in enumerate(chans):
        sens = float(ch.get("ChannelSensitivity", 1.0) or 1.0)
        corr = float(ch.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        base = float(ch.get("ChannelBaseline", 0.0) or 0.0)
        useq = ch.get("ChannelSensitivityUnitsSequence", None)
        unit = str(useq[0].get("CodeValue", "")) if useq else ("uV" if "ChannelSensitivity" in ch else "")
        values = raw[:, i].astype(np.float64) * sens * corr + base
        factor = _TO_MV.get(unit.lower())
        if factor is not None:
            values = values * factor
            unit = "mV"
        sig[i] = values
        leads.append(_lead_name(ch, i))
        units.append(unit or "unknown")
    return sig, leads, units


def read_dicom_ecg(path: Path, *, modality: str | None = None, group: int = 0, **options: Any) -> Sample:
    """DICOM waveform (12-lead ECG and other WaveformSequence objects) → ``(leads, T)`` in mV.

    Physical value = ``raw × ChannelSensitivity × ChannelSensitivityCorrectionFactor +
    ChannelBaseline`` (PS3.3 C.10.9.1.4), then converted from the sensitivity units (µV, mV, V)
    to mV. Channels in other units (e.g. pressure) keep their units.

    Args:
        path: the ``.dcm`` file.
        modality: defaults to ``"ecg"``.
        group: which multiplex group of WaveformSequence (0 = first, usually the rhythm strip).
        **options: no other option is accepted: an unknown one raises a :class:`ReaderError`.

    Returns:
        Sample; ``meta`` with ``leads``, ``sampling_rate`` (Hz), ``duration_s``, ``units``,
        ``spacing`` ``[1 / sampling_rate]`` (seconds per sample).
    """
    pop_options(path, options, ("group",), "dicom_ecg")
    ds = dcmread(path)
    seq, item = _waveform_group(path, ds, group)
    from pydicom.waveforms import multiplex_array

    try:
        raw = multiplex_array(ds, int(group), as_raw=True)  # (T, channels)
    except Exception as e:
        raise wrap_error(path, "waveform data cannot be decoded", e, FIX_GARBLED) from e
    sig, leads, units = _channel_values(path, item, raw)
    n_s = int(item.NumberOfWaveformSamples)
    out = to_float32(sig, path)
    fs = float(item.SamplingFrequency)
    return Sample(
        out,
        make_meta(
            format="dicom_ecg",
            modality=(modality or "ecg"),
            array=out,
            spacing=[1.0 / fs],
            dtype=raw.dtype,
            source_format="DICOM waveform",
            leads=leads,
            sampling_rate=fs,
            duration_s=n_s / fs,
            units=units[0] if len(set(units)) == 1 else units,
            n_groups=len(seq),
            dicom=dicom_meta(ds),
        ),
    )
