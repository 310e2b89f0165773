"""Readers round-trip real files written by the reference libraries and agree with their decoding."""

from __future__ import annotations

import numpy as np
import pytest
from readers_testfiles import write_xray

from medcl.errors import ReaderError
from medcl.readers import READERS, detect_format, read

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- registry


def test_registry_has_every_format():
    assert set(READERS) == {"dicom_series", "dicom", "dicom_ecg", "nifti", "nrrd", "wsi", "image", "wfdb", "signal"}


def test_detect_format(ct_series, ecg_dicom, nifti_files, nrrd_files, wfdb_record, pyramid_tiff, images, tmp_path):
    xr = write_xray(tmp_path / "x.dcm", np.zeros((8, 8), np.uint16))
    noext = tmp_path / "IM0001"
    noext.write_bytes(xr.read_bytes())
    csvp = tmp_path / "s.csv"
    csvp.write_text("I\n1\n2\n")
    cases = {
        ct_series.folder: "dicom_series", ecg_dicom.path: "dicom_ecg", xr: "dicom", noext: "dicom",
        nifti_files.vol3: "nifti", nifti_files.vol4: "nifti", nrrd_files.vol: "nrrd",
        wfdb_record.with_suffix(".hea"): "wfdb", wfdb_record: "wfdb", pyramid_tiff.path: "wsi",
        images.tif: "image", images.rgb_png: "image", images.jpg: "image", csvp: "signal",
    }
    for path, fmt in cases.items():
        assert detect_format(path) == fmt, path


def test_unknown_format_and_option_suggest_fixes(nifti_files, tmp_path):
    with pytest.raises(ReaderError, match="did you mean 'nifti'"):
        read(nifti_files.vol3, format="nifty")
    with pytest.raises(ReaderError, match="unknown option 'levle'.*did you mean 'level'"):
        read(nifti_files.vol3, format="wsi", levle=1)
    with pytest.raises(ReaderError, match="unknown file type '.xyz'"):
        (tmp_path / "a.xyz").write_text("x")
        read(tmp_path / "a.xyz")
    with pytest.raises(ReaderError, match="does not exist"):
        read(tmp_path / "missing.nii.gz")


# --------------------------------------------------------------------------- NIfTI / NRRD


def test_nifti_matches_nibabel(nifti_files):
    import nibabel as nib

    img = nib.load(nifti_files.vol3)
    s = read(nifti_files.vol3)
    assert s.array.shape == (1, 16, 16, 8)
    np.testing.assert_allclose(s.array[0], img.get_fdata())
    np.testing.assert_allclose(s.meta["affine"], img.affine)
    np.testing.assert_allclose(s.meta["affine"], nifti_files.affine, atol=1e-5)
    np.testing.assert_allclose(s.meta["spacing"], img.header.get_zooms()[:3])
    assert s.meta["dtype"] == "int16"
    s4 = read(nifti_files.vol4)
    assert s4.array.shape == (2, 16, 16, 8)
    np.testing.assert_allclose(s4.array, np.moveaxis(nib.load(nifti_files.vol4).get_fdata(), -1, 0))


def test_nifti_bad_inputs(nifti_files, tmp_path):
    with pytest.raises(ReaderError, match="3 NaN and 1 infinite values"):
        read(nifti_files.nan)
    with pytest.raises(ReaderError, match="2 dimensions"):
        read(nifti_files.flat)
    data = nifti_files.vol4.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match="cut.nii.*NIfTI"):
        read(cut)


def test_nrrd_lps_to_ras_matches_pynrrd(nrrd_files):
    import nrrd

    data, _ = nrrd.read(str(nrrd_files.vol))
    s = read(nrrd_files.vol)
    np.testing.assert_array_equal(s.array[0], data)
    expect = np.eye(4)
    expect[:3, :3] = nrrd_files.dirs
    expect[:3, 3] = nrrd_files.origin
    expect = LPS_RAS @ expect
    np.testing.assert_allclose(s.meta["affine"], expect, atol=1e-6)
    np.testing.assert_allclose(s.meta["spacing"], [0.7, 0.8, 1.5], atol=1e-6)
    v = read(nrrd_files.vec)
    assert v.array.shape == (2, 16, 16, 8)
    np.testing.assert_allclose(v.array, nrrd_files.vec_data)
    np.testing.assert_allclose(v.meta["affine"], np.diag([1.0, 1.0, 2.0, 1.0]))


@pytest.mark.slow
def test_nrrd_agrees_with_monai_nrrd_reader(nrrd_files):
    from monai.data import NrrdReader

    reader = NrrdReader(affine_lps_to_ras=True)
    arr, meta = reader.get_data(reader.read(str(nrrd_files.vol)))
    s = read(nrrd_files.vol)
    np.testing.assert_allclose(np.asarray(arr), s.array[0])
    np.testing.assert_allclose(np.asarray(meta["affine"]), s.meta["affine"], atol=1e-5)


def test_nrrd_truncated(nrrd_files, tmp_path):
    data = nrrd_files.vol.read_bytes()
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(data[: len(data) - 300])
    with pytest.raises(ReaderError, match="cut.nrrd"):
        read(cut)


# --------------------------------------------------------------------------- WFDB / CSV / NumPy


def test_wfdb_matches_rdrecord(wfdb_record):
    import wfdb

    rec = wfdb.rdrecord(str(wfdb_record))
    for path in (wfdb_record, wfdb_record.with_suffix(".hea"), wfdb_record.with_suffix(".dat")):
        s = read(path, format="wfdb")
        assert s.array.shape == (3, 500)
        expect = rec.p_signal.T.copy()
        expect[2] /= 1000.0  # lead V1 stored in µV
        np.testing.assert_allclose(s.array, expect, rtol=1e-5, atol=1e-6)
        assert s.meta["leads"] == ["I", "II", "V1"] and s.meta["units"] == "mV"
        assert s.meta["sampling_rate"] == 500.0 and s.meta["duration_s"] == 1.0


