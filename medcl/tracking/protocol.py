"""What a stage logs to: the :class:`Tracker` protocol.

:class:`~medcl.tracking.MLflowTracker` and :class:`~medcl.tracking.NullTracker` both satisfy it, so a stage
never needs to know which one it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """A run to log into (rank 0's MLflow run, or the null tracker on other ranks and without a store).

    Attributes:
        run_id: the run's id (``None`` for the null tracker of a run without a store).
        active: whether anything logged is kept.
    """

    run_id: str | None

    @property
    def active(self) -> bool:
        """Whether anything logged is kept (False for the null tracker)."""
        ...

    def child(self, name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> Tracker:
        """A nested run (a stage under the pipeline's run); ``run_id`` re-opens an earlier one."""
        ...

    def log_params(self, params: dict[str, Any]) -> None:
        """Write-once parameters (PHI-guarded)."""
        ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics, optionally at a step."""
        ...

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Tags (PHI-guarded)."""
        ...

    def log_text(self, text: str, name: str) -> None:
        """A text artifact."""
        ...

    def log_dict(self, obj: Any, name: str) -> None:
        """A JSON artifact."""
        ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file artifact (PHI-guarded)."""
        ...

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure as a PNG artifact."""
        ...

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``FINISHED`` or ``FAILED``."""
        ...
