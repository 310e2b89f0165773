import json
import sqlite3

import pytest

from medcl import phi
from medcl.errors import PHIError, TrackingError
from medcl.tracking import MLflowTracker, NullTracker, default_tracking_uri


def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default_tracking_uri() == "http://127.0.0.1:1"


def test_nested_runs_params_metrics_artifacts(tracking_uri, tmp_path):
    from mlflow import MlflowClient

    parent = MLflowTracker.start("pipe", uri=tracking_uri, experiment="t", tags={"medcl.kind": "pipeline"})
    child = parent.child("pretrain", tags={"medcl.stage": "pretrain"})
    child.log_params({"pretrain.lr": 0.1, "model.encoder": "resnet18"})
    for step in range(3):
        child.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    f = tmp_path / "split.csv"
    f.write_text("row,patient,split\n1,p-abc,train\n")
    child.log_artifact(f)
    child.log_dict({"a": 1}, "summary.json")
    child.end()
    parent.end()

    client = MlflowClient(tracking_uri)
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.params["pretrain.lr"] == "0.1"
    hist = client.get_metric_history(child.run_id, "loss")
    assert [m.step for m in hist] == [0, 1, 2]
    names = {a.path for a in client.list_artifacts(child.run_id)}
    assert {"split.csv", "summary.json"} <= names
    assert run.info.status == "FINISHED"
    # the store is SQLite, artifacts next to it
    con = sqlite3.connect(tracking_uri[len("sqlite:///"):])
    assert con.execute("select count(*) from runs").fetchone()[0] == 2


def test_phi_guard_refuses_params_metrics_artifacts(tracking_uri, tmp_path):
    phi.REGISTRY.add("DOE^JANE")
    phi.REGISTRY.add("MRN1234567")
    t = MLflowTracker.start("pipe", uri=tracking_uri, experiment="t")
    with pytest.raises(PHIError):
        t.log_params({"note": "patient doe^jane"})
    with pytest.raises(PHIError):
        t.log_metrics({"auc_MRN1234567": 0.5})
    f = tmp_path / "rows.csv"
    f.write_text("row,path\n1,/data/MRN1234567/scan.png\n")
    with pytest.raises(PHIError):
        t.log_artifact(f)
    # the refused value never reached the store
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(t.run_id)
    assert "note" not in run.data.params
    assert not run.data.metrics


def test_unreachable_server_fails_clearly():
    with pytest.raises(TrackingError, match=r"opening experiment .* failed after 2 attempts: .* check that the MLflow server"):
        MLflowTracker.connect("http://127.0.0.1:9", "t", retries=1, retry_wait_s=0.01)


def test_credentials_hidden_in_errors():
    with pytest.raises(TrackingError) as ei:
        MLflowTracker.connect("http://alice:s3cret@127.0.0.1:9", "t", retries=0, retry_wait_s=0)
    assert "s3cret" not in str(ei.value)


def test_null_tracker_records_and_guards():
    t = NullTracker()
    c = t.child("pretrain")
    c.log_metrics({"loss": 2.0}, step=1)
    c.log_dict({"x": 1}, "a.json")
    assert c.metrics["loss"] == [(1, 2.0)] and t.children == [c]
    phi.REGISTRY.add("SMITH^JOHN")
    with pytest.raises(PHIError):
        c.log_text(json.dumps({"name": "SMITH^JOHN"}), "x.json")
