"""The primary model: the one classifier a classify stage hands on to calibration, export and the report.

It is the pretrained encoder's linear probe (or, with fine-tuning, the fine-tuned pretrained model) at the
largest label fraction; a run without pretraining hands on its random-init or from-scratch baseline. The
classify stage saves it once (:meth:`PrimaryModel.save`); the calibrate stage and the report material rebuild
the same network from that (:meth:`PrimaryModel.parts`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcl.checkpoint_file import load_checkpoint, save_checkpoint
from medcl.readers.base import jsonable
from medcl.tasks.classification import ClassifierModel, num_outputs_for_task
from medcl.tasks.export import linear_head_from_probe

#: the arrays saved next to the description: logits, labels, row indices and patients of val and test, and the
#: out-of-fold training logits of a cross-fitted calibration
ARRAYS = ("val_logits", "test_logits", "val_y", "test_y", "val_index", "test_index", "val_patients",
          "test_patients", "oof_logits", "oof_y", "oof_patients")


@dataclass
class PrimaryModel:
    """What the primary model is and where its weights are.

    Attributes:
        kind: ``"linear"`` (a linear probe on a frozen encoder) or ``"finetune"``.
        encoder: which encoder it starts from: ``"ssl"`` (pretrained), ``"random"`` or ``"scratch"``.
        head: the linear probe's state (:meth:`LinearProbeModel.to_dict`), for ``kind="linear"``.
        weights: the fine-tuned ``ClassifierModel`` checkpoint, for ``kind="finetune"``.
        encoder_weights: the frozen encoder's weights file, for ``kind="linear"`` (the pretrained ``encoder.pt``,
            or the random init the probe was fitted on, so that a rebuilt model is the one evaluated).
        threshold: the binary operating point chosen on the validation patients (``None`` otherwise).
        cross_fit_folds: folds of the out-of-fold training logits (0: calibration on validation only).
        arrays: the logits and labels of :data:`ARRAYS` (not in the JSON description).
    """

    kind: str
    encoder: str
    head: dict[str, Any] | None = None
    weights: str | None = None
    encoder_weights: str | None = None
    threshold: float | None = None
    cross_fit_folds: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Write ``primary.npz`` (the arrays) and ``primary.json`` (the rest) into ``directory``."""
        npz, meta = directory / "primary.npz", directory / "primary.json"
        np.savez(npz, **self.arrays)
        description = {k: v for k, v in asdict(self).items() if k != "arrays"}
        meta.write_text(json.dumps(jsonable(description)))
        return npz, meta

    @classmethod
    def load(cls, npz: str | Path, meta: str | Path) -> PrimaryModel:
        """The primary model :meth:`save` wrote."""
        description = json.loads(Path(meta).read_text())
        known = {k: v for k, v in description.items() if k in cls.__dataclass_fields__}
        return cls(**known, arrays=dict(np.load(npz)))

    def parts(self, make_encoder: Callable[[str | None], nn.Module], task: str,
              n_classes: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """The network, as ``(encoder, head weight (K, D), head bias (K,))``.

        That is the probe's frozen encoder with its linear head, or the fine-tuned model's encoder and head.

        Args:
            make_encoder: builds the run's encoder architecture with the given weights file (``None``: random).
            task: ``binary``, ``multiclass``, ``multilabel`` or ``ordinal``.
            n_classes: number of classes.
        """
        if self.kind == "linear":
            w, b = linear_head_from_probe(self.head)
            return make_encoder(self.encoder_weights), w, b
        model = ClassifierModel(make_encoder(None), num_outputs_for_task(task, n_classes), task)
        model.load_state_dict(load_checkpoint(self.weights)["model"])
        return model.encoder, model.head.weight.detach(), model.head.bias.detach()

    @staticmethod
    def save_encoder(encoder: nn.Module, path: Path) -> str:
        """Save a frozen encoder's weights (a random init) in the ``encoder.pt`` layout; returns the path."""
        save_checkpoint(path, {"encoder": encoder.state_dict(), "feature_dim": getattr(encoder, "feature_dim", None)})
        return str(path)
