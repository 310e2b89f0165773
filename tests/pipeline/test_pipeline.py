"""End-to-end pipeline runs on tiny demo data against a real SQLite MLflow store."""

from __future__ import annotations

import json
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
    assert parent.data.params["pretrain.method"] == "micle"  # the OCT demo's method
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
    got = np.asarray(loaded.predict(x, params={"preprocessed": True}))
    import json

    state = json.loads(Path(ctx.outputs["calibrate"]["calibration"]).read_text())["state"]
    primary = _load_primary(ctx)
    ref = build_export_model(ctx, primary, calibration_for_export(state))
    with torch.no_grad():
        want = ref(torch.as_tensor(x)).numpy()
    assert got.shape == (x.shape[0], len(ctx.data.classes))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # the model carries the calibrator the stage decided on: a fitted temperature, or none when it did not help
    cal = json.loads(Path(ctx.outputs["calibrate"]["calibration"]).read_text())
    if cal["decision"]["applied"]:
        t = ctx.outputs["calibrate"]["temperature"]
        assert t is not None and abs(float(t) - 1.0) > 1e-3
    else:
        uncal = build_export_model(ctx, primary, {"kind": "none"})
        with torch.no_grad():
            np.testing.assert_allclose(got, uncal(torch.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


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


def test_an_out_of_memory_error_is_one_line_with_the_settings_and_the_run_ends_failed(oct_demo, tmp_path,
                                                                                    tracking_uri, monkeypatch,
                                                                                    tiny_overrides):
    """A CUDA OOM (simulated: the same exception type) in a stage: the stage and the settings to change, FAILED."""
    import torch

    from medcl import stages

    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), "stages=[pretrain]"])
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

    def greedy(ctx, tracker):
        raise oom("CUDA out of memory. Tried to allocate 24.00 GiB")

    monkeypatch.setitem(stages.STAGES, "pretrain", stages.Stage(greedy, main_only=False))
    with pytest.raises(StageError, match=r"stage pretrain: out of memory .*24.00 GiB") as info:
        run_pipeline(cfg)
    assert "pretrain.batch_size" in info.value.fix and "spatial_size" in info.value.fix
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    parent = client.search_runs([exp.experiment_id], "tags.`medcl.kind` = 'pipeline'")[0]
    assert parent.info.status == "FAILED"
    assert {r.info.status for r in _children(client, parent.info.run_id)} == {"FAILED"}


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


def test_online_probe_is_logged_and_the_best_encoder_handed_on(run_once):
    """The linear probe on the validation patients ran during pretraining; the encoder handed on is the latest
    within one bootstrap SE of the best, read back from the logged histories (the one-SE rule)."""
    from medcl.checkpoint_file import load_checkpoint

    cfg, ctx, client = run_once
    out = ctx.outputs["pretrain"]
    kids = {r.data.tags["medcl.stage"]: r for r in _children(client, ctx.parent_run_id)}
    pre = kids["pretrain"]
    history = client.get_metric_history(pre.info.run_id, "probe/auroc")
    every = int(pre.data.params["pretrain.probe_every_steps"])
    total = int(pre.data.params["pretrain.total_steps"])
    assert pre.data.params["pretrain.probe_protocol"] == "linear"
    assert sorted(m.step for m in history) == sorted({*range(every, total + 1, every), total})
    assert all(0.0 <= m.value <= 1.0 for m in history)
    linear = {m.step: m.value for m in client.get_metric_history(pre.info.run_id, "probe/linear_auroc")}
    assert {m.step: m.value for m in history} == linear
    assert client.get_metric_history(pre.info.run_id, "probe/knn_auroc")
    assert client.get_metric_history(pre.info.run_id, "probe/effective_rank")
    run_dir = ctx.run_dir / "pretrain"
    assert (run_dir / "encoder-last.pt").is_file()
    if out["selected"] == "best_probe":
        se = {m.step: m.value for m in client.get_metric_history(pre.info.run_id, "probe/auroc_se")}
        ordered = sorted((m.step, m.value) for m in history)
        best_step, best = max(ordered, key=lambda t: (t[1], -t[0]))
        tol = 0.0 if np.isnan(se[best_step]) else se[best_step]
        kept_step = max(s for s, v in ordered if v >= best - tol)
        saved = load_checkpoint(run_dir / "encoder-best.pt")
        assert saved["step"] == out["selected_step"] == kept_step
        assert saved["probe_auroc"] == pytest.approx(dict(ordered)[kept_step])
        assert saved["probe_best_auroc"] == pytest.approx(best)
        handed = load_checkpoint(run_dir / "encoder.pt")
        assert all(torch.equal(handed["encoder"][k], saved["encoder"][k]) for k in saved["encoder"])
        assert pre.data.params["pretrain.selected"] == "best_probe"


