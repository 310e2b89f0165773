"""Which logged model ``medcl predict`` / ``embed`` / ``evaluate`` apply, and loading it.

``RUN|MODEL_URI`` is a pipeline run id (its calibrate stage's classifier, or its segment stage's segmenter), a
``runs:/`` / ``models:/`` URI or a local MLflow model folder. Part of :mod:`medcl.predict`, which re-exports every
name defined here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcl.errors import ConfigError, MedclError, TrackingError
from medcl.tracking.mlflow_tracker import default_tracking_uri
from medcl.tracking.reader import RunReader

_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class LoadedModel:
    """A logged model and where it came from.

    ``predictor`` is a :class:`medcl.tasks.export.Predictor` (the network, its classes, task, operating point and
    preprocessing) or, for masks, a :class:`medcl.tasks.export.Segmenter`; its attributes read through this object.
    """

    predictor: Any
    model_uri: str
    run_id: str | None

    def __getattr__(self, name: str) -> Any:  # classes, task, model, preprocessing, input_shape, …
        """Delegate ``name`` to the wrapped predictor (``classes``, ``task``, ``model``, ``preprocessing`` …)."""
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    @property
    def modality(self) -> str | None:
        """The modality the model was trained on (its metadata's ``modality``), ``None`` when not recorded."""
        return self.predictor.meta.get("modality")

    @property
    def operating_point(self) -> dict[str, Any]:
        """How a class is called from the probabilities (``rule``, ``threshold`` …); empty when not recorded."""
        return self.predictor.meta.get("operating_point") or {}


def resolve_model_uri(source: str, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """The classification model ``source`` names.

    Args:
        source: a pipeline run id, a ``runs:/`` / ``models:/`` URI or a local MLflow model folder.
        tracking_uri: MLflow store to look the run up in.

    Returns:
        ``(model URI, pipeline run id or None)``.

    Raises:
        ConfigError: ``source`` is none of those.
        TrackingError: the run does not exist or has no classification model.
    """
    if "://" in source or source.startswith(("runs:/", "models:/")):
        m = re.match(r"runs:/([0-9a-f]{32})/", source)
        return source, m.group(1) if m else None
    p = Path(source)
    if p.is_dir() and (p / "MLmodel").is_file():
        return str(p.resolve()), None
    if not _RUN_ID.fullmatch(source):
        raise ConfigError(f"{source!r} is not a run id, a model URI or a model folder", where="medcl predict RUN",
                          fix="pass the pipeline's MLflow run id (printed at the end of `medcl run`), "
                          "runs:/<run id>/model, models:/<name>/<version>, or a folder with an MLmodel file")
    reader = RunReader(source, tracking_uri)
    stage = reader.stages.get("calibrate")
    if stage is None:
        raise TrackingError(f"run {reader.run_id} has no classification model", where=f"run {reader.run_id}",
                            fix="predict needs a run with the classify and calibrate stages (the calibrate stage "
                            "logs the model); pass another run, or a model URI")
    return f"runs:/{stage.run_id}/model", reader.run_id


def load_model(source: str, tracking_uri: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load the calibrated classifier behind ``source`` (see :func:`resolve_model_uri`) with its metadata.

    Raises:
        TrackingError: the model cannot be loaded (the URI and the cause are named).
    """
    from medcl.tracking.pyfunc import load_predictor  # lazy: mlflow, loaded only once a model is applied

    uri = tracking_uri or default_tracking_uri()
    model_uri, run_id = resolve_model_uri(source, uri)
    predictor, _ = load_logged(load_predictor, model_uri, uri, device)
    return LoadedModel(predictor, model_uri, run_id)


def load_logged(load: Callable[[str, str, str], Any], model_uri: str, tracking_uri: str, device: str) -> Any:
    """``load(model_uri, tracking_uri, device)``; any failure but medcl's own becomes a TrackingError naming the URI.

    Raises:
        TrackingError: the model cannot be loaded (the URI and the cause are named).
    """
    try:
        return load(model_uri, tracking_uri, device)
    except MedclError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the cause
        raise TrackingError(f"cannot load the model {model_uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where=f"tracking store {tracking_uri}",
                            fix="check the run id / URI and --tracking-uri (MLFLOW_TRACKING_URI)") from None


def model_kind(source: str, tracking_uri: str | None = None, task: str = "auto") -> str:
    """``classify``, ``segment`` or ``fuse``: what ``medcl predict`` applies for ``source``.

    ``task="auto"``: a run with a calibrated classifier predicts classes, else a run with a fuse stage classifies
    patients from all their modalities, else a run with a segmentation model segments; a model URI or folder by its
    metadata. ``task="segment"`` / ``"classify"`` / ``"fuse"`` asks for one.

    Raises:
        ConfigError: an unknown ``task``.
        TrackingError: the run has no model of that kind.
    """
    if task not in ("auto", "classify", "segment", "fuse"):
        raise ConfigError(f"unknown task {task!r}", where="--task", fix="use auto, classify, segment or fuse")
    if not _RUN_ID.fullmatch(source):
        if task != "auto":
            return task
        from medcl.tracking.pyfunc import model_metadata  # lazy: mlflow, only for a model URI

        try:
            kind = model_metadata(resolve_model_uri(source, tracking_uri)[0], tracking_uri).get("kind")
        except MedclError:  # an unreadable URI is reported by the loader, with its cause
            kind = None
        return {"segmenter": "segment", "fusion": "fuse"}.get(str(kind), "classify")
    stages = RunReader(source, tracking_uri).stages
    has = {"classify": "calibrate" in stages, "segment": "segment" in stages, "fuse": "fuse" in stages}
    if task == "auto":
        task = next((t for t in ("classify", "fuse", "segment") if has[t]), "classify")
    if not has[task] and task in ("segment", "fuse"):
        what = {"segment": "segmentation model", "fuse": "fusion model"}[task]
        raise TrackingError(f"run {source} has no {what}", where=f"run {source}",
                            fix=f"a {what} comes from a run with the {task} stage; pass another run or --task classify")
    return task


def fusion_uri(source: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """``(model URI, pipeline run id or None)`` of a fusion model: a run's fuse stage model, or ``source``.

    Raises:
        TrackingError: the run has no finished fuse stage.
    """
    if not _RUN_ID.fullmatch(source):
        return resolve_model_uri(source, tracking_uri)
    reader = RunReader(source, tracking_uri)
    stage = reader.stages.get("fuse")
    if stage is None:
        raise TrackingError(f"run {reader.run_id} has no fusion model", where=f"run {reader.run_id}",
                            fix="a fusion model comes from a run with the fuse stage (pipelines/eye_multimodal.yaml)")
    return f"runs:/{stage.run_id}/fusion", reader.run_id


def _segmenter_uri(source: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """``(model URI, pipeline run id or None)`` of the segmenter: a run's segment stage model, or ``source``."""
    if not _RUN_ID.fullmatch(source):
        return resolve_model_uri(source, tracking_uri)
    reader = RunReader(source, tracking_uri)
    return f"runs:/{reader.stages['segment'].run_id}/segmenter", reader.run_id
