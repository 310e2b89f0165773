"""`inspect_path` / `format_inspect` on real files written by the reference libraries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from readers_testfiles import FAKE_MRN, FAKE_PATIENT

from medcl.data.inspect import format_inspect, inspect_path
from medcl.errors import ReaderError
from medcl.readers import read

REQUIRED = {"modality", "format", "shape", "spacing", "dtype", "min", "max", "mean"}


def test_inspect_ct_series(ct_series):
    info = inspect_path(ct_series.folder)
    assert set(info) >= REQUIRED
    text = json.dumps(info)  # JSON-able
    assert FAKE_MRN not in text and FAKE_PATIENT.split("^")[0] not in text
    arr = read(ct_series.folder).array
    assert info["format"] == "dicom_series" and info["modality"] == "ct"
    assert info["shape"] == [1, 16, 12, 8] and info["dtype"] == "uint16"
    assert info["min"] == pytest.approx(float(arr.min())) and info["max"] == pytest.approx(float(arr.max()))
    assert info["mean"] == pytest.approx(float(arr.mean()), rel=1e-6)
    assert info["spacing"] == pytest.approx([0.8, 0.5, 2.5])
    assert np.asarray(info["affine"]).shape == (4, 4)
    lines = format_inspect(info)
    assert "dicom_series" in lines and "affine (RAS)" in lines and "0.8 x 0.5 x 2.5 mm" in lines
    assert "1 x 16 x 12 x 8" in lines


def test_inspect_two_series_lists_them(two_series):
    info = inspect_path(two_series.folder)
    assert info["shape"] is None and [s["n_slices"] for s in info["series"]] == [8, 5]
    assert two_series.a.uid not in json.dumps(info)  # UIDs are pseudonymised
    text = format_inspect(info)
    assert "series 0: 8 slices" in text and "series 1: 5 slices" in text and "series=INDEX" in text
    chosen = inspect_path(two_series.folder, series=1)
    assert chosen["shape"] == [1, 16, 12, 5]


def test_inspect_ecg(ecg_dicom, wfdb_record):
    info = inspect_path(ecg_dicom.path)
    assert set(info) >= REQUIRED
    assert info["modality"] == "ecg" and info["shape"] == [12, 500]
    assert info["leads"][:3] == ["I", "II", "III"] and info["sampling_rate"] == 500.0
    assert info["duration_s"] == 1.0 and info["units"] == "mV"
    text = format_inspect(info)
    assert "500 Hz" in text and "aVR" in text
    w = inspect_path(wfdb_record.with_suffix(".hea"))
    assert w["format"] == "wfdb" and w["leads"] == ["I", "II", "V1"]
    json.dumps(w)


def test_inspect_slide_and_image(pyramid_tiff, images):
    info = inspect_path(pyramid_tiff.path)
    assert info["levels"] == 3 and info["dimensions"] == [[512, 512], [256, 256], [128, 128]]
    assert info["modality"] == "histo" and info["shape"] == [3, 128, 128] and info["mpp"] == pytest.approx(0.5)
    assert "levels:        3 (512x512, 256x256, 128x128)" in format_inspect(info)
    img = inspect_path(images.g16_png, modality="oct")
    assert img["modality"] == "oct" and img["dtype"] == "uint16" and img["shape"] == [1, 24, 32]
    assert img["max"] == float(images.g16.max())
    json.dumps(img)


def test_inspect_volume_and_errors(nifti_files, tmp_path):
    info = inspect_path(nifti_files.vol4, modality="mri")
    assert info["shape"] == [2, 16, 16, 8] and info["modality"] == "mri" and info["dtype"] == "float32"
    with pytest.raises(ReaderError, match="NaN"):
        inspect_path(nifti_files.nan)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(ReaderError, match="bad.png"):
        inspect_path(bad)
