"""The MLflow model medcl logs: a pyfunc that bundles the run's preprocessing with the calibrated classifier.

``mlflow.pyfunc.load_model(uri).predict(data)`` takes what a hospital system has — file paths (any format
medcl reads: DICOM file or series folder, NIfTI/NRRD, PNG/JPEG/TIFF, WFDB/CSV ECG) or raw channel-first
arrays in the modality's own units — reads and preprocesses them exactly as the run's evaluation did
(:class:`medcl.tasks.export.Predictor`) and returns the calibrated probabilities, a DataFrame with one
``p_<class>`` column per class (binary: the positive class), one row per input, any batch size.

``data`` may be a DataFrame with a ``path`` column (or a single column of paths; this is what a REST call
to ``mlflow models serve`` with ``dataframe_split`` gives), a list of paths, one path, or a numeric array
``(N, C, *spatial)``. ``params``: ``batch_size`` (default 16), ``preprocessed`` (``True``: the arrays are
already the evaluation transforms' output and go straight to the network).

Artifacts: ``model.pt`` (the pickled :class:`~medcl.tasks.export.CalibratedClassifier`; loading needs medcl
importable) and ``medcl_model.json`` (classes, task, preprocessing, operating point, modality, input shape).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from medcl.errors import DataError, TrackingError
from medcl.tasks.export import FeatureExtractor, FusionPredictor, Predictor, Segmenter
from medcl.tracking.mlflow_tracker import default_tracking_uri


def _load(context: Any, artifact: str, wrapper: Callable[[Any, dict[str, Any]], Any]) -> Any:
    """The pickled module of ``artifact`` and the model's metadata, wrapped in ``wrapper`` (a Predictor …)."""
    import torch

    meta = json.loads(Path(context.artifacts["meta"]).read_text())
    module = torch.load(context.artifacts[artifact], map_location="cpu", weights_only=False)
    return wrapper(module, meta)


@contextmanager
def local_model(model_uri: str) -> Iterator[str]:
    """A local copy of the MLflow model ``model_uri`` for the ``with`` block; removed when the block ends.

    ``mlflow.pyfunc.load_model`` and ``mlflow.models.get_model_info`` copy a ``runs:/`` or ``models:/`` model into
    a new temporary folder that they never remove (each load of a classifier left tens of MB behind). Loading from
    this copy instead leaves nothing: medcl's models read every artifact into memory in ``load_context``.
    """
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="medcl-model-") as tmp:
        yield mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)


def load_unwrapped(model_uri: str) -> Any:
    """The unwrapped medcl PythonModel of ``model_uri``, in memory (no copy left behind: :func:`local_model`)."""
    with local_model(model_uri) as local:
        return mlflow.pyfunc.load_model(local).unwrap_python_model()


def _table(wrapped: Any, model_input: Any, params: dict[str, Any] | None) -> Any:
    """``wrapped.predict`` of the inputs as a DataFrame with its columns (``params``: batch_size, preprocessed)."""
    import pandas as pd

    params = dict(params or {})
    values = wrapped.predict(as_inputs(model_input), batch_size=int(params.get("batch_size", 16)),
                             preprocessed=bool(params.get("preprocessed", False)))
    return pd.DataFrame(values, columns=wrapped.columns)


class MedclClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc: paths or raw arrays → the run's preprocessing → calibrated probabilities (``(N, K_out)`` frame)."""

    def load_context(self, context: Any) -> None:
        """Load the pickled classifier and its metadata from the model's artifacts as a :class:`Predictor`."""
        self.predictor = _load(context, "model", Predictor)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """Calibrated probabilities of ``model_input`` (paths or arrays), one column per output."""
        return _table(self.predictor, model_input, params)


class MedclEncoder(mlflow.pyfunc.PythonModel):
    """pyfunc of a pretrained encoder: paths or raw arrays → the run's preprocessing → pooled features ``f0 … fD-1``."""

    def load_context(self, context: Any) -> None:
        """Load the pickled encoder and its metadata from the model's artifacts as a :class:`FeatureExtractor`."""
        self.extractor = _load(context, "encoder", FeatureExtractor)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """Pooled features ``f0 … fD-1`` of ``model_input`` (paths or arrays), one row per input."""
        return _table(self.extractor, model_input, params)


