"""The eye_multimodal pipeline end to end on linked fundus + OCT demo patients: per-modality pretraining on the
fusion run's own split, gated fusion with its baselines and test conditions, the missing-modality list, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.encoder=tiny_cnn", "'model.options={}'", "'transforms.spatial_size=[32, 32]'", "pretrain.steps=3",
        "pretrain.warmup_steps=0", "pretrain.batch_size=8", "pretrain.probe=false"]


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """24 linked patients (two of them lack an examination); tiny encoders, 3 pretraining steps each."""
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("eye")
    synthesize(root / "data", modalities=["eye"], patients=24, seed=0)
    manifest = root / "data" / "eye" / "manifest.csv"
    yaml = root / "eye.yaml"
    tiny = ", ".join(TINY)
    yaml.write_text(f"include: [{REPO / 'pipelines' / 'demo' / 'eye-multimodal.yaml'}]\n"
                    "fuse:\n  modalities:\n"
                    f"    oct: {{pipeline: demo/oct.yaml, set: [{tiny}]}}\n"
                    f"    fundus: {{pipeline: demo/fundus.yaml, set: [{tiny}]}}\n"
                    "  steps: 40\n  n_boot: 20\n")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_pipeline(yaml, [f"data.manifest={manifest}", f"runtime.output_dir={root / 'runs'}",
                               "runtime.progress=false", f"tracking.uri={uri}"])
    ctx = run_pipeline(cfg)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    return {"ctx": ctx, "rows": rows, "uri": uri, "root": root}


def test_each_modality_is_pretrained_on_the_fusion_runs_training_patients_only(fused):
    from medcl.config import pipeline_key

    ctx = fused["ctx"]
    assert set(ctx.modalities) == {"oct", "fundus"}
    for m, info in ctx.modalities.items():
        sub = info["config"]
        assert sub.data.modality == m and sub.stages == ["pretrain"] and Path(info["encoder"]).is_file()
        split = Path(sub.runtime.output_dir) / f"{sub.name}-{pipeline_key(sub)}" / "split.csv"
        got = {r["patient"]: r["split"] for r in csv.DictReader(split.open())}
        assert got and all(ctx.data.assignment[p] == s for p, s in got.items())  # the fusion run's split
        # every patient with an image of the modality, and only those
        n_with = len({r["patient_id"] for r in fused["rows"] if r["modality"] == m})
        assert len(got) == n_with


def test_patients_lacking_an_examination_are_listed(fused):
    ctx = fused["ctx"]
    per: dict[str, set[str]] = {}
    for r in fused["rows"]:
        per.setdefault(r["patient_id"], set()).add(r["modality"])
    lacking = {p: {"oct", "fundus"} - v for p, v in per.items() if v != {"oct", "fundus"}}
    assert lacking  # the demo set has some
    listed = json.loads((ctx.run_dir / "fuse" / "missing_modalities.json").read_text())
    assert sorted(tuple(x["missing"]) for x in listed) == sorted(tuple(v) for v in lacking.values())
    lacking_rows = sorted(i + 1 for i, r in enumerate(fused["rows"]) if r["patient_id"] in lacking)
    assert sorted(n for x in listed for n in x["rows"]) == lacking_rows
    assert not any(p in json.dumps(listed) for p in per)  # pseudonyms only


def test_every_model_is_evaluated_under_every_condition(fused):
    from mlflow import MlflowClient

    ctx = fused["ctx"]
    with open(ctx.outputs["fuse"]["results"], encoding="utf-8") as fh:
        results = list(csv.DictReader(fh))
    got = {(r["model"], r["condition"]) for r in results}
    conditions = {"complete", "all", "without_oct", "mislinked_oct", "degraded_oct", "without_fundus",
                  "mislinked_fundus", "degraded_fundus"}
    assert got == {(m, c) for m in ("gated", "ungated") for c in conditions} | {("single_oct", "complete"),
                                                                              ("single_fundus", "complete")}
    test = {p for p, s in ctx.data.assignment.items() if s == "test"}
    per: dict[str, set[str]] = {}
    for r in ctx.data.records:
        per.setdefault(r.patient, set()).add(r.modality)
    complete = sum(1 for p in test if per[p] == {"oct", "fundus"})
    by = {(r["model"], r["condition"]): r for r in results}
    assert int(by["gated", "complete"]["n_patients"]) == complete and int(by["gated", "all"]["n_patients"]) == len(test)
    assert float(by["gated", "without_oct"]["gate_oct"]) == 0.0 < float(by["gated", "complete"]["gate_oct"])
    metrics = MlflowClient(fused["uri"]).get_run(ctx.outputs["fuse"]["run_id"]).data.metrics
    auroc = metrics["test/fusion/gated/complete/auroc"]
    assert 0.0 <= metrics["test/fusion/gated/complete/auroc_ci_low"] <= auroc <= 1.0


def test_the_report_shows_the_fusion(fused):
    html = Path(fused["ctx"].outputs["report"]["html"]).read_text(encoding="utf-8")
    section = html[html.index("Multimodal fusion"):]
    assert "mislinked" in section and "fundus removed" in section and "single oct" in section
    assert "oct degraded" in section


def _predict(fused, manifest, tmp_path, *extra):
    from medcl.cli import main

    out = tmp_path / "pred.csv"
    rc = main(["predict", fused["ctx"].parent_run_id, str(manifest), "--out", str(out), "--tracking-uri",
               fused["uri"], "--no-progress", *extra])
    return rc, list(csv.DictReader(out.open())), list(csv.DictReader(out.with_name("pred.patients.csv").open()))


def _manifest(fused, tmp_path, rows):
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fused["rows"][0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_the_logged_fusion_model_predicts_what_the_stage_predicted(fused, tmp_path):
    """medcl predict (files read afresh, each modality's logged preprocessing and encoder) gives every patient the
    probabilities and gates the fuse stage computed through its own loaders."""
    from medcl.predict import model_kind

    ctx = fused["ctx"]
    assert model_kind(ctx.parent_run_id, fused["uri"]) == "fuse"  # no classifier in this run: auto fuses
    base = Path(fused["rows"][0]["path"]).is_absolute()
    rows = [dict(r, path=r["path"] if base else str(fused["root"] / "data" / "eye" / r["path"])) for r in fused["rows"]]
    rc, samples, patients = _predict(fused, _manifest(fused, tmp_path, rows), tmp_path)
    assert rc == 0 and len(samples) == len(rows) and all(s["status"] == "ok" for s in samples)
    with open(ctx.run_dir / "fuse" / "predictions.csv", encoding="utf-8") as fh:
        stage = {r["patient"]: r for r in csv.DictReader(fh)}
    assert {p["patient"] for p in patients} == set(stage)  # pseudonymised, as in the run
    assert not {p["patient"] for p in patients} & {r["patient_id"] for r in rows}
    cols = [c for c in patients[0] if c.startswith(("p_", "gate_"))]
    assert cols and len([c for c in cols if c.startswith("p_")]) == 4
    for p in patients:
        for c in cols:
            assert float(p[c]) == pytest.approx(float(stage[p["patient"]][c]), abs=2e-4), (p["patient"], c)
        assert p["predicted"] == max((c for c in cols if c.startswith("p_")), key=lambda c: float(p[c]))[2:]
    # and the MLflow pyfunc of the same model, given the examinations as a DataFrame
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(fused["uri"])
    frame = pd.DataFrame({"patient_id": [r["patient_id"] for r in rows], "modality": [r["modality"] for r in rows],
                          "path": [r["path"] for r in rows]})
    served = mlflow.pyfunc.load_model(ctx.outputs["fuse"]["model_uri"]).predict(frame)
    clear = {r["patient_id"]: next(s["patient"] for s in samples if s["source"] == r["path"]) for r in rows}
    for _, r in served.iterrows():
        want = stage[clear[r["patient_id"]]]
        assert float(r["p_amd_dr"]) == pytest.approx(float(want["p_amd_dr"]), abs=2e-4)
    from medcl.errors import DataError

    with pytest.raises(DataError, match="batch size 0 must be >= 1"):  # not an empty prediction
        mlflow.pyfunc.load_model(ctx.outputs["fuse"]["model_uri"]).predict(frame, params={"batch_size": 0})


def test_prediction_from_what_a_patient_comes_with(fused, tmp_path):
    """A patient without fundus photographs is classified from the OCT alone (fundus gate 0, OCT gate 1: nothing to
    check it against); an unreadable file is a row with its error and its patient is classified from the others;
    --clear-ids writes the manifest's ids."""
    root = fused["root"] / "data" / "eye"
    rows = [dict(r, path=str(root / r["path"])) for r in fused["rows"]]
    both = [p for p in dict.fromkeys(r["patient_id"] for r in rows)
            if {r["modality"] for r in rows if r["patient_id"] == p} == {"oct", "fundus"}]
    alone, broken = both[0], both[1]
    rows = [r for r in rows if not (r["patient_id"] == alone and r["modality"] == "fundus")]
    bad = next(i for i, r in enumerate(rows) if r["patient_id"] == broken and r["modality"] == "oct")
    (tmp_path / "zz9.png").write_bytes(b"not a png")
    rows[bad] = dict(rows[bad], path=str(tmp_path / "zz9.png"))
    rc, samples, patients = _predict(fused, _manifest(fused, tmp_path, rows), tmp_path, "--clear-ids")
    assert rc == 0
    assert samples[bad]["status"].startswith("error") and "zz9.png" in samples[bad]["status"]
    assert sum(s["status"] != "ok" for s in samples) == 1
    by = {p["patient"]: p for p in patients}  # clear ids, as asked
    assert set(by) == {r["patient_id"] for r in rows}
    a = by[alone]
    assert int(a["n_fundus"]) == 0 and float(a["gate_fundus"]) == 0.0 and float(a["gate_oct"]) == 1.0
    n_oct = sum(r["patient_id"] == broken and r["modality"] == "oct" for r in rows)
    assert int(by[broken]["n_oct"]) == n_oct - 1 and by[broken]["status"] == "ok"
    assert sum(float(v) for k, v in a.items() if k.startswith("p_")) == pytest.approx(1.0, abs=1e-5)


def test_prediction_refuses_a_modality_the_model_does_not_take(fused, tmp_path):
    from medcl.errors import DataError
    from medcl.predict import predict_patients

    rows = [dict(r) for r in fused["rows"]]
    rows[3]["modality"] = "ct"
    with pytest.raises(DataError) as err:
        predict_patients(fused["ctx"].parent_run_id, _manifest(fused, tmp_path, rows), tmp_path / "p.csv",
                         tracking_uri=fused["uri"], progress=False)
    assert "'ct'" in str(err.value) and "row 4" in str(err.value)
