"""The primary model: saved once by classify, rebuilt identically by calibrate and the report."""

import numpy as np
import torch

from medcl.networks import build_encoder
from medcl.tasks.classification import ClassifierModel
from medcl.tasks.primary import PrimaryModel


def _make(weights):
    return build_encoder("tiny_cnn", in_channels=1, spatial_dims=2, pretrained_path=weights)


def test_linear_primary_on_a_random_init_rebuilds_that_init(tmp_path):
    """A probe fitted on a random-init encoder is only valid with *that* encoder: the saved one comes back, a fresh
    random init would not."""
    torch.manual_seed(0)
    enc = _make(None).eval()
    d = enc.feature_dim
    head = {"coef": np.arange(2 * d, dtype=float).reshape(2, d) / d, "intercept": [0.5, -0.5],
            "mean": np.zeros(d), "std": np.full(d, 2.0)}
    p = PrimaryModel("linear", "random", head=head, threshold=0.3,
                     arrays={"test_logits": np.ones((3, 2), np.float32), "test_y": np.array([0, 1, 1])})
    p.encoder_weights = PrimaryModel.save_encoder(enc, tmp_path / "enc.pt")
    npz, meta = p.save(tmp_path)
    q = PrimaryModel.load(npz, meta)
    assert (q.kind, q.encoder, q.threshold) == ("linear", "random", 0.3)
    np.testing.assert_array_equal(q.arrays["test_y"], [0, 1, 1])
    rebuilt, w, b = q.parts(_make, "multiclass", 2)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt.eval()(x).flatten(1).numpy(), enc(x).flatten(1).numpy(), atol=1e-6)
        assert not torch.allclose(_make(None).eval()(x), enc(x))  # guard: a fresh init differs
    # the head folds the standardisation in (hand computation): W / std, b - (W / std) @ mean
    np.testing.assert_allclose(w.numpy(), head["coef"] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [0.5, -0.5], rtol=1e-6)


def test_finetuned_primary_rebuilds_its_weights(tmp_path):
    from medcl.checkpoint_file import save_checkpoint

    torch.manual_seed(1)
    model = ClassifierModel(_make(None), 3, "multiclass").eval()
    save_checkpoint(tmp_path / "ft.pt", {"model": model.state_dict()})
    p = PrimaryModel("finetune", "ssl", weights=str(tmp_path / "ft.pt"))
    q = PrimaryModel.load(*p.save(tmp_path))
    enc, w, b = q.parts(_make, "multiclass", 3)
    enc.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want, f = model(x), enc(x)
        got = (f.flatten(2).mean(-1) if f.ndim > 2 else f) @ w.T + b
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
