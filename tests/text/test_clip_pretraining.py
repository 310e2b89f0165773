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


def test_the_zero_shot_section_says_why_it_is_empty_after_other_pretraining(oct_with_reports, tmp_path):
    from medcl.pipeline import run_pipeline
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render

    root, manifest = oct_with_reports
    uri = f"sqlite:///{tmp_path / 's.db'}"
    ctx = run_pipeline(_cfg(root, manifest, "stages=[pretrain, classify]", "pretrain.method=simclr",
                            "pretrain.method_options={}", f"runtime.output_dir={tmp_path}", f"tracking.uri={uri}",
                            "classify.n_boot=10", "classify.label_fractions=[1.0]"))
    html = "\n".join(render(ReportData.load(ctx.parent_run_id, uri), "zero_shot"))
    assert "not pretrained with the clip method" in html and "zero_shot" not in ctx.outputs["classify"]


def test_clip_without_a_report_column_says_so(oct_with_reports, tmp_path):
    from medcl.errors import StageError
    from medcl.pipeline import run_pipeline

    root, manifest = oct_with_reports
    cfg = _cfg(root, manifest, "data.report_column=findings", f"runtime.output_dir={tmp_path}")
    with pytest.raises(StageError, match="no 'findings' column"):
        run_pipeline(cfg)


def test_zero_shot_and_retrieval_follow_clip_pretraining(oct_with_reports, tmp_path):
    from mlflow import MlflowClient

    from medcl.pipeline import run_pipeline

    root, manifest = oct_with_reports
    uri = f"sqlite:///{tmp_path / 'z.db'}"
    ctx = run_pipeline(_cfg(root, manifest, "stages=[pretrain, classify]", f"runtime.output_dir={tmp_path}",
                            f"tracking.uri={uri}", "classify.n_boot=10", "classify.protocols=[linear]",
                            "classify.label_fractions=[1.0]",
                            "classify.prompts={normal: [No drusen.], early: [A few small drusen.]}"))
    assert Path(ctx.outputs["pretrain"]["text_model"]).is_file()
    zs = ctx.outputs["classify"]["zero_shot"]
    assert zs["prompts_per_class"] == {"normal": 1, "early": 1, "intermediate": 2}  # the default for the last
    r = zs["retrieval"]
    for side in ("image_to_text", "text_to_image"):
        rec = [r[side][k] for k in (1, 5, 10)]
        assert all(0.0 <= x <= 1.0 for x in rec) and rec == sorted(rec)  # recall@K grows with K
    client = MlflowClient(uri)
    exp = client.get_run(ctx.parent_run_id).info.experiment_id
    child = next(c for c in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'")
                 if c.data.tags.get("medcl.stage") == "classify")
    assert {"test/retrieval/image_to_text_recall_at_1", "test/retrieval/text_to_image_recall_at_10"} <= set(
        child.data.metrics)
    assert any(k.startswith("test/zero_shot/") and "auroc" in k for k in child.data.metrics)
    # the report's section: the zero-shot table and the retrieval recalls
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render

    html = "\n".join(render(ReportData.load(ctx.parent_run_id, uri), "zero_shot"))
    assert "no labels" in html and "recall@1" in html and "image → report" in html and "report → image" in html
    assert html.count("<tr>") >= 4  # header + zero-shot metrics, header + two retrieval directions


def test_prompts_for_a_class_the_data_do_not_have_are_refused_before_training(oct_with_reports, tmp_path):
    from medcl.errors import ConfigError
    from medcl.pipeline import run_pipeline

    root, manifest = oct_with_reports
    with pytest.raises(ConfigError, match=r"classify.prompts names \['drusen'\]"):
        run_pipeline(_cfg(root, manifest, "stages=[pretrain, classify]", f"runtime.output_dir={tmp_path}",
                          "classify.prompts={drusen: [Drusen.]}"))


def test_recall_and_probabilities_by_hand():
    import numpy as np

    from medcl.stages.zero_shot import prompts_for, recall_at_k, zero_shot_probs

    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.6, 0.1]])
    same = np.eye(3, dtype=bool)
    # query 0: own text ranked 1st; query 1: 2nd (0.3 after 0.8); query 2: 3rd (0.1 after 0.6 and 0.4)
    assert recall_at_k(sim, same, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    same[1, 2] = True  # query 1's best text repeats its report word for word: a hit
    assert recall_at_k(sim, same, (1,)) == {1: 2 / 3}
    img, cls = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    p = zero_shot_probs(img, cls, 10.0, "multiclass")
    assert np.allclose(p, [[np.exp(10) / (np.exp(10) + 1), 1 / (np.exp(10) + 1)]])
    assert prompts_for(["no_dr", "mild"], {"mild": ["Mild NPDR."]}) == {"no_dr": ["no dr.", "findings of no dr."],
                                                                         "mild": ["Mild NPDR."]}
