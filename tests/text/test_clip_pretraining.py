"""The clip method end to end: OCT demo scans and their reports, pretraining with a text encoder trained here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def oct_with_reports(tmp_path_factory):
    """Demo OCT data; the reports of two rows blanked."""
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("clip")
    synthesize(root / "data", modalities=["oct"], patients=16, seed=0)
    manifest = root / "data" / "oct" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    for r in rows[:2]:
        r["report"] = ""
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root, manifest


def _cfg(root, manifest, *sets):
    from medcl.pipeline import load_pipeline

    return load_pipeline(REPO / "pipelines" / "demo" / "oct.yaml", [
        f"data.manifest={manifest}", f"runtime.output_dir={root / 'runs'}", "runtime.progress=false",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "stages=[pretrain]", "pretrain.method=clip",
        "pretrain.steps=3", "pretrain.warmup_steps=1", "pretrain.batch_size=8", "pretrain.probe=false",
        "pretrain.method_options={text_dim: 32, text_depth: 1, text_heads: 2, vocab_size: 200}",
        "model.encoder=tiny_cnn", "model.options={}", "transforms.spatial_size=[32, 32]", *sets])


def test_clip_pretrains_on_scans_and_their_reports(oct_with_reports):
    from mlflow import MlflowClient

    from medcl.pipeline import run_pipeline

    root, manifest = oct_with_reports
    ctx = run_pipeline(_cfg(root, manifest))
    out = ctx.outputs["pretrain"]
    assert out["steps_run"] == 3 and Path(out["encoder"]).is_file()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_run(ctx.parent_run_id).info.experiment_id
    child = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'")[0]
    train_rows = {r.row for i, r in enumerate(ctx.data.records) if ctx.data.assignment[r.patient] == "train"}
    blank = {1, 2} & train_rows
    assert child.data.params["pretrain.n_without_report"] == str(len(blank))
    assert int(child.data.params["pretrain.n_reports"]) == len(train_rows) - len(blank)
    if blank:
        listed = json.loads(Path(client.download_artifacts(child.info.run_id, "rows_without_report.json",
                                                           str(root))).read_text())
        assert set(listed["rows"]) == blank
    assert {"train/temperature", "train/pair_cos"} <= set(child.data.metrics)


def test_clip_without_a_report_column_says_so(oct_with_reports, tmp_path):
    from medcl.errors import StageError
    from medcl.pipeline import run_pipeline

    root, manifest = oct_with_reports
    cfg = _cfg(root, manifest, "data.report_column=findings", f"runtime.output_dir={tmp_path}")
    with pytest.raises(StageError, match="no 'findings' column"):
        run_pipeline(cfg)
