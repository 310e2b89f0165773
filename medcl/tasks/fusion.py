"""Gated multimodal fusion: a patient classified from the embeddings of all its modalities.

The gate follows Gated Symile (Rheude et al. 2026, "Hidden in the Multiplicative Interaction", arXiv 2604.05834):
each modality's embedding is interpolated toward a learnable *neutral* direction by a gate computed with attention
that has an explicit NULL option — when the other inputs give no reason to trust a modality, attention goes to
NULL and the modality is replaced by its neutral embedding; a missing modality is gated to zero outright.

What differs from the paper: the paper gates the embeddings inside a contrastive objective (Symile's multilinear
inner product, per retrieval candidate); here the gated embeddings feed a supervised classification head, the
attention of modality *i* runs over the keys of the patient's other present modalities plus NULL (a patient's only
modality is not gated), and robustness is trained with modality dropout and mislinked inputs (another patient's
embedding) rather than arising from the contrastive candidates.

Shapes: ``B`` patients, ``M`` modalities (in the model's order), ``D_m`` the feature size of modality *m*, ``H`` the
hidden size, ``K`` the classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class GatedFusion(nn.Module):
    """Per-modality projections, attention gates with a NULL option, neutral embeddings and a linear head.

    Args:
        dims: modality -> its feature size ``D_m`` (the order is the model's modality order).
        n_out: logits ``K``.
        hidden: ``H``, the size every modality is projected to.
        gate_dim: query/key size of the gates.
        dropout: dropout before the head.
        gated: learned gates; ``False``: the gate is 1 for a present modality and 0 for a missing one (plain late
            fusion with a learned stand-in for a missing modality — the ungated baseline).
    """

    def __init__(self, dims: Mapping[str, int], n_out: int, *, hidden: int = 64, gate_dim: int = 32,
                 dropout: float = 0.1, gated: bool = True) -> None:
        """Build the projections, the gates' queries and keys, the neutral embeddings and the head."""
        super().__init__()
        self.names = list(dims)
        self.gated = gated
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU())
                                   for m, d in dims.items()})
        self.neutral = nn.Parameter(torch.zeros(len(dims), hidden))  # (M, H) the learnable neutral directions
        self.query = nn.ModuleDict({m: nn.Linear(hidden, gate_dim) for m in dims})
        self.key = nn.ModuleDict({m: nn.Linear(hidden, gate_dim) for m in dims})
        self.null_key = nn.Parameter(torch.randn(gate_dim) / math.sqrt(gate_dim))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * len(dims), n_out))

    def gates(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` gates in [0, 1] from the projected embeddings ``h`` ``(B, M, H)`` and ``present`` ``(B, M)``.

        ``g_i = 1 - a_i,NULL`` with ``a_i = softmax([q_i·k_j for the other present j] ++ [q_i·k_NULL]) / sqrt(dim)``:
        a modality counts as far as the others vouch for it. Zero where modality *i* is missing, one where it is the
        patient's only modality (nothing to check it against).
        """
        pres = present.to(h.dtype)
        if not self.gated:
            return pres
        q = torch.stack([self.query[m](h[:, i]) for i, m in enumerate(self.names)], 1)  # (B, M, A)
        k = torch.stack([self.key[m](h[:, i]) for i, m in enumerate(self.names)], 1)  # (B, M, A)
        scale = 1.0 / math.sqrt(q.shape[-1])
        s = (q @ k.transpose(1, 2)) * scale  # (B, M, M): query of i against the key of j
        others = present.bool()[:, None, :] & ~torch.eye(len(self.names), dtype=torch.bool, device=h.device)
        s = s.masked_fill(~others, float("-inf"))  # the other present modalities only
        s_null = (q @ self.null_key) * scale  # (B, M)
        a = torch.softmax(torch.cat([s, s_null[..., None]], -1), -1)  # (B, M, M + 1), NULL last
        alone = others.sum(-1) == 0  # (B, M): nothing to check a modality against: it counts fully
        return torch.where(alone, torch.ones_like(pres), 1.0 - a[..., -1]) * pres

    def forward(self, feats: Mapping[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)`` and gates ``(B, M)``.

        Args:
            feats: modality -> ``(B, D_m)`` features (any values where the modality is missing: they are not used).
            present: ``(B, M)`` bool, which modalities each patient has.
        """
        h = torch.stack([self.proj[m](feats[m]) for m in self.names], 1)  # (B, M, H)
        g = self.gates(h, present)
        z = g[..., None] * h + (1.0 - g[..., None]) * self.neutral  # (B, M, H)
        return self.head(z.flatten(1)), g


@dataclass(frozen=True)
class FusionData:
    """Patient-level inputs of a fusion model.

    Attributes:
        feats: modality -> ``(N, D_m)`` float32 features (zeros where the patient lacks the modality).
        present: ``(N, M)`` bool, in the order of ``names``.
        names: the modalities.
        degraded: modality -> ``(N, D_m)`` features of the same examinations degraded (:func:`degrade`), or ``None``.
    """

    feats: dict[str, np.ndarray]
    present: np.ndarray
    names: tuple[str, ...]
    degraded: dict[str, np.ndarray] | None = None

    def take(self, idx: np.ndarray) -> FusionData:
        """The patients at ``idx``."""
        return FusionData({m: f[idx] for m, f in self.feats.items()}, self.present[idx], self.names,
                          None if self.degraded is None else {m: f[idx] for m, f in self.degraded.items()})

    def only(self, names: tuple[str, ...]) -> FusionData:
        """The same patients with only the modalities ``names``."""
        keep = [self.names.index(m) for m in names]
        return FusionData({m: self.feats[m] for m in names}, self.present[:, keep], names,
                          None if self.degraded is None else {m: self.degraded[m] for m in names})

    def dropped(self, modality: str) -> FusionData:
        """Every patient without ``modality`` (as if that examination were missing)."""
        present = self.present.copy()
        present[:, self.names.index(modality)] = False
        return FusionData(self.feats, present, self.names, self.degraded)

    def with_degraded(self, modality: str) -> FusionData:
        """Every patient's ``modality`` replaced by its degraded examination (see :func:`degrade`)."""
        if self.degraded is None:
            raise ValueError("these data carry no degraded examinations")
        return FusionData({**self.feats, modality: self.degraded[modality]}, self.present, self.names, self.degraded)

    def mislinked(self, modality: str, seed: int) -> FusionData:
        """``modality`` of every patient who has it replaced by another such patient's (a seeded derangement)."""
        j = self.names.index(modality)
        has = np.flatnonzero(self.present[:, j])
        feats = dict(self.feats)
        if len(has) >= 2:  # a random cycle through the patients: nobody keeps their own
            order = has[np.random.default_rng(seed).permutation(len(has))]
            out = feats[modality].copy()
            out[order] = feats[modality][np.roll(order, -1)]
            feats[modality] = out
        return FusionData(feats, self.present, self.names, self.degraded)


def degrade(x: torch.Tensor, gen: torch.Generator, *, factor: int = 4, noise: float = 1.0) -> torch.Tensor:
    """An ungradable acquisition of a preprocessed batch ``x`` ``(B, C, *S)`` (1–3 spatial axes): out of focus and noisy.

    Each image is reduced ``factor``-fold along every spatial axis (area average) and brought back (linear
    interpolation), then Gaussian noise of ``noise`` times the image's own standard deviation is added — what a
    blurred, under-exposed fundus photograph or a low-signal OCT scan looks like to the encoder: the examination is
    there, its findings are not. ``gen`` seeds the noise.
    """
    import torch.nn.functional as F  # noqa: N812 - the usual name

    spatial = list(x.shape[2:])
    small = F.interpolate(x, size=[max(1, d // factor) for d in spatial], mode="area")  # adaptive average pooling
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    blurred = F.interpolate(small, size=spatial, mode=mode, align_corners=False)
    sd = x.flatten(1).std(1).clamp_min(1e-6).view(-1, *([1] * (x.ndim - 1)))
    return blurred + noise * sd * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


class Degraded(nn.Module):
    """``encoder`` applied to :func:`degrade` of its input (seeded once): the features of ungradable examinations."""

    def __init__(self, encoder: nn.Module, seed: int) -> None:
        """Wrap ``encoder``; the noise is drawn from a generator seeded with ``seed``."""
        super().__init__()
        self.encoder = encoder
        self.gen = torch.Generator().manual_seed(int(seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``encoder(degrade(x))``."""
        return self.encoder(degrade(x, self.gen))


def _tensors(data: FusionData, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return ({m: torch.as_tensor(f, dtype=torch.float32, device=device) for m, f in data.feats.items()},
            torch.as_tensor(data.present, dtype=torch.bool, device=device))


def drop_modalities(present: np.ndarray, p: float, gen: np.random.Generator) -> np.ndarray:
    """Modality dropout: ``present`` ``(B, M)`` with each present modality dropped with probability ``p``.

    A patient never loses every modality it has: when all would be dropped, one of them (at random) is kept.
    """
    drop = (gen.random(present.shape) < p) & present
    for r in np.flatnonzero((present & ~drop).sum(1) == 0):
        if present[r].any():
            drop[r, gen.choice(np.flatnonzero(present[r]))] = False
    return present & ~drop


def _loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return (nn.functional.binary_cross_entropy_with_logits(logits, target) if multilabel
            else nn.functional.cross_entropy(logits, target))


@dataclass
class FusionFit:
    """What :func:`train_fusion` did.

    Attributes:
        losses: the training loss of every step.
        val_steps: the steps after which the validation loss was computed.
        val_losses: that loss at each of ``val_steps`` (empty without validation patients).
        best_step: the step whose weights the model keeps (``steps`` without validation patients).
    """

    losses: list[float]
    val_steps: list[int]
    val_losses: list[float]
    best_step: int


def _subset_loss(model: GatedFusion, feats: dict[str, torch.Tensor], present: np.ndarray, target: torch.Tensor,
                 multilabel: bool, device: torch.device, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the loss with the modalities ``present`` and, with several, of each modality alone on its patients."""
    if logits is None:
        logits, _ = model(feats, torch.as_tensor(present, device=device))
    terms = [_loss(logits, target, multilabel)]
    if present.shape[1] > 1:  # and each modality alone: the head must serve every examination a patient comes with
        for j in range(present.shape[1]):
            rows = np.flatnonzero(present[:, j])
            if len(rows):
                alone = np.zeros_like(present)
                alone[:, j] = True
                z, _ = model(feats, torch.as_tensor(alone, device=device))
                keep = torch.as_tensor(rows, device=device)
                terms.append(_loss(z[keep], target[keep], multilabel))
    return torch.stack(terms).mean()


def train_fusion(model: GatedFusion, data: FusionData, y: np.ndarray, *, multilabel: bool, steps: int,
                 batch_size: int, lr: float, weight_decay: float, modality_dropout: float, corrupt_prob: float,
                 seed: int, device: torch.device | str = "cpu", progress: bool = False,
                 val: tuple[FusionData, np.ndarray] | None = None, val_every: int = 0,
                 degrade_prob: float = 0.0) -> FusionFit:
    """Train ``model`` on the training patients, keeping the weights of the step with the lowest validation loss.

    Each step draws ``batch_size`` patients; each present modality of each is dropped with probability
    ``modality_dropout`` (one present modality is always kept) and, independently, replaced by another training
    patient's embedding of that modality with probability ``corrupt_prob``, or by the embedding of its own degraded
    (ungradable) examination with probability ``degrade_prob`` (when ``data.degraded`` is given). With several
    modalities the step's loss
    is the mean of that batch's loss and, for each modality, the loss of the patients who have it with that modality
    alone (the others marked missing): the head is trained for every examination a patient may come with, not only
    for the combinations the dropout happens to draw. AdamW, 10 % linear warmup then cosine.

    With ``val`` (the validation patients, as they are: no dropout, no mislinking), the same loss is computed on them
    every ``val_every`` steps and at the end, and the model keeps the weights of the lowest: a head of a few thousand
    parameters per modality overfits ~100 patients within a few hundred steps, and the step where it starts is
    measured, not guessed.

    Args:
        model: the fusion model (trained in place, left in eval mode).
        data: the training patients' standardised features and presence.
        y: ``(N,)`` int64 class indices, or ``(N, K)`` float multi-hot when ``multilabel`` (BCE).
        multilabel: sigmoid + BCE instead of softmax + cross-entropy.
        steps: optimiser steps.
        batch_size: patients per step (all when fewer).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        modality_dropout: probability of dropping each present modality of a patient.
        corrupt_prob: probability of replacing each present modality by another training patient's.
        degrade_prob: probability of replacing each present modality by its degraded examination.
        seed: seeds the batches, the dropout, the mislinking and the initialisation's torch generator.
        device: where to train.
        progress: show a progress bar.
        val: ``(validation patients' data, their labels)``; ``None``: the last step's weights are kept.
        val_every: steps between validation losses (``0``: ``max(1, steps // 40)``).
    """
    import copy  # lazy: only a run with validation patients snapshots weights

    from tqdm.auto import tqdm  # lazy: only a training run shows a bar

    device = torch.device(device)
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1.0 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, steps - warm)))))
    n, names = len(y), data.names
    has = {m: np.flatnonzero(data.present[:, j]) for j, m in enumerate(names)}
    target = torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.int64, device=device)
    losses: list[float] = []
    fit = FusionFit(losses, [], [], steps)
    every = val_every or max(1, steps // 40)
    if val is not None and len(val[1]):
        v_feats, v_present = _tensors(val[0], device)
        v_target = torch.as_tensor(val[1], dtype=target.dtype, device=device)
    best: dict | None = None

    def validate(step: int) -> None:
        nonlocal best
        model.eval()
        with torch.no_grad():
            v = float(_subset_loss(model, v_feats, val[0].present, v_target, multilabel, device))
        model.train()
        fit.val_steps.append(step)
        fit.val_losses.append(v)
        if v < min(fit.val_losses[:-1], default=float("inf")):
            best, fit.best_step = copy.deepcopy(model.state_dict()), step

    for step in tqdm(range(1, steps + 1), desc="fuse", disable=not progress, leave=False):
        idx = gen.choice(n, size=min(batch_size, n), replace=False)
        present = drop_modalities(data.present[idx], modality_dropout, gen)
        feats = {}
        for j, m in enumerate(names):
            f = data.feats[m][idx].copy()
            swap = np.flatnonzero((gen.random(len(idx)) < corrupt_prob) & present[:, j])
            if len(swap) and len(has[m]) > 1:
                f[swap] = data.feats[m][gen.choice(has[m], size=len(swap))]
            if degrade_prob and data.degraded is not None:
                bad = np.flatnonzero((gen.random(len(idx)) < degrade_prob) & present[:, j])
                f[bad] = data.degraded[m][idx[bad]]
            feats[m] = torch.as_tensor(f, dtype=torch.float32, device=device)
        t = target[torch.as_tensor(idx, device=device)]
        logits, _ = model(feats, torch.as_tensor(present, device=device))
        clean = {m: torch.as_tensor(data.feats[m][idx], dtype=torch.float32, device=device) for m in names}
        loss = _subset_loss(model, clean, data.present[idx], t, multilabel, device, logits=logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if val is not None and len(val[1]) and (step % every == 0 or step == steps):
            validate(step)
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return fit


@torch.no_grad()
def predict_fusion(model: GatedFusion, data: FusionData, *, multilabel: bool,
                   device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, K), gates (N, M))`` of the patients in ``data`` (sigmoid when ``multilabel``)."""
    model.to(device).eval()
    feats, present = _tensors(data, torch.device(device))
    logits, g = model(feats, present)
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)
    return probs.cpu().numpy().astype(np.float64), g.cpu().numpy()


def feature_stats(data: FusionData, train: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Modality -> ``(mean (D_m,), std + 1e-6 (D_m,))`` over the training patients ``train`` who have it."""
    out = {}
    for j, m in enumerate(data.names):
        ref = data.feats[m][train][data.present[train, j]]
        d = data.feats[m].shape[1]
        mu, sd = (ref.mean(0), ref.std(0) + 1e-6) if len(ref) else (np.zeros(d), np.ones(d))
        out[m] = (mu.astype(np.float32), sd.astype(np.float32))
    return out


def standardise(data: FusionData, train: np.ndarray) -> FusionData:
    """Every modality's features centred and scaled by its training patients who have it (absent rows stay 0).

    The degraded examinations' features (when given) are scaled with the same statistics.
    """
    stats = feature_stats(data, train)

    def scaled(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {m: np.where(data.present[:, j:j + 1], (feats[m] - stats[m][0]) / stats[m][1], 0.0).astype(np.float32)
                for j, m in enumerate(data.names)}

    return FusionData(scaled(data.feats), data.present, data.names,
                      None if data.degraded is None else scaled(data.degraded))
