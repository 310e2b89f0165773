"""The MLflow queries the pipeline needs, behind functions that return plain dataclasses.

The pipeline never writes a filter string or reads an MLflow run object.

Tags medcl sets on its runs: ``medcl.kind`` (``pipeline``, ``stage``, ``evaluation``), ``medcl.pipeline_key``
(the resolved config's key), ``medcl.stage`` and ``medcl.outputs`` (a stage's outputs as JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from medcl.tracking.mlflow_tracker import find_runs

KIND, KEY, STAGE, OUTPUTS = "medcl.kind", "medcl.pipeline_key", "medcl.stage", "medcl.outputs"


@dataclass(frozen=True)
class RunRef:
    """A run found in the store: its id, status and, for a stage run, the outputs it recorded.

    ``status`` is ``FINISHED``, ``FAILED``, ``RUNNING``, ...; ``outputs`` is ``None`` when its tag cannot be
    read (the tag is cut at 5000 characters; the stage folder's ``outputs.json`` has them all).
    """

    run_id: str
    status: str
    outputs: dict[str, Any] | None = field(default_factory=dict)


def _ref(run: Any) -> RunRef:
    try:
        outputs = json.loads(run.data.tags.get(OUTPUTS, "{}"))
    except json.JSONDecodeError:
        outputs = None
    return RunRef(run.info.run_id, run.info.status, outputs)


def pipeline_run(uri: str | None, experiment: str, key: str) -> RunRef | None:
    """The newest pipeline run of the config with ``key`` in ``experiment`` (``None`` when there is none)."""
    runs = find_runs(uri, experiment, f"tags.`{KEY}` = '{key}' and tags.`{KIND}` = 'pipeline'", max_results=1)
    return _ref(runs[0]) if runs else None


def stage_runs(uri: str | None, experiment: str, parent_id: str) -> dict[str, RunRef]:
    """The newest run of each stage under the pipeline run ``parent_id``: ``{stage: RunRef}``."""
    out: dict[str, RunRef] = {}
    for run in find_runs(uri, experiment, f"tags.`mlflow.parentRunId` = '{parent_id}'", 100):
        stage = run.data.tags.get(STAGE)
        if stage and stage not in out:  # newest first
            out[stage] = _ref(run)
    return out
