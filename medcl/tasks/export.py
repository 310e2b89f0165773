"""The deployable model: encoder → linear head → calibration, returning probabilities.

:class:`CalibratedClassifier` maps preprocessed input (float32 ``(N, C, *spatial)``, the eval transforms of
the run's modality preset) to calibrated probabilities: ``(N, K)`` softmax for multi-class/ordinal,
``(N, 1)`` sigmoid of the positive class for binary, ``(N, K)`` sigmoids for multi-label.
:class:`Predictor` adds the preprocessing (paths or raw arrays in) and the operating point; it is what the
logged MLflow pyfunc (:mod:`medcl.tracking.pyfunc`) and ``medcl predict`` both run.
:class:`FusionModel` / :class:`FusionPredictor` are the same for a patient classified from several modalities
(the ``fuse`` stage): one encoder and preprocessing per modality, the gated fusion head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcl import phi
from medcl.errors import DataError
from medcl.tasks.segmentation import logits_to_labels, sliding_window_predict
from medcl.transforms import build_transforms


class CalibratedClassifier(nn.Module):
    """``probs = act(calibrate(head(encoder(x))))``.

    Args:
        encoder: feature extractor ``(N, C, *S) -> (N, D)``.
        weight: linear head weight ``(K_out, D)`` (standardisation folded in, see
            :func:`linear_head_from_probe`).
        bias: linear head bias ``(K_out,)``.
        task: ``binary`` | ``multiclass`` | ``ordinal`` | ``multilabel``.
        calibration: ``{"kind": "temperature", "t": float or list}`` (per-label for multilabel),
            ``{"kind": "vector", "w": (K,), "b": (K,)}``, ``{"kind": "matrix", "w": (K, K), "b": (K,)}``
            applied to log-probabilities (Dirichlet), or ``{"kind": "none"}``.
    """

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor, task: str,
                 calibration: dict[str, Any] | None = None) -> None:
        """Copy the head into a linear layer and keep the calibration parameters as buffers."""
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.task = task
        cal = dict(calibration or {"kind": "none"})
        self.kind = cal.get("kind", "none")
        k = weight.shape[0]
        self.register_buffer("cal_w", torch.as_tensor(np.asarray(cal.get("w", np.ones(k)), dtype=np.float32)))
        self.register_buffer("cal_b", torch.as_tensor(np.asarray(cal.get("b", np.zeros(k)), dtype=np.float32)))
        t = np.asarray(cal.get("t", 1.0), dtype=np.float32).reshape(-1)
        self.register_buffer("cal_t", torch.as_tensor(t))
        self.register_buffer("cal_c", torch.as_tensor(np.asarray(cal.get("c", np.ones(k)), dtype=np.float32)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(N, D)`` of a preprocessed batch ``(N, C, *S)``."""
        f = self.encoder(x)
        return f.flatten(2).mean(-1) if f.ndim > 2 else f

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head logits ``(N, K_out)`` of a preprocessed batch ``(N, C, *S)`` (before calibration)."""
        return self.head(self.features(x))

    def uncalibrated(self, z: torch.Tensor) -> torch.Tensor:
        """Probabilities of head logits ``z`` without the calibrator (softmax or sigmoid)."""
        return torch.softmax(z, dim=1) if self.task in ("multiclass", "ordinal") else torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(N, K_out)`` of a preprocessed batch ``(N, C, *S)``."""
        return self.from_logits(self.logits(x.float()))

    def from_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of head logits ``z`` ``(N, K_out)``."""
        if self.kind == "temperature":
            z = z / self.cal_t
        elif self.kind == "vector":
            z = z * self.cal_w + self.cal_b
        elif self.kind == "matrix":
            z = torch.log_softmax(z, dim=1) @ self.cal_w.T + self.cal_b
        elif self.kind == "beta":  # two-class Dirichlet (beta calibration) per label
            z = self.cal_w * torch.nn.functional.logsigmoid(z) - self.cal_c * torch.nn.functional.logsigmoid(-z) \
                + self.cal_b
        if self.task in ("multiclass", "ordinal"):
            return torch.softmax(z, dim=1)
        return torch.sigmoid(z)


def linear_head_from_probe(head: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a probe's standardisation into one linear layer: ``W' = W / std``, ``b' = b - W' @ mean``."""
    coef = np.asarray(head["coef"], dtype=np.float64)
    mean = np.asarray(head["mean"], dtype=np.float64)
    std = np.asarray(head["std"], dtype=np.float64)
    w = coef / std[None, :]
    b = np.asarray(head["intercept"], dtype=np.float64) - w @ mean
    return torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)


