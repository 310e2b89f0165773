"""Where does the model look? Saliency maps for the report.

* Images (2D/3D): **Grad-CAM** (Selvaraju et al., ICCV 2017) on the encoder's last feature map
  (:meth:`Encoder.forward_dense`). The logits are computed as ``head(GAP(forward_dense(x)))``,
  which is the model's own forward pass for CNN encoders; for a linear head on global-average-
  pooled features Grad-CAM equals CAM (Zhou et al., CVPR 2016): ``cam_k = relu(sum_c W[k, c] A_c)``
  up to a positive factor. For ViTs the map is the patch-token CAM of the same construction.
* Signals (ECG): **input × gradient** (Shrikumar et al., 2016): ``x * d score / d x`` per lead
  and time step, on the model's own forward pass.

The target is the predicted class; for a single-logit (binary) head the score is ``+z`` when the
positive class is predicted and ``-z`` otherwise, so the map always shows evidence *for* the
prediction. Rendering uses matplotlib's object API (no pyplot, no global state) and returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logit of the target class ``(B,)``; for one output, ``±z`` by target."""
    if logits.shape[1] == 1:
        sign = target.to(logits.dtype) * 2 - 1
        return logits[:, 0] * sign
    return logits.gather(1, target.long().view(-1, 1))[:, 0]


def grad_cam(encoder: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
             target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of an encoder + linear head.

    Args:
        encoder: a medcl :class:`~medcl.networks.base.Encoder` (``forward_dense`` is used).
        weight: linear head weight ``(K_out, D)`` on pooled features.
        bias: linear head bias ``(K_out,)``.
        x: input batch ``(B, C, *S)``.
        target: ``(B,)`` class index whose evidence is shown.

    Returns:
        ``cams`` ``(B, *S)`` in ``[0, 1]`` (upsampled to the input size), and ``logits`` ``(B, K_out)``.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.enable_grad():
            dense = encoder.forward_dense(x.float())  # (B, C, *S')
            feats = dense.flatten(2).mean(2)  # (B, C)
            logits = feats @ weight.float().T + bias.float()
            grads, = torch.autograd.grad(_score(logits, target).sum(), dense)
        alpha = grads.flatten(2).mean(2)  # (B, C): importance of each channel
        cam = F.relu((alpha.view(*alpha.shape, *([1] * (dense.ndim - 2))) * dense).sum(1, keepdim=True))
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (cam.ndim - 1)))
        return (cam / peak).detach().cpu().numpy(), logits.detach().cpu().numpy()
    finally:
        encoder.train(was_training)


def input_x_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Input × gradient attribution.

    Args:
        model: maps ``(B, C, *S)`` to logits ``(B, K_out)``.
        x: input batch ``(B, C, *S)`` (ECG: ``(B, leads, T)``).
        target: ``(B,)`` class index whose evidence is shown.

    Returns:
        attribution ``(B, C, *S)`` (positive: pushes towards the target) and logits ``(B, K_out)``.
    """
    was_training = model.training
    model.eval()
    try:
        xr = x.detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            grads, = torch.autograd.grad(_score(logits, target).sum(), xr)
        return (xr * grads).detach().cpu().numpy(), logits.detach().cpu().numpy()
    finally:
        model.train(was_training)


def select_examples(correct: np.ndarray, confidence: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` correctly and ``k`` incorrectly classified examples, most confident first.

    Args:
        correct: ``(N,)`` bool.
        confidence: ``(N,)`` probability of the predicted class.
        k: examples of each kind at most.

    Returns:
        positions of the correct and of the incorrect examples.
    """
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    ok = np.asarray(correct, dtype=bool)[order]
    return order[ok][:k], order[~ok][:k]


# -- rendering ------------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` → an RGB ``(H, W, 3)`` or grey ``(H, W)`` array scaled to ``[0, 1]``."""
    img = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / (hi - lo + 1e-12), 0, 1)
    return img, None if img.ndim == 3 else "gray"


