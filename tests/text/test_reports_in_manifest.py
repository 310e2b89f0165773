"""A manifest's report column: de-identified as it is read, rows without a report listed, never a subgroup."""

from __future__ import annotations

import csv

from medcl.config.schema import PipelineConfig
from medcl.data.prepare import prepare_data
from medcl.stages.classify_eval import is_subgroup


def _manifest(tmp_path, reports: list[str], column: str = "report"):
    from PIL import Image

    rows = []
    for i, text in enumerate(reports):
        name = f"img{i}.png"
        Image.new("L", (8, 8), 40 * i % 255).save(tmp_path / name)
        rows.append({"patient_id": f"HOSP-{7700 + i // 2}", "path": name, "modality": "oct",
                     "label": ["normal", "early"][i % 2], column: text})
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _cfg(manifest, tmp_path, **data):
    return PipelineConfig(name="t", data={"manifest": str(manifest), "modality": "oct", "val_fraction": 0.0,
                                          "test_fraction": 0.25, "stratify": False, **data},
                          runtime={"output_dir": str(tmp_path / "out"), "progress": False})


def test_reports_are_scrubbed_when_the_manifest_is_read_and_empty_ones_listed(tmp_path):
    reports = ["Seen by Dr. Imelda Quast on 12/03/2022: two small drusen.",
               "Patient HOSP-7700, MRN 4410928: no drusen.",
               "",
               "Call (555) 201-7781. Large drusen, early AMD.",
               "   ",
               "No findings."]
    bundle = prepare_data(_cfg(_manifest(tmp_path, reports), tmp_path))
    assert bundle.report_column == "report" and bundle.no_report == [3, 5]
    text = "\n".join(bundle.reports(range(len(bundle.records))))
    for planted in ("Imelda", "Quast", "12/03/2022", "HOSP-7700", "4410928", "201-7781"):
        assert planted not in text
    for kept in ("two small drusen", "no drusen", "Large drusen, early AMD", "No findings."):
        assert kept in text
    assert bundle.text_columns() == ("report",)


def test_a_manifest_without_the_column_has_no_reports(tmp_path):
    bundle = prepare_data(_cfg(_manifest(tmp_path, ["a", "b", "c", "d"], column="notes"), tmp_path))
    assert bundle.report_column is None and bundle.reports([0, 1]) == ["", ""]


def test_the_report_column_is_configurable(tmp_path):
    bundle = prepare_data(_cfg(_manifest(tmp_path, ["Dr. Ubaldo Crane: ok"] * 4, column="findings"), tmp_path,
                               report_column="findings"))
    assert bundle.reports([0]) == ["Dr. [NAME]: ok"]


def test_free_text_is_never_a_subgroup():
    assert is_subgroup("site", {"a", "b"})
    assert not is_subgroup("report", {"a", "b"})  # the report column, however few its texts
    assert not is_subgroup("findings", {"ok", "bad"}, text_columns=("findings",))  # a configured one
    assert not is_subgroup("notes", {"short", "Seen by Dr. X on the ward for a second opinion, no change."})


def test_the_demo_reports_describe_the_findings_and_lose_their_phi_when_read(tmp_path):
    """`medcl data synth` writes a report per OCT, fundus and ECG sample; reading the manifest removes the
    physicians, dates and record numbers the reports plant, and keeps the findings."""
    import re

    from medcl.data.synth import synthesize
    from medcl.data.synth.reports import _PHYSICIANS

    synthesize(tmp_path, modalities=["oct", "fundus", "ecg"], patients=12, seed=5)
    surnames = [p.split()[-1] for p in _PHYSICIANS]
    for modality, finding in (("oct", r"drusen"), ("fundus", r"retinopathy|NPDR|fundus|haemorrhage"),
                              ("ecg", r"rhythm|fibrillation|bundle branch|tachycardia")):
        with (tmp_path / modality / "manifest.csv").open() as fh:
            raw = [r["report"] for r in csv.DictReader(fh)]
        assert all(re.search(finding, r, re.IGNORECASE) for r in raw)
        assert any(re.search(r"MRN \d{7}", r) for r in raw)  # some reports carry a record number
        cfg = PipelineConfig(name="t", data={"manifest": str(tmp_path / modality / "manifest.csv"),
                                              "modality": modality, "validate_files": False},
                             runtime={"output_dir": str(tmp_path / "out"), "progress": False})
        if modality == "ecg":
            cfg.data.task = "multilabel"
        bundle = prepare_data(cfg, check_files=False)
        text = "\n".join(bundle.reports(range(len(bundle.records))))
        assert not any(s in text for s in surnames)
        assert not re.search(r"\d{7}|\d{4}-\d{2}-\d{2}|\d{1,2} [A-Z][a-z]+ \d{4}", text)
        assert all(re.search(finding, r, re.IGNORECASE) for r in bundle.reports(range(len(bundle.records))))


def test_a_report_that_is_not_utf8_is_one_line_naming_the_row(tmp_path):
    """A report saved from a Latin-1 system (``é`` as byte 0xE9) stops the run at reading, naming the line of the
    manifest and how to re-save it — the text is never decoded by guessing."""
    import pytest

    from medcl.errors import ManifestError

    path = _manifest(tmp_path, ["no drusen", "small drusen", "DRUSEN_PLACEHOLDER", "no findings"])
    raw = path.read_bytes().replace(b"DRUSEN_PLACEHOLDER", "drusen, examined by the résident".encode("latin-1"))
    path.write_bytes(raw)
    with pytest.raises(ManifestError) as e:
        prepare_data(_cfg(path, tmp_path))
    msg = str(e.value)
    assert "not valid UTF-8" in msg and "byte 0xe9" in msg.lower() and "line 4" in msg and "UTF-8" in e.value.fix