class MedclSegmenter(mlflow.pyfunc.PythonModel):
    """pyfunc of a segmentation network: paths or raw arrays → label maps.

    Inputs go through the run's preprocessing (whole image, no crop) and sliding-window inference. One row
    per input: ``labels`` (nested lists, the preprocessed grid), ``affine`` (its voxel-to-RAS matrix, or
    ``None`` for 2D images) and ``voxels_<class>`` per foreground class.
    """

    def load_context(self, context: Any) -> None:
        """Load the pickled network and its metadata from the model's artifacts as a :class:`Segmenter`."""
        self.segmenter = _load(context, "segmenter", Segmenter)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """One row per input: ``labels``, ``affine`` and ``voxels_<class>`` (see the class docstring)."""
        import pandas as pd

        rows = []
        for r in self.segmenter.predict(as_inputs(model_input)):
            lab = r["labels"]
            rows.append({"labels": lab.tolist(), "affine": None if r["affine"] is None else r["affine"].tolist(),
                         **{f"voxels_{c}": int((lab == k).sum()) for k, c in enumerate(self.segmenter.class_names)
                            if k > 0}})
        return pd.DataFrame(rows)


class MedclFusion(mlflow.pyfunc.PythonModel):
    """pyfunc of a fusion model (the ``fuse`` stage): examinations of patients → one row per patient.

    ``model_input``: a DataFrame with ``patient_id``, ``modality`` and ``path`` columns (one row per examination;
    a patient may lack a modality). Output: ``patient_id``, ``n_<modality>`` (examinations used),
    ``gate_<modality>`` and the probability columns ``p_<class>``. ``params``: ``batch_size`` (default 16).
    """

    def load_context(self, context: Any) -> None:
        """Load the pickled fusion model and its metadata from the model's artifacts as a :class:`FusionPredictor`."""
        self.predictor = _load(context, "fusion", FusionPredictor)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """One row per patient of ``model_input`` (see the class docstring)."""
        import pandas as pd

        if not isinstance(model_input, pd.DataFrame):
            raise DataError(f"a fusion model takes a DataFrame, not a {type(model_input).__name__}", where="model input",
                            fix="send rows with patient_id, modality and path columns, one per examination")
        cols = {str(c).strip().lower(): c for c in model_input.columns}
        missing = [c for c in ("patient_id", "modality", "path") if c not in cols]
        if missing:
            raise DataError(f"the input has no {', '.join(missing)} column (columns: {list(model_input.columns)[:6]})",
                            where="model input", fix="send rows with patient_id, modality and path columns")
        fp = self.predictor
        out = fp.predict([str(v) for v in model_input[cols["patient_id"]]],
                         [str(v) for v in model_input[cols["modality"]]], [str(v) for v in model_input[cols["path"]]],
                         batch_size=int(dict(params or {}).get("batch_size", 16)))
        df = pd.DataFrame({"patient_id": out["patients"]})
        for j, m in enumerate(fp.names):
            df[f"n_{m}"], df[f"gate_{m}"] = out["counts"][:, j], out["gates"][:, j]
        for k, c in enumerate(fp.columns):
            df[c] = out["probabilities"][:, k]
        return df


def as_inputs(data: Any) -> list[Any]:
    """The list of samples in ``data`` (see the module docstring).

    Raises:
        DataError: a DataFrame with neither a ``path`` column nor a single column, or an input of another kind.
    """
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        cols = [c for c in data.columns if str(c).strip().lower() == "path"]
        if not cols and len(data.columns) == 1:
            cols = list(data.columns)
        if not cols:
            raise DataError(f"a DataFrame with columns {list(data.columns)[:6]} has no 'path' column",
                            where="model input", fix="send one column named 'path' with the files to predict")
        return [str(v) for v in data[cols[0]]]
    if isinstance(data, (str, Path)):
        return [str(data)]
    if isinstance(data, np.ndarray) and data.dtype.kind in "OUS":
        return [str(v) for v in data.reshape(-1)]
    if isinstance(data, np.ndarray):
        return list(data)
    if isinstance(data, (list, tuple)):
        return [str(v) if isinstance(v, Path) else v for v in data]
    raise DataError(f"cannot predict on a {type(data).__name__}", where="model input",
                    fix="pass file paths (a DataFrame 'path' column, a list, one path) or an array (N, C, *spatial)")


