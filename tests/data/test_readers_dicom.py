"""DICOM readers (series, single/multi-frame, waveform ECG) agree with pydicom, nibabel and MONAI; no PHI leaks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from readers_testfiles import FAKE_MRN, FAKE_PATIENT, write_ct_slice, write_series, write_xray

from medcl import phi
from medcl.errors import ReaderError
from medcl.readers import list_series, read

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _no_phi(meta):
    text = json.dumps(meta)
    assert FAKE_PATIENT.split("^")[0] not in text and FAKE_MRN not in text
    for key in meta.get("dicom", {}):
        assert key in phi.DICOM_ALLOWED_TAGS


# --------------------------------------------------------------------------- DICOM series


def test_series_sorted_by_position_not_name_or_instance(ct_series):
    import pydicom

    files = sorted(ct_series.folder.glob("*.dcm"))
    headers = [pydicom.dcmread(f) for f in files]
    position = [float(np.dot([float(v) for v in h.ImagePositionPatient], ct_series.normal)) for h in headers]
    by_pos = list(np.argsort(position))
    by_instance = list(np.argsort([int(h.InstanceNumber) for h in headers]))
    assert by_pos != list(range(len(files))) and by_pos != by_instance  # the fixture really is shuffled

    s = read(ct_series.folder)
    assert s.array.dtype == np.float32
    assert s.array.shape == (1, ct_series.cols, ct_series.rows, ct_series.n)  # (1, X=cols, Y=rows, Z)
    for k in range(ct_series.n):  # CT: HU = raw * 1 - 1024; slice k is the k-th along the normal
        np.testing.assert_array_equal(s.array[0, :, :, k], ct_series.truth[k].T.astype(np.float32) - 1024)
    assert s.meta["format"] == "dicom_series" and s.meta["modality"] == "ct"
    assert s.meta["dtype"] == "uint16" and s.meta["n_slices"] == 8
    _no_phi(s.meta)
    assert phi.REGISTRY.find(f"x {FAKE_MRN} y") is not None  # registered with the guard


def test_series_agrees_with_pydicom_modality_lut_per_slice(tmp_path):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slopes = [1.0, 0.5, 2.0, 1.5, 1.0, 0.25]
    ser = write_series(tmp_path / "s", n_slices=6, slopes=slopes)
    s = read(ser.folder)
    ref = {}
    for f in ser.folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        k = int(round(np.dot([float(v) for v in ds.ImagePositionPatient], ser.normal) / ser.gap
                      - np.dot(ser.origin, ser.normal) / ser.gap))
        ref[k] = apply_modality_lut(ds.pixel_array, ds)
    for k in range(6):
        np.testing.assert_allclose(s.array[0, :, :, k], ref[k].T, rtol=1e-6)


def test_series_affine_and_spacing_match_nibabel_dicom_wrapper(ct_series):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM wrappers experimental
        from nibabel.nicom.dicomwrappers import wrapper_from_data

    s = read(ct_series.folder)
    aff = np.asarray(s.meta["affine"])
    lps = LPS_RAS @ aff
    # first slice along the normal
    headers = [pydicom.dcmread(f) for f in ct_series.folder.glob("*.dcm")]
    first = min(headers, key=lambda h: np.dot([float(v) for v in h.ImagePositionPatient], ct_series.normal))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = wrapper_from_data(first).affine  # nibabel: axis 0 = row index, axis 1 = column index
    np.testing.assert_allclose(lps[:3, 0], ref[:3, 1], atol=1e-5)  # our axis 0 = column index
    np.testing.assert_allclose(lps[:3, 1], ref[:3, 0], atol=1e-5)
    np.testing.assert_allclose(lps[:3, 3], ref[:3, 3], atol=1e-5)
    np.testing.assert_allclose(lps[:3, 2], ct_series.normal * ct_series.gap, atol=1e-4)
    # non-square pixels: PixelSpacing [row 0.5, col 0.8] -> X (columns) 0.8, Y (rows) 0.5
    np.testing.assert_allclose(s.meta["spacing"], [0.8, 0.5, 2.5], atol=1e-5)
    # voxel (i=col, j=row, k) lands where DICOM says: IPP_k + col*dc*row_cos + row*dr*col_cos
    i, j, k = 5, 3, 4
    world = lps @ [i, j, k, 1]
    expect = ct_series.origin + k * ct_series.gap * ct_series.normal + i * 0.8 * ct_series.row_cos \
        + j * 0.5 * ct_series.col_cos
    np.testing.assert_allclose(world[:3], expect, atol=1e-4)


@pytest.mark.slow
def test_series_agrees_with_monai_pydicom_reader(tmp_path, ct_series):
    """MONAI's PydicomReader orders slices by InstanceNumber: it agrees with us only when the
    numbering follows the position, and gets the shuffled series wrong (why we use pydicom directly)."""
    from monai.data import PydicomReader

    reader = PydicomReader()
    ordered = write_series(tmp_path / "ordered", instances_in_order=True)
    s = read(ordered.folder)
    arr, meta = reader.get_data(reader.read(str(ordered.folder)))
    np.testing.assert_allclose(np.asarray(arr), s.array[0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(meta["affine"]), s.meta["affine"], atol=1e-4)
    arr, _ = reader.get_data(reader.read(str(ct_series.folder)))
    assert not np.allclose(np.asarray(arr), read(ct_series.folder).array[0])


def test_two_series_need_a_choice(two_series):
    with pytest.raises(ReaderError, match=r"2 DICOM series.*8 slices.*5 slices") as e:
        read(two_series.folder)
    assert "series=" in e.value.fix
    info = list_series(two_series.folder)
    assert [x["n_slices"] for x in info] == [8, 5]
    assert [x["description"] for x in info] == ["AXIAL 2.5", "SAG MPR"]
    assert all(x["series"].startswith("s-") and two_series.a.uid not in x["series"] for x in info)
    assert read(two_series.folder, series=1).array.shape[-1] == 5
    assert read(two_series.folder, series=two_series.a.uid).array.shape[-1] == 8
    assert read(two_series.folder, series=info[1]["series"]).array.shape[-1] == 5
    with pytest.raises(ReaderError, match="out of range"):
        read(two_series.folder, series=2)
    with pytest.raises(ReaderError, match="no series with that"):
        read(two_series.folder, series="1.2.3.4.5.6.7")


def test_series_with_missing_slice_is_rejected(tmp_path):
    ser = write_series(tmp_path / "gap", n_slices=8, skip=(4,))
    with pytest.raises(ReaderError, match="inconsistent slice spacing.*median gap 2.5"):
        read(ser.folder)


def test_series_mixed_shapes_and_duplicates_rejected(tmp_path):
    ser = write_series(tmp_path / "mixed", n_slices=4)
    write_ct_slice(ser.folder / "zz.dcm", np.zeros((8, 8), np.uint16), ipp=ser.origin + 10 * ser.normal,
                   iop=[*ser.row_cos, *ser.col_cos], pixel_spacing=ser.pixel_spacing, series_uid=ser.uid,
                   instance=99)
    with pytest.raises(ReaderError, match="different sizes"):
        read(ser.folder)
    ser2 = write_series(tmp_path / "dup", n_slices=4)
    write_ct_slice(ser2.folder / "dup.dcm", ser2.truth[1], ipp=ser2.origin + ser2.gap * ser2.normal,
                   iop=[*ser2.row_cos, *ser2.col_cos], pixel_spacing=ser2.pixel_spacing, series_uid=ser2.uid,
                   instance=50)
    with pytest.raises(ReaderError, match="same position"):
        read(ser2.folder)


def test_series_empty_folder_and_non_dicom_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    with pytest.raises(ReaderError, match="no DICOM image files"):
        read(empty, format="dicom_series")
    ser = write_series(tmp_path / "s", n_slices=3)
    (ser.folder / "broken.dcm").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ReaderError, match="broken.dcm.*not a DICOM file"):
        read(ser.folder)


def _member(ser, k=2):
    return sorted(ser.folder.glob("*.dcm"))[k]


@pytest.mark.parametrize("keep", [300, 132])
def test_a_series_member_cut_inside_its_header_is_named(tmp_path, keep):
    """A copy cut short inside its header (pydicom reads it as an empty data set) is the problem, not the spacing."""
    ser = write_series(tmp_path / "s", n_slices=6)
    bad = _member(ser)
    bad.write_bytes(bad.read_bytes()[:keep])
    with pytest.raises(ReaderError) as info:
        read(ser.folder)
    assert f"series member {bad.name}" in info.value.what and info.value.where == str(bad)
    assert "spacing" not in info.value.what


def test_a_series_member_cut_inside_its_pixel_data_is_named(tmp_path):
    ser = write_series(tmp_path / "s", n_slices=6)
    bad = _member(ser, 4)
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(ReaderError, match=rf"series member {bad.name}: pixel data cannot be decoded"):
        read(ser.folder)


def test_validation_names_the_broken_member_of_a_series_row(tmp_path):
    """The issue's case: `medcl data validate` on a CT series with one member truncated to 300 bytes."""
    from medcl.data.manifest import load_manifest
    from medcl.data.synth import synthesize
    from medcl.data.validate import validate_manifest

    synthesize(tmp_path, modalities=["ct"], patients=3, seed=0, size=16)
    folder = sorted((tmp_path / "ct" / "series").iterdir())[0]
    bad = sorted(folder.glob("*.dcm"))[3]
    bad.write_bytes(bad.read_bytes()[:300])
    problems = validate_manifest(load_manifest(tmp_path / "ct" / "manifest.csv"), task="binary")
    lines = [pr.line() for pr in problems]
    assert len(lines) == 1 and bad.name in lines[0] and "truncated" in lines[0], lines
    assert "spacing" not in lines[0]


