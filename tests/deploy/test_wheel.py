"""A non-editable install from a wheel runs ``medcl demo``, ``medcl report`` and ``medcl predict`` away from the
checkout: the pipelines, presets and report notebook ship as package data (``setup.py``, ``medcl/shipped.py``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sources(dst: Path) -> Path:
    """What a clean clone holds for building (no run folders, caches or venv)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.split("/")[0] in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "medcl", "pipelines",
                               "configs", "notebooks") and (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """medcl built into a wheel from a copy of the sources and installed (non-editable) into a fresh venv.

    The fresh venv sees this venv's third-party packages through a ``.pth`` file (installing them again would
    take minutes and gigabytes); medcl itself is not among them: the editable install's own ``.pth`` is not
    processed from a folder a ``.pth`` adds, so the fresh venv imports medcl from the wheel alone.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    src = _sources(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True)
    wheel = next((tmp / "dist").glob("medcl-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    import site

    (purelib / "_dev_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # data files of the borrowed packages (nbconvert's templates) live under this venv's share/jupyter
    env.update({"HF_HUB_OFFLINE": "1", "MEDCL_PIPELINES": "", "MEDCL_REPORT_NOTEBOOK": "",
                "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
                "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'work' / 'mlflow.db'}"})
    (tmp / "work").mkdir()
    return {"wheel": wheel, "site": purelib, "python": py, "medcl": venv / "bin" / "medcl", "env": env,
            "work": tmp / "work"}


def _medcl(installed, *args: str, timeout: int = 900) -> str:
    """The installed console script ``medcl`` of the fresh venv."""
    proc = subprocess.run([str(installed["medcl"]), *args], cwd=installed["work"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"medcl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_the_wheel_carries_the_pipelines_presets_and_notebook(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {str(p.relative_to(ROOT)) for d in ("pipelines", "configs") for p in (ROOT / d).rglob("*.yaml")}
    assert shipped and {f"medcl/resources/{s}" for s in shipped} <= names
    assert "medcl/resources/notebooks/report.ipynb" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_an_installed_medcl_runs_demo_report_and_predict_without_the_checkout(installed):
    where = subprocess.run(
        [str(installed["python"]), "-c", "import medcl; print(medcl.__file__)"], cwd=installed["work"], env=installed["env"],
        capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(installed["site"]), where  # not the checkout's editable install
    _medcl(installed, "data", "synth", "--out", "data", "--modalities", "oct", "--patients", "12")
    out = _medcl(installed, "demo", "--data", "data", "--smoke", "--set", "runtime.output_dir=runs")
    run_id = re.search(r"MLflow run: ([0-9a-f]{32})", out).group(1)
    assert list((installed["work"] / "runs").rglob("report.html")), "the demo's report stage wrote no report"
    _medcl(installed, "report", run_id, "--out", "again.html")
    assert "<html" in (installed["work"] / "again.html").read_text()[:2000].lower()
    _medcl(installed, "predict", run_id, "data/oct/images", "--out", "pred.csv", "--no-progress")
    lines = (installed["work"] / "pred.csv").read_text().splitlines()
    assert len(lines) - 1 == len(list((installed["work"] / "data" / "oct" / "images").glob("*.png")))
    assert ",ok," in lines[1]
    # a shipped pipeline by name, as the installed user has no pipelines/ folder
    cfg = _medcl(installed, "config", "oct_severity", "--set", "data.manifest=data/oct/manifest.csv")
    assert "name: oct-severity" in cfg