def render_image_saliency(image: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    """Image next to its Grad-CAM overlay, as PNG bytes.

    Args:
        image: ``(C, H, W)`` or ``(C, X, Y, Z)`` (the axial slice with the most saliency is shown).
        cam: ``(H, W)`` or ``(X, Y, Z)`` in ``[0, 1]``.
        title: one line above the panels (true and predicted class).
    """
    import matplotlib
    from matplotlib.figure import Figure

    if image.ndim == 4:
        z = int(np.argmax(cam.reshape(-1, cam.shape[-1]).sum(0)))
        image, cam = image[..., z].transpose(0, 2, 1)[:, ::-1], cam[..., z].T[::-1]
    img, cmap = _display_image(image)
    fig = Figure(figsize=(4.6, 2.5))
    axes = fig.subplots(1, 2)
    axes[0].imshow(img, cmap=cmap)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(img, cmap=cmap)
    overlay = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))
    overlay[..., 3] = 0.6 * np.clip(cam, 0, 1)  # transparent where the map is low
    axes[1].imshow(overlay)
    axes[1].set_title("Grad-CAM (red = most used)" if cam.max() > 0 else "Grad-CAM: no region stood out",
                      fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def render_signal_saliency(signal: np.ndarray, attribution: np.ndarray, title: str,
                           lead_names: Sequence[str] | None = None, sampling_rate: float | None = None,
                           max_leads: int = 12) -> bytes:
    """ECG leads with the attribution shaded under each trace, as PNG bytes.

    Args:
        signal: ``(leads, T)``.
        attribution: ``(leads, T)`` (input × gradient).
        title: one line above the plot.
        lead_names: names of the leads (default ``lead 1`` ...).
        sampling_rate: Hz, for a time axis in seconds (samples otherwise).
        max_leads: draw at most the first this many leads.
    """
    from matplotlib.figure import Figure

    n = min(signal.shape[0], max_leads)
    t = np.arange(signal.shape[1]) / (sampling_rate or 1.0)
    scale = float(np.abs(attribution[:n]).max()) or 1.0
    share = np.abs(attribution[:n]).sum(1)
    share = share / (share.sum() or 1.0)
    fig = Figure(figsize=(6.0, 0.55 * n + 0.8))
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    for i, ax in enumerate(axes):
        a = np.clip(attribution[i] / scale, 0, 1)
        lo, hi = float(signal[i].min()), float(signal[i].max())
        pad = 0.05 * (hi - lo) + 1e-6
        ax.imshow(a[None, :], aspect="auto", cmap="Reds", vmin=0, vmax=1, alpha=0.8, interpolation="nearest",
                  extent=(float(t[0]), float(t[-1]), lo - pad, hi + pad))
        ax.plot(t, signal[i], color="black", linewidth=0.6)
        ax.set_ylim(lo - pad, hi + pad)
        name = lead_names[i] if lead_names is not None and i < len(lead_names) else f"lead {i + 1}"
        ax.set_ylabel(f"{name}\n{share[i]:.0%}", rotation=0, ha="right", va="center", fontsize=7)
        ax.set_yticks([])
    axes[-1].set_xlabel("time (s)" if sampling_rate else "sample", fontsize=8)
    fig.suptitle(title + " — red: parts that pushed towards the prediction; % = share per lead", fontsize=8)
    return _png(fig)


class LinearOnEncoder(torch.nn.Module):
    """``logits = W · encoder(x) + b`` — the primary classifier as one module (for input × gradient).

    Args:
        encoder: ``(B, C, *S) -> (B, D)`` or a feature map ``(B, D, *S')`` (averaged over space).
        weight: head weight ``(K_out, D)``.
        bias: head bias ``(K_out,)``.
    """

    def __init__(self, encoder: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Keep the encoder and store the head as buffers (not trained)."""
        super().__init__()
        self.encoder = encoder
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K_out)`` of a batch ``(B, C, *S)``, features average-pooled over space."""
        f = self.encoder(x)
        if f.ndim > 2:
            f = f.flatten(2).mean(2)
        return f @ self.weight.T + self.bias
