"""Patient-aware methods: MICLe (Azizi et al. 2021) and CLOCS (Kiyasseh, Zhu, Clifton 2021)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medcl.losses import CLOCSLoss
from medcl.methods.base import ContrastiveMethod, CriterionMethod, view_stats
from medcl.networks.base import Encoder


class MICLe(CriterionMethod):
    """Multi-Instance Contrastive Learning: images of the same patient are positives.

    Azizi et al., "Big Self-Supervised Models Advance Medical Image Classification", ICCV 2021.

    Views of *different images of the same patient* in the batch are positives (besides the
    views of the same image); patients are given by ``batch["patient"]`` (``-1`` = unknown,
    then only the image's own views are positives, i.e. SimCLR). The pretrain stage forms its batches from
    ``P`` patients × ``K`` images (``pretrain.batches: auto`` → ``patients``,
    :class:`~medcl.data.sampling.PatientBatchSampler`), so every anchor meets ``K - 1`` other images of its
    patient; with shuffled batches they would meet only by chance.

    Differs from the paper: Azizi et al. draw *one pair* of images per patient (each image augmented once)
    and use the NT-Xent of SimCLR on those pairs; here every view of every image of the patient in the batch
    is a positive of every other (the multi-positive form of :class:`~medcl.losses.PatientContrastLoss`), and
    each image also gets its own augmented views.

    Args:
        encoder: the backbone.
        **options: ``temperature``, projector sizes, ``gather_distributed`` (negatives and patient ids from all
            GPUs) and the options of :class:`~medcl.losses.PatientContrastLoss`.

    Batch:
        ``views`` ``(B, V>=2, C, *S)``, ``patient`` ``(B,)`` int64.
    """

    needs = ("patient",)
    loss = "patient"
    batches = "patients"

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MICLe loss of the embedded views with ``batch["patient"]`` as the grouping.

        Returns:
            ``{"loss", "pos_cos", "z_std"}``: the loss (scalar, with gradient) and the
            :func:`~medcl.methods.base.view_stats` monitors of the projections ``(B, V, out_dim)``.
        """
        z = self.embed_views(self.views(batch))
        patient = self.require(batch, "patient").long()
        return {"loss": self.criterion(z, patient), **view_stats(z)}


class CLOCS(ContrastiveMethod):
    """CLOCS for ECG: segments and lead groups of one recording (or patient) are positives.

    Kiyasseh et al., "Contrastive Learning of Cardiac Signals Across Space, Time, and Patients",
    ICML 2021.

    The V views of a row are cut by the ECG preset's ``transforms.view_mode``
    (:class:`~medcl.transforms.views.ClocsViewsd`; the ``clocs`` preset sets ``cmsc``): temporally adjacent,
    non-overlapping segments (CMSC), lead groups of one window (CMLC) or both (CMSMLC). Each view is contrasted
    with the other views (``cross_view_only``, as in the paper), positives being views of the same patient (the
    paper's choice), of the same recording (``batch["record"]``: a manifest ``record`` column, else each row), or
    of the same row.

    Differs from the paper: CLOCS feeds each lead as a separate single-lead input; here one 12-lead encoder sees
    a view's lead group with the other leads zeroed (default groups: limb vs precordial), and views may also get
    the preset's intensity augmentations (amplitude, wander, noise, lead dropout; set their probabilities to 0
    for the paper's plain segments).

    Args:
        encoder: a 1D backbone (``xresnet1d``, ``resnet1d``).
        temperature: softmax temperature (0.1 in the paper).
        positives: ``"patient"`` (default), ``"record"`` or ``"sample"``.
        cross_view_only: contrast only across views, as in the paper.
        hidden_dim, out_dim, num_layers: projector.
        gather_distributed: negatives from all GPUs.

    Batch:
        ``views`` ``(B, V>=2, leads, T)``, ``patient`` ``(B,)`` (for ``positives="patient"``),
        ``record`` ``(B,)`` (for ``positives="record"``).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.1,
        positives: str = "patient",
        cross_view_only: bool = True,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
    ) -> None:
        """Build the projector and the CLOCS criterion; ``needs`` follows ``positives``."""
        super().__init__(encoder, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        self.criterion = CLOCSLoss(temperature, positives=positives, cross_view_only=cross_view_only,
                                   gather_distributed=gather_distributed)
        self.positives = positives
        self.needs = {"patient": ("patient",), "record": ("record",)}.get(positives, ())

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CLOCS loss of the embedded views, grouped by ``patient`` or ``record`` as ``positives`` says.

        Returns:
            ``{"loss", "pos_cos", "z_std"}``: the loss (scalar, with gradient) and the
            :func:`~medcl.methods.base.view_stats` monitors of the projections ``(B, V, out_dim)``.
        """
        z = self.embed_views(self.views(batch))
        patient = self.require(batch, "patient").long() if self.positives == "patient" else None
        record = self.require(batch, "record").long() if self.positives == "record" else None
        return {"loss": self.criterion(z, patient, record), **view_stats(z)}
