"""``medcl evaluate RUN MANIFEST``: external validation on another site's labelled data, as a nested MLflow run and a
report section; every expectation is recomputed here independently (scikit-learn, a hand-counted ECE, the
model's own layers, MLflow's client)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError, TrackingError


@pytest.fixture(scope="module")
def site_b(trained_oct, tmp_path_factory):
    """Another 'site': a new OCT set synthesised with a seed the run never saw (10 patients)."""
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("site-b")
    synthesize(root, modalities=["oct"], patients=10, seed=7)
    return root / "oct" / "manifest.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _hand_ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width bins, counted by hand (Guo et al. 2017, eq. 3)."""
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / len(y) * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(total)


def test_external_validation_on_a_new_site(trained_oct, site_b, tmp_path):
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    from medcl.evaluate import evaluate
    from medcl.predict import load_model, predict

    run_id, uri = trained_oct["ctx"].parent_run_id, trained_oct["uri"]
    res = evaluate(run_id, site_b, name="site-b", out=tmp_path / "ev", tracking_uri=uri, n_boot=50,
                   n_permutations=200, progress=False, report=False)
    src = _rows(site_b)
    rows = _rows(res.out_dir / "predictions.csv")
    assert [r["source"] for r in rows] == [r["path"] for r in src] and all(r["status"] == "ok" for r in rows)
    assert res.n_ok == len(src) and res.n_excluded == 0
    # the calibrated probabilities are medcl predict's on the same manifest
    pred = {r["source"]: r for r in _rows(predict(run_id, site_b, tmp_path / "p.csv", tracking_uri=uri,
                                                  progress=False).samples)}
    lm = load_model(run_id, uri)
    classes = lm.classes
    cal = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    np.testing.assert_allclose(cal, [[float(pred[r["source"]][f"p_{c}"]) for c in classes] for r in rows],
                               rtol=1e-5, atol=1e-6)
    y = np.array([classes.index(r["label"]) for r in rows])
    assert [r["label"] for r in rows] == [r["label"] for r in src]
    # metrics: the macro one-vs-rest AUROC of scikit-learn over the classes present
    present = np.unique(y)
    want_auc = np.mean([roc_auc_score(y == c, cal[:, c]) for c in present])
    assert res.metrics["auroc"]["value"] == pytest.approx(want_auc, abs=1e-9)
    assert res.metrics["auroc"]["ci_low"] <= want_auc <= res.metrics["auroc"]["ci_high"]
    assert res.metrics["_info"]["n_patients"] == len({r["patient_id"] for r in src})
    # before/after calibration: the uncalibrated columns are the head's softmax; the calibrated ones apply the
    # run's calibrator to the same logits; each ECE is the hand-counted one
    unc = np.array([[float(r[f"p_{c}_uncalibrated"]) for c in classes] for r in rows])
    with torch.no_grad():
        again = lm.model.from_logits(torch.log(torch.as_tensor(unc, dtype=torch.float32))).numpy()
    np.testing.assert_allclose(again, cal, atol=2e-5)  # softmax is shift-invariant: log p = logits - const
    assert res.calibration["before"]["ece"] == pytest.approx(_hand_ece(y, unc), abs=1e-6)
    assert res.calibration["after"]["ece"] == pytest.approx(_hand_ece(y, cal), abs=1e-6)
    # subgroups: the synthetic manifest's sex column has two values
    assert "sex" in res.subgroups and set(res.subgroups["sex"]) == {r["sex"] for r in src}
    # dataset shift, per patient, against the training data's features logged by the calibrate stage
    assert res.shift["unit"] == "patient" and 0 < res.shift["p_value"] <= 1 and res.shift["reading"]
    assert res.shift["n_x"] == len({r["patient_id"] for r in src})
    # a nested MLflow run of the pipeline run, with the metrics and both files
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(res.evaluation_run_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["medcl.kind"] == "evaluation"
    assert child.info.status == "FINISHED" and child.info.run_name == "evaluate: site-b"
    assert child.data.metrics["external/auroc"] == pytest.approx(want_auc)
    assert child.data.metrics["shift/p_value"] == pytest.approx(res.shift["p_value"])
    assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"evaluation.json", "predictions.csv"}
    logged = json.loads((res.out_dir / "evaluation.json").read_text())
    assert logged["name"] == "site-b" and logged["n_samples"] == len(src)
    # what MLflow holds has no clear patient id and no file name (they often carry record numbers); the local table
    # links back by manifest row
    got = Path(client.download_artifacts(child.info.run_id, "predictions.csv", str(tmp_path / "dl")))
    text = got.read_text() + (res.out_dir / "evaluation.json").read_text()
    assert not any(r["patient_id"] in text or Path(r["path"]).stem in text for r in src)
    assert [int(r["row"]) for r in _rows(got)] == list(range(1, len(src) + 1))


