"""The sections of the clinician report: each turns :class:`ReportData` into HTML and figures.

A section function returns a list of blocks (HTML strings; figures are ``<img>`` tags with
base64 PNG data, so the exported file is self-contained). It raises :class:`Missing` when the run
lacks what the section needs; :func:`render` turns that — or any unexpected error — into a short
note saying what is missing, so a partial or failed run still gives a complete report.
Every string that comes from the run is HTML-escaped.

This module holds the registry :data:`SECTIONS` and :func:`render`; the builders live by topic in
:mod:`~medcl.reporting.overview` (the run, the cohort, the verdict, the limitations),
:mod:`~medcl.reporting.performance` (classification results), :mod:`~medcl.reporting.segmentation` and
:mod:`~medcl.reporting.inspection` (feature map, saliency), on the HTML helpers of
:mod:`~medcl.reporting.blocks` and the wording of :mod:`~medcl.reporting.wording`. Their public names are
re-exported here, so ``from medcl.reporting.sections import ...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable

from medcl.lookup import nearest
from medcl.reporting.blocks import (
    STYLE,
    Missing,
    ci_text,
    esc,
    fmt,
    img,
    metric_cell,
    note,
    para,
    table,
)
from medcl.reporting.data import ReportData
from medcl.reporting.fusion import fusion
from medcl.reporting.inspection import embedding_map, saliency
from medcl.reporting.overview import (
    CHANCE_MARGIN_AUROC,
    cohort,
    limitations,
    pretraining,
    verdict,
    what_was_trained,
)
from medcl.reporting.performance import (
    confusion_matrix,
    external_validation,
    headline_metrics,
    label_efficiency,
    reliability,
    roc_pr_curves,
    subgroups,
)
from medcl.reporting.segmentation import rare_findings, segmentation, slides
from medcl.reporting.text import zero_shot
from medcl.reporting.wording import HEADLINE_METRICS, METRIC_NAMES, plain_sentence
from medcl.tracking.reader import ArtifactUnreadable

__all__ = [
    "CHANCE_MARGIN_AUROC", "HEADLINE_METRICS", "METRIC_NAMES", "SECTIONS", "STYLE", "Missing", "ci_text",
    "cohort", "confusion_matrix", "embedding_map", "esc", "external_validation", "fmt", "fusion", "headline_metrics",
    "img", "label_efficiency", "limitations", "metric_cell", "note", "para", "plain_sentence", "pretraining",
    "reliability", "render", "roc_pr_curves", "saliency", "segmentation", "slides", "subgroups", "table", "verdict",
    "what_was_trained", "zero_shot",
]


#: section key -> (heading shown in the report, builder); the notebook has one heading + cell per entry
SECTIONS: dict[str, tuple[str, Callable[[ReportData], list[str]]]] = {
    "trained": ("What was trained", what_was_trained),
    "pretraining": ("Pretraining progress", pretraining),
    "cohort": ("Cohort", cohort),
    "headline": ("Headline metrics", headline_metrics),
    "curves": ("ROC and precision-recall curves", roc_pr_curves),
    "confusion": ("Confusion matrix at the operating point", confusion_matrix),
    "calibration": ("Reliability before and after calibration", reliability),
    "subgroups": ("Per-site and subgroup performance", subgroups),
    "embedding": ("Embedding map", embedding_map),
    "saliency": ("Saliency: where the model looks", saliency),
    "segmentation": ("Segmentation", segmentation),
    "rare_findings": ("Rare findings (one-class detection)", rare_findings),
    "slides": ("Slides (slide-level classification)", slides),
    "zero_shot": ("Zero-shot classification and retrieval (reports)", zero_shot),
    "fusion": ("Multimodal fusion", fusion),
    "label_efficiency": ("Label efficiency", label_efficiency),
    "external": ("External validation", external_validation),
    "limitations": ("Limitations", limitations),
}


def render(d: ReportData | None, key: str) -> list[str]:
    """The blocks of one section; a missing input or an error becomes a note (the report never crashes)."""
    if key not in SECTIONS:
        near = nearest(key, SECTIONS)
        return [note(f"unknown report section {esc(key)!r}" + (f"; did you mean {esc(near[0])!r}?" if near else ""),
                     "missing")]
    if d is None:
        return [note("the run could not be read from MLflow, so this section is empty.", "missing")]
    try:
        return SECTIONS[key][1](d)
    except Missing as m:
        return [note(str(m), "missing")]
    except ArtifactUnreadable as exc:  # the run produced it: a failure to read, never shown as an absence
        return [note(f"<b>Could not be read</b> (the run produced it; this is not an absence): {esc(exc.what)} — "
                     f"{esc(exc.fix)}.", "warn")]
    except Exception as exc:  # noqa: BLE001 - a report section must never stop the report
        msg = str(exc)
        detail = f": {esc(msg[:200])}" if msg and "/" not in msg and "\\" not in msg else ""
        return [note(f"this section could not be drawn ({type(exc).__name__}{detail}). The rest of the report "
                     "is unaffected.", "missing")]