def test_small_validation_split_is_calibrated_with_cross_fitted_training_logits(run_once):
    """12 patients leave ~2 for validation (< calibrate.min_val_patients): out-of-fold training logits join them."""
    import json

    cfg, ctx, client = run_once
    npz = np.load(ctx.outputs["classify"]["primary"])
    assert len(np.unique(npz["val_patients"])) < cfg.calibrate.min_val_patients
    n_train = len(ctx.data.indices("train", labelled=True))
    assert npz["oof_logits"].shape[0] == npz["oof_y"].shape[0] == npz["oof_patients"].shape[0] == n_train
    assert not set(npz["oof_patients"].tolist()) & set(npz["val_patients"].tolist())
    cal = json.loads(Path(ctx.outputs["calibrate"]["calibration"]).read_text())
    decision = cal["decision"]
    assert decision["fit_on"] == "validation + out-of-fold training patients"
    assert decision["n"] == n_train + len(npz["val_y"])
    assert decision["applied"] in (True, False) and decision["reason"]
    stage = {r.data.tags["medcl.stage"]: r for r in _children(client, ctx.parent_run_id)}["calibrate"]
    assert stage.data.params["calibrate.applied"] == str(decision["applied"])
    if not decision["applied"]:  # the refused calibrator's test ECE is reported: what refusing it avoided
        from medcl.metrics.calibration import expected_calibration_error
        from medcl.tasks.calibration import TemperatureScaler

        z = np.concatenate([npz["val_logits"], npz["oof_logits"]])
        y = np.concatenate([npz["val_y"], npz["oof_y"]])
        forced = TemperatureScaler(ctx.data.task).fit(z, y).transform(npz["test_logits"])
        expected = expected_calibration_error(npz["test_y"], forced, ctx.data.task, n_bins=cfg.calibrate.n_bins)["ece"]
        assert cal["if_applied"]["ece"] == pytest.approx(expected, abs=1e-9)
        assert stage.data.metrics["test/ece_if_applied"] == pytest.approx(expected, abs=1e-6)
    else:
        assert "if_applied" not in cal


def test_budget_in_steps_runs_that_many_steps_across_epochs(oct_demo, tmp_path, tracking_uri, tiny_overrides):
    from medcl.checkpoint_file import load_checkpoint

    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), "pretrain.max_steps=null", "pretrain.steps=7",
                               "pretrain.epochs=1", "pretrain.probe=false", "stages=[pretrain]"])
    ctx = run_pipeline(cfg)
    ckpts = ctx.run_dir / "pretrain" / "checkpoints"
    state = load_checkpoint(ckpts / (ckpts / "latest").read_text().strip())
    per_epoch = state["config"]["launch"]["steps_per_epoch"]
    assert per_epoch < 7  # the budget spans more than one epoch, though pretrain.epochs is 1
    assert state["global_step"] == 7
    assert ctx.outputs["pretrain"]["selected"] == "last"


