"""The PHI guard's matching rules, secrets in configs/logs/params, and private file permissions.

The guard must refuse every registered identifier, yet never a float that happens to contain an
MRN's digits nor a word that is also part of a demo patient name ("DEMO^PATIENT0001" must not stop
a pipeline called ``demo-ct``). Secrets (the pseudonymisation key, tracking passwords and tokens,
passwords inside URIs) must never reach the resolved config, MLflow params or a log line.
"""

from __future__ import annotations

import logging
import stat

import pytest
from reliability_helpers import REPO

from medcl import phi
from medcl.errors import PHIError

PIPELINE = REPO / "pipelines" / "demo" / "oct.yaml"


# ------------------------------------------------------------------------------------ guard matching
def test_numeric_ids_match_as_tokens_never_inside_numbers():
    phi.REGISTRY.add("4471923")
    for text in ("mrn 4471923", "id=4471923.", "(4471923)", "4471923_scan.png", "a 4471923"):
        assert phi.REGISTRY.find(text) == "4471923", text
    for text in ("0.4471923", "1.44719231", "44719230", "x4471923", "4471923.5", "24471923"):
        assert phi.REGISTRY.find(text) is None, text


def test_values_match_case_insensitively_but_not_inside_longer_words():
    phi.REGISTRY.add("SMITH^JOHN-19570412")
    phi.REGISTRY.add("MRN1234567")
    assert phi.REGISTRY.find("patient smith^john-19570412 seen") == "smith^john-19570412"
    assert phi.REGISTRY.find("auc_MRN1234567") == "MRN1234567"  # '_' separates tokens
    assert phi.REGISTRY.find("XMRN1234567") is None and phi.REGISTRY.find("MRN12345678") is None


def test_dicom_names_stop_the_tracker_whole_and_are_redacted_by_component():
    import pydicom

    ds = pydicom.Dataset()
    ds.PatientName = "QUIXANO^ZEBULON"
    ds.PatientID = "MRN9917362"
    ds.InstitutionName = "Demo General Hospital C"
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    phi.register_dicom_phi(ds)
    with pytest.raises(PHIError):
        phi.check_value("name QUIXANO^ZEBULON")
    with pytest.raises(PHIError):
        phi.check_value("at demo general hospital c")
    # components: redacted from logs, but common words never stop a run
    phi.check_value("zebulon")  # a given name alone may be an ordinary word: no PHIError
    assert phi.redact("Dr Quixano and zebulon") == "Dr [PHI] and [PHI]"
    for harmless in ("name: demo-ct", "General results", "the hospital network", "pipeline demo"):
        phi.check_value(harmless)
        assert phi.redact(harmless) == harmless


def test_identifier_tokens_in_file_names_are_registered():
    phi.register_path_parts("/data/export/series/MRN5582034/img_0001.dcm", "/data/export")
    phi.register_path_parts("/data/export/images/SMITH-MRN4471923_scan1.png", "/data/export")
    for text in ("folder MRN5582034", "file SMITH-MRN4471923_scan1", "id MRN4471923 only"):
        with pytest.raises(PHIError):
            phi.check_value(text)
    for text in ("images 12", "series", "export 0001"):  # structure words and short parts stay usable
        phi.check_value(text)


# ------------------------------------------------------------------------------------ secrets
def test_secrets_are_scrubbed_refused_and_redacted(monkeypatch, tmp_path):
    key, password = "kEy-8d1f0c7a9e2b44", "pw-Zx81-q0q0-long"
    monkeypatch.setenv("MEDCL_PSEUDONYM_KEY", key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    cfg = {"tracking": {"uri": "https://alice:hunter2-secret@mlflow.example.org/"}, "note": f"x{password}y"}
    clean = phi.scrub_secrets(cfg)
    assert clean == {"tracking": {"uri": "https://alice:***@mlflow.example.org/"}, "note": "x***y"}
    for bad in (key, password, "postgresql://mlflow:dbpass99@db:5432/mlflow"):
        with pytest.raises(PHIError, match="contains a secret"):
            phi.check_value(f"value {bad}")
    assert key not in phi.redact(f"using key {key}") and "[secret]" in phi.redact(f"using key {key}")
    monkeypatch.delenv("MEDCL_PSEUDONYM_KEY")
    key_file = tmp_path / "k.key"
    key_file.write_text("from-a-file-0123456789\n")
    monkeypatch.setenv("MEDCL_PSEUDONYM_KEY_FILE", str(key_file))
    assert "from-a-file-0123456789" not in phi.redact("k=from-a-file-0123456789")
    assert phi.pseudonymize("P1") != phi.pseudonymize("P2")


def test_missing_key_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDCL_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("MEDCL_PSEUDONYM_KEY_FILE", str(tmp_path / "nope.key"))
    with pytest.raises(PHIError, match="key file .* does not exist or cannot be read"):
        phi.pseudonymize("P1")


def test_resolved_config_params_and_printed_config_hold_no_credentials(tmp_path, monkeypatch, capsys):
    from medcl import cli
    from medcl.config import flatten, resolved_dict
    from medcl.pipeline import load_pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-0d9c8b7a6f5e4d3c")
    uri = "http://alice:s3cr3t-pass-77@mlflow.hospital.org:5000"
    cfg = load_pipeline(PIPELINE, [f"tracking.uri={uri}", "description=token tok-0d9c8b7a6f5e4d3c here"])
    assert cfg.tracking.uri == uri  # the run itself still connects with the credentials
    text = repr(resolved_dict(cfg)) + repr(flatten(resolved_dict(cfg)))
    assert "s3cr3t-pass-77" not in text and "tok-0d9c8b7a6f5e4d3c" not in text
    assert resolved_dict(cfg)["tracking"]["uri"] == "http://alice:***@mlflow.hospital.org:5000"
    code = cli.main(["--log-dir", str(tmp_path / "logs"), "config", str(PIPELINE), "--set", f"tracking.uri={uri}"])
    out = capsys.readouterr().out
    assert code == 0 and "alice:***@mlflow.hospital.org" in out and "s3cr3t" not in out


def test_log_lines_and_files_are_redacted_and_private(tmp_path, monkeypatch):
    from medcl.logs import setup_logging

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-in-a-log-line-991")
    phi.REGISTRY.add("MRN7731002")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        path = setup_logging(tmp_path / "logs")
        log = logging.getLogger("medcl.test")
        log.warning("patient %s, password %s, uri %s", "MRN7731002", "pw-in-a-log-line-991",
                    "https://bob:hunter22x@host/")
        try:
            raise RuntimeError("failed for MRN7731002")
        except RuntimeError:
            log.exception("boom")
        for h in root.handlers:
            h.flush()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    text = path.read_text()
    assert "MRN7731002" not in text and "pw-in-a-log-line-991" not in text and "hunter22x" not in text
    assert "patient [PHI], password [secret], uri https://bob:[secret]@host/" in text
    assert "RuntimeError: failed for [PHI]" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_pipeline_umask_is_restored(tmp_path, tracking_uri, monkeypatch):
    """run_pipeline makes its files owner-only, and gives the process its umask back (even on failure)."""
    import os

    from medcl.errors import MedclError
    from medcl.pipeline import load_pipeline, run_pipeline

    old = os.umask(0o022)
    try:
        cfg = load_pipeline(PIPELINE, [f"data.manifest={tmp_path / 'missing.csv'}"])
        with pytest.raises(MedclError):
            run_pipeline(cfg)
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)
