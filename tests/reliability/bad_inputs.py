"""The bad-input matrix: malformed inputs across the six modalities, the manifest and the config.

Each :class:`Case` builds one malformed input in an empty folder (from real files written by the
real libraries — the demo-data synthesiser, Pillow, pydicom, nibabel, pynrrd, wfdb — then broken)
and names the ``medcl`` command a user would run on it. :func:`message` runs that command in this
process and returns the one line medcl prints about the problem (an ``error: …`` line, a
``row N (path): …`` line of ``medcl data validate``, or a warning), with the case folder written
``<dir>``.

``docs/bad-inputs.md`` is generated from these cases (``python tests/reliability/bad_inputs.py``
rewrites it); ``test_bad_inputs.py`` checks every row of the document against a fresh run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "bad-inputs.md"
OCT_PIPELINE = REPO / "pipelines" / "demo" / "oct.yaml"
HEADER = "patient_id,path,modality,label"
PSEUDONYM_KEY = "bad-inputs-doc-key"


@dataclass(frozen=True)
class Case:
    """One row of the matrix.

    Attributes:
        id: stable identifier (the doc's first column).
        area: ``manifest``, ``config``, a modality, or ``resources``.
        input: what is wrong with the input, in words.
        build: ``build(folder, demo) -> argv`` writes the input into ``folder`` (the working directory
            of the command) using the demo set ``demo``, and returns the ``medcl`` arguments.
    """

    id: str
    area: str
    input: str
    build: Callable[[Path, Path], list[str]]


# --------------------------------------------------------------------------------------- helpers
def manifest(d: Path, rows: list[str], header: str = HEADER, name: str = "manifest.csv") -> str:
    (d / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return name


def copy(demo: Path, src: str, d: Path, dst: str) -> Path:
    out = d / dst
    out.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if (demo / src).is_dir() else shutil.copy)(demo / src, out)
    return out


def validate(name: str = "manifest.csv", *extra: str) -> list[str]:
    return ["data", "validate", name, "--workers", "1", *extra]


def one_row(d: Path, path: str, modality: str, label: str = "") -> list[str]:
    return validate(manifest(d, [f"P001,{path},{modality},{label}"]))


def png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def dry_run(d: Path, manifest_name: str, *sets: str) -> list[str]:
    """``medcl run pipelines/demo/oct.yaml --dry-run`` on a manifest in ``d``."""
    args = ["run", str(OCT_PIPELINE), "--dry-run", "--set", f"data.manifest={manifest_name}",
            "--set", "data.label_column=label", "--set", f"runtime.output_dir={d / 'runs'}"]
    for s in sets:
        args += ["--set", s]
    return args


def oct_rows(n_patients: int, per_patient: int, labels: Callable[[int], str], d: Path, demo: Path) -> list[str]:
    """``n_patients`` × ``per_patient`` real OCT rows (the demo B-scans reused)."""
    src = sorted((demo / "oct" / "images").glob("*.png"))
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            rel = f"img/p{p:03d}_{k}.png"
            copy(demo, str(src[(p * per_patient + k) % len(src)].relative_to(demo)), d, rel)
            rows.append(f"P{p:03d},{rel},oct,{labels(p)}")
    return rows


def config(d: Path, text: str, *args: str) -> list[str]:
    (d / "pipeline.yaml").write_text(text, encoding="utf-8")
    return ["config", "pipeline.yaml", *args]


def ct_series(demo: Path, d: Path, dst: str = "series") -> Path:
    src = next(p for p in sorted((demo / "ct" / "series").iterdir()) if p.is_dir())
    return copy(demo, str(src.relative_to(demo)), d, dst)


def wfdb_record(d: Path, name: str, signal: np.ndarray, fs: float = 100.0) -> Path:
    """A WFDB record (``.hea`` + ``.dat``) written by the wfdb package; ``signal`` is ``(T, leads)`` in mV."""
    import wfdb

    d.mkdir(parents=True, exist_ok=True)
    n = signal.shape[1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n, sig_name=[f"L{i}" for i in range(n)], p_signal=signal,
                fmt=["16"] * n, adc_gain=[200.0] * n, baseline=[0] * n, write_dir=str(d))
    return d / f"{name}.hea"


# --------------------------------------------------------------------------------------- the cases
def _m_missing(d, demo):
    return validate("nothere.csv")


def _m_not_utf8(d, demo):
    png(d / "a.png", np.zeros((16, 16), np.uint8))
    (d / "manifest.csv").write_bytes(f"{HEADER}\nP001,a.png,oct,\nJOS\xc9,a.png,oct,\n".encode("latin-1"))
    return validate()


def _m_missing_column(d, demo):
    return validate(manifest(d, ["P001,a.png,oct"], header="patient,path,modality"))


def _m_duplicate_column(d, demo):
    return validate(manifest(d, ["P001,a.png,oct,b.png"], header="patient_id,path,modality,Path"))


def _m_empty(d, demo):
    (d / "manifest.csv").write_text("")
    return validate()


def _m_bad_modality(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "a.png")
    return one_row(d, "a.png", "octt")


def _m_bad_split(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "a.png")
    return validate(manifest(d, ["P001,a.png,oct,,tran"], header=HEADER + ",split"))


def _m_empty_patient(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "a.png")
    return validate(manifest(d, [",a.png,oct,"]))


def _m_empty_path(d, demo):
    return validate(manifest(d, ["P001,,oct,"]))


def _m_label_typo(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "a.png")
    return validate(manifest(d, ["P001,a.png,oct,eraly"]), "--classes", "normal,early,intermediate")


def _m_duplicate_row(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "a.png")
    return validate(manifest(d, ["P001,a.png,oct,", "P001,a.png,oct,"]))


def _m_two_splits(d, demo):
    for k in (1, 2):
        copy(demo, f"oct/images/p0001_scan{k}.png", d, f"s{k}.png")
    return validate(manifest(d, ["P001,s1.png,oct,,train", "P001,s2.png,oct,,test"], header=HEADER + ",split"))


def _m_escapes_root(d, demo):
    (d / "data").mkdir()
    copy(demo, "oct/images/p0001_scan1.png", d, "outside.png")
    return validate(manifest(d / "data", ["P001,../outside.png,oct,"]).join(["data/", ""]))


def _m_missing_file(d, demo):
    return one_row(d, "scans/nothere.png", "oct")


def _m_bad_json(d, demo):
    (d / "datalist.json").write_text('{"training": [{"image": "a.png", "patient_id": "P001",}]}')
    return validate("datalist.json")


def _m_json_not_datalist(d, demo):
    (d / "datalist.json").write_text('[{"image": "a.png"}]')
    return validate("datalist.json")


def _c_unknown_key(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "pretrain.epocs=5"]


def _c_unknown_key_yaml(d, demo):
    return config(d, f"include: [{OCT_PIPELINE}]\ntrainng:\n  epochs: 5\n")


def _c_wrong_type(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "pretrain.epochs=ten"]


def _c_out_of_range(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "pretrain.lr=-0.1"]


def _c_bad_choice(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "pretrain.optimizer=adamww"]


def _c_bad_stage(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "stages=[pretrian, classify]"]


def _c_yaml_syntax(d, demo):
    return config(d, "name: broken\npretrain:\n  epochs: 5\n    lr: 0.1\n")


def _c_missing_include(d, demo):
    return config(d, "include: [configs/nothere.yaml]\nname: x\n")


def _c_override_syntax(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "pretrain.epochs"]


def _c_no_manifest(d, demo):
    return ["run", str(OCT_PIPELINE), "--dry-run", "--set", "data.manifest=null"]


def _c_label_column(d, demo):
    rows = oct_rows(4, 1, lambda p: "normal", d, demo)
    return dry_run(d, manifest(d, rows), "data.label_column=grade")


def _c_not_mapping(d, demo):
    return config(d, "- just\n- a list\n")


def _o_truncated(d, demo):
    data = (demo / "oct" / "images" / "p0001_scan1.png").read_bytes()
    (d / "scan.png").write_bytes(data[: len(data) // 2])
    return one_row(d, "scan.png", "oct")


def _o_not_image(d, demo):
    (d / "scan.png").write_text("patient report, not an image\n")
    return one_row(d, "scan.png", "oct")


def _o_empty(d, demo):
    (d / "scan.png").write_bytes(b"")
    return one_row(d, "scan.png", "oct")


def _o_tiny(d, demo):
    png(d / "scan.png", np.zeros((2, 2), np.uint8))
    return one_row(d, "scan.png", "oct")


def _o_unknown_suffix(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "scan.pgm")
    return one_row(d, "scan.pgm", "oct")


def _o_folder(d, demo):
    (d / "scan.png").mkdir()
    return one_row(d, "scan.png", "oct")


def _f_grayscale(d, demo):
    png(d / "eye.png", np.full((32, 32), 100, np.uint8))
    return one_row(d, "eye.png", "fundus")


def _f_truncated_jpeg(d, demo):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "eye.jpg")
    data = (d / "eye.jpg").read_bytes()
    (d / "eye.jpg").write_bytes(data[: len(data) // 3])
    return one_row(d, "eye.jpg", "fundus")


def _f_four_channels(d, demo):
    import tifffile

    tifffile.imwrite(d / "eye.tif", np.zeros((32, 32, 5), np.uint8), planarconfig="contig")
    return one_row(d, "eye.tif", "fundus")


def _h_corrupt_tiff(d, demo):
    slide = next((demo / "histo" / "slides").glob("*.tif"))
    data = slide.read_bytes()
    (d / "slide.tif").write_bytes(data[:16] + b"\0" * 64)
    return one_row(d, "slide.tif", "histo")


def _h_slide_magnification(d, demo):
    copy(demo, "histo/slides/p0001.tif", d, "slide.tif")
    return [*one_row(d, "slide.tif", "histo"), "--magnification", "40"]


def _h_slide_no_tissue(d, demo):
    import tifffile

    glass = np.full((256, 256, 3), 236, np.uint8)
    with tifffile.TiffWriter(str(d / "blank.tif")) as tif:
        tif.write(glass, tile=(64, 64), photometric="rgb", subifds=1, resolution=(2e4, 2e4),
                  resolutionunit="CENTIMETER")
        tif.write(glass[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    return [*one_row(d, "blank.tif", "histo"), "--tile-size", "64"]


def _h_flat_tiff(d, demo):
    import tifffile

    tifffile.imwrite(str(d / "flat.tif"), np.full((512, 512, 3), 150, np.uint8), photometric="rgb")
    return [*one_row(d, "flat.tif", "histo"), "--slides"]


def _h_mrxs_member(d, demo):
    folder = d / "slide"
    folder.mkdir()
    (d / "slide.mrxs").write_bytes(b"MIRAX index")
    (folder / "Slidedat.ini").write_text("[HIERARCHICAL]\nINDEXFILE=Index.dat\n[DATAFILE]\nFILE_COUNT=2\n"
                                         "FILE_0=Data0000.dat\nFILE_1=Data0001.dat\n")
    for name in ("Index.dat", "Data0000.dat"):
        (folder / name).write_bytes(b"\1" * 32)
    return one_row(d, "slide.mrxs", "histo")


def _h_mrxs_no_folder(d, demo):
    (d / "slide.mrxs").write_bytes(b"MIRAX index")
    return one_row(d, "slide.mrxs", "histo")


def _h_volume(d, demo):
    nifti(d / "tile.nii.gz", np.zeros((16, 16, 8), np.float32))
    return one_row(d, "tile.nii.gz", "histo")


def _ct_single_slice(d, demo):
    series = ct_series(demo, d)
    for f in sorted(series.iterdir())[1:]:
        f.unlink()
    return one_row(d, "series", "ct")


def _ct_empty_folder(d, demo):
    (d / "series").mkdir()
    return one_row(d, "series", "ct")


def _ct_2d(d, demo):
    copy(demo, "oct/images/p0001_scan1.png", d, "slice.png")
    return one_row(d, "slice.png", "ct")


def _ct_truncated_pixels(d, demo):
    series = ct_series(demo, d)
    f = sorted(series.iterdir())[3]
    data = f.read_bytes()
    f.write_bytes(data[:-200])
    return one_row(d, "series", "ct")


def _ct_truncated_header(d, demo):
    series = ct_series(demo, d)
    f = sorted(series.iterdir())[3]
    f.write_bytes(f.read_bytes()[:300])  # `head -c 300`: the copy stops inside the header
    return one_row(d, "series", "ct")


def _ct_two_series(d, demo):
    import pydicom
    from pydicom.uid import generate_uid

    series = ct_series(demo, d)
    uid = generate_uid(entropy_srcs=["bad-inputs", "second-series"])
    for f in sorted(series.iterdir())[:8]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = 3
        ds.save_as(f)
    return one_row(d, "series", "ct")


def _ct_nan(d, demo):
    a = np.zeros((16, 16, 8), np.float32)
    a[3, 4, 5] = np.nan
    nifti(d / "vol.nii.gz", a)
    return one_row(d, "vol.nii.gz", "ct")


def _ct_mask_shape(d, demo):
    nifti(d / "vol.nii.gz", np.zeros((16, 16, 8), np.float32))
    nifti(d / "mask.nii.gz", np.zeros((16, 16, 6), np.uint8))
    return validate(manifest(d, ["P001,vol.nii.gz,ct,,mask.nii.gz"], header=HEADER + ",mask"))


def _ct_too_large(d, demo):
    ct_series(demo, d)
    return validate(manifest(d, ["P001,series,ct,"]), "--max-voxels", "10000")


def _mr_truncated_gz(d, demo):
    data = next((demo / "mri" / "images").glob("*.nii.gz")).read_bytes()
    (d / "t1.nii.gz").write_bytes(data[: len(data) // 2])
    return one_row(d, "t1.nii.gz", "mri")


def _mr_bad_nrrd(d, demo):
    (d / "t2.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8\nencoding: raw\n\n" + b"\0" * 256)
    return one_row(d, "t2.nrrd", "mri")


def _mr_channels(d, demo):
    nifti(d / "multi.nii.gz", np.zeros((16, 16, 8, 2), np.float32))
    return one_row(d, "multi.nii.gz", "mri")


def _mr_mask_affine(d, demo):
    nifti(d / "t1.nii.gz", np.zeros((16, 16, 8), np.float32))
    aff = np.eye(4)
    aff[0, 3] = 5.0
    nifti(d / "mask.nii.gz", np.zeros((16, 16, 8), np.uint8), aff)
    return validate(manifest(d, ["P001,t1.nii.gz,mri,,mask.nii.gz"], header=HEADER + ",mask"))


def _mr_gz_not_gzip(d, demo):
    (d / "t1.nii.gz").write_bytes(b"this is not gzip data at all" * 10)
    return one_row(d, "t1.nii.gz", "mri")


def _e_no_dat(d, demo):
    copy(demo, "ecg/records/p0001_r1.hea", d, "rec.hea")
    return one_row(d, "rec.hea", "ecg")


def _e_bad_header(d, demo):
    copy(demo, "ecg/records/p0001_r1.dat", d, "rec.dat")
    (d / "rec.hea").write_text("rec twelve 100 1000\n")
    return one_row(d, "rec.hea", "ecg")


def _e_short(d, demo):
    wfdb_record(d, "rec", np.zeros((50, 2)))
    return one_row(d, "rec.hea", "ecg")


def _e_transposed(d, demo):
    wfdb_record(d, "rec", np.zeros((12, 20)))
    return one_row(d, "rec.hea", "ecg")


def _e_truncated_dat(d, demo):
    copy(demo, "ecg/records/p0001_r1.hea", d, "p0001_r1.hea")
    data = (demo / "ecg" / "records" / "p0001_r1.dat").read_bytes()
    (d / "p0001_r1.dat").write_bytes(data[: len(data) // 4])
    return one_row(d, "p0001_r1.hea", "ecg")


def _r_single_patient_class(d, demo):
    labels = ["normal"] * 5 + ["early"] * 5 + ["intermediate"]
    return dry_run(d, manifest(d, oct_rows(len(labels), 2, lambda p: labels[p], d, demo)))


def _r_empty_split(d, demo):
    rows = oct_rows(6, 1, lambda p: "normal" if p % 2 else "early", d, demo)
    rows = [r + ",train" for r in rows]
    return dry_run(d, manifest(d, rows, header=HEADER + ",split"))


def _r_too_few_patients(d, demo):
    return dry_run(d, manifest(d, oct_rows(3, 2, lambda p: "normal" if p % 2 else "early", d, demo)))


def _r_too_large_run(d, demo):
    rows = oct_rows(8, 1, lambda p: "normal" if p % 2 else "early", d, demo)
    return dry_run(d, manifest(d, rows), "data.max_voxels=1000")


def _r_no_val_for_calibration(d, demo):
    rows = oct_rows(8, 1, lambda p: "normal" if p % 2 else "early", d, demo)
    return dry_run(d, manifest(d, rows), "data.val_fraction=0", "stages=[pretrain, classify, calibrate]")


# --- more formats (issue: every broken input named) -----------------------------------------------
def _mr_nan_affine(d, demo):
    import struct

    nifti(d / "t1.nii", np.zeros((16, 16, 8), np.float32))
    raw = bytearray((d / "t1.nii").read_bytes())
    raw[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1: the sform is the affine
    raw[296 + 4:296 + 8] = struct.pack("<f", float("nan"))  # srow_y[1]: the y voxel size is NaN
    (d / "t1.nii").write_bytes(bytes(raw))
    return one_row(d, "t1.nii", "mri")


def _mr_nrrd_missing_data(d, demo):
    (d / "t2.nhdr").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8 4\nendian: little\n"
                               "encoding: raw\ndata file: t2.raw\n\n")
    return one_row(d, "t2.nhdr", "mri")


def _mr_mask_spacing(d, demo):
    nifti(d / "t1.nii.gz", np.zeros((16, 16, 8), np.float32))
    nifti(d / "mask.nii.gz", np.zeros((16, 16, 8), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    return validate(manifest(d, ["P001,t1.nii.gz,mri,,mask.nii.gz"], header=HEADER + ",mask"))


def _mr_mask_missing(d, demo):
    nifti(d / "t1.nii.gz", np.zeros((16, 16, 8), np.float32))
    return validate(manifest(d, ["P001,t1.nii.gz,mri,,nothere_mask.nii.gz"], header=HEADER + ",mask"))


def _e_length_mismatch(d, demo):
    wfdb_record(d, "rec", np.zeros((400, 2)))
    hea = (d / "rec.hea").read_text().splitlines()
    first = hea[0].split()
    first[3] = "4000"  # the header promises 10x the samples the .dat holds
    (d / "rec.hea").write_text("\n".join([" ".join(first), *hea[1:]]) + "\n")
    return one_row(d, "rec.hea", "ecg")


def _e_nan_samples(d, demo):
    sig = np.zeros((400, 2))
    sig[100:110, 0] = np.nan  # a lead disconnected: WFDB writes the "missing sample" code
    wfdb_record(d, "rec", sig)
    return one_row(d, "rec.hea", "ecg")


def _o_alpha(d, demo):
    a = np.zeros((32, 32, 2), np.uint8)
    a[..., 1] = 255
    a[:8, :8, 1] = 0  # a transparent corner
    from PIL import Image

    Image.fromarray(a, mode="LA").save(d / "scan.png")
    return one_row(d, "scan.png", "oct")


def _h_rgba(d, demo):
    png(d / "tile.png", np.full((32, 32, 4), 200, np.uint8))
    return one_row(d, "tile.png", "histo")


def _ct_dicom_no_pixels(d, demo):
    import pydicom

    series = ct_series(demo, d)
    src = sorted(series.iterdir())[0]
    ds = pydicom.dcmread(src)
    del ds.PixelData
    ds.save_as(d / "slice.dcm")
    return one_row(d, "slice.dcm", "ct")


def _m_mask_column_missing_file(d, demo):
    copy(demo, "oct/images/" + sorted(p.name for p in (demo / "oct" / "images").glob("*.png"))[0], d, "a.png")
    return validate(manifest(d, ["P001,a.png,oct,,nothere_mask.png"], header=HEADER + ",mask"))


def _m_semicolon(d, demo):
    (d / "manifest.csv").write_text("patient_id;path;modality;label\nP001;a.png;oct;\n", encoding="utf-8")
    return validate("manifest.csv")


def _m_tab_in_csv(d, demo):
    (d / "manifest.csv").write_text("patient_id\tpath\tmodality\tlabel\nP001\ta.png\toct\t\n", encoding="utf-8")
    return validate("manifest.csv")


def _c_include_cycle(d, demo):
    (d / "a.yaml").write_text("include: [b.yaml]\nname: a\n")
    (d / "b.yaml").write_text("include: [a.yaml]\n")
    return ["config", "a.yaml"]


def _c_fraction_too_large(d, demo):
    return ["config", str(OCT_PIPELINE), "--set", "data.val_fraction=1.5"]


def _c_unknown_method(d, demo):
    rows = oct_rows(8, 2, lambda p: ["normal", "early", "intermediate"][p % 3], d, demo)
    return dry_run(d, manifest(d, rows), "pretrain.method=simclrr")


def _c_hardneg_no_pairs(d, demo):
    rows = oct_rows(8, 2, lambda p: ["normal", "early", "intermediate"][p % 3], d, demo)
    return dry_run(d, manifest(d, rows), "pretrain.method=supcon-hardneg")


def _c_pair_unknown_class(d, demo):
    rows = oct_rows(8, 2, lambda p: ["normal", "early", "intermediate"][p % 3], d, demo)
    return dry_run(d, manifest(d, rows), "classify.pairs=[[early, intermdiate]]")


def _r_detect_no_normal_class(d, demo):
    rows = oct_rows(8, 2, lambda p: ["normal", "early", "intermediate"][p % 3], d, demo)
    return dry_run(d, manifest(d, rows), "stages=[pretrain, detect]")


EYE_PIPELINE = REPO / "pipelines" / "demo" / "eye-multimodal.yaml"


def eye_rows(n_patients: int, d: Path, demo: Path, without_fundus: int) -> list[str]:
    """An OCT B-scan and a fundus photograph (the demo's, reused) per patient; ``without_fundus`` has no photograph."""
    octs = sorted((demo / "oct" / "images").glob("*.png"))
    photos = sorted((demo / "fundus" / "images").glob("*.png"))
    rows = []
    for p in range(n_patients):
        label = "healthy" if p % 2 else "amd"
        copy(demo, str(octs[p % len(octs)].relative_to(demo)), d, f"oct/p{p:03d}.png")
        rows.append(f"P{p:03d},oct/p{p:03d}.png,oct,{label}")
        if p != without_fundus:
            copy(demo, str(photos[p % len(photos)].relative_to(demo)), d, f"fundus/p{p:03d}.png")
            rows.append(f"P{p:03d},fundus/p{p:03d}.png,fundus,{label}")
    return rows


def _f_missing_modality(d, demo):
    return ["run", str(EYE_PIPELINE), "--dry-run", "--set", f"data.manifest={manifest(d, eye_rows(8, d, demo, 5))}",
            "--set", f"runtime.output_dir={d / 'runs'}", "--set", "fuse.require_all=true"]


def _f_unknown_modality(d, demo):
    return ["run", str(EYE_PIPELINE), "--dry-run", "--set", f"data.manifest={manifest(d, eye_rows(8, d, demo, -1))}",
            "--set", f"runtime.output_dir={d / 'runs'}", "--set",
            "fuse.modalities={octt: {pipeline: demo/oct.yaml}, fundus: {pipeline: demo/fundus.yaml}}"]


CASES: list[Case] = [
    Case("manifest-missing", "manifest", "the manifest file does not exist", _m_missing),
    Case("manifest-not-utf8", "manifest", "manifest saved as Latin-1 (a name with É)", _m_not_utf8),
    Case("manifest-missing-column", "manifest", "header says `patient` instead of `patient_id`", _m_missing_column),
    Case("manifest-duplicate-column", "manifest", "two columns `path` and `Path`", _m_duplicate_column),
    Case("manifest-empty", "manifest", "empty manifest file (0 bytes)", _m_empty),
    Case("manifest-bad-modality", "manifest", "modality `octt`", _m_bad_modality),
    Case("manifest-bad-split", "manifest", "split `tran`", _m_bad_split),
    Case("manifest-empty-patient", "manifest", "empty patient_id cell", _m_empty_patient),
    Case("manifest-empty-path", "manifest", "empty path cell", _m_empty_path),
    Case("manifest-label-typo", "manifest", "label `eraly` with classes normal, early, intermediate", _m_label_typo),
    Case("manifest-duplicate-row", "manifest", "the same row twice", _m_duplicate_row),
    Case("manifest-patient-two-splits", "manifest", "one patient in train and in test", _m_two_splits),
    Case("manifest-path-escapes-root", "manifest", "path `../outside.png` outside the dataset root", _m_escapes_root),
    Case("manifest-missing-file", "manifest", "path to a file that does not exist", _m_missing_file),
    Case("manifest-json-syntax", "manifest", "MONAI datalist JSON with a trailing comma", _m_bad_json),
    Case("manifest-json-not-datalist", "manifest", "JSON list instead of a datalist object", _m_json_not_datalist),
    Case("config-unknown-key", "config", "`--set pretrain.epocs=5` (typo)", _c_unknown_key),
    Case("config-unknown-section", "config", "YAML section `trainng:`", _c_unknown_key_yaml),
    Case("config-wrong-type", "config", "`pretrain.epochs=ten`", _c_wrong_type),
    Case("config-out-of-range", "config", "`pretrain.lr=-0.1`", _c_out_of_range),
    Case("config-bad-choice", "config", "`pretrain.optimizer=adamww`", _c_bad_choice),
    Case("config-bad-stage", "config", "stage `pretrian`", _c_bad_stage),
    Case("config-yaml-syntax", "config", "YAML with a wrong indentation", _c_yaml_syntax),
    Case("config-missing-include", "config", "`include:` of a file that does not exist", _c_missing_include),
    Case("config-override-syntax", "config", "`--set pretrain.epochs` without `=`", _c_override_syntax),
    Case("config-no-manifest", "config", "`data.manifest` not set", _c_no_manifest),
    Case("config-label-column", "config", "`data.label_column=grade` but the manifest has no such column",
         _c_label_column),
    Case("config-not-a-mapping", "config", "pipeline YAML that is a list", _c_not_mapping),
    Case("oct-truncated-png", "oct", "PNG cut in half (interrupted copy)", _o_truncated),
    Case("oct-not-an-image", "oct", "text file named `.png`", _o_not_image),
    Case("oct-empty-file", "oct", "0-byte `.png`", _o_empty),
    Case("oct-tiny-image", "oct", "2×2-pixel PNG", _o_tiny),
    Case("oct-unknown-suffix", "oct", "image with suffix `.pgm`", _o_unknown_suffix),
    Case("oct-folder-not-file", "oct", "a folder named `scan.png`", _o_folder),
    Case("fundus-grayscale", "fundus", "grayscale photograph (1 channel)", _f_grayscale),
    Case("fundus-truncated-jpeg", "fundus", "JPEG cut to a third", _f_truncated_jpeg),
    Case("fundus-five-channels", "fundus", "TIFF with 5 channels", _f_four_channels),
    Case("histo-corrupt-tiff", "histo", "slide TIFF whose directory is overwritten", _h_corrupt_tiff),
    Case("histo-slide-magnification", "histo", "slide scanned at 20x, tiles asked at 40x (`--magnification 40`)",
         _h_slide_magnification),
    Case("histo-slide-no-tissue", "histo", "slide of blank glass (no tissue to tile)", _h_slide_no_tissue),
    Case("histo-flat-tiff", "histo", "a single-level TIFF in a slides manifest (`--slides`)", _h_flat_tiff),
    Case("histo-mrxs-member", "histo", "MIRAX slide whose folder lacks one data file its Slidedat.ini names",
         _h_mrxs_member),
    Case("histo-mrxs-no-folder", "histo", "MIRAX `.mrxs` copied without its folder", _h_mrxs_no_folder),
    Case("histo-volume", "histo", "a 3D NIfTI volume given as a histology tile", _h_volume),
    Case("ct-single-slice", "ct", "DICOM series folder with one slice left", _ct_single_slice),
    Case("ct-empty-folder", "ct", "empty series folder", _ct_empty_folder),
    Case("ct-2d-image", "ct", "a PNG given as a CT volume", _ct_2d),
    Case("ct-truncated-slice", "ct", "one DICOM slice missing the end of its pixel data", _ct_truncated_pixels),
    Case("ct-truncated-header", "ct", "one DICOM slice cut to its first 300 bytes (`head -c 300`)",
         _ct_truncated_header),
    Case("ct-two-series", "ct", "two series mixed in one folder", _ct_two_series),
    Case("ct-nan", "ct", "NIfTI volume with a NaN voxel", _ct_nan),
    Case("ct-mask-shape", "ct", "mask with 6 slices for an 8-slice volume", _ct_mask_shape),
    Case("ct-too-large", "ct", "series larger than the memory setting (`--max-voxels 10000`)", _ct_too_large),
    Case("mri-truncated-nifti", "mri", "`.nii.gz` cut in half", _mr_truncated_gz),
    Case("mri-not-gzip", "mri", "`.nii.gz` that is not gzip data", _mr_gz_not_gzip),
    Case("mri-bad-nrrd", "mri", "NRRD header with 2 sizes for 3 dimensions", _mr_bad_nrrd),
    Case("mri-two-channels", "mri", "NIfTI with 2 channels (two sequences in one file)", _mr_channels),
    Case("mri-mask-affine", "mri", "mask shifted 5 mm from its image", _mr_mask_affine),
    Case("ecg-missing-dat", "ecg", "WFDB header without its `.dat` signal file", _e_no_dat),
    Case("ecg-bad-header", "ecg", "WFDB header with text where the signal count belongs", _e_bad_header),
    Case("ecg-truncated-dat", "ecg", "WFDB `.dat` cut to a quarter", _e_truncated_dat),
    Case("ecg-too-short", "ecg", "ECG of 50 samples (0.5 s)", _e_short),
    Case("ecg-transposed", "ecg", "ECG stored as (T, leads): 20 \"leads\" of 12 samples", _e_transposed),
    Case("resources-single-patient-class", "resources", "class `intermediate` with a single patient",
         _r_single_patient_class),
    Case("resources-empty-split", "resources", "split column puts every patient in train (empty test split)",
         _r_empty_split),
    Case("resources-too-few-patients", "resources", "3 patients for train/val/test", _r_too_few_patients),
    Case("resources-too-large", "resources", "images larger than `data.max_voxels=1000`", _r_too_large_run),
    Case("resources-no-val-for-calibration", "resources", "`data.val_fraction=0` with the calibrate stage",
         _r_no_val_for_calibration),
    Case("mri-nan-affine", "mri", "NIfTI whose affine has a NaN", _mr_nan_affine),
    Case("mri-nrrd-missing-data", "mri", "detached NRRD header whose data file is missing", _mr_nrrd_missing_data),
    Case("mri-mask-spacing", "mri", "mask with 2 mm voxels for a 1 mm image (same shape)", _mr_mask_spacing),
    Case("mri-mask-missing", "mri", "mask column naming a file that does not exist", _mr_mask_missing),
    Case("ecg-length-mismatch", "ecg", "WFDB header promising 4000 samples, `.dat` holding 400", _e_length_mismatch),
    Case("ecg-nan-samples", "ecg", "WFDB record with missing samples (a disconnected lead)", _e_nan_samples),
    Case("oct-alpha-png", "oct", "grey PNG with a partly transparent alpha channel", _o_alpha),
    Case("histo-rgba-tile", "histo", "RGBA tile with a semi-transparent alpha channel", _h_rgba),
    Case("ct-dicom-no-pixels", "ct", "single DICOM file without PixelData", _ct_dicom_no_pixels),
    Case("manifest-mask-missing", "manifest", "mask column naming a PNG that does not exist",
         _m_mask_column_missing_file),
    Case("manifest-semicolon", "manifest", "manifest separated by `;` (European Excel)", _m_semicolon),
    Case("manifest-tabs-in-csv", "manifest", "tab-separated manifest named `.csv`", _m_tab_in_csv),
    Case("config-include-cycle", "config", "two YAML files that include each other", _c_include_cycle),
    Case("config-fraction-too-large", "config", "`data.val_fraction=1.5`", _c_fraction_too_large),
    Case("config-unknown-method", "config", "`pretrain.method=simclrr`", _c_unknown_method),
    Case("config-hardneg-no-pairs", "config", "`supcon-hardneg` without confusable pairs", _c_hardneg_no_pairs),
    Case("config-pair-unknown-class", "config", "`classify.pairs` naming a class with a typo", _c_pair_unknown_class),
    Case("config-detect-no-normal-class", "config", "the detect stage without `detect.normal_class`",
         _r_detect_no_normal_class),
    Case("fusion-modality-missing", "manifest", "a patient without its fundus photograph, with `fuse.require_all`",
         _f_missing_modality),
    Case("fusion-unknown-modality", "config", "`fuse.modalities` naming `octt`", _f_unknown_modality),
]


#: What each case's printed line must contain, written by hand from the input (case-insensitive substrings): where
#: (the file, row or key), the fault in words, and the fix. The test checks the line against these; the document
#: shows them next to the line.
EXPECT: dict[str, tuple[str, ...]] = {
    "manifest-missing": ("nothere.csv", "does not exist", "check the path"),
    "manifest-not-utf8": ("manifest.csv", "utf-8", "line 3", "re-save"),
    "manifest-missing-column": ("patient_id", "missing", "did you mean 'patient'", "rename"),
    "manifest-duplicate-column": ("'path'", "twice", "rename or remove"),
    "manifest-empty": ("manifest.csv", "empty", "header"),
    "manifest-bad-modality": ("row 1", "octt", "did you mean 'oct'"),
    "manifest-bad-split": ("row 1", "tran", "did you mean 'train'"),
    "manifest-empty-patient": ("row 1", "patient_id", "empty", "give every row"),
    "manifest-empty-path": ("row 1", "path", "empty"),
    "manifest-label-typo": ("row 1", "eraly", "did you mean 'early'", "normal, early, intermediate"),
    "manifest-duplicate-row": ("row 2", "duplicate of row 1", "remove"),
    "manifest-patient-two-splits": ("row 2", "train", "test", "one split"),
    "manifest-path-escapes-root": ("row 1", "../outside.png", "outside the dataset root", "move it"),
    "manifest-missing-file": ("row 1", "nothere.png", "does not exist", "check the path"),
    "manifest-json-syntax": ("datalist.json", "not valid json", "fix the json"),
    "manifest-json-not-datalist": ("datalist.json", "not a monai datalist", "training"),
    "config-unknown-key": ("pretrain.epocs", "unknown key", "did you mean 'pretrain.epochs'"),
    "config-unknown-section": ("trainng", "unknown key", "did you mean"),
    "config-wrong-type": ("pretrain.epochs", "ten", "integer"),
    "config-out-of-range": ("pretrain.lr", "-0.1", "greater than 0"),
    "config-bad-choice": ("pretrain.optimizer", "adamww", "did you mean 'adamw'"),
    "config-bad-stage": ("stages", "pretrian", "did you mean 'pretrain'"),
    "config-yaml-syntax": ("pipeline.yaml:4", "invalid yaml", "indentation"),
    "config-missing-include": ("nothere.yaml", "does not exist", "relative to the file that includes them"),
    "config-override-syntax": ("pretrain.epochs", "no '='", "section.key=value"),
    "config-no-manifest": ("data.manifest", "no manifest", "--set data.manifest"),
    "config-label-column": ("data.label_column", "no column 'grade'", "columns"),
    "config-not-a-mapping": ("pipeline.yaml", "list", "mapping"),
    "oct-truncated-png": ("row 1", "scan.png", "truncated", "re-export"),
    "oct-not-an-image": ("row 1", "scan.png", "not an image", "re-export"),
    "oct-empty-file": ("row 1", "scan.png", "empty", "0 bytes", "re-export"),
    "oct-tiny-image": ("row 1", "2×2", "at least"),
    "oct-unknown-suffix": ("row 1", ".pgm", "unknown file type", "format="),
    "oct-folder-not-file": ("row 1", "scan.png", "folder", "point the path"),
    "fundus-grayscale": ("row 1", "eye.png", "1 channel", "rgb"),
    "fundus-truncated-jpeg": ("row 1", "eye.jpg", "truncated", "re-export"),
    "fundus-five-channels": ("row 1", "eye.tif", "5 samples per pixel", "convert"),
    "histo-corrupt-tiff": ("row 1", "slide.tif", "corrupt", "slide", "re-export"),
    "histo-slide-magnification": ("row 1", "slide.tif", "40x is not available", "scanned at 20", "or lower"),
    "histo-slide-no-tissue": ("row 1", "blank.tif", "no tissue found", "min_tissue"),
    "histo-flat-tiff": ("row 1", "flat.tif", "single resolution level", "no pyramid", "pyramidal tiff"),
    "histo-mrxs-member": ("row 1", "slide/data0001.dat", "missing", "file_1", "copy the whole slide"),
    "histo-mrxs-no-folder": ("row 1", "slide.mrxs", "without its folder", "copy the whole slide"),
    "histo-volume": ("row 1", "tile.nii.gz", "2d image", "single 2d image"),
    "ct-single-slice": ("row 1", "single slice", "whole volume"),
    "ct-empty-folder": ("row 1", "no dicom image files", "point the path"),
    "ct-2d-image": ("row 1", "slice.png", "3d volume", "2d image", "whole volume"),
    "ct-truncated-slice": ("row 1", "series member", ".dcm", "pixel data", "truncated", "re-export"),
    "ct-truncated-header": ("row 1", "series member", ".dcm", "truncated", "300 bytes", "re-export"),
    "ct-two-series": ("row 1", "2 dicom series", "series=", "`series` column"),
    "ct-nan": ("row 1", "vol.nii.gz", "nan", "fix or mask"),
    "ct-mask-shape": ("row 1", "mask.nii.gz", "(16, 16, 6)", "(16, 16, 8)", "resampled to the image grid"),
    "ct-too-large": ("row 1", "too large", "10,000", "max_voxels"),
    "mri-truncated-nifti": ("row 1", "t1.nii.gz", "truncated", "re-export"),
    "mri-not-gzip": ("row 1", "t1.nii.gz", "not a gzip file", "re-export"),
    "mri-bad-nrrd": ("row 1", "t2.nrrd", "sizes", "dimension", "re-export"),
    "mri-two-channels": ("row 1", "2 channels", "one sequence"),
    "mri-mask-affine": ("row 1", "mask.nii.gz", "affine", "5 mm", "resample the mask"),
    "ecg-missing-dat": ("row 1", "rec.hea", "p0001_r1.dat (missing)", "same folder"),
    "ecg-bad-header": ("row 1", "rec.hea", "header", "syntax"),
    "ecg-truncated-dat": ("row 1", "p0001_r1.hea", "p0001_r1.dat (truncated", "header promises", "complete"),
    "ecg-too-short": ("row 1", "50 samples", "at least 100", "complete"),
    "ecg-transposed": ("row 1", "20 leads", "transposed", "(leads, t)"),
    "resources-single-patient-class": ("intermediate", "1 patient", "cannot be stratified", "add patients"),
    "resources-empty-split": ("test split", "no labelled samples", "classify", "split=test"),
    "resources-too-few-patients": ("test_fraction", "3 patients", "0 test patients", "at least 0.17"),
    "resources-too-large": ("row 1", "too large", "1,000", "max_voxels"),
    "resources-no-val-for-calibration": ("val split", "no labelled samples", "calibrate", "split=val"),
    "mri-nan-affine": ("row 1", "t1.nii", "nan", "geometry", "re-export"),
    "mri-nrrd-missing-data": ("row 1", "t2.nhdr", "t2.raw", "no such file", "check the copy"),
    "mri-mask-spacing": ("row 1", "mask.nii.gz", "affine differs", "resample the mask"),
    "mri-mask-missing": ("row 1", "nothere_mask.nii.gz", "does not exist", "mask path"),
    "ecg-length-mismatch": ("row 1", "rec.hea", "rec.dat (truncated: 1600 bytes", "promises 16000", "4000 samples",
                            "complete"),
    "ecg-nan-samples": ("row 1", "rec.hea", "10 nan", "missing values"),
    "oct-alpha-png": ("row 1", "scan.png", "transparency", "flatten"),
    "histo-rgba-tile": ("row 1", "tile.png", "transparency", "flatten"),
    "ct-dicom-no-pixels": ("row 1", "slice.dcm", "no pixel data", "image object"),
    "manifest-mask-missing": ("row 1", "nothere_mask.png", "does not exist", "mask path"),
    "fusion-modality-missing": ("row(s) 11", "1 patient(s) lack a modality", "no fundus row", "require_all: false"),
    "fusion-unknown-modality": ("fuse.modalities.octt", "no octt rows", "did you mean 'oct'"),
    "manifest-semicolon": ("manifest.csv", "separated by semicolons", "comma-separated"),
    "manifest-tabs-in-csv": ("manifest.csv", "separated by tabs", ".tsv"),
    "config-include-cycle": ("a.yaml", "include cycle", "b.yaml", "remove one of the includes"),
    "config-fraction-too-large": ("data.val_fraction", "1.5", "less than 1"),
    "config-unknown-method": ("pretrain.method", "simclrr", "did you mean 'simclr'"),
    "config-hardneg-no-pairs": ("hard_pairs", "supcon-hardneg", "plain supcon", "suggest-hard-pairs"),
    "config-pair-unknown-class": ("classify.pairs[0]", "intermdiate", "did you mean 'intermediate'",
                                  "normal, early, intermediate"),
    "config-detect-no-normal-class": ("detect.normal_class", "normal class", "normal, early, intermediate"),
}


def unmet(case_id: str, msg: str) -> list[str]:
    """The hand-written expectations of ``case_id`` that ``msg`` does not contain (case-insensitive)."""
    low = msg.lower()
    return [e for e in EXPECT[case_id] if e.lower() not in low]


# --------------------------------------------------------------------------------------- running
_MESSAGE = re.compile(r"^(error: |internal error: |row \d+ \(|manifest \(|WARNING )")


def message(case: Case, folder: Path, demo: Path) -> tuple[list[str], str]:
    """Build ``case`` in ``folder``, run its command; returns ``(argv, the line medcl prints)``."""
    from medcl import cli, phi

    folder.mkdir(parents=True, exist_ok=True)
    old_cwd = Path.cwd()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    old_key = os.environ.get("MEDCL_PSEUDONYM_KEY")
    os.environ["MEDCL_PSEUDONYM_KEY"] = PSEUDONYM_KEY  # pseudonyms in the messages are stable
    os.chdir(folder)
    try:
        argv = case.build(folder, demo)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["--log-dir", str(folder / "logs"), *argv])
    finally:
        os.chdir(old_cwd)
        if old_key is None:
            os.environ.pop("MEDCL_PSEUDONYM_KEY", None)
        else:
            os.environ["MEDCL_PSEUDONYM_KEY"] = old_key
        root.handlers[:] = handlers
        root.setLevel(level)
        phi.REGISTRY.clear()
    lines = [ln.rstrip() for ln in (out.getvalue() + "\n" + err.getvalue()).splitlines()]
    found = [ln for ln in lines if _MESSAGE.match(ln)]
    errors = [ln for ln in found if not ln.startswith("WARNING ")]
    line = (errors or found or [f"(nothing printed; exit code {code})"])[0]
    if line.endswith(":") and line in lines:  # a list of problems follows: show the first one too
        nxt = lines[lines.index(line) + 1] if lines.index(line) + 1 < len(lines) else ""
        line = f"{line} {nxt.strip()}"
    if code == 0 and not found:
        line = f"(accepted, exit code 0) {lines[-1] if lines else ''}"
    for p in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
        line = line.replace(p, "<dir>")
        argv = [a.replace(p, "<dir>") for a in argv]
    return argv, line.replace(str(REPO), "<repo>")


def demo_data(root: Path) -> Path:
    """The small demo set the cases copy valid files from (2 patients per modality)."""
    from medcl.data.synth import synthesize

    if not (root / "manifest.csv").exists():
        synthesize(root, patients=2, seed=0)
    return root


# --------------------------------------------------------------------------------------- the document
DOC_HEAD = """# Bad inputs: what medcl says

Every row is a malformed input a hospital data set really contains, the command a user runs on it,
and the **exact** line medcl prints (`<dir>` is the folder the command runs in, `<repo>` the medcl
checkout). Nothing here is a traceback: every problem is reported as `where: what — how to fix`.
`medcl data validate` lists *every* bad row at once (one line each, exit code 1); `medcl run` stops
before training with the same lines (or, with `data.on_error: skip`, excludes the rows and logs
which). Warnings are printed with `WARNING` and the run goes on.

Each case states, written by hand from the input, what its line **must contain** (the file, row or key, the
fault in words, and the fix; case-insensitive): `tests/reliability/test_bad_inputs.py` runs every case and checks
the printed line against that expectation, not against this table. This file is generated from
`tests/reliability/bad_inputs.py` (`python tests/reliability/bad_inputs.py` rewrites it) with the lines of that
run, and the test also checks it is up to date.

| # | id | area | input | command | must contain | what medcl prints |
|---|----|------|-------|---------|--------------|-------------------|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def command_text(argv: list[str]) -> str:
    return "medcl " + " ".join(a.replace(str(REPO), "<repo>") for a in argv if a not in ("--workers", "1"))


def row_line(number: int, case: Case, argv: list[str], msg: str) -> str:
    """One row of the table."""
    must = "; ".join(_code(e) for e in EXPECT[case.id])
    return (f"| {number} | `{case.id}` | {case.area} | {_cell(case.input)} | {_code(command_text(argv))} | "
            f"{must} | {_code(msg)} |")


def _code(text: str) -> str:
    """A Markdown code span (double backticks when the text holds one)."""
    text = _cell(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render(rows: list[tuple[Case, list[str], str]]) -> str:
    return DOC_HEAD + "\n".join(row_line(i, *row) for i, row in enumerate(rows, 1)) + "\n"


def doc_rows(text: str) -> dict[str, str]:
    """``{case id: table row}`` of ``docs/bad-inputs.md``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\| \d+ \| `([^`]+)` \|", line)
        if m:
            out[m.group(1)] = line
    return out


def run_all(work: Path) -> list[tuple[Case, list[str], str]]:
    demo = demo_data(work / "demo")
    return [(case, *message(case, work / case.id, demo)) for case in CASES]


if __name__ == "__main__":  # regenerate docs/bad-inputs.md
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = run_all(Path(tmp))
    DOC.write_text(render(rows), encoding="utf-8")
    width = max(len(c.id) for c, _, _ in rows)
    for case, _, msg in rows:
        print(f"{case.id:<{width}}  {msg}")
