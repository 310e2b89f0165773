import json
import subprocess
import sys

import pytest

from medcl.cli import build_parser, main

COMMANDS = [[], ["demo"], ["run"], ["config"], ["data"], ["data", "synth"], ["data", "validate"], ["data", "inspect"],
            ["predict"], ["embed"],
            ["report"]]  # bench: below (its options are benchmarks/runner.py's)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "medcl")
def test_help_on_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args([*cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "usage: medcl" in out


def test_bench_help_is_the_runners():
    out = subprocess.run([sys.executable, "-m", "medcl", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: medcl bench" in out.stdout and "--only" in out.stdout and "--readme-only" in out.stdout


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


def test_bench_hands_every_argument_to_the_checkouts_runner(tmp_path, monkeypatch):
    """``medcl bench ...`` runs ``benchmarks/runner.py ...`` (the benchmarks are not part of the package)."""
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "runner.py").write_text("import json, sys\n"
                                    f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                                    "sys.exit(3)\n")
    monkeypatch.setenv("MEDCL_BENCHMARKS", str(fake))
    argv = ["bench", "--only", "quality", "--args=--budget-min 5 --no-methods", "--help"]
    assert main(["--log-dir", str(tmp_path), *argv]) == 3  # the runner's exit status
    assert json.loads((tmp_path / "argv.json").read_text()) == argv[1:]


def test_bench_outside_a_checkout_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    import medcl.cli as cli

    monkeypatch.setenv("MEDCL_BENCHMARKS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "medcl" / "cli.py"))
    assert main(["bench", "--quick"]) == 2
    assert "cannot find the benchmarks/ folder" in capsys.readouterr().err
