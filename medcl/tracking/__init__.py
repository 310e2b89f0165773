"""Experiment tracking: MLflow on rank 0, a null tracker elsewhere.

``medcl.tracking`` is the only subpackage that imports mlflow (lazily, inside functions).
"""

from __future__ import annotations

from medcl.tracking.base import NullTracker
from medcl.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri, find_runs

__all__ = ["MLflowTracker", "NullTracker", "default_tracking_uri", "find_runs"]
