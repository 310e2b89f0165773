"""The sections of the clinician report: each turns :class:`ReportData` into HTML and figures.

A section function returns a list of blocks (HTML strings; figures are ``<img>`` tags with
base64 PNG data, so the exported file is self-contained). It raises :class:`Missing` when the run
lacks what the section needs; :func:`render` turns that — or any unexpected error — into a short
note saying what is missing, so a partial or failed run still gives a complete report.
Every string that comes from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from medcl.lookup import nearest
from medcl.reporting import figures
from medcl.reporting.data import MODEL_NAMES, PROTOCOL_NAMES, ReportData, fraction_tag

esc = html.escape


class Missing(Exception):
    """The run does not have what a section needs; the message says what, in plain words."""


# -- small HTML helpers ----------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 3) -> str:
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
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{data}"/>'


def para(text: str) -> str:
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


# -- plain-language metric sentences ------------------------------------------------------------------

METRIC_NAMES = {
    "auroc": "AUROC", "auprc": "Average precision (AUPRC)", "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
    "npv": "NPV", "f1": "F1 score", "f1_macro": "F1 score (macro)", "qwk": "Quadratic-weighted kappa",
    "subset_accuracy": "Exact-match accuracy",
}

HEADLINE_METRICS = {
    "binary": ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"),
    "multiclass": ("auroc", "auprc", "balanced_accuracy", "accuracy", "specificity", "f1_macro"),
    "ordinal": ("qwk", "auroc", "balanced_accuracy", "accuracy", "auprc"),
    "multilabel": ("auroc", "auprc", "sensitivity", "specificity", "subset_accuracy"),
}


def plain_sentence(name: str, value: float, task: str, classes: Sequence[str]) -> str:
    """One sentence a clinician can read, for a metric value (as a percentage where it is one)."""
    if not math.isfinite(value):
        return "Could not be computed on this test set (for example, a class is absent)."
    pct = f"{value:.0%}"
    pos = classes[1] if task == "binary" and len(classes) > 1 and not str(classes[1]).isdigit() else "the finding"
    avg = " (averaged over classes, each against the rest)" if task in ("multiclass", "ordinal") else ""
    avg = " (averaged over labels)" if task == "multilabel" else avg
    s = {
        "auroc": f"Given one case with and one without the finding, the model ranks the one with it higher "
                 f"{pct} of the time{avg}; 50 % is chance, 100 % is perfect.",
        "auprc": f"Across all thresholds, {pct} of the cases the model ranks highest are true cases on "
                 f"average{avg}; chance equals how common each class is.",
        "balanced_accuracy": f"On average the model recognises {pct} of the cases of each class, "
                             "whatever the class sizes.",
        "accuracy": f"{pct} of test cases get the correct class (can look good when one class dominates).",
        "sensitivity": f"Of the cases with {esc(pos)}, the model flags {pct}{avg}.",
        "specificity": f"Of the cases without {esc(pos)}, the model correctly clears {pct}{avg}.",
        "ppv": f"When the model flags {esc(pos)}, it is right {pct} of the time (depends on prevalence).",
        "npv": f"When the model clears a case, it is right {pct} of the time (depends on prevalence).",
        "f1": f"Balance of sensitivity and PPV for {esc(pos)}: {pct}.",
        "f1_macro": f"Balance of sensitivity and precision, averaged over classes: {pct}.",
        "qwk": f"Agreement between predicted and true grade beyond chance, counting a miss by two grades "
               f"worse than a miss by one: {value:.2f} (0 = chance, 1 = perfect; above 0.8 is usually "
               "called strong).",
        "subset_accuracy": f"{pct} of test cases get every label exactly right.",
    }
    return s.get(name, "")


# -- sections ----------------------------------------------------------------------------------------------

def _when(ms: int | None) -> str:
    if not ms:
        return "unknown"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(a: int | None, b: int | None) -> str:
    if not a or not b or b < a:
        return ""
    s = (b - a) / 1000
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _task_words(d: ReportData) -> str:
    cls = ", ".join(esc(c) for c in d.classes) or "(no labels)"
    words = {"binary": "yes/no classification", "multiclass": "classification", "ordinal": "grading (ordered classes)",
             "multilabel": "multi-label classification (several findings per case)"}
    return f"{words.get(d.task, esc(d.task))} into {len(d.classes)} classes: {cls}"


def what_was_trained(d: ReportData) -> list[str]:
    p = d.param
    stages = p("stages", []) or []
    soft = [(k, p(f"software.{k}")) for k in ("medcl", "torch", "monai", "mlflow", "python")]
    pretty = {"medcl": "medcl", "torch": "PyTorch", "monai": "MONAI", "mlflow": "MLflow", "python": "Python"}
    software = " · ".join(f"{pretty[k]} {esc(str(v))}" for k, v in soft if v) or "not recorded (older medcl run)"
    if "pretrain" in stages:
        pre = (f"{esc(str(p('pretrain.method', '?')).upper())} self-supervised contrastive pretraining on the "
               f"training images (no labels used), {esc(str(p('pretrain.epochs', '?')))} epoch(s)")
    else:
        pre = "none in this run" + (" (a pretrained encoder file was used)" if p("model.pretrained_path") else "")
    down = []
    if "classify" in stages:
        protos = ", ".join(PROTOCOL_NAMES.get(x, x) for x in p("classify.protocols", []) or [])
        fracs = ", ".join(f"{f:.0%}" for f in p("classify.label_fractions", []) or [])
        base = ", ".join(MODEL_NAMES.get(x, x) for x in p("classify.baselines", []) or []) or "none"
        down.append(f"classification: {esc(protos)} with {esc(fracs)} of the training labels; compared with: "
                    f"{esc(base)}")
    if "segment" in stages:
        down.append(f"segmentation: {esc(str(p('segment.network', '?')))} network")
    rows = [
        ("Purpose", esc(str(p("description", "") or p("name", "")))),
        ("Modality", esc(str(p("data.modality") or p("transforms.preset") or "not recorded")).upper()),
        ("Task", _task_words(d)),
        ("Pretraining", pre),
        ("Encoder", f"{esc(str(p('model.encoder', '?')))} ({esc(str(p('model.spatial_dims', '?')))}-D input, "
                    f"{esc(str(p('model.in_channels', '?')))} channel(s))"),
        ("Downstream", "; ".join(down) or "none"),
        ("Calibration", (f"{esc(str(p('calibrate.method', '?')))} scaling fitted on the validation split"
                         if "calibrate" in stages else "not part of this run")),
        ("Data source", esc(str(p("data.manifest_name") or "not recorded")) + " (manifest file)"),
        ("Date", f"{_when(d.run.start_time)}" + (f", ran {_duration(d.run.start_time, d.run.end_time)}"
                                                 if d.run.end_time else "")),
        ("Software", software),
        ("MLflow run", f"<code>{esc(d.run.run_id)}</code> ({esc(d.run.name)}, status {esc(d.run.status)})"),
    ]
    out = [table(["", ""], [(f"<b>{k}</b>", v) for k, v in rows], "medcl-facts")]
    srows = []
    for s in stages:
        run = d.stages.get(s)
        status = "this report" if s == "report" else (run.status if run else "not run")
        srows.append((esc(s), esc(status), _duration(run.start_time, run.end_time) if run else ""))
    out.append(table(["stage", "status", "time"], srows))
    bad = [s for s in stages if s != "report" and d.stage_status(s) != "FINISHED"]
    if bad:
        out.append(note("stage(s) " + ", ".join(f"<b>{esc(s)}</b> ({esc(d.stage_status(s))})" for s in bad)
                        + " did not finish: the sections that need them say so below.", "warn"))
    if d.smoke:
        out.append(note("this is a <b>smoke-test run</b> (a few training steps on a tiny setting): it checks that "
                        "the pipeline works; its numbers say nothing about the model.", "warn"))
    return out


def _class_name(d: ReportData, key: str) -> str:
    if key.isdigit() and int(key) < len(d.classes):
        return d.classes[int(key)]
    return key


def cohort(d: ReportData) -> list[str]:
    s = d.data_summary
    if not s:
        raise Missing("the data summary (data_summary.json) was not logged for this run.")
    splits = [k for k in ("train", "val", "test", "total") if k in s]
    class_keys: list[str] = []
    for k in splits:
        class_keys += [c for c in (s[k].get("classes") or {}) if c not in class_keys]
    class_keys.sort(key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    rows = []
    for k in splits:
        cells = [f"<b>{esc(k)}</b>", str(s[k].get("patients", "")), str(s[k].get("samples", ""))]
        for c in class_keys:
            v = (s[k].get("classes") or {}).get(c)
            cells.append(f"{v['samples']} ({v['patients']})" if isinstance(v, dict) else "0")
        rows.append(cells)
    heads = ["split", "patients", "samples", *[f"{_class_name(d, c)}: samples (patients)" for c in class_keys]]
    tot = s.get("total", {})
    out = [para(f"{tot.get('patients', '?')} patients and {tot.get('samples', '?')} samples. The data were split "
                "<b>by patient</b>: no patient appears in more than one split, so test results are on unseen "
                "patients. Counts only — no identifiers are shown."), table(heads, rows)]
    n_exc = d.param("data.n_excluded", 0) or 0
    if n_exc:
        out.append(note(f"{n_exc} manifest row(s) were excluded because their files could not be used "
                        "(listed by row number in the run's excluded_rows.json).", "warn"))
    sites = d.site_summary
    if sites:
        names = sorted({site for per in sites.values() for site in per})
        ss = [k for k in ("train", "val", "test") if k in sites]
        srows = [[esc(n), *[(f"{sites[k][n]['samples']} ({sites[k][n]['patients']})" if n in sites[k] else "0")
                            for k in ss]] for n in names]
        out += [para("Per acquisition site — samples (patients):"), table(["site", *ss], srows)]
    return out


#: a model whose test AUROC is below this, or whose 95 % CI reaches 0.5, is "not fit for use"
CHANCE_MARGIN_AUROC = 0.6


def verdict(d: ReportData) -> str | None:
    """The report's opening line: a plain verdict on the model (HTML), or ``None`` when nothing was evaluated."""
    if d.smoke:
        return note("<b>Verdict: not fit for use.</b> This is a smoke-test run: a few training steps to check "
                    "that the pipeline works on the data.", "warn")
    if d.stage_status("classify") == "FINISHED" and d.primary_tag:
        m = d.classify_metric(d.primary_tag, "auroc")
        if not math.isfinite(m.value):
            return None
        ci = ci_text(m.ci_low, m.ci_high)
        if m.value < CHANCE_MARGIN_AUROC or (math.isfinite(m.ci_low) and m.ci_low <= 0.5):
            why = ("its AUROC's 95 % confidence interval includes 0.5, the value of guessing"
                   if math.isfinite(m.ci_low) and m.ci_low <= 0.5 else
                   f"its AUROC is below {CHANCE_MARGIN_AUROC}, close to the 0.5 of guessing")
            return note(f"<b>Verdict: not fit for use.</b> On held-out test patients the model "
                        f"(<b>{esc(d.model_label(d.primary_tag))}</b>) is close to chance: AUROC {fmt(m.value)} "
                        f"{ci} — {why}. Do not use its predictions.", "warn")
        cal = d.calibration or {}
        decision = cal.get("decision") or {}
        cal_text = ("its probabilities were calibrated" if decision.get("applied") else
                    "its probabilities are uncalibrated (" + esc(str(decision.get("reason") or
                                                                     "no calibration in this run")) + ")")
        return note(f"<b>Verdict:</b> on held-out test patients the model (<b>{esc(d.model_label(d.primary_tag))}"
                    f"</b>) separates the classes better than chance: AUROC {fmt(m.value)} {ci}; {cal_text}. "
                    "Internal validation only: check it on another site's data before any use.")
    if d.stage_status("segment") == "FINISHED":
        dice = [v for k, v in d.stages["segment"].metrics.items() if k.endswith("/dice_mean")]
        if dice and max(dice) < 0.1:
            return note(f"<b>Verdict: not fit for use.</b> The best mean Dice on test patients is {fmt(max(dice))}: "
                        "the segmentations barely overlap the reference masks.", "warn")
    return None