def calibration_for_export(state: dict[str, Any]) -> dict[str, Any]:
    """Translate a calibrator's ``to_dict()`` into :class:`CalibratedClassifier`'s ``calibration``."""
    method = state.get("method") or state.get("name") or state.get("kind")
    params = state.get("params", state)
    if method in ("temperature", "TemperatureScaler"):
        t = params.get("log_t")
        t = np.exp(np.asarray(t)) if t is not None else np.asarray(params.get("t", params.get("temperature", 1.0)))
        return {"kind": "temperature", "t": np.asarray(t, dtype=np.float32).reshape(-1)}
    if method in ("vector", "VectorScaler"):
        return {"kind": "vector", "w": np.asarray(params["w"]).reshape(-1), "b": np.asarray(params["b"]).reshape(-1)}
    if method in ("dirichlet", "DirichletCalibrator"):
        if "W" in params:
            return {"kind": "matrix", "w": np.asarray(params["W"]), "b": np.asarray(params["b"]).reshape(-1)}
        return {"kind": "beta", "w": np.asarray(params["a"]).reshape(-1), "c": np.asarray(params["c"]).reshape(-1),
                "b": np.asarray(params["b"]).reshape(-1)}
    return {"kind": "none"}


# ----------------------------------------------------------------------------------------------- applying it
def eval_transform(preprocessing: dict[str, Any]) -> Any:
    """The run's evaluation transforms from a model's ``preprocessing`` metadata (preset + its parameters).

    The returned transform takes ``{"image": path or raw channel-first array}`` and gives a
    ``(C, *spatial)`` float32 tensor under ``"image"``.
    """
    params = {k: v for k, v in preprocessing.items() if k not in ("preset", "input")}
    return build_transforms(str(preprocessing["preset"]), train=False, views=1, **params)


class ModelInputs:
    """What every logged medcl model shares: the run's evaluation preprocessing and the input shape it checks.

    Args:
        meta: ``preprocessing`` (preset and parameters) and ``input_shape`` (one sample, ``(C, *S)``, or absent).
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        """Keep the metadata and build the run's evaluation transforms from its ``preprocessing``."""
        self.meta = dict(meta)
        self.preprocessing = dict(meta["preprocessing"])
        shape = meta.get("input_shape")
        self.input_shape = tuple(int(d) for d in shape) if shape else None
        self.transform = eval_transform(self.preprocessing)

    def prepare(self, item: Any, where: str = "input") -> torch.Tensor:
        """One sample through the run's evaluation transforms: ``(C, *S)`` float32.

        Args:
            item: a file path (any format medcl reads) or a raw channel-first array in the modality's own units.
            where: how errors name the input.

        Raises:
            DataError: the result is not the shape the model takes (wrong channels or dimensions).
            ReaderError: the file cannot be read.
        """
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        x = self.transform({"image": str(item) if not isinstance(item, np.ndarray) else item})["image"]
        x = torch.as_tensor(getattr(x, "as_tensor", lambda x=x: x)()).float()
        if self.input_shape is not None and tuple(x.shape) != self.input_shape:
            raise DataError(
                f"preprocessed to shape {tuple(x.shape)} but the model takes {self.input_shape} ({x.shape[0]} "
                f"channel(s) and {x.ndim - 1} dimension(s) vs {self.input_shape[0]} and {len(self.input_shape) - 1})",
                where=where, fix="use files of the kind the model was trained on (modality, colour, 2D/3D)")
        return x

    def _batched(self, inputs: list[Any], fn: Any, width: int, *, batch_size: int, preprocessed: bool) -> np.ndarray:
        """``fn`` (a preprocessed batch → ``(B, width)``) over ``inputs``, ``batch_size`` at a time.

        Raises:
            DataError: naming every input that could not be read or preprocessed (nothing is skipped).
        """
        out, failed = [], []
        for start in range(0, len(inputs), max(1, int(batch_size))):
            xs = []
            for k, item in enumerate(inputs[start:start + batch_size], start=start):
                where = str(item) if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") else f"input {k}"
                try:
                    xs.append(torch.as_tensor(np.asarray(item), dtype=torch.float32) if preprocessed
                              else self.prepare(item, where))
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported together
                    msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    failed.append(phi.redact(f"{where}: {msg}"))
            if xs and not failed:
                out.append(fn(torch.stack(xs)))
        if failed:
            raise DataError(f"{len(failed)} of {len(inputs)} input(s) could not be predicted: " + "; ".join(failed[:5])
                            + (" …" if len(failed) > 5 else ""), where="model input",
                            fix="pass files medcl reads (or raw channel-first arrays) of the kind the model was "
                            "trained on; `medcl predict` writes one row per input with its status instead")
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)