def _log_module(tracker: Any, module: Any, meta: dict[str, Any], work_dir: Path, *, name: str, artifact: str,
                pyfunc_model: Any, registered_model_name: str | None, pip_requirements: list[str] | None) -> str:
    """Pickle ``module`` and its ``meta`` into ``work_dir`` and log both as the pyfunc ``pyfunc_model``.

    The module goes to ``<work_dir>/<artifact>.pt`` and ``meta`` beside it; the model is logged under
    ``name`` (and registered when ``registered_model_name`` is set). Returns the model URI.
    """
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    work_dir.mkdir(parents=True, exist_ok=True)
    torch.save(module, work_dir / f"{artifact}.pt")
    (work_dir / f"medcl_{name}.json").write_text(json.dumps(meta, indent=2))
    # the params predict() reads: without a params schema MLflow drops them with only a warning
    specs = [ParamSpec("batch_size", "long", 16)]
    if not isinstance(pyfunc_model, MedclFusion):
        specs.append(ParamSpec("preprocessed", "boolean", False))
    return tracker.log_model(None, name, pyfunc_model=pyfunc_model, signature=ModelSignature(params=ParamSchema(specs)),
                             artifacts={artifact: str(work_dir / f"{artifact}.pt"),
                                        "meta": str(work_dir / f"medcl_{name}.json")},
                             registered_model_name=registered_model_name, pip_requirements=pip_requirements,
                             metadata=meta)


def log_classifier(tracker: Any, model: Any, meta: dict[str, Any], work_dir: Path, *,
                   registered_model_name: str | None = None, pip_requirements: list[str] | None = None) -> str:
    """Log ``model`` (a CalibratedClassifier) with ``meta`` as the :class:`MedclClassifier` pyfunc; its URI."""
    return _log_module(tracker, model, meta, work_dir, name="model", artifact="model", pyfunc_model=MedclClassifier(),
                       registered_model_name=registered_model_name, pip_requirements=pip_requirements)


def load_predictor(model_uri: str, tracking_uri: str, device: str = "cpu") -> tuple[Any, Any]:
    """``(Predictor on device, the MLflow ModelInfo)`` of a model medcl logged.

    A pytorch-flavour model from an earlier medcl works too: its metadata carries the same keys.

    Raises:
        TrackingError: the model's metadata lacks ``classes``, ``task`` or ``preprocessing``.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with local_model(model_uri) as local:
        info = mlflow.models.get_model_info(local)
        missing = [k for k in ("classes", "task", "preprocessing") if k not in (info.metadata or {})]
        if missing:
            raise TrackingError(f"the model {model_uri} carries no {', '.join(missing)} in its metadata",
                                where=model_uri, fix="predict needs a model logged by medcl's calibrate stage")
        if "pytorch" in (info.flavors or {}):
            meta = dict(info.metadata or {})
            try:
                spec = info.signature.inputs.inputs[0]
                meta.setdefault("input_shape", [int(d) for d in spec.shape[1:]]
                                if all(int(d) > 0 for d in spec.shape[1:]) else None)
            except (AttributeError, IndexError, TypeError):
                pass
            return Predictor(mlflow.pytorch.load_model(local, map_location=device), meta), info
        predictor = mlflow.pyfunc.load_model(local).unwrap_python_model().predictor
    predictor.model.to(device)
    return predictor, info


def log_encoder(tracker: Any, encoder: Any, meta: dict[str, Any], work_dir: Path, *,
                registered_model_name: str | None = None, pip_requirements: list[str] | None = None) -> str:
    """Log a pretrained ``encoder`` (an ``nn.Module``) as the :class:`MedclEncoder` pyfunc under ``encoder``; its URI.

    ``meta`` holds the preprocessing, input shape, feature size, encoder name, method and modality. The
    artifact ``encoder.pt`` is the pickled module: ``model.pretrained_path: runs:/<run>/encoder`` starts
    another pipeline from it, and ``mlflow.pyfunc.load_model(uri).predict(paths)`` gives features.
    """
    return _log_module(tracker, encoder, meta, work_dir, name="encoder", artifact="encoder",
                       pyfunc_model=MedclEncoder(), registered_model_name=registered_model_name,
                       pip_requirements=pip_requirements)


def log_fusion(tracker: Any, model: Any, meta: dict[str, Any], work_dir: Path, *,
               registered_model_name: str | None = None, pip_requirements: list[str] | None = None) -> str:
    """Log a :class:`~medcl.tasks.export.FusionModel` as the :class:`MedclFusion` pyfunc under ``fusion``; its URI."""
    return _log_module(tracker, model, meta, work_dir, name="fusion", artifact="fusion", pyfunc_model=MedclFusion(),
                       registered_model_name=registered_model_name, pip_requirements=pip_requirements)


def load_fusion(model_uri: str, tracking_uri: str, device: str = "cpu") -> Any:
    """The :class:`~medcl.tasks.export.FusionPredictor` of a fusion model medcl logged, on ``device``.

    Raises:
        TrackingError: the URI names another kind of model.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    wrapped = load_unwrapped(model_uri)
    if not isinstance(wrapped, MedclFusion):
        raise TrackingError(f"the model {model_uri} is not a fusion model ({type(wrapped).__name__})", where=model_uri,
                            fix="pass the run of a fuse stage, or runs:/<fuse stage run id>/fusion")
    wrapped.predictor.model.to(device)
    return wrapped.predictor


