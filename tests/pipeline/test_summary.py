"""The end-of-run summary tells the user a command that works in their shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medcl.console import mlflow_command


def test_mlflow_command_names_the_venv_executable_when_mlflow_is_not_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a shell where the venv is not activated
    cmd = mlflow_command()
    exe = Path(cmd)
    assert exe.name == "mlflow" and exe.resolve() == (Path(sys.executable).parent / "mlflow").resolve()
    # and it really is the MLflow CLI
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": str(tmp_path)})
    assert out.returncode == 0 and "version" in out.stdout.lower()


def test_mlflow_command_is_plain_when_the_same_mlflow_is_on_path(monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    assert mlflow_command() == "mlflow"
