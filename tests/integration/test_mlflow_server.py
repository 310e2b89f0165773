"""Tracking against a real ``mlflow server`` process (SQLite backend, proxied artifacts on 127.0.0.1).

* a small pipeline (pretrain → classify → calibrate) logs nested runs, metrics, artifacts, a model
  that loads with ``mlflow.pyfunc`` and a registry version — read back through the server;
* an unreachable server makes ``medcl run`` fail before training with one clear line (exit 1);
* the compose stack's server entry script (docker/mlflow/entrypoint.sh) serves medcl, and when that
  server goes away after a run was created, ``log_metrics`` raises — a metric is never dropped silently;
* with basic auth (needs ``mlflow[auth]``): anonymous requests are refused,
  ``MLFLOW_TRACKING_USERNAME/PASSWORD`` let medcl in, and no password is written to disk.

Each server is stopped by its PID (process group) in a ``finally``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from servers import free_port, healthy, mlflow_server, stop_server  # tests/servers.py (tests/ is on sys.path)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = Path(sys.executable).with_name("mlflow")
OCT = ROOT / "pipelines" / "demo" / "oct.yaml"


# ------------------------------------------------------------------------------------------ helpers
def sqlite_server_cmd(tmp: Path, port: int) -> list[str]:
    return [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", str(tmp / "art"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]


def demo_manifest(root: Path, patients: int = 12) -> Path:
    """Tiny synthetic OCT set (its `label` holds the class names the OCT pipeline lists)."""
    from medcl.data.synth import synthesize

    return Path(synthesize(root, modalities=["oct"], patients=patients, seed=0))


@pytest.fixture
def fast_http(monkeypatch):
    """MLflow's own HTTP retries back off for minutes; medcl's tracking.retries is what is tested here."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow  # about 60-100 s on the 2-core CI machine: a server start plus three stages
def test_pipeline_against_real_server(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from medcl.pipeline import load_pipeline, run_pipeline

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    manifest = demo_manifest(tmp_path / "data")
    with mlflow_server(sqlite_server_cmd(tmp_path, port), port, tmp_path / "server.log"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = load_pipeline(OCT, [
            f"data.manifest={manifest}", "stages=[pretrain,classify,calibrate]", "model.encoder=tiny_cnn", "model.options={}",
            "pretrain.batch_size=8",
            "classify.protocols=[linear]", "classify.baselines=[]", "classify.label_fractions=[1.0]",
            f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false",
            "tracking.experiment=medcl-server-test", "tracking.register_model=medcl-test",
        ], smoke=True)
        ctx = run_pipeline(cfg)

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("medcl-server-test")
        assert exp is not None
        assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # proxied by the server
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("medcl.kind") == "pipeline"]
        assert len(parents) == 1
        parent = parents[0]
        assert parent.info.run_id == ctx.parent_run_id and parent.info.status == "FINISHED"
        children = {r.data.tags["medcl.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
        assert set(children) == {"pretrain", "classify", "calibrate"}
        assert len(runs) == 4  # one pipeline run + one per stage, nothing logged twice
        for stage, run in children.items():
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.info.status == "FINISHED", stage
            assert run.info.run_id == ctx.outputs[stage]["run_id"]

        # params and metrics went through the REST API
        assert parent.data.params["model.encoder"] == "tiny_cnn"
        assert children["pretrain"].data.params["pretrain.world_size"] == "1"
        for stage in ("classify", "calibrate"):
            metrics = children[stage].data.metrics
            assert metrics, stage
            assert all(np.isfinite(v) for v in metrics.values()), (stage, metrics)
        key = next(iter(children["calibrate"].data.metrics))
        assert len(client.get_metric_history(children["calibrate"].info.run_id, key)) >= 1

        # artifacts were uploaded to (and are listed by) the server's artifact proxy
        names = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"config.yaml", "split.csv", "data_summary.json"} <= names
        cal = {a.path for a in client.list_artifacts(children["calibrate"].info.run_id)}
        assert {"calibration.json", "model_card.json"} <= cal
        assert any(p.is_file() for p in (tmp_path / "art").rglob("config.yaml"))

        # the logged model loads through the server and predicts calibrated probabilities
        model_uri = ctx.outputs["calibrate"]["model_uri"]
        assert model_uri
        mlflow.set_tracking_uri(uri)
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        model = mlflow.pyfunc.load_model(model_uri)
        # MLflow leaves its download of a served model in a new temporary folder (so this check can fail) ...
        assert list(scratch.rglob("model.pt"))
        shutil.rmtree(scratch)
        scratch.mkdir()
        # ... medcl's loading (predict, evaluate, embed, segment) removes its copy once the model is in memory
        from medcl.tracking.pyfunc import load_predictor

        predictor, _ = load_predictor(model_uri, uri)
        assert list(scratch.iterdir()) == [] and predictor.model is not None
        # ... and reading its metadata (what ``medcl predict`` does first) fetches the MLmodel file alone
        from medcl.tracking.pyfunc import model_metadata

        fetched, real_load = [], mlflow.models.Model.load
        monkeypatch.setattr(mlflow.models.Model, "load", lambda p, *a, **k: (
            fetched.append(sorted(f.name for f in scratch.rglob("*") if f.is_file())), real_load(p, *a, **k))[1])
        assert model_metadata(model_uri, uri)["classes"] and fetched == [["MLmodel"]]
        monkeypatch.setattr(mlflow.models.Model, "load", real_load)
        x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
        probs = np.asarray(model.predict(x[:1], params={"preprocessed": True}))
        assert probs.shape == (1, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

        # and a registry version exists for it
        versions = client.search_model_versions("name='medcl-test'")
        assert len(versions) == 1
        assert versions[0].run_id == children["calibrate"].info.run_id

        # a deployed model takes any batch size, with the same numbers per sample
        probs2 = np.asarray(model.predict(x, params={"preprocessed": True}))
        assert probs2.shape == (2, 3)
        np.testing.assert_allclose(probs2[:1], probs, rtol=1e-5, atol=1e-6)
        x5 = np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32)
        assert np.asarray(model.predict(x5, params={"preprocessed": True})).shape == (5, 3)


def test_unreachable_server_fails_before_training(tmp_path, capsys, monkeypatch, fast_http):
    from medcl.cli import main

    manifest = demo_manifest(tmp_path / "data", patients=6)
    port = free_port()  # nothing listens there
    out_dir = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(OCT), "--smoke",
               "--set", f"data.manifest={manifest}", "--set", f"runtime.output_dir={out_dir}",
               "--set", f"tracking.uri=http://127.0.0.1:{port}",
               "--set", "tracking.retries=1", "--set", "tracking.retry_wait_s=0.1"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "failed after 2 attempts" in lines[0]
    assert f"tracking store http://127.0.0.1:{port}" in lines[0]
    assert "check that the MLflow server is running" in lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()  # nothing was trained, no run folder was made


def _entrypoint_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """What the compose file gives the mlflow service, with a SQLite store instead of PostgreSQL."""
    return dict(os.environ, PATH=f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
                MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "art"), MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port),
                MLFLOW_WORKERS="1", MLFLOW_AUTH_DIR=str(tmp_path / "auth"), **extra)


