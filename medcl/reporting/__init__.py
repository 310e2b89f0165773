"""The clinician report: what ``notebooks/report.ipynb`` shows, read from MLflow only.

* :mod:`medcl.reporting.data` — :class:`ReportData`, the run's params, metrics and artifacts;
* :mod:`medcl.reporting.sections` — the registry of report sections (``SECTIONS``) and ``render``; the
  builders live by topic in ``overview``, ``performance``, ``segmentation`` and ``inspection``, on the
  HTML helpers of ``blocks`` and the metric wording of ``wording``;
* :mod:`medcl.reporting.figures` — the figures (matplotlib, PNG).

What the classify stage computes for the report (Grad-CAM / input × gradient, a 2-D feature map) lives in
:mod:`medcl.tasks.saliency` and :mod:`medcl.tasks.embedding`: this package only reads MLflow.

The notebook calls :func:`load_report` once and :func:`show` per section; :func:`medcl.reporting.html.build_report`
executes it with papermill and exports self-contained HTML.
"""

from __future__ import annotations

import logging
from typing import Any

from medcl.errors import MedclError
from medcl.reporting.data import ReportData
from medcl.reporting.sections import STYLE, esc, render, verdict

log = logging.getLogger(__name__)


def load_report(run_id: str, tracking_uri: str | None = None) -> Any:
    """:class:`ReportData` of a run, or ``None`` (with a visible note) when the run cannot be read."""
    try:
        return ReportData.load(run_id, tracking_uri)
    except MedclError as exc:
        _display_html(f"<p><b>The run could not be read:</b> {exc.what}. {exc.fix}</p>")
        return None


def header(report: Any) -> None:
    """The report's style sheet, its one-line identification of the run and the plain verdict on the model."""
    if report is None:
        _display_html(STYLE)
        return
    r = report.run
    status = esc(r.status)
    if r.status == "RUNNING" and "report" in report.stages:
        status += " (this report is the run's last stage)"
    try:
        opening = verdict(report) or ""
    except Exception as exc:  # noqa: BLE001 - the verdict must never stop the report
        log.warning("report: no verdict (%s: %s)", type(exc).__name__, exc)
        opening = ""
    _display_html(STYLE + opening + f"<p>Pipeline <b>{esc(r.name)}</b> · MLflow run <code>{esc(r.run_id)}</code> · "
                  f"status <b>{status}</b>. Generated from the MLflow record of the run only — nothing "
                  "was re-trained or re-computed.</p>")


def show(report: Any, section: str) -> None:
    """Display one section (see ``medcl.reporting.sections.SECTIONS``) in the running notebook."""
    _display_html("\n".join(render(report, section)))


def _display_html(text: str) -> None:
    from IPython.display import HTML, display

    display(HTML(text))
