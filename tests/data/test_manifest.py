"""Manifest parsing: CSV / MONAI datalist JSON, columns, aliases, encoding, pseudonymisation, labels.

None of these tests read the sample files, so they do not need the readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcl import phi
from medcl.data.manifest import (
    MODALITIES,
    Manifest,
    Record,
    canonical_modality,
    load_manifest,
    parse_labels,
)
from medcl.errors import DataError, ManifestError, PHIError


@pytest.fixture(autouse=True)
def _restore_phi_registry():
    """These tests register made-up ids and folder names; keep them out of other tests' guard."""
    saved = set(phi.REGISTRY._values)  # private, but this is test isolation only
    yield
    phi.REGISTRY.clear()
    phi.REGISTRY.update(saved)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


CSV = (
    "patient_id,path,modality,label,mask,split,study_id,site,severity\n"
    "MRN000123,img/a.png,OCT,drusen,,train,ACC99887,north,2\n"
    "MRN000456,img/b.png,oct,normal,masks/b.png,Validation,,south,0\n"
)


def test_csv_fields_and_pseudonymisation(tmp_path):
    m = load_manifest(write(tmp_path / "data" / "manifest.csv", CSV))
    assert isinstance(m, Manifest) and len(m) == 2
    a, b = m.records
    assert [a.row, b.row] == [1, 2]
    assert a.patient == phi.pseudonymize("MRN000123")
    assert a.patient.startswith("p-") and "MRN000123" not in repr(a)
    assert a.path == (tmp_path / "data" / "img" / "a.png").resolve() and a.path.is_absolute()
    assert a.relpath == "img/a.png"
    assert a.modality == "oct" and a.label == "drusen" and a.mask is None
    assert a.split == "train" and b.split == "val"
    assert a.study is not None and a.study.startswith("s-") and "ACC99887" not in a.study
    assert a.site == "north" and a.extra == {"severity": "2"}
    assert b.mask == (tmp_path / "data" / "masks" / "b.png").resolve() and b.mask_relpath == "masks/b.png"
    assert m.root == (tmp_path / "data").resolve()
    assert m.problems == []
    # the clear id and the path components are now known to the PHI guard
    assert phi.REGISTRY.find("note about MRN000456") == "MRN000456"
    # structural folder names ('masks', 'img') are not identifiers: they never block logging
    phi.check_value("the masks folder was slow")
    with pytest.raises(PHIError, match="protected health information"):
        phi.check_value("patient MRN000456 was slow")


def test_helpers(tmp_path):
    m = load_manifest(write(tmp_path / "m.csv", CSV))
    assert m.patients() == sorted([phi.pseudonymize("MRN000123"), phi.pseudonymize("MRN000456")])
    assert {k: [r.row for r in v] for k, v in m.by_split().items()} == {"train": [1], "val": [2]}
    assert m.label_counts() == {"drusen": 1, "normal": 1}
    df = m.to_frame()
    assert list(df["row"]) == [1, 2] and "severity" in df.columns
    assert "MRN000123" not in df.to_csv() and list(df["patient"]) == [r.patient for r in m.records]


def test_header_case_whitespace_bom_and_blank_lines(tmp_path):
    text = "\ufeff Patient_ID , PATH ,Modality\r\nP0001,x.nii.gz,MR\r\n\r\nP0002,y.nii.gz,ct\r\n"
    m = load_manifest(write(tmp_path / "m.csv", text))
    assert [r.modality for r in m.records] == ["mri", "ct"]
    assert [r.row for r in m.records] == [1, 3]  # the blank line keeps its row number
    assert m.columns == ["patient_id", "path", "modality"]


@pytest.mark.parametrize(
    ("alias", "canon"),
    [("MR", "mri"), ("histopathology", "histo"), ("WSI", "histo"), ("pathology", "histo"),
     ("ekg", "ecg"), ("Fundus", "fundus"), ("cfp", "fundus"), ("ct", "ct")],
)
def test_modality_aliases(alias, canon):
    assert canonical_modality(alias) == canon
    assert canon in MODALITIES


