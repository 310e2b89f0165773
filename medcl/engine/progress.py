"""Step progress: a rich progress bar on a terminal, periodic log lines elsewhere (SLURM, CI)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("medcl.engine")


def _fmt(logs: dict[str, Any]) -> str:
    parts = []
    for key in ("loss", "lr", "samples_per_s", "data_wait_fraction"):
        if key in logs:
            v = logs[key]
            if key == "lr":
                parts.append(f"lr {v:.3g}")
            elif key == "samples_per_s":
                parts.append(f"{v:.0f} samples/s")
            elif key == "data_wait_fraction":
                parts.append(f"data wait {100 * v:.0f}%")
            else:
                parts.append(f"{key} {v:.4f}")
    return "  ".join(parts)


class StepProgress:
    """Context manager showing optimiser steps of one epoch.

    Args:
        total: steps expected in this epoch (``None`` if unknown).
        description: label, e.g. ``"epoch 3"``.
        enabled: ``False`` on non-main ranks or when the caller asked for silence.
        log_every: without a terminal, log one line every this many steps.
    """

    def __init__(self, total: int | None, description: str, enabled: bool = True, log_every: int = 50) -> None:
        """Keep the settings; the bar starts in ``__enter__``."""
        self.total = total
        self.description = description
        self.enabled = enabled
        self.log_every = max(1, int(log_every))
        self._progress = None
        self._task = None

    def __enter__(self) -> StepProgress:
        """Start a rich progress bar when stderr is a terminal (else log lines are used)."""
        if not self.enabled:
            return self
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, info="")
        return self

    def update(self, step_in_epoch: int, logs: dict[str, Any]) -> None:
        """Advance to ``step_in_epoch`` (1-based) and show ``logs``."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=step_in_epoch, info=_fmt(logs))
        elif step_in_epoch % self.log_every == 0 or step_in_epoch == self.total:
            total = f"/{self.total}" if self.total else ""
            log.info("%s step %d%s  %s", self.description, step_in_epoch, total, _fmt(logs))

    def __exit__(self, *exc: object) -> None:
        """Stop the progress bar, if one was started."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
