"""MLflow tracker: the only module in medcl that imports mlflow.

* ``MLFLOW_TRACKING_URI`` is honoured; ``tracking.uri`` in the pipeline overrides it; with
  neither, runs go to an embedded SQLite store ``./mlflow.db`` with artifacts in ``./mlartifacts``
  (what MLflow 3 recommends for a local store; the plain file store is deprecated).
* Runs are created with :class:`mlflow.MlflowClient` (no global "active run"), so a stage's
  nested run is simply a run tagged ``mlflow.parentRunId``, and a second run can never log
  into the first by accident.
* Every call is retried; a call that still fails raises :class:`TrackingError` — a metric is
  never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medcl import phi
from medcl.errors import TrackingError
from medcl.tracking.base import guard_file, guard_params

log = logging.getLogger(__name__)
T = TypeVar("T")
#: ``scheme://user:password@`` in a URI or an error message
_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
# MLflow's own HTTP client retries 7 times with backoff (minutes against a dead server); medcl
# retries each call itself (tracking.retries), so keep MLflow's layer short unless the user set it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
MAX_PARAM_LEN = 6000


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """The URI medcl uses: ``MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    wd = Path(workdir or Path.cwd()).resolve()
    return f"sqlite:///{wd / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None  # a server decides (proxied artifacts) or the store's default


def _retry(fn: Callable[[], T], what: str, retries: int, wait: float, uri: str) -> T:
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return fn()
        except phi.PHIError:
            raise
        except Exception as exc:  # mlflow raises many types (RestException, ConnectionError, ...)
            last = exc
            if attempt < retries:
                log.warning("tracking: %s failed (%s), retry %d/%d", what, type(exc).__name__, attempt + 1, retries)
                time.sleep(wait * (2**attempt))
    detail = _CREDENTIALS.sub(r"\1***@", str(last))[:300]
    raise TrackingError(
        f"{what} failed after {retries + 1} attempts: {type(last).__name__}: {detail}",
        where=f"tracking store {_safe_uri(uri)}",
        fix="check that the MLflow server is running and reachable (MLFLOW_TRACKING_URI), or raise tracking.retries",
    )


def _safe_uri(uri: str) -> str:
    """Hide credentials embedded in a URI (``http://user:pass@host``)."""
    return _CREDENTIALS.sub(r"\1***@", uri)


