"""Gradient-based severity labelling for OCT: SupCon on anomaly-gradient pseudo-labels.

Kokilepersaud, Prabhushankar, AlRegib, Trejo Corona, Wykoff, "Gradient-Based Severity Labeling for
Biomarker Classification in OCT", IEEE ICIP 2022.

0. Each B-scan is flattened to its retinal pigment epithelium (:func:`flatten_retina`, on by default): the RPE's
   healthy course is fitted and every column shifted so it becomes one straight row, and the intensities are
   normalised to the RPE's brightness. Retinal flattening is the usual first step of OCT analysis (e.g. Chiu et al.,
   Opt. Express 2010); without it the anomaly model learns the scans' position, tilt, gain and illumination, which
   vary more than drusen do (measured on the demo: pseudo-labels uncorrelated with the grades).
1. An anomaly model — a small convolutional autoencoder — is fitted on NORMAL scans only
   (:func:`fit_severity_model`).
2. The severity of a scan is the norm of the gradient of its reconstruction loss with respect
   to the decoder's weights (:func:`severity_scores`; GradCon, Kwon et al. 2020: the more an
   image would need to change the model, the further it is from "normal"). ``wrt="input"``
   uses the gradient w.r.t. the image instead, ``wrt="error"`` the plain reconstruction error.
3. Scores are binned into ``K`` pseudo-labels by quantiles of the training-set scores
   (:func:`severity_bin_edges`, :func:`assign_severity`), and SupCon pulls scans of similar
   severity together (:class:`OCTSeverity`).

The pure functions work on tensors and can be used outside the method (e.g. to inspect the
severity distribution in a notebook).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcl import distributed
from medcl.errors import ConfigError, DataError
from medcl.losses import SupConLoss
from medcl.methods.base import ContrastiveMethod, view_stats
from medcl.networks.base import Encoder

log = logging.getLogger(__name__)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
GRADIENT_TARGETS = ("decoder", "input", "error")


class SeverityAutoencoder(nn.Module):
    """Small convolutional autoencoder used as the anomaly model.

    It has no batch norm, so per-sample gradients are well defined.

    Args:
        in_channels: image channels.
        spatial_dims: 1, 2 or 3.
        widths: encoder widths; each stage halves the resolution, the decoder mirrors it.

    Shapes:
        ``(N, C, *S) -> (N, C, *S)`` (resized back when ``S`` is not divisible by ``2^len(widths)``).
    """

    def __init__(self, in_channels: int, spatial_dims: int = 2, widths: Sequence[int] = (16, 32, 64)) -> None:
        """Build the strided-conv encoder and the mirrored transposed-conv decoder.

        Raises:
            ConfigError: ``spatial_dims`` is not 1, 2 or 3.
        """
        super().__init__()
        if spatial_dims not in _CONV:
            raise ConfigError(f"spatial_dims={spatial_dims}", where="pretrain.method_options", fix="use 1, 2 or 3")
        conv, tconv = _CONV[spatial_dims], _TCONV[spatial_dims]
        enc: list[nn.Module] = []
        c = in_channels
        for w in widths:
            enc += [conv(c, w, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = w
        dec: list[nn.Module] = []
        for w in [*reversed(widths[:-1]), 16]:
            dec += [tconv(c, w, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = w
        dec.append(conv(c, in_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.in_channels, self.spatial_dims = in_channels, spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, C, *S)`` of ``x`` ``(N, C, *S)`` (nearest-resized back to ``S`` if needed)."""
        y = self.decoder(self.encoder(x))
        if y.shape[2:] != x.shape[2:]:
            y = F.interpolate(y, size=x.shape[2:], mode="nearest")
        return y