def pretraining(d: ReportData) -> list[str]:
    """The online probe while pretraining ran: did the encoder learn, did it collapse, which one was kept."""
    if d.stage_status("pretrain") == "not run":
        raise Missing("this run has no pretraining stage (the encoder came from model.pretrained_path or "
                      "was trained from scratch).")
    auroc = d.reader.metric_history("probe/knn_auroc", stage="pretrain")
    if not auroc:
        raise Missing("no online probe was logged during pretraining (no labelled validation patients, or "
                      "pretrain.probe was off): there is no record of how the encoder improved.")
    rank = d.reader.metric_history("probe/effective_rank", stage="pretrain")
    params = d.stages["pretrain"].params
    selected = params.get("pretrain.selected", "last")
    step_hist = d.reader.metric_history("probe/selected_step", stage="pretrain")
    sel_step = int(step_hist[-1][1]) if step_hist else None
    out = [para("While the encoder was pretrained (no labels used), a <b>k-nearest-neighbour probe</b> on the "
                "labelled <b>validation</b> patients measured every few steps how well its features separate the "
                "classes, and the <b>effective rank</b> of the features (RankMe, Garrido et al. 2023) tracked "
                "collapse: a rank near 1 means every image maps to nearly the same point.")]
    out.append(img(figures.probe_figure(auroc, rank, sel_step if selected == "best_probe" else None),
                   "online probe AUROC and effective rank during pretraining"))
    best = max(auroc, key=lambda t: t[1])
    if selected == "best_probe" and sel_step is not None:
        out.append(para(f"The encoder handed on is the one from step <b>{sel_step}</b>, the best by the validation "
                        f"probe (kNN AUROC {fmt(best[1])}); the last step ({auroc[-1][0]}) reached {fmt(auroc[-1][1])}."))
    else:
        out.append(para(f"The encoder handed on is the last one (step {auroc[-1][0]}, kNN AUROC {fmt(auroc[-1][1])}; "
                        f"best {fmt(best[1])} at step {best[0]})."))
    per_class = {k.split("/")[-1]: v for k, v in d.stages["pretrain"].metrics.items()
                 if k.startswith("probe/effective_rank/")}
    if per_class:
        rows = [[esc(c), fmt(v, 1)] for c, v in sorted(per_class.items())]
        out.append(table(["class", "effective rank (last probe)"], rows))
    if rank and rank[-1][1] < 2.0:
        out.append(note(f"the features' effective rank fell to {fmt(rank[-1][1], 1)}: the encoder has "
                        "(nearly) collapsed, and its features carry little information.", "warn"))
    return out


