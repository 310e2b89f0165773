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
    conditions = {"complete", "all", "without_oct", "mislinked_oct", "without_fundus", "mislinked_fundus"}
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
