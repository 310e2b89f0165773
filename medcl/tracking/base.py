"""Tracker interface and the null tracker (non-zero ranks, dry runs, tests).

A tracker is bound to one run. ``child(name)`` opens a nested run (one per pipeline stage).
Every string that is logged passes the PHI guard (:func:`medcl.phi.check_value`) first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medcl import phi

#: file suffixes whose content is scanned for PHI before it is logged as an artifact
TEXT_SUFFIXES = {".txt", ".csv", ".json", ".yaml", ".yml", ".md", ".html", ".log", ".tsv"}


def guard_params(params: dict[str, Any]) -> dict[str, str]:
    """Params or tags as strings (``None`` → ``""``), each name and value checked for PHI first.

    Raises:
        PHIError: a name or value holds registered PHI or a secret.
    """
    out = {}
    for k, v in params.items():
        text = "" if v is None else str(v)
        phi.check_value(k, where=f"param name {k[:40]}")
        phi.check_value(text, where=f"param {k}")
        out[k] = text
    return out


def guard_file(path: Path) -> None:
    """Check a file, or every file under a folder, before it is logged: text files are scanned for PHI.

    Only suffixes in :data:`TEXT_SUFFIXES` are read; binary files (images, checkpoints) pass unread.

    Raises:
        PHIError: a text file holds registered PHI or a secret.
    """
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                guard_file(p)
        return
    if path.suffix.lower() in TEXT_SUFFIXES:
        phi.check_value(path.read_text(encoding="utf-8", errors="replace"), where=f"artifact {path.name}")


class NullTracker:
    """Records nothing on disk; keeps what it was given in memory (handy in tests)."""

    def __init__(self, name: str = "null", parent: NullTracker | None = None) -> None:
        """Start an empty in-memory record, status ``RUNNING``, with no run id."""
        self.name = name
        self.parent = parent
        self.run_id: str | None = None
        self.params: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int | None, float]]] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.children: list[NullTracker] = []
        self.status = "RUNNING"

    @property
    def active(self) -> bool:
        """Always False: nothing logged here is kept beyond this process."""
        return False

    def child(self, name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> NullTracker:
        """A nested null tracker (recorded in :attr:`children`) carrying ``tags``; ``run_id`` is ignored."""
        c = NullTracker(name, self)
        c.tags.update(tags or {})
        self.children.append(c)
        return c

    def log_params(self, params: dict[str, Any]) -> None:
        """Keep the params as strings, after the PHI guard."""
        self.params.update(guard_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append each value with its step to :attr:`metrics`; metric names pass the PHI guard."""
        for k, v in metrics.items():
            phi.check_value(k, where="metric name")
            self.metrics.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Keep the tags as strings, after the PHI guard."""
        self.tags.update(guard_params(tags))

    def log_text(self, text: str, name: str) -> None:
        """Check ``text`` for PHI and record the artifact name ``name``."""
        phi.check_value(text, where=f"artifact {name}")
        self.artifacts.append(name)

    def log_dict(self, obj: Any, name: str) -> None:
        """Log ``obj`` as JSON text under ``name`` (see :meth:`log_text`)."""
        self.log_text(json.dumps(obj, default=str), name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Check the file (or folder) for PHI and record its artifact path."""
        guard_file(Path(path))
        self.artifacts.append(str(Path(artifact_path or "") / Path(path).name))

    def log_figure(self, figure: Any, name: str) -> None:
        """Record the figure's artifact name (nothing is rendered)."""
        self.artifacts.append(name)

    def log_model(self, *args: Any, **kwargs: Any) -> str | None:
        """Nothing to log to: returns ``None`` instead of a model URI."""
        return None

    def end(self, status: str = "FINISHED") -> None:
        """Set :attr:`status` (``FINISHED``, ``FAILED``, ...)."""
        self.status = status
