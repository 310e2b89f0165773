"""The ``report`` stage: the clinician report of this pipeline run, as one self-contained HTML file.

Runs last: executes ``notebooks/report.ipynb`` on the pipeline's MLflow run (everything the earlier
stages logged) and writes ``report.out`` (default: ``<run folder>/report.html``); the HTML is also
logged to the pipeline run as ``report/report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcl.errors import StageError
from medcl.reporting.html import build_report

if TYPE_CHECKING:
    from medcl.stages.context import RunContext
    from medcl.tracking.protocol import Tracker



def run(ctx: RunContext, tracker: Tracker) -> dict[str, Any]:
    """Build the run's HTML report from its MLflow run.

    Returns:
        ``{"html": path of the report, "summary": []}``.

    Raises:
        StageError: the pipeline is not tracked in MLflow (the report reads everything from there).
    """
    if not ctx.parent_run_id or not tracker.active:
        raise StageError("the report needs the pipeline's MLflow run, and this run is not tracked",
                         where="stage report", fix="run the pipeline with MLflow tracking (the default)")
    out = Path(ctx.cfg.report.out) if ctx.cfg.report.out else ctx.run_dir / "report.html"
    html = build_report(ctx.parent_run_id, out=out, tracking_uri=ctx.tracking_uri)
    return {"html": str(html), "summary": []}  # the pipeline's summary prints the report's path itself