def _classify_needed(d: ReportData) -> None:
    status = d.stage_status("classify")
    if status != "FINISHED" or not d.primary_tag:
        raise Missing(f"the classify stage {'did not run' if status == 'not run' else 'has status ' + status} "
                      "in this run, so no classification metrics were logged.")


def headline_metrics(d: ReportData) -> list[str]:
    if d.stage_status("classify") != "FINISHED" and d.stage_status("segment") == "FINISHED":
        return _segment_headline(d)
    _classify_needed(d)
    tag, task, classes = d.primary_tag, d.task, d.classes
    rows = []
    for name in HEADLINE_METRICS.get(task, HEADLINE_METRICS["multiclass"]):
        m = d.classify_metric(tag, name)
        if m.key not in d.stages["classify"].metrics and not math.isfinite(m.value):
            continue
        rows.append([f"<b>{METRIC_NAMES.get(name, name)}</b>", metric_cell(m.key, m.value),
                     ci_text(m.ci_low, m.ci_high), plain_sentence(name, m.value, task, classes)])
    row = d.primary_row() or {}
    info = (row.get("metrics") or {}).get("_info", {})
    out = [para(f"Model: <b>{esc(d.model_label(tag))}</b>. Measured on the held-out <b>test split</b> "
                f"({info.get('n_samples', '?')} samples from {info.get('n_patients', '?')} patients)."),
           table(["metric", "value", "95 % CI", "in plain words"], rows, "medcl-headline")]
    n_boot = d.param("classify.n_boot", "?")
    out.append(note(f"95 % confidence intervals come from a <b>patient-level bootstrap</b> ({esc(str(n_boot))} "
                    "resamples of test patients): the true performance on similar patients is likely within the "
                    "interval. Wide intervals mean too few test patients to be sure."))
    if task == "binary" and info.get("threshold") is not None:
        out.append(note(f"sensitivity, specificity, PPV and NPV are at the operating point "
                        f"{fmt(info['threshold'])} (rule <i>{esc(str(d.param('classify.operating_point', '?')))}"
                        "</i> chosen on the validation split)."))
    for n in info.get("notes") or []:
        out.append(note(esc(str(n)), "warn"))
    out += _comparison(d)
    return out


