import subprocess
import sys

import pytest

from medcl.cli import build_parser, main

COMMANDS = [[], ["demo"], ["run"], ["config"], ["data"], ["data", "synth"], ["data", "validate"], ["data", "inspect"],
            ["predict"], ["embed"],
            ["report"], ["bench"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "medcl")
def test_help_on_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args([*cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "usage: medcl" in out


def test_help_is_instant_no_heavy_imports():
    code = "import sys; from medcl.cli import build_parser; build_parser(); " \
           "print(sorted(m for m in ('torch','monai','mlflow','timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_medcl_error_is_one_line_exit_1(tmp_path, capsys):
    rc = main(["--log-dir", str(tmp_path), "config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and "does not exist" in err
    assert "Traceback" not in err


def test_config_prints_resolved(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("name: p\n")
    assert main(["--log-dir", str(tmp_path), "config", str(p), "--set", "pretrain.epochs=3"]) == 0
    assert "epochs: 3" in capsys.readouterr().out


def test_set_takes_several_pairs_and_the_pipeline_may_follow(tmp_path, capsys):
    """``--set a=1 b=2`` (as the README shows), repeated, and before or after the pipeline."""
    import yaml

    p = tmp_path / "p.yaml"
    p.write_text("name: p\n")
    assert main(["--log-dir", str(tmp_path), "config", "--set", "pretrain.epochs=3", "data.cache=disk",
                 "data.cache_dir=/tmp/c", "--set", "seed=7", str(p)]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["pretrain"]["epochs"], cfg["data"]["cache"], cfg["data"]["cache_dir"], cfg["seed"]) == (
        3, "disk", "/tmp/c", 7)
    assert main(["--log-dir", str(tmp_path), "run", "--set", "seed=1"]) == 2
    assert "needs a pipeline YAML" in capsys.readouterr().err


def test_bench_args_reach_the_selected_script_only(tmp_path, capsys, monkeypatch):
    """``medcl bench --only quality --args='--budget-min 5 --no-methods'`` hands those words to that script."""
    import medcl.bench as bench

    seen = {}

    def fake_run(only=None, quick=False, out_dir=None, extra_args=None):
        seen.update(only=only, extra_args=extra_args)
        return 0

    monkeypatch.setattr(bench, "run_benchmarks", fake_run)
    assert main(["--log-dir", str(tmp_path), "bench", "--only", "quality", "--args=--budget-min 5 --no-methods"]) == 0
    assert seen["extra_args"] == {"quality": ["--budget-min", "5", "--no-methods"]}
    assert main(["--log-dir", str(tmp_path), "bench", "--args=--budget-min 5"]) == 1  # for which script?
    assert "--args needs --only" in capsys.readouterr().err