def test_scratch_fine_tuning_gets_no_layer_decay(monkeypatch, oct_demo, tmp_path, tracking_uri, tiny_overrides):
    """The pretrained encoder is fine-tuned with layer-wise LR decay; the from-scratch baseline is not."""
    from medcl.stages import classify

    seen = {}

    def spy(ctx, encoder, items, seed_offset, comm, ckpt_dir=None, pretrained=True, label=""):
        model = real(ctx, encoder, items, seed_offset, comm, ckpt_dir, pretrained, label)
        seen[label.split()[1]] = pretrained
        return model

    real = classify._finetune
    monkeypatch.setattr(classify, "_finetune", spy)
    lrs = {}
    real_groups = classify.layerwise_lr_groups  # the stage's reference to medcl.tasks.classification's

    def groups_spy(model, base_lr, decay=0.75, weight_decay=0.05, **kw):
        out = real_groups(model, base_lr, decay=decay, weight_decay=weight_decay, **kw)
        lrs.setdefault(decay, sorted({g["lr"] for g in out}))
        return out

    monkeypatch.setattr(classify, "layerwise_lr_groups", groups_spy)
    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), "classify.protocols=[finetune]",
                               "classify.baselines=[scratch]", "classify.finetune.max_steps=1",
                               "classify.finetune.layer_decay=0.5", "stages=[pretrain, classify]"])
    run_pipeline(cfg)
    assert seen == {"ssl": True, "scratch": False}
    assert len(lrs[0.5]) > 2  # decayed: several learning rates
    assert lrs[1.0] == [cfg.classify.finetune.lr]  # scratch: one learning rate for every layer


def test_batch_augmentation_feeds_pretraining_and_fine_tuning(monkeypatch, oct_demo, tmp_path, tracking_uri,
                                                              tiny_overrides):
    """``transforms.augment_on: batch``: the loaders hand un-augmented samples on, the batch ops augment every
    training batch of pretraining and fine-tuning, and the run ends with its results."""
    from medcl.transforms import batch

    seen: list[tuple[str, tuple[int, ...]]] = []
    real = batch.BatchAugment.__call__

    def spy(self, b, draw):
        seen.append(("views" if "views" in b else "image", tuple((b.get("views", b.get("image"))).shape)))
        return real(self, b, draw)

    monkeypatch.setattr(batch.BatchAugment, "__call__", spy)
    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), "transforms.augment_on=batch",
                               "pretrain.probe=false", "classify.protocols=[finetune]", "classify.finetune.steps=2",
                               "classify.finetune.batch_size=8", "classify.baselines=[]", "stages=[pretrain, classify]"])
    ctx = run_pipeline(cfg)
    kinds = [k for k, _ in seen]
    # each stage's memory check reads its first batch once, then the steps: pretrain.max_steps=2, finetune.steps=2
    assert kinds.count("views") == 1 + 2
    assert kinds.count("image") == 1 + 2
    assert all(s[1:3] == (2, 1) for k, s in seen if k == "views")  # (B, V=2, C=1, H, W)
    rows = json.loads(Path(ctx.outputs["classify"]["results"]).read_text())
    assert any(r["protocol"] == "finetune" and r["steps"] == 2 for r in rows)


def test_class_names_mlflow_cannot_log_are_refused_before_training():
    from types import SimpleNamespace

    from medcl.config.schema import PipelineConfig
    from medcl.errors import ConfigError
    from medcl.pipeline import _preflight

    cfg = PipelineConfig(name="t", stages=["classify"])
    with pytest.raises(ConfigError, match=r"\['drusen;atrophy'\] hold characters MLflow refuses"):
        _preflight(cfg, SimpleNamespace(classes=["normal", "drusen;atrophy"], tiles={}, task="multiclass"))
    _preflight(cfg, SimpleNamespace(classes=["no DR", "grade-1/2", "AF:paroxysmal"], tiles={}, task="multiclass"))  # all loggable
    import mlflow.utils.validation as v  # the reference: MLflow's own check accepts what we accept

    for name in ("no DR", "grade-1/2", "AF:paroxysmal"):
        v._validate_metric_name(f"test/ssl/linear/f100/auroc_{name}")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        v._validate_metric_name("test/ssl/linear/f100/auroc_drusen;atrophy")