#: weights files inside a medcl MLflow model, in the order they are looked for
_WEIGHTS = ("encoder.pt", "model.pt", "segmenter.pt")
_downloaded: dict[tuple[str, str], Path] = {}


def is_model_uri(value: str | None) -> bool:
    """``runs:/…`` or ``models:/…`` (an MLflow model URI, not a local path)."""
    return bool(value) and str(value).startswith(("runs:/", "models:/"))


def weights_from_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """The local weights file of a medcl MLflow model, downloaded once per process into a temporary folder.

    ``uri`` is e.g. ``runs:/<run id>/encoder``, ``runs:/<run id>/model`` or ``models:/<name>/<version>``.

    A pretrained encoder gives its ``encoder.pt``; a classifier or segmenter its pickled module, whose encoder
    weights :func:`medcl.networks.weights.load_pretrained` picks out by their names.

    Raises:
        TrackingError: the URI does not resolve, or the model holds no medcl weights file.
    """
    import shutil
    import tempfile

    tracking_uri = tracking_uri or default_tracking_uri()
    key = (uri, tracking_uri)
    if key in _downloaded and _downloaded[key].is_file():
        return _downloaded[key]
    dst = Path(tempfile.mkdtemp(prefix="medcl-weights-"))
    import atexit

    atexit.register(shutil.rmtree, str(dst), ignore_errors=True)
    try:
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst),
                                                         tracking_uri=tracking_uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the cause
        raise TrackingError(f"cannot download the model {uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where="model.pretrained_path",
                            fix="use runs:/<pretrain stage run id>/encoder, runs:/<calibrate run id>/model or "
                            "models:/<name>/<version> from this tracking store (tracking.uri / MLFLOW_TRACKING_URI)"
                            ) from None
    found = [f for name in _WEIGHTS for f in sorted(local.rglob(name))]
    if not found:
        raise TrackingError(f"the model {uri} holds no medcl weights file ({', '.join(_WEIGHTS)})",
                            where="model.pretrained_path",
                            fix="point at a model medcl logged (the pretrain stage's encoder, the calibrate stage's "
                            "model)")
    _downloaded[key] = found[0]
    return found[0]


def log_segmenter(tracker: Any, network: Any, meta: dict[str, Any], work_dir: Path, *,
                  registered_model_name: str | None = None, pip_requirements: list[str] | None = None) -> str:
    """Log a trained segmentation ``network`` as the :class:`MedclSegmenter` pyfunc under ``segmenter``; its URI.

    ``meta`` holds the preprocessing, class names and sliding-window settings.
    """
    return _log_module(tracker, network, meta, work_dir, name="segmenter", artifact="segmenter",
                       pyfunc_model=MedclSegmenter(), registered_model_name=registered_model_name,
                       pip_requirements=pip_requirements)


def load_segmenter(model_uri: str, tracking_uri: str, device: str = "cpu") -> Any:
    """The :class:`~medcl.tasks.export.Segmenter` of a segmenter model medcl logged, on ``device``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    seg = load_unwrapped(model_uri).segmenter
    seg.model.to(device)
    return seg


def model_metadata(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The metadata medcl stored with a logged model (``kind``, classes, preprocessing …); ``{}`` when it has none.

    Only the model's ``MLmodel`` file is fetched (for ``runs:/…``, ``models:/<name>/<version>``, ``models:/m-<id>``,
    a local folder or a remote server alike), into a folder removed on return.

    Raises:
        TrackingError: the URI does not resolve in the store.
    """
    import tempfile

    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        with tempfile.TemporaryDirectory(prefix="medcl-mlmodel-") as tmp:
            # the MLmodel file alone (a few KB), not the weights: ``medcl predict`` reads this before it loads the
            # model, so a full copy here would fetch the model twice from a remote server
            path = get_artifact_repository(model_uri).download_artifacts("MLmodel", tmp)
            return dict(mlflow.models.Model.load(path).metadata or {})
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the cause
        raise TrackingError(f"cannot read the model {model_uri}: {type(exc).__name__}: {str(exc)[:300]}",
                            where=model_uri, fix="check the URI and --tracking-uri (MLFLOW_TRACKING_URI)") from None