class FeatureExtractor(ModelInputs):
    """A logged pretrained encoder with its preprocessing: paths or raw arrays in, pooled features ``(N, D)`` out.

    Args:
        encoder: ``(N, C, *S) -> (N, D)`` or a feature map ``(N, D, *S')`` (averaged over space).
        meta: as :class:`ModelInputs`, plus ``feature_dim``, ``encoder``, ``method``, ``modality``.
    """

    def __init__(self, encoder: nn.Module, meta: dict[str, Any]) -> None:
        """Put the encoder in eval mode and keep the feature width."""
        super().__init__(meta)
        self.model = encoder.eval()
        self.feature_dim = int(meta["feature_dim"])

    @property
    def columns(self) -> list[str]:
        """Output column names ``f0`` .. ``f{D-1}``."""
        return [f"f{j}" for j in range(self.feature_dim)]

    def features(self, x: torch.Tensor) -> np.ndarray:
        """``(N, D)`` pooled features of a preprocessed batch ``(N, C, *S)``."""
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            f = self.model(torch.as_tensor(x, dtype=torch.float32).to(dev))
            f = f.flatten(2).mean(-1) if f.ndim > 2 else f
            return f.float().cpu().numpy().reshape(len(x), -1)

    def predict(self, inputs: list[Any], *, batch_size: int = 16, preprocessed: bool = False) -> np.ndarray:
        """``(N, D)`` features of ``inputs`` (paths or raw arrays). Raises DataError naming unreadable inputs."""
        return self._batched(inputs, self.features, self.feature_dim, batch_size=batch_size, preprocessed=preprocessed)


