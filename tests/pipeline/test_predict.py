"""``medcl predict``: a finished run's calibrated model applied to new files, one row per input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError, TrackingError

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "oct.yaml"


@pytest.fixture(scope="module")
def trained(trained_oct):
    """The tiny OCT demo run with its logged model (``conftest.trained_oct``, shared with the evaluate tests)."""
    return trained_oct


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predictions_equal_the_runs_own_test_evaluation(trained, tmp_path):
    """On the run's test samples, predict (its own reading and preprocessing of the files) gives the calibrated
    probabilities of the logits the classify stage computed during the run."""
    from medcl.predict import load_model, predict

    ctx = trained["ctx"]
    npz = np.load(ctx.outputs["classify"]["primary"])
    test_rows = [ctx.data.records[int(i)] for i in npz["test_index"]]
    # a manifest of just the test samples
    src = _rows(trained["manifest"])
    keep = {r.relpath for r in test_rows}
    sub = tmp_path / "test.csv"
    with open(sub, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(src[0]))
        w.writeheader()
        w.writerows([r for r in src if r["path"] in keep])

    shutil.copytree(trained["manifest"].parent / "images", tmp_path / "images")
    res = predict(ctx.parent_run_id, sub, tmp_path / "pred.csv", tracking_uri=trained["uri"], batch_size=5,
                  progress=False)
    rows = _rows(res.samples)
    assert res.n_ok == len(keep) == len(rows) and res.n_failed == 0
    lm = load_model(ctx.parent_run_id, trained["uri"])
    with torch.no_grad():
        want = lm.model.from_logits(torch.as_tensor(npz["test_logits"], dtype=torch.float32)).numpy()
    by_path = {r.relpath: want[k] for k, r in enumerate(test_rows)}
    classes = ctx.data.classes
    for row in rows:
        got = np.array([float(row[f"p_{c}"]) for c in classes])
        np.testing.assert_allclose(got, by_path[row["source"]], rtol=1e-4, atol=1e-5)
        assert abs(got.sum() - 1) < 1e-5
        assert row["predicted"] == classes[int(np.argmax(got))]  # ordinal task: the most probable grade
        assert row["status"] == "ok" and row["run_id"] == ctx.parent_run_id and row["model_uri"].startswith("runs:/")
    # per patient: the mean of the patient's probabilities
    per = _rows(res.patients)
    assert {p["patient"] for p in per} == {r["patient"] for r in rows}
    for p in per:
        mine = [r for r in rows if r["patient"] == p["patient"]]
        assert int(p["n_samples"]) == len(mine)
        for c in classes:
            assert abs(float(p[f"p_{c}"]) - np.mean([float(r[f"p_{c}"]) for r in mine])) < 1e-6


def test_bad_files_are_reported_by_name_and_the_others_predicted(trained, tmp_path):
    from medcl.predict import predict

    src = _rows(trained["manifest"])[:4]
    folder = tmp_path / "new"
    (folder / "images").mkdir(parents=True)
    for r in src:
        (folder / r["path"]).write_bytes((trained["manifest"].parent / r["path"]).read_bytes())
    broken = folder / src[1]["path"]
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(src[0]))
        w.writeheader()
        w.writerows(src)
    res = predict(trained["ctx"].parent_run_id, folder / "manifest.csv", tmp_path / "out.parquet",
                  tracking_uri=trained["uri"], progress=False)
    import pandas as pd

    df = pd.read_parquet(res.samples)
    assert list(df["source"]) == [r["path"] for r in src]  # every input row, in input order
    assert (res.n_ok, res.n_failed) == (3, 1)
    bad = df.iloc[1]
    assert bad["status"].startswith("error: ") and np.isnan(bad["p_normal"])
    assert all(df["status"].iloc[[0, 2, 3]] == "ok")
    # patients pseudonymised as in the run, unless the user asks for clear ids in their own output
    assert not set(df["patient"]) & {r["patient_id"] for r in src}
    assert all(p.startswith("p-") for p in df["patient"])
    clear = predict(trained["ctx"].parent_run_id, folder / "manifest.csv", tmp_path / "clear.csv",
                    tracking_uri=trained["uri"], progress=False, clear_ids=True)
    assert [r["patient"] for r in _rows(clear.samples)] == [r["patient_id"] for r in src]


def test_a_folder_or_one_file_and_the_command_line(trained, tmp_path, capsys):
    from medcl.cli import main
    from medcl.predict import predict

    images = trained["manifest"].parent / "images"
    res = predict(trained["ctx"].parent_run_id, images, tmp_path / "folder.csv", tracking_uri=trained["uri"],
                  progress=False)
    rows = _rows(res.samples)
    assert len(rows) == len(list(images.glob("*.png"))) and res.patients is None and "patient" not in rows[0]
    one = sorted(images.glob("*.png"))[0]
    rc = main(["--log-dir", str(tmp_path), "predict", trained["ctx"].parent_run_id, str(one), "--out",
               str(tmp_path / "one.csv"), "--tracking-uri", trained["uri"], "--no-progress"])
    assert rc == 0 and "predicted 1 sample(s)" in capsys.readouterr().out
    (only,) = _rows(tmp_path / "one.csv")
    want = next(r for r in rows if r["source"] == str(one))
    assert all(abs(float(only[k]) - float(want[k])) < 1e-6 for k in only if k.startswith("p_"))  # batch-independent


def test_embed_gives_the_encoders_features_of_each_file(trained, tmp_path, capsys):
    """The features are what the run's encoder gives on the run's preprocessing: equal to the classify stage's
    linear-probe input up to the probe's own standardisation, checked through the logged head."""
    import pandas as pd

    from medcl.cli import main
    from medcl.predict import load_model, predict

    run, uri = trained["ctx"].parent_run_id, trained["uri"]
    images = trained["manifest"].parent / "images"
    rc = main(["--log-dir", str(tmp_path), "embed", run, str(images), "--out", str(tmp_path / "f.parquet"),
               "--tracking-uri", uri, "--no-progress", "--batch-size", "7"])
    assert rc == 0 and "embedded" in capsys.readouterr().out
    df = pd.read_parquet(tmp_path / "f.parquet")
    feats = df[[c for c in df.columns if c.startswith("f")]].to_numpy(np.float32)
    lm = load_model(run, uri)
    assert len(df) == len(list(images.glob("*.png"))) and feats.shape[1] == lm.model.head.in_features
    # head(features) through the calibrator = what predict reports for the same files
    with torch.no_grad():
        probs = lm.model.from_logits(lm.model.head(torch.as_tensor(feats))).numpy()
    pred = predict(run, images, tmp_path / "p.csv", tracking_uri=uri, progress=False)
    got = np.array([[float(r[f"p_{c}"]) for c in lm.classes] for r in _rows(pred.samples)])
    np.testing.assert_allclose(got, probs, rtol=1e-4, atol=1e-5)


