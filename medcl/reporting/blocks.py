"""HTML building blocks of the clinician report: number formatting, notes, tables, images, the style sheet.

Every section of :mod:`medcl.reporting.sections` is assembled from these helpers, so the report looks the
same throughout. Cell and note text passed in is already HTML; values that come from the run must be
escaped with :func:`esc` first.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

esc = html.escape


class Missing(Exception):
    """The run does not have what a section needs; the message says what, in plain words."""


# -- small HTML helpers ----------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 3) -> str:
    """A number for display with ``digits`` decimals; ``"n/a"`` for NaN, infinity or anything not numeric."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not math.isfinite(f) else f"{f:.{digits}f}"


def ci_text(lo: Any, hi: Any) -> str:
    """A CI cell: ``<td>0.712 – 0.845</td>``."""
    text = "n/a" if fmt(lo) == "n/a" or fmt(hi) == "n/a" else f"{fmt(lo)} – {fmt(hi)}"
    return f'<td class="medcl-ci">{text}</td>'


def note(text: str, kind: str = "info") -> str:
    """A boxed note; ``kind`` is ``info``, ``warn`` or ``missing`` (text is already HTML)."""
    label = {"info": "Note", "warn": "Caution", "missing": "Not available"}[kind]
    return f'<div class="medcl-note medcl-{kind}"><b>{label}:</b> {text}</div>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; ``rows`` hold cell HTML (escape run values before passing them)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="medcl-table {cls}">{head}<tbody>{body}</tbody></table>'


def img(png: bytes, alt: str, cls: str = "medcl-fig") -> str:
    """An ``<img>`` tag with the PNG inlined as base64 data, so the exported HTML needs no other file.

    Args:
        png: the image bytes.
        alt: alternative text (escaped here).
        cls: CSS class; ``""`` inside a ``medcl-grid`` figure.
    """
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{data}"/>'


def para(text: str) -> str:
    """A paragraph around ``text`` (already HTML)."""
    return f"<p>{text}</p>"


def metric_cell(key: str, value: float) -> str:
    """A value cell carrying the MLflow metric key (tests compare the shown number with MLflow)."""
    return f'<td class="medcl-value" data-metric="{esc(key)}">{fmt(value)}</td>'


STYLE = """<style>
.medcl-table {border-collapse: collapse; margin: 0.6em 0 1em 0; font-size: 0.92em;}
.medcl-table th, .medcl-table td {border: 1px solid #ccc !important; padding: 4px 8px !important;
  text-align: left !important; vertical-align: top !important; max-width: 42em;}
.medcl-table th {background: #f2f4f7 !important;}
.medcl-table td.medcl-value {font-variant-numeric: tabular-nums; font-weight: 600; white-space: nowrap;
  text-align: right !important;}
.medcl-table td.medcl-ci {white-space: nowrap; color: #333;}
.medcl-note {border-left: 4px solid #4a90d9; background: #f3f7fc; padding: 6px 10px; margin: 0.6em 0;}
.medcl-warn {border-left-color: #e0a100; background: #fff8e6;}
.medcl-missing {border-left-color: #999; background: #f4f4f4; color: #333;}
.medcl-fig {max-width: 100%; height: auto; margin: 0.4em 0;}
.medcl-grid {display: flex; flex-wrap: wrap; gap: 10px;}
.medcl-grid figure {margin: 0; max-width: 48%;}
.medcl-grid figure img {max-width: 100%; height: auto;}
.medcl-grid figcaption {font-size: 0.85em; color: #444;}
</style>"""
