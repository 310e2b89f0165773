"""Fixtures that write tiny *real* files with the reference libraries (pydicom, nibabel, pynrrd,
wfdb, tifffile, Pillow, imagecodecs) for the reader and inspect tests. No file format is mocked.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from readers_testfiles import _base_dataset, _levels, rotation, slide_pixels, write_series

# --------------------------------------------------------------------------- DICOM

@pytest.fixture
def ct_series(tmp_path):
    """8-slice oblique CT series, 12 rows x 16 columns, PixelSpacing [0.5, 0.8], shuffled names."""
    return write_series(tmp_path / "ct")


@pytest.fixture
def two_series(tmp_path):
    """One folder holding two CT series (8 and 5 slices) with different UIDs."""
    folder = tmp_path / "mixed"
    a = write_series(folder, prefix="a", description="AXIAL 2.5", series_number=2, seed=1)
    b = write_series(folder, n_slices=5, prefix="b", description="SAG MPR", series_number=3, seed=2,
                     origin=(0.0, 0.0, 0.0), rot=(0.0, 0.0, 0.0))
    return SimpleNamespace(folder=folder, a=a, b=b)


@pytest.fixture
def grey_pixels():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4096, size=(20, 24), dtype=np.uint16)


@pytest.fixture
def ecg_dicom(tmp_path):
    """12-lead DICOM waveform ECG: 500 samples at 500 Hz, int16, sensitivity in µV.

    Lead V6 has a non-zero ChannelBaseline and correction factor to exercise the formula.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import TwelveLeadECGWaveformStorage

    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    meanings = [f"Lead {n}" + (" (Einthoven)" if n in ("I", "II", "III") else "") for n in names]
    fs, n_s = 500.0, 500
    t = np.arange(n_s) / fs
    rng = np.random.default_rng(5)
    raw = np.stack([np.round(400 * np.sin(2 * np.pi * (1 + i / 4) * t) + rng.normal(0, 20, n_s))
                    for i in range(12)], axis=1).astype(np.int16)  # (T, channels)
    ds = _base_dataset(TwelveLeadECGWaveformStorage, "ECG")
    item = Dataset()
    item.MultiplexGroupTimeOffset = 0.0
    item.WaveformOriginality = "ORIGINAL"
    item.NumberOfWaveformChannels = 12
    item.NumberOfWaveformSamples = n_s
    item.SamplingFrequency = fs
    item.MultiplexGroupLabel = "RHYTHM"
    chans = []
    sens, corr, base = [], [], []
    for i, meaning in enumerate(meanings):
        ch = Dataset()
        src = Dataset()
        src.CodeValue = f"5.6.3-9-{i + 1}"
        src.CodingSchemeDesignator = "SCPECG"
        src.CodeMeaning = meaning
        ch.ChannelSourceSequence = [src]
        ch.ChannelSensitivity = 2.5
        units = Dataset()
        units.CodeValue = "uV"
        units.CodingSchemeDesignator = "UCUM"
        units.CodeMeaning = "microvolt"
        ch.ChannelSensitivityUnitsSequence = [units]
        ch.ChannelSensitivityCorrectionFactor = 0.98 if i == 11 else 1.0
        ch.ChannelBaseline = 50.0 if i == 11 else 0.0
        ch.ChannelSampleSkew = 0.0
        ch.WaveformBitsStored = 16
        chans.append(ch)
        sens.append(2.5)
        corr.append(float(ch.ChannelSensitivityCorrectionFactor))
        base.append(float(ch.ChannelBaseline))
    item.ChannelDefinitionSequence = chans
    item.WaveformBitsAllocated = 16
    item.WaveformSampleInterpretation = "SS"
    item.WaveformData = raw.tobytes()
    ds.WaveformSequence = [item]
    path = tmp_path / "ecg.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    return SimpleNamespace(path=path, raw=raw, names=names, fs=fs, sens=np.array(sens), corr=np.array(corr),
                           base=np.array(base))


# --------------------------------------------------------------------------- volumes

@pytest.fixture
def nifti_files(tmp_path):
    """3D int16 NIfTI with scaling and an oblique affine, a 4D (channels-last) one, a NaN one, a 2D one."""
    import nibabel as nib

    rng = np.random.default_rng(7)
    aff = np.eye(4)
    aff[:3, :3] = rotation(0.2, -0.1, 0.3) @ np.diag([0.9, 1.1, 2.0])
    aff[:3, 3] = [-20.0, 10.0, 5.0]
    vol = rng.integers(-500, 1500, size=(16, 16, 8)).astype(np.int16)
    img = nib.Nifti1Image(vol, aff)
    img.header.set_slope_inter(2.0, -100.0)
    p3 = tmp_path / "ct.nii.gz"
    nib.save(img, str(p3))
    vol4 = rng.random((16, 16, 8, 2)).astype(np.float32)
    p4 = tmp_path / "mr4d.nii"
    nib.save(nib.Nifti1Image(vol4, aff), str(p4))
    bad = rng.random((16, 16, 8)).astype(np.float32)
    bad[0, 0, :3] = np.nan
    bad[1, 1, 1] = np.inf
    pnan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(bad, aff), str(pnan))
    p2 = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((16, 16)).astype(np.float32), np.eye(4)), str(p2))
    return SimpleNamespace(vol3=p3, vol4=p4, nan=pnan, flat=p2, affine=aff)


