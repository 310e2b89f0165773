"""Pipeline stages: each ``run(ctx, tracker) -> outputs`` reads top to bottom (data, model, loop).

``STAGES`` is the explicit registry :mod:`medcl.pipeline` runs from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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


STAGES: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "pretrain": _pretrain,
    "classify": _classify,
    "segment": _segment,
    "calibrate": _calibrate,
    "report": _report,
}
