"""Read a finished (or failed) pipeline run back from MLflow: what the report shows.

:class:`RunReader` is a read-only view of one pipeline run and its stage runs (nested runs
tagged ``medcl.stage``): params, latest metric values, tags, statuses and artifacts. The report
notebook reads everything through it, so it never imports mlflow itself (only
``medcl.tracking`` does) and never touches the training code. Missing things come back as
``None`` / empty so that a partial run still gives a report.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcl import phi
from medcl.errors import TrackingError
from medcl.tracking.base import guard_file
from medcl.tracking.mlflow_tracker import _retry, _safe_uri, default_tracking_uri

log = logging.getLogger(__name__)
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+")


def strip_data_uris(text: str) -> str:
    """``text`` without its base64 ``data:`` URIs (embedded images)."""
    return _DATA_URI.sub("data:", text)


class ArtifactUnreadable(TrackingError):
    """An artifact the run has but that cannot be read (server error, permission, corrupt file): not an absence."""


@dataclass
class RunView:
    """One MLflow run as plain Python values (no mlflow objects leak out)."""

    run_id: str
    name: str
    status: str
    start_time: int | None  # ms since the epoch
    end_time: int | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Any) -> RunView:
        """Copy the fields of an MLflow ``Run`` (metrics as floats)."""
        info, data = run.info, run.data
        return cls(run_id=info.run_id, name=info.run_name or "", status=info.status,
                   start_time=info.start_time, end_time=info.end_time, params=dict(data.params),
                   metrics={k: float(v) for k, v in data.metrics.items()}, tags=dict(data.tags))


class RunReader:
    """Read-only access to a pipeline run and its stages.

    Args:
        run_id: the pipeline run, or one of its stage or evaluation runs (then its parent is read).
        tracking_uri: MLflow store; default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        cache_dir: where artifacts are downloaded (default: a fresh temp folder, removed with the reader).
        retries: retries of a failing store call.
        retry_wait_s: wait before the first retry (doubled each time).

    Raises:
        TrackingError: the store cannot be opened or has no run ``run_id``.
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None,
                 retries: int = 2, retry_wait_s: float = 1.0) -> None:
        """Open the store, resolve ``run_id`` to its pipeline run and list the newest run of each stage."""
        from mlflow import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.retries, self.retry_wait_s = retries, retry_wait_s
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="medcl-report-"))
        if cache_dir is None:  # our own temp folder: removed when the reader is collected or the process exits
            weakref.finalize(self, shutil.rmtree, str(self.cache_dir), ignore_errors=True)
        run = self._get(run_id)
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id and run.data.tags.get("medcl.kind") in ("stage", "evaluation"):
            run = self._get(parent_id)
        self.run = RunView.from_run(run)
        self.experiment_id = run.info.experiment_id
        self.stages: dict[str, RunView] = self._stage_runs()

    def _do(self, fn: Any, what: str) -> Any:
        return _retry(fn, what, self.retries, self.retry_wait_s, self.uri)

    def _get(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
                raise TrackingError(f"no run {run_id!r} in the store", where=f"tracking store {_safe_uri(self.uri)}",
                                    fix="check the run id (MLflow UI or the pipeline's summary) and "
                                    "--tracking-uri / MLFLOW_TRACKING_URI") from None
            return self._do(lambda: self.client.get_run(run_id), f"reading run {run_id}")

    def _stage_runs(self) -> dict[str, RunView]:
        runs = self._do(lambda: self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run.run_id}'", max_results=200,
            order_by=["attributes.start_time DESC"]), "searching stage runs")
        out: dict[str, RunView] = {}
        for r in runs:
            stage = r.data.tags.get("medcl.stage")
            if stage and stage not in out:  # newest first: a re-run stage replaces the old one
                out[stage] = RunView.from_run(r)
        return out

    # -- convenience ----------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The pipeline run's id (also when the reader was opened with a stage run's id)."""
        return self.run.run_id

    def stage(self, name: str) -> RunView | None:
        """The newest run of stage ``name``, or ``None`` when the stage never ran."""
        return self.stages.get(name)

    def children(self, kind: str) -> list[RunView]:
        """The pipeline's nested runs tagged ``medcl.kind = kind`` (e.g. ``evaluation``), oldest first."""
        runs = self._do(lambda: self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run.run_id}' and tags.`medcl.kind` = '{kind}'",
            max_results=200, order_by=["attributes.start_time ASC"]), f"searching {kind} runs")
        return [RunView.from_run(r) for r in runs]

    def _run_id_of(self, stage: str | None) -> str | None:
        if stage is not None and stage.startswith("run:"):  # a nested run by id (see children())
            return stage[4:]
        if stage is None:
            return self.run.run_id
        s = self.stages.get(stage)
        return s.run_id if s else None

    def metric_history(self, key: str, stage: str | None = None) -> list[tuple[int, float]]:
        """Every logged value of one metric as ``(step, value)``, by step (empty when never logged)."""
        run_id = self._run_id_of(stage)
        if run_id is None:
            return []
        hist = self._do(lambda: self.client.get_metric_history(run_id, key), f"reading metric {key}")
        return sorted((int(m.step), float(m.value)) for m in hist)

    # -- artifacts ------------------------------------------------------------------------------
    def list_artifacts(self, path: str = "", stage: str | None = None) -> list[str]:
        """Every artifact file under ``path`` (recursive), relative to the run's artifact root."""
        run_id = self._run_id_of(stage)
        if run_id is None:
            return []
        out: list[str] = []
        todo = [path or None]
        while todo:
            p = todo.pop()
            try:
                items = self._do(lambda p=p: self.client.list_artifacts(run_id, p), "listing artifacts")
            except TrackingError as exc:  # a failure, not an empty folder
                raise self._unreadable(p or "the artifact list", stage, f"could not be listed ({exc.what})") from exc
            for it in items:
                (todo if it.is_dir else out).append(it.path)
        return sorted(out)

    def _listed(self, run_id: str, path: str) -> bool | None:
        """Whether the run lists artifact ``path`` (``None``: the listing itself failed)."""
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        try:
            items = self._do(lambda: self.client.list_artifacts(run_id, parent), "listing artifacts")
        except Exception:  # noqa: BLE001 - a failing store: cannot tell
            return None
        return any(it.path == path for it in items)

    def _unreadable(self, path: str, stage: str | None, why: str) -> ArtifactUnreadable:
        what = f"{path} of {'the pipeline run' if stage is None else 'stage ' + stage} {why}"
        log.warning("report: %s", what)
        return ArtifactUnreadable(what, where=f"tracking store {_safe_uri(self.uri)}",
                                  fix="check that the tracking server is up and readable (permissions, disk), then "
                                  "rebuild the report: medcl report RUN_ID")

    def artifact_path(self, path: str, stage: str | None = None) -> Path | None:
        """Download one artifact (file or folder); ``None`` when the run or the artifact is absent.

        Raises:
            ArtifactUnreadable: the run has the artifact (or the store cannot even list it) but it cannot be
                downloaded — a failure, not an absence.
        """
        run_id = self._run_id_of(stage)
        if run_id is None:
            return None
        dst = self.cache_dir / (stage or "_pipeline").replace(":", "_")
        local = dst / path
        if local.exists():
            return local
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except Exception as exc:  # noqa: BLE001 - absent artifacts raise various mlflow/OS errors
            listed = self._listed(run_id, path)
            if listed is False:  # not produced by this run
                log.debug("report: artifact %s of %s not logged", path, stage or "pipeline")
                return None
            reason = f"{type(exc).__name__}: {str(exc)[:160]}"
            raise self._unreadable(path, stage, f"exists but could not be downloaded ({reason})" if listed else
                                   f"could not be listed or downloaded ({reason})") from exc

    def artifact_json(self, path: str, stage: str | None = None) -> Any | None:
        """A JSON artifact parsed (NaN allowed), or ``None`` when absent or unreadable."""
        p = self.artifact_path(path, stage)
        if p is None or not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._unreadable(path, stage, f"is corrupt: not valid JSON ({exc})") from exc

    def artifact_bytes(self, path: str, stage: str | None = None) -> bytes | None:
        """The bytes of an artifact of the pipeline (or of ``stage``), or ``None`` when it is missing."""
        p = self.artifact_path(path, stage)
        return p.read_bytes() if p is not None and p.is_file() else None

    # -- writing the report back --------------------------------------------------------------------
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file (the HTML report) to the pipeline run; text passes the PHI guard first.

        For HTML the embedded ``data:`` images are left out of the check: base64 is not text a
        reader sees, and short numeric identifiers would match it by chance.
        """
        p = Path(local_path)
        if p.suffix.lower() in (".html", ".htm"):
            phi.check_value(strip_data_uris(p.read_text(encoding="utf-8", errors="replace")),
                            where=f"artifact {p.name}")
        else:
            guard_file(p)
        self._do(lambda: self.client.log_artifact(self.run.run_id, str(p), artifact_path), f"logging {p.name}")
