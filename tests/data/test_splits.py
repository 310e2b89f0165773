"""Patient-level splits: determinism, row-order independence, stratification, leakage, saved files."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcl import phi
from medcl.data.manifest import Record, load_manifest
from medcl.data.splits import (
    StratificationWarning,
    check_leakage,
    load_split,
    make_splits,
    save_split,
    split_summary,
)
from medcl.errors import PHIError, SplitError


@pytest.fixture(autouse=True)
def _restore_phi_registry():
    """These tests register made-up ids and folder names; keep them out of other tests' guard."""
    saved = set(phi.REGISTRY._values)  # private, but this is test isolation only
    yield
    phi.REGISTRY.clear()
    phi.REGISTRY.update(saved)


def dataset(n_per_class: dict[str, int], rows_per_patient: int = 2, seed: int = 0) -> list[Record]:
    """Records of ``sum(n_per_class)`` patients, ``1..rows_per_patient`` rows each."""
    rng = random.Random(seed)
    recs: list[Record] = []
    i = 0
    for label, n in n_per_class.items():
        for _ in range(n):
            pid = phi.pseudonymize(f"MRN{i:06d}")
            for k in range(rng.randint(1, rows_per_patient)):
                row = len(recs) + 1
                recs.append(Record(row=row, patient=pid, path=Path(f"/d/{i}_{k}.png"), relpath=f"{i}_{k}.png",
                                   modality="oct", label=label))
            i += 1
    return recs


def renumber(recs: list[Record]) -> list[Record]:
    return [Record(**{**r.__dict__, "row": j + 1}) for j, r in enumerate(recs)]


def test_reproducible_and_exact_counts():
    recs = dataset({"a": 20, "b": 20})
    s1 = make_splits(recs, seed=3)
    s2 = make_splits(recs, seed=3)
    assert s1 == s2
    assert set(s1) == {r.patient for r in recs}
    assert Counter(s1.values()) == {"train": 28, "val": 6, "test": 6}  # 0.15 × 40 = 6


def test_independent_of_row_order():
    recs = dataset({"a": 15, "b": 10, "c": 8}, rows_per_patient=3)
    shuffled = list(recs)
    random.Random(7).shuffle(shuffled)
    assert make_splits(renumber(shuffled), seed=1) == make_splits(recs, seed=1)


def test_different_seeds_differ():
    recs = dataset({"a": 20, "b": 20})
    splits = [make_splits(recs, seed=s) for s in range(4)]
    assert all(splits[0] != s for s in splits[1:])


def test_stratification_keeps_class_proportions():
    recs = dataset({"rare": 20, "mid": 40, "common": 60}, rows_per_patient=1)
    label = {r.patient: r.label for r in recs}
    for seed in range(3):
        assignment = make_splits(recs, seed=seed, val_fraction=0.2, test_fraction=0.2)
        counts = Counter((s, label[p]) for p, s in assignment.items())
        for cls, n in (("rare", 20), ("mid", 40), ("common", 60)):
            assert abs(counts[("test", cls)] - 0.2 * n) <= 1
            assert abs(counts[("val", cls)] - 0.2 * n) <= 1


def test_stratified_beats_unstratified_on_a_skewed_set():
    # with 5 % positives, stratification puts exactly 1 positive in each of val/test of 20 patients;
    # an unstratified shuffle often puts none or several there
    recs = dataset({"neg": 95, "pos": 5}, rows_per_patient=1)
    label = {r.patient: r.label for r in recs}
    for seed in range(5):
        a = make_splits(recs, seed=seed, val_fraction=0.2, test_fraction=0.2)
        pos = Counter(s for p, s in a.items() if label[p] == "pos")
        assert pos == {"train": 3, "val": 1, "test": 1}