class MLflowTracker:
    """A tracker bound to one MLflow run."""

    def __init__(self, client: Any, uri: str, run_id: str, experiment_id: str, retries: int = 3,
                 retry_wait_s: float = 2.0) -> None:
        """Bind to an existing run; use :meth:`start` or :meth:`child` to create one."""
        self.client = client
        self.uri = uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.retries = retries
        self.retry_wait_s = retry_wait_s

    # -- construction ---------------------------------------------------------------------
    @staticmethod
    def connect(uri: str | None = None, experiment: str = "medcl", retries: int = 3,
                retry_wait_s: float = 2.0) -> tuple[Any, str, str]:
        """Check the store answers and return ``(client, uri, experiment_id)``; fail clearly if not."""
        from mlflow import MlflowClient

        uri = uri or default_tracking_uri()
        client = MlflowClient(tracking_uri=uri)

        def _exp() -> str:
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                return exp.experiment_id
            return client.create_experiment(experiment, artifact_location=_artifact_root(uri))

        exp_id = _retry(_exp, f"opening experiment {experiment!r}", retries, retry_wait_s, uri)
        return client, uri, exp_id

    @classmethod
    def start(cls, name: str, *, uri: str | None = None, experiment: str = "medcl", tags: dict[str, str] | None = None,
              run_id: str | None = None, retries: int = 3, retry_wait_s: float = 2.0) -> MLflowTracker:
        """Start a new top-level run, or re-open ``run_id`` (resume) and mark it running."""
        client, uri, exp_id = cls.connect(uri, experiment, retries, retry_wait_s)
        if run_id:
            _retry(lambda: client.update_run(run_id, status="RUNNING"), "re-opening run", retries, retry_wait_s, uri)
            return cls(client, uri, run_id, exp_id, retries, retry_wait_s)
        guard_params(tags or {})
        run = _retry(lambda: client.create_run(exp_id, run_name=name, tags=tags or {}), "creating run",
                     retries, retry_wait_s, uri)
        return cls(client, uri, run.info.run_id, exp_id, retries, retry_wait_s)

    def _do(self, fn: Callable[[], T], what: str) -> T:
        return _retry(fn, what, self.retries, self.retry_wait_s, self.uri)

    @property
    def active(self) -> bool:
        """Always True: what is logged is kept in the MLflow store."""
        return True

    def child(self, name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> MLflowTracker:
        """A nested run under this one (re-opened when ``run_id`` is given)."""
        if run_id:
            self._do(lambda: self.client.update_run(run_id, status="RUNNING"), "re-opening stage run")
            return MLflowTracker(self.client, self.uri, run_id, self.experiment_id, self.retries, self.retry_wait_s)
        t = {"mlflow.parentRunId": self.run_id, **(tags or {})}
        guard_params(t)
        run = self._do(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=t), "creating stage run")
        return MLflowTracker(self.client, self.uri, run.info.run_id, self.experiment_id, self.retries, self.retry_wait_s)

    # -- logging ----------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (PHI-guarded, truncated to MLflow's length limit) in batches of 100."""
        from mlflow.entities import Param

        clean = guard_params(params)
        items = [Param(k, v[:MAX_PARAM_LEN]) for k, v in clean.items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            self._do(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk), "logging params")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (0 when ``None``) in batches of 500; names pass the PHI guard."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            phi.check_value(k, where="metric name")
            items.append(Metric(k, float(v), now, int(step or 0)))
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            self._do(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk), "logging metrics")

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (PHI-guarded) in one batch."""
        from mlflow.entities import RunTag

        clean = guard_params(tags)
        items = [RunTag(k, v) for k, v in clean.items()]
        self._do(lambda: self.client.log_batch(self.run_id, tags=items), "setting tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under ``artifact_path`` after the PHI check."""
        p = Path(path)
        guard_file(p)
        if p.is_dir():
            self._do(lambda: self.client.log_artifacts(self.run_id, str(p), artifact_path), f"logging {p.name}/")
        else:
            self._do(lambda: self.client.log_artifact(self.run_id, str(p), artifact_path), f"logging {p.name}")

    def log_text(self, text: str, name: str) -> None:
        """Upload ``text`` as the artifact ``name`` after the PHI check."""
        phi.check_value(text, where=f"artifact {name}")
        self._do(lambda: self.client.log_text(self.run_id, text, name), f"logging {name}")

    def log_dict(self, obj: Any, name: str) -> None:
        """Upload ``obj`` as YAML (``.yaml``/``.yml`` names) or indented JSON (see :meth:`log_text`)."""
        text = json.dumps(obj, indent=2, default=str) if not name.endswith((".yaml", ".yml")) else None
        if text is None:
            import yaml

            text = yaml.safe_dump(obj, sort_keys=False)
        self.log_text(text, name)

    def log_figure(self, figure: Any, name: str) -> None:
        """Upload a matplotlib figure as the artifact ``name``."""
        self._do(lambda: self.client.log_figure(self.run_id, figure, name), f"logging figure {name}")

    def log_model(self, model: Any, name: str, *, signature: Any = None, input_example: Any = None,
                  code_paths: list[str] | None = None, pyfunc_model: Any = None, artifacts: dict[str, str] | None = None,
                  registered_model_name: str | None = None, extra_pip_requirements: list[str] | None = None,
                  metadata: dict[str, Any] | None = None, pip_requirements: list[str] | None = None) -> str:
        """Log a model to this run; a pyfunc wrapper when ``pyfunc_model`` is given, else the pytorch flavour.

        ``signature`` may be an MLflow signature or an ``(input, output)`` pair of examples to infer it from.
        Returns the model URI (``models:/...`` in MLflow 3).
        """
        import mlflow

        if isinstance(signature, tuple):  # (input example, output example): infer it here
            from mlflow.models import infer_signature

            signature = infer_signature(*signature)

        def _log() -> str:
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id, nested=True):
                if pyfunc_model is not None:
                    info = mlflow.pyfunc.log_model(
                        name=name, python_model=pyfunc_model, artifacts=artifacts, signature=signature,
                        input_example=input_example, code_paths=code_paths,
                        registered_model_name=registered_model_name, extra_pip_requirements=extra_pip_requirements,
                        metadata=metadata, pip_requirements=pip_requirements,
                    )
                else:
                    # pickled, not torch.export's pt2 (MLflow 3's default): the loaded model is the nn.Module
                    # itself, so it takes any batch size and keeps its methods (loading needs medcl importable)
                    info = mlflow.pytorch.log_model(
                        model, name=name, signature=signature, input_example=input_example,
                        registered_model_name=registered_model_name, extra_pip_requirements=extra_pip_requirements,
                        metadata=metadata, pip_requirements=pip_requirements, serialization_format="pickle",
                    )
            return info.model_uri

        return self._do(_log, f"logging model {name}")

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``)."""
        self._do(lambda: self.client.set_terminated(self.run_id, status=status), "ending run")

    # -- queries ------------------------------------------------------------------------------
    def search(self, filter_string: str, max_results: int = 50) -> list[Any]:
        """Runs of this run's experiment matching ``filter_string``, newest first."""
        return self._do(
            lambda: self.client.search_runs([self.experiment_id], filter_string, max_results=max_results,
                                            order_by=["attributes.start_time DESC"]),
            "searching runs",
        )

    def download(self, artifact_path: str, dst: str | Path | None = None) -> Path:
        """Download an artifact of this run into ``dst`` (a new temporary folder by default); its local path."""
        dst = str(dst or tempfile.mkdtemp(prefix="medcl-"))
        return Path(self._do(lambda: self.client.download_artifacts(self.run_id, artifact_path, dst), "downloading"))


def find_runs(uri: str | None, experiment: str, filter_string: str, max_results: int = 50) -> list[Any]:
    """Search runs of ``experiment`` (newest first); [] when the experiment does not exist."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri or default_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string, max_results=max_results,
                              order_by=["attributes.start_time DESC"])
