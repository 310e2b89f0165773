"""Report sections about the run as a whole: verdict, what was trained, cohort, pretraining, limitations."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from medcl.reporting import figures
from medcl.reporting.blocks import Missing, ci_text, esc, fmt, img, note, para, table
from medcl.reporting.data import MODEL_NAMES, PROTOCOL_NAMES, ReportData


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
    """Section "What was trained": the run's facts, then its stages.

    A table of purpose, modality, task, pretraining, encoder, downstream protocols, calibration, data
    source, date and software versions; one row per pipeline stage with its status and duration; a
    caution for unfinished stages or a smoke-test run.
    """
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
    """Section "Cohort": patients and samples per split and per class, excluded rows and per-site counts.

    Raises:
        Missing: the run logged no ``data_summary.json``.
    """
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
    auroc = (d.reader.metric_history("probe/auroc", stage="pretrain")
             or d.reader.metric_history("probe/knn_auroc", stage="pretrain"))  # runs before pretrain.probe_protocol
    if not auroc:
        raise Missing("no online probe was logged during pretraining (no labelled validation patients, or "
                      "pretrain.probe was off): there is no record of how the encoder improved.")
    rank = d.reader.metric_history("probe/effective_rank", stage="pretrain")
    se = dict(d.reader.metric_history("probe/auroc_se", stage="pretrain"))
    params = d.stages["pretrain"].params
    protocol = params.get("pretrain.probe_protocol", "knn")
    name = {"linear": "linear probe", "knn": "k-nearest-neighbour probe"}.get(protocol, f"{protocol} probe")
    selected = params.get("pretrain.selected", "last")
    step_hist = d.reader.metric_history("probe/selected_step", stage="pretrain")
    sel_step = int(step_hist[-1][1]) if step_hist else None
    out = [para(f"While the encoder was pretrained (no labels used), a <b>{name}</b> fitted on the labelled training "
                "patients' features measured every few steps how well they separate the classes of the labelled "
                "<b>validation</b> patients (macro AUROC, with a patient-level bootstrap standard error as error "
                "bars), and the <b>effective rank</b> of the features (RankMe, Garrido et al. 2023) tracked "
                "collapse: a rank near 1 means every image maps to nearly the same point.")]
    out.append(img(figures.probe_figure(auroc, rank, sel_step if selected == "best_probe" else None,
                                        se=[se.get(s, float("nan")) for s, _ in auroc] if se else None,
                                        label=f"{protocol} macro AUROC (validation)"),
                   "online probe AUROC and effective rank during pretraining"))
    best = max(auroc, key=lambda t: t[1])
    kept = dict(auroc).get(sel_step) if sel_step is not None else None
    if selected == "best_probe" and sel_step is not None:
        within = (f", within one standard error ({fmt(se[best[0]])}) of the best ({fmt(best[1])} at step {best[0]}): "
                  "an earlier encoder is preferred only when it is better by more than the probe's noise"
                  if best[0] in se and sel_step != best[0] else ", the best")
        out.append(para(f"The encoder handed on is the one from step <b>{sel_step}</b>: the latest by the validation "
                        f"probe (AUROC {fmt(kept)}){within}. The last step ({auroc[-1][0]}) reached "
                        f"{fmt(auroc[-1][1])}."))
    else:
        out.append(para(f"The encoder handed on is the last one (step {auroc[-1][0]}, AUROC {fmt(auroc[-1][1])}; "
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


def limitations(d: ReportData) -> list[str]:
    """Section "Limitations": what the numbers above cannot tell, as a bullet list.

    Data size, class balance, calibration, validation scope, pooled sites, what saliency can show,
    unfinished stages, smoke runs and the metric notes of the primary model.
    """
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
