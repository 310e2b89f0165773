"""Shared test set-up: offline, no tracking outside tmp dirs, PHI registry reset per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MEDCL_PSEUDONYM_KEY", "medcl-test-key")
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _clean_phi_registry():
    from medcl import phi

    phi.REGISTRY.clear()
    yield
    phi.REGISTRY.clear()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in a temp folder, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