def test_unknown_modality_is_a_row_problem_with_did_you_mean(tmp_path):
    m = load_manifest(write(tmp_path / "m.csv", "patient_id,path,modality\nP0001,a.png,octt\nP0002,b.png,oct\n"))
    assert len(m.records) == 2
    [p] = m.problems
    assert p.code == "bad-modality" and p.row == 1
    assert p.line().startswith("row 1 (a.png): unknown modality 'octt' (did you mean 'oct'?)")
    with pytest.raises(ManifestError, match="did you mean 'ecg'"):
        canonical_modality("ecgg")


def test_split_aliases_and_bad_split(tmp_path):
    text = "patient_id,path,modality,split\nP1a,a.png,oct,training\nP2a,b.png,oct,valid\nP3a,c.png,oct,tset\nP4a,d.png,oct,\n"
    m = load_manifest(write(tmp_path / "m.csv", text))
    assert [r.split for r in m.records] == ["train", "val", None, None]
    [p] = m.problems
    assert p.code == "bad-split" and p.line().startswith("row 3 (c.png): unknown split 'tset' (did you mean 'test'?)")


def test_empty_patient_id_is_a_row_problem(tmp_path):
    m = load_manifest(write(tmp_path / "m.csv", "patient_id,path,modality\n,a.png,oct\n"))
    [p] = m.problems
    assert p.code == "empty-patient-id" and p.line().startswith("row 1 (a.png): the patient_id cell is empty — ")


def test_missing_required_column_names_it_and_lists_found(tmp_path):
    with pytest.raises(ManifestError) as ei:
        load_manifest(write(tmp_path / "m.csv", "patientid,path,Modality,label\nP1,a.png,oct,x\n"))
    e = ei.value
    assert "missing required column 'patient_id' (did you mean 'patientid'?)" in e.what
    assert "columns found: patientid, path, Modality, label" in e.what
    assert e.where.endswith("m.csv") and e.fix


def test_missing_modality_column(tmp_path):
    with pytest.raises(ManifestError, match="missing required column 'modality'"):
        load_manifest(write(tmp_path / "m.csv", "patient_id,path\nP1,a.png\n"))


def test_duplicate_column_and_empty_file(tmp_path):
    with pytest.raises(ManifestError, match="column 'path' appears twice"):
        load_manifest(write(tmp_path / "m.csv", "patient_id,path,PATH,modality\n"))
    with pytest.raises(ManifestError, match="empty"):
        load_manifest(write(tmp_path / "e.csv", ""))
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")


def test_non_utf8_file_gives_clear_error(tmp_path):
    text = "patient_id,path,modality,label\nP0001,a.png,oct,normal\nP0002,b.png,oct,drusén\n"
    path = write(tmp_path / "m.csv", text, encoding="latin-1")
    offset = text.encode("latin-1").index("é".encode("latin-1"))
    with pytest.raises(ManifestError) as ei:
        load_manifest(path)
    e = ei.value
    assert f"byte 0xe9 at byte offset {offset} (line 3 of the file, data row 2)" in e.what
    assert "UTF-8" in e.fix and "re-save" in e.fix
    # the same content in UTF-8 loads fine
    m = load_manifest(write(tmp_path / "ok.csv", text))
    assert m.records[1].label == "drusén"


def test_relative_absolute_and_dotdot_paths(tmp_path):
    outside = tmp_path / "elsewhere" / "x.png"
    text = f"patient_id,path,modality\nP0001,sub/../a.png,oct\nP0002,{outside},oct\nP0003,../up.png,oct\n"
    m = load_manifest(write(tmp_path / "ds" / "m.csv", text))
    a, b, c = m.records
    assert a.path == (tmp_path / "ds" / "a.png").resolve() and a.relpath == "sub/../a.png"
    assert b.path == outside.resolve()
    assert c.path == (tmp_path / "up.png").resolve()


