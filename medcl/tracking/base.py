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
    out = {}
    for k, v in params.items():
        text = "" if v is None else str(v)
        phi.check_value(k, where=f"param name {k[:40]}")
        phi.check_value(text, where=f"param {k}")
        out[k] = text
    return out


def guard_file(path: Path) -> None:
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
        return False

    def child(self, name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> NullTracker:
        c = NullTracker(name, self)
        c.tags.update(tags or {})
        self.children.append(c)
        return c

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(guard_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            phi.check_value(k, where="metric name")
            self.metrics.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update(guard_params(tags))

    def log_text(self, text: str, name: str) -> None:
        phi.check_value(text, where=f"artifact {name}")
        self.artifacts.append(name)

    def log_dict(self, obj: Any, name: str) -> None:
        self.log_text(json.dumps(obj, default=str), name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        guard_file(Path(path))
        self.artifacts.append(str(Path(artifact_path or "") / Path(path).name))

    def log_figure(self, figure: Any, name: str) -> None:
        self.artifacts.append(name)

    def log_model(self, *args: Any, **kwargs: Any) -> str | None:
        return None

    def end(self, status: str = "FINISHED") -> None:
        self.status = status
