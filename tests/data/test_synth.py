"""Tests of the demo-data synthesiser: real files read back by the reference libraries.

One small set is written once per module (few patients per modality) and shared; determinism is
checked by writing it again and hashing every file.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from medcl.data.synth import SYNTHESISERS, synthesize
from medcl.errors import DataError

PATIENTS = {"oct": 12, "fundus": 12, "histo": 3, "ct": 6, "mri": 4, "ecg": 16}
SEED = 7


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "demo"
    manifest = synthesize(out, patients=PATIENTS, seed=SEED)
    assert manifest == out / "manifest.csv"
    return out


# ---------------------------------------------------------------- manifests


def test_manifests_columns_paths_and_balance(demo: Path):
    combined = _rows(demo / "manifest.csv")
    assert {r["modality"] for r in combined} == set(SYNTHESISERS)
    total = 0
    for name, mod in SYNTHESISERS.items():
        rows = _rows(demo / name / "manifest.csv")
        total += len(rows)
        assert list(rows[0])[:9] == [
            "patient_id", "path", "modality", "label", "mask", "study_id", "site", "sex", "age_group",
        ]
        assert {r["modality"] for r in rows} == {name}
        for r in rows:
            assert (demo / name / r["path"]).exists(), r["path"]
            if r["mask"]:
                assert (demo / name / r["mask"]).is_file()
            assert r["patient_id"].startswith(f"DEMO-{name.upper()}-")
            # file names never carry the patient identifier
            assert r["patient_id"] not in r["path"]
        patients = {r["patient_id"] for r in rows}
        assert len(patients) == PATIENTS[name]
        per_patient = Counter(r["patient_id"] for r in rows)
        assert max(per_patient.values()) >= 2, "several samples per patient expected"
        # one latent label per patient
        lab = defaultdict(set)
        for r in rows:
            lab[r["patient_id"]].add(r["label"])
        assert all(len(v) == 1 for v in lab.values())
        if mod.TASK == "multilabel":
            counts = Counter(c for v in lab.values() for c in next(iter(v)).split(";"))
            assert set(counts) == set(mod.CLASSES)
            for v in lab.values():
                names = next(iter(v)).split(";")
                assert "NORM" not in names or names == ["NORM"]
        else:
            counts = Counter(next(iter(v)) for v in lab.values())
            assert set(counts) == set(mod.CLASSES)  # class names, what the shipped pipelines list
            assert max(counts.values()) - min(counts.values()) <= 1
            if "grade" in rows[0]:  # OCT, fundus: the numeric grade is the class's index
                assert all(r["label"] == mod.CLASSES[int(r["grade"])] for r in rows)
        assert len({r["site"] for r in rows}) >= 2
    assert len(combined) == total
    for r in combined:
        assert (demo / r["path"]).exists()
    readme = (demo / "README.md").read_text()
    assert all(f"| {name} |" in readme for name in SYNTHESISERS)


def test_deterministic_per_seed_and_seeds_differ(demo: Path, tmp_path: Path):
    again = tmp_path / "again"
    synthesize(again, patients=PATIENTS, seed=SEED)
    assert _hashes(again) == _hashes(demo)
    # a single modality alone is identical to the same modality within the full set
    alone = tmp_path / "alone"
    synthesize(alone, modalities=["oct"], patients=PATIENTS, seed=SEED)
    assert _hashes(alone / "oct") == _hashes(demo / "oct")
    other = tmp_path / "other"
    synthesize(other, modalities="oct,ecg", patients=PATIENTS, seed=SEED + 1)
    a, b = _hashes(demo / "oct"), _hashes(other / "oct")
    shared = set(a) & set(b) - {"manifest.csv", ".medcl-synth"}
    assert shared and sum(a[k] != b[k] for k in shared) == len(shared)
    # rewriting into a folder we wrote replaces it cleanly
    synthesize(other, modalities="oct", patients={"oct": 3}, seed=SEED + 1)
    assert len(list((other / "oct" / "images").iterdir())) == len(_rows(other / "oct" / "manifest.csv"))


def test_errors_say_how_to_fix(tmp_path: Path):
    with pytest.raises(DataError, match="did you mean 'oct'"):
        synthesize(tmp_path / "x", modalities=["otc"])
    with pytest.raises(DataError, match="positive integer"):
        synthesize(tmp_path / "x", modalities=["oct"], patients=0)
    foreign = tmp_path / "foreign"
    (foreign / "oct").mkdir(parents=True)
    (foreign / "oct" / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not written by"):
        synthesize(foreign, modalities=["oct"], patients=3)
    assert (foreign / "oct" / "mine.txt").read_text() == "precious"


def test_write_patients_skeleton_builds_rows_from_samples(tmp_path: Path):
    from medcl.data.synth.common import BASE_COLUMNS, Sample, write_patients

    def writer(p, out_dir):
        assert out_dir == tmp_path
        for k in range(2):
            yield Sample(f"{p.stem}_{k}.x", study=k, mask="m" if k else "", extras={"b": "1", "a": str(k)})

    rows = write_patients("ecg", ("NORM", "AF", "BBB"), tmp_path, [(0,), (1, 2), (2,)], 0, writer)
    assert [r["label"] for r in rows] == ["NORM", "NORM", "AF;BBB", "AF;BBB", "BBB", "BBB"]
    assert rows[3]["path"] == "p0002_1.x" and rows[3]["study_id"] == "DEMO-ECG-0002-S2" and rows[3]["mask"] == "m"
    assert list(rows[0]) == [*BASE_COLUMNS, "b", "a"]  # extras after the base columns, in the writer's order


# ---------------------------------------------------------------- 2D images


def test_oct_pngs_and_drusen_signal(demo: Path):
    from PIL import Image
    from scipy.ndimage import gaussian_filter, median_filter
    from scipy.stats import spearmanr

    rows = _rows(demo / "oct" / "manifest.csv")
    feats, grades, means = [], [], []
    for r in rows:
        im = Image.open(demo / "oct" / r["path"])
        assert im.mode == "L" and im.size == (64, 64)
        img = np.asarray(im, dtype=float) / 255.0
        means.append(img.mean())
        # Independent drusen feature: RPE trace (brightest row per column) vs its quadratic fit.
        trace = median_filter(gaussian_filter(img, (0.8, 1.5)).argmax(0).astype(float), 3)
        x = np.arange(trace.size)
        res = np.polyval(np.polyfit(x, trace, 2), x) - trace
        feats.append(np.sort(res)[-4:].mean())
        grades.append(int(r["grade"]))
    rho = spearmanr(feats, grades).statistic
    assert rho > 0.3, f"drusen feature barely tracks the grade (rho={rho:.2f})"
    # gain nuisance is real and not normalised per image
    assert np.std(means) / np.mean(means) > 0.1


def test_fundus_pngs_and_lesion_signal(demo: Path):
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from scipy.stats import spearmanr

    rows = _rows(demo / "fundus" / "manifest.csv")
    feats, grades = [], []
    for r in rows:
        im = Image.open(demo / "fundus" / r["path"])
        assert im.mode == "RGB" and im.size == (64, 64)
        img = np.asarray(im, dtype=float) / 255.0
        assert img[0, 0].max() == 0.0 and img[32, 32].max() > 0.05  # black outside the field of view
        g = img[..., 1]
        yy, xx = np.mgrid[:64, :64]
        fov = (yy - 32) ** 2 + (xx - 32) ** 2 < 27**2
        rel = g / (gaussian_filter(g, 3.0) + 0.02)  # local contrast: independent of gain and gradient
        # small-spot detector, smoothed past the demo set's sensor noise (std 0.036 on a ~0.3 green level)
        dog = gaussian_filter(rel, 1.2) - gaussian_filter(rel, 3.0)
        feats.append((np.abs(dog) > 0.1)[fov].sum())
        grades.append(int(r["grade"]))
    assert spearmanr(feats, grades).statistic > 0.3


def test_histo_slides_pyramid_and_tiles(demo: Path):
    import openslide
    import tifffile
    from PIL import Image
    from skimage.color import rgb2hed

    slides = _rows(demo / "histo" / "slides.csv")
    assert len(slides) == PATIENTS["histo"]
    for s in slides:
        path = demo / "histo" / s["path"]
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            assert len(levels) >= 2
            assert levels[0].shape[:2] == (int(s["height"]), int(s["width"]))
            assert levels[1].shape[0] == levels[0].shape[0] // 2
            page = tif.pages[0]
            assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
            num, den = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            assert 1e4 / (num / den) == pytest.approx(float(s["mpp"]), rel=1e-3)
            level0 = levels[0].asarray()
        with openslide.OpenSlide(str(path)) as osl:
            assert osl.level_count == len(levels)
            assert float(osl.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(float(s["mpp"]), rel=1e-3)
        # mostly white background, some tissue
        white = (level0.min(-1) > 215).mean()
        assert 0.2 < white < 0.9
    rows = _rows(demo / "histo" / "manifest.csv")
    h_by_class = defaultdict(list)
    for r in rows:
        tile = np.asarray(Image.open(demo / "histo" / r["path"]))
        assert tile.shape == (64, 64, 3)
        # tile is cut from the slide at (x, y); compare with the JPEG-decoded level 0
        with tifffile.TiffFile(demo / "histo" / r["slide"]) as tif:
            l0 = tif.series[0].levels[0].asarray()
        x, y = int(r["x"]), int(r["y"])
        assert np.abs(l0[y : y + 64, x : x + 64].astype(int) - tile.astype(int)).mean() < 6
        assert (tile.min(-1) > 215).mean() < 0.5  # cut from tissue
        h_by_class[r["label"]].append(rgb2hed(tile)[..., 0].mean())
    # haematoxylin (nuclei) is highest in tumour tiles (colour deconvolution, Ruifrok & Johnston)
    if "tumour" in h_by_class and "stroma" in h_by_class:
        assert np.mean(h_by_class["tumour"]) > np.mean(h_by_class["stroma"])


# ---------------------------------------------------------------- 3D volumes


def _ras_from_dicom(dss) -> np.ndarray:
    """Reference: voxel (col, row, slice) -> RAS affine from DICOM tags of sorted slices."""
    first = dss[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    dr, dc = (float(v) for v in first.PixelSpacing)
    ipp0 = np.array(first.ImagePositionPatient, dtype=float)
    step = (np.array(dss[-1].ImagePositionPatient, dtype=float) - ipp0) / (len(dss) - 1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = step
    lps[:3, 3] = ipp0
    return np.diag([-1, -1, 1, 1]) @ lps


def test_ct_dicom_series_geometry_phi_and_lesion_hu(demo: Path):
    import nibabel as nib
    import pydicom

    rows = _rows(demo / "ct" / "manifest.csv")
    seen_lesion = seen_clean = 0
    for r in rows:
        files = sorted((demo / "ct" / r["path"]).glob("*.dcm"))
        dss = [pydicom.dcmread(f) for f in files]
        assert len({d.SeriesInstanceUID for d in dss}) == 1 and len({d.SOPInstanceUID for d in dss}) == len(dss)
        assert all(d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" for d in dss)
        assert str(dss[0].PatientName).startswith("DEMO^") and dss[0].PatientID == r["patient_id"]
        normal = np.cross(*np.reshape(np.array(dss[0].ImageOrientationPatient, dtype=float), (2, 3)))
        dss.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
        # file names are not in position order; positions step by SpacingBetweenSlices
        by_name = [f.name for f in files]
        assert [Path(d.filename).name for d in dss] != by_name
        pos = np.array([np.dot(normal, np.array(d.ImagePositionPatient, dtype=float)) for d in dss])
        assert np.allclose(np.diff(pos), float(dss[0].SpacingBetweenSlices), atol=1e-3)
        assert float(dss[0].SliceThickness) == pytest.approx(float(dss[0].SpacingBetweenSlices))
        hu = np.stack(
            [d.pixel_array.astype(float) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss], -1
        ).transpose(1, 0, 2)  # (rows, cols, z) -> (x=col, y=row, z)
        assert hu.min() < -900 and 20 < np.median(hu[hu > -200]) < 80
        mask_img = nib.load(demo / "ct" / r["mask"])
        mask = np.asarray(mask_img.dataobj)
        assert mask.dtype == np.uint8 and mask.shape == hu.shape
        assert np.allclose(mask_img.affine, _ras_from_dicom(dss), atol=1e-3)
        if r["label"] == "lesion":
            seen_lesion += 1
            assert mask.sum() > 0
            lesion = hu[mask > 0].mean()
            assert 0 < lesion < 45, lesion  # hypodense lesion, ~15-35 HU
            # the lesion is darker than the tissue around it
            from scipy.ndimage import binary_dilation

            shell = binary_dilation(mask > 0, iterations=2) & (mask == 0) & (hu > 0) & (hu < 120)
            assert lesion < hu[shell].mean() - 8
        else:
            seen_clean += 1
            assert mask.sum() == 0
    assert seen_lesion and seen_clean
    storage = {(d.PixelRepresentation, float(d.RescaleSlope), float(d.RescaleIntercept)) for d in [
        pydicom.dcmread(next((demo / "ct" / r["path"]).glob("*.dcm")), stop_before_pixels=True) for r in rows]}
    assert len(storage) >= 2  # sites store HU differently


def test_mri_nifti_geometry_and_bright_lesions(demo: Path):
    import nibabel as nib

    rows = _rows(demo / "mri" / "manifest.csv")
    for r in rows:
        img = nib.load(demo / "mri" / r["path"])
        msk = nib.load(demo / "mri" / r["mask"])
        assert img.shape == msk.shape == (32, 32, 24)
        assert np.allclose(img.affine, msk.affine)
        zooms = img.header.get_zooms()
        assert zooms[2] > zooms[0]  # non-isotropic
        assert np.asarray(msk.dataobj).dtype == np.uint8
        data = np.asarray(img.dataobj, dtype=float)
        mask = np.asarray(msk.dataobj) > 0
        if r["label"] == "lesion":
            from scipy.ndimage import binary_dilation

            shell = binary_dilation(mask, iterations=2) & ~mask
            assert data[mask].mean() > 1.3 * np.median(data[shell])
        else:
            assert not mask.any()
    assert len({nib.aff2axcodes(nib.load(demo / "mri" / r["path"]).affine) for r in rows}) >= 1


# ---------------------------------------------------------------- ECG


def test_ecg_wfdb_records_leads_and_rhythm(demo: Path):
    import wfdb
    from scipy.signal import find_peaks

    from medcl.data.synth.ecg import LEADS

    rows = _rows(demo / "ecg" / "manifest.csv")
    cv = defaultdict(list)
    for r in rows:
        rec = wfdb.rdrecord(str(demo / "ecg" / r["path"])[: -len(".hea")])
        assert rec.sig_name == list(LEADS) and rec.fs == 100 and rec.units == ["mV"] * 12
        sig = rec.p_signal  # (T, 12)
        assert sig.shape == (1000, 12)
        lead = dict(zip(rec.sig_name, sig.T))
        # Einthoven and Goldberger hold to quantisation (1 µV)
        assert np.abs(lead["III"] - (lead["II"] - lead["I"])).max() < 0.003
        assert np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2).max() < 0.003
        # QRS detection on the slope energy of the precordial leads
        energy = (np.diff(sig[:, 6:], axis=0) ** 2).sum(1)
        peaks, _ = find_peaks(energy, height=0.3 * np.percentile(energy, 99), distance=25)
        rr = np.diff(peaks) / 100.0
        hr = 60.0 / rr.mean()
        labels = r["label"].split(";")
        if "TACHY" in labels:
            assert hr > 95, (r["label"], hr)
        else:
            assert hr < 105, (r["label"], hr)
        cv["AF" in labels].append(rr.std() / rr.mean())
    assert np.median(cv[True]) > 2 * np.median(cv[False])


def test_long_tailed_fundus_set_has_the_stated_grade_shares(tmp_path: Path):
    from PIL import Image

    from medcl.data.synth.fundus_lt import long_tailed_labels

    # the counts by hand (EyePACS's shares): round(0.07 * 400) = 28, round(0.15 * 400) = 60, round(0.05 * 400) = 20,
    # the rest 292
    labels = long_tailed_labels(400, (0.73, 0.07, 0.15, 0.05), np.random.default_rng(0))
    assert np.bincount(labels).tolist() == [292, 28, 60, 20]
    assert np.bincount(long_tailed_labels(20, (0.73, 0.07, 0.15, 0.05), np.random.default_rng(0))).tolist() == [
        11, 3, 3, 3]  # 20 - 3 - 3 - 3: every grade keeps MIN_PER_CLASS (3) patients (round(1.4), round(1.0) lifted)
    with pytest.raises(ValueError):
        long_tailed_labels(11, (0.73, 0.07, 0.15, 0.05), np.random.default_rng(0))
    synthesize(tmp_path, modalities=["fundus-lt"], patients=60, seed=0, size=32)
    rows = _rows(tmp_path / "fundus-lt" / "manifest.csv")
    per = {r["patient_id"]: r["label"] for r in rows}
    # the shipped shares on 60 patients: round(4.2) = 4 mild, 9 moderate, 3 severe, 44 no_dr
    assert sorted(Counter(per.values()).items()) == [("mild", 4), ("moderate", 9), ("no_dr", 44),
                                                                 ("severe", 3)]
    assert {r["modality"] for r in rows} == {"fundus"}  # read and augmented as fundus photographs
    assert all(int(r["grade"]) == ("no_dr", "mild", "moderate", "severe").index(r["label"]) for r in rows)
    im = Image.open(tmp_path / "fundus-lt" / rows[0]["path"])
    assert im.mode == "RGB" and im.size == (32, 32)


def test_fundus_demo_set_has_larger_nuisances_than_the_long_tailed_set(tmp_path: Path):
    """The demo set's sensor noise is DEMO_NOISE (3x the long-tailed set's NOISE) and its gain varies more."""
    from PIL import Image
    from scipy.ndimage import median_filter

    from medcl.data.synth.fundus import DEMO_NOISE, NOISE

    synthesize(tmp_path, modalities=["fundus", "fundus-lt"], patients=12, seed=SEED)
    yy, xx = np.mgrid[:64, :64]
    fov = (yy - 32) ** 2 + (xx - 32) ** 2 < 25**2

    def measure(name: str) -> tuple[float, float]:
        noise, log_level = [], []
        for r in _rows(tmp_path / name / "manifest.csv"):
            img = np.asarray(Image.open(tmp_path / name / r["path"]), dtype=float) / 255.0
            res = (img[..., 1] - median_filter(img[..., 1], 3))[fov]  # the scene is smooth at 3 px, the noise is not
            noise.append(1.4826 * np.median(np.abs(res - np.median(res))))  # robust std (MAD)
            log_level.append(np.log(img[..., 0][fov].mean()))
        return float(np.median(noise)), float(np.std(log_level))

    (demo_noise, demo_gain), (lt_noise, lt_gain) = measure("fundus"), measure("fundus-lt")
    assert demo_noise == pytest.approx(DEMO_NOISE, rel=0.2) and lt_noise == pytest.approx(NOISE, rel=0.2)
    assert demo_gain > 1.2 * lt_gain  # gain drawn with 1.6x the log-std (clipping at 1 shrinks it)