class Predictor(ModelInputs):
    """A logged classifier with everything needed to apply it: what the MLflow pyfunc and ``medcl predict`` run.

    Args:
        model: :class:`CalibratedClassifier` (``(N, C, *S)`` preprocessed → ``(N, K_out)`` probabilities).
        meta: the model's metadata: ``classes``, ``task``, ``preprocessing`` (preset and parameters),
            ``operating_point``, ``modality``, ``input_shape`` (one sample, ``(C, *S)``).
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any]) -> None:
        """Put the model in eval mode and keep its class names and task."""
        super().__init__(meta)
        self.model = model.eval()
        self.classes = [str(c) for c in meta["classes"]]
        self.task = str(meta["task"])

    @property
    def columns(self) -> list[str]:
        """Output columns: ``p_<positive class>`` (binary) or ``p_<class>`` per class."""
        return [f"p_{self.classes[1]}"] if self.task == "binary" else [f"p_{c}" for c in self.classes]

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """``(N, K_out)`` calibrated probabilities of a preprocessed batch ``(N, C, *S)``."""
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=torch.float32).to(dev)).float().cpu().numpy().reshape(len(x), -1)

    def parts(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Everything the model computes on a preprocessed batch ``(N, C, *S)``.

        Returns:
            ``features`` ``(N, D)`` (pooled encoder output), ``logits``, ``uncalibrated`` and
            ``probabilities`` (calibrated), each ``(N, K_out)``.
        """
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            f = self.model.features(torch.as_tensor(x, dtype=torch.float32).to(dev))
            z = self.model.head(f)
            out = {"features": f, "logits": z, "uncalibrated": self.model.uncalibrated(z),
                   "probabilities": self.model.from_logits(z)}
            return {k: v.float().cpu().numpy().reshape(len(x), -1) for k, v in out.items()}

    def call(self, probs: np.ndarray) -> str:
        """The class name(s) at the model's operating point for one sample's probabilities ``(K_out,)``."""
        op = self.meta.get("operating_point") or {}
        if self.task == "binary":
            return self.classes[1] if probs[-1] >= float(op.get("threshold", 0.5)) else self.classes[0]
        if self.task == "multilabel":
            t = float(op.get("threshold", 0.5))
            return ";".join(c for c, p in zip(self.classes, probs) if p >= t)
        return self.classes[int(np.argmax(probs))]

    def predict(self, inputs: list[Any], *, batch_size: int = 16, preprocessed: bool = False) -> np.ndarray:
        """``(N, K_out)`` calibrated probabilities of ``inputs`` (paths or raw arrays), ``batch_size`` at a time.

        ``preprocessed``: the inputs are already ``(C, *S)`` tensors after the evaluation transforms.

        Raises:
            DataError: naming every input that could not be read or preprocessed (nothing is skipped).
        """
        return self._batched(inputs, self.probabilities, len(self.columns), batch_size=batch_size,
                             preprocessed=preprocessed)


def reference_features(predictor: Predictor, items: list[dict[str, Any]], *, max_samples: int = 1000, seed: int = 0,
                       batch_size: int = 32) -> dict[str, np.ndarray]:
    """Pooled encoder features of training items: the reference ``medcl evaluate`` measures dataset shift against.

    The items are read exactly as new data are (:meth:`Predictor.prepare`).

    Args:
        predictor: the logged classifier whose encoder gives the features.
        items: dataset items (``{"image": path, "patient": int, ...}``, ``DataBundle.items``).
        max_samples: at most this many items, drawn without replacement (kept in their order).
        seed: seed of that draw.
        batch_size: items run through the encoder at once.

    Returns:
        ``{"features": (n, D) float32, "patient": (n,) int64}`` (patient indices, never identifiers).
    """
    rng = np.random.default_rng(seed)
    if len(items) > max_samples:
        items = [items[i] for i in sorted(rng.choice(len(items), max_samples, replace=False))]
    feats, pats = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        x = torch.stack([predictor.prepare(it["image"], where=f"training item {it.get('index', start)}")
                         for it in chunk])
        feats.append(predictor.parts(x)["features"])
        pats += [int(it["patient"]) for it in chunk]
    d = feats[0].shape[1] if feats else 0
    return {"features": np.concatenate(feats) if feats else np.zeros((0, d), np.float32),
            "patient": np.asarray(pats, dtype=np.int64)}


# ----------------------------------------------------------------------------------------------- fusion
class FusionModel(nn.Module):
    """The deployable fusion model: one encoder per modality, its training patients' feature statistics, the head.

    A patient's images of one modality are embedded (pooled encoder features), averaged, standardised with the
    mean and standard deviation of the training patients who had that modality (as the ``fuse`` stage did), and
    the gated head (:class:`medcl.tasks.fusion.GatedFusion`) classifies the patient from all of them.

    Args:
        encoders: modality -> encoder ``(N, C, *S) -> (N, D_m)`` or a feature map ``(N, D_m, *S')``.
        stats: modality -> ``(mean (D_m,), std (D_m,))`` of the training patients' mean features.
        head: the trained fusion head over the same modalities (in its order).
    """

    def __init__(self, encoders: dict[str, nn.Module], stats: dict[str, tuple[np.ndarray, np.ndarray]],
                 head: nn.Module) -> None:
        """Keep the encoders (eval mode), the statistics as frozen parameters and the head."""
        super().__init__()
        self.names = list(head.names)
        self.encoders = nn.ModuleDict({m: encoders[m].eval() for m in self.names})
        self.mean = nn.ParameterDict({m: nn.Parameter(torch.as_tensor(stats[m][0], dtype=torch.float32),
                                                      requires_grad=False) for m in self.names})
        self.std = nn.ParameterDict({m: nn.Parameter(torch.as_tensor(stats[m][1], dtype=torch.float32),
                                                     requires_grad=False) for m in self.names})
        self.head = head.eval()

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``(N, D_m)`` pooled features of a preprocessed batch ``(N, C, *S)`` of ``modality``."""
        f = self.encoders[modality](x)
        return f.flatten(2).mean(-1) if f.ndim > 2 else f

    def forward(self, feats: dict[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (P, K), gates (P, M))`` from each patient's mean raw features ``(P, D_m)`` and ``present``."""
        z = {m: torch.where(present[:, j:j + 1], (feats[m] - self.mean[m]) / self.std[m], torch.zeros_like(feats[m]))
             for j, m in enumerate(self.names)}
        return self.head(z, present)


