"""The pipeline's run lookups: stage outputs read from the tag, or from the run folder when the tag was cut."""

import json
from types import SimpleNamespace

import pytest

from medcl.errors import StageError
from medcl.pipeline import _done_outputs
from medcl.stages.context import RunContext
from medcl.tracking import MLflowTracker, NullTracker
from medcl.tracking.protocol import Tracker
from medcl.tracking.runs import OUTPUTS, RunRef, _ref


def _run(tags):
    return SimpleNamespace(info=SimpleNamespace(run_id="r1", status="FINISHED"), data=SimpleNamespace(tags=tags))


def test_outputs_tag_parsed_and_a_cut_tag_is_none():
    full = {"encoder": "/runs/x/pretrain/encoder.pt", "summary": []}
    assert _ref(_run({OUTPUTS: json.dumps(full)})) == RunRef("r1", "FINISHED", full)
    assert _ref(_run({OUTPUTS: json.dumps(full)[:20]})).outputs is None  # cut at the tag's length limit
    assert _ref(_run({})).outputs == {}


def test_a_cut_tag_falls_back_to_the_stage_folder(tmp_path):
    ctx = RunContext(cfg=None, key="k", run_dir=tmp_path, data=None, device=None)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "outputs.json").write_text(json.dumps({"encoder": "e.pt"}))
    assert _done_outputs(ctx, "pretrain", RunRef("r1", "FINISHED", None)) == {"encoder": "e.pt"}
    assert _done_outputs(ctx, "pretrain", RunRef("r1", "FINISHED", {"a": 1})) == {"a": 1}  # the tag wins
    with pytest.raises(StageError, match="outputs cannot be read"):
        _done_outputs(ctx, "classify", RunRef("r2", "FINISHED", None))


def test_both_trackers_satisfy_the_protocol():
    assert isinstance(NullTracker("x"), Tracker)
    assert all(hasattr(MLflowTracker, m) for m in ("child", "log_params", "log_metrics", "set_tags", "log_dict",
                                                   "log_artifact", "log_figure", "log_text", "end"))
