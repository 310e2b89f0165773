"""DICOM readers: slice series (CT/MR), single/multi-frame images (X-ray, OCT, ...), waveform ECG.

pydicom is used directly (not MONAI's ``PydicomReader``) because every pitfall listed in
DESIGN.md lives here and needs exact control:

* slices are ordered by their position along the slice normal
  ``n = row_cosine × column_cosine``, ``d = n · ImagePositionPatient`` — never by file name or
  ``InstanceNumber``;
* ``PixelSpacing`` is ``[row spacing, column spacing]``: the spacing *between rows* (along a
  column, i.e. the Y array axis) comes first;
* MONOCHROME1 (0 = white) is inverted after the modality LUT, within the stored value range;
* several series in one folder are told apart by ``SeriesInstanceUID`` and must be chosen.

Compressed transfer syntaxes are decoded by pydicom's plugins (pylibjpeg: JPEG baseline and
lossless, JPEG-LS, JPEG 2000, RLE). Every dataset read is registered with the PHI guard and only
tags in :data:`medcl.phi.DICOM_ALLOWED_TAGS` are copied into ``meta["dicom"]``.

This module reads single- and multi-frame image files and re-exports the rest of the DICOM
readers, which live in:

* :mod:`medcl.readers.dicom_tags` — reading a file (PHI registration), allowed tags, spacing;
* :mod:`medcl.readers.dicom_pixels` — pixel decoding, modality LUT, MONOCHROME1;
* :mod:`medcl.readers.dicom_series` — folders of slices: series choice, ordering, affine;
* :mod:`medcl.readers.dicom_ecg` — waveform ECG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import ReaderError
from medcl.readers.base import Sample, make_meta, pop_options, to_float32
from medcl.readers.dicom_ecg import read_dicom_ecg
from medcl.readers.dicom_pixels import monochrome_values, pixel_array
from medcl.readers.dicom_series import list_series, read_dicom_series
from medcl.readers.dicom_tags import (
    DICOM_MODALITIES,
    FIX_GARBLED,
    dcmread,
    dicom_meta,
    functional_group_values,
    infer_modality,
    pixel_spacing,
    transfer_syntax,
)

__all__ = [
    "DICOM_MODALITIES",
    "dcmread",
    "dicom_meta",
    "infer_modality",
    "list_series",
    "monochrome_values",
    "pixel_array",
    "read_dicom",
    "read_dicom_ecg",
    "read_dicom_series",
]


def read_dicom(path: Path, *, modality: str | None = None, **options: Any) -> Sample:
    """Single- or multi-frame DICOM image (CR/DX X-ray, OCT, fundus, secondary capture...).

    Greyscale goes through the modality LUT (RescaleSlope/Intercept) and MONOCHROME1 is inverted
    so that larger is brighter; colour stays RGB in its stored range.

    Args:
        path: the ``.dcm`` file.
        modality: overrides the one inferred from the ``Modality`` tag.
        **options: no other option is accepted: an unknown one raises a :class:`ReaderError`.

    Returns:
        Sample with ``array`` ``(C, H, W)`` (C = 1 or 3) or ``(C, F, H, W)`` for multi-frame;
        ``meta["spacing"]`` ``[row_mm, col_mm]`` (multi-frame: ``[frame_mm, row_mm, col_mm]``,
        frame spacing 1.0 when the file does not say), None when the file has no spacing.
    """
    pop_options(path, options, (), "dicom")
    ds = dcmread(path)
    raw = pixel_array(ds, path)
    spp = int(ds.get("SamplesPerPixel", 1))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)

    if spp == 1:
        values = monochrome_values(ds, raw)
        arr = values[None]  # (1, H, W) or (1, F, H, W)
    else:
        values = raw.astype(np.float64)
        if values.shape[-1] == 4:  # ARGB / CMYK (retired) — keep three colour samples
            values = values[..., :3]
        arr = np.moveaxis(values, -1, 0)  # (3, H, W) or (3, F, H, W)
    expected_ndim = 4 if n_frames > 1 else 3
    if arr.ndim != expected_ndim:
        raise ReaderError(
            f"decoded pixel array has shape {tuple(raw.shape)}, not what NumberOfFrames={n_frames} "
            f"and SamplesPerPixel={spp} imply",
            where=str(path),
            fix=FIX_GARBLED,
        )
    out = to_float32(arr, path)
    spacing = pixel_spacing(ds)
    if spacing is not None and n_frames > 1:
        fz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None)
        if fz is None:
            fz = (functional_group_values(ds, "PixelMeasuresSequence", "SpacingBetweenSlices") or [1.0])[0]
        spacing = [float(fz), *spacing]
    ts = transfer_syntax(ds)
    return Sample(
        out,
        make_meta(
            format="dicom",
            modality=infer_modality(ds, modality),
            array=out,
            spacing=spacing,
            dtype=raw.dtype,
            source_format=f"DICOM ({ts.name})" if ts is not None else "DICOM",
            frames=n_frames,
            photometric=str(ds.get("PhotometricInterpretation", "")),
            dicom=dicom_meta(ds),
        ),
    )
