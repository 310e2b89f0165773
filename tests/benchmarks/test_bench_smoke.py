"""``medcl bench`` machinery: quick runs of real benchmark scripts and the README built from their JSON.

No wall-clock value is asserted; what is checked is that the scripts ran, wrote results of the
documented shape, and that the README has the tables, plots and target lines those results imply.
"""

from __future__ import annotations

import json

import pytest

from medcl.bench import BENCHMARKS, run_benchmarks, write_readme
from medcl.errors import ConfigError


def test_unknown_benchmark_name_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'losses'"):
        run_benchmarks(only=["loses"], quick=True, out_dir=tmp_path)


def test_readme_without_results_says_what_to_run(tmp_path):
    text = write_readme(tmp_path).read_text()
    for name in BENCHMARKS:
        assert f"medcl bench --only {name}" in text
    assert "## Targets" in text and "no results yet" in text


def test_quick_losses_and_train_loss_write_results_and_readme(tmp_path):
    rc = run_benchmarks(only=["losses,train_loss"], quick=True, out_dir=tmp_path)
    assert rc == 0, (tmp_path / "logs" / "losses.log").read_text()[-2000:]
    losses = json.loads((tmp_path / "results" / "losses.json").read_text())
    impls = {(r["task"], r["impl"]) for r in losses["rows"]}
    assert {("ntxent", "medcl"), ("ntxent", "pml"), ("ntxent", "monai"), ("supcon", "medcl")} <= impls
    # the same inputs give the same NT-Xent value in every library (independent implementations)
    for r in losses["rows"]:
        if not r.get("skipped"):
            assert r["abs_diff_vs_medcl"] < 1e-4, r
    tl = json.loads((tmp_path / "results" / "train_loss.json").read_text())
    assert [r["impl"] for r in tl["rows"]] == ["medcl", "lightly"]
    assert tl["summary"]["first_loss_abs_diff"] < 1e-4  # same weights, same batch: same loss
    assert tl["meta"]["quick"] is True and tl["meta"]["load_before"] is not None

    text = (tmp_path / "README.md").read_text()
    assert "| loss | N | implementation |" in text
    assert "medcl / lightly =" in text
    assert "(plots/losses_ntxent.png)" in text and (tmp_path / "plots" / "losses_ntxent.png").stat().st_size > 1000
    assert "loss values equal to pml / MONAI / lightly" in text
    assert "SimCLR training throughput with medcl's loss" in text
    assert "quick (tiny) run" in text
    assert "not run yet: `medcl bench --only quality`" in text
    status = json.loads((tmp_path / "results" / "_status.json").read_text())
    assert status["losses"]["rc"] == 0 and status["train_loss"]["rc"] == 0


def test_quick_precision_variants_on_cpu(tmp_path):
    """fp32 and bf16 steps of the OCT demo through the pretraining loop: same FLOPs, close losses, MFU from them."""
    rc = run_benchmarks(only=["precision"], quick=True, out_dir=tmp_path)
    assert rc == 0, (tmp_path / "logs" / "precision.log").read_text()[-2000:]
    res = json.loads((tmp_path / "results" / "precision.json").read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["fp32", "bf16", "bf16 + channels_last"]  # quick leaves the compiled variants out
    fp32, bf16 = rows["fp32"], rows["bf16"]
    assert fp32["device"] == "cpu" and fp32["speedup_vs_fp32"] == 1.0
    assert fp32["flops_per_step"] == bf16["flops_per_step"] > 1e9  # ResNet-18 on 64² views: ~0.85 GFLOP per view
    per_view = fp32["flops_per_step"] / (fp32["batch"] * fp32["views"])
    assert 0.5e9 < per_view < 1.2e9
    # same seeded weights, same batch: bf16 autocast changes the loss by rounding only
    assert abs(bf16["loss"] - fp32["loss"]) < 0.1 * abs(fp32["loss"])
    peak = max(res["meta"]["peak_flops_measured"].values())
    for r in rows.values():
        assert r["mfu_spec"] is None  # no spec-sheet peak for a CPU
        assert r["mfu_measured"] == pytest.approx(r["flops_per_step"] / r["step_s"] / peak)
    text = (tmp_path / "README.md").read_text()
    assert "## 3b. bf16, channels_last, torch.compile and model FLOP utilisation" in text
    assert "| oct | resnet18 | 1×64×64 |" in text and "**GPU**: not measured — no GPU was lent" in text


def test_readme_only_runs_nothing_and_rewrites_the_readme(tmp_path, monkeypatch, capsys):
    from medcl.cli import main

    (tmp_path / "bench_losses.py").write_text("raise SystemExit('must not run')\n")
    (tmp_path / "results").mkdir()
    monkeypatch.setenv("MEDCL_BENCHMARKS", str(tmp_path))
    assert main(["bench", "--readme-only"]) == 0
    assert "## Targets" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "results" / "_status.json").exists()  # no benchmark ran
    assert str(tmp_path / "README.md") in capsys.readouterr().out


