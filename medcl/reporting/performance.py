"""Report sections on classification performance.

Headline metrics with the baselines, ROC and precision-recall curves, the confusion matrix, reliability
before and after calibration, subgroups, label efficiency and external validation.
"""

from __future__ import annotations

import math

import numpy as np

from medcl.metric_keys import calibration_key, metric_key, model_tag
from medcl.reporting import figures
from medcl.reporting.blocks import Missing, ci_text, esc, fmt, img, metric_cell, note, para, table
from medcl.reporting.data import MODEL_NAMES, PROTOCOL_NAMES, ReportData
from medcl.reporting.segmentation import _segment_headline
from medcl.reporting.wording import HEADLINE_METRICS, METRIC_NAMES, plain_sentence


def _classify_needed(d: ReportData) -> None:
    status = d.stage_status("classify")
    if status != "FINISHED" or not d.primary_tag:
        raise Missing(f"the classify stage {'did not run' if status == 'not run' else 'has status ' + status} "
                      "in this run, so no classification metrics were logged.")


def headline_metrics(d: ReportData) -> list[str]:
    """Section "Headline metrics": the primary model's test metrics, then the baselines.

    Each metric comes with its patient-level bootstrap CI and a plain-language reading; the baselines
    are compared at the largest label fraction. A segmentation-only run (classify not finished, segment finished) shows the Dice table instead.

    Raises:
        Missing: the classify stage did not finish (and there is no segmentation to show).
    """
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
        tag = model_tag(r["model"], r["protocol"], r["fraction"])
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
    """Section "ROC and precision-recall curves" of the primary model on the test split (one vs rest per class).

    Raises:
        Missing: the classify stage did not finish or the test predictions were not logged.
    """
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
    """Section "Confusion matrix at the operating point", with sensitivity and specificity.

    The matrix of test counts (not for multilabel tasks) and sensitivity/specificity with CIs, overall
    for binary tasks and per class otherwise.

    Raises:
        Missing: the classify stage did not finish.
    """
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
    pairs = {k.split("/", 1)[1]: v for k, v in ((d.primary_row() or {}).get("metrics") or {}).items()
             if k.startswith("auroc_pair/") and isinstance(v, dict)}
    if pairs:
        out.append(para("<b>Confusable pairs</b> (<code>classify.pairs</code>): how well the model tells the two "
                        "classes apart on their own test cases (one-vs-one AUROC, Hand &amp; Till 2001); 0.5 is "
                        "chance. A pair can be near chance while the overall AUROC is high."))
        out.append(table(["pair", "AUROC", "95 % CI"],
                         [[esc(name.replace("_vs_", " vs ")), metric_cell(metric_key(d.primary_tag, f"auroc_pair/{name}"), m.get("value")),
                           ci_text(m.get("ci_low"), m.get("ci_high"))] for name, m in pairs.items()]))
    return out


def reliability(d: ReportData) -> list[str]:
    """Section "Reliability before and after calibration".

    Whether the calibrator was applied and why, reliability diagrams, and ECE/MCE/Brier/NLL on the test
    split before and after calibration.

    Raises:
        Missing: the run has no finished calibrate stage (the probabilities are then uncalibrated).
    """
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
            forced = (cal.get("if_applied") or {}).get("ece")
            what_if = (f" Applied anyway, it would have made the test ECE {fmt(forced)} (before: "
                       f"{fmt((cal.get('before') or {}).get('ece'))})." if forced is not None else "")
            out.append(note("<b>Calibration not applied</b>: " + esc(str(decision.get("reason", ""))) + "." + check
                            + what_if + " The “after” column below equals “before”.", "warn"))
    if rb.get("equal-width") or ra.get("equal-width"):
        out.append(img(figures.reliability_figure(rb.get("equal-width"), ra.get("equal-width")),
                       "reliability diagrams before and after calibration"))
    rows = []
    labels = {"ece": f"ECE ({n_bins} equal-width bins)", "ece_adaptive": f"ECE ({n_bins} adaptive, equal-count bins)",
              "mce": "MCE (largest gap in a bin)", "brier": "Brier score", "nll": "Negative log-likelihood"}
    for k, label in labels.items():
        kb, ka = calibration_key(k, "before"), calibration_key(k, "after")
        if kb in m or ka in m:
            rows.append([f"<b>{esc(label)}</b>", metric_cell(kb, m.get(kb, float("nan"))),
                         metric_cell(ka, m.get(ka, float("nan")))])
    out.append(table(["measure (lower is better)", "before", "after"], rows, "medcl-calibration"))
    floor = _noise_floor_note(cal)
    if floor:
        out.append(note(floor))
    t = cal.get("temperature")
    extra = f" The fitted temperature is {fmt(t, 2)} (above 1: the model was over-confident)." if isinstance(
        t, (int, float)) else ""
    out.append(note(f"ECE (expected calibration error) is the average gap between stated confidence and observed "
                    f"accuracy, weighted by how many cases fall in each bin. Bin scheme: <b>{esc(str(n_bins))} "
                    f"equal-width bins</b> (adaptive: equal-count bins), <b>{esc(str(estimator))}</b> estimator "
                    f"(confidence of the predicted class). ECE depends on the bins and is noisy on small test sets."
                    + extra))
    return out


def _noise_floor_note(cal: dict) -> str:
    """Whether the test ECE can be told apart from perfect calibration on this many cases ('' if unknown)."""
    b, a = cal.get("before") or {}, cal.get("after") or {}
    ece, floor, q95 = b.get("ece"), b.get("ece_floor"), b.get("ece_floor_q95")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (ece, floor, q95)):
        return ""
    text = (f"<b>How small an ECE can this test set show?</b> A perfectly calibrated model with these confidences "
            f"would show an ECE of about {fmt(floor)} here (95 % of simulated test sets at or below {fmt(q95)}; "
            "the outcomes drawn from the stated probabilities, Roelofs et al. 2022). ")
    if ece <= q95:
        return text + (f"The model's ECE before calibration ({fmt(ece)}) is within that range: on this test set its "
                       "probabilities cannot be told apart from perfectly calibrated ones, and no calibrator can be "
                       "seen to lower the ECE. A larger test set would be needed to measure it.")
    after = a.get("ece")
    end = ""
    if isinstance(after, (int, float)) and isinstance(a.get("ece_floor_q95"), (int, float)):
        end = (" After calibration it is within the range." if after <= a["ece_floor_q95"]
               else " After calibration it is still above the range.")
    return text + f"The model's ECE before calibration ({fmt(ece)}) is above it: the miscalibration is real." + end


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
    """Section "Per-site and subgroup performance" on the test split.

    AUROC, balanced accuracy, sensitivity and specificity within each group of each site or subgroup
    column; columns that only restate the label are left out.

    Raises:
        Missing: the classify stage did not finish, or there is no usable site or subgroup column.
    """
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


def label_efficiency(d: ReportData) -> list[str]:
    """Section "Label efficiency": performance against the fraction of training labels used.

    One curve per model and protocol, of AUROC (QWK for ordinal tasks) with its CI.

    Raises:
        Missing: no ``results.json``, or only one label fraction was evaluated.
    """
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
