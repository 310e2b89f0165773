"""Manifest validation: every check gives one ``row N (path): what — fix`` line with a stable code.

Files are real PNGs (Pillow) and NIfTI volumes (nibabel) read by medcl's readers.
The table-only tests (``check_files=False``) do not touch the readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medcl import phi
from medcl.data.manifest import load_manifest
from medcl.data.validate import (
    MIN_ECG_SAMPLES,
    check_shape,
    filter_records,
    problems_to_json,
    validate_manifest,
)
from medcl.errors import DataError

HEADER = "patient_id,path,modality,label,mask,split"

@pytest.fixture(autouse=True)
def _restore_phi_registry():
    """These tests register made-up ids and folder names; keep them out of other tests' guard."""
    saved = set(phi.REGISTRY._values)  # private, but this is test isolation only
    yield
    phi.REGISTRY.clear()
    phi.REGISTRY.update(saved)


def png(path: Path, h: int = 16, w: int = 16, rgb: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def nifti(path: Path, shape=(8, 8, 6), affine=None, nan: bool = False, mask: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    if mask:
        data = (rng.random(shape) > 0.5).astype(np.uint8)
    else:
        data = rng.normal(size=shape).astype(np.float32)
        if nan:
            data[1, 2, 3] = np.nan
            data[0, 0, 0] = np.nan
    aff = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    nib.Nifti1Image(data, aff).to_filename(str(path))
    return path


def manifest(root: Path, rows: list[str], header: str = HEADER):
    root.mkdir(parents=True, exist_ok=True)
    p = root / "manifest.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return load_manifest(p)


def only(problems, code):
    found = [p for p in problems if p.code == code]
    assert found, f"no {code!r} problem in {[p.line() for p in problems]}"
    return found


# ----------------------------------------------------------------------------------------------
# table-only checks (no file reading)


def test_problem_line_and_dict_format(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,x,,", "P0001,a.png,oct,x,,"])
    [p] = validate_manifest(m, check_files=False)
    assert p.line() == "row 2 (a.png): duplicate of row 1 (identical row) — remove this row or fix the path (row 1 is kept)"
    d = p.to_dict()
    assert d == {"row": 2, "path": "a.png", "what": "duplicate of row 1 (identical row)",
                 "fix": "remove this row or fix the path (row 1 is kept)", "code": "duplicate-row", "line": p.line()}
    assert json.loads(problems_to_json([p])) == [d]


def test_duplicate_same_path_different_fields(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,x,,", "P0002,b.png,oct,x,,", "P0003,./a.png,oct,y,,"])
    [p] = only(validate_manifest(m, check_files=False), "duplicate-row")
    assert p.line().startswith("row 3 (./a.png): same file as row 1 but a different patient — ")


def test_path_escaping_root(tmp_path):
    (tmp_path / "outside.png").write_bytes(b"")
    m = manifest(tmp_path / "ds", ["P0001,../outside.png,oct,,,", "P0002,ok/../b.png,oct,,,"])
    [p] = validate_manifest(m, check_files=False)
    assert p.code == "path-escapes-root"
    assert p.line().startswith("row 1 (../outside.png): the file '../outside.png' resolves to ")


def test_symlink_escaping_root(tmp_path):
    target = png(tmp_path / "secret" / "x.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "link.png").symlink_to(target)
    m = manifest(tmp_path / "ds", ["P0001,link.png,oct,,,"])
    [p] = validate_manifest(m, check_files=False)
    assert p.code == "path-escapes-root" and p.row == 1


def test_label_outside_class_list_did_you_mean(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,normal,,", "P0002,b.png,oct,drusn,,", "P0003,c.png,oct,,,"])
    probs = validate_manifest(m, check_files=False, classes=["normal", "drusen", "cnv"], task="multiclass")
    [p] = probs  # the unlabelled row 3 is fine
    assert p.code == "label-not-in-classes"
    assert p.line().startswith("row 2 (b.png): label 'drusn' is not one of the classes (did you mean 'drusen'?) — ")


def test_labels_not_checked_without_classes_or_task(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,anything,,"])
    assert validate_manifest(m, check_files=False) == []


def test_patient_in_two_splits(tmp_path):
    rows = ["P0001,a.png,oct,,,train", "P0002,b.png,oct,,,train", "P0001,c.png,oct,,,test",
            "P0001,d.png,oct,,,test", "P0002,e.png,oct,,,train"]
    m = manifest(tmp_path, rows)
    probs = validate_manifest(m, check_files=False)
    assert [(p.row, p.code) for p in probs] == [(3, "patient-in-two-splits"), (4, "patient-in-two-splits")]
    pid = m.records[0].patient
    assert probs[0].line().startswith(f"row 3 (c.png): patient {pid} is in train (row 1) and test (rows 3, 4) — ")
    assert "P0001" not in problems_to_json(probs)
    kept, excluded = filter_records(m, probs)
    assert [r.row for r in kept] == [1, 2, 5] and [e["row"] for e in excluded] == [3, 4]


def test_bad_modality_against_pipeline_modality(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,,,", "P0002,b.png,fundus,,,", "P0003,c.png,funduss,,,"])
    probs = validate_manifest(m, check_files=False, modality="OCT")
    assert [(p.row, p.code) for p in probs] == [(2, "bad-modality"), (3, "bad-modality")]
    assert probs[0].line().startswith("row 2 (b.png): modality 'fundus' but this pipeline is 'oct' — ")
    assert "did you mean 'fundus'" in probs[1].what


def test_sorted_by_row_and_filter_records(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,zz,,", "P0002,b.png,oct,x,,", ",c.png,oct,x,,", "P0002,b.png,oct,x,,"])
    probs = validate_manifest(m, check_files=False, classes=["x"])
    assert [p.row for p in probs] == sorted(p.row for p in probs) == [1, 3, 4]
    kept, excluded = filter_records(m, probs)
    assert [r.row for r in kept] == [2]
    assert [(e["row"], e["codes"]) for e in excluded] == [
        (1, ["label-not-in-classes"]), (3, ["empty-patient-id"]), (4, ["duplicate-row"])]
    json.dumps(excluded)  # JSON-ready for the artifact


def test_filter_records_refuses_whole_manifest_problems(tmp_path):
    m = manifest(tmp_path, ["P0001,a.png,oct,a,,", "P0002,b.png,oct,b,,", "P0003,c.png,oct,c,,"])
    probs = validate_manifest(m, check_files=False, task="binary")
    assert [(p.row, p.code) for p in probs] == [(0, "label-not-in-classes")]
    assert probs[0].line().startswith("manifest (labels): a binary task needs 2 classes")
    with pytest.raises(DataError, match="binary task"):
        filter_records(m, probs)


@pytest.mark.parametrize(
    ("shape", "modality", "expect"),
    [
        ((1, 16, 16), "oct", None),
        ((3, 16, 16), "histo", None),
        ((3, 16, 16), "fundus", None),
        ((1, 16, 16), "fundus", "colour fundus photographs are RGB"),
        ((4, 16, 16), "oct", "4 channels"),
        ((1, 8, 8, 6), "ct", None),
        ((1, 16, 16), "ct", "ct expects a 3D volume but the file is a 2D image"),
        ((2, 8, 8, 6), "mri", "2 channels"),
        ((1, 8, 8, 1), "mri", "single slice"),
        ((12, 5000), "ecg", None),
        ((5000, 12), "ecg", "looks transposed"),
        ((12, MIN_ECG_SAMPLES - 1), "ecg", "samples per lead"),
        ((1, 12, 5000), "ecg", "expected (leads, T)"),
    ],
)
def test_check_shape(shape, modality, expect):
    got = check_shape(shape, modality)
    if expect is None:
        assert got is None
    else:
        assert got is not None and expect in got[0] and got[1]


# ----------------------------------------------------------------------------------------------
# file checks (real files through medcl's readers)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    png(root / "oct" / "a.png")
    png(root / "fundus" / "b.png", rgb=True)
    nifti(root / "ct" / "c.nii.gz")
    nifti(root / "masks" / "c.nii.gz", mask=True)
    png(root / "masks" / "a.png")
    return root


def test_clean_dataset_has_no_problems(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,oct,x,masks/a.png,", "P0002,fundus/b.png,fundus,y,,",
                           "P0003,ct/c.nii.gz,ct,x,masks/c.nii.gz,"])
    assert [p.line() for p in validate_manifest(m, classes=["x", "y"], task="multiclass")] == []


def test_missing_file(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,oct,,,", "P0002,oct/missing.png,oct,,,"])
    [p] = validate_manifest(m)
    assert p.code == "missing-file"
    assert p.line().startswith("row 2 (oct/missing.png): file does not exist — ")


def test_missing_mask(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,oct,,masks/nope.png,"])
    [p] = validate_manifest(m)
    assert p.code == "missing-mask"
    assert p.line().startswith("row 1 (oct/a.png): mask 'masks/nope.png' does not exist — ")


def test_require_mask(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,oct,,,"])
    [p] = validate_manifest(m, require_mask=True)
    assert p.code == "missing-mask" and p.line().startswith("row 1 (oct/a.png): no mask given — ")


def test_mask_geometry_nifti_shape(dataset):
    nifti(dataset / "masks" / "c_small.nii.gz", shape=(8, 8, 5), mask=True)
    m = manifest(dataset, ["P0003,ct/c.nii.gz,ct,,masks/c_small.nii.gz,"])
    [p] = validate_manifest(m)
    assert p.code == "mask-geometry"
    assert p.line().startswith(
        "row 1 (ct/c.nii.gz): mask 'masks/c_small.nii.gz' spatial shape (8, 8, 5) differs from the image's (8, 8, 6) — ")


def test_mask_geometry_nifti_affine(dataset):
    shifted = np.diag([0.8, 0.8, 2.5, 1.0])
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    nifti(dataset / "masks" / "c_shift.nii.gz", affine=shifted, mask=True)
    m = manifest(dataset, ["P0003,ct/c.nii.gz,ct,,masks/c_shift.nii.gz,"])
    [p] = validate_manifest(m)
    assert p.code == "mask-geometry"
    assert p.line().startswith("row 1 (ct/c.nii.gz): mask 'masks/c_shift.nii.gz' affine differs from the image's")


def test_mask_geometry_png_size(dataset):
    png(dataset / "masks" / "a_big.png", h=16, w=20)
    m = manifest(dataset, ["P0001,oct/a.png,oct,,masks/a_big.png,"])
    [p] = validate_manifest(m)
    assert p.code == "mask-geometry"
    assert p.line().startswith(
        "row 1 (oct/a.png): mask 'masks/a_big.png' spatial shape (16, 20) differs from the image's (16, 16) — ")


def test_nan_values(dataset):
    nifti(dataset / "ct" / "nan.nii.gz", nan=True)
    m = manifest(dataset, ["P0001,ct/nan.nii.gz,ct,,,"])
    [p] = validate_manifest(m)
    assert p.code == "nan-values"
    assert p.line().startswith("row 1 (ct/nan.nii.gz): ") and "NaN" in p.what


def test_2d_png_given_as_ct(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,ct,,,"])
    [p] = validate_manifest(m)
    assert p.code == "bad-shape"
    assert p.line().startswith("row 1 (oct/a.png): ct expects a 3D volume but the file is a 2D image (shape (1, 16, 16)) — ")


def test_grayscale_fundus(dataset):
    m = manifest(dataset, ["P0001,oct/a.png,fundus,,,"])
    [p] = validate_manifest(m)
    assert p.code == "bad-shape" and p.line().startswith("row 1 (oct/a.png): fundus photograph has 1 channel")


def test_corrupt_file(dataset):
    (dataset / "oct" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (dataset / "oct" / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    m = manifest(dataset, ["P0001,oct/a.png,oct,,,", "P0002,oct/corrupt.png,oct,,,", "P0003,oct/garbage.png,oct,,,"])
    probs = validate_manifest(m)
    assert [(p.row, p.code) for p in probs] == [(2, "unreadable"), (3, "unreadable")]
    assert probs[0].line().startswith("row 2 (oct/corrupt.png): ")
    assert probs[1].line().startswith("row 3 (oct/garbage.png): ")
    assert all(p.what and p.fix for p in probs)


def test_workers_give_the_same_sorted_problems(dataset):
    rows = ["P0001,oct/a.png,oct,,,", "P0002,oct/missing.png,oct,,,", "P0003,oct/a.png,ct,,,",
            "P0004,ct/c.nii.gz,ct,,masks/none.nii.gz,", "P0005,fundus/b.png,fundus,,,", "P0006,oct/x.png,oct,,,"]
    m = manifest(dataset, rows)
    one = validate_manifest(m, workers=1)
    two = validate_manifest(m, workers=3)
    assert one == two
    assert [(p.row, p.code) for p in one] == [
        (2, "missing-file"), (3, "bad-shape"), (3, "duplicate-row"), (4, "missing-mask"), (6, "missing-file")]


# ------------------------------------------------------------------ reader options: per row and per pipeline


def _two_series_manifest(tmp_path, series_cell=None):
    from readers_testfiles import write_series

    folder = tmp_path / "data" / "mixed"
    a = write_series(folder, prefix="a", description="AXIAL", series_number=2, seed=1)
    b = write_series(folder, n_slices=5, prefix="b", description="SAG", series_number=3, seed=2,
                     origin=(0.0, 0.0, 0.0), rot=(0.0, 0.0, 0.0))
    head = "patient_id,path,modality,label" + (",series" if series_cell is not None else "")
    row = "P1,mixed,ct,1" + (f",{series_cell}" if series_cell is not None else "")
    (tmp_path / "data" / "m.csv").write_text(f"{head}\n{row}\n")
    return tmp_path / "data" / "m.csv", a, b


def test_a_series_column_chooses_the_series_of_a_mixed_folder_in_validation(tmp_path):
    from medcl.readers import list_series

    manifest, a, b = _two_series_manifest(tmp_path)
    lines = [p.line() for p in validate_manifest(load_manifest(manifest))]
    assert len(lines) == 1 and "2 DICOM series" in lines[0] and "a `series` column" in lines[0]
    listed = list_series(manifest.parent / "mixed")
    sag = next(i for i, s in enumerate(listed) if s["n_slices"] == 5)
    manifest, _, _ = _two_series_manifest(tmp_path / "again", series_cell=str(sag))
    assert validate_manifest(load_manifest(manifest)) == []


def test_data_reader_options_reach_validation_and_the_training_reads(tmp_path):
    """``data.reader_options`` is read by validation and by the transforms: the 5-slice series both times."""
    from medcl.config import load_config
    from medcl.data.prepare import prepare_data
    from medcl.readers import list_series
    from medcl.stages.common import make_transforms

    manifest, a, b = _two_series_manifest(tmp_path)
    sag = next(i for i, s in enumerate(list_series(manifest.parent / "mixed")) if s["n_slices"] == 5)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"""
name: t
data: {{manifest: {manifest}, modality: ct, task: binary, classes: ['0', '1'], val_fraction: 0, test_fraction: 0,
        reader_options: {{series: {sag}}}}}
transforms: {{preset: ct, spatial_size: [8, 8, 8], spacing: [1, 1, 1]}}
""")
    cfg = load_config(pipe)
    bundle = prepare_data(cfg)  # would stop on "the folder holds 2 DICOM series" without the option
    assert len(bundle.records) == 1 and not bundle.excluded
    loaded = make_transforms(cfg, train=False).transforms[0]({"image": str(manifest.parent / "mixed")})
    assert loaded["image_meta_dict"]["shape"][-1] == 5
    assert "series" not in loaded


def test_a_rows_series_reaches_the_training_read(tmp_path):
    from medcl.config import load_config
    from medcl.data.prepare import prepare_data
    from medcl.readers import list_series
    from medcl.stages.common import make_transforms

    probe, _, _ = _two_series_manifest(tmp_path / "probe")
    sag = next(i for i, s in enumerate(list_series(probe.parent / "mixed")) if s["n_slices"] == 5)
    manifest, _, _ = _two_series_manifest(tmp_path / "run", series_cell=str(sag))
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"""
name: t
data: {{manifest: {manifest}, modality: ct, task: binary, classes: ['0', '1'], val_fraction: 0, test_fraction: 0}}
transforms: {{preset: ct, spatial_size: [8, 8, 8], spacing: [1, 1, 1]}}
""")
    cfg = load_config(pipe)
    item = prepare_data(cfg).items("train")[0]
    assert item["series"] == sag
    loaded = make_transforms(cfg, train=False).transforms[0](item)
    assert loaded["image_meta_dict"]["shape"][-1] == 5 and "series" not in loaded