def test_majority_label_per_patient():
    pid = phi.pseudonymize("MRN-MAJ-0001")
    recs = [Record(row=i + 1, patient=pid, path=Path(f"/d/{i}"), relpath=str(i), modality="oct", label=lab)
            for i, lab in enumerate(["b", "a", "b", None])]
    recs += dataset({"a": 10, "b": 10}, rows_per_patient=1)
    recs = renumber(recs)
    summary = split_summary(recs, make_splits(recs, seed=0))
    assert summary["total"]["patients"] == 21 and summary["total"]["samples"] == 24
    assert summary["total"]["classes"]["unlabelled"] == {"patients": 1, "samples": 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=3, max_value=12), min_size=1, max_size=3),
    rows=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    shuffle_seed=st.integers(min_value=0, max_value=1000),
)
def test_property_no_leakage_every_patient_assigned(sizes, rows, seed, shuffle_seed):
    recs = dataset({f"c{i}": n for i, n in enumerate(sizes)}, rows_per_patient=rows, seed=shuffle_seed)
    random.Random(shuffle_seed).shuffle(recs)
    recs = renumber(recs)
    n = len({r.patient for r in recs})
    try:
        assignment = make_splits(recs, seed=seed, val_fraction=0.2, test_fraction=0.2)
    except SplitError:
        assert n < 3  # only a tiny set may be refused
        return
    assert set(assignment) == {r.patient for r in recs}
    check_leakage(recs, assignment)
    per_record = [assignment[r.patient] for r in recs]
    check_leakage(recs, per_record)
    c = Counter(assignment.values())
    assert c["test"] == int(0.2 * n + 0.5) and c["val"] == int(0.2 * n + 0.5)
    assert c["train"] == n - c["test"] - c["val"] >= 1


def test_leakage_check_catches_a_planted_leak():
    recs = dataset({"a": 20}, rows_per_patient=1)
    leaker = recs[2].patient
    # plant a second scan of the patient of row 3 at row 17, and give it another split
    recs[16] = Record(row=17, patient=leaker, path=Path("/d/extra.png"), relpath="extra.png", modality="oct", label="a")
    per_record = ["train"] * len(recs)
    per_record[16] = "test"
    with pytest.raises(SplitError) as ei:
        check_leakage(recs, per_record)
    assert ei.value.what == f"patient {leaker} appears in train and test (rows 3, 17)"
    # the same by-row mapping form
    with pytest.raises(SplitError, match="appears in train and test"):
        check_leakage(recs, {r.row: s for r, s in zip(recs, per_record)})


def test_leakage_check_unassigned_patient():
    recs = dataset({"a": 5}, rows_per_patient=1)
    assignment = make_splits(recs, val_fraction=0.2, test_fraction=0.2)
    del assignment[recs[0].patient]
    with pytest.raises(SplitError, match=r"\(row 1\) has no split"):
        check_leakage(recs, assignment)


def test_too_small_dataset_says_the_numbers():
    recs = dataset({"a": 3}, rows_per_patient=1)
    with pytest.raises(SplitError) as ei:
        make_splits(recs)
    assert "test_fraction 0.15 of 3 patients gives 0 test patients" in ei.value.what
    assert "add patients" in ei.value.fix
    with pytest.raises(SplitError, match="leaves no training patients"):
        make_splits(recs, val_fraction=0.5, test_fraction=0.5)
    assert Counter(make_splits(recs, val_fraction=0, test_fraction=0).values()) == {"train": 3}


def test_single_patient_class_warns_and_goes_to_train():
    recs = renumber(dataset({"a": 10, "b": 10}, rows_per_patient=1) + dataset({"lonely": 1}, seed=5)[:1])
    lonely = recs[-1]
    lonely = Record(**{**lonely.__dict__, "patient": phi.pseudonymize("MRN-LONELY-01")})
    recs[-1] = lonely
    with pytest.warns(StratificationWarning, match="'lonely' \\(1 patient\\)"):
        a = make_splits(recs, val_fraction=0.2, test_fraction=0.2)
    assert a[lonely.patient] == "train"


def test_manifest_split_column_is_respected_and_validated(tmp_path):
    text = "patient_id,path,modality,split\nPA001,a.png,oct,train\nPA002,b.png,oct,val\nPA001,c.png,oct,train\nPA003,d.png,oct,test\n"
    (tmp_path / "m.csv").write_text(text)
    m = load_manifest(tmp_path / "m.csv")
    a = make_splits(m.records, seed=123)
    assert a == dict(sorted({r.patient: r.split for r in m.records}.items()))
    leaky = text + "PA002,e.png,oct,train\n"
    (tmp_path / "leaky.csv").write_text(leaky)
    m2 = load_manifest(tmp_path / "leaky.csv")
    with pytest.raises(SplitError, match=r"appears in train and val \(rows 2, 5\)"):
        make_splits(m2.records)
    (tmp_path / "partial.csv").write_text(text + "PA004,f.png,oct,\n")
    with pytest.raises(SplitError, match=r"empty for 1 \(rows 5\)"):
        make_splits(load_manifest(tmp_path / "partial.csv").records)


