"""Patient-aware positives: MICLe (Azizi et al. 2021) and CLOCS (Kiyasseh, Zhu, Clifton 2021)."""

from __future__ import annotations

import torch

from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.losses.supcon import SupConLoss, label_positives


class PatientContrastLoss(SupConLoss):
    """Multi-instance contrast: views of *different images of the same patient* are positives.

    MICLe — Azizi et al., "Big Self-Supervised Models Advance Medical Image Classification", ICCV 2021
    (arXiv:2101.05224). Implemented as SupCon ("out") with patient indices as labels, so every image
    of a patient in the batch (and on other ranks when gathered) is a positive for each of its views.

    Shapes:
        ``forward(features (N, V, D), patient (N,) int64) -> ()``; ``patient < 0`` = unknown (SimCLR).
    """

    def forward(self, features: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """MICLe loss of a batch: SupCon with the patient index as label.

        Args:
            features: ``(N, V, D)`` L2-normalised projections of ``V`` views.
            patient: ``(N,)`` int64 patient indices (``< 0`` = unknown: only its own views are positives).

        Returns:
            Scalar loss.

        Raises:
            DataError: no patient ids.
        """
        if patient is None:
            raise DataError("patient ids are required", where="PatientContrastLoss",
                            fix="pass batch['patient'] (N,) int64, or use SupConLoss without labels")
        vb = self._views(features, patient, names=("patient",))
        return self._finish(vb, label_positives(vb))


CLOCS_POSITIVES = ("patient", "record", "sample")


class CLOCSLoss(SupConLoss):
    """CLOCS for ECG: segments/lead groups of the same record — optionally the same patient — are positives.

    Kiyasseh, Zhu, Clifton, "CLOCS: Contrastive Learning of Cardiac Signals Across Space, Time, and
    Patients", ICML 2021 (arXiv:2005.13249). The V views of a row are different time segments (CMSC),
    lead groups (CMLC) or both (CMSMLC) of one record. As in the paper, each view is contrasted only
    against the *other* views (``cross_view_only``); positives are:

    * ``"sample"``: the other views of the same row;
    * ``"record"``: also every view of other rows cut from the same record (needs ``record`` ids);
    * ``"patient"`` (the paper's patient-specific setting): every view of the same patient.

    The per-anchor average over positives follows the SupCon "out" form (each anchor weighs equally),
    where the CLOCS code averages over positive pairs.

    Args:
        temperature: softmax temperature (the paper uses 0.1).
        positives: ``"patient"``, ``"record"`` or ``"sample"``.
        cross_view_only: contrast a view only with other views (True, as in CLOCS) or with all keys.
        gather_distributed: keys and ids from all ranks; no-op on one process.

    Shapes:
        ``forward(features (N, V, D), patient (N,) int64, record (N,) int64 | None) -> ()``.
    """

    def __init__(self, temperature: float = 0.1, positives: str = "patient", cross_view_only: bool = True,
                 gather_distributed: bool = False) -> None:
        """Check the positives mode and keep it with the cross-view setting."""
        super().__init__(temperature=temperature, gather_distributed=gather_distributed)
        if positives not in CLOCS_POSITIVES:
            raise ConfigError(f"positives={positives!r} is unknown", where="CLOCSLoss",
                              fix=f"{did_you_mean(positives, CLOCS_POSITIVES)}"
                              f"use one of {', '.join(CLOCS_POSITIVES)}")
        self.positives = positives
        self.cross_view_only = bool(cross_view_only)

    def forward(self, features: torch.Tensor, patient: torch.Tensor | None = None,  # type: ignore[override]
                record: torch.Tensor | None = None) -> torch.Tensor:
        """CLOCS loss of a batch of ``V`` segments or lead groups per row.

        Args:
            features: ``(N, V, D)`` L2-normalised projections.
            patient: ``(N,)`` int64 patient indices (needed for ``positives="patient"``).
            record: ``(N,)`` int64 record indices (needed for ``positives="record"``).

        Returns:
            Scalar loss.

        Raises:
            DataError: the ids the positives mode needs are missing.
        """
        if self.positives == "patient" and patient is None:
            raise DataError("positives='patient' needs patient ids", where="CLOCSLoss",
                            fix="pass batch['patient'], or set positives='sample'")
        if self.positives == "record" and record is None:
            raise DataError("positives='record' needs record ids", where="CLOCSLoss",
                            fix="pass record ids (N,) int64, or set positives='sample'")
        ids = {"patient": patient, "record": record, "sample": None}[self.positives]
        vb = self._views(features, ids, names=(self.positives,))
        exclude = vb.self_mask
        if self.cross_view_only:
            exclude = vb.anchor_view[:, None] == vb.key_view[None, :]
        pos = label_positives(vb) & ~exclude
        return self._finish(vb, pos, exclude=exclude)

    def extra_repr(self) -> str:
        """Temperature, positives mode, cross-view and distributed settings, for ``print(module)``."""
        return (f"temperature={self.temperature}, positives={self.positives!r}, "
                f"cross_view_only={self.cross_view_only}, gather_distributed={self.gather_distributed}")