def test_monai_datalist_json(tmp_path):
    data = {
        "modality": "CT",
        "training": [
            {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "patient_id": "PAT0001"},
            {"image": "imagesTr/b.nii.gz", "label": "tumour", "patient_id": "PAT0002", "modality": "mr"},
        ],
        "validation": [{"image": "imagesTr/c.nii.gz", "label": 1, "patient_id": "PAT0003", "site": "s1"}],
        "test": ["imagesTs/d.nii.gz"],
    }
    m = load_manifest(write(tmp_path / "dataset.json", json.dumps(data)))
    a, b, c, d = m.records
    assert [r.row for r in m.records] == [1, 2, 3, 4]
    assert [r.split for r in m.records] == ["train", "train", "val", "test"]
    assert a.relpath == "imagesTr/a.nii.gz" and a.path == (tmp_path / "imagesTr" / "a.nii.gz").resolve()
    assert a.mask == (tmp_path / "labelsTr" / "a.nii.gz").resolve() and a.label is None  # file label → mask
    assert b.label == "tumour" and b.modality == "mri" and a.modality == "ct"
    assert c.label == "1" and c.site == "s1" and c.patient == phi.pseudonymize("PAT0003")
    # the Decathlon-style bare test entry has no patient id: reported, not fatal
    assert [(p.row, p.code) for p in m.problems] == [(4, "empty-patient-id")]


def test_monai_datalist_errors(tmp_path):
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(write(tmp_path / "a.json", "{\"training\": [}"))
    with pytest.raises(ManifestError, match="not a MONAI datalist"):
        load_manifest(write(tmp_path / "b.json", "[1, 2]"))
    bad = {"training": [{"image": "a.png", "patientid": "P0001", "modality": "oct"}]}
    with pytest.raises(ManifestError, match=r"missing required key 'patient_id' \(did you mean 'patientid'\?\)"):
        load_manifest(write(tmp_path / "c.json", json.dumps(bad)))


# ----------------------------------------------------------------------------------------------
# labels


def _recs(labels):
    return [Record(row=i + 1, patient=f"p-{i:016x}", path=Path(f"/x/{i}.png"), relpath=f"{i}.png",
                   modality="oct", label=lab) for i, lab in enumerate(labels)]


def test_parse_labels_multiclass_inferred_numeric_order_and_unlabelled():
    y, classes = parse_labels(_recs(["10", "2", None, "2", "1"]))
    assert classes == ["1", "2", "10"]
    np.testing.assert_array_equal(y, [2, 1, -1, 1, 0])
    assert y.dtype == np.int64


def test_parse_labels_given_classes_and_did_you_mean():
    y, classes = parse_labels(_recs(["normal", "drusen", ""]), classes=["normal", "drusen", "cnv"])
    np.testing.assert_array_equal(y, [0, 1, -1])
    with pytest.raises(DataError) as ei:
        parse_labels(_recs(["normal", "drusn"]), classes=["normal", "drusen", "cnv"])
    assert "row 2 (1.png): label 'drusn' is not one of the classes (did you mean 'drusen'?)" in ei.value.what


def test_parse_labels_binary():
    y, classes = parse_labels(_recs(["neg", "pos", "neg"]), classes=["neg", "pos"], task="binary")
    np.testing.assert_array_equal(y, [0, 1, 0])
    with pytest.raises(DataError, match="exactly 2 classes"):
        parse_labels(_recs(["a"]), classes=["a", "b", "c"], task="binary")
    with pytest.raises(DataError, match="binary task needs 2 classes but the labels have 3"):
        parse_labels(_recs(["a", "b", "c"]), task="binary")


def test_parse_labels_multilabel_multi_hot_with_nan_rows():
    y, classes = parse_labels(_recs(["effusion;oedema", "", "oedema"]), classes=["effusion", "oedema", "mass"],
                              task="multilabel")
    assert y.dtype == np.float32 and y.shape == (3, 3)
    np.testing.assert_array_equal(y[0], [1, 1, 0])
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(y[2], [0, 1, 0])


