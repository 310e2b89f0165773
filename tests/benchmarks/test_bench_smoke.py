"""``medcl bench`` machinery: quick runs of real benchmark scripts and the README built from their JSON.

No wall-clock value is asserted; what is checked is that the scripts ran, wrote results of the
documented shape, and that the README has the tables, plots and target lines those results imply.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner import BENCHMARKS, run_benchmarks, write_readme

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
    assert fp32["flops_per_step"] == bf16["flops_per_step"] > 1e9
    # by hand: ResNet-18 is 1.82 GMAC at 224², so forward + backward (3x) on a 64² view is 3.64e9 * 3 * (64/224)²
    # = 0.89 GFLOP; the demo's output stride 16 runs layer4 (22.6 % of the MACs) at 4x the resolution:
    # 0.89 * (0.774 + 4 * 0.226) = 1.49 GFLOP per view
    per_view = fp32["flops_per_step"] / (fp32["batch"] * fp32["views"])
    assert 1.2e9 < per_view < 1.8e9
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
    import runner

    def must_not_run(*a, **k):
        raise AssertionError("--readme-only ran a benchmark")

    monkeypatch.setattr(runner, "run_benchmarks", must_not_run)
    (tmp_path / "results").mkdir()
    assert runner.main(["--readme-only", "--out", str(tmp_path)]) == 0
    assert "## Targets" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "results" / "_status.json").exists()  # no benchmark ran
    assert str(tmp_path / "README.md") in capsys.readouterr().out


def _quality_rows():
    """Two seeds of OCT: pipeline runs, the plain references and one method, written by hand."""
    def cls(ssl, rnd, raw, ft, scratch, ft10, scratch10):
        return [{"model": m, "protocol": p, "fraction": f, "auroc": a, "n_train_patients": 9}
                for m, p, f, a in [("ssl", "linear", 1.0, ssl), ("random", "linear", 1.0, rnd),
                                   ("raw", "linear", 1.0, raw), ("ssl", "finetune", 1.0, ft),
                                   ("scratch", "finetune", 1.0, scratch), ("ssl", "finetune", 0.1, ft10),
                                   ("scratch", "finetune", 0.1, scratch10)]]

    def pipe(seed, c, ece):
        return {"kind": "pipeline", "modality": "oct", "seed": seed, "key": f"pipeline/oct/seed{seed}",
                "method_run": "simclr", "wall_s": 60.0, "commit": "abc", "classify": c,
                "pretrain": {"best_probe_auroc": 0.9, "steps": 200},
                "calibration": {"ece_before": ece[0], "ece_after": ece[1], "applied": ece[1] < ece[0],
                                "fit_on": "validation patients", "reason": "x"}}

    return [pipe(0, cls(0.90, 0.60, 0.70, 0.95, 0.96, 0.90, 0.80), (0.10, 0.05)),
            pipe(1, cls(0.80, 0.60, 0.70, 0.93, 0.94, 0.85, 0.88), (0.08, 0.08)),
            {"kind": "reference", "modality": "oct", "seed": 0, "loop": "supervised",
             "key": "reference/oct/supervised/seed0", "result": {"test_auroc": 1.00, "steps": 200}},
            {"kind": "reference", "modality": "oct", "seed": 1, "loop": "supervised",
             "key": "reference/oct/supervised/seed1", "result": {"test_auroc": 0.90, "steps": 200}},
            {"kind": "reference", "modality": "oct", "seed": 0, "loop": "simclr",
             "key": "reference/oct/simclr/seed0", "result": {"probe_auroc": 0.88, "steps": 200}},
            {"kind": "method", "modality": "oct", "seed": 0, "method": "moco", "key": "method/oct/moco/seed0",
             "error": "StageError: boom"}]


def _quality_readme(tmp_path, rows, seeds=2):
    """The README made from quality rows written by hand (a plan of ``seeds`` seeds on a quiet 2-core machine)."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    meta = {"quick": False, "cpu_count": 2, "load_before": [1.0] * 3, "load_after": [1.0] * 3, "seeds": seeds}
    (results / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    return write_readme(tmp_path).read_text()


def test_quality_targets_need_the_mean_and_every_seed(tmp_path):
    """Gap closed, fine-tuning at 10 %, calibration and the reference comparisons, computed from the rows by hand."""
    results = tmp_path / "results"
    results.mkdir()
    meta = {"quick": False, "cpu_count": 2, "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0],
            "seeds": 2}
    (results / "quality.json").write_text(json.dumps({"meta": meta, "rows": _quality_rows()}))
    text = write_readme(tmp_path).read_text()
    # ceiling: seed 0 max(0.96, 1.00) = 1.00 -> gap (0.90-0.60)/(1.00-0.60) = 75 %;
    # seed 1 max(0.94, 0.90) = 0.94 -> (0.80-0.60)/(0.94-0.60) = 58.8 %; mean 66.9 % -> 67 %, worst 59 %: met
    assert "simclr closes ≥ 50 % of the random → supervised gap (oct) | 67 % (worst 59 %, 2 seeds) | **met**" in text
    # 0.90 vs 0.80 and 0.85 vs 0.88: seed 1 fails
    assert "pretrained fine-tuning ≥ scratch at 10 % labels (oct) | 0.900 vs 0.800, 0.850 vs 0.880 | **not met**" in text
    # why: seed 1 lower, on its 9 patients; means (0.90+0.85)/2 = 0.875 vs (0.80+0.88)/2 = 0.840; differences +0.10
    # and -0.03 change sign, their mean 0.035 is within scratch's population std over seeds |0.80-0.88|/2 = 0.040
    assert ("lower on seed 1 (0.850 vs 0.880, 9 labelled patients); mean 0.875 vs 0.840 (higher); the per-seed "
            "differences (+0.100, -0.030) change sign and their mean is within the compared method's spread over "
            "seeds (std 0.040)") in text
    # ECE 0.10 -> 0.05 and 0.08 -> 0.08 (not applied): not lowered on every seed
    assert "calibration lowers test ECE (oct) | 0.100 → 0.050, 0.080 → 0.080 | **not met**" in text
    # scratch 0.96 vs plain 1.00 (-0.04: below the 0.02 margin) and 0.94 vs 0.90
    assert "medcl's from-scratch fine-tune ≥ plain supervised − 0.02 (oct) | 0.960 vs 1.000, 0.940 vs 0.900 | " \
           "**not met**" in text
    assert "medcl's SimCLR probe ≥ plain SimCLR probe (oct) | 0.900 vs 0.880 | **met**" in text
    assert "demo thresholds (oct, seed 0)" in text and "demo thresholds (oct, seed 1)" in text
    assert "misses SSL ≥ 0.85" in text  # seed 1: 0.80
    assert "unreachable on this data" not in text  # random init 0.60: 0.60 + 0.25 <= 1 can be met
    assert "| method/oct/moco/seed0 | failed: StageError: boom |" in text
    assert "5 finished, 1 failed, 0 not run" in text
    # the same rows from a plan of 3 seeds: what is met on both measured seeds is not called met outright
    (results / "quality.json").write_text(json.dumps({"meta": {**meta, "seeds": 3}, "rows": _quality_rows()}))
    text = write_readme(tmp_path).read_text()
    assert "gap (oct) | 67 % (worst 59 %, 2 seeds) | **met on 2 of 3 seeds** — not yet measured" in text
    assert "calibration lowers test ECE (oct) | 0.100 → 0.050, 0.080 → 0.080 | **not met**" in text
    # a method whose rows lag the pipeline's seeds: met on the one seed it has, not met outright
    micle = {"kind": "method", "modality": "oct", "seed": 0, "method": "micle", "key": "method/oct/micle/seed0",
             "commit": "abc", "classify": [{"model": "ssl", "protocol": "linear", "fraction": 1.0, "auroc": 0.95},
                                           {"model": "random", "protocol": "linear", "fraction": 1.0, "auroc": 0.60}]}
    (results / "quality.json").write_text(json.dumps({"meta": meta, "rows": [*_quality_rows(), micle]}))
    text = write_readme(tmp_path).read_text()
    # seed 0's ceiling 1.00: (0.95 - 0.60) / (1.00 - 0.60) = 87.5 %, 0.8749… in floats -> 87 %
    assert ("micle closes ≥ 50 % of the random → supervised gap (oct) | 87 % (worst 87 %, 1 seeds) | **met on 1 of 2 "
            "seeds** — not yet measured on the others") in text


def test_a_missed_simclr_gap_cites_the_plain_simclr_loop_on_the_same_split(tmp_path):
    """Why SimCLR missed: next to medcl's own numbers, the plain loop's probe and its untrained network's probe (so
    a reader sees whether plain code closes the gap there either)."""
    rows = _quality_rows()
    for c in rows[0]["classify"]:
        if (c["model"], c["protocol"]) == ("ssl", "linear"):
            c["auroc"] = 0.62  # seed 0: (0.62 - 0.60) / (1.00 - 0.60) = 5 % of the gap
    rows[4]["result"] = {"probe_auroc": 0.55, "random_probe_auroc": 0.70, "steps": 200}
    text = _quality_readme(tmp_path, rows)
    assert ("seed 0: SSL 0.620, random 0.600, online probe best 0.900; plain SimCLR loop 0.550 against 0.700 for its "
            "network untrained; seed 1: SSL 0.800, random 0.600, online probe best 0.900 |") in text


def test_a_missed_gap_names_the_class_a_preset_trails_simclr_on_most(tmp_path):
    """Why MoCo missed: the class whose probe AUROC falls furthest below the SimCLR preset's on the same seeds (the
    mean shortfall over the seeds both ran), not a class within 0.05 of it."""
    def row(method, seed, ssl, per_class):
        return {"kind": "method", "modality": "oct", "seed": seed, "method": method, "commit": "abc",
                "key": f"method/oct/{method}/seed{seed}",
                "classify": [{"model": "ssl", "protocol": "linear", "fraction": 1.0, "auroc": ssl,
                              "auroc_per_class": per_class},
                             {"model": "random", "protocol": "linear", "fraction": 1.0, "auroc": 0.60}]}

    rows = [*_quality_rows()[:-1],
            row("simclr", 0, 0.95, {"normal": 0.95, "early": 0.90, "late": 1.00}),
            row("simclr", 1, 0.93, {"normal": 0.93, "early": 0.86, "late": 1.00}),
            # normal: -0.02, -0.01 (within 0.05); early: -0.30, -0.20 -> mean 0.60 vs 0.88; late: 0
            row("moco", 0, 0.70, {"normal": 0.93, "early": 0.60, "late": 1.00}),
            row("moco", 1, 0.70, {"normal": 0.92, "early": 0.66, "late": 1.00})]
    text = _quality_readme(tmp_path, rows)
    moco = next(line for line in text.splitlines() if line.startswith("| moco closes"))
    assert ("the class it trails the SimCLR preset on most: early, AUROC 0.630 vs 0.880 (mean of 2 seeds, linear "
            "probe, 100 % labels)") in moco
    simclr = next(line for line in text.splitlines() if line.startswith("| simclr closes ≥ 50 % of the random → "
                                                                         "supervised gap (oct) | 9"))
    assert "trails" not in simclr  # SimCLR is not compared with itself
    # every class within 0.05 of SimCLR's: no class is named
    rows[-2]["classify"][0]["auroc_per_class"]["early"] = 0.88
    rows[-1]["classify"][0]["auroc_per_class"]["early"] = 0.84
    assert "trails the SimCLR preset" not in _quality_readme(tmp_path, rows)



def test_a_missed_gap_reports_the_ablations_of_that_preset(tmp_path):
    """An ablation of a method preset's row (``of_method``) is reported with that preset's miss: its probe against the
    preset's on the seeds both ran, and the class whose AUROC moved most (mean over those seeds), by hand."""
    def row(kind, method, seed, ssl, per_class, **extra):
        return {"kind": kind, "modality": "oct", "seed": seed, "method": method, "commit": "abc",
                "key": f"{kind}/oct/{method}/seed{seed}", **extra,
                "classify": [{"model": "ssl", "protocol": "linear", "fraction": 1.0, "auroc": ssl,
                              "auroc_per_class": per_class},
                             {"model": "random", "protocol": "linear", "fraction": 1.0, "auroc": 0.60}]}

    rows = [*_quality_rows()[:-1],
            row("method", "moco", 0, 0.70, {"normal": 0.93, "early": 0.60}),
            row("method", "moco", 1, 0.72, {"normal": 0.92, "early": 0.66}),
            # early: +0.20 and +0.10 (mean 0.78 vs 0.63); normal: -0.01 and 0
            row("ablation", "moco_no_predictor", 0, 0.80, {"normal": 0.92, "early": 0.80}, measure="probe",
                of_method="moco"),
            row("ablation", "moco_no_predictor", 1, 0.78, {"normal": 0.92, "early": 0.76}, measure="probe",
                of_method="moco")]
    text = _quality_readme(tmp_path, rows)
    moco = next(line for line in text.splitlines() if line.startswith("| moco closes"))
    assert "ablation `moco_no_predictor` (seeds 0, 1): probe 0.790" in moco and "against 0.710" in moco
    assert "early 0.780 against 0.630" in moco
    fixes = next(line for line in text.splitlines() if line.startswith("| oct | moco_no_predictor |"))
    assert "SSL linear probe of the moco preset" in fixes and "| 0.710" in fixes and "| 0.790" in fixes


def test_a_demo_threshold_above_the_supervised_ceiling_says_so(tmp_path):
    """Seed 0 with a supervised ceiling of max(0.85, 0.86) = 0.86: "fine-tuned ≥ 0.90" and "≥ random + 0.25" (0.65 +
    0.25 = 0.90) ask for more than that and say so with the ceiling; "SSL ≥ 0.85" (met) and seed 1's misses, whose
    thresholds are below its ceiling 0.94, do not."""
    rows = _quality_rows()
    values = {("ssl", "linear"): 0.89, ("random", "linear"): 0.65, ("ssl", "finetune"): 0.88,
              ("scratch", "finetune"): 0.85}
    for c in rows[0]["classify"]:
        if c["fraction"] == 1.0 and (c["model"], c["protocol"]) in values:
            c["auroc"] = values[c["model"], c["protocol"]]
    rows[2]["result"]["test_auroc"] = 0.86
    lines = _quality_readme(tmp_path, rows).splitlines()
    seed0 = next(line for line in lines if line.startswith("| demo thresholds (oct, seed 0)"))
    assert ("misses ≥ random + 0.25, fine-tuned ≥ 0.90 (≥ random + 0.25 asks for 0.900, fine-tuned ≥ 0.90 asks for "
            "0.900: above this seed's supervised ceiling, 0.860,") in seed0
    seed1 = next(line for line in lines if line.startswith("| demo thresholds (oct, seed 1)"))
    assert "misses SSL ≥ 0.85" in seed1 and "ceiling" not in seed1


def test_demo_threshold_over_random_init_above_one_is_called_unreachable(tmp_path):
    """A random-init probe of 0.80 puts "random + 0.25" at 1.05, above any AUROC: the miss says so, with the value."""
    rows = _quality_rows()
    for c in rows[0]["classify"]:
        if c["model"] == "random":
            c["auroc"] = 0.80
    text = _quality_readme(tmp_path, rows)
    seed0 = next(line for line in text.splitlines() if line.startswith("| demo thresholds (oct, seed 0)"))
    assert "misses ≥ random + 0.25 (unreachable on this data: the random-init encoder's probe is already 0.800" in seed0
    seed1 = next(line for line in text.splitlines() if line.startswith("| demo thresholds (oct, seed 1)"))
    assert "unreachable" not in seed1  # random 0.60 there


def test_quality_plan_covers_every_modality_seed_reference_and_applicable_method():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    runs = bq.plan(3, list(bq.MODALITIES), True, quick=False)
    keys = [bq.run_key(r) for r in runs]
    assert len(keys) == len(set(keys))
    assert {r["modality"] for r in runs if r["kind"] == "pipeline"} == set(bq.MODALITIES) - {"fundus-lt"}
    assert sum(r["kind"] == "pipeline" for r in runs) == 6 * 3
    # the long-tailed fundus set: only the methods it is there for, SimCLR among them, every seed
    assert sorted(bq.run_key(r) for r in runs if r["modality"] == "fundus-lt") == sorted(
        f"method/fundus-lt/{m}/seed{s}" for m in ("simclr", "supcon", "supcon-balanced", "prototypes")
        for s in range(3))
    assert {r["modality"] for r in runs if r["kind"] == "reference"} == {"oct", "fundus", "histo", "ecg", "ct", "mri"}
    # seed by seed, each pipeline next to its references; then the ablations seed by seed; methods last
    assert keys.index("pipeline/oct/seed0") < keys.index("reference/oct/supervised/seed0") \
        < keys.index("pipeline/fundus/seed0")
    assert keys.index("pipeline/mri/seed0") < keys.index("pipeline/oct/seed1") < keys.index("pipeline/mri/seed2") \
        < keys.index("ablation/oct/output_stride_32/seed0") < keys.index("ablation/oct/output_stride_32/seed1") \
        < keys.index("method/oct/moco/seed0")
    assert "method/ecg/simclr/seed0" in keys and "method/ecg/clocs/seed0" not in keys  # ECG's own method is CLOCS
    assert "method/oct/oct-severity/seed1" in keys and "method/fundus/oct-severity/seed1" not in keys
    assert "method/ct/dense/seed0" in keys and "method/histo/supcon-graph/seed0" not in keys
    # the dense checkpoints segmented again without their decoder: after the method rows that make them
    assert keys.index("method/ct/dense/seed2") < keys.index("ablation/ct/dense_decoder_not_handed_on/seed0")
    assert "ablation/oct/dense_decoder_not_handed_on/seed0" not in keys


def test_a_method_row_runs_its_own_preset_options_not_the_demo_methods(tmp_path):
    """The ECG demo pretrains with CLOCS (positives, cross_view_only, CMSC views); its SimCLR row must not inherit
    them (the first such row was refused: "simclr got unknown option(s) ['positives', 'cross_view_only']")."""
    import sys

    from medcl.config import load_raw

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    root = Path(__file__).resolve().parents[2]
    for mod, method in (("ecg", "simclr"), ("ecg", "supcon-balanced"), ("oct", "supcon-hardneg")):
        cfg = bq.method_config({"modality": mod, "method": method, "kind": "method", "seed": 0}, tmp_path,
                               tmp_path / "m.csv", False)
        preset = load_raw(root / "configs" / "method" / f"{method}.yaml")["pretrain"].get("method_options") or {}
        preset = {k: v for k, v in preset.items() if k != "hard_pairs"}  # EGCL's pairs: the row states them
        assert cfg.pretrain.method == method
        assert {k: cfg.pretrain.method_options[k] for k in preset} == preset  # the preset's own options …
        assert "positives" not in cfg.pretrain.method_options  # … and none of CLOCS's
        if mod == "ecg":
            assert cfg.transforms.model_extra["view_mode"] == "random"  # independent windows, not CLOCS's CMSC
    assert cfg.pretrain.method_options["hard_pairs"] == [["early", "intermediate"]]  # the row's stated pair


def test_every_recipe_ablation_runs_the_demo_with_its_setting_undone(tmp_path):
    """An ablation row ("the demo with one fix undone") must load with the undone value in force, and that value must
    differ from the demo's own: otherwise its row would measure the fix against itself. Checked against the YAML
    values the ablation states, read back from the loaded configuration."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)

    def value(cfg, dotted: str):
        node = cfg
        for part in dotted.split("."):
            if isinstance(node, dict):
                node = node.get(part)
            else:
                node = getattr(node, part) if hasattr(node, part) else node.model_extra[part]
        return node

    checked = 0
    for name, (mods, undo, measure) in bq.ABLATIONS.items():
        if measure not in ("probe", "scratch"):  # the others re-use another row's checkpoint (tested below)
            continue
        for mod in mods:
            row = {"kind": "ablation", "modality": mod, "seed": 0, "method": name, "measure": measure}
            cfg = bq.method_config(row, tmp_path, tmp_path / "m.csv", False)
            of = bq.ABLATION_OF_METHOD.get(name)  # an ablation of a method preset's row: that row is the baseline
            demo = (bq.method_config({"kind": "method", "modality": mod, "seed": 0, "method": of}, tmp_path,
                                     tmp_path / "m.csv", False) if of else
                    bq.pipeline_config({"kind": "pipeline", "modality": mod, "seed": 0}, tmp_path, tmp_path / "m.csv",
                                       False))
            if of:
                assert cfg.pretrain.method == demo.pretrain.method == of and cfg.pretrain.steps == demo.pretrain.steps
            for setting in undo:
                key, raw = setting.split("=", 1)
                want = yaml.safe_load(raw)
                if isinstance(want, str) and raw[:1].isdigit():  # YAML 1.1 reads 1e-3 as a string
                    want = float(raw)
                got = value(cfg, key)
                assert (list(got) if isinstance(got, tuple) else got) == want, (name, mod, key)
                assert value(demo, key) != want or want is None, (name, mod, key)
                checked += 1
    assert checked >= len(bq.ABLATIONS["ct_pretrain_150_of_8"][1]) + 1  # the CT ablations among them


def test_long_tail_targets_compare_the_balanced_presets_with_supcon_and_simclr(tmp_path):
    def row(method, seed, severe, bal):
        return {"kind": "method", "modality": "fundus-lt", "seed": seed, "method": method,
                "key": f"method/fundus-lt/{method}/seed{seed}",
                "long_tail": {"rare": "severe", "shares": {"no_dr": 0.8, "mild": 0.1, "moderate": 0.06, "severe": 0.04}},
                "classify": [{"model": "ssl", "protocol": "linear", "fraction": 1.0, "auroc": 0.9,
                              "balanced_accuracy": bal, "auroc_per_class": {"severe": severe, "no_dr": 0.9}}]}

    rows = [row("simclr", 0, 0.70, 0.50), row("supcon", 0, 0.80, 0.55), row("supcon-balanced", 0, 0.85, 0.54),
            row("simclr", 1, 0.75, 0.52), row("supcon", 1, 0.60, 0.40), row("supcon-balanced", 1, 0.76, 0.53),
            {"kind": "method", "modality": "fundus-lt", "seed": 0, "method": "prototypes",
             "key": "method/fundus-lt/prototypes/seed0", "skipped": "pending"}]
    text = _quality_readme(tmp_path, rows)
    # rare grade: seed 0 0.85 vs max(0.80, 0.70) = 0.80, seed 1 0.76 vs max(0.60, 0.75) = 0.75: met
    assert ("| supcon-balanced ≥ supcon and simclr at the same budget (fundus-lt: AUROC of the rare grade (linear "
            "probe, 100 %); every seed) | 0.850 vs 0.800, 0.760 vs 0.750 | **met** |") in text
    # balanced accuracy: seed 0 0.54 vs 0.55: not met
    assert ("| supcon-balanced ≥ supcon and simclr at the same budget (fundus-lt: balanced accuracy (linear probe, "
            "100 %); every seed) | 0.540 vs 0.550, 0.530 vs 0.520 | **not met**") in text
    # per seed, with the grades' AUROCs as the diagnostic
    assert ("| supcon-balanced (fundus-lt) | balanced accuracy (linear probe, 100 %) | 1 | 0.530 | supcon 0.400, "
            "simclr 0.520 | rare grade: severe; AUROC per grade: severe 0.760, no_dr 0.900 |") in text
    # the set's design as its rows record it
    assert "fundus grades in 80 / 10 / 6 / 4 % of the patients" in text and "| AUROC severe |" in text
    # seed 0's grades: severe 0.85 vs SupCon's 0.80, no_dr 0.90 vs 0.90: within 0.03 -> the probe's decisions
    cause = text.split("- supcon-balanced (fundus-lt, balanced accuracy (linear probe, 100 %)): ")[1].split("\n")[0]
    assert "its AUROC per grade is within 0.000 of the better method's" in cause
    # differences -0.01 and +0.01 (mean 0) against SupCon/SimCLR's spread (0.55 vs 0.52: std 0.015)
    assert "(-0.010, +0.010) change sign" in cause and "(std 0.015)" in cause
    assert "perfectly" not in text  # the rare grade is not separated perfectly here
    assert "| prototypes | — | — | — | pending |" in text
    assert "| supcon-balanced | 0.900 ± 0.000 (min 0.900, n=2) | 0.805 ± 0.064 (min 0.760, n=2) |" in text


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
@pytest.mark.timeout(2400)  # every benchmark's quick run, one after the other (the default is 900 s per test)
def test_quick_run_of_every_benchmark(tmp_path):
    rc = run_benchmarks(quick=True, out_dir=tmp_path)
    logs = {p.name: p.read_text()[-1500:] for p in (tmp_path / "logs").iterdir()}
    assert rc == 0, logs
    for name in BENCHMARKS:
        assert (tmp_path / "results" / f"{name}.json").is_file(), name
    text = (tmp_path / "README.md").read_text()
    for heading in ("## 1. Contrastive losses", "## 2. Input pipeline", "## 3. Pretraining throughput", "## 3b. bf16",
                    "## 4. Scaling under torchrun", "## 4b. `--smoke` of every shipped pipeline",
                    "## 4c. medcl's training loops against the plain reference loops", "## 5. Learning quality",
                    "## 5b. Learning from reports and from several modalities"):
        assert heading in text
    assert "not run yet" not in text
    assert "data waiting < 10 % of step time" in text
    assert "equal up to float32 rounding" in text
    assert "medcl against the plain reference loops" in text and "reference/oct/simclr/seed0 | ok" in text


def test_runner_args_reach_the_selected_script_only(monkeypatch, capsys):
    """``--only quality --args='--budget-min 5 --no-methods'`` hands those words to that script; ``--args``
    without ``--only`` is an error."""
    import runner

    seen = {}

    def fake_run(only=None, quick=False, out_dir=None, extra_args=None):
        seen.update(only=only, extra_args=extra_args)
        return 0

    monkeypatch.setattr(runner, "run_benchmarks", fake_run)
    assert runner.main(["--only", "quality", "--args=--budget-min 5 --no-methods"]) == 0
    assert seen["extra_args"] == {"quality": ["--budget-min", "5", "--no-methods"]}
    assert runner.main(["--args=--budget-min 5"]) == 2  # for which script?
    assert "--args needs --only" in capsys.readouterr().err


def test_the_smoke_benchmark_covers_every_shipped_pipeline():
    import bench_smoke

    from medcl.data.synth import EXTRA_SETS, SYNTHESISERS

    shipped = {p.stem for p in (Path(__file__).resolve().parents[2] / "pipelines").glob("*.yaml")}
    assert set(bench_smoke.PIPELINES) == shipped  # a new pipeline is measured, or this fails
    assert set(bench_smoke.PIPELINES.values()) <= set(SYNTHESISERS) | set(EXTRA_SETS)


def test_quick_wsi_reads_the_same_tiles_in_every_arm(tmp_path):
    rc = run_benchmarks(only=["wsi"], quick=True, out_dir=tmp_path)
    assert rc == 0, (tmp_path / "logs" / "wsi.log").read_text()[-2000:]
    res = json.loads((tmp_path / "results" / "wsi.json").read_text())
    arms = {"medcl", "naive openslide", "monai PatchWSIDataset"}
    batched = "medcl, augment_on: batch"  # its workers read, the training process augments whole batches
    assert {(r["arm"], r["measure"]) for r in res["rows"]} == {(a, m) for a in arms for m in ("load", "wait", "read")} | {
        ("medcl", "extract"), (batched, "load"), (batched, "wait")}
    assert res["meta"]["shipped_augment_on"] in ("sample", "batch")
    assert all("error" not in r for r in res["rows"])
    assert all(r["tiles_read"] == r["tiles"] for r in res["rows"] if r["measure"] in ("load", "read", "extract"))
    ex = next(r for r in res["rows"] if r["measure"] == "extract")  # every planned tile of every slide, once
    assert ex["seconds_per_slide"] == pytest.approx(ex["seconds"] / ex["slides"], rel=0.01, abs=1e-3)
    # the same tiles, un-augmented, from OpenSlide and from MONAI's reader: the pixels medcl reads
    assert res["meta"]["max_pixel_difference"] == {"naive openslide": 0.0, "monai PatchWSIDataset": 0.0}
    text = (tmp_path / "README.md").read_text()
    assert "## 4e. Whole-slide tiles" in text and "| medcl |" in text and "Per-slide feature extraction" in text
    assert f"| {batched} |" in text


def test_the_slide_target_states_what_the_augmentation_costs_per_tile():
    from readme import _augment_share

    # 400 tiles/s augmented, 800 without: 2.5 ms per tile, 1.25 of them augmenting; the faster other arm at 500
    # tiles/s spends 2.0 ms per tile, and 1.25 > 2.0 / 2: a free read would still leave medcl under 2x
    text = _augment_share(400.0, 800.0, 500.0)
    assert "takes 1.25 of the 2.50 ms per tile" in text and "more than half of the 2.00 ms" in text
    assert "could not double" not in _augment_share(400.0, 800.0, 300.0)  # 1.25 < 3.33 / 2
    assert _augment_share(None, 800.0, 500.0) == _augment_share(400.0, 390.0, 500.0) == ""


def test_method_claims_compare_each_method_with_simclr_per_seed(tmp_path):
    """Issue 18's claims, from hand-made rows: a method row or the pipeline row holding the method, per seed."""
    def cls(frac, auroc, pair=None):
        return {"model": "ssl", "protocol": "linear", "fraction": frac, "auroc": auroc,
                "auroc_pair": {"stroma_vs_normal": pair} if pair is not None else {}}

    rows = [
        # OCT: the pipeline pretrains with SimCLR; MICLe is a method row; seed 1 has no MICLe run yet
        {"kind": "pipeline", "modality": "oct", "seed": 0, "key": "pipeline/oct/seed0", "method_run": "simclr",
         "classify": [cls(1.0, 0.90), cls(0.1, 0.70)]},
        {"kind": "pipeline", "modality": "oct", "seed": 1, "key": "pipeline/oct/seed1", "method_run": "simclr",
         "classify": [cls(1.0, 0.92), cls(0.1, 0.75)]},
        {"kind": "method", "modality": "oct", "seed": 0, "method": "micle", "key": "method/oct/micle/seed0",
         "classify": [cls(1.0, 0.95)]},
        {"kind": "method", "modality": "oct", "seed": 0, "method": "oct-severity", "key": "m/o/s0",
         "classify": [cls(1.0, 0.91), cls(0.1, 0.80)], "pretrain": {"severity_label_spearman": 0.0312}},
        {"kind": "method", "modality": "oct", "seed": 1, "method": "oct-severity", "key": "m/o/s1",
         "classify": [cls(1.0, 0.91), cls(0.1, 0.74)]},
        # histo: the pair's AUROC against the better of SupCon and SimCLR
        {"kind": "pipeline", "modality": "histo", "seed": 0, "key": "pipeline/histo/seed0", "method_run": "simclr",
         "classify": [cls(1.0, 0.9, pair=0.70)]},
        {"kind": "method", "modality": "histo", "seed": 0, "method": "supcon", "key": "m/h/sc",
         "classify": [cls(1.0, 0.9, pair=0.80)]},
        {"kind": "method", "modality": "histo", "seed": 0, "method": "supcon-hardneg", "key": "m/h/hn",
         "classify": [cls(1.0, 0.9, pair=0.85)]},
        # CT: dense Dice at 10 % against the SimCLR pipeline's pretrained and scratch U-Nets
        {"kind": "pipeline", "modality": "ct", "seed": 0, "key": "pipeline/ct/seed0", "method_run": "simclr",
         "classify": [], "segment": [{"model": "pretrained", "fraction": 0.1, "dice": 0.60},
                                     {"model": "scratch", "fraction": 0.1, "dice": 0.55}]},
        {"kind": "method", "modality": "ct", "seed": 0, "method": "dense", "key": "m/c/d", "classify": [],
         "segment": [{"model": "pretrained", "fraction": 0.1, "dice": 0.58, "fg_ratio": 0.4, "n_test_cases": 4,
                      "n_test_patients": 3, "dice_ci": [0.2, 0.7]},
                     {"model": "scratch", "fraction": 0.1, "dice": 0.62, "fg_ratio": 0.9, "n_test_cases": 4}],
         "pretrain": {"selected": "best_probe", "selected_step": 15, "steps_run": 150}},
        # the same checkpoint with the encoder alone handed on (decoder random): not an ablation-table row
        {"kind": "ablation", "modality": "ct", "seed": 0, "method": "dense_decoder_not_handed_on", "key": "a/c/d",
         "measure": "segment", "classify": [], "segment": [{"model": "pretrained", "fraction": 0.1, "dice": 0.66},
                                                          {"model": "pretrained", "fraction": 1.0, "dice": 0.7}]},
        # MRI: the dense run's own scratch U-Net is the one compared (0.50, not the pipeline's 0.40)
        {"kind": "pipeline", "modality": "mri", "seed": 0, "key": "pipeline/mri/seed0", "method_run": "simclr",
         "classify": [], "segment": [{"model": "pretrained", "fraction": 0.1, "dice": 0.45},
                                     {"model": "scratch", "fraction": 0.1, "dice": 0.40}]},
        {"kind": "method", "modality": "mri", "seed": 0, "method": "dense", "key": "m/m/d", "classify": [],
         "segment": [{"model": "pretrained", "fraction": 0.1, "dice": 0.48},
                     {"model": "scratch", "fraction": 0.1, "dice": 0.50}]},
    ]
    text = _quality_readme(tmp_path, rows)
    assert "| micle ≥ simclr at the same budget (oct: linear probe, 100 % labels (several scans per patient); every " \
           "seed) | 0.950 vs 0.900 | **met on 1 of 2 seeds**" in text
    # 10 %: 0.80 vs 0.70 but 0.74 vs 0.75
    assert "| oct-severity ≥ simclr at the same budget (oct: linear probe, 10 % labels; every seed) | 0.800 vs 0.700, " \
           "0.740 vs 0.750 | **not met**" in text
    # 0.85 against max(0.80 SupCon, 0.70 SimCLR)
    assert "stroma vs normal (linear probe, 100 %); every seed) | 0.850 vs 0.800 | **met on 1 of 2 seeds**" in text
    assert "| supcon-hardneg (histo) | AUROC of the confusable pair stroma vs normal (linear probe, 100 %) | 0 | " \
           "0.850 | supcon 0.800, simclr 0.700 |  |" in text
    # 0.58 against max(0.60 SimCLR-pretrained, 0.55 scratch)
    assert "(ct: segmentation Dice, 10 % labels; every seed) | 0.580 vs 0.620 | **not met**" in text
    assert "clocs ≥ simclr" not in text  # no ECG rows at all: no claim row
    assert "| dense (mri) | segmentation Dice, 10 % labels | 0 | 0.480 | simclr 0.450, scratch 0.500 |" in text
    assert "| oct-severity (oct) | linear probe, 10 % labels | 0 | 0.800 | simclr 0.700 | pseudo-labels vs grades: " \
           "Spearman ρ 0.031 |" in text
    # the dense run's handed-on checkpoint, and why it missed
    # the run's own scratch U-Net (0.62) is compared, not the pipeline's (0.55)
    assert "| dense (ct) | segmentation Dice, 10 % labels | 0 | 0.580 | simclr 0.600, scratch 0.620 | handed on: step " \
           "15 of 150 (best online probe); Dice 95 % CI 0.200–0.700 on 4 test cases of 3 patients; predicted / true " \
           "lesion voxels 0.40 |" in text
    assert "finds less of the lesions than the one from scratch (predicted / true lesion voxels on the test cases: " \
           "seed 0: 0.40 vs 0.90); the same checkpoints" in text
    assert "holds the start back; each of these Dice values rests on 4 test cases" in text
    assert "the same checkpoints with only the encoder handed on (the decoder starting random) reach seed 0: 0.660 " \
           "against 0.580 with its pretrained decoder: the pretrained decoder is what holds the start back" in text
    assert "dense_decoder_not_handed_on |" not in text  # no row in the recipe-fix table
    assert "without its decoder it is still below" not in text  # 0.66 beats scratch's 0.62
    next(r for r in rows if r["key"] == "a/c/d")["segment"][0]["dice"] = 0.61
    text = _quality_readme(tmp_path, rows)
    assert "without its decoder it is still below on every seed (seed 0: 0.610 vs scratch 0.620): the " \
           "dense-pretrained encoder itself is a weaker start here" in text
    assert "- dense (ct, segmentation Dice, 10 % labels): the segment stage started from an early checkpoint picked " \
           "by the online kNN probe" in text and "(seed 0: step 15 of 150)" in text


def test_method_claims_flag_ties_and_misses_at_the_ceiling(tmp_path):
    """A tie at 1.000 is no evidence for the method; a miss against a method at ≥ 0.99 is read as no headroom."""
    def row(method, seed, pair):
        return {"kind": "method", "modality": "histo", "seed": seed, "method": method, "key": f"m/{method}/{seed}",
                "classify": [{"model": "ssl", "protocol": "linear", "fraction": 1.0, "auroc": 0.9,
                              "auroc_pair": {"stroma_vs_normal": pair}}]}

    rows = [row("supcon-hardneg", 0, 0.95), row("supcon", 0, 0.995), row("simclr", 0, 0.9),
            row("supcon-hardneg", 1, 1.0), row("supcon", 1, 1.0), row("simclr", 1, 0.8)]
    text = _quality_readme(tmp_path, rows)
    assert "0.950 vs 0.995, 1.000 vs 1.000 | **not met**" in text
    assert ("the method it is compared with is already at the ceiling (seed 0: supcon 0.995): the demo leaves no "
            "room for a gain") in text
    text = _quality_readme(tmp_path, [{**r, "seed": 0} for r in rows[3:]], seeds=1)
    assert "| 1.000 vs 1.000 | **met only as a tie at the ceiling** — the compared methods score 1.000 too" in text


def _source_checkpoint(bq, ablation, tmp_path, key, folder):
    """An ablation that reuses another row's checkpoint fails clearly without that row and when its checkpoint is
    gone; returns ``(the source row, its checkpoint)`` once a (placeholder) checkpoint is in the run folder."""
    row = {"key": key, "split": str(tmp_path / "runs" / folder / "split.csv")}
    for source in (None, row):
        with pytest.raises(FileNotFoundError, match=f"run {key} first"):
            bq.method_config(ablation, tmp_path, tmp_path / "m.csv", False, source)
    weights = tmp_path / "runs" / folder / "pretrain" / "encoder.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    return row, weights


def test_method_rows_probe_few_labels_segment_for_dense_and_name_the_confusable_pair(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    sev = bq.method_config({"modality": "oct", "method": "oct-severity", "kind": "method", "seed": 0}, tmp_path,
                           tmp_path / "m.csv", False)
    assert sev.classify.label_fractions == [0.01, 0.1, 1.0] and "segment" not in sev.stages
    assert sev.classify.pairs == [["early", "intermediate"]]
    dense = bq.method_config({"modality": "ct", "method": "dense", "kind": "method", "seed": 0}, tmp_path,
                             tmp_path / "m.csv", False)
    assert "segment" in dense.stages and dense.segment.label_fractions == [0.1, 1.0]
    # the ablation segments that run's own checkpoint again, decoder left out, with no second scratch U-Net
    again = {"modality": "ct", "method": "dense_decoder_not_handed_on", "kind": "ablation", "seed": 0,
             "measure": "segment"}
    assert bq.source_key(again) == "method/ct/dense/seed0"
    row, weights = _source_checkpoint(bq, again, tmp_path, "method/ct/dense/seed0", "demo-ct-dense-abc")
    seg = bq.method_config(again, tmp_path, tmp_path / "m.csv", False, row)
    assert seg.stages == ["segment"] and seg.model.pretrained_path == str(weights)
    assert seg.segment.pretrained_decoder is False and seg.segment.baseline is False
    assert seg.segment.label_fractions == [0.1, 1.0] and seg.seed == 0 and seg.pretrain.method == "dense"
    moco = bq.method_config({"modality": "ct", "method": "moco", "kind": "method", "seed": 0}, tmp_path,
                            tmp_path / "m.csv", False)
    assert "segment" not in moco.stages
    histo = bq.pipeline_config({"modality": "histo", "kind": "pipeline", "seed": 0}, tmp_path, tmp_path / "m.csv",
                               False)
    assert histo.classify.pairs == [["stroma", "normal"]]


def test_rerun_keeps_each_old_row_until_its_new_run_is_written(tmp_path, monkeypatch):
    """``--rerun``: a row to be run again keeps its old result when the budget does not reach it or the invocation
    is killed before it; only the rows named are run again."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    ran: list[str] = []

    def fake(version):
        def run(r, *a, **k):
            ran.append(bq.run_key(r))
            if version == "killed" and r["kind"] == "method":
                raise KeyboardInterrupt  # the invocation dies inside this run
            return {"v": version}
        return run

    work, out = tmp_path / "work", tmp_path / "quality.json"
    (work / "quick" / "data" / "oct").mkdir(parents=True)
    (work / "quick" / "data" / "oct" / "manifest.csv").write_text("x\n")  # no data synthesised
    monkeypatch.setattr(bq, "run_pipeline_kind", fake(1))
    monkeypatch.setattr(bq, "run_reference", fake(1))
    argv = ["--quick", "--out", str(out), "--work", str(work)]
    assert bq.main(argv) == 0 and len(ran) == 4

    def rows():
        return {x["key"]: x for x in json.loads(out.read_text())["rows"]}

    ran.clear()
    monkeypatch.setattr(bq, "run_pipeline_kind", fake(2))
    assert bq.main([*argv, "--rerun", "pipeline/oct", "--budget-min", "0"]) == 0
    assert ran == [] and rows()["pipeline/oct/seed0"]["v"] == 1  # not reached: the old row stays, not "skipped"
    assert bq.main([*argv, "--rerun", "pipeline/oct"]) == 0
    assert ran == ["pipeline/oct/seed0"]
    assert rows()["pipeline/oct/seed0"]["v"] == 2 and rows()["method/oct/moco/seed0"]["v"] == 1
    ran.clear()
    monkeypatch.setattr(bq, "run_pipeline_kind", fake("killed"))
    with pytest.raises(KeyboardInterrupt):
        bq.main([*argv, "--rerun", "pipeline/oct", "method/oct"])
    assert ran == ["pipeline/oct/seed0", "method/oct/moco/seed0"]
    after = rows()
    assert after["pipeline/oct/seed0"]["v"] == "killed" and after["method/oct/moco/seed0"]["v"] == 1
    assert all("skipped" not in x for x in after.values())


def test_foreground_ratio_sums_predicted_and_true_lesion_voxels_per_model_and_fraction(tmp_path):
    import bench_quality as bq

    per_case = tmp_path / "per_case.csv"
    per_case.write_text("model,fraction,index,patient,dice_mean,fg_voxels_true,fg_voxels_pred,dice_lesion,hd95_lesion\n"
                        "pretrained,0.1,5,10,0.018,102,9,0.018,58.2\n"
                        "pretrained,0.1,6,10,0,159,0,0,\n"
                        "pretrained,0.1,19,20,,0,19,,\n"  # a case without lesion: counted (19 false voxels)
                        "scratch,0.1,5,10,0.3,102,120,0.3,20.0\n"
                        "scratch,1.0,5,10,0.5,100,,0.5,\n")  # no prediction count: left out
    fg = bq._foreground_ratio(per_case)
    assert fg[("pretrained", 0.1)] == pytest.approx((9 + 0 + 19) / (102 + 159 + 0))
    assert fg[("scratch", 0.1)] == pytest.approx(120 / 102)
    assert ("scratch", 1.0) not in fg
    assert bq._foreground_ratio(tmp_path / "missing.csv") == {}


def test_a_row_collected_from_resumed_stages_says_so_in_the_run_table():
    from readme import _wall

    # the stages' own seconds (489.5 + 286.3 + 2.1 = 777.9) against a 0.5 s collection: resumed
    assert _wall({"wall_s": 0.5, "seconds": {"pretrain": 489.5, "classify": 286.3, "calibrate": 2.1}}) == \
        "0 (resumed: its stages took 778 s in an earlier invocation)"
    assert _wall({"wall_s": 800.0, "seconds": {"pretrain": 489.5, "classify": 286.3}}) == "800"  # ran here
    assert _wall({"wall_s": 12.0, "seconds": {"pretrain": None}}) == "12"


def _both_arms(bq, ablation, tmp_path, key, folder):
    """A ``pretrained`` ablation reads the pipeline row ``key``'s checkpoint: ``(that checkpoint, the config of the
    ablation's own arm, the config of its other arm)``."""
    assert bq.source_key(ablation) == key
    row, weights = _source_checkpoint(bq, ablation, tmp_path, key, folder)
    return (weights, bq.method_config(ablation, tmp_path, tmp_path / "m.csv", False, row),
            bq._finetune_again(ablation, row, tmp_path, tmp_path / "m.csv", False, undo=False))


def _finetune_rows(f, ft, scratch=None):
    """Classify result rows of a pretrained (``ssl``) and a from-scratch fine-tune at label fraction ``f``."""
    return [{"model": "ssl", "protocol": "finetune", "fraction": f, "auroc": ft},
            {"model": "scratch", "protocol": "finetune", "fraction": f, "auroc": scratch}]


def test_a_change_tried_on_the_pretrained_fine_tune_is_measured_from_the_pipelines_own_encoder(tmp_path):
    """``finetune_head_random``: the pipeline row's encoder fine-tuned again at 10 % and 100 % — as shipped (random
    head) and with LP-FT beside the scratch baseline; its own table, every figure from the row."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    keys = [bq.run_key(r) for r in bq.plan(3, list(bq.MODALITIES), True, quick=False)]
    assert {f"ablation/{m}/finetune_head_random/seed{s}" for m in ("oct", "fundus", "histo", "ecg", "ct", "mri")
            for s in range(3)} <= set(keys)
    assert keys.index("pipeline/mri/seed2") < keys.index("ablation/histo/finetune_head_random/seed0")
    again = {"modality": "histo", "method": "finetune_head_random", "kind": "ablation", "seed": 1,
             "measure": "pretrained"}
    weights, shipped, tried = _both_arms(bq, again, tmp_path, "pipeline/histo/seed1", "demo-histo-abc")
    for cfg in (shipped, tried):
        assert cfg.stages == ["classify"] and cfg.model.pretrained_path == str(weights) and cfg.seed == 1
        assert cfg.classify.protocols == ["finetune"] and cfg.classify.label_fractions == [0.1, 1.0]
    assert shipped.classify.finetune.head_init == "random" and shipped.classify.baselines == []
    assert tried.classify.finetune.head_init == "probe" and tried.classify.baselines == ["scratch"]

    rows = [r for r in _quality_rows() if r["kind"] != "method"]
    rows.append({"kind": "ablation", "modality": "oct", "seed": 1, "method": "finetune_head_random",
                 "measure": "pretrained", "key": "ablation/oct/finetune_head_random/seed1",
                 "classify": _finetune_rows(0.1, 0.84)[:1] + _finetune_rows(1.0, 0.93)[:1],
                 "with_fix": {"classify": _finetune_rows(0.1, 0.89, 0.88) + _finetune_rows(1.0, 0.91, 0.94)}})
    rows.append({"kind": "ablation", "modality": "oct", "seed": 0, "method": "finetune_lr1e-3_wd1e-4",
                 "measure": "scratch", "key": "ablation/oct/finetune_lr1e-3_wd1e-4/seed0", "skipped": "pending"})
    text = _quality_readme(tmp_path, rows)
    assert "| oct | finetune_head_random | 1 | 10 % | 0.840 | 0.890 | 0.880 |" in text
    assert "| oct | finetune_head_random | 1 | 100 % | 0.930 | 0.910 | 0.940 |" in text
    # the target stays the pipeline rows' (as shipped): 0.90 vs 0.80 and 0.85 vs 0.88
    assert "pretrained fine-tuning ≥ scratch at 10 % labels (oct) | 0.900 vs 0.800, 0.850 vs 0.880 | **not met**" in text
    assert "| oct | finetune_head_random | SSL" not in text  # not in the recipe-fix table: it is not a fix
    # a pending fix row says what it will be measured by
    assert "| oct | finetune_lr1e-3_wd1e-4 | from-scratch fine-tune | — | — | — |" in text


def test_layer_decay_is_compared_both_ways_from_the_pipelines_own_encoder(tmp_path):
    """``finetune_layer_decay_0.75``: MRI and histo; the pipeline row's encoder fine-tuned again with medcl's default
    layer decay 0.75 and with none (1.0, the MRI demo's), both set explicitly (so neither arm depends on what a demo
    ships); its own table under its own arm names."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_quality as bq
    finally:
        sys.path.pop(0)
    keys = [bq.run_key(r) for r in bq.plan(3, list(bq.MODALITIES), True, quick=False)]
    assert {f"ablation/{m}/finetune_layer_decay_0.75/seed{s}" for m in ("histo", "mri") for s in range(3)} <= set(keys)
    assert not any(k.startswith(("ablation/oct/finetune_layer_decay", "ablation/ct/finetune_layer_decay"))
                   for k in keys)
    r = {"modality": "mri", "method": "finetune_layer_decay_0.75", "kind": "ablation", "seed": 2,
         "measure": "pretrained"}
    weights, default, none = _both_arms(bq, r, tmp_path, "pipeline/mri/seed2", "demo-mri-abc")
    assert default.classify.finetune.layer_decay == 0.75 and default.classify.baselines == []
    assert none.classify.finetune.layer_decay == 1.0 and none.classify.baselines == ["scratch"]
    for cfg in (default, none):
        assert cfg.model.pretrained_path == str(weights) and cfg.classify.label_fractions == [0.1, 1.0]
        assert cfg.classify.finetune.head_init == "random"  # the rest of the fine-tune as the demo ships it
    # the MRI demo ships no layer decay: its pipeline rows fine-tune as the ``none`` arm does
    assert bq.pipeline_config({"kind": "pipeline", "modality": "mri", "seed": 0}, tmp_path, tmp_path / "m.csv",
                              False).classify.finetune.layer_decay == 1.0

    rows = [r for r in _quality_rows() if r["kind"] != "method"]
    rows.append({"kind": "ablation", "modality": "oct", "seed": 0, "method": "finetune_layer_decay_0.75",
                 "measure": "pretrained", "key": "ablation/oct/finetune_layer_decay_0.75/seed0",
                 "classify": _finetune_rows(0.1, 0.72)[:1] + _finetune_rows(1.0, 0.99)[:1],
                 "with_fix": {"classify": _finetune_rows(0.1, 0.78, 0.83) + _finetune_rows(1.0, 1.0, 0.99)}})
    text = _quality_readme(tmp_path, rows)
    head = "| modality | row | seed | labels | layer decay 0.75 (the default) | no layer decay (1.0) | from scratch |"
    assert head in text and "(`finetune_layer_decay_0.75`)" in text
    assert "| oct | finetune_layer_decay_0.75 | 0 | 10 % | 0.720 | 0.780 | 0.830 |" in text
    assert "LP-FT (head from the probe)" not in text  # no head_init rows: no table of theirs
    # a pretrained ablation without arm names of its own is still shown, under plain ones
    rows[-1] = {**rows[-1], "method": "finetune_new_idea", "key": "ablation/oct/finetune_new_idea/seed0"}
    text = _quality_readme(tmp_path, rows)
    assert "| oct | finetune_new_idea | 0 | 10 % | 0.720 | 0.780 | 0.830 |" in text and "the other arm" in text


def test_demo_section_holds_the_wall_time_to_eight_minutes(tmp_path):
    """One row per `medcl demo`: the target line compares its wall time with 480 s and names the longest stages."""
    results = tmp_path / "results"
    results.mkdir()
    rows = [{"command": "medcl demo", "modality": "oct", "rc": 0, "wall_s": 530.4, "target_s": 480,
             "load_before": [0.1, 0.2, 0.3], "stages_s": {"pretrain": 290.2, "classify": 180.6, "report": 20.0}}]
    meta = {"quick": False, "cpu_count": 2, "load_before": [0.1, 0.2, 0.3], "load_after": [1.0, 1.0, 1.0]}
    (results / "demo.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    text = write_readme(tmp_path).read_text()
    assert "| `medcl demo` | ok | 530 | pretrain 290, classify 181, report 20 | 0.1/0.2/0.3 |" in text
    assert ("| `make demo` ≤ 8 min after installation (2 CPU cores) | 530 s | **not met** — the longest stages: "
            "pretrain 290 s, classify 181 s |") in text
    rows[0]["wall_s"] = 470.0
    (results / "demo.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    assert "| `make demo` ≤ 8 min after installation (2 CPU cores) | 470 s | **met** |" in write_readme(tmp_path).read_text()
