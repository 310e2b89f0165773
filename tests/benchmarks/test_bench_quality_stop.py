"""Stopping the quality benchmark with SIGTERM stops it: the run under way is not recorded as a failure."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bq():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_quality
    finally:
        sys.path.pop(0)
    before = signal.getsignal(signal.SIGTERM)
    yield bench_quality
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("where", ["inside a pipeline", "outside a pipeline"])
def test_sigterm_stops_the_benchmark_and_leaves_the_run_pending(bq, tmp_path, monkeypatch, where):
    """The first run finishes and is recorded; SIGTERM arrives during the second (inside a pipeline, which turns it
    into its own DistributedError, or during a plain reference loop): the benchmark returns 143 at once, the second
    run is pending, not failed, and nothing after it ran."""
    import medcl.data.synth
    from medcl.pipeline import _sigterm_fails_the_run

    calls = []

    def fake_run(r, *args, **kwargs):
        calls.append(bq.run_key(r))
        if len(calls) == 2:
            if where == "inside a pipeline":
                with _sigterm_fails_the_run():
                    os.kill(os.getpid(), signal.SIGTERM)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the run")
        return {"classify": []}

    def fake_synth(out, modalities, **kwargs):
        for m in modalities:
            (Path(out) / m).mkdir(parents=True, exist_ok=True)
            (Path(out) / m / "manifest.csv").write_text("patient_id,path\n")

    monkeypatch.setattr(bq, "run_pipeline_kind", fake_run)
    monkeypatch.setattr(bq, "run_reference", fake_run)
    monkeypatch.setattr(medcl.data.synth, "synthesize", fake_synth)
    out = tmp_path / "quality.json"
    rc = bq.main(["--out", str(out), "--seeds", "1", "--modalities", "oct", "--no-methods",
                  "--work", str(tmp_path / "work")])
    assert rc == 128 + signal.SIGTERM
    assert len(calls) == 2
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    first, second = calls
    assert "error" not in rows[first] and rows[first]["commit"]
    assert rows[second].get("skipped") == "pending" and "error" not in rows[second]
    assert not any("error" in r for r in rows.values())


def test_a_real_failure_is_still_recorded(bq):
    """Only SIGTERM stops the benchmark: another DistributedError is a failed run."""
    from medcl.errors import DistributedError

    assert not bq.terminated(DistributedError("rank 1 lost its connection", where="stage pretrain"))
    try:
        try:
            raise DistributedError("the process was terminated (SIGTERM)", where="stage pretrain")
        except DistributedError as inner:
            raise RuntimeError("stage pretrain failed") from inner
    except RuntimeError as wrapped:
        assert bq.terminated(wrapped)
