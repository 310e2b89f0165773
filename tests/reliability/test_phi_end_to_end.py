"""No planted patient identifier, secret or key survives a full pipeline run anywhere on disk.

Demo data (OCT images and CT DICOM series) gets planted PHI: manifest patient and study ids that
are names with birth dates, an MRN in a file name and in a series folder name, free-text reports naming
physicians and patients with dates, an MRN and a phone number, and DICOM
PatientName / PatientID / PatientBirthDate / AccessionNumber / InstitutionName set on a series.
A distinctive pseudonymisation key and MLflow password are set in the environment. Both demo
pipelines then run through the ``medcl`` command in this process (pretrain → classify →
calibrate → report) against a SQLite MLflow store; afterwards every byte under the store, the
artifacts, the run folders (checkpoints included), the log folder, the HTML reports and the
console output is searched — raw, case-insensitive, decompressed (gzip, zip/npz/.pt) — and none
of the planted values may be found.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import stat
from pathlib import Path

import pytest
from reliability_helpers import REPO, search_bytes

KEY = "k3y-XYZZY-plugh-773155"
PASSWORD = "pw-FROBOZZ-440991"
TOKEN = "tok-GRUE-88310457"

OCT_NAME_ID = "WINTERBOURNE^JOHN-19570412"
OCT_STUDY_ID = "ACCSTUDY88123409"
OCT_FILE_MRN = "MRN4471923"
OCT_BAD_FILE_MRN = "MRN6620417"  # a corrupt file, excluded with data.on_error=skip
CT_NAME_ID = "HARGREAVES^MILDRED-19630817"
CT_FOLDER_MRN = "MRN5582034"
DICOM = {
    "PatientName": "QUIXANO^ZEBULON",
    "PatientID": "MRN9917362",
    "PatientBirthDate": "19480229",
    "AccessionNumber": "ACC7719305X",
    "InstitutionName": "Saint Barnabas Quillfeather Hospital",
}
#: free-text reports in the OCT manifest's ``report`` column (three texts: few enough to pass for a subgroup)
REPORTS = ["Reported by Dr. Peregrine Thistlewood on 2023-11-05: drusen noted.",
           "Patient: Ottoline Fairweather, MRN 8831902. Normal scan.",
           "Call 0161 496 0872 about Ottoline Fairweather; no change."]
PLANTED_IN_REPORTS = ["Peregrine", "Thistlewood", "Ottoline", "Fairweather", "8831902", "496 0872", "2023-11-05"]
PLANTED = [*PLANTED_IN_REPORTS, OCT_NAME_ID, "WINTERBOURNE", "19570412", OCT_STUDY_ID, OCT_FILE_MRN, OCT_BAD_FILE_MRN, CT_NAME_ID, "HARGREAVES",
           "MILDRED", "19630817", CT_FOLDER_MRN, *DICOM.values(), "QUIXANO", "ZEBULON", "Quillfeather"]
SECRETS = [KEY, PASSWORD, TOKEN]


def _rewrite(manifest: Path, change) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        change(r)
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def plant_phi(root: Path) -> tuple[Path, Path]:
    """Synthesise OCT + CT demo data under ``root`` and plant PHI; returns the two manifests."""
    import pydicom

    from medcl.data.synth import synthesize

    synthesize(root, modalities=["oct", "ct"], patients={"oct": 12, "ct": 10}, seed=0)
    oct_dir, ct_dir = root / "oct", root / "ct"

    count = iter(range(10_000))

    def oct_change(r):
        r["report"] = REPORTS[next(count) % len(REPORTS)]
        if r["patient_id"] == "DEMO-OCT-0001":
            r["patient_id"], r["study_id"] = OCT_NAME_ID, OCT_STUDY_ID
        if r["path"] == "images/p0002_scan1.png":
            new = f"images/{OCT_FILE_MRN}_scan1.png"
            (oct_dir / r["path"]).rename(oct_dir / new)
            r["path"] = new

    rows = _rewrite(oct_dir / "manifest.csv", oct_change)
    (oct_dir / "images" / f"{OCT_BAD_FILE_MRN}_scan9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with open(oct_dir / "manifest.csv", "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow(
            {**rows[-1], "path": f"images/{OCT_BAD_FILE_MRN}_scan9.png"})
    with open(ct_dir / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tagged = rows[0]["path"]  # this series gets planted DICOM tags
    renamed = next(r["path"] for r in rows if r["patient_id"] != rows[0]["patient_id"])
    for f in sorted((ct_dir / tagged).iterdir()):
        ds = pydicom.dcmread(f)
        for k, v in DICOM.items():
            setattr(ds, k, v)
        ds.save_as(f)

    def ct_change(r):
        if r["patient_id"] == rows[0]["patient_id"]:
            r["patient_id"] = CT_NAME_ID
        if r["path"] == renamed:
            new = f"series/{CT_FOLDER_MRN}"
            (ct_dir / r["path"]).rename(ct_dir / new)
            r["path"] = new

    _rewrite(ct_dir / "manifest.csv", ct_change)
    return oct_dir / "manifest.csv", ct_dir / "manifest.csv"


TINY = ["runtime.progress=false", "runtime.device=cpu", "model.encoder=tiny_cnn", "model.options={}",
        "model.proj_hidden_dim=32", "model.proj_dim=16", "pretrain.batch_size=8", "data.batch_size=16",
        "classify.n_boot=10", "classify.label_fractions=[1.0]", "pretrain.checkpoint_every_steps=1"]


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory):
    """Both demo pipelines through ``medcl.cli.main`` with planted PHI; what was written and printed."""
    from medcl import cli

    root = tmp_path_factory.mktemp("phi")
    data = root / "data"
    oct_manifest, ct_manifest = plant_phi(data)
    key_file = root / "secret" / "pseudonym.key"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")
    runs, logs, store = root / "runs", root / "logs", root / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    console: dict[str, str] = {}
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MEDCL_PSEUDONYM_KEY", raising=False)
        mp.setenv("MEDCL_PSEUDONYM_KEY_FILE", str(key_file))
        mp.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        mp.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
        mp.chdir(root)
        codes = {}

        for name, pipeline, manifest, extra in (
            ("oct", "oct.yaml", oct_manifest, ["classify.protocols=[linear, finetune]", "classify.baselines=[random]",
                                                  "data.on_error=skip"]),
            # the reports train a tokenizer and a text encoder (text_model.pt is searched too), zero-shot prompts
            ("oct-clip", "oct.yaml", oct_manifest, ["pretrain.method=clip", "classify.protocols=[linear]",
                                                    "pretrain.method_options={text_dim: 16, text_depth: 1, "
                                                    "text_heads: 2, vocab_size: 200}", "classify.baselines=[]",
                                                    "data.on_error=skip"]),
            ("ct", "ct.yaml", ct_manifest, ["classify.protocols=[linear]", "classify.baselines=[]",
                                            "transforms.spatial_size=[16, 16, 8]", "data.val_fraction=0.3",
                                            "data.test_fraction=0.3"]),
        ):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                codes[name] = cli.main([
                    "--log-dir", str(logs), "-v", "run", str(REPO / "pipelines" / "demo" / pipeline), "--smoke",
                    "--set", f"data.manifest={manifest}", "--set", f"runtime.output_dir={runs}",
                    "--set", "stages=[pretrain, classify, calibrate, report]",
                    *[a for s in [*TINY, *extra] for a in ("--set", s)],
                ])
            console[f"{name} stdout"], console[f"{name} stderr"] = out.getvalue(), err.getvalue()
    root_logger = logging.getLogger()
    root_logger.handlers[:] = saved[0]
    root_logger.setLevel(saved[1])
    return {"root": root, "runs": runs, "logs": logs, "store": store, "console": console, "codes": codes}


def test_pipelines_ran(phi_run):
    assert phi_run["codes"] == {"oct": 0, "oct-clip": 0, "ct": 0}, phi_run["console"]
    reports = sorted(phi_run["runs"].rglob("report.html"))
    assert len(reports) == 3
    assert list(phi_run["runs"].rglob("text_model.pt")), "the clip run's text model was written (and is searched)"
    assert list(phi_run["runs"].rglob("ckpt-*.pt")), "checkpoints were written (and are searched)"
    assert list(phi_run["logs"].glob("*.log"))
    assert (phi_run["store"] / "mlflow.db").stat().st_size > 0
    assert list((phi_run["store"] / "mlartifacts").rglob("*"))


def test_no_planted_phi_or_secret_anywhere(phi_run):
    roots = [phi_run["store"], phi_run["runs"], phi_run["logs"]]
    hits = search_bytes(roots, PLANTED + SECRETS, extra=phi_run["console"])
    assert not hits, "\n".join(hits[:50])


def test_bad_row_was_excluded_not_fatal(phi_run):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{phi_run['store'] / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`medcl.kind` = 'pipeline'")
    params = {r.data.params.get("name"): r.data.params for r in runs}
    assert params["demo-oct"]["data.n_excluded"] == "1"


def test_searcher_finds_what_it_looks_for(phi_run, tmp_path):
    """The search is not vacuous: the planted values are where we put them, and it sees inside archives."""
    data = phi_run["root"] / "data"
    hits = search_bytes([data], PLANTED)
    for needle in (OCT_NAME_ID, OCT_FILE_MRN, CT_FOLDER_MRN, DICOM["PatientName"], DICOM["InstitutionName"]):
        assert any(h.endswith(f": {needle}") for h in hits), needle
    import gzip
    import zipfile

    (tmp_path / "x.gz").write_bytes(gzip.compress(b"...quixano^zebulon..."))
    with zipfile.ZipFile(tmp_path / "y.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "in " + KEY)
    hits = search_bytes([tmp_path], PLANTED + SECRETS)
    assert any("x.gz!gunzip" in h for h in hits) and any("y.npz!a.txt" in h for h in hits)


def test_output_permissions_are_private(phi_run):
    runs = phi_run["runs"]
    bad = []
    # the store folder itself was made by this test; everything in it was made by medcl
    for p in [runs, *runs.rglob("*"), phi_run["logs"], *phi_run["logs"].rglob("*"), *phi_run["store"].rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            bad.append(f"{oct(mode)} {p}")
    assert not bad, "\n".join(bad[:30])
    run_dirs = [d for d in runs.iterdir() if d.is_dir() and d.name != "logs"]
    assert run_dirs and all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in run_dirs)
    for f in [*runs.rglob("ckpt-*.pt"), *runs.rglob("config.yaml"), *runs.rglob("encoder.pt")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_key_file_outside_run_folder_is_used(phi_run):
    """The key from MEDCL_PSEUDONYM_KEY_FILE is the one that hashed the ids (split.csv holds its hashes)."""
    import hashlib
    import hmac

    want = "p-" + hmac.new(KEY.encode(), b"DEMO-OCT-0002", hashlib.sha256).hexdigest()[:16]
    splits = [p.read_text() for p in phi_run["runs"].rglob("split.csv")]
    assert any(want in s for s in splits)
