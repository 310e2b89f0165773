"""Image/signal–text contrastive loss of CLIP, with optional soft targets from label similarity.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision", ICML.

Each image (or ECG) embedding ``u_i`` is paired with the embedding ``v_i`` of its report. With ``s = exp(t)`` (a
learnable logit scale, the inverse temperature, initialised at 1/0.07 and clamped at 100 as in the paper), the
logits are ``s · û_i · v̂_j`` over the batch and the loss is the symmetric cross-entropy
``(CE(logits, targets) + CE(logitsᵀ, targetsᵀ)) / 2``.

* Hard targets (CLIP): the report of the same sample, ``targets = I``.
* Soft targets (``similarity`` given, after Ultrasound-CLIP's semantic soft labels): two reports of the same finding
  are not negatives. Row ``i`` of the target is ``S[y_i, y_j]`` over the batch's keys ``j`` (``S`` a class
  similarity with ones on its diagonal), normalised to sum to one; a sample without a label (``-1``) keeps the
  one-hot target. With ``S = I`` every same-class pair is a positive of equal weight.
* Distributed (``gather_distributed``): the local images are contrasted with every rank's texts and the local
  texts with every rank's images (gathered with gradient, as OpenCLIP's ``local_loss``); the mean over anchors is
  the global one (:func:`medcl.losses._common.ddp_denominator`), so losses and gradients equal one process's on the
  whole batch — the logit scale's included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.losses._common import check_shape, compute_dtype, ddp_denominator, gather_rows


def _targets(labels: torch.Tensor | None, keys_labels: torch.Tensor | None, similarity: torch.Tensor | None,
             n: int, big_n: int, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n, N)`` target distributions of the local anchors over the global keys."""
    eye = torch.zeros(n, big_n, device=device, dtype=dtype)
    eye[torch.arange(n, device=device), torch.arange(n, device=device) + offset] = 1.0
    if similarity is None or labels is None:
        return eye
    lab, key = labels.long(), keys_labels.long()
    ok_a, ok_k = lab >= 0, key >= 0
    s = similarity.to(device=device, dtype=dtype)[lab.clamp_min(0)][:, key.clamp_min(0)]  # (n, N)
    s = s * ok_a[:, None] * ok_k[None, :]
    s = torch.maximum(s, eye)  # the sample's own report is always a positive
    return torch.where(ok_a[:, None], s / s.sum(1, keepdim=True), eye)


class CLIPLoss(nn.Module):
    """Symmetric InfoNCE between paired embeddings of two modalities, with a learnable temperature.

    Args:
        temperature: initial temperature (CLIP: 0.07); the learnable parameter is ``log(1 / temperature)``.
        learn_temperature: train the logit scale with the encoders (else fixed).
        max_scale: the logit scale is clamped to at most this (CLIP: 100).
        similarity: optional ``(K, K)`` class similarity for soft targets (diagonal ones, entries in [0, 1]).
        gather_distributed: contrast against every rank's embeddings (no-op on one process).

    Shapes:
        ``forward(u (N, D), v (N, D), labels (N,) | None) -> ()``: ``u[i]`` and ``v[i]`` belong together.
    """

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0,
                 similarity: torch.Tensor | list | None = None, gather_distributed: bool = False) -> None:
        """Set up the logit scale and the optional class similarity."""
        super().__init__()
        if not 0 < float(temperature) < 10:
            raise ConfigError(f"CLIP temperature must be in (0, 10), got {temperature}", where="CLIPLoss",
                              fix="use 0.07 (CLIP's initial value)")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(temperature))),
                                        requires_grad=bool(learn_temperature))
        self.max_scale = float(max_scale)
        sim = None
        if similarity is not None:
            sim = torch.as_tensor(similarity, dtype=torch.float64)
            if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or not torch.allclose(sim.diagonal(), torch.ones(len(sim),
                                                                                                           dtype=sim.dtype)):
                raise ConfigError(f"the class similarity must be square with ones on its diagonal, got shape "
                                  f"{tuple(sim.shape)}", where="CLIPLoss.similarity",
                                  fix="give S[i][j] in [0, 1] with S[i][i] = 1 (the identity: same class = positive)")
            if (sim < 0).any() or (sim > 1).any():
                raise ConfigError("class similarities must lie in [0, 1]", where="CLIPLoss.similarity",
                                  fix="rescale the similarity matrix")
        self.register_buffer("similarity", sim, persistent=False)
        self.gather_distributed = bool(gather_distributed)

    def scale(self) -> torch.Tensor:
        """The current logit scale ``min(exp(t), max_scale)``."""
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def forward(self, u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The symmetric loss, mean over the ``2N`` anchors (images, then texts).

        Raises:
            DataError: the embeddings are not both ``(N, D)`` of one shape, or the labels not ``(N,)``.
        """
        check_shape(u, 2, "CLIPLoss", "u", "(N, D)")
        check_shape(v, 2, "CLIPLoss", "v", "(N, D)")
        if u.shape != v.shape:
            raise DataError(f"image {tuple(u.shape)} and text {tuple(v.shape)} embeddings differ", where="CLIPLoss",
                            fix="project both modalities to the same (N, D)")
        if labels is not None and labels.shape != (u.shape[0],):
            raise DataError(f"labels {tuple(labels.shape)} for {u.shape[0]} pairs", where="CLIPLoss",
                            fix="one class index per pair (-1 without a label)")
        n, d = u.shape
        dt = compute_dtype(u.dtype)
        un, vn = F.normalize(u, dim=1), F.normalize(v, dim=1)
        g, (gl,), offset = gather_rows(self.gather_distributed, torch.cat([un, vn], dim=1), labels)
        big_n = g.shape[0]
        s = self.scale().to(dt)
        logits_u = (un @ g[:, d:].T).to(dt) * s  # local images vs every text (n, N)
        logits_v = (vn @ g[:, :d].T).to(dt) * s  # local texts vs every image (n, N)
        sim = self.similarity if labels is not None else None
        tgt = _targets(labels, gl, sim, n, big_n, offset, u.device, dt)
        total = -(tgt * F.log_softmax(logits_u, dim=1)).sum() - (tgt * F.log_softmax(logits_v, dim=1)).sum()
        return total / ddp_denominator(torch.tensor(2.0 * n, device=u.device, dtype=dt), self.gather_distributed)

    def extra_repr(self) -> str:
        """Temperature and options."""
        return (f"temperature={1.0 / float(self.scale()):.4f}, learn={self.logit_scale.requires_grad}, "
                f"soft_targets={self.similarity is not None}, gather_distributed={self.gather_distributed}")
