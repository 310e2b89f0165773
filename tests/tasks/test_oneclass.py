"""One-class detection: Deep SVDD, kNN scores, the specificity threshold, the metrics, DROC's rotated copies, the
cytology demo set, and the detect stage end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medcl.errors import ConfigError, DataError
from medcl.tasks.oneclass import DeepSVDD, detection_metrics, knn_scores, threshold_at_specificity

REPO = Path(__file__).resolve().parents[2]


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    e0, e1 = np.eye(16)[0] * 4.0, np.eye(16)[1] * 4.0
    normal = rng.normal(0, 1, (300, 16)) + e0  # encoder features of normal samples point one way
    test_normal = rng.normal(0, 1, (100, 16)) + e0
    planted = rng.normal(0, 1, (10, 16)) + e1  # the finding points another way
    return normal, np.concatenate([test_normal, planted]), np.r_[np.zeros(100), np.ones(10)].astype(int)


@pytest.mark.parametrize("scorer", ["dsvdd", "knn"])
def test_planted_anomalies_score_higher_than_normal_samples(scorer):
    normal, test, y = _clusters()
    s = DeepSVDD(epochs=30).fit(normal).score(test) if scorer == "dsvdd" else knn_scores(normal, test, k=5)
    assert roc_auc_score(y, s) > 0.95


def test_deep_svdd_pulls_normal_samples_towards_its_centre():
    normal, _, _ = _clusters(1)
    m = DeepSVDD(epochs=20).fit(normal)
    assert m.losses[-1] < 0.5 * m.losses[0]  # the one-class objective went down
    assert all(isinstance(layer, torch.nn.LeakyReLU) or layer.bias is None for layer in m.net)  # bias-free phi


def test_knn_scores_match_a_brute_force_computation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(7, 5))
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    expected = [np.sort(1 - an @ v)[:3].mean() for v in bn]
    np.testing.assert_allclose(knn_scores(a, b, k=3), expected, rtol=1e-5)


def test_threshold_keeps_the_asked_share_of_normal_samples_below_it_and_metrics_agree_with_sklearn():
    normal_val = np.arange(1, 21, dtype=float)  # 20 normal validation scores
    thr = threshold_at_specificity(normal_val, 0.95)
    assert thr == 19.0 and (normal_val <= thr).mean() == 0.95
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([1.0, 2.0, 19.5, 3.0, 25.0, 10.0])
    m = detection_metrics(y, s, thr)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s)) and m["auprc"] == pytest.approx(average_precision_score(y, s))
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.75  # 25 > 19 called; 19.5 is a false alarm
    with pytest.raises(DataError, match="no normal validation scores"):
        threshold_at_specificity(np.array([]), 0.95)


def test_droc_copies_are_distinct_quarter_turns_of_each_sample():
    from medcl.methods import build_method
    from medcl.networks import build_encoder

    enc = build_encoder("tiny_cnn", in_channels=1, spatial_dims=2)
    m = build_method("droc", enc, copies=3, hidden_dim=16, out_dim=8)
    views = torch.randn(4, 2, 1, 8, 8)
    out, turns = m.rotate(views, torch.Generator().manual_seed(0))
    assert out.shape == (12, 2, 1, 8, 8)
    for i in range(4):
        ks = turns[3 * i:3 * i + 3].tolist()
        assert len(set(ks)) == 3  # different rotations of one sample: separate instances
        for j, k in enumerate(ks):
            assert torch.equal(out[3 * i + j], torch.rot90(views[i], k, dims=(2, 3)))
    loss = m({"views": views})["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(DataError, match="square"):
        m.rotate(torch.randn(2, 2, 1, 8, 6))
    with pytest.raises(ConfigError, match="copies=5"):
        build_method("droc", enc, copies=5)


def test_cytology_demo_has_rare_malignant_tiles_and_is_reproducible(tmp_path):
    from medcl.data.synth import synthesize

    synthesize(tmp_path / "a", modalities=["cytology"], patients=20, seed=0)
    synthesize(tmp_path / "b", modalities=["cytology"], patients=20, seed=0)
    rows = list(csv.DictReader((tmp_path / "a" / "cytology" / "manifest.csv").read_text().splitlines()))
    malignant = [r for r in rows if r["label"] == "malignant"]
    assert 0 < len(malignant) <= 0.02 * len(rows)
    assert all(r["modality"] == "histo" for r in rows)
    assert {r["patient_id"] for r in rows} == {r["patient_id"] for r in rows if r["label"] == "normal"}
    assert all(int(r["malignant_cells"]) > 0 for r in malignant)
    for r in rows[:30]:
        assert (tmp_path / "a" / "cytology" / r["path"]).read_bytes() == (tmp_path / "b" / "cytology" / r["path"]).read_bytes()


def test_detect_stage_end_to_end_on_the_cytology_demo(tmp_path):
    """pretrain (DROC, 2 steps) → detect: the logged figures are those of the written scores, recomputed here."""
    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline
    from medcl.stages import STAGES
    from medcl.stages.context import RunContext
    from medcl.tracking import NullTracker

    synthesize(tmp_path / "d", modalities=["cytology"], patients=30, seed=1, size=32)
    cfg = load_pipeline(REPO / "pipelines" / "demo" / "cytology.yaml", [
        f"data.manifest={tmp_path / 'd' / 'cytology' / 'manifest.csv'}", f"runtime.output_dir={tmp_path / 'runs'}",
        "runtime.progress=false", "model.encoder=tiny_cnn", "model.options={}", "model.proj_hidden_dim=16",
        "model.proj_dim=8", "transforms.spatial_size=[32, 32]", "pretrain.steps=2", "pretrain.batch_size=16",
        "detect.dsvdd_epochs=3", "detect.n_boot=20", "data.test_fraction=0.4", "data.val_fraction=0.2"])
    data = prepare_data(cfg)
    ctx = RunContext(cfg, "k", tmp_path / "runs" / "r", data, device=torch.device("cpu"))
    ctx.run_dir.mkdir(parents=True)
    ctx.outputs["pretrain"] = STAGES["pretrain"](ctx, NullTracker("pretrain"))
    tracker = NullTracker("detect")
    out = STAGES["detect"](ctx, tracker)
    results = json.loads(Path(out["results"]).read_text())
    assert {(r["model"], r["scorer"]) for r in results} == {(m, s) for m in ("ssl", "random") for s in ("dsvdd", "knn")}
    rows = list(csv.DictReader(Path(out["scores"]).read_text().splitlines()))
    y = np.array([int(r["anomalous"]) for r in rows])
    test = data.indices("test", labelled=True)
    assert sorted(int(r["index"]) for r in rows) == sorted(test.tolist())
    assert y.sum() == (data.y[test] == data.classes.index("malignant")).sum() > 0
    for r in results:
        s = np.array([float(x[f"{r['model']}_{r['scorer']}"]) for x in rows])
        assert r["auroc"]["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-5)
        assert r["sensitivity"]["value"] == pytest.approx((s[y == 1] > r["threshold"]).mean(), abs=1e-5)
        assert tracker.metrics[f"test/detect/{r['model']}/{r['scorer']}/auroc"][-1][1] == pytest.approx(
            r["auroc"]["value"])
        assert r["threshold_on"] == "validation normal samples"
    # the patient ids never reach the scores file
    assert "DEMO-CYTOLOGY" not in Path(out["scores"]).read_text()


def test_detect_stage_refuses_a_missing_or_unknown_normal_class(tmp_path):
    from medcl.data.prepare import prepare_data
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline
    from medcl.stages.context import RunContext
    from medcl.stages.detect import _normal_index

    synthesize(tmp_path / "d", modalities=["cytology"], patients=10, seed=0, size=32)
    base = [f"data.manifest={tmp_path / 'd' / 'cytology' / 'manifest.csv'}"]
    for extra, match in ((["detect.normal_class=null"], "needs the normal class"),
                         (["detect.normal_class=norml"], "did you mean 'normal'")):
        cfg = load_pipeline(REPO / "pipelines" / "demo" / "cytology.yaml", base + extra)
        ctx = RunContext(cfg, "k", tmp_path / "r", prepare_data(cfg, check_files=False), device=torch.device("cpu"))
        with pytest.raises(ConfigError, match=match):
            _normal_index(ctx)


def test_the_cytology_demo_puts_patients_with_the_finding_in_every_split(tmp_path):
    from medcl.data.synth import synthesize

    synthesize(tmp_path, modalities=["cytology"], seed=0)
    rows = list(csv.DictReader((tmp_path / "cytology" / "manifest.csv").read_text().splitlines()))
    by_split = {s: {r["patient_id"] for r in rows if r["split"] == s and r["label"] == "malignant"}
                for s in ("train", "val", "test")}
    assert all(by_split.values()), by_split
    assert all(len({r["split"] for r in rows if r["patient_id"] == p}) == 1 for p in {r["patient_id"] for r in rows})