def _comparison(d: ReportData) -> list[str]:
    """Every model at the largest label fraction, side by side (what pretraining buys)."""
    f = d.largest_fraction
    main = "qwk" if d.task == "ordinal" else "auroc"
    rows = []
    for r in d.results or []:
        if float(r["fraction"]) != f:
            continue
        tag = f"{r['model']}/{r['protocol']}/{fraction_tag(r['fraction'])}"
        cells = [esc(MODEL_NAMES.get(r["model"], r["model"])) + (" <b>(this report)</b>" if tag == d.primary_tag
                                                                  else ""),
                 esc(PROTOCOL_NAMES.get(r["protocol"], r["protocol"]))]
        for name in dict.fromkeys((main, "auroc", "balanced_accuracy")):
            m = d.classify_metric(tag, name)
            cells += [metric_cell(m.key, m.value), ci_text(m.ci_low, m.ci_high)]
        rows.append(cells)
    if len(rows) < 2:
        return []
    heads = ["model", "protocol"]
    for name in dict.fromkeys((main, "auroc", "balanced_accuracy")):
        heads += [METRIC_NAMES[name], "95 % CI"]
    return [para(f"<b>Compared with the baselines</b> (all trained on {f:.0%} of the training labels, same test "
                 "split):"), table(heads, rows)]


