"""Pipeline stages: each ``run(ctx, tracker) -> outputs`` reads top to bottom (data, model, loop).

``STAGES`` is the explicit registry :mod:`medcl.pipeline` runs from. A stage either runs on every rank
under ``torchrun`` (``main_only=False``: it trains data-parallel and hands its rank-0-only work to
``ctx.on_main``) or is cheap enough for rank 0 alone (``main_only=True``: the pipeline runs it on rank 0
in a local section and the other ranks wait once, in the pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A registry entry: the stage function and whether it runs on rank 0 alone; calling it runs it."""

    run: Callable[[Any, Any], dict[str, Any]]
    main_only: bool

    def __call__(self, ctx: Any, tracker: Any) -> dict[str, Any]:
        return self.run(ctx, tracker)


def _pretrain(ctx: Any, tracker: Any) -> dict[str, Any]:
    from medcl.stages.pretrain import run

    return run(ctx, tracker)


def _classify(ctx: Any, tracker: Any) -> dict[str, Any]:
    from medcl.stages.classify import run

    return run(ctx, tracker)


def _segment(ctx: Any, tracker: Any) -> dict[str, Any]:
    from medcl.stages.segment import run

    return run(ctx, tracker)


def _calibrate(ctx: Any, tracker: Any) -> dict[str, Any]:
    from medcl.stages.calibrate import run

    return run(ctx, tracker)


def _report(ctx: Any, tracker: Any) -> dict[str, Any]:
    from medcl.stages.report import run

    return run(ctx, tracker)


STAGES: dict[str, Stage] = {
    "pretrain": Stage(_pretrain, main_only=False),   # DDP on every rank
    "classify": Stage(_classify, main_only=False),   # fine-tuning DDP on every rank; probes on rank 0
    "segment": Stage(_segment, main_only=False),     # DDP on every rank; evaluation sharded
    "calibrate": Stage(_calibrate, main_only=True),  # a few thousand logits
    "report": Stage(_report, main_only=True),        # a notebook reading MLflow
}