def test_clear_errors_before_any_work(trained, tmp_path):
    from medcl.predict import predict

    run = trained["ctx"].parent_run_id
    with pytest.raises(TrackingError, match="no run"):
        predict("0" * 32, trained["manifest"], tmp_path / "x.csv", tracking_uri=trained["uri"])
    # a tracking server that does not answer (nothing listens on port 9): one line naming the store and the fix
    from servers import free_port  # tests/servers.py (tests/ is on sys.path)

    with pytest.raises(TrackingError) as e:
        predict(run, trained["manifest"], tmp_path / "x.csv", tracking_uri=f"http://127.0.0.1:{free_port()}")
    assert "tracking store http://127.0.0.1" in e.value.line() and "MLflow server is running" in e.value.fix
    with pytest.raises(ConfigError, match="not a run id, a model URI or a model folder"):
        predict("my-model", trained["manifest"], tmp_path / "x.csv", tracking_uri=trained["uri"])
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        predict(run, trained["manifest"], tmp_path / "x.xlsx", tracking_uri=trained["uri"])
    with pytest.raises(DataError, match="does not exist"):
        predict(run, tmp_path / "nothing-here", tmp_path / "x.csv", tracking_uri=trained["uri"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no file medcl can read"):
        predict(run, tmp_path / "empty", tmp_path / "x.csv", tracking_uri=trained["uri"])
    # a manifest of another modality
    rows = _rows(trained["manifest"])[:2]
    for r in rows:
        r["modality"] = "fundus"
        r["path"] = str(trained["manifest"].parent / r["path"])
    m = tmp_path / "fundus.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="trained on 'oct'"):
        predict(run, m, tmp_path / "x.csv", tracking_uri=trained["uri"])


def test_the_model_card_states_the_operating_point_in_calibrated_terms(trained):
    """Binary: the validation-chosen threshold mapped through the calibrator calls the same samples positive."""
    import torch

    from medcl.stages.calibrate import _operating_point
    from medcl.tasks.export import CalibratedClassifier

    enc = torch.nn.Identity()
    model = CalibratedClassifier(enc, torch.ones(1, 3), torch.zeros(1), "binary", {"kind": "temperature", "t": 2.0})
    op = _operating_point(model, "binary", 0.8, "youden")
    # by hand: logit(0.8) = ln 4; divided by T = 2 → sigmoid(ln 2) = 2/3
    assert op["rule"] == "threshold" and abs(op["threshold"] - 2 / 3) < 1e-6
    assert _operating_point(model, "multiclass", None, "youden")["rule"] == "argmax"
    card = json.loads(json.dumps(_operating_point(model, "binary", None, "youden")))
    assert card["chosen_by"] == "default 0.5" and abs(card["threshold"] - 0.5) < 1e-6


@pytest.mark.parametrize("modality", ["ct", "ecg"])
def test_dicom_series_folders_and_wfdb_records(modality, tmp_path, tiny_overrides):
    """A folder of CT DICOM series (each series folder one sample) and a folder of WFDB records; the demo
    pipeline's classifier on the random-init encoder (no pretraining: seconds)."""
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline, run_pipeline
    from medcl.predict import predict

    root = Path(synthesize(tmp_path / "data", modalities=[modality], patients=10, seed=1)).parent / modality
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "demo" / f"{modality}.yaml", [
        f"data.manifest={root / 'manifest.csv'}", f"runtime.output_dir={tmp_path / 'runs'}", f"tracking.uri={uri}",
        "runtime.progress=false", "stages=[classify, calibrate]", "classify.protocols=[linear]",
        "classify.baselines=[]", "classify.label_fractions=[1.0]", "classify.n_boot=10", "calibrate.fit_on=validation"])
    ctx = run_pipeline(cfg)
    folder = root / ("series" if modality == "ct" else "records")
    samples = sorted(p for p in folder.iterdir() if p.is_dir()) if modality == "ct" else sorted(folder.glob("*.hea"))
    res = predict(ctx.parent_run_id, folder, tmp_path / "all.csv", tracking_uri=uri, batch_size=3, progress=False)
    rows = _rows(res.samples)
    assert [r["source"] for r in rows] == [str(p) for p in samples] and res.n_failed == 0
    one = predict(ctx.parent_run_id, samples[0], tmp_path / "one.csv", tracking_uri=uri, progress=False)
    (first,) = _rows(one.samples)
    cols = [k for k in first if k.startswith("p_")]
    assert cols and all(abs(float(first[k]) - float(rows[0][k])) < 1e-5 for k in cols)
    if modality == "ecg":  # multi-label: the labels at or above the threshold, ';'-joined
        for r in rows:
            called = [k[2:] for k in cols if float(r[k]) >= 0.5]
            assert r["predicted"] == ";".join(called)
    else:  # binary: one probability, the class at the calibrated threshold of the model card
        assert cols == ["p_lesion"]


def test_a_file_of_the_wrong_kind_is_a_row_with_its_error(trained, tmp_path):
    """An RGB photograph and a 3D volume given to the greyscale 2D OCT model: named rows, the others predicted."""
    import nibabel as nib
    from PIL import Image

    from medcl.predict import predict

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((trained["manifest"].parent / "images").glob("*.png"))[0]
    (folder / "a_scan.png").write_bytes(good.read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "b_rgb.png")
    res = predict(trained["ctx"].parent_run_id, folder, tmp_path / "mixed.csv", tracking_uri=trained["uri"],
                  progress=False)
    rows = _rows(res.samples)
    assert [Path(r["source"]).name for r in rows] == ["a_scan.png", "b_rgb.png"]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"].startswith("error: ") and "3 channel(s)" in rows[1]["status"], rows[1]["status"]
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), vol)
    one = predict(trained["ctx"].parent_run_id, vol, tmp_path / "vol.csv", tracking_uri=trained["uri"],
                  progress=False)
    assert one.n_failed == 1 and _rows(one.samples)[0]["status"].startswith("error: ")


