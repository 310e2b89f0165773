"""What the torchrun tests share: paths, a clean environment for the launched processes, MLflow lookups."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("ddp_launcher.py")


def torchrun_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               MLFLOW_ENABLE_ASYNC_LOGGING="false", MEDCL_PSEUDONYM_KEY="medcl-test-key", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runs_by_kind(uri: str, experiment: str = "medcl") -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    out: dict[str, list] = {"pipeline": [], "stage": [], "other": []}
    for r in runs:
        out.get(r.data.tags.get("medcl.kind", "other"), out["other"]).append(r)
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
