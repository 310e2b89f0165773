"""Pipeline stages: each ``run(ctx, tracker) -> outputs`` reads top to bottom (data, model, loop).

``STAGES`` is the explicit registry :mod:`medcl.pipeline` runs from. A stage either runs on every rank
under ``torchrun`` (``main_only=False``: it trains data-parallel and hands its rank-0-only work to
``ctx.on_main``) or is cheap enough for rank 0 alone (``main_only=True``: the pipeline runs it on rank 0
in a local section and the other ranks wait once, in the pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medcl.stages import report

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker


@dataclass(frozen=True)
class Stage:
    """A registry entry of one stage; calling it runs it.

    Attributes:
        run: the stage function ``run(ctx, tracker) -> outputs``.
        main_only: it runs on rank 0 alone (the other ranks wait once, in the pipeline).
        splits: the splits it cannot run without, ``(split, labelled)`` pairs, checked before any stage runs.
    """

    run: Callable[[RunContext, Tracker], dict[str, Any]]
    main_only: bool
    splits: tuple[tuple[str, bool], ...] = ()

    def __call__(self, ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
        """Run the stage on ``ctx`` and log to ``tracker`` (its MLflow run); its outputs."""
        return self.run(ctx, tracker)


def _pretrain(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    # lazy: torch, scipy.stats (~1 s); the registry, stages.context (console, --dry-run) need neither
    from medcl.stages.pretrain import run

    return run(ctx, tracker)


def _classify(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.classify import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


def _segment(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.segment import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


def _detect(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.detect import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


def _slides(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.slides import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


def _fuse(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.fuse import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


def _calibrate(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    from medcl.stages.calibrate import run  # lazy: torch, scipy.stats (see above)

    return run(ctx, tracker)


STAGES: dict[str, Stage] = {
    "pretrain": Stage(_pretrain, main_only=False, splits=(("train", False),)),  # DDP on every rank
    # fine-tuning DDP on every rank; probes on rank 0
    "classify": Stage(_classify, main_only=False, splits=(("train", True), ("test", True))),
    "segment": Stage(_segment, main_only=False, splits=(("train", False), ("test", False))),  # evaluation sharded
    "detect": Stage(_detect, main_only=True, splits=(("train", True), ("test", True))),  # features + small heads
    "slides": Stage(_slides, main_only=True, splits=(("train", True), ("test", True))),  # tile features + MIL heads
    # embeddings + small heads; each modality's pretraining (DDP) is run by the pipeline just before it
    "fuse": Stage(_fuse, main_only=True, splits=(("train", True), ("test", True))),
    "calibrate": Stage(_calibrate, main_only=True, splits=(("val", True), ("test", True))),  # a few thousand logits
    "report": Stage(report.run, main_only=True),        # a notebook reading MLflow
}
