"""Real server processes for tests: a free port, start until ``/health`` answers, always stop (process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow starts uvicorn workers as children), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_server(cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                  timeout_s: float = 120.0) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (an mlflow server on ``port``) until /health answers; always stop it afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(port):
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not answer /health in {timeout_s:.0f} s:\n"
                                     f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        stop_server(proc)