@pytest.fixture
def nrrd_files(tmp_path):
    """LPS NRRD volume (16x16x8) and a 2-component vector NRRD (channel axis first)."""
    import nrrd

    rng = np.random.default_rng(9)
    vol = rng.integers(0, 1000, size=(16, 16, 8)).astype(np.int16)
    dirs = rotation(0.1, 0.0, 0.2) @ np.diag([0.7, 0.8, 1.5])  # columns = axis directions
    header = {
        "space": "left-posterior-superior",
        "space directions": dirs.T,  # NRRD: one row per axis
        "space origin": np.array([12.0, -30.0, 44.0]),
        "kinds": ["domain", "domain", "domain"],
    }
    p = tmp_path / "vol.nrrd"
    nrrd.write(str(p), vol, header)
    vec = rng.random((2, 16, 16, 8)).astype(np.float32)
    hv = {
        "space": "right-anterior-superior",
        "space directions": np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]]),
        "space origin": np.zeros(3),
        "kinds": ["vector", "domain", "domain", "domain"],
    }
    pv = tmp_path / "vec.nrrd"
    nrrd.write(str(pv), vec, hv)
    return SimpleNamespace(vol=p, vec=pv, data=vol, dirs=dirs, origin=header["space origin"], vec_data=vec)


# --------------------------------------------------------------------------- signals

@pytest.fixture
def wfdb_record(tmp_path):
    """3-lead WFDB record, 500 samples at 500 Hz (two leads in mV, one in µV)."""
    import wfdb

    t = np.arange(500) / 500.0
    sig = np.stack([np.sin(2 * np.pi * t), 0.5 * np.cos(2 * np.pi * 3 * t), 300 * np.sin(2 * np.pi * 5 * t)],
                   axis=1)
    wfdb.wrsamp("rec1", fs=500, units=["mV", "mV", "uV"], sig_name=["I", "II", "V1"], p_signal=sig,
                fmt=["16", "16", "16"], write_dir=str(tmp_path))
    return tmp_path / "rec1"


# --------------------------------------------------------------------------- slides and images

@pytest.fixture
def pyramid_tiff(tmp_path):
    """512x512 pyramidal TIFF, levels in SubIFDs, 0.5 µm/pixel, tiled 64x64, zlib."""
    import tifffile

    levels = _levels(slide_pixels(), 3)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(str(path)) as tif:
        tif.write(levels[0], tile=(64, 64), photometric="rgb", compression="zlib", subifds=2,
                  resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        for lvl in levels[1:]:
            tif.write(lvl, tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)
    return SimpleNamespace(path=path, levels=levels)


@pytest.fixture
def ifd_pyramid_tiff(tmp_path):
    """Same slide with levels in successive IFDs (what OpenSlide's generic-tiff reads)."""
    import tifffile

    levels = _levels(slide_pixels(), 3)
    path = tmp_path / "slide_ifd.tiff"
    with tifffile.TiffWriter(str(path)) as tif:
        tif.write(levels[0], tile=(64, 64), photometric="rgb", compression="zlib",
                  resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        for lvl in levels[1:]:
            tif.write(lvl, tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)
    return SimpleNamespace(path=path, levels=levels)


@pytest.fixture
def svs_slide(tmp_path):
    """Aperio-style SVS: tiled levels + a strip thumbnail, AppMag 40 and MPP 0.25 in the description."""
    import tifffile

    levels = _levels(slide_pixels(), 3)
    desc = ("Aperio Image Library v12.0.15 \r\n512x512 [0,0 512x512] (64x64) JPEG/RGB Q=70"
            "|AppMag = 40|MPP = 0.25|Filename = test")
    path = tmp_path / "slide.svs"
    with tifffile.TiffWriter(str(path)) as tif:
        tif.write(levels[0], tile=(64, 64), photometric="rgb", compression="zlib", description=desc,
                  metadata=None)
        tif.write(levels[2][::2, ::2], photometric="rgb", description="Aperio Image Library thumbnail",
                  metadata=None)
        for lvl in levels[1:]:
            tif.write(lvl, tile=(64, 64), photometric="rgb", compression="zlib", description=desc,
                      metadata=None)
    return SimpleNamespace(path=path, levels=levels)


@pytest.fixture
def images(tmp_path):
    """PNG (8-bit grey, RGB, RGBA, 16-bit grey, 16-bit RGB, palette), JPEG, plain TIFF, truncated PNG."""
    import imagecodecs
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(13)
    out = SimpleNamespace()
    grey = rng.integers(0, 256, size=(24, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(24, 32, 4), dtype=np.uint8)
    g16 = rng.integers(0, 65536, size=(24, 32), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, size=(24, 32, 3), dtype=np.uint16)
    out.grey, out.rgb, out.rgba, out.g16, out.rgb16 = grey, rgb, rgba, g16, rgb16
    Image.fromarray(grey).save(tmp_path / "grey.png", dpi=(254, 254))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb16))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    Image.fromarray(rgb).save(tmp_path / "fundus.jpg", quality=90)
    tifffile.imwrite(tmp_path / "tile.tif", rgb, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "bscans.tif", rng.integers(0, 4096, size=(3, 24, 32), dtype=np.uint16),
                     photometric="minisblack")
    full = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    for name in ("grey", "rgb", "rgba", "g16", "rgb16", "pal"):
        setattr(out, f"{name}_png", tmp_path / f"{name}.png")
    out.jpg = tmp_path / "fundus.jpg"
    out.tif = tmp_path / "tile.tif"
    out.stack = tmp_path / "bscans.tif"
    out.truncated = tmp_path / "truncated.png"
    return out