# ----------------------------------------------------------------------------------------------- the MLflow model
def _some_images(trained, n: int) -> list[Path]:
    return sorted((trained["manifest"].parent / "images").glob("*.png"))[:n]


def _cli_probs(trained, files: list[Path], tmp_path: Path) -> np.ndarray:
    """``medcl predict`` on a folder holding ``files``: the reference the pyfunc must agree with."""

    from medcl.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    res = predict(trained["ctx"].parent_run_id, folder, tmp_path / "cli.csv", tracking_uri=trained["uri"],
                  batch_size=4, progress=False)
    rows = {Path(r["source"]).name: r for r in _rows(res.samples)}
    return np.array([[float(rows[f.name][f"p_{c}"]) for c in trained["ctx"].data.classes] for f in files])


def test_the_logged_model_is_a_pyfunc_that_reads_files_and_raw_arrays(trained, tmp_path):
    """``mlflow.pyfunc.load_model(uri).predict`` on file paths (a list, a DataFrame ``path`` column) and on raw
    arrays read with PIL (the pixels as stored, 0–255) gives ``medcl predict``'s probabilities, whatever the batch
    size; preprocessed tensors go straight to the network with ``preprocessed=True``."""
    import mlflow
    import pandas as pd
    from PIL import Image

    ctx = trained["ctx"]
    mlflow.set_tracking_uri(trained["uri"])
    (tmp_path / "model").mkdir()
    model = mlflow.pyfunc.load_model(ctx.outputs["calibrate"]["model_uri"], dst_path=str(tmp_path / "model"))
    files = _some_images(trained, 7)
    want = _cli_probs(trained, files, tmp_path)
    cols = [f"p_{c}" for c in ctx.data.classes]
    for batch in (1, 3, 16):
        got = model.predict([str(f) for f in files], params={"batch_size": batch})
        assert list(got.columns) == cols and len(got) == len(files)
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-5, atol=1e-6)
    got = model.predict(pd.DataFrame({"path": [str(f) for f in files[:2]]}))
    np.testing.assert_allclose(got.to_numpy(), want[:2], rtol=1e-5, atol=1e-6)
    raw = np.stack([np.asarray(Image.open(f).convert("L"))[None] for f in files[:5]]).astype(np.float32)
    np.testing.assert_allclose(model.predict(raw).to_numpy(), want[:5], rtol=1e-5, atol=1e-6)
    # preprocessed: the run's own evaluation tensors
    pre = raw / 255.0
    np.testing.assert_allclose(model.predict(pre, params={"preprocessed": True}).to_numpy(), want[:5], rtol=1e-5,
                               atol=1e-6)
    # a file that cannot be read: one error naming it, nothing silently dropped
    with pytest.raises(DataError, match=r"1 of 3 input\(s\) could not be predicted: .*nothere\.png"):
        model.predict([str(files[0]), str(tmp_path / "nothere.png"), str(files[1])])
    with pytest.raises(DataError, match="no 'path' column"):
        model.predict(pd.DataFrame({"a": ["x"], "b": ["y"]}))


@pytest.mark.integration
def test_mlflow_models_serve_answers_a_rest_request_with_the_same_numbers(trained, tmp_path):
    """A real ``mlflow models serve`` process on the logged model: POST /invocations with file paths."""
    import os
    import sys
    import urllib.request

    from servers import free_port, mlflow_server

    ctx = trained["ctx"]
    files = _some_images(trained, 3)
    want = _cli_probs(trained, files, tmp_path)
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
           ctx.outputs["calibrate"]["model_uri"], "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    bin_dir = str(Path(sys.executable).parent)  # mlflow execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"], "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    with mlflow_server(cmd, port, tmp_path / "serve.log", env=env, timeout_s=180):
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[str(f)] for f in files]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
    got = np.array([[row[f"p_{c}"] for c in ctx.data.classes] for row in out["predictions"]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
