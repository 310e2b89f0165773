"""The clinician report: the notebook, and HTML built from real (tiny) pipeline runs.

One full OCT smoke run (pretrain → classify → calibrate → report, with planted patient identifiers
in the manifest, the file names and a folder name) and one partial run (pretrain → classify) are
made once for the module; every HTML check reads those.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
PLANTED_ID = "DOE^JANE-MRN1234567"
PLANTED_FOLDER = "MRN7654321_export"


def test_notebook_has_one_heading_per_section_and_reads_mlflow_only():
    import nbformat

    from medcl.reporting.sections import SECTIONS

    nb = nbformat.read(REPO / "notebooks" / "report.ipynb", as_version=4)
    nbformat.validate(nb)
    headings = [line[3:].split(". ", 1)[1] for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    assert headings == [title for title, _ in SECTIONS.values()]
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "run_id" in params[0].source and "tracking_uri" in params[0].source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", code, flags=re.M)
    assert imports and all(m.startswith("medcl.reporting") for m in imports), imports


# -- real runs ---------------------------------------------------------------------------------------------

def _planted_manifest(root: Path) -> Path:
    """The synthetic OCT set with one patient renamed to a planted identifier (id and file names)."""
    from medcl.data.synth import synthesize

    synthesize(root / "synth", modalities=["oct"], patients=12, seed=0)
    src = root / "synth" / "oct"
    dst = root / PLANTED_FOLDER / "oct"
    shutil.copytree(src, dst)
    with open(src / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0]["patient_id"]
    for r in rows:
        if r["patient_id"] == first:
            r["patient_id"] = PLANTED_ID
            new = f"images/{PLANTED_ID}_{Path(r['path']).name}"
            (dst / r["path"]).rename(dst / new)
            r["path"] = new
    with open(dst / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst / "manifest.csv"


def _settings(manifest: Path, out: Path) -> list[str]:
    return [f"data.manifest={manifest}", f"runtime.output_dir={out}", "runtime.progress=false", "runtime.device=cpu",
            "model.encoder=tiny_cnn", "model.options={}", "model.proj_hidden_dim=64", "model.proj_dim=32", "pretrain.batch_size=8", "data.batch_size=16",
            "classify.n_boot=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"full": (run_id, html), "partial": run_id, "uri": ..., "manifest": ...}`` from two real runs."""
    from medcl.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    manifest = _planted_manifest(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        full = load_pipeline(REPO / "pipelines" / "demo" / "oct.yaml", [
            *_settings(manifest, root / "runs"), "classify.protocols=[linear, knn]",
            "classify.label_fractions=[0.5, 1.0]", "classify.baselines=[]", "classify.pairs=[[early, intermediate]]",
            "stages=[pretrain, classify, calibrate, report]"], smoke=True)
        ctx = run_pipeline(full, smoke=True)
        partial = load_pipeline(REPO / "pipelines" / "demo" / "oct.yaml", [
            *_settings(manifest, root / "runs"), "classify.protocols=[linear]", "classify.label_fractions=[1.0]",
            "classify.baselines=[]", "stages=[pretrain, classify]"], smoke=True)
        pctx = run_pipeline(partial, smoke=True)
    return {"full": (ctx.parent_run_id, Path(ctx.outputs["report"]["html"])), "partial": pctx.parent_run_id,
            "uri": uri, "root": root, "manifest": manifest}


def _child_metrics(uri: str, run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(run_id).info.experiment_id
    out: dict[str, float] = {}
    for r in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'"):
        out.update(r.data.metrics)
    return out


def test_report_stage_writes_html_with_every_section(runs):
    from medcl.reporting.sections import SECTIONS

    run_id, html_path = runs["full"]
    html = html_path.read_text(encoding="utf-8")
    for title, _ in SECTIONS.values():
        assert title in html, title
    # a full run has curves, matrix, reliability, map, saliency and label-efficiency figures, all inline
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}', html)) >= 7
    assert not re.search(r"<script[^>]+src=", html), "the report must not load scripts"
    assert not re.search(r"""<link[^>]+href=["']?https?:""", html), "the report must not load stylesheets"
    assert not re.search(r"""src=["']https?:""", html)
    assert "Calibration is missing" not in html
    assert "Not available:</b> this run has no segmentation stage" in html
    for code in ("medcl.reporting", "show(report", "import "):
        assert code not in html, f"code cell source {code!r} leaked into the report"
    # logged to the pipeline run
    from mlflow import MlflowClient

    arts = [a.path for a in MlflowClient(tracking_uri=runs["uri"]).list_artifacts(run_id, "report")]
    assert arts == ["report/report.html"]


def test_report_opens_with_a_verdict_and_shows_pretraining_and_the_calibration_decision(runs):
    run_id, html_path = runs["full"]
    html = html_path.read_text(encoding="utf-8")
    # the verdict comes before the first section
    assert html.index("Verdict: not fit for use.") < html.index("What was trained")
    assert "smoke-test run" in html
    # the online probe ran during pretraining and its curve is shown; the encoder handed on is named
    assert "a <b>linear probe</b> fitted on the labelled training" in html and "effective rank" in html
    assert re.search(r"The encoder handed on is (the one from step <b>\d+</b>: the latest by the validation probe"
                     r"|the last one)", html)
    metrics = _child_metrics(runs["uri"], run_id)
    assert {"probe/auroc", "probe/auroc_se", "probe/linear_auroc", "probe/knn_auroc", "probe/effective_rank"} <= set(
        metrics)
    # the calibration section says whether the calibrator was applied, and on what it was fitted
    assert ("Calibration applied" in html) != ("Calibration not applied" in html)
    assert "calibration_cv/nll_before" in metrics
    # and reads the test ECE against what a perfectly calibrated model would show on this many cases
    assert "How small an ECE can this test set show?" in html
    assert 0 < metrics["test/ece_floor_before"] <= metrics["test/ece_floor_q95_before"]
    # a refused calibrator's test ECE is shown: what refusing it avoided
    if "Calibration not applied" in html:
        assert f"Applied anyway, it would have made the test ECE {metrics['test/ece_if_applied']:.3f}" in html


def test_the_noise_floor_note_tells_a_measurable_ece_from_one_within_the_floor():
    from medcl.reporting.performance import _noise_floor_note

    within = _noise_floor_note({"before": {"ece": 0.05, "ece_floor": 0.045, "ece_floor_q95": 0.07}})
    assert "cannot be told apart from perfectly calibrated" in within and "0.045" in within
    real = _noise_floor_note({"before": {"ece": 0.15, "ece_floor": 0.045, "ece_floor_q95": 0.07},
                              "after": {"ece": 0.06, "ece_floor_q95": 0.07}})
    assert "miscalibration is real" in real and "After calibration it is within the range" in real
    assert _noise_floor_note({"before": {"ece": 0.05}}) == ""  # runs from before the floor: nothing claimed


class _Stub:
    """The few ReportData attributes the verdict reads, with values written by hand."""

    def __init__(self, value, lo, hi, applied=True, smoke=False):
        from medcl.reporting.data import Metric

        self.smoke, self.primary_tag = smoke, "ssl/finetune/f100"
        self._m = Metric("test/ssl/finetune/f100/auroc", value, lo, hi)
        self.calibration = {"decision": {"applied": applied, "reason": "did not help on held-out folds"}}
        self.stages = {}

    def stage_status(self, name):
        return "FINISHED" if name == "classify" else "not run"

    def classify_metric(self, tag, name):
        return self._m

    def model_label(self, tag):
        return "pretrained encoder, fine-tuned"


@pytest.mark.parametrize("value,lo,hi,unfit", [(0.588, 0.454, 0.723, True),   # CI includes chance (the demo)
                                               (0.58, 0.52, 0.64, True),      # above chance but close to it
                                               (0.93, 0.88, 0.97, False)])
def test_verdict_says_not_fit_for_use_near_chance(value, lo, hi, unfit):
    from medcl.reporting.sections import verdict

    text = verdict(_Stub(value, lo, hi, applied=False))
    assert ("Verdict: not fit for use." in text) is unfit
    if unfit:
        assert "close to chance" in text and "Do not use its predictions" in text
    else:
        assert "better than chance" in text and "uncalibrated (did not help on held-out folds)" in text
    assert "0.5" in text or not unfit


def test_report_numbers_equal_mlflow(runs):
    run_id, html_path = runs["full"]
    html = html_path.read_text(encoding="utf-8")
    metrics = _child_metrics(runs["uri"], run_id)
    cells = re.findall(r'data-metric="([^"]+)">([^<]+)<', html)
    assert len(cells) >= 10
    keys = {k for k, _ in cells}
    assert any(k.endswith("/f100/auroc") for k in keys) and "test/ece_before" in keys and "test/ece_after" in keys
    assert any(k.endswith("/auroc_pair/early_vs_intermediate") for k in keys)  # classify.pairs: the pair's table
    compared = 0
    for key, shown in cells:
        value = metrics.get(key, float("nan"))
        if shown == "n/a":
            assert not np.isfinite(value), key
            continue
        assert abs(float(shown) - value) <= 5e-4 + 1e-9, (key, shown, value)
        compared += 1
    assert compared >= 8
    # the headline table is about the model handed to calibration, stated in the classify run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=runs["uri"])
    exp = client.get_run(run_id).info.experiment_id
    cls = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`medcl.stage` = 'classify'")[0]
    primary = cls.data.params["classify.primary_model"]
    headline = html.split("medcl-headline", 1)[1].split("</table>", 1)[0]
    assert f'data-metric="test/{primary}/auroc"' in headline
    # cohort counts equal data_summary.json
    summary = json.loads(Path(client.download_artifacts(run_id, "data_summary.json", str(runs["root"]))).read_text())
    assert f"{summary['total']['patients']} patients and {summary['total']['samples']} samples" in html


def test_report_contains_no_planted_identifiers(runs):
    run_id, html_path = runs["full"]
    html = html_path.read_text(encoding="utf-8")
    with open(runs["manifest"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    planted = {PLANTED_ID, "MRN1234567", "DOE^JANE", "DOE&#94;JANE", PLANTED_FOLDER, "MRN7654321"}
    planted |= {r["patient_id"] for r in rows} | {r["study_id"] for r in rows if r["study_id"]}
    planted |= {Path(r["path"]).stem for r in rows}
    low = html.lower()
    leaked = sorted(p for p in planted if p.lower() in low)
    assert not leaked, leaked
    assert "manifest.csv" in html  # the data source is named by its file name only


def test_partial_run_report_says_what_is_missing(runs, tmp_path, monkeypatch):
    import tempfile

    from medcl.reporting.html import build_report
    from medcl.reporting.sections import SECTIONS

    tmp = tmp_path / "tmp"  # the system temp folder of this process and of the notebook's kernel
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    out = build_report(runs["partial"], out=tmp_path / "partial.html", tracking_uri=runs["uri"], log_to_run=False)
    import gc

    gc.collect()
    assert not list(tmp.glob("medcl-report-*")), "the report left its download folders behind"
    html = out.read_text(encoding="utf-8")
    for title, _ in SECTIONS.values():
        assert title in html, title
    assert "Calibration is missing" in html
    assert "this run has no calibrate stage" in html
    assert "only one label fraction" in html
    assert "Headline metrics" in html and 'data-metric="test/ssl/linear/f100/auroc"' in html


def test_report_for_unknown_run_fails_clearly(runs, tmp_path):
    from medcl.errors import TrackingError
    from medcl.reporting.html import build_report

    with pytest.raises(TrackingError, match="no run"):
        build_report("0" * 32, out=tmp_path / "x.html", tracking_uri=runs["uri"])


def test_report_renders_in_headless_chromium(runs, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (make test does) to install Debian's "
                    "chromium — this test renders the HTML report in it")
    _, html_path = runs["full"]
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           "--enable-logging=stderr", "--v=0", html_path.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Uncaught" not in res.stderr, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    px = mpimg.imread(shot)
    assert px.shape[:2] == (3000, 1200)
    assert px[..., :3].std() > 0.05  # text, tables and figures, not a blank page


# -- sections on runs logged directly (no training): segmentation, a FAILED stage, PHI guard -----------------

@pytest.fixture
def seg_run(tmp_path):
    """A pipeline run with a finished ``segment`` stage (per-case Dice, an overlay) and a FAILED ``calibrate``."""
    from matplotlib.figure import Figure

    from medcl.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MLflowTracker.start("seg-demo", uri=uri, experiment="medcl",
                                 tags={"medcl.kind": "pipeline", "medcl.smoke": "false"})
    parent.log_params({"stages": json.dumps(["segment", "calibrate", "report"]), "data.task": "binary",
                       "data.classes": json.dumps(["background", "lesion"]), "data.manifest_name": "manifest.csv",
                       "segment.network": "unet"})
    seg = parent.child("segment", tags={"medcl.stage": "segment", "medcl.kind": "stage"})
    seg.log_metrics({"test/pretrained/f100/dice_mean": 0.8123, "test/pretrained/f100/dice_mean_ci_low": 0.7011,
                     "test/pretrained/f100/dice_mean_ci_high": 0.9002, "test/scratch/f100/dice_mean": 0.6544})
    cases = tmp_path / "per_case.csv"
    with cases.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "fraction", "index", "patient", "dice_mean", "dice_lesion"])
        for model, base in (("pretrained", 0.8), ("scratch", 0.6)):
            for i in (3, 7):
                w.writerow([model, 1.0, i, i // 3, f"{base + i / 100:.4f}", f"{base + i / 100:.4f}"])
    seg.log_artifact(cases)
    (tmp_path / "overlays").mkdir()
    fig = Figure(figsize=(2, 2))
    fig.subplots().imshow(np.random.default_rng(0).random((16, 16)))
    fig.savefig(tmp_path / "overlays" / "case-row00003.png")
    seg.log_artifact(tmp_path / "overlays", "overlays")
    seg.end("FINISHED")
    parent.child("calibrate", tags={"medcl.stage": "calibrate", "medcl.kind": "stage"}).end("FAILED")
    parent.end("FAILED")
    return parent.run_id, uri


def test_sections_of_a_segmentation_run_with_a_failed_stage(seg_run):
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import SECTIONS, render

    run_id, uri = seg_run
    d = ReportData.load(run_id, uri)
    html = {k: "\n".join(render(d, k)) for k in SECTIONS}
    seg = html["segmentation"]
    assert 'data-metric="test/pretrained/f100/dice_mean">0.812<' in seg and "0.701 – 0.900" in seg
    assert "data:image/png;base64," in seg and "case-row00003.png" in seg
    assert "<td>3</td><td>0.830</td><td>0.630</td>" in seg  # per-case Dice, pretrained vs scratch
    assert ">0.812<" in html["headline"]  # segmentation-only runs headline their Dice
    assert "Calibration is missing" in html["calibration"] and "status FAILED" in html["calibration"]
    assert "calibrate</b> (FAILED)" in html["trained"]
    for key in ("curves", "confusion", "embedding", "saliency", "label_efficiency", "cohort"):
        assert "Not available" in html[key], key
    assert "could not be drawn" not in "".join(html.values())  # every absence is explained, none crashed
    assert "Incomplete run" in html["limitations"]


def test_stage_run_id_resolves_to_its_pipeline_and_html_phi_guard(seg_run, tmp_path):
    from medcl import phi
    from medcl.errors import PHIError
    from medcl.tracking.reader import RunReader

    run_id, uri = seg_run
    reader = RunReader(run_id, uri)
    seg_id = reader.stage("segment").run_id
    assert RunReader(seg_id, uri).run_id == run_id
    phi.REGISTRY.add("MRN1234567")
    page = tmp_path / "report.html"
    page.write_text('<p>ok</p><img src="data:image/png;base64,AAAAMRN1234567AAAA"/>')
    reader.log_artifact(page, "report")  # base64 data are not text: no false alarm
    page.write_text("<p>patient MRN1234567</p>")
    with pytest.raises(PHIError):
        reader.log_artifact(page, "report")


def test_an_artifact_that_cannot_be_read_is_a_failure_not_an_absence(seg_run, monkeypatch):
    """A download that fails for an artifact the run has is said so in the section; a truly absent artifact is
    still 'not available'."""
    from mlflow import MlflowClient

    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render
    from medcl.tracking.reader import ArtifactUnreadable

    run_id, uri = seg_run
    download = MlflowClient.download_artifacts

    def flaky(self, rid, path, dst=None):
        if path == "per_case.csv":
            raise OSError("503 Service Unavailable")
        return download(self, rid, path, dst)

    monkeypatch.setattr(MlflowClient, "download_artifacts", flaky)
    d = ReportData.load(run_id, uri)
    with pytest.raises(ArtifactUnreadable, match="per_case.csv of stage segment exists but could not be downloaded"):
        d.reader.artifact_path("per_case.csv", stage="segment")
    assert d.reader.artifact_path("no_such_file.csv", stage="segment") is None  # absent: no error
    seg = "\n".join(render(d, "segmentation"))
    assert "Could not be read" in seg and "503 Service Unavailable" in seg and "not an absence" in seg
    assert "Not available" in "\n".join(render(d, "embedding"))  # never logged by this run: an absence


def test_a_corrupt_json_artifact_is_a_failure_not_an_absence(seg_run, tmp_path):
    from mlflow import MlflowClient

    from medcl.tracking.reader import ArtifactUnreadable, RunReader

    run_id, uri = seg_run
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    MlflowClient(tracking_uri=uri).log_artifact(run_id, str(bad))
    reader = RunReader(run_id, uri)
    with pytest.raises(ArtifactUnreadable, match="broken.json of the pipeline run is corrupt"):
        reader.artifact_json("broken.json")
    assert reader.artifact_json("never_logged.json") is None


def test_the_rare_findings_section_shows_the_detect_stage(tmp_path):
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render
    from medcl.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MLflowTracker.start("cyto", uri=uri, experiment="medcl", tags={"medcl.kind": "pipeline"})
    parent.log_params({"stages": json.dumps(["pretrain", "detect"]), "data.task": "binary",
                       "data.classes": json.dumps(["normal", "malignant"])})
    det = parent.child("detect", tags={"medcl.stage": "detect", "medcl.kind": "stage"})
    det.log_params({"detect.normal_class": "normal", "detect.specificity": 0.95})
    det.log_metrics({"test/detect/ssl/dsvdd/auroc": 0.912, "test/detect/ssl/dsvdd/auroc_ci_low": 0.85,
                     "test/detect/ssl/dsvdd/auroc_ci_high": 0.97, "test/detect/random/knn/auroc": 0.61,
                     "test/detect/ssl/dsvdd/sensitivity": 0.5})
    det.end("FINISHED")
    parent.end("FINISHED")
    d = ReportData.load(parent.run_id, uri)
    html = "\n".join(render(d, "rare_findings"))
    assert ">0.912<" in html and "0.850 – 0.970" in html and ">0.610<" in html
    assert "<b>normal</b>" in html and "0.95" in html


def test_a_run_without_detection_says_so_in_the_rare_findings_section(seg_run):
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render

    run_id, uri = seg_run
    assert "no one-class detection" in "\n".join(render(ReportData.load(run_id, uri), "rare_findings"))