def test_non_image_dicom_objects_in_a_series_folder_are_skipped_by_rule(tmp_path):
    """A structured report (readable, non-image SOP class, no Rows) next to the slices is not a slice."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ser = write_series(tmp_path / "s", n_slices=4)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = FileDataset(str(ser.folder / "report.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    sr.SOPClassUID = meta.MediaStorageSOPClassUID
    sr.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    sr.save_as(str(ser.folder / "report.dcm"), enforce_file_format=True)
    assert pydicom.dcmread(ser.folder / "report.dcm").Modality == "SR"
    assert read(ser.folder).array.shape[-1] == 4


# --------------------------------------------------------------------------- single / multi-frame DICOM


def test_dicom_monochrome2_applies_modality_lut(tmp_path, grey_pixels):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    p = write_xray(tmp_path / "cr.dcm", grey_pixels, slope=0.5, intercept=-10.0, bits_stored=12)
    s = read(p)
    ds = pydicom.dcmread(p)
    np.testing.assert_allclose(s.array[0], apply_modality_lut(ds.pixel_array, ds))
    assert s.array.shape == (1, 20, 24)
    assert s.meta["spacing"] == [0.15, 0.2] and s.meta["modality"] is None  # CR is not a medcl modality
    assert s.meta["dicom"]["Modality"] == "CR"
    _no_phi(s.meta)


def test_dicom_monochrome1_is_inverted_within_stored_range(tmp_path, grey_pixels):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    p = write_xray(tmp_path / "m1.dcm", grey_pixels, photometric="MONOCHROME1", slope=2.0, intercept=5.0,
                   bits_stored=12)
    s = read(p)
    ds = pydicom.dcmread(p)
    lo, hi = apply_modality_lut(np.array([0, 4095]), ds)  # stored range 0..2^12-1 through the LUT
    np.testing.assert_allclose(s.array[0], lo + hi - apply_modality_lut(ds.pixel_array, ds))
    # stored 0 (white in MONOCHROME1) is now the brightest possible value
    r, c = np.unravel_index(np.argmin(grey_pixels), grey_pixels.shape)
    assert s.array[0, r, c] == s.array.max()
    assert np.corrcoef(s.array[0].ravel(), grey_pixels.ravel())[0, 1] < -0.99


def test_dicom_rgb_and_multiframe(tmp_path):
    import pydicom

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    s = read(write_xray(tmp_path / "rgb.dcm", rgb, photometric="RGB", modality="OP"))
    assert s.array.shape == (3, 10, 12) and s.meta["modality"] == "fundus"
    np.testing.assert_array_equal(s.array, np.moveaxis(rgb, -1, 0))
    frames = rng.integers(0, 1000, size=(4, 10, 12), dtype=np.uint16)
    p = write_xray(tmp_path / "mf.dcm", frames, modality="OPT")
    s = read(p)
    assert s.array.shape == (1, 4, 10, 12) and s.meta["modality"] == "oct" and s.meta["frames"] == 4
    np.testing.assert_array_equal(s.array[0], pydicom.dcmread(p).pixel_array)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_dicom_compressed_with_pydicom_encoders(tmp_path, syntax):
    import pydicom
    import pydicom.uid
    from pydicom.pixels import get_encoder

    uid = getattr(pydicom.uid, syntax)
    # pylibjpeg-openjpeg is a declared dependency: a missing encoder is a broken install, not a skip
    assert get_encoder(uid).is_available, f"no pydicom encoder for {syntax}: reinstall with `make install`"
    # 64x64: OpenJPEG's default 6 wavelet levels need at least 32 pixels a side
    grey_pixels = np.random.default_rng(8).integers(0, 4096, size=(64, 64), dtype=np.uint16)
    p = write_xray(tmp_path / "raw.dcm", grey_pixels, bits_stored=12)
    ds = pydicom.dcmread(p)
    ds.compress(uid)
    out = tmp_path / f"{syntax}.dcm"
    ds.save_as(out)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == uid
    s = read(out)
    np.testing.assert_array_equal(s.array[0], grey_pixels)
    assert syntax[:3].upper() in s.meta["source_format"].upper().replace(" ", "")


def _encapsulated(tmp_path, name, frame: bytes, syntax, rows, cols, bits=8):
    from pydicom.encaps import encapsulate
    from pydicom.uid import SecondaryCaptureImageStorage
    from readers_testfiles import _base_dataset

    ds = _base_dataset(SecondaryCaptureImageStorage, "OT", transfer_syntax=syntax)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (8 if bits == 8 else 16), bits, bits - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    p = tmp_path / name
    ds.save_as(str(p), enforce_file_format=True)
    return p


def test_dicom_jpeg_baseline_and_lossless_via_pylibjpeg(tmp_path):
    import imagecodecs
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1

    rng = np.random.default_rng(2)
    img8 = (np.add.outer(np.arange(16), np.arange(20)) * 6 + rng.integers(0, 5, (16, 20))).astype(np.uint8)
    p = _encapsulated(tmp_path, "jpeg.dcm", imagecodecs.jpeg8_encode(img8, level=95), JPEGBaseline8Bit, 16, 20)
    s = read(p)
    np.testing.assert_array_equal(s.array[0], pydicom.dcmread(p).pixel_array)  # reference decoding
    assert np.abs(s.array[0] - img8).mean() < 3  # and it is the image (lossy)
    img12 = rng.integers(0, 4096, (16, 20)).astype(np.uint16)
    p = _encapsulated(tmp_path, "ljpeg.dcm", imagecodecs.ljpeg_encode(img12, bitspersample=12), JPEGLosslessSV1,
                      16, 20, bits=12)
    np.testing.assert_array_equal(read(p).array[0], img12)


def test_dicom_undecodable_compression_names_syntax(tmp_path):
    from pydicom.uid import MPEG2MPML

    p = _encapsulated(tmp_path, "mpeg.dcm", b"\x00\x00\x01\xb3" + b"\x00" * 60, MPEG2MPML, 16, 20)
    with pytest.raises(ReaderError, match="MPEG2") as e:
        read(p)
    assert "gdcmconv --raw" in e.value.fix and "plugin" in e.value.fix


def test_dicom_truncated_and_garbage(tmp_path, grey_pixels):
    p = write_xray(tmp_path / "full.dcm", grey_pixels)
    data = p.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(ReaderError, match="cut.dcm") as e:
        read(cut)
    assert "truncated" in e.value.what
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(np.random.default_rng(0).bytes(600))
    with pytest.raises(ReaderError, match="not a DICOM file"):
        read(junk)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ReaderError, match="empty"):
        read(empty)


def test_dicom_float_pixel_data_with_nan_is_rejected(tmp_path):
    from pydicom.uid import SecondaryCaptureImageStorage
    from readers_testfiles import _base_dataset

    ds = _base_dataset(SecondaryCaptureImageStorage, "OT")
    arr = np.ones((6, 7), np.float32)
    arr[2, :3] = np.nan
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 7, 1, "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.FloatPixelData = arr.tobytes()
    p = tmp_path / "float.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    with pytest.raises(ReaderError, match="3 NaN"):
        read(p)


# --------------------------------------------------------------------------- DICOM waveform ECG


def test_dicom_ecg_to_millivolts(ecg_dicom):
    import pydicom

    s = read(ecg_dicom.path)
    assert s.meta["format"] == "dicom_ecg" and s.meta["modality"] == "ecg"
    assert s.array.shape == (12, 500)
    assert s.meta["leads"] == ecg_dicom.names
    assert s.meta["sampling_rate"] == 500.0 and s.meta["duration_s"] == 1.0 and s.meta["units"] == "mV"
    # hand formula: raw * sensitivity * correction + baseline (µV) -> mV
    expect = (ecg_dicom.raw * ecg_dicom.sens * ecg_dicom.corr + ecg_dicom.base).T / 1000.0
    np.testing.assert_allclose(s.array, expect, rtol=1e-5, atol=1e-6)
    # pydicom's own decoding (µV) agrees
    ref = pydicom.dcmread(ecg_dicom.path).waveform_array(0).T / 1000.0
    np.testing.assert_allclose(s.array, ref, rtol=1e-5, atol=1e-6)
    _no_phi(s.meta)


def test_dicom_ecg_truncated_waveform(ecg_dicom, tmp_path):
    import pydicom

    ds = pydicom.dcmread(ecg_dicom.path)
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:1000]
    p = tmp_path / "short.dcm"
    ds.save_as(p)
    with pytest.raises(ReaderError, match="truncated"):
        read(p)
    with pytest.raises(ReaderError, match="no pixel data.*dicom_ecg"):
        read(ecg_dicom.path, format="dicom")


def test_a_patient_element_that_cannot_be_decoded_refuses_the_file(tmp_path):
    """PHI registration cannot skip an element it cannot read (its value would escape the guard): the file is
    refused, by name."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ser = write_series(tmp_path / "s", n_slices=4)
    bad = _member(ser, 1)
    ds = pydicom.dcmread(bad)
    tag = Tag(0x00100030)  # PatientBirthDate, written with a length no reader can decode as its VR
    ds[tag] = RawDataElement(tag, "US", 3, b"\x01\x02\x03", 0, False, True)
    ds.save_as(bad)
    with pytest.raises(pydicom.errors.BytesLengthException):
        pydicom.dcmread(bad, stop_before_pixels=True).get("PatientBirthDate")  # what PHI registration meets
    with pytest.raises(ReaderError, match=rf"series member {bad.name}: the DICOM element PatientBirthDate") as info:
        read(ser.folder)
    assert "refuses a file whose patient information it cannot read" in info.value.fix
    with pytest.raises(ReaderError, match="PatientBirthDate"):
        read(bad, format="dicom")


def test_every_broken_member_of_a_series_is_named_at_once(tmp_path):
    ser = write_series(tmp_path / "s", n_slices=6)
    members = sorted(ser.folder.glob("*.dcm"))
    members[1].write_bytes(members[1].read_bytes()[:300])
    members[4].write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ReaderError, match="2 series members cannot be read") as info:
        read(ser.folder)
    assert members[1].name in info.value.what and members[4].name in info.value.what
    assert "truncated" in info.value.what and "not a DICOM file" in info.value.what