def test_parse_labels_ordinal_keeps_given_order_and_unknown_task():
    y, _ = parse_labels(_recs(["severe", "mild", "moderate"]), classes=["mild", "moderate", "severe"], task="ordinal")
    np.testing.assert_array_equal(y, [2, 0, 1])
    with pytest.raises(DataError, match="did you mean 'multilabel'"):
        parse_labels(_recs(["a"]), task="multilable")


def test_labels_outside_the_classes_name_the_column_that_holds_them(tmp_path):
    """Numeric codes in `label`, the class names in another column: the error says which column to use."""
    from medcl.data.manifest import label_problems

    text = "patient_id,path,modality,label,finding\n" + "".join(
        f"P{i},img/{i}.png,oct,{i % 2},{'lesion' if i % 2 else 'no_lesion'}\n" for i in range(6))
    m = load_manifest(write(tmp_path / "manifest.csv", text))
    _, _, problems = label_problems(m.records, ["no_lesion", "lesion"], "binary")
    assert len(problems) == 6 and {p.row for p in problems} == set(range(1, 7))
    assert "set data.label_column=finding" in problems[0].fix
    # no column holds the classes: the fix lists them instead
    _, _, problems = label_problems(m.records, ["benign", "malignant"], "binary")
    assert "label_column" not in problems[0].fix and "use one of benign, malignant" in problems[0].fix


def test_shipped_pipelines_run_on_synthesised_manifests_as_they_are(tmp_path):
    """`medcl data synth` writes class names in `label`: every shipped pipeline's classes match them as is."""
    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline

    root = Path(__file__).resolve().parents[2]
    synthesize(tmp_path, modalities=["oct", "fundus", "histo", "ecg", "ct", "mri", "cytology"], patients=6, seed=3,
               size=16)
    synthesize(tmp_path, modalities=["histo-wsi"], patients=6, seed=3)  # slides large enough for 224-px tiles
    synthesize(tmp_path, modalities=["eye"], patients=8, seed=3, size=16)  # fundus + OCT of the same patients
    for path in sorted((root / "pipelines").glob("*.yaml")):
        modality = load_pipeline(path, ["data.manifest=x.csv"]).data.modality
        # the extra sets hold histo tiles (cytology), slides (histo-wsi) or several modalities (eye)
        folder = next((x for x in ("cytology", "histo-wsi", "eye") if path.stem.replace("_", "-").startswith(x)),
                      modality)
        cfg = load_pipeline(path, [f"data.manifest={tmp_path / folder / 'manifest.csv'}", "data.val_fraction=0.2",
                                   "data.test_fraction=0.2"])
        bundle = prepare_data(cfg, check_files=False)
        assert bundle.classes == list(cfg.data.classes), path.name
        labelled = bundle.y if bundle.y.ndim == 1 else bundle.y[:, 0]
        assert (labelled >= 0).all() if bundle.y.ndim == 1 else not np.isnan(labelled).any(), path.name


def test_binary_classes_ordered_from_names_are_stated(tmp_path, caplog):
    """Without data.classes, class names are ordered alphabetically: the log says which one is positive."""
    import logging

    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline

    root = Path(__file__).resolve().parents[2]
    synthesize(tmp_path, modalities=["mri"], patients=8, seed=3, size=16)
    cfg = load_pipeline(root / "pipelines" / "mri_lesion_seg.yaml",
                        [f"data.manifest={tmp_path / 'mri' / 'manifest.csv'}", "data.classes=null", "data.task=binary"])
    with caplog.at_level(logging.WARNING, logger="medcl.data.prepare"):
        bundle = prepare_data(cfg, check_files=False)
    assert bundle.classes == ["lesion", "no_lesion"]  # alphabetical
    assert "'no_lesion' is the positive class" in caplog.text