class FusionPredictor:
    """A logged fusion model with each modality's preprocessing: examinations of patients in, one row per patient out.

    Args:
        model: :class:`FusionModel`.
        meta: ``classes``, ``task``, ``modalities`` (modality -> ``preprocessing``, ``input_shape``, ``feature_dim``),
            ``gated``.
    """

    def __init__(self, model: FusionModel, meta: dict[str, Any]) -> None:
        """Put the model in eval mode; build each modality's evaluation transforms."""
        self.model = model.eval()
        self.meta = dict(meta)
        self.classes = [str(c) for c in meta["classes"]]
        self.task = str(meta["task"])
        self.names = list(model.names)
        self.inputs = {m: ModelInputs(meta["modalities"][m]) for m in self.names}

    @property
    def columns(self) -> list[str]:
        """Probability columns: ``p_<positive class>`` (binary) or ``p_<class>`` per class."""
        return [f"p_{self.classes[1]}"] if self.task == "binary" else [f"p_{c}" for c in self.classes]

    def prepare(self, modality: str, item: Any, where: str = "input") -> torch.Tensor:
        """One examination of ``modality`` through that modality's evaluation transforms: ``(C, *S)``.

        Raises:
            DataError: ``modality`` is not one of the model's, or the result has the wrong shape.
            ReaderError: the file cannot be read.
        """
        if modality not in self.inputs:
            raise DataError(f"modality {modality!r} is not one of the model's ({', '.join(self.names)})", where=where,
                            fix="give each examination the modality it was trained as (the manifest's modality column)")
        return self.inputs[modality].prepare(item, where)

    def embed(self, modality: str, x: torch.Tensor) -> np.ndarray:
        """``(N, D_m)`` features of a preprocessed batch of ``modality``."""
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model.embed(modality, torch.as_tensor(x, dtype=torch.float32).to(dev)).float().cpu().numpy()

    def fuse(self, feats: dict[str, np.ndarray], present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (P, K_out), gates (P, M))`` from the patients' mean features and ``present`` ``(P, M)``."""
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            f = {m: torch.as_tensor(feats[m], dtype=torch.float32, device=dev) for m in self.names}
            logits, g = self.model(f, torch.as_tensor(present, dtype=torch.bool, device=dev))
            probs = torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, -1)
            if self.task == "binary":
                probs = probs[:, 1:]
        return probs.float().cpu().numpy(), g.float().cpu().numpy()

    def call(self, probs: np.ndarray) -> str:
        """The class name(s) for one patient's probabilities ``(K_out,)`` (argmax; 0.5 for binary and multi-label)."""
        if self.task == "binary":
            return self.classes[1] if probs[-1] >= 0.5 else self.classes[0]
        if self.task == "multilabel":
            return ";".join(c for c, p in zip(self.classes, probs) if p >= 0.5)
        return self.classes[int(np.argmax(probs))]

    def predict(self, patients: list[str], modalities: list[str], inputs: list[Any], *, batch_size: int = 16,
                failures: dict[int, str] | None = None, on_batch: Any = None) -> dict[str, Any]:
        """Every patient of ``patients`` classified from its examinations (row *i* is ``inputs[i]`` of ``modalities[i]``).

        A patient's examinations of one modality are embedded and averaged; a modality it has none of counts as
        missing (gate 0).

        Args:
            patients: each examination's patient.
            modalities: each examination's modality.
            inputs: each examination: a file path or a raw channel-first array.
            batch_size: examinations per forward pass.
            failures: ``None``: any unusable input raises. A dict: each unusable input's index -> its error
                (PHI-redacted) is put there, and its patient is classified from its other examinations.
            on_batch: called after each batch (a progress bar).

        Returns:
            ``patients`` (in first-seen order), ``probabilities`` ``(P, K_out)``, ``gates`` ``(P, M)`` and
            ``counts`` ``(P, M)`` (examinations used per modality; a patient with none has meaningless outputs).

        Raises:
            DataError: with ``failures=None``, naming every input that could not be read or is of a modality the
                model does not take.
        """
        if int(batch_size) < 1:
            raise DataError(f"batch size {batch_size} must be >= 1", where="batch_size", fix="use e.g. 16")
        bs = int(batch_size)
        order = list(dict.fromkeys(patients))
        pidx = {p: i for i, p in enumerate(order)}
        feats = {m: np.zeros((len(order), int(self.meta["modalities"][m]["feature_dim"]))) for m in self.names}
        counts = np.zeros((len(order), len(self.names)), np.int64)
        bad: dict[int, str] = {i: f"modality {mm!r} is not one of the model's ({', '.join(self.names)})"
                               for i, mm in enumerate(modalities) if mm not in self.names}
        for j, m in enumerate(self.names):
            rows = [i for i, mm in enumerate(modalities) if mm == m]
            for start in range(0, len(rows), bs):
                xs, who = [], []
                for i in rows[start:start + bs]:
                    where = str(inputs[i]) if isinstance(inputs[i], (str, Path)) else f"input {i}"
                    try:
                        xs.append(self.prepare(m, inputs[i], where))
                        who.append(pidx[patients[i]])
                    except Exception as exc:  # noqa: BLE001 - every failure is collected and reported together
                        bad[i] = phi.redact(f"{where}: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}")
                if xs:
                    np.add.at(feats[m], np.asarray(who), self.embed(m, torch.stack(xs)))
                    np.add.at(counts[:, j], np.asarray(who), 1)
                if on_batch is not None:
                    on_batch()
        if bad and failures is None:
            raise DataError(f"{len(bad)} of {len(inputs)} input(s) could not be used: "
                            + "; ".join(list(bad.values())[:5]) + (" …" if len(bad) > 5 else ""), where="model input",
                            fix="pass files medcl reads with their patient and modality; `medcl predict` writes one "
                            "row per input with its status instead")
        if failures is not None:
            failures.update(bad)
        mean = {m: (feats[m] / np.maximum(counts[:, [j]], 1)).astype(np.float32) for j, m in enumerate(self.names)}
        probs, gates = self.fuse(mean, counts > 0)
        return {"patients": order, "probabilities": probs, "gates": gates, "counts": counts}


