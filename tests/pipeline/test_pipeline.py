"""End-to-end pipeline runs on tiny demo data against a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from medcl.errors import StageError
from medcl.pipeline import load_pipeline, run_pipeline

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "oct.yaml"


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture
def run_once(oct_demo, tmp_path, tracking_uri, tiny_overrides):
    cfg = load_pipeline(DEMO, tiny_overrides(oct_demo, tmp_path))
    ctx = run_pipeline(cfg)
    return cfg, ctx, MlflowClient(tracking_uri)


def test_end_to_end_runs_nested_metrics_and_model(run_once):
    cfg, ctx, client = run_once
    parent = client.get_run(ctx.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["pretrain.method"] == "simclr"
    arts = {a.path for a in client.list_artifacts(ctx.parent_run_id)}
    assert {"config.yaml", "split.csv", "data_summary.json"} <= arts
    kids = {r.data.tags["medcl.stage"]: r for r in _children(client, ctx.parent_run_id)}
    assert set(kids) == {"pretrain", "classify", "calibrate"}
    assert all(r.info.status == "FINISHED" for r in kids.values())
    m = kids["classify"].data.metrics
    for name in ("test/ssl/linear/f100/auroc", "test/random/linear/f100/auroc", "test/ssl/linear/f100/auroc_ci_low"):
        assert name in m and 0.0 <= m[name] <= 1.0
    assert m["test/ssl/linear/f100/auroc_ci_low"] <= m["test/ssl/linear/f100/auroc"] <= m[
        "test/ssl/linear/f100/auroc_ci_high"]
    c = kids["calibrate"].data.metrics
    assert {"test/ece_before", "test/ece_after", "test/nll_before", "test/nll_after"} <= set(c)
    assert any(k.startswith("train/") for k in kids["pretrain"].data.metrics)


def test_pyfunc_reload_returns_the_calibrated_probabilities(run_once):
    import mlflow

    from medcl.stages.calibrate import _example_input, _load_primary, build_export_model
    from medcl.tasks.export import calibration_for_export

    cfg, ctx, client = run_once
    uri = ctx.outputs["calibrate"]["model_uri"]
    assert uri
    x = _example_input(ctx)
    loaded = mlflow.pyfunc.load_model(uri)
    got = np.asarray(loaded.predict(x))
    import json

    state = json.loads(Path(ctx.outputs["calibrate"]["calibration"]).read_text())["state"]
    _, meta = _load_primary(ctx)
    ref = build_export_model(ctx, meta, calibration_for_export(state))
    with torch.no_grad():
        want = ref(torch.as_tensor(x)).numpy()
    assert got.shape == (x.shape[0], len(ctx.data.classes))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # the probabilities are the *calibrated* ones: T != 1 changes them
    t = ctx.outputs["calibrate"]["temperature"]
    assert t is not None and abs(float(t) - 1.0) > 1e-3


def test_rerun_skips_completed_stages_and_force_reruns(run_once):
    cfg, ctx, client = run_once
    n_before = len(_children(client, ctx.parent_run_id))
    ctx2 = run_pipeline(cfg)
    assert ctx2.parent_run_id == ctx.parent_run_id  # the same pipeline run is re-opened
    assert len(_children(client, ctx.parent_run_id)) == n_before  # nothing re-ran
    assert ctx2.outputs["classify"]["results"] == ctx.outputs["classify"]["results"]
    ctx3 = run_pipeline(cfg, force=True)
    assert ctx3.parent_run_id != ctx.parent_run_id
    assert len(_children(client, ctx3.parent_run_id)) == 3


def test_failed_stage_stops_with_clear_error_and_rerun_continues(oct_demo, tmp_path, tracking_uri, monkeypatch,
                                                                tiny_overrides):
    from medcl import stages

    cfg = load_pipeline(DEMO, tiny_overrides(oct_demo, tmp_path))
    real = stages.STAGES["classify"]

    def broken(ctx, tracker):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(stages.STAGES, "classify", stages.Stage(broken, main_only=False))
    with pytest.raises(StageError, match=r"stage classify: RuntimeError: disk on fire"):
        run_pipeline(cfg)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.search_runs([exp.experiment_id], "tags.`medcl.kind` = 'pipeline'")[0]
    assert parent.info.status == "FAILED"
    kids = {r.data.tags["medcl.stage"]: r.info.status for r in _children(client, parent.info.run_id)}
    assert kids == {"pretrain": "FINISHED", "classify": "FAILED"}  # calibrate never started

    monkeypatch.setitem(stages.STAGES, "classify", real)
    ctx = run_pipeline(cfg)
    assert ctx.parent_run_id == parent.info.run_id
    statuses = sorted((r.data.tags["medcl.stage"], r.info.status) for r in _children(client, parent.info.run_id))
    # pretrain was not re-run (one pretrain run); classify failed once then finished
    assert statuses == [("calibrate", "FINISHED"), ("classify", "FAILED"), ("classify", "FINISHED"),
                        ("pretrain", "FINISHED")]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_dry_run_trains_nothing_and_logs_nothing(oct_demo, tmp_path, tracking_uri, capsys, tiny_overrides):
    cfg = load_pipeline(DEMO, tiny_overrides(oct_demo, tmp_path))
    run_pipeline(cfg, dry_run=True)
    out = capsys.readouterr().out
    assert "dry run: nothing was trained" in out and "pretrain" in out
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(tracking_uri).search_experiments(
        filter_string=f"name = '{cfg.tracking.experiment}'")
    assert not (tmp_path / "runs").exists()


def test_bad_data_stops_before_training_with_row_lines(tmp_path, tracking_uri):
    from PIL import Image

    from medcl.errors import DataError

    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.new("L", (16, 16)).save(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_text("patient_id,path,modality,label\nP1,a.png,oct,normal\nP2,b.png,oct,erly\nP3,missing.png,oct,normal\n")
    cfg = load_pipeline(DEMO, [f"data.manifest={m}", f"runtime.output_dir={tmp_path / 'runs'}",
                              "data.label_column=label"])
    with pytest.raises(DataError) as ei:
        run_pipeline(cfg)
    msg = str(ei.value)
    assert "row 1 (a.png)" in msg and "row 2 (b.png)" in msg and "row 3 (missing.png)" in msg
    assert "did you mean 'early'" in msg
    assert not (tmp_path / "runs").exists()


def test_on_error_skip_excludes_lists_and_logs_bad_rows(oct_demo, tmp_path, caplog, tiny_overrides):
    import csv
    import json

    from medcl.data.prepare import prepare_data
    from medcl.pipeline import _log_pipeline_inputs
    from medcl.tracking import NullTracker

    rows = list(csv.DictReader(oct_demo.open()))
    bad = dict(rows[0], path="images/does_not_exist.png")
    m = oct_demo.parent / "manifest_with_bad_row.csv"
    with m.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, bad])
    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), f"data.manifest={m}", "data.on_error=skip"])
    data = prepare_data(cfg)
    assert len(data.records) == len(rows)
    assert [e["row"] for e in data.excluded] == [len(rows) + 1]
    assert "missing-file" in data.excluded[0]["codes"]
    assert any("excluded: row" in r.getMessage() for r in caplog.records)
    tracker = NullTracker()
    (tmp_path / "run").mkdir()
    _log_pipeline_inputs(tracker, cfg, data, tmp_path / "run")
    assert "excluded_rows.json" in tracker.artifacts
    assert tracker.params["data.n_excluded"] == "1"
    assert json.loads(json.dumps(data.summary))  # JSON-able