def test_runtime_deterministic_is_switched_off_again():
    import torch

    from medcl.stages.common import seed_everything

    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_encoder_of_other_dimensions_than_the_preset_is_refused_before_training():
    from types import SimpleNamespace

    from medcl.config.schema import PipelineConfig
    from medcl.errors import ConfigError
    from medcl.pipeline import _preflight

    cfg = PipelineConfig(name="t", stages=["classify"], transforms={"preset": "oct"}, model={"spatial_dims": 3})
    with pytest.raises(ConfigError, match="model.spatial_dims is 3 but the 'oct' preset makes 2D inputs"):
        _preflight(cfg, SimpleNamespace(classes=["a", "b"], tiles={}))


def test_a_file_named_like_a_problem_code_does_not_stop_the_excluded_rows_list():
    from medcl import phi
    from medcl.pipeline import excluded_rows

    phi.register_path_parts("images/missing.png")  # a (non-identifying) file name, registered as every path part
    assert phi.REGISTRY.find("missing-file") is not None  # as it was: the guard would refuse the list
    rows = excluded_rows([{"row": 3, "patient": "p-0123456789abcdef", "codes": ["missing-file"], "path": "x"}])
    assert rows == [{"row": 3, "patient": "p-0123456789abcdef", "codes": ["missing-file"]}]
    assert phi.REGISTRY.find('[{"row": 3, "codes": ["missing-file"]}]') is None


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_pretrained_fine_tuning_starts_its_head_from_the_linear_probe(monkeypatch, oct_demo, tmp_path, tracking_uri,
                                                                      tiny_overrides, head_init):
    """LP-FT (Kumar et al. 2022): with head_init: probe the pretrained encoder's fine-tune starts from a linear probe
    on its frozen features of the same labelled patients — an independent probe fitted here gives the same logits;
    the from-scratch baseline (and head_init: random) starts from the N(0, 0.01²) head."""
    from medcl.engine.inference import extract_features
    from medcl.stages import classify
    from medcl.stages.common import make_encoder, make_loader, make_transforms
    from medcl.tasks.classification import linear_probe

    starts = {}
    real_fit = classify.fit

    def fit_spy(trained, factory, optim, settings, **kwargs):  # the head as the loop receives it
        head = trained.model.head
        starts[settings.label.split()[1]] = (head.weight.detach().clone(), head.bias.detach().clone())
        return real_fit(trained, factory, optim, settings, **kwargs)

    monkeypatch.setattr(classify, "fit", fit_spy)
    cfg = load_pipeline(DEMO, [*tiny_overrides(oct_demo, tmp_path), "classify.protocols=[finetune]",
                               "classify.baselines=[scratch]", "classify.finetune.max_steps=1",
                               f"classify.finetune.head_init={head_init}", "stages=[pretrain, classify]"])
    ctx = run_pipeline(cfg)
    assert set(starts) == {"ssl", "scratch"}
    w_scratch, b_scratch = starts["scratch"]
    assert float(w_scratch.std()) == pytest.approx(0.01, rel=0.3) and not b_scratch.any()
    w, b = starts["ssl"]
    if head_init == "random":
        assert float(w.std()) == pytest.approx(0.01, rel=0.3) and not b.any()
        return
    data = ctx.data
    items = data.items("train", labelled=True)  # the only label fraction is 1.0: every labelled training sample
    loader = make_loader(ctx, items, make_transforms(cfg, train=False), batch_size=8, shuffle=False, train=False,
                         distributed=False)
    feats, _, _, idx = extract_features(make_encoder(cfg, weights=ctx.outputs["pretrain"]["encoder"]), loader,
                                        device="cpu")
    probe = linear_probe(feats, data.y[idx], task=data.task, groups_train=data.patients_of(idx), seed=cfg.seed).model
    head = torch.as_tensor(feats, dtype=torch.float64) @ w.double().T + b.double()
    np.testing.assert_allclose(head.numpy(), probe.predict_logits(feats), rtol=1e-4, atol=1e-4)