ENTRYPOINT = ["sh", str(ROOT / "docker" / "mlflow" / "entrypoint.sh")]


def test_compose_entrypoint_serves_medcl_and_a_lost_server_is_loud(tmp_path, fast_http):
    """docker/mlflow/entrypoint.sh (the compose service's command) starts a server medcl can track to;
    when that server goes away after the run was created, ``log_metrics`` raises after its retries
    instead of returning silently, and the store holds exactly what was logged before."""
    from medcl.errors import TrackingError
    from medcl.tracking import MLflowTracker

    for auth, expect in (("basic", "needs MLFLOW_AUTH_ADMIN_PASSWORD"), ("ldap", "must be 'none' or 'basic'")):
        bad = subprocess.run(ENTRYPOINT, env=_entrypoint_env(tmp_path, free_port(), MLFLOW_AUTH=auth),
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and expect in bad.stderr, bad.stderr
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with mlflow_server(ENTRYPOINT, port, tmp_path / "server.log", env=_entrypoint_env(tmp_path, port)) as proc:
        done = MLflowTracker.start("compose", uri=uri, experiment="compose", retries=0)
        f = tmp_path / "note.txt"
        f.write_text("hello")
        done.log_artifact(f)
        done.end()
        tracker = MLflowTracker.start("lost", uri=uri, experiment="compose", retries=1, retry_wait_s=0.1)
        tracker.log_metrics({"train/loss": 1.5}, step=1)
        stop_server(proc)
        assert proc.poll() is not None and not healthy(port)
        with pytest.raises(TrackingError, match=r"logging metrics failed after 2 attempts"):
            tracker.log_metrics({"train/loss": 1.25}, step=2)
    # proxied artifacts landed in MLFLOW_ARTIFACTS_DESTINATION (the compose artifact volume)
    assert [p.read_text() for p in (tmp_path / "art").rglob("note.txt")] == ["hello"]
    con = sqlite3.connect(tmp_path / "mlflow.db")
    rows = con.execute("select run_uuid, key, value, step from metrics").fetchall()
    con.close()
    assert rows == [(tracker.run_id, "train/loss", 1.5, 1)]  # the lost metric was refused, not half-written
    assert "auth none" in (tmp_path / "server.log").read_text()


def test_compose_entrypoint_with_basic_auth(tmp_path, monkeypatch, fast_http):
    """MLFLOW_AUTH=basic: anonymous requests are refused, the trainer's credentials work."""
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs mlflow[auth] (Flask-WTF), "
                                            "which the server image installs but this environment lacks")
    from medcl.errors import TrackingError
    from medcl.tracking import MLflowTracker

    port = free_port()
    secret = "s3cret-Admin-pw"
    env = _entrypoint_env(tmp_path, port, MLFLOW_AUTH="basic", MLFLOW_AUTH_ADMIN_USERNAME="admin",
                          MLFLOW_AUTH_ADMIN_PASSWORD=secret)
    uri = f"http://127.0.0.1:{port}"
    with mlflow_server(ENTRYPOINT, port, tmp_path / "server.log", env=env):
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=x")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
        tracker = MLflowTracker.start("auth", uri=uri, experiment="auth", retries=0)
        tracker.log_metrics({"m": 1.0}, step=0)
        tracker.end()
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(TrackingError, match="opening experiment"):
            MLflowTracker.start("auth2", uri=uri, experiment="auth", retries=0)
    ini = (tmp_path / "auth" / "basic_auth.ini").read_text()
    assert "admin_username = admin" in ini
    assert secret not in ini  # mlflow reads the password from the environment only
