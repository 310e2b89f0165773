"""MoCo v3: online network + predictor contrasted against a momentum (EMA) target network.

Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
arXiv:2104.02057.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from medcl.losses import KeyQueue, MoCoV3Loss, cosine_momentum, momentum_update
from medcl.methods.base import Method, view_stats
from medcl.networks.base import Encoder
from medcl.networks.heads import PredictorHead, ProjectionHead


class MoCoV3(Method):
    """Online encoder + projector + predictor against a momentum (EMA) copy of encoder + projector.

    ``loss = ctr(q1, k2) + ctr(q2, k1)`` with ``q = predictor(projector(encoder(x)))`` and
    ``k = target_projector(target_encoder(x))`` (no gradient). After each optimiser step
    :meth:`on_step_end` moves the target towards the online network with momentum
    ``m(step)`` rising from ``base_momentum`` to ``final_momentum`` along a half cosine.
    An optional queue of past keys (MoCo v2 style, ``queue_size > 0``) adds negatives when
    per-GPU batches are tiny (3D volumes).

    Args:
        encoder: the backbone.
        temperature: 1.0 for ResNets, 0.2 for ViTs in the paper.
        hidden_dim, out_dim: projector (4096 → 256, BN on the output) and predictor (2 layers, 4096) widths.
        projector_layers: linear layers of the projector; ``None``, the paper's code: 3 for a ViT encoder
            (``MoCo_ViT``), 2 for the others (``MoCo_ResNet``: every CNN of medcl).
        pred_hidden_dim: predictor hidden width (defaults to ``hidden_dim``).
        predictor: ``False`` drops the predictor (``q = projector(encoder(x))``): **not MoCo v3**, whose online
            branch ends in one as BYOL's does; for the benchmark's ablation of what the predictor costs at a short
            budget (``benchmarks/bench_quality.py``, ``moco_no_predictor``).
        base_momentum, final_momentum: EMA schedule (0.99 → 1.0).
        queue_size: 0 (no queue, as MoCo v3) or the number of past keys kept.
        gather_distributed: keys (and queue entries) from all GPUs.

    Batch:
        ``views`` ``(B, V>=2, C, *S)`` (views 0 and 1 are used).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 1.0,
        hidden_dim: int = 4096,
        out_dim: int = 256,
        projector_layers: int | None = None,
        pred_hidden_dim: int | None = None,
        predictor: bool = True,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        queue_size: int = 0,
        gather_distributed: bool = False,
    ) -> None:
        """Build projector and predictor, the frozen target copies of encoder + projector, and the key queue."""
        super().__init__(encoder)
        if projector_layers is None:
            projector_layers = 3 if encoder.name.startswith("vit") else 2
        self.projector = ProjectionHead(encoder.feature_dim, hidden_dim, out_dim, num_layers=projector_layers,
                                        last_bn=True)
        self.predictor = PredictorHead(out_dim, pred_hidden_dim or hidden_dim, out_dim) if predictor else nn.Identity()
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in (*self.target_encoder.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)
        self.criterion = MoCoV3Loss(temperature, gather_distributed=gather_distributed)
        self.queue = KeyQueue(queue_size, out_dim, gather_distributed=gather_distributed) if queue_size > 0 else None
        self.base_momentum, self.final_momentum = float(base_momentum), float(final_momentum)
        self.momentum = self.base_momentum

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Symmetric MoCo v3 loss ``ctr(q1, k2) + ctr(q2, k1)`` of views 0 and 1.

        In training the new keys ``k1, k2`` are pushed onto the queue (when there is one) after the loss.

        Args:
            batch: ``views`` ``(B, V>=2, C, *S)``; only views 0 and 1 are used.

        Returns:
            ``{"loss", "momentum", "pos_cos", "z_std"}``: the loss (scalar, with gradient), the current EMA
            momentum (scalar) and the :func:`~medcl.methods.base.view_stats` monitors of the predictions
            ``(B, 2, out_dim)``.
        """
        v = self.views(batch)[:, :2]
        b = v.shape[0]
        x = v.transpose(0, 1).flatten(0, 1)  # (2B, C, *S): view-major
        q = self.predictor(self.projector(self.encoder(x)))
        with torch.no_grad():
            k = self.target_projector(self.target_encoder(x))
        q1, q2 = q[:b], q[b:]
        k1, k2 = k[:b], k[b:]
        queue = self.queue.keys() if self.queue is not None and int(self.queue.filled) > 0 else None
        loss = self.criterion(q1, k2, queue) + self.criterion(q2, k1, queue)
        if self.queue is not None and self.training:
            self.queue.enqueue(torch.cat([k1, k2]))
        return {
            "loss": loss,
            "momentum": torch.tensor(self.momentum, device=loss.device),
            **view_stats(torch.stack([q1, q2], dim=1)),
        }

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target networks with the cosine momentum of ``step``."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        momentum_update(self.encoder, self.target_encoder, self.momentum)
        momentum_update(self.projector, self.target_projector, self.momentum)
