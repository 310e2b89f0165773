"""The deployable model: encoder → linear head → calibration, returning probabilities.

Logged to MLflow with the pytorch flavour, so ``mlflow.pyfunc.load_model(uri).predict(x)``
on preprocessed input ``x`` (float32 ``(N, C, *spatial)``, the eval transforms of the run's
modality preset) returns calibrated probabilities: ``(N, K)`` softmax for multi-class/ordinal,
``(N, 1)`` sigmoid of the positive class for binary, ``(N, K)`` sigmoids for multi-label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class CalibratedClassifier(nn.Module):
    """``probs = act(calibrate(head(encoder(x))))``.

    Args:
        encoder: feature extractor ``(N, C, *S) -> (N, D)``.
        weight, bias: linear head ``(K_out, D)``, ``(K_out,)`` (standardisation folded in).
        task: ``binary`` | ``multiclass`` | ``ordinal`` | ``multilabel``.
        calibration: ``{"kind": "temperature", "t": float or list}`` (per-label for multilabel),
            ``{"kind": "vector", "w": (K,), "b": (K,)}``, ``{"kind": "matrix", "w": (K, K), "b": (K,)}``
            applied to log-probabilities (Dirichlet), or ``{"kind": "none"}``.
    """

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor, task: str,
                 calibration: dict[str, Any] | None = None) -> None:
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        if f.ndim > 2:
            f = f.flatten(2).mean(-1)
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