def test_wfdb_missing_dat(wfdb_record):
    wfdb_record.with_suffix(".dat").unlink()
    with pytest.raises(ReaderError, match="rec1.hea.*WFDB"):
        read(wfdb_record.with_suffix(".hea"))


@pytest.mark.parametrize("fmt", ["16", "212", "24", "80"])
def test_a_short_wfdb_signal_file_is_named_with_what_the_header_promises(tmp_path, fmt):
    import wfdb

    sig = np.random.default_rng(0).integers(-100, 100, size=(301, 3)).astype(np.int32)
    wfdb.wrsamp("r", fs=100, units=["mV"] * 3, sig_name=["I", "II", "V1"], d_signal=sig, fmt=[fmt] * 3,
                adc_gain=[200.0] * 3, baseline=[0] * 3, write_dir=str(tmp_path))
    dat = tmp_path / "r.dat"
    full = dat.stat().st_size  # what wfdb's own writer produced for 301 x 3 samples in this format
    assert read(tmp_path / "r.hea").array.shape == (3, 301)
    dat.write_bytes(dat.read_bytes()[: full - 4])
    with pytest.raises(ReaderError) as e:
        read(tmp_path / "r.hea")
    assert f"r.dat (truncated: {full - 4} bytes, the header promises {full}: 301 samples x 3 signals in format " \
           f"{fmt})" in str(e.value)


def test_csv_and_numpy_signals(tmp_path):
    rng = np.random.default_rng(4)
    sig = rng.normal(size=(3, 50))
    csvp = tmp_path / "ecg.csv"
    csvp.write_text("I,II,V1\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in sig.T) + "\n")
    s = read(csvp, sampling_rate=250)
    np.testing.assert_allclose(s.array, sig, atol=1e-6)
    assert s.meta["leads"] == ["I", "II", "V1"] and s.meta["duration_s"] == 0.2
    with pytest.raises(ReaderError, match="sampling_rate is required") as e:
        read(csvp)
    assert "sampling_rate=" in e.value.fix
    bad = tmp_path / "bad.csv"
    bad.write_text("I,II\n1,2\n3,abc\n")
    with pytest.raises(ReaderError, match="row 2.*non-numeric"):
        read(bad, sampling_rate=100)
    npy = tmp_path / "ecg.npy"
    np.save(npy, sig.T)  # (T, leads): transposed on read
    s = read(npy, sampling_rate=250, units="uV")
    np.testing.assert_allclose(s.array, sig / 1000.0, rtol=1e-6)
    assert s.meta["transposed"] is True
    npz = tmp_path / "ecg.npz"
    np.savez(npz, signal=sig, other=np.zeros(3))
    np.testing.assert_allclose(read(npz, sampling_rate=250).array, sig, rtol=1e-6)
    nan = tmp_path / "nan.npy"
    sig2 = sig.copy()
    sig2[0, :5] = np.nan
    np.save(nan, sig2)
    with pytest.raises(ReaderError, match="5 NaN"):
        read(nan, sampling_rate=250)


# --------------------------------------------------------------------------- 2D images


def test_png_jpeg_tiff_match_reference_decoders(images):
    import imagecodecs
    import tifffile
    from PIL import Image

    g = read(images.grey_png)
    assert g.array.shape == (1, 24, 32)
    np.testing.assert_array_equal(g.array[0], images.grey)
    np.testing.assert_allclose(g.meta["spacing"], [0.1, 0.1], rtol=1e-3)  # 254 dpi
    np.testing.assert_array_equal(read(images.rgb_png).array, np.moveaxis(images.rgb, -1, 0))
    # a transparent alpha is refused (compositing would invent pixel values); an opaque one carries nothing
    assert not (images.rgba[..., 3] == 255).all()
    with pytest.raises(ReaderError, match="transparency"):
        read(images.rgba_png)

    opaque = images.rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, mode="RGBA").save(images.rgba_png.with_name("opaque.png"))
    rgba = read(images.rgba_png.with_name("opaque.png"))
    assert rgba.array.shape == (3, 24, 32)
    np.testing.assert_array_equal(rgba.array, np.moveaxis(images.rgba[..., :3], -1, 0))
    g16 = read(images.g16_png)
    np.testing.assert_array_equal(g16.array[0], images.g16)
    assert g16.array.max() > 255 and g16.meta["dtype"] == "uint16"
    c16 = read(images.rgb16_png)  # Pillow would truncate this to 8 bits
    np.testing.assert_array_equal(c16.array, np.moveaxis(imagecodecs.imread(images.rgb16_png), -1, 0))
    assert c16.array.max() > 255
    pal = read(images.pal_png)
    np.testing.assert_array_equal(pal.array, np.moveaxis(np.asarray(Image.open(images.pal_png).convert("RGB")), -1, 0))
    jpg = read(images.jpg)
    np.testing.assert_array_equal(jpg.array, np.moveaxis(np.asarray(Image.open(images.jpg)), -1, 0))
    tif = read(images.tif)
    np.testing.assert_array_equal(tif.array, np.moveaxis(tifffile.imread(images.tif), -1, 0))
    np.testing.assert_allclose(tif.meta["spacing"], [0.00025, 0.00025], rtol=1e-6)
    stack = read(images.stack)
    assert stack.array.shape == (1, 3, 24, 32)
    np.testing.assert_array_equal(stack.array[0], tifffile.imread(images.stack))


def test_truncated_png(images):
    with pytest.raises(ReaderError, match="truncated.png.*(truncated|corrupt)"):
        read(images.truncated)