def test_partial_rerun_keeps_the_other_results(tmp_path):
    """A quality result written by a previous run stays in the README when only another benchmark runs."""
    results = tmp_path / "results"
    results.mkdir()
    run = {"kind": "headline", "modality": "oct", "method": "simclr", "seed": 0, "key": "oct/simclr/seed0",
           "method_run": "simclr", "wall_s": 1.0, "seconds": {"pretrain": 1.0},
           "classify": [{"model": m, "protocol": p, "fraction": f, "auroc": a, "n_train_patients": 4}
                        for m, p, f, a in [("ssl", "linear", 1.0, 0.9), ("random", "linear", 1.0, 0.6),
                                           ("raw", "linear", 1.0, 0.7), ("ssl", "finetune", 0.1, 0.8),
                                           ("scratch", "finetune", 0.1, 0.7), ("scratch", "finetune", 1.0, 0.95)]],
           "calibration": {"model": "ssl finetune", "ece_before": 0.2, "ece_after": 0.15, "nll_before": 1.0,
                           "nll_after": 0.9}}
    second = {**run, "seed": 1, "key": "oct/simclr/seed1",
              "classify": [{**c, "auroc": c["auroc"] - 0.1} for c in run["classify"]]}
    meta = {"quick": False, "cpu_count": 2, "load_before": [3.0, 3.0, 3.0], "load_after": [3.0, 3.0, 3.0]}
    (results / "quality.json").write_text(json.dumps({"meta": meta, "rows": [run, second]}))
    text = write_readme(tmp_path).read_text()
    # mean ± std over the two seeds, computed from the rows (0.9 and 0.8; gap 0.3 both times)
    assert "0.850 ± 0.071 (2 seeds)" in text
    assert "SSL linear probe ≥ random init + 0.10 AUROC (oct) | +0.300 (mean of 2 seed(s)) | **met**" in text
    # fine-tuning at 10 %: 0.75 vs 0.65 → met; ECE 0.2 → 0.15 is not halved → not met, with a reason
    assert "pretrained fine-tuning ≥ from scratch at 10 % labels (oct) | 0.750 vs 0.650 | **met**" in text
    assert "temperature scaling at least halves ECE (oct, fine-tuned) | 0.200 → 0.150 | **not met** — " in text
    assert "(plots/label_efficiency.png)" in text


def test_smoke_section_lists_every_run_and_its_failure(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [{"pipeline": "ecg_rhythm", "modality": "ecg", "processes": 2, "rc": 0, "wall_s": 75.4, "peak_rss_gb": 1.6,
             "stages_s": {"pretrain": 9.1, "classify": 20.2}},
            {"pipeline": "ct_lesion", "modality": "ct", "processes": 2, "rc": 1, "wall_s": 40.0, "peak_rss_gb": None,
             "error": "error: stage pretrain: out of memory"}]
    meta = {"quick": False, "cpu_count": 2, "nproc": 2, "data": "medcl data synth --seed 2",
            "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0]}
    (results / "smoke.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    text = write_readme(tmp_path).read_text()
    assert "| `pipelines/ecg_rhythm.yaml` | ok | 75 | 1.6 | pretrain 9, classify 20 |" in text
    assert "| `pipelines/ct_lesion.yaml` | exit 1 | 40 | — | failed: error: stage pretrain: out of memory |" in text
    assert "--nproc-per-node=2 -m medcl run PIPELINE --smoke" in text


@pytest.mark.slow
def test_quick_run_of_every_benchmark(tmp_path):
    rc = run_benchmarks(quick=True, out_dir=tmp_path)
    logs = {p.name: p.read_text()[-1500:] for p in (tmp_path / "logs").iterdir()}
    assert rc == 0, logs
    for name in BENCHMARKS:
        assert (tmp_path / "results" / f"{name}.json").is_file(), name
    text = (tmp_path / "README.md").read_text()
    for heading in ("## 1. Contrastive losses", "## 2. Input pipeline", "## 3. Pretraining throughput", "## 3b. bf16",
                    "## 4. Scaling under torchrun", "## 4b. `--smoke` of every shipped pipeline", "## 5. Learning quality"):
        assert heading in text
    assert "not run yet" not in text
    assert "data waiting < 10 % of step time" in text
    assert "equal up to float32 rounding" in text


def test_quality_merge_prefers_a_finished_run_over_a_failed_or_skipped_one(tmp_path):
    """Partial result files of parallel/re-run quality processes merge into one, in plan order."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    key = "methods:oct/supcon-graph/seed0/15ep"
    meta = {"load_before": [1.0, 1.0, 1.0], "wall_s": 1.0, "cpu_count": 2}
    parts = {
        "a": {"meta": meta, "rows": [{"key": key, "kind": "method", "error": "StageError: old bug"},
                                     {"key": "oct/simclr/seed0", "kind": "headline", "wall_s": 5.0}]},
        "b": {"meta": meta, "rows": [{"key": key, "kind": "method", "skipped": "not run"}]},
        "c": {"meta": meta, "rows": [{"key": key, "kind": "method", "wall_s": 9.0}]},
    }
    for name, d in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    out = tmp_path / "merged.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_quality.py"), "--out", str(out),
                    "--method-epochs", "15", "--merge", *(str(tmp_path / f"{n}.json") for n in "abc")],
                   check=True, timeout=300)
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[key] == {"key": key, "kind": "method", "wall_s": 9.0}
    assert rows["oct/simclr/seed0"]["wall_s"] == 5.0
    assert "skipped" in rows["oct/simclr/seed1"]  # in the plan, in no part: reported as not run