def _segment_headline(d: ReportData) -> list[str]:
    m = d.stages["segment"].metrics
    rows = []
    for key in sorted(k for k in m if k.endswith("/dice_mean")):
        rows.append([esc(key.split("/")[1]), esc(key.split("/")[2][1:] + " %"), metric_cell(key, m[key]),
                     ci_text(m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high"))])
    if not rows:
        raise Missing("the segment stage logged no Dice scores.")
    return [para("Mean Dice overlap between predicted and reference masks on the test split (1 = perfect "
                 "overlap, 0 = none), with patient-level bootstrap 95 % CIs:"),
            table(["model", "labels used", "mean Dice", "95 % CI"], rows)]


def _onehot(d: ReportData) -> tuple[np.ndarray, np.ndarray, list[str]]:
    df = d.predictions
    if df is None:
        raise Missing("test-set predictions (predictions_test.csv) were not logged: the classify stage did not "
                      "finish, or the run was made by an older medcl.")
    classes = d.classes
    probs = df[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    if d.task == "multilabel":
        y = df[[f"y_{c}" for c in classes]].to_numpy(dtype=float)
    else:
        y = np.eye(len(classes))[df["y_true"].to_numpy(dtype=int)]
    return y, probs, list(classes)


def roc_pr_curves(d: ReportData) -> list[str]:
    _classify_needed(d)
    y, probs, names = _onehot(d)
    tag = d.primary_tag
    if d.task == "binary":
        y, probs, names = y[:, 1:], probs[:, 1:], names[1:]
        auroc = {names[0]: d.classify_metric(tag, "auroc").value}
        auprc = {names[0]: d.classify_metric(tag, "auprc").value}
    else:
        auroc = {c: d.classify_metric(tag, f"auroc/{c}").value for c in names}
        auprc = {c: d.classify_metric(tag, f"auprc/{c}").value for c in names}
    png = figures.roc_pr_figure(y, probs, names, auroc, auprc)
    return [para("How well the model separates each class from the rest at every possible threshold. "
                 "<b>ROC</b>: sensitivity against false-positive rate — the closer to the top-left corner, the "
                 "better. <b>Precision–recall</b>: of the cases flagged, how many are true — more informative "
                 "when a class is rare. Classes with only one kind of test case have no curve."),
            img(png, "ROC and precision-recall curves")]


def confusion_matrix(d: ReportData) -> list[str]:
    _classify_needed(d)
    tag, classes, task = d.primary_tag, d.classes, d.task
    rows = []
    if task == "binary":
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            m = d.classify_metric(tag, name)
            rows.append([f"<b>{METRIC_NAMES[name]}</b>", metric_cell(m.key, m.value), ci_text(m.ci_low, m.ci_high)])
        table_html = table(["at the operating point", "value", "95 % CI"], rows)
    else:
        for c in classes:
            se, sp = d.classify_metric(tag, f"sensitivity/{c}"), d.classify_metric(tag, f"specificity/{c}")
            rows.append([f"<b>{esc(c)}</b>", metric_cell(se.key, se.value), ci_text(se.ci_low, se.ci_high),
                         metric_cell(sp.key, sp.value), ci_text(sp.ci_low, sp.ci_high)])
        table_html = table(["class", "sensitivity", "95 % CI", "specificity", "95 % CI"], rows)
    info = ((d.primary_row() or {}).get("metrics") or {}).get("_info", {})
    if task == "binary":
        op = (f"a case is called <b>{esc(classes[1] if len(classes) > 1 else 'positive')}</b> when its probability "
              f"is at least {fmt(info.get('threshold', 0.5))} (rule "
              f"<i>{esc(str(d.param('classify.operating_point', '?')))}</i>, chosen on the validation split)")
    elif task == "multilabel":
        op = "a label is called present when its probability is at least 0.5"
    else:
        op = "each case is assigned its most probable class"
    out = [para(f"Operating point: {op}. Sensitivity: share of the cases of a class that the model recognises; "
                "specificity: share of the other cases that it correctly does not put in that class.")]
    if task != "multilabel":
        df = d.predictions
        if df is None:
            out.append(note("the confusion matrix needs the test predictions, which were not logged.", "missing"))
        else:
            k = len(classes)
            cm = np.zeros((k, k), dtype=int)
            np.add.at(cm, (df["y_true"].to_numpy(int), df["y_pred"].to_numpy(int)), 1)
            out.append(img(figures.confusion_figure(cm, classes), "confusion matrix"))
            out.append(para("Rows: the true class; columns: the model's call; each cell gives the number of test "
                            "cases and the share of its row."))
    out.append(table_html)
    return out


def reliability(d: ReportData) -> list[str]:
    status = d.stage_status("calibrate")
    cal = d.calibration if status == "FINISHED" else None
    if cal is None:
        why = "this run has no calibrate stage" if status == "not run" else f"the calibrate stage has status {status}"
        raise Missing(f"<b>Calibration is missing</b>: {why}. The probabilities this model outputs are "
                      "uncalibrated — they rank cases but must not be read as risks.")
    m = d.stages["calibrate"].metrics
    n_bins = cal.get("n_bins", d.stages["calibrate"].params.get("calibrate.n_bins", "?"))
    estimator = cal.get("estimator") or cal.get("before", {}).get("estimator", "top-label")
    rb, ra = cal.get("reliability_before") or {}, cal.get("reliability_after") or {}
    decision = cal.get("decision") or {}
    fitted_on = decision.get("fit_on", "validation patients")
    out = [para(f"Can the model's probabilities be taken at face value? A perfectly calibrated model that says "
                f"“80 %” is right 80 % of the time. The calibrator (<b>{esc(str(cal.get('method', '?')))} "
                f"scaling</b>) was fitted on the {esc(str(fitted_on))} "
                f"({decision.get('n_patients', '?')} patients) and is evaluated here on the test split.")]
    if decision:
        cv = decision.get("cv") or {}
        check = (f" On held-out calibration folds the NLL went {fmt(cv.get('nll_before'))} → "
                 f"{fmt(cv.get('nll_after'))} and the ECE {fmt(cv.get('ece_before'))} → {fmt(cv.get('ece_after'))}."
                 if cv else "")
        if decision.get("applied"):
            out.append(note("<b>Calibration applied</b>: " + esc(str(decision.get("reason", ""))) + "." + check))
        else:
            out.append(note("<b>Calibration not applied</b>: " + esc(str(decision.get("reason", ""))) + "." + check
                            + " The “after” column below equals “before”.", "warn"))
    if rb.get("equal-width") or ra.get("equal-width"):
        out.append(img(figures.reliability_figure(rb.get("equal-width"), ra.get("equal-width")),
                       "reliability diagrams before and after calibration"))
    rows = []
    labels = {"ece": f"ECE ({n_bins} equal-width bins)", "ece_adaptive": f"ECE ({n_bins} adaptive, equal-count bins)",
              "mce": "MCE (largest gap in a bin)", "brier": "Brier score", "nll": "Negative log-likelihood"}
    for k, label in labels.items():
        kb, ka = f"test/{k}_before", f"test/{k}_after"
        if kb in m or ka in m:
            rows.append([f"<b>{esc(label)}</b>", metric_cell(kb, m.get(kb, float("nan"))),
                         metric_cell(ka, m.get(ka, float("nan")))])
    out.append(table(["measure (lower is better)", "before", "after"], rows, "medcl-calibration"))
    t = cal.get("temperature")
    extra = f" The fitted temperature is {fmt(t, 2)} (above 1: the model was over-confident)." if isinstance(
        t, (int, float)) else ""
    out.append(note(f"ECE (expected calibration error) is the average gap between stated confidence and observed "
                    f"accuracy, weighted by how many cases fall in each bin. Bin scheme: <b>{esc(str(n_bins))} "
                    f"equal-width bins</b> (adaptive: equal-count bins), <b>{esc(str(estimator))}</b> estimator "
                    f"(confidence of the predicted class). ECE depends on the bins and is noisy on small test sets."
                    + extra))
    return out


def _label_restating(d: ReportData, column: str) -> bool:
    """True when a subgroup column only restates the label (its value is the class name or index)."""
    df = d.predictions
    if df is None or column not in df.columns or "y_true" not in df.columns:
        return column in ("class_name", "label", "grade")
    names = [str(c).strip().lower() for c in d.classes]
    same = [str(v).strip().lower() in (str(y), names[y] if 0 <= y < len(names) else "")
            for v, y in zip(df[column], df["y_true"].astype(int))]
    return bool(same) and all(same)


def subgroups(d: ReportData) -> list[str]:
    _classify_needed(d)
    row = d.primary_row()
    groups = (row or {}).get("subgroups") or {}
    if not groups:
        raise Missing("the test split has no site or subgroup columns with 2 to 8 values "
                      "(add a site column, or columns such as sex or age group, to the manifest).")
    names = ["auroc", "balanced_accuracy", "sensitivity", "specificity"]
    rows, skipped = [], []
    for breakdown, levels in groups.items():
        if breakdown != "site" and _label_restating(d, breakdown):
            skipped.append(breakdown)
            continue
        for level, e in levels.items():
            vals = e.get("metrics") or {}
            cells = [f"<b>{esc(breakdown)}</b>", esc(str(level)), str(e.get("n_patients", "")),
                     str(e.get("n_samples", ""))]
            for n in names:
                v = vals.get(n)
                v = v.get("value") if isinstance(v, dict) else v
                cells.append(fmt(v))
            cells.append(esc(e.get("reason") or ""))
            rows.append(cells)
    out = [para("Does the model work equally well across sites and patient groups? Same model and operating "
                "point as above, computed within each group of the test split. Groups that are too small are "
                "listed but not computed.")]
    if rows:
        out.append(table(["breakdown", "group", "patients", "samples", *[METRIC_NAMES[n] for n in names], "note"],
                         rows))
    if skipped:
        out.append(note("columns that only restate the label are not shown: " + ", ".join(esc(s) for s in skipped)))
    if not rows:
        raise Missing("the only subgroup columns restate the label; no site or patient-group breakdown is "
                      "available.")
    return out


def external_validation(d: ReportData) -> list[str]:
    """Each ``medcl evaluate`` of this run: the model on another site's data, side by side with the internal test."""
    evs = d.evaluations
    if not evs:
        raise Missing("no external validation yet: the numbers above come from the same data source as training. "
                      "Run <code>medcl evaluate RUN_ID MANIFEST</code> on another site's labelled data to add one.")
    out = [para("The same model, unchanged, applied to labelled data from elsewhere (another site, scanner or "
                "period) with the run's own preprocessing and operating point. This is how the model is likely to "
                "do outside the data it was developed on.")]
    tag, task = d.primary_tag, d.task
    names = HEADLINE_METRICS.get(task, HEADLINE_METRICS["multiclass"])[:4]
    for ev in evs:
        m = ev.get("metrics") or {}
        info = m.get("_info") or {}
        out.append(f"<h4>{esc(str(ev.get('name', '?')))}</h4>")
        out.append(para(f"Manifest <code>{esc(str(ev.get('manifest', '?')))}</code>: {ev.get('n_samples', '?')} samples "
                        f"from {ev.get('n_patients', '?')} patients" + (f"; {ev['n_excluded']} row(s) left out "
                                                                      "(unreadable or unlabelled, listed in the "
                                                                      "evaluation's predictions.csv)"
                                                                      if ev.get("n_excluded") else "") + "."))
        rows = []
        for n in names:
            v = m.get(n)
            if not isinstance(v, dict):
                continue
            internal = d.classify_metric(tag, n) if tag and "classify" in d.stages else None
            rows.append([f"<b>{METRIC_NAMES.get(n, n)}</b>",
                         metric_cell(f"external/{n}", v.get("value", float("nan"))),
                         ci_text(v.get("ci_low"), v.get("ci_high")),
                         fmt(internal.value) if internal else "n/a",
                         ci_text(internal.ci_low, internal.ci_high) if internal else "<td>n/a</td>"])
        out.append(table(["metric", "this site", "95 % CI", "internal test", "95 % CI"], rows))
        cal = ev.get("calibration") or {}
        b, a = cal.get("before") or {}, cal.get("after") or {}
        ece = next((k for k in ("ece_equal_width", "ece") if k in b), None)
        if ece:
            better = a.get(ece, float("nan")) < b.get(ece, float("nan"))
            out.append(para(f"<b>Calibration at this site</b>: expected calibration error {fmt(b[ece])} without the "
                            f"run's calibrator, {fmt(a.get(ece))} with it (Brier score {fmt(b.get('brier'))} → "
                            f"{fmt(a.get('brier'))}). " + ("The calibrator fitted at the training site still helps "
                                                           "here." if better else "The calibrator fitted at the "
                                                           "training site does <b>not</b> help here: recalibrate on "
                                                           "this site's data before reading probabilities as risks.")))
        sh = ev.get("shift") or {}
        if "reading" in sh:
            out.append(note(esc(sh["reading"]), "warn" if sh.get("shifted") else "info"))
        elif sh.get("unavailable"):
            out.append(note("dataset shift not measured: " + esc(str(sh["unavailable"])), "missing"))
        groups = ev.get("subgroups") or {}
        srows = []
        for breakdown, levels in groups.items():
            for level, e in levels.items():
                vals = e.get("metrics") or {}
                srows.append([f"<b>{esc(breakdown)}</b>", esc(str(level)), str(e.get("n_patients", "")),
                              str(e.get("n_samples", "")),
                              *[fmt((vals.get(n) or {}).get("value") if isinstance(vals.get(n), dict) else vals.get(n))
                                for n in ("auroc", "balanced_accuracy")], esc(e.get("reason") or "")])
        if srows:
            out.append(table(["breakdown", "group", "patients", "samples", "AUROC", "Balanced accuracy", "note"],
                             srows))
        for n in info.get("notes") or []:
            out.append(note(esc(str(n)), "warn"))
    return out


def embedding_map(d: ReportData) -> list[str]:
    e = d.embedding
    if e is None:
        raise Missing("no feature map (embedding_map.npz) was logged: the classify stage did not finish, or the "
                      "run was made by an older medcl.")
    method = str(e.get("method", "t-SNE"))
    names = [str(c) for c in e.get("classes", d.classes)]
    png = figures.embedding_figure(e["xy"], e["label"], names, e.get("split"), method)
    return [para(f"Each dot is one sample, placed by {esc(method)} so that samples the encoder finds similar lie "
                 "close together; colours are the true classes. If the colours form separate groups, the "
                 "encoder's features carry the class information. Distances between groups and the axes have no "
                 "meaning."), img(png, f"{method} map of encoder features coloured by class")]


def saliency(d: ReportData) -> list[str]:
    ex = d.saliency
    if not ex:
        raise Missing("no saliency examples were logged: the classify stage did not finish, or the run was made "
                      "by an older medcl.")
    method = ex[0].get("method", "Grad-CAM")
    how = ("Grad-CAM colours the image regions whose features pushed the model towards its answer (red = most)."
           if method == "Grad-CAM" else
           "Input × gradient highlights the leads and moments of the signal that pushed the model towards its "
           "answer (red = most); the percentage is each lead's share.")
    out = [para(f"Where does the model look? {how} Shown for the test cases it was most confident about, "
                "correct and incorrect."),
           note("saliency shows where the evidence came from, not why; check that it points at plausible "
                "anatomy or signal features rather than at text, borders or devices.")]
    for ok, title in ((True, "Correctly classified"), (False, "Misclassified")):
        sel = [x for x in ex if bool(x.get("correct")) == ok]
        out.append(f"<h4>{title}</h4>")
        if not sel:
            out.append(para("No such test case." if ok else "No misclassified test case — every test case was "
                            "classified correctly."))
            continue
        figs = "".join("<figure>" + img(x["png"], f"true {x.get('true')}, predicted {x.get('predicted')}", "")
                       + "</figure>" for x in sel)
        out.append(f'<div class="medcl-grid">{figs}</div>')
    return out


def segmentation(d: ReportData) -> list[str]:
    if "segment" not in d.stages:
        raise Missing("this run has no segmentation stage.")
    if d.stage_status("segment") != "FINISHED":
        raise Missing(f"the segment stage has status {d.stage_status('segment')}: no segmentation results.")
    out = _segment_headline(d)
    r = d.reader
    cases = r.artifact_path("per_case.csv", stage="segment")
    if cases is not None:
        import pandas as pd

        df = pd.read_csv(cases)
        if "fraction" in df.columns and len(df):
            df = df[df["fraction"] == df["fraction"].max()]
        keep = [c for c in df.columns if c in ("model", "index") or c.startswith("dice")]
        if "index" in df.columns and "model" in df.columns:
            wide = df.pivot_table(index="index", columns="model", values="dice_mean") if "dice_mean" in df else None
            if wide is not None:
                rows = [[str(int(i)), *[fmt(v) for v in wide.loc[i]]] for i in wide.index[:40]]
                out += [para("Dice per test case (row number in the manifest, never a patient id), all labels:"),
                        table(["case (row)", *[esc(str(c)) for c in wide.columns]], rows)]
        elif keep:
            out.append(table(keep, [[esc(str(v)) for v in rec] for rec in df[keep].head(40).to_numpy()]))
    pngs = [p for p in r.list_artifacts(stage="segment") if p.lower().endswith(".png")][:8]
    if pngs:
        figs = "".join(f"<figure>{img(b, esc(p), '')}<figcaption>{esc(p.rsplit('/', 1)[-1])}</figcaption></figure>"
                       for p in pngs if (b := r.artifact_bytes(p, stage="segment")))
        out += [para("Overlays (reference and predicted masks on the image):"), f'<div class="medcl-grid">{figs}</div>']
    else:
        out.append(note("no overlay images were logged.", "missing"))
    return out


def label_efficiency(d: ReportData) -> list[str]:
    res = d.results
    if not res:
        raise Missing("no classification results (results.json) were logged, so there is no label-fraction curve.")
    fracs = sorted({float(r["fraction"]) for r in res})
    if len(fracs) < 2:
        raise Missing(f"only one label fraction ({fracs[0]:.0%}) was evaluated; set classify.label_fractions to "
                      "e.g. [0.01, 0.1, 1.0] for a label-efficiency curve.")
    main = "qwk" if d.task == "ordinal" else "auroc"
    curves: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in res:
        m = (r.get("metrics") or {}).get(main) or {}
        label = f"{MODEL_NAMES.get(r['model'], r['model'])}, {PROTOCOL_NAMES.get(r['protocol'], r['protocol'])}"
        curves.setdefault(label, []).append((float(r["fraction"]), float(m.get("value", np.nan)),
                                             float(m.get("ci_low", np.nan)), float(m.get("ci_high", np.nan))))
    png = figures.label_efficiency_figure(curves, METRIC_NAMES[main])
    npat = {float(r["fraction"]): r.get("n_train_patients") for r in res}
    counts = ", ".join(f"{f:.0%} = {npat[f]} patients" for f in fracs if npat.get(f) is not None)
    return [para("How performance grows with the number of labelled training patients. Self-supervised "
                 "pretraining matters most when labels are scarce; its advantage usually shrinks as labels grow. "
                 f"Labelled training patients: {esc(counts)}."),
            img(png, "label-efficiency curves")]


def limitations(d: ReportData) -> list[str]:
    items = []
    s = d.data_summary or {}
    tot, test = s.get("total", {}), s.get("test", {})
    if tot:
        items.append(f"<b>Data size</b>: {tot.get('patients', '?')} patients in total, "
                     f"{test.get('patients', '?')} in the test split. "
                     + ("With fewer than 100 test patients, every number above is uncertain (see the CIs)."
                        if isinstance(test.get("patients"), int) and test["patients"] < 100 else ""))
    classes = (tot.get("classes") or {}) if tot else {}
    counts = {(_class_name(d, k)): v.get("samples", 0) for k, v in classes.items() if isinstance(v, dict)}
    if counts:
        lo, hi = min(counts.values()), max(counts.values())
        ratio = hi / lo if lo else float("inf")
        absent = [c for c in d.classes if str(d.classes.index(c)) not in (test.get("classes") or {})] if test else []
        txt = (f"<b>Class balance</b>: {', '.join(f'{esc(k)} {v}' for k, v in counts.items())} samples"
               + (f" — imbalanced ({ratio:.1f}:1); accuracy can look good while a rare class is missed"
                  if ratio > 3 else " — reasonably balanced"))
        if absent:
            txt += f"; absent from the test split: {', '.join(esc(a) for a in absent)}"
        items.append(txt + ".")
    if d.stage_status("calibrate") == "FINISHED":
        items.append("<b>Calibration</b>: fitted on this data set's validation split; it may not hold at another "
                     "site, on another scanner or for a different case mix — recalibrate locally before reading "
                     "probabilities as risks. ECE depends on the bin scheme and is noisy on small test sets.")
    else:
        items.append("<b>Calibration</b>: not done in this run — probabilities are uncalibrated.")
    evs = d.evaluations
    if evs:
        items.append("<b>Validation</b>: besides the internal test split, the model was validated externally on "
                     + ", ".join(esc(str(e.get("name", "?"))) for e in evs) + " (see <i>External validation</i>); "
                     "there is no prospective validation and no reader study. Other sites, devices and populations "
                     "may still differ.")
    else:
        items.append("<b>Not validated</b>: the test split comes from the same data source as training "
                     "(internal validation only); there is no external, multi-centre or prospective validation, and "
                     "no reader study. Performance on other sites, devices and populations is unknown.")
    if (d.site_summary or {}) and len({k for per in (d.site_summary or {}).values() for k in per}) > 1:
        items.append("<b>Sites</b>: patients from several sites were pooled; see the per-site table for "
                     "differences, and note that small sites are not computed.")
    items.append("<b>Saliency and feature maps</b> are aids to inspection, not evidence that the model uses "
                 "clinically meaningful features.")
    missing = [s for s in (d.param("stages", []) or []) if s != "report" and d.stage_status(s) != "FINISHED"]
    if missing:
        items.append("<b>Incomplete run</b>: " + ", ".join(f"{esc(s)} ({esc(d.stage_status(s))})" for s in missing)
                     + " — the sections that depend on them are missing.")
    if d.smoke:
        items.append("<b>Smoke test</b>: this run trained for a few steps only; do not use its numbers.")
    for n in ((d.primary_row() or {}).get("metrics") or {}).get("_info", {}).get("notes") or []:
        items.append(f"<b>Metric note</b>: {esc(str(n))}")
    return ["<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"]


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
    except Exception as exc:  # noqa: BLE001 - a report section must never stop the report
        msg = str(exc)
        detail = f": {esc(msg[:200])}" if msg and "/" not in msg and "\\" not in msg else ""
        return [note(f"this section could not be drawn ({type(exc).__name__}{detail}). The rest of the report "
                     "is unaffected.", "missing")]