# ----------------------------------------------------------------------------------------------- segmentation
def whole_image_transform(preprocessing: dict[str, Any]) -> Any:
    """The run's evaluation transforms for segmenting a whole image or volume.

    The preset's chain without its evaluation crop/pad (sliding windows cover any size) and without the final
    meta-dropping step, so the result is a ``MetaTensor`` ``(C, *S)`` whose ``affine`` maps its voxels to the
    input's world (RAS) coordinates.
    """
    from monai import transforms as mt

    from medcl.transforms.compose import MedclCompose, PlainChain  # lazy: monai

    chain = eval_transform(preprocessing)
    # a 1D/2D preset's deterministic part runs on plain tensors (a PlainChain): here it must keep the affine
    steps = [u for t in chain.transforms for u in (t.transforms if isinstance(t, PlainChain) else [t])]
    return MedclCompose([t for t in steps if not isinstance(t, (mt.ResizeWithPadOrCropd, mt.EnsureTyped))])


class Segmenter(ModelInputs):
    """A logged segmentation network with its preprocessing: paths or raw arrays in, label maps out.

    Args:
        network: ``(b, C, *roi) -> (b, K, *roi)`` logits.
        meta: as :class:`ModelInputs`, plus ``class_names`` (``K`` names, background first), ``roi_size``,
            ``overlap``, ``sw_batch_size``, ``spatial_dims``, ``in_channels``, ``modality``.
    """

    def __init__(self, network: nn.Module, meta: dict[str, Any]) -> None:
        """Put the network in eval mode and keep the sliding-window settings and whole-image transforms."""
        super().__init__({**meta, "input_shape": None})
        self.model = network.eval()
        self.class_names = [str(c) for c in meta["class_names"]]
        self.roi_size = [int(s) for s in meta["roi_size"]]
        self.overlap = float(meta.get("overlap", 0.25))
        self.sw_batch_size = int(meta.get("sw_batch_size", 4))
        self.spatial_dims = int(meta["spatial_dims"])
        self.in_channels = int(meta["in_channels"])
        self.whole = whole_image_transform(self.preprocessing)
        self.last_source_grid: tuple[tuple[int, ...] | None, np.ndarray | None] = (None, None)

    def prepare_whole(self, item: Any, where: str = "input") -> tuple[torch.Tensor, np.ndarray | None]:
        """One path or raw array through :func:`whole_image_transform`.

        The input's own grid is kept in :attr:`last_source_grid` (``(spatial shape, affine or None)``, from
        the reader).

        Args:
            item: a file path or a raw channel-first array.
            where: how errors name the input.

        Returns:
            ``((C, *S) float32 tensor, its 4×4 voxel-to-RAS affine or None)``.

        Raises:
            DataError: not the channels or dimensions the network takes.
        """
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        x = self.whole({"image": str(item) if not isinstance(item, np.ndarray) else item})["image"]
        affine = getattr(x, "affine", None)
        affine = None if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
        meta = getattr(x, "meta", None) or {}
        shape, original = meta.get("shape"), meta.get("original_affine")
        self.last_source_grid = (tuple(int(d) for d in np.asarray(shape).reshape(-1)[1:]) if shape is not None else None,
                                 None if original is None else np.asarray(original, dtype=np.float64))
        x = torch.as_tensor(getattr(x, "as_tensor", lambda x=x: x)()).float()
        if x.shape[0] != self.in_channels or x.ndim - 1 != self.spatial_dims:
            raise DataError(f"preprocessed to shape {tuple(x.shape)} but the network takes {self.in_channels} "
                            f"channel(s) and {self.spatial_dims} dimensions", where=where,
                            fix="use files of the kind the model was trained on (modality, 2D/3D)")
        return x, affine

    def labels(self, x: torch.Tensor) -> np.ndarray:
        """``(*S)`` uint8 label map (argmax of the sliding-window logits) of one preprocessed sample ``(C, *S)``."""
        dev = next(self.model.parameters()).device
        logits = sliding_window_predict(self.model, x[None].to(dev), self.roi_size, sw_batch_size=self.sw_batch_size,
                                        overlap=self.overlap)
        return logits_to_labels(logits)[0, 0].cpu().numpy().astype(np.uint8)

    def predict(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Label maps of ``inputs`` (paths or raw arrays), in the preprocessed grid.

        Returns:
            ``{"labels": (*S) uint8, "affine": (4, 4) or None}`` per input.

        Raises:
            DataError: naming every input that could not be read (nothing is skipped).
        """
        out, failed = [], []
        for k, item in enumerate(inputs):
            where = str(item) if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") else f"input {k}"
            try:
                x, affine = self.prepare_whole(item, where)
            except Exception as exc:  # noqa: BLE001 - every failure is collected and reported together
                failed.append(phi.redact(f"{where}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"))
                continue
            out.append({"labels": self.labels(x), "affine": affine})
        if failed:
            raise DataError(f"{len(failed)} of {len(inputs)} input(s) could not be segmented: " + "; ".join(failed[:5]),
                            where="model input", fix="pass files medcl reads of the kind the model was trained on; "
                            "`medcl predict` writes one row per input with its status instead")
        return out
