"""Saliency (Grad-CAM, input x gradient) and the 2-D feature map the classify stage logs for the report, checked
against CAM and exact gradients computed by hand."""

from __future__ import annotations

import numpy as np
import torch


def _cam_reference(dense: torch.Tensor, w_rows: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CAM (Zhou et al. 2016) in numpy: ``relu(sum_c w[c] A_c)``, then the same upsampling and max-normalising."""
    import torch.nn.functional as F

    ref = np.maximum(np.einsum("bchw,bc->bhw", dense.numpy(), w_rows), 0)
    ref = F.interpolate(torch.as_tensor(ref)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return (ref / ref.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).numpy()


def test_grad_cam_equals_cam_for_a_linear_head_on_pooled_features():
    """Grad-CAM of ``W · GAP(A)`` is CAM: the gradient weights are ``W[k, c] / |S'|``."""
    from medcl.networks.tiny import TinyCNN
    from medcl.tasks.saliency import grad_cam

    torch.manual_seed(0)
    enc = TinyCNN(in_channels=1, spatial_dims=2).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        dense = enc.forward_dense(x)
    w, b = torch.randn(4, dense.shape[1]), torch.randn(4)
    target = torch.tensor([0, 2, 3])
    cams, logits = grad_cam(enc, w, b, x, target)
    assert cams.shape == (3, 32, 32)
    np.testing.assert_allclose(cams, _cam_reference(dense, w.numpy()[target.numpy()], (32, 32)), atol=1e-5)
    np.testing.assert_allclose(logits, (dense.flatten(2).mean(2) @ w.T + b).numpy(), rtol=1e-5, atol=1e-5)
    peaks = cams.max(axis=(1, 2))
    assert (np.isclose(peaks, 1.0) | np.isclose(peaks, 0.0)).all() and np.isclose(peaks, 1.0).any()


def test_grad_cam_single_logit_shows_evidence_for_the_predicted_side():
    """Binary head (one logit): class 1 shows where ``W·A > 0``, class 0 where ``W·A < 0``."""
    from medcl.networks.tiny import TinyCNN
    from medcl.tasks.saliency import grad_cam

    torch.manual_seed(1)
    enc = TinyCNN(in_channels=1, spatial_dims=2).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        dense = enc.forward_dense(x)
    w = torch.randn(1, dense.shape[1])
    pos, _ = grad_cam(enc, w, torch.zeros(1), x, torch.tensor([1]))
    neg, _ = grad_cam(enc, w, torch.zeros(1), x, torch.tensor([0]))
    np.testing.assert_allclose(pos, _cam_reference(dense, w.numpy(), (32, 32)), atol=1e-5)
    np.testing.assert_allclose(neg, _cam_reference(dense, -w.numpy(), (32, 32)), atol=1e-5)


def test_input_x_gradient_is_exact_for_a_linear_model():
    """For ``z = W x + b`` the attribution is ``x * W[target]`` and sums to ``z - b`` (completeness)."""
    from medcl.tasks.saliency import LinearOnEncoder, input_x_gradient

    torch.manual_seed(0)
    x = torch.randn(2, 3, 50)  # (B, leads, T)
    w, b = torch.randn(4, 150), torch.randn(4)
    model = LinearOnEncoder(torch.nn.Flatten(), w, b)
    target = torch.tensor([1, 3])
    attr, logits = input_x_gradient(model, x, target)
    ref = x.numpy() * w.numpy()[target.numpy()].reshape(2, 3, 50)
    np.testing.assert_allclose(attr, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), logits[[0, 1], [1, 3]] - b.numpy()[[1, 3]], rtol=1e-4)


def test_select_examples_most_confident_first():
    from medcl.tasks.saliency import select_examples

    correct = np.array([True, False, True, True, False, True])
    conf = np.array([0.6, 0.9, 0.95, 0.7, 0.55, 0.99])
    ok, wrong = select_examples(correct, conf, k=2)
    assert ok.tolist() == [5, 2]
    assert wrong.tolist() == [1, 4]


def test_rendered_saliency_pngs_decode(tmp_path):
    import matplotlib.image as mpimg

    from medcl.tasks.saliency import render_image_saliency, render_signal_saliency

    rng = np.random.default_rng(0)
    for name, png in {
        "2d": render_image_saliency(rng.random((1, 24, 24)), rng.random((24, 24)), "true a · predicted b"),
        "rgb": render_image_saliency(rng.random((3, 24, 24)), rng.random((24, 24)), "t"),
        "3d": render_image_saliency(rng.random((1, 8, 8, 6)), rng.random((8, 8, 6)), "t"),
        "ecg": render_signal_saliency(rng.standard_normal((3, 200)), rng.standard_normal((3, 200)), "t",
                                      sampling_rate=100.0),
    }.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        (tmp_path / f"{name}.png").write_bytes(png)
        arr = mpimg.imread(tmp_path / f"{name}.png")
        assert arr.ndim == 3 and arr.shape[0] > 50 and arr.shape[1] > 100 and arr.std() > 0.01, name


def test_reduce_2d_separates_two_clusters():
    from medcl.tasks.embedding import reduce_2d

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 16)), rng.normal(8, 1, (20, 16))])
    y = np.repeat([0, 1], 20)
    xy, method = reduce_2d(x, seed=0)
    assert method == "t-SNE" and xy.shape == (40, 2) and np.isfinite(xy).all()
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() == 1.0  # every nearest neighbour is of the same cluster
    xy5, m5 = reduce_2d(x[:5])
    assert m5 == "PCA" and xy5.shape == (5, 2)


