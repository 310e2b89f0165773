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


def _fake_runs(bq, monkeypatch, pipeline, reference) -> None:
    """The benchmark's runs replaced by ``pipeline`` and ``reference``; the demo data by empty manifests."""
    import medcl.data.synth

    def fake_synth(out, modalities, **kwargs):
        for m in modalities:
            (Path(out) / m).mkdir(parents=True, exist_ok=True)
            (Path(out) / m / "manifest.csv").write_text("patient_id,path\n")

    monkeypatch.setattr(bq, "run_pipeline_kind", pipeline)
    monkeypatch.setattr(bq, "run_reference", reference)
    monkeypatch.setattr(medcl.data.synth, "synthesize", fake_synth)


@pytest.mark.parametrize("where", ["inside a pipeline", "outside a pipeline"])
def test_sigterm_stops_the_benchmark_and_leaves_the_run_pending(bq, tmp_path, monkeypatch, where):
    """The first run finishes and is recorded; SIGTERM arrives during the second (inside a pipeline, which turns it
    into its own DistributedError, or during a plain reference loop): the benchmark returns 143 at once, the second
    run is pending, not failed, and nothing after it ran."""
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

    _fake_runs(bq, monkeypatch, fake_run, fake_run)
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


def test_rows_measured_before_their_demo_data_changed_are_run_again(bq, tmp_path):
    """A real git history: a row measured at the commit before the data change is stale, one at or after it is not,
    another modality's never; a commit the history does not hold (rebased away) is stale too, unless the change's own
    commit is unknown as well (git cannot tell)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True,
                              env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                   "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout.strip()

    git("init", "-q")
    shas = []
    for k in range(3):
        (tmp_path / "f.txt").write_text(str(k))
        git("add", "f.txt")
        git("commit", "-q", "-m", f"c{k}")
        shas.append(git("rev-parse", "HEAD"))
    changed = {"fundus": (shas[1][:7], "nuisances enlarged")}

    def why(modality: str, commit: str) -> str | None:
        return bq.stale_reason({"modality": modality, "commit": commit}, changed, tmp_path)

    before = why("fundus", shas[0])
    assert before is not None and shas[0][:12] in before and shas[1][:7] in before and "nuisances enlarged" in before
    assert why("fundus", shas[1]) is None and why("fundus", shas[2] + "+dirty") is None
    assert why("oct", shas[0]) is None
    unknown = why("fundus", "0" * 40)
    assert unknown is not None and "does not hold" in unknown and shas[1][:7] in unknown
    assert bq.stale_reason({"modality": "fundus", "commit": shas[0]}, {"fundus": ("f" * 7, "x")}, tmp_path) is None
    recipe = bq.stale_reason({"modality": "ct", "commit": shas[0]}, {"ct": (shas[2][:7], "views", "recipe")},
                             tmp_path)
    assert recipe is not None and "demo recipe changed" in recipe and "demo data" not in recipe
    # several changes of one modality, the later one touching the pipeline rows only (a fine-tune setting): a
    # reference row measured between the two still counts, a pipeline row measured there does not
    two = {"mri": [(shas[1][:7], "views", "recipe"), (shas[2][:7], "fine-tune", "recipe", ("pipeline",))]}

    def why_kind(kind: str, commit: str) -> str | None:
        return bq.stale_reason({"modality": "mri", "kind": kind, "commit": commit}, two, tmp_path)

    assert why_kind("reference", shas[1]) is None and why_kind("reference", shas[2]) is None
    assert "views" in (why_kind("reference", shas[0]) or "") and "views" in (why_kind("pipeline", shas[0]) or "")
    pipe = why_kind("pipeline", shas[1])
    assert pipe is not None and "fine-tune" in pipe and shas[2][:7] in pipe
    assert why_kind("pipeline", shas[2]) is None


def test_an_ablation_whose_source_checkpoint_is_gone_runs_its_source_again_first(bq, tmp_path):
    """An ablation re-uses its source row's checkpoint: when the work folder was cleaned since, the source row runs
    again (ordered as the ablation is); a source whose checkpoint is kept does not; a finished ablation whose source
    runs again runs again too (its numbers belong to the old checkpoint)."""
    abl = {"kind": "ablation", "modality": "ct", "method": "dense_decoder_not_handed_on", "measure": "segment"}
    src = {"kind": "method", "modality": "ct", "method": "dense"}
    todo = [{**src, "seed": 0}, {**src, "seed": 1}, {**abl, "seed": 0}, {**abl, "seed": 1}]
    kept = tmp_path / "run1" / "pretrain"
    kept.mkdir(parents=True)
    (kept / "encoder.pt").write_bytes(b"weights")
    done = {"method/ct/dense/seed0": {"split": str(tmp_path / "run0" / "split.csv")},  # its checkpoint is gone
            "method/ct/dense/seed1": {"split": str(tmp_path / "run1" / "split.csv")}}
    again: set[str] = set()
    assert bq.sources_to_run_again(todo, done, again) == {
        "method/ct/dense/seed0": "ablation/ct/dense_decoder_not_handed_on/seed0"}
    assert again == {"method/ct/dense/seed0"}

    done["ablation/ct/dense_decoder_not_handed_on/seed0"] = {"wall_s": 1.0}  # finished, checkpoint gone since
    done["ablation/ct/dense_decoder_not_handed_on/seed1"] = {"wall_s": 1.0}  # finished, its source kept
    again = set()
    assert bq.sources_to_run_again(todo, done, again) == {}  # a finished ablation needs no checkpoint
    assert again == set()
    again = {"method/ct/dense/seed1"}  # --rerun method/ct/dense/seed1
    bq.sources_to_run_again(todo, done, again)
    assert again == {"method/ct/dense/seed1", "ablation/ct/dense_decoder_not_handed_on/seed1"}


def test_an_ablation_ordered_first_runs_its_pending_or_stale_source_just_before_it(bq, tmp_path, monkeypatch):
    """``--first ablation/mri/finetune_layer_decay_0.75``: its source, the MRI pipeline row, is stale (measured before
    a recipe change that touches pipeline rows): the pipeline runs first, in the ablation's place, and the ablation
    then fine-tunes the checkpoint that run handed on instead of failing for want of one."""
    order, sources = [], {}

    def fake_pipeline(r, work, manifest, quick, source=None):
        key = bq.run_key(r)
        order.append(key)
        if r["kind"] == "ablation":
            sources[key] = source
        return {"classify": [], "split": str(tmp_path / key.replace("/", "_") / "split.csv")}

    _fake_runs(bq, monkeypatch, fake_pipeline, lambda *a, **k: {"result": {}})
    monkeypatch.setattr(bq, "stale_reason", lambda row, *a, **k: "recipe changed" if row.get("kind") == "pipeline"
                        else None)
    out = tmp_path / "quality.json"
    old = {"key": "pipeline/mri/seed0", "kind": "pipeline", "modality": "mri", "seed": 0, "commit": "0" * 40,
           "split": str(tmp_path / "gone" / "split.csv"), "classify": []}
    out.write_text(json.dumps({"meta": {"quick": False}, "rows": [old]}))
    assert bq.main(["--out", str(out), "--seeds", "1", "--modalities", "mri", "--no-methods", "--first",
                    "ablation/mri/finetune_layer_decay_0.75", "--budget-min", "5", "--work",
                    str(tmp_path / "work")]) == 0
    assert order[:2] == ["pipeline/mri/seed0", "ablation/mri/finetune_layer_decay_0.75/seed0"]
    assert sources["ablation/mri/finetune_layer_decay_0.75/seed0"]["split"].endswith(
        "pipeline_mri_seed0/split.csv")  # the new run's, not the stale row's
    # unit: a pending source (not done) is ordered with its ablation, and is not "run again" (it runs anyway)
    todo = [{"kind": "pipeline", "modality": "mri", "seed": 1},
            {"kind": "ablation", "modality": "mri", "seed": 1, "method": "finetune_layer_decay_0.75",
             "measure": "pretrained"}]
    again: set[str] = set()
    assert bq.sources_to_run_again(todo, {}, again) == {
        "pipeline/mri/seed1": "ablation/mri/finetune_layer_decay_0.75/seed1"}
    assert again == set()


def test_a_reference_ordered_first_uses_its_finished_pipeline_run(bq, tmp_path, monkeypatch):
    """``--first reference/oct`` runs the references before the loop reaches their (finished) pipeline run: they
    take its split and budgets from the results file, and the pipeline does not run again."""

    seen, ran = {}, []

    def fake_reference(r, pipe, *args, **kwargs):
        seen[bq.run_key(r)] = pipe
        return {"result": {}}

    def fake_pipeline(r, *args, **kwargs):
        ran.append(bq.run_key(r))
        return {"classify": []}

    _fake_runs(bq, monkeypatch, fake_pipeline, fake_reference)
    out = tmp_path / "quality.json"
    (tmp_path / "run" / "pretrain").mkdir(parents=True)
    (tmp_path / "run" / "pretrain" / "encoder.pt").write_bytes(b"weights")  # kept: no ablation needs it run again
    pipe = {"key": "pipeline/oct/seed0", "kind": "pipeline", "modality": "oct", "seed": 0, "commit": bq.git_commit(),
            "split": str(tmp_path / "run" / "split.csv"), "classify": []}
    out.write_text(json.dumps({"meta": {"quick": False}, "rows": [pipe]}))
    assert bq.main(["--out", str(out), "--seeds", "1", "--modalities", "oct", "--no-methods", "--first",
                    "reference/oct", "--work", str(tmp_path / "work")]) == 0
    assert set(seen) == {"reference/oct/supervised/seed0", "reference/oct/simclr/seed0"}
    assert all(p is not None and p["split"] == pipe["split"] for p in seen.values())
    assert "pipeline/oct/seed0" not in ran
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    assert "error" not in rows["reference/oct/supervised/seed0"]