def flatten_retina(images: torch.Tensor, *, degree: int = 2, height: int | None = None,
                   clip: tuple[float, float] = (-1.0, 4.0)) -> torch.Tensor:
    """Flatten OCT B-scans to the retinal pigment epithelium (RPE) and normalise their intensities.

    Per image: the RPE is taken as the brightest row of each column (channel mean, Gaussian-smoothed); its
    *healthy* course is a polynomial of ``degree`` fitted robustly — columns lifted more than a pixel above the fit
    (drusen elevate the RPE) are dropped and the fit repeated — so drusen stay as bumps. Each column is resampled
    (linear interpolation) so that the fitted course lies on row ``round(0.75 * h)`` of an ``h``-row window: the
    retina above it, the choroid below. Intensities: the image's 5th percentile is subtracted (offset) and each
    column divided by the brightness of the healthy RPE (median of its five rows, taken from the columns on the
    healthy course, interpolated across drusen and smoothed across columns), which removes gain and lateral
    illumination. An affine change of intensity (positive gain) leaves the output unchanged.

    Args:
        images: ``(N, C, H, W)`` B-scans (rows = depth, columns = lateral position).
        degree: degree of the RPE course (2: tilt and curvature).
        height: rows ``h`` of the output window (default ``H // 2``, at least 4).
        clip: output value range (the RPE is near 1, the vitreous near 0).

    Returns:
        ``(N, C, h, W)`` float32 on ``images``' device.

    Raises:
        ConfigError: ``images`` is not ``(N, C, H, W)``.
    """
    import numpy as np  # lazy: with scipy below, only oct-severity needs them
    from scipy.ndimage import gaussian_filter1d, map_coordinates  # lazy: scipy

    if images.dim() != 4:
        raise ConfigError(f"retinal flattening needs 2D B-scans (N, C, H, W), got shape {tuple(images.shape)}",
                          where="pretrain.method_options.flatten", fix="set flatten: false for volumes or signals")
    n, c, h_in, w = images.shape
    h = max(4, int(height or h_in // 2))
    anchor = int(round(0.75 * h))
    s = h_in / 64.0
    x = np.arange(w, dtype=np.float64)
    out = np.empty((n, c, h, w), dtype=np.float32)
    for i, img in enumerate(images.detach().to("cpu", torch.float64).numpy()):
        sm = gaussian_filter1d(gaussian_filter1d(img.mean(0), 1.5 * s, axis=0), 2.0 * s, axis=1)
        rpe = sm.argmax(0).astype(np.float64)
        keep = np.ones(w, dtype=bool)
        for _ in range(4):
            fit = np.polyval(np.polyfit(x[keep], rpe[keep], degree), x)
            keep = rpe >= fit - max(1.0, s)
            if keep.sum() <= degree + 2:
                keep[:] = True
        rows = fit[None, :] + (np.arange(h, dtype=np.float64)[:, None] - anchor)
        cols = np.broadcast_to(x, rows.shape)
        flat = np.stack([map_coordinates(ch, [rows, cols], order=1, mode="nearest") for ch in img])
        flat -= np.percentile(img, 5)
        ref = np.median(flat[:, max(0, anchor - 2):anchor + 3].mean(0), axis=0)
        ref = np.interp(x, x[keep], ref[keep])  # a druse's columns: the healthy neighbours' brightness
        ref = gaussian_filter1d(ref, 8.0 * s, mode="nearest")
        floor = max(1e-6, 1e-3 * float(np.abs(flat).max()))
        out[i] = np.clip(flat / np.clip(ref, floor, None)[None, None, :], *clip)
    return torch.from_numpy(out).to(images.device)


class _Flattened:
    """A re-iterable view of a loader whose batches carry their flattened B-scan as ``"image"``.

    The loader :meth:`OCTSeverity.setup` gets is un-augmented and unshuffled, so every pass gives the same scans: the
    first complete pass is kept (up to ``max_bytes``) and replayed, instead of flattening every scan again on each of
    the autoencoder's passes.
    """

    def __init__(self, loader: Iterable[Mapping[str, torch.Tensor]], max_bytes: int = 1 << 30) -> None:
        self.loader, self.max_bytes = loader, max_bytes
        self._kept: list[dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict[str, torch.Tensor]] | None = []
        size = 0
        for batch in self.loader:
            x = batch["image"] if "image" in batch else batch["views"][:, 0]
            out = {**{k: v for k, v in batch.items() if k not in ("image", "views")}, "image": flatten_retina(x)}
            size += sum(v.numel() * v.element_size() for v in out.values() if isinstance(v, torch.Tensor))
            if kept is not None and size > self.max_bytes:
                kept = None  # too large to keep: later passes flatten again
            if kept is not None:
                kept.append(out)
            yield out
        self._kept = kept  # only a pass that ran to the end is replayed


def _reconstruction_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ``(N,)``."""
    return (model(x) - x).pow(2).flatten(1).mean(dim=1)


def _batches(
    data: torch.Tensor | Iterable[Mapping[str, torch.Tensor]],
    labels: torch.Tensor | None,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """Yield ``(images, labels, index)`` from a tensor ``(N, C, *S)`` or a loader of batch dicts.

    From a loader the image is ``batch["image"]`` when present, else the first view
    ``batch["views"][:, 0]``.
    """
    if isinstance(data, torch.Tensor):
        n = data.shape[0]
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            yield data[idx], (labels[idx] if labels is not None else None), idx
        return
    for batch in data:
        if "image" in batch:
            x = batch["image"]
        elif "views" in batch:
            x = batch["views"][:, 0]
        else:
            raise DataError(f"batch has neither 'image' nor 'views' (keys: {sorted(batch)})",
                            where="oct-severity", fix="pass a loader of image batches")
        yield x, batch.get("label"), batch.get("index")


def fit_severity_model(
    data: torch.Tensor | Iterable[Mapping[str, torch.Tensor]],
    labels: torch.Tensor | None = None,
    *,
    model: SeverityAutoencoder | None = None,
    normal_label: int = 0,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 32,
    widths: Sequence[int] = (16, 32, 64),
    seed: int = 0,
    steps: int | None = None,
) -> SeverityAutoencoder:
    """Fit the anomaly autoencoder on normal scans only (label == ``normal_label``).

    Args:
        data: images ``(N, C, *S)`` (then ``labels`` ``(N,)`` is required) or a loader of batch
            dicts with ``"image"`` (or ``"views"``) and ``"label"``.
        labels: labels of a tensor ``data``.
        model: an autoencoder to train (default: a new :class:`SeverityAutoencoder`, seeded).
        normal_label: the class index of normal scans.
        epochs: passes over the normal scans.
        lr: Adam learning rate.
        batch_size: batch size for tensor input.
        widths: autoencoder widths for a new model.
        seed: seed of initialisation and shuffling.
        steps: optimiser steps instead of ``epochs`` (the data are passed over as often as needed; a budget that
            does not depend on how many normal scans there are).

    Returns:
        The trained autoencoder in eval mode (on the device of ``model``, CPU for a new one).

    Raises:
        DataError: no normal scan found, or ``labels`` missing.
    """
    if isinstance(data, torch.Tensor) and labels is None:
        raise DataError("labels are required with a tensor of images", where="fit_severity_model",
                        fix="pass labels=(N,) with the normal class marked by normal_label")
    gen = torch.Generator().manual_seed(seed)
    if model is None:
        first = data if isinstance(data, torch.Tensor) else next(iter(_batches(data, None, batch_size)))[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SeverityAutoencoder(first.shape[1], first.dim() - 2, widths)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    seen = taken = 0
    passes = 0
    while (taken < steps) if steps else (passes < max(1, int(epochs))):
        passes += 1
        n_before = taken
        for x, y, _idx in _batches(data, labels, batch_size, gen):
            if steps and taken >= steps:
                break
            if y is None:
                raise DataError("batches carry no 'label', so normal scans cannot be selected",
                                where="fit_severity_model", fix="fill the manifest's label column")
            keep = y.reshape(-1).long() == int(normal_label)
            if not bool(keep.any()):
                continue
            xn = x[keep].to(device=device, dtype=torch.float32)
            loss = _reconstruction_loss(model, xn).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += int(keep.sum())
            taken += 1
        if taken == n_before:  # a pass without one normal scan: more passes would not find one
            break
    if seen == 0:
        raise DataError(f"no normal scan (label == {normal_label}) found to fit the anomaly model",
                        where="oct-severity", fix="set pretrain.method_options.normal_label to the normal class index, "
                        "and make sure labelled normal scans are in the training split")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def severity_scores(model: SeverityAutoencoder, images: torch.Tensor, *, wrt: str = "decoder",
                    batch_size: int = 64) -> torch.Tensor:
    """Severity score per image.

    Args:
        model: the fitted anomaly autoencoder.
        images: ``(N, C, *S)``.
        wrt: ``"decoder"`` — L2 norm of the gradient of the image's reconstruction loss with respect
            to all decoder weights (per-sample gradients via ``torch.func``, the paper's choice);
            ``"input"`` — norm of the gradient w.r.t. the image; ``"error"`` — reconstruction MSE.
        batch_size: images per vectorised chunk.

    Returns:
        ``(N,)`` float32 scores on ``images``' device; larger = further from normal.
    """
    if wrt not in GRADIENT_TARGETS:
        raise ConfigError(f"wrt={wrt!r} is unknown", where="pretrain.method_options.gradient_wrt",
                          fix=f"use one of {', '.join(GRADIENT_TARGETS)}")
    from torch.func import functional_call, grad, vmap

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    dec = {n: p for n, p in params.items() if n.startswith("decoder.")}
    rest = {n: p for n, p in params.items() if n not in dec}

    def sample_loss(dec_params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        xb = x.unsqueeze(0)
        return (functional_call(model, {**rest, **dec_params}, (xb,)) - xb).pow(2).mean()

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0))
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].to(device=device, dtype=torch.float32)
        if wrt == "decoder":
            g = per_sample_grad(dec, x)
            score = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in g.values()))
        elif wrt == "input":
            with torch.enable_grad():
                xi = x.clone().requires_grad_(True)
                gi = torch.autograd.grad(_reconstruction_loss(model, xi).sum(), xi)[0]
            score = gi.flatten(1).norm(dim=1)
        else:
            with torch.no_grad():
                score = _reconstruction_loss(model, x)
        out.append(score.detach().float())
    model.train(was_training)
    return torch.cat(out).to(images.device) if out else images.new_zeros(0)


def severity_label_spearman(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Spearman's rank correlation of severity scores ``(N,)`` with class indices ``(N,)`` (``-1``: unlabelled).

    A diagnostic of the pseudo-labels on ordinal grades (normal < early < intermediate): it needs the class indices
    in grade order. ``None`` with fewer than 3 labelled images or a single class.
    """
    from scipy.stats import spearmanr  # lazy: scipy

    keep = labels >= 0
    if int(keep.sum()) < 3 or labels[keep].unique().numel() < 2:
        return None
    rho = spearmanr(scores[keep].double().numpy(), labels[keep].numpy()).statistic
    return float(rho) if math.isfinite(float(rho)) else None


def severity_bin_edges(scores: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Inner quantile edges ``(num_bins - 1,)`` splitting ``scores`` ``(N,)`` into equal-count bins."""
    if num_bins < 2:
        raise ConfigError(f"num_bins={num_bins} < 2", where="pretrain.method_options.num_bins", fix="use 2 or more bins (e.g. 5)")
    if scores.numel() < num_bins:
        raise DataError(f"{scores.numel()} scores cannot fill {num_bins} severity bins", where="oct-severity",
                        fix="use more training images or fewer bins")
    q = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)[1:-1]
    return torch.quantile(scores.double().cpu(), q).float()


def assign_severity(scores: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index ``(N,)`` int64 in ``[0, len(edges)]`` of each score (0 = least severe)."""
    return torch.bucketize(scores.float(), edges.to(scores.device).float(), right=True)


class OCTSeverity(ContrastiveMethod):
    """SupCon on gradient-based severity pseudo-labels (Kokilepersaud et al. 2022).

    :meth:`setup` (called by the engine with the training loader before training) fits the
    anomaly autoencoder on normal scans, scores every training image and stores its bin as a
    pseudo-label by dataset row (``batch["index"]``). :meth:`forward` looks the pseudo-labels up
    (or scores ``batch["image"]`` / view 0 on the fly for rows never seen in setup) and applies
    SupCon. The autoencoder and the labels are buffers/frozen submodules, so they are saved in
    checkpoints and a resumed run skips the fit.

    The anomaly model is fitted, and the training set scored and binned, **once**: on rank 0, from the loader
    :meth:`setup` is given (the pretrain stage gives the un-augmented training images, every one of them, as the
    paper scores the scans themselves); the fitted autoencoder, the bin edges and the pseudo-label table are then
    broadcast, so every rank trains on the same pseudo-labels. A resumed run loads them from the checkpoint.

    Differs from the paper: the anomaly model is a small convolutional autoencoder (the paper's GradCon uses its
    own architecture), fitted for ``ae_steps`` optimiser steps; the bins are quantiles of the training scores; the scans
    are flattened to the RPE first (:func:`flatten_retina`, ``flatten``) — the paper's scans come from one device
    and protocol, and without flattening a scan's position and tilt dominate its anomaly score.

    Args:
        encoder: the backbone.
        num_bins: number of severity pseudo-classes K.
        normal_label: class index of normal scans in the manifest labels.
        gradient_wrt: ``"decoder"`` (paper), ``"input"`` or ``"error"``.
        flatten: flatten each B-scan to its RPE before the anomaly model (:func:`flatten_retina`; 2D only).
        ae_steps, ae_epochs: the autoencoder's budget, in optimiser steps or in passes over the training images (one
            of them; default 400 steps, where the scores' rank correlation with the grades of the OCT demo levelled
            off — the quality benchmark records it per seed, benchmarks/README.md).
        ae_lr, ae_widths, ae_batch_size: anomaly autoencoder training.
        temperature, hidden_dim, out_dim, num_layers, gather_distributed: SupCon and projector.
        seed: seed of the autoencoder.

    Batch:
        ``views`` ``(B, V>=2, C, *S)``, ``index`` ``(B,)``; ``label`` and ``image`` in setup.
    """

    needs = ("index",)

    def __init__(
        self,
        encoder: Encoder,
        *,
        num_bins: int = 5,
        normal_label: int = 0,
        gradient_wrt: str = "decoder",
        flatten: bool = True,
        ae_epochs: int | None = None,
        ae_steps: int | None = None,
        ae_lr: float = 1e-3,
        ae_widths: Sequence[int] = (16, 32, 64),
        ae_batch_size: int = 32,
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        gather_distributed: bool = False,
        seed: int = 0,
    ) -> None:
        """Build the projector, the frozen (seeded) anomaly autoencoder, SupCon and the empty label buffers.

        Raises:
            ConfigError: ``num_bins < 2`` or an unknown ``gradient_wrt``.
        """
        super().__init__(encoder, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        if num_bins < 2:
            raise ConfigError(f"num_bins={num_bins} < 2", where="pretrain.method_options.num_bins", fix="use 2 or more bins")
        if gradient_wrt not in GRADIENT_TARGETS:
            raise ConfigError(f"gradient_wrt={gradient_wrt!r} is unknown", where="pretrain.method_options.gradient_wrt",
                              fix=f"use one of {', '.join(GRADIENT_TARGETS)}")
        if flatten and encoder.spatial_dims != 2:
            raise ConfigError(f"flatten works on 2D B-scans, this encoder is {encoder.spatial_dims}D",
                              where="pretrain.method_options.flatten", fix="set pretrain.method_options.flatten: false")
        self.num_bins, self.normal_label, self.gradient_wrt = int(num_bins), int(normal_label), gradient_wrt
        self.flatten = bool(flatten)
        if ae_epochs is not None and ae_steps is not None:
            raise ConfigError("both ae_epochs and ae_steps are set", where="pretrain.method_options",
                              fix="give the autoencoder's budget once: ae_steps (optimiser steps) or ae_epochs "
                              "(to use ae_epochs with the oct-severity preset, also set "
                              "pretrain.method_options.ae_steps=null)")
        if ae_epochs is None and ae_steps is None:
            ae_steps = 400
        self.ae_epochs, self.ae_lr, self.ae_batch_size, self.seed = ae_epochs or 1, ae_lr, ae_batch_size, seed
        self.ae_steps = ae_steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.severity_model = SeverityAutoencoder(encoder.in_channels, encoder.spatial_dims, ae_widths)
        for p in self.severity_model.parameters():
            p.requires_grad_(False)
        self.criterion = SupConLoss(temperature, gather_distributed=gather_distributed)
        self.register_buffer("bin_edges", torch.zeros(0))
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        #: Spearman's rho of the training images' severity scores with their grades (:func:`severity_label_spearman`;
        #: ``None`` before :meth:`setup`, without labels, or when restored from a checkpoint)
        self.label_spearman: float | None = None

    def setup(self, loader: Iterable[Mapping[str, torch.Tensor]] | None = None) -> None:
        """Fit the anomaly model and bin every image's severity on rank 0, then share them with every rank.

        Rank 0 fits on the normal scans of ``loader`` and scores all of its images; the model, the bin edges and
        the pseudo-labels are broadcast.

        Args:
            loader: batches with ``"image"`` (or ``"views"``: view 0 is used), ``"label"`` and ``"index"`` — the
                whole training set, un-augmented (only rank 0 reads it).
        """
        if bool(self.fitted):
            return  # restored from a checkpoint
        state = None
        if distributed.rank() == 0:
            if loader is None:
                raise ConfigError("oct-severity needs the training images in setup()", where="method oct-severity",
                                  fix="call method.setup(loader) before training")
            state = self._fit_and_score(loader)
        state = distributed.broadcast_object(state)
        device = next(self.severity_model.parameters()).device
        self.severity_model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        self.set_pseudo_labels(state["scores"], state["rows"])
        self.label_spearman = state.get("label_spearman")
        if self.label_spearman is not None:
            log.info("oct-severity: the severity scores follow the training labels with Spearman rho %.3f (the "
                     "pseudo-labels help where they track the grades; near 0 they are noise to SupCon)",
                     self.label_spearman)

    def _fit_and_score(self, loader: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, object]:
        """``{"model": the fitted autoencoder's state (CPU), "scores" (N,), "rows" (N,)}`` from ``loader``."""
        for p in self.severity_model.parameters():
            p.requires_grad_(True)
        if self.flatten:
            loader = _Flattened(loader)
        fit_severity_model(loader, model=self.severity_model, normal_label=self.normal_label,
                           epochs=self.ae_epochs, lr=self.ae_lr, batch_size=self.ae_batch_size, seed=self.seed,
                           steps=self.ae_steps)
        scores, rows, labels = [], [], []
        for x, y, idx in _batches(loader, None, self.ae_batch_size):
            if idx is None:
                raise DataError("batches carry no 'index'", where="method oct-severity",
                                fix="let the pretraining loader return the dataset row index")
            scores.append(severity_scores(self.severity_model, x, wrt=self.gradient_wrt).cpu())
            rows.append(idx.long().cpu())
            labels.append(y.long().cpu() if y is not None and y.ndim == 1 else torch.full_like(idx, -1).long())
        scores_t = torch.cat(scores)
        return {"model": {k: v.detach().cpu() for k, v in self.severity_model.state_dict().items()},
                "scores": scores_t, "rows": torch.cat(rows),
                "label_spearman": severity_label_spearman(scores_t, torch.cat(labels))}

    def set_pseudo_labels(self, scores: torch.Tensor, rows: torch.Tensor) -> None:
        """Compute bin edges from ``scores`` ``(N,)`` and store each row's bin (``rows`` ``(N,)``)."""
        device = self.bin_edges.device
        edges = severity_bin_edges(scores, self.num_bins)
        table = torch.full((int(rows.max()) + 1,), -1, dtype=torch.long)
        table[rows.long()] = assign_severity(scores, edges).cpu()
        self.bin_edges = edges.to(device)
        self.pseudo_labels = table.to(device)
        self.fitted.fill_(True)
        counts = torch.bincount(table[table >= 0], minlength=self.num_bins).tolist()
        log.info("oct-severity: %d images binned into %d severity levels %s", int(rows.numel()), self.num_bins, counts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # The pseudo-label table's length depends on the data: resize before loading a checkpoint.
        for name in ("bin_edges", "pseudo_labels"):
            key = prefix + name
            if key in state_dict:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[key], device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def severity_labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)`` pseudo-labels of the batch (stored by row, else scored on the fly)."""
        if not bool(self.fitted):
            raise ConfigError("oct-severity has no pseudo-labels yet", where="method oct-severity",
                              fix="call method.setup(train_loader) before training")
        b = batch["views"].shape[0]
        idx = batch.get("index")
        labels = torch.full((b,), -1, dtype=torch.long, device=self.pseudo_labels.device)
        if idx is not None:
            idx = idx.long().to(self.pseudo_labels.device)
            known = idx < self.pseudo_labels.numel()
            labels[known] = self.pseudo_labels[idx[known]]
        todo = labels < 0
        if bool(todo.any()):
            x = batch["image"] if "image" in batch else batch["views"][:, 0]
            x = x[todo.to(x.device)]
            s = severity_scores(self.severity_model, flatten_retina(x) if self.flatten else x, wrt=self.gradient_wrt)
            labels[todo] = assign_severity(s, self.bin_edges).to(labels.device)
        return labels

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SupCon of the embedded views with the severity pseudo-labels as classes.

        Returns:
            ``{"loss", "severity_mean", "pos_cos", "z_std"}``: the loss (scalar, with gradient), the batch's
            mean pseudo-label (scalar) and the :func:`~medcl.methods.base.view_stats` monitors of the
            projections ``(B, V, out_dim)``.
        """
        v = self.views(batch)
        z = self.embed_views(v)
        y = self.severity_labels(batch).to(z.device)
        return {"loss": self.criterion(z, y), "severity_mean": y.float().mean(), **view_stats(z)}