def test_split_summary_counts():
    recs = dataset({"a": 10, "b": 10}, rows_per_patient=3)
    a = make_splits(recs, seed=0, val_fraction=0.2, test_fraction=0.2)
    s = split_summary(recs, a)
    assert sum(s[k]["patients"] for k in ("train", "val", "test")) == s["total"]["patients"] == 20
    assert sum(s[k]["samples"] for k in ("train", "val", "test")) == len(recs)
    for k in ("train", "val", "test"):
        assert s[k]["patients"] == Counter(a.values())[k]
        assert sum(c["samples"] for c in s[k]["classes"].values()) == s[k]["samples"]
    assert s["test"]["classes"]["a"]["patients"] == 2 and s["test"]["classes"]["b"]["patients"] == 2
    assert not any(k.startswith("p-") for v in s.values() for k in v["classes"])  # counts only


def test_saved_split_holds_only_pseudonyms(tmp_path):
    planted = "MRN-PLANTED-778812"
    rows = [f"{planted},scans/{planted}_1.png,oct,a,"] + [f"PT{i:05d},scans/x{i}.png,oct,{'ab'[i % 2]}," for i in range(11)]
    (tmp_path / "m.csv").write_text("patient_id,path,modality,label,split\n" + "\n".join(rows) + "\n")
    m = load_manifest(tmp_path / "m.csv")
    a = make_splits(m.records, seed=0, val_fraction=0.2, test_fraction=0.2)
    out = save_split(tmp_path / "run" / "split.csv", m.records, a)
    text = out.read_text()
    assert planted not in text and "PT00001" not in text and "scans" not in text and ".png" not in text
    assert text.splitlines()[0] == "row,patient,split" and len(text.splitlines()) == 13
    assert phi.REGISTRY.find(text) is None
    assert load_split(out) == a
    bad = [Record(row=1, patient="MRN0001", path=Path("/d/a"), relpath="a", modality="oct")]
    with pytest.raises(PHIError, match="not pseudonymised"):
        save_split(tmp_path / "bad.csv", bad, {"MRN0001": "train"})
    assert not (tmp_path / "bad.csv").exists()


def test_load_split_rejects_leaky_or_malformed_files(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("row,patient,split\n1,p-0123456789abcdef,train\n2,p-0123456789abcdef,test\n")
    with pytest.raises(SplitError, match=r"appears in train and test \(rows 1, 2\)"):
        load_split(p)
    p.write_text("row,patient\n1,p-0123456789abcdef\n")
    with pytest.raises(SplitError, match="expected columns row, patient, split"):
        load_split(p)
    p.write_text("row,patient,split\n1,p-0123456789abcdef,trian\n")
    with pytest.raises(SplitError, match="did you mean 'train'"):
        load_split(p)


def _image_manifest(tmp_path, n_patients: int):
    import csv as _csv

    from PIL import Image

    rows = []
    for p in range(n_patients):
        for k in range(2):
            name = f"p{p}_{k}.png"
            Image.new("L", (8, 8), (20 * p + k) % 255).save(tmp_path / name)
            rows.append({"patient_id": f"WARD-{p:03d}", "path": name, "modality": "oct",
                         "label": ["normal", "early"][p % 2]})
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = _csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_split_file_fixes_every_patients_split_and_must_cover_them_all(tmp_path):
    from medcl.config.schema import PipelineConfig
    from medcl.data.manifest import load_manifest
    from medcl.data.prepare import prepare_data

    manifest = _image_manifest(tmp_path, 8)
    records = load_manifest(manifest).records
    patients = sorted({r.patient for r in records})
    wanted = {p: ("test" if i < 3 else "val" if i == 3 else "train") for i, p in enumerate(patients)}
    save_split(tmp_path / "fixed.csv", records, wanted)

    def cfg(path):
        return PipelineConfig(name="t", data={"manifest": str(manifest), "split_file": str(path)},
                              runtime={"output_dir": str(tmp_path / "out"), "progress": False})

    bundle = prepare_data(cfg(tmp_path / "fixed.csv"))
    assert bundle.assignment == wanted  # not the seeded 15 % / 15 % split: three test patients
    # a split file written for fewer patients: the rows of the others are named
    save_split(tmp_path / "fewer.csv", [r for r in records if r.patient != patients[5]], wanted)
    with pytest.raises(SplitError, match=r"2 manifest row\(s\) .*split file does not list") as err:
        prepare_data(cfg(tmp_path / "fewer.csv"))
    rows = sorted(r.row for r in records if r.patient == patients[5])
    assert f"rows {rows[0]}, {rows[1]}" in str(err.value)
