"""Slide-level classification from tile features: attention-based multiple-instance learning and mean pooling.

A slide is a *bag* of tile feature vectors ``(K, D)`` with one label for the bag; which tiles carry the finding is
unknown (a tumour may cover a few percent of the tissue). Two poolings of the instances:

* :class:`GatedAttentionMIL` — Ilse, Tomczak & Welling 2018, "Attention-based Deep Multiple Instance Learning"
  (ICML), the gated attention of their eq. 9: instance embeddings ``h_k = ReLU(W h'_k)``, weights
  ``a_k = softmax_k(w^T (tanh(V h_k) ⊙ sigmoid(U h_k)))``, bag embedding ``z = Σ_k a_k h_k``, a linear classifier
  on ``z``. The weights ``a`` sum to one over the bag and say which tiles decided.
* :class:`MeanPoolMIL` — the baseline: the same embedding, averaged over the bag (uniform weights).

:func:`fit_bags` trains either one bag per step (as Ilse et al.; bags differ in size) with AdamW and cross-entropy;
:func:`predict_bags` returns class probabilities and the attention of each bag, :func:`bag_logits` the logits (for
calibration). What differs from the paper: the instance features come from a frozen (self-supervised) encoder
instead of a CNN trained end to end, and AdamW replaces Adam (the same with weight decay decoupled). The paper's end
to end training is the baseline :class:`EndToEndMIL` / :func:`fit_end_to_end`: a random-init encoder and a pooling
trained together on the slide labels, a random subset of each slide's tiles per step (whole slides do not fit in
memory; Ilse et al.'s bags were small).
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018, eq. 9) over bags of ``in_dim`` features.

    Args:
        in_dim: feature size ``D`` of a tile.
        n_classes: classes of the bag label.
        hidden: size of the instance embedding ``h_k``.
        attention_dim: size of the attention's hidden layer (``V``, ``U``: ``attention_dim x hidden``).
        dropout: dropout on the instance embeddings while training.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, attention_dim: int = 64,
                 dropout: float = 0.25) -> None:
        """Build the embedding, the gated attention and the classifier."""
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bag`` ``(K, D)`` → ``(logits (n_classes,), attention (K,))``, the attention summing to one."""
        h = self.embed(bag)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        a = torch.softmax(scores, dim=0)
        return self.classifier(a @ h), a


class MeanPoolMIL(nn.Module):
    """The mean-pooling baseline: the same instance embedding, averaged over the bag, then a linear classifier."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        """Build the embedding and the classifier."""
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bag`` ``(K, D)`` → ``(logits (n_classes,), uniform weights (K,))``."""
        h = self.embed(bag)
        return self.classifier(h.mean(0)), torch.full((bag.shape[0],), 1.0 / bag.shape[0])


#: pooling name -> model class
POOLINGS: dict[str, type[nn.Module]] = {"attention": GatedAttentionMIL, "mean": MeanPoolMIL}


def fit_bags(model: nn.Module, bags: list[torch.Tensor], labels: list[int], *, epochs: int, lr: float,
             weight_decay: float, seed: int) -> list[float]:
    """Train ``model`` on ``bags`` (each ``(K_i, D)``) with their class ``labels``, one bag per optimiser step.

    Returns:
        The mean training loss of each epoch.
    """
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    y = torch.as_tensor(labels, dtype=torch.long)
    history = []
    model.train()
    for _ in range(int(epochs)):
        total = 0.0
        for i in torch.randperm(len(bags), generator=g).tolist():
            logits, _ = model(bags[i])
            loss = nn.functional.cross_entropy(logits[None], y[i:i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append(total / max(1, len(bags)))
    return history


@torch.no_grad()
def predict_bags(model: nn.Module, bags: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(probabilities (N, n_classes), [attention (K_i,)])`` of each bag, in eval mode."""
    model.eval()
    probs, attention = [], []
    for bag in bags:
        logits, a = model(bag)
        probs.append(torch.softmax(logits, dim=-1))
        attention.append(a)
    return torch.stack(probs) if probs else torch.zeros(0, 0), attention


@torch.no_grad()
def bag_logits(model: nn.Module, bags: list[torch.Tensor]) -> torch.Tensor:
    """The logits ``(N, n_classes)`` of each bag, in eval mode."""
    model.eval()
    return torch.stack([model(bag)[0] for bag in bags]) if bags else torch.zeros(0, 0)


class EndToEndMIL(nn.Module):
    """An encoder and a pooling trained together: tiles ``(K, C, H, W)`` → the pooling's ``(logits, weights (K,))``.

    Args:
        encoder: ``(K, C, H, W) -> (K, D)`` (a :class:`medcl.networks.base.Encoder`).
        pooling: one of :data:`POOLINGS`, built for ``D`` features.
    """

    def __init__(self, encoder: nn.Module, pooling: nn.Module) -> None:
        """Keep both."""
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the tiles, pool them."""
        return self.pooling(self.encoder(tiles))


def fit_end_to_end(model: EndToEndMIL, draw_bag, labels: list[int], *, steps: int, lr: float, weight_decay: float,
                   seed: int, log=None) -> list[float]:
    """Train ``model`` end to end, one slide per optimiser step, the slides in a new random order every pass.

    AdamW with 10 % linear warmup and a cosine decay (a from-scratch recipe: no layer-wise decay).

    Args:
        model: encoder + pooling.
        draw_bag: ``draw_bag(i, generator) -> (K, C, H, W)`` tiles of slide ``i`` (a random, augmented subset).
        labels: each slide's class.
        steps: optimiser steps.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        seed: the slide order and the tile draws.
        log: ``log(step, mean loss of the last steps)`` every tenth of the budget (progress lines).

    Returns:
        The loss of every step.
    """
    import math

    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / warm if t < warm else
                                              0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm))))
    y = torch.as_tensor(labels, dtype=torch.long)
    order: list[int] = []
    history: list[float] = []
    model.train()
    for step in range(int(steps)):
        if not order:
            order = torch.randperm(len(labels), generator=g).tolist()
        i = order.pop()
        logits, _ = model(draw_bag(i, g))
        loss = nn.functional.cross_entropy(logits[None], y[i:i + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        every = max(1, steps // 10)
        if log is not None and ((step + 1) % every == 0 or step + 1 == steps):
            log(step + 1, sum(history[-every:]) / len(history[-every:]))
    return history