def test_shift_is_none_on_the_training_data_and_large_on_inverted_images(trained_oct, tmp_path):
    """The run's own training rows are the reference itself (no shift); the same images with inverted intensities
    are far from it."""
    from PIL import Image

    from medcl.evaluate import evaluate

    ctx = trained_oct["ctx"]
    train = {r.relpath for i, r in enumerate(ctx.data.records) if ctx.data.assignment[r.patient] == "train"}
    src = [r for r in _rows(trained_oct["manifest"]) if r["path"] in train]
    shutil.copytree(trained_oct["manifest"].parent / "images", tmp_path / "images")
    same = evaluate(ctx.parent_run_id, _write(tmp_path / "train.csv", src), tracking_uri=trained_oct["uri"],
                    out=tmp_path / "same", n_boot=10, n_permutations=200, progress=False, report=False)
    assert same.shift["mmd2"] < 0.01 and same.shift["p_value"] > 0.5 and not same.shift["shifted"]
    inv = tmp_path / "inv"
    (inv / "images").mkdir(parents=True)
    for r in src:
        img = np.asarray(Image.open(tmp_path / r["path"]))
        Image.fromarray((255 - img).astype(np.uint8)).save(inv / r["path"])
    shifted = evaluate(ctx.parent_run_id, _write(inv / "manifest.csv", src), tracking_uri=trained_oct["uri"],
                       out=tmp_path / "shifted", n_boot=10, n_permutations=200, progress=False, report=False)
    assert shifted.shift["shifted"] and shifted.shift["p_value"] < 0.05
    assert "differ" in shifted.shift["reading"]


def test_bad_input_is_named_and_nothing_is_silently_dropped(trained_oct, site_b, tmp_path):
    from medcl.evaluate import evaluate

    run_id, uri = trained_oct["ctx"].parent_run_id, trained_oct["uri"]
    kw = {"tracking_uri": uri, "n_boot": 10, "n_permutations": 20, "progress": False, "report": False}
    with pytest.raises(ConfigError, match="not a pipeline run id"):
        evaluate("runs:/abc/model", site_b, **kw)
    from servers import free_port  # tests/servers.py (tests/ is on sys.path)

    with pytest.raises(TrackingError, match="MLflow server is running|failed after"):  # nobody listens there
        evaluate(run_id, site_b, **{**kw, "tracking_uri": f"http://127.0.0.1:{free_port()}"})
    src = _rows(site_b)
    shutil.copytree(site_b.parent / "images", tmp_path / "images")
    # labels that are not the model's classes: the column, the rows and the classes are named
    wrong = [{**r, "label": "grade-" + r["grade"]} for r in src]
    with pytest.raises(DataError) as e:
        evaluate(run_id, _write(tmp_path / "wrong.csv", wrong), **kw)
    assert "column 'label'" in str(e.value) and "row 1" in str(e.value) and "normal" in e.value.fix
    # the numeric grade column holds indices, not class names: the user is told to map them
    with pytest.raises(DataError, match="column 'grade'"):
        evaluate(run_id, site_b, label_column="grade", **kw)
    # an unlabelled row and an unreadable file are listed with their status; the others are evaluated
    rows = [dict(r) for r in src]
    rows[0]["label"] = ""
    broken = tmp_path / rows[2]["path"]
    broken.write_bytes(broken.read_bytes()[:50])
    res = evaluate(run_id, _write(tmp_path / "m.csv", rows), out=tmp_path / "ev", **kw)
    out = _rows(res.out_dir / "predictions.csv")
    assert [r["source"] for r in out] == [r["path"] for r in rows]
    assert out[0]["status"] == "excluded: no label" and out[2]["status"].startswith("error: ")
    assert res.n_ok == len(rows) - 2 and res.n_excluded == 2
    assert res.metrics["_info"]["n_samples"] == len(rows) - 2
    # nothing labelled
    with pytest.raises(DataError, match="no row has a label"):
        evaluate(run_id, _write(tmp_path / "none.csv", [{**r, "label": ""} for r in src]), **kw)


def test_the_command_line_and_the_report_section(trained_oct, site_b, tmp_path, capsys):
    """`medcl evaluate` prints the table and the shift reading, and the rebuilt report has the External validation
    section with this site's AUROC (the number MLflow holds) and no 'internal validation only' caveat."""
    import re

    from mlflow import MlflowClient

    from medcl.cli import main

    run_id, uri = trained_oct["ctx"].parent_run_id, trained_oct["uri"]
    rc = main(["evaluate", run_id, str(site_b), "--name", "site-c", "--out", str(tmp_path / "ev"),
               "--tracking-uri", uri, "--n-boot", "30", "--permutations", "100", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "external validation 'site-c'" in out and "dataset shift" in out
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "External validation" in html and "site-c" in html
    child = next(r for r in MlflowClient(tracking_uri=uri).search_runs(
        [trained_oct["ctx"].experiment_id if hasattr(trained_oct["ctx"], "experiment_id") else
         MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`medcl.evaluation` = 'site-c'"))
    shown = re.search(r'data-metric="external/auroc">([0-9.]+)<', html).group(1)
    assert float(shown) == pytest.approx(child.data.metrics["external/auroc"], abs=5e-4)
    assert "internal validation only" not in html
