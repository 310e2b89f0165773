"""Everything the report shows, read once from MLflow (through :class:`~medcl.tracking.reader.RunReader`).

Nothing here trains or re-evaluates a model: values are the logged params, metrics and artifacts
of the pipeline run and its stage runs. Each artifact is loaded lazily and is ``None`` when the
run does not have it (a partial or failed run), so every report section can say what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from medcl.metric_keys import fraction_tag, metric_key, model_tag
from medcl.tracking.reader import RunReader

#: what the stages' model names mean, in words
MODEL_NAMES = {
    "ssl": "pretrained encoder",
    "random": "random-init encoder (baseline)",
    "raw": "raw pixels (baseline)",
    "scratch": "trained from scratch (baseline)",
}
PROTOCOL_NAMES = {"linear": "linear probe", "knn": "k-nearest neighbours", "finetune": "fine-tuned"}


@dataclass
class Metric:
    """One logged metric with its 95 % CI (``nan`` when not logged)."""

    key: str
    value: float
    ci_low: float
    ci_high: float


class ReportData:
    """The run's logged facts, loaded on first use.

    Args:
        reader: a :class:`~medcl.tracking.reader.RunReader` of the pipeline run.
    """

    def __init__(self, reader: Any) -> None:
        """Keep the reader and take the run, its stage runs and the pipeline params from it."""
        self.reader = reader
        self.run = reader.run
        self.stages = reader.stages
        self.params = dict(reader.run.params)

    @classmethod
    def load(cls, run_id: str, tracking_uri: str | None = None) -> ReportData:
        """Open the pipeline run ``run_id`` (a stage run's id resolves to its pipeline) in the MLflow store.

        Raises:
            TrackingError: the store cannot be read or has no such run.
        """
        return cls(RunReader(run_id, tracking_uri))

    # -- params ----------------------------------------------------------------------------------------
    def param(self, key: str, default: Any = None) -> Any:
        """A param of the pipeline run, JSON-decoded when possible (``""`` counts as absent)."""
        v = self.params.get(key)
        if v is None or v == "":
            return default
        try:
            return json.loads(v)
        except ValueError:
            return v

    @property
    def classes(self) -> list[str]:
        """Class names in label order: the classify stage's setup, else the data params (may be empty)."""
        setup = self.classify_setup or {}
        return list(setup.get("classes") or self.param("data.class_names", []) or self.param("data.classes", []) or [])

    @property
    def task(self) -> str:
        """Task kind (``binary``, ``multiclass``, ``ordinal``, ``multilabel``); ``multiclass`` when unrecorded."""
        return str((self.classify_setup or {}).get("task") or self.param("data.task", "multiclass"))

    @property
    def smoke(self) -> bool:
        """Whether the run is a smoke test (tag ``medcl.smoke``): its numbers mean nothing."""
        return self.run.tags.get("medcl.smoke") == "true"

    def stage_status(self, name: str) -> str:
        """``FINISHED`` / ``FAILED`` / ``RUNNING`` / ``not run``."""
        s = self.stages.get(name)
        return s.status if s else "not run"

    def finished(self, name: str) -> bool:
        """Whether stage ``name`` finished; the report stage counts once it exists (it is this report)."""
        return self.stage_status(name) == "FINISHED" or (name == "report" and name in self.stages)

    # -- artifacts ---------------------------------------------------------------------------------------
    @cached_property
    def data_summary(self) -> dict | None:
        """``data_summary.json``: patients, samples and per-class counts per split, or ``None``."""
        return self.reader.artifact_json("data_summary.json")

    @cached_property
    def site_summary(self) -> dict | None:
        """``site_summary.json``: split → site → patient and sample counts, or ``None``."""
        return self.reader.artifact_json("site_summary.json")

    @cached_property
    def excluded_rows(self) -> list | None:
        """``excluded_rows.json``: the manifest rows left out as unusable, or ``None``."""
        return self.reader.artifact_json("excluded_rows.json")

    @cached_property
    def classify_setup(self) -> dict | None:
        """``classify_setup.json`` of the classify stage (task, class names), or ``None``."""
        return self.reader.artifact_json("classify_setup.json", stage="classify")

    @cached_property
    def results(self) -> list[dict] | None:
        """``results.json`` of the classify stage: one row per model, protocol and label fraction."""
        return self.reader.artifact_json("results.json", stage="classify")

    @cached_property
    def calibration(self) -> dict | None:
        """``calibration.json`` of the calibrate stage (method, decision, before/after), or ``None``."""
        return self.reader.artifact_json("calibration.json", stage="calibrate")

    @cached_property
    def predictions(self) -> Any | None:
        """``predictions_test.csv`` of the primary model as a DataFrame."""
        import pandas as pd

        p = self.reader.artifact_path("predictions_test.csv", stage="classify")
        return pd.read_csv(p, keep_default_na=False, na_values=[""]) if p is not None else None

    @cached_property
    def embedding(self) -> dict[str, np.ndarray] | None:
        """Arrays of ``embedding_map.npz`` (``xy``, ``label``, optional ``split``, ``classes``, ``method``)."""
        p = self.reader.artifact_path("embedding_map.npz", stage="classify")
        if p is None:
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    @cached_property
    def saliency(self) -> list[dict[str, Any]] | None:
        """Examples of ``saliency/index.json``, each with its PNG bytes under ``"png"``."""
        index = self.reader.artifact_json("saliency/index.json", stage="classify")
        if not index:
            return None
        out = []
        for ex in index.get("examples", []):
            png = self.reader.artifact_bytes(f"saliency/{ex['file']}", stage="classify")
            if png:
                out.append({**ex, "png": png})
        return out

    @cached_property
    def evaluations(self) -> list[dict[str, Any]]:
        """The external validations of this run (``medcl evaluate``), oldest first.

        Each entry is the nested run's ``evaluation.json`` with that run's ``run_id`` and ``status`` added.
        """
        out = []
        for r in self.reader.children("evaluation"):
            ev = self.reader.artifact_json("evaluation.json", stage=f"run:{r.run_id}")
            if ev is not None:
                out.append({**ev, "run_id": r.run_id, "status": r.status})
        return out

    # -- the primary model and its metrics -------------------------------------------------------------------
    @property
    def largest_fraction(self) -> float | None:
        """The largest label fraction evaluated (from ``results.json``, else the config), or ``None``."""
        fr = [float(r["fraction"]) for r in self.results or []]
        if fr:
            return max(fr)
        lf = self.param("classify.label_fractions")
        return max(lf) if lf else None

    @property
    def primary_tag(self) -> str | None:
        """``model/protocol/fNN`` of the model the report is about (the one handed to calibration)."""
        s = self.stages.get("classify")
        if s is None:
            return None
        tag = s.params.get("classify.primary_model")
        if tag:
            return tag
        # runs logged before the param existed: the classify stage's rule
        protocols = self.param("classify.protocols", ["linear"])
        pretrained = "pretrain" in self.stages or self.param("model.pretrained_path")
        model = "ssl" if pretrained else ("scratch" if "finetune" in protocols else "random")
        protocol = "finetune" if "finetune" in protocols else "linear"
        f = self.largest_fraction
        return model_tag(model, protocol, f) if f is not None else None

    def classify_metric(self, tag: str, name: str) -> Metric:
        """``test/{tag}/{name}`` of the classify run, with its CI."""
        m = (self.stages["classify"].metrics if "classify" in self.stages else {})
        key = metric_key(tag, name)
        return Metric(key, m.get(key, float("nan")), m.get(f"{key}_ci_low", float("nan")),
                      m.get(f"{key}_ci_high", float("nan")))

    def primary_row(self) -> dict | None:
        """The ``results.json`` row of the primary model."""
        tag = self.primary_tag
        if not tag or not self.results:
            return None
        model, protocol, ftag = tag.split("/")
        for r in self.results:
            if r["model"] == model and r["protocol"] == protocol and fraction_tag(r["fraction"]) == ftag:
                return r
        return None

    def model_label(self, tag: str | None = None) -> str:
        """``"pretrained encoder (simclr, resnet18), linear probe, 100 % of labels"``."""
        tag = tag or self.primary_tag or ""
        parts = tag.split("/")
        if len(parts) != 3:
            return tag
        model, protocol, ftag = parts
        name = MODEL_NAMES.get(model, model)
        if model == "ssl":
            name = f"{name} ({self.param('pretrain.method', '?')}, {self.param('model.encoder', '?')})"
        return f"{name}, {PROTOCOL_NAMES.get(protocol, protocol)}, {ftag[1:]} % of training labels"
