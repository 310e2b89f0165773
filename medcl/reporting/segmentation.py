"""Report sections: segmentation (Dice, overlays), rare findings (one-class detection), slides (MIL)."""

from __future__ import annotations

from typing import Any

from medcl.reporting.blocks import Missing, ci_text, esc, fmt, img, metric_cell, note, para, table
from medcl.reporting.data import ReportData


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


def segmentation(d: ReportData) -> list[str]:
    """Section "Segmentation": mean Dice, Dice per test case and overlay images.

    Dice per case is shown at the largest label fraction (at most 40 cases, identified by manifest row,
    never by patient id), with up to eight logged overlays.

    Raises:
        Missing: the run has no segment stage, or it did not finish.
    """
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


def _finished(d: ReportData, stage: str, what: str, results: str) -> Any:
    """The run's ``stage`` when it finished.

    Raises:
        Missing: the run has no such stage ("this run has no <what> (<stage>) stage"), or it did not finish.
    """
    if stage not in d.stages:
        raise Missing(f"this run has no {what} ({stage}) stage.")
    if d.stage_status(stage) != "FINISHED":
        raise Missing(f"the {stage} stage has status {d.stage_status(stage)}: no {results} results.")
    return d.stages[stage]


def rare_findings(d: ReportData) -> list[str]:
    """Section "Rare findings": the ``detect`` stage's anomaly AUROC / AUPRC and sensitivity at its specificity.

    Raises:
        Missing: the run has no detect stage, it did not finish, or it logged no scores.
    """
    stage = _finished(d, "detect", "one-class detection", "detection")
    m, params = stage.metrics, stage.params
    tags = sorted({k.rsplit("/", 1)[0] for k in m if k.startswith("test/detect/") and k.endswith("/auroc")})
    if not tags:
        raise Missing("the detect stage logged no detection metrics.")
    rows = []
    for tag in tags:
        _, _, model, scorer = tag.split("/")
        cells = []
        for metric in ("auroc", "auprc", "sensitivity", "specificity"):
            key = f"{tag}/{metric}"
            cells += [metric_cell(key, m.get(key, float("nan"))), ci_text(m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high"))]
        rows.append([esc(model), esc(scorer), *cells])
    spec = params.get("detect.specificity", "?")
    normal = params.get("detect.normal_class", "?")
    return [para(f"The detectors learnt what <b>{esc(str(normal))}</b> looks like from normal training samples only "
                 "and score how far each test sample is from it. AUROC: how well the scores rank the rare finding "
                 "above normal samples (0.5 = chance); AUPRC: the same against the finding's rarity (chance = its "
                 f"prevalence); sensitivity at the threshold set on the validation normal samples for a specificity "
                 f"of {esc(str(spec))}, with patient-level bootstrap 95 % CIs. <i>ssl</i> is the pretrained encoder, "
                 "<i>random</i> a random-init one."),
            table(["encoder", "scorer", "AUROC", "95 % CI", "AUPRC", "95 % CI", "sensitivity", "95 % CI",
                   "specificity", "95 % CI"], rows)]


def slides(d: ReportData) -> list[str]:
    """Section "Slides": the ``slides`` stage's results per encoder and pooling, and test slides' attention maps.

    Raises:
        Missing: the run has no slides stage, it did not finish, or it logged no metrics.
    """
    m = _finished(d, "slides", "slide-level classification", "slide-level").metrics
    tags = sorted({k.rsplit("/", 2)[0] for k in m if k.startswith("test/slides/") and k.endswith("/slide/auroc")})
    if not tags:
        raise Missing("the slides stage logged no metrics.")
    rows = []
    for tag in tags:  # test/slides/<model>/<pooling>/f<percent>
        _, _, model, pooling, fraction = tag.split("/")
        cells = []
        for level in ("slide", "patient"):
            for metric in ("auroc", "accuracy"):
                key = f"{tag}/{level}/{metric}"
                cells += [metric_cell(key, m.get(key, float("nan"))),
                          ci_text(m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high"))]
        rows.append([esc(model), esc(pooling), esc(fraction[1:] + " %"), *cells])
    out = [para("Each slide is classified from all its tiles: the frozen encoder embeds every tile, and "
                "<i>attention</i> MIL (Ilse et al. 2018) learns which tiles decide, <i>mean</i> pooling weighs them "
                "alike. Per slide and per patient (slide probabilities averaged), with patient-level bootstrap 95 % "
                "CIs; <i>ssl</i> is the pretrained encoder, <i>random</i> a random-init one (frozen), <i>scratch</i> a "
                "random-init encoder trained end to end with the pooling on the slide labels (no pretraining)."),
           table(["encoder", "pooling", "training patients", "slide AUROC", "95 % CI", "slide accuracy", "95 % CI", "patient AUROC",
                  "95 % CI", "patient accuracy", "95 % CI"], rows)]
    r = d.reader
    out += _slides_calibration(d, m)
    pngs = [p for p in r.list_artifacts(stage="slides") if p.startswith("attention/") and p.endswith(".png")][:8]
    if pngs:
        figs = "".join(f"<figure>{img(b, esc(p), '')}<figcaption>{esc(p.rsplit('/', 1)[-1])}</figcaption></figure>"
                       for p in pngs if (b := r.artifact_bytes(p, stage="slides")))
        out += [para("Attention of test slides (bright = the tiles that decided; manifest row numbers, never "
                     "patient ids):"), f'<div class="medcl-grid">{figs}</div>']
    return out


def _slides_calibration(d: ReportData, m: dict[str, float]) -> list[str]:
    """The slide models' calibration: test ECE and NLL before and after, and whether (and why) it was applied."""
    import json

    raw = d.reader.artifact_bytes("results.json", stage="slides")
    decided = {}
    for row in json.loads(raw) if raw else []:
        if "calibration" in row:
            decided[(row["model"], row["pooling"])] = row["calibration"]
    rows = []
    for (model, pooling), cal in decided.items():
        tag = next((k.rsplit("/", 1)[0] for k in m if k.startswith(f"test/slides/{model}/{pooling}/")
                    and k.endswith("/slide/ece_before")), None)
        cells = [f"{m[f'{tag}/{k}']:.3f}" if tag and f"{tag}/{k}" in m else "–"
                 for k in ("ece_before", "ece_after", "nll_before", "nll_after")]
        rows.append([esc(model), esc(pooling), *cells, "applied" if cal.get("applied") else "not applied",
                     esc(str(cal.get("reason", "")))])
    if not rows:
        return []
    return [para("Calibration of each slide model (all training labels): temperature scaling fitted on the "
                 "validation slides and out-of-fold logits over the training slides, applied only when it lowers "
                 "the NLL and does not raise the ECE on held-out folds. Test slides, before and after (as applied):"),
            table(["encoder", "pooling", "ECE before", "ECE after", "NLL before", "NLL after", "calibration",
                   "why"], rows)]
