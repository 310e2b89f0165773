"""The pretrained encoder is an MLflow model (a pyfunc giving features of files with the run's preprocessing), and
``model.pretrained_path`` takes ``runs:/`` and ``models:/`` URIs of the models medcl logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import TrackingError


def _pretrain_run(trained) -> str:
    return trained["ctx"].outputs["pretrain"]["encoder_uri"]


def test_the_encoder_model_gives_the_features_medcl_embed_gives(trained_oct, tmp_path):
    """The run's primary model is a linear probe on the pretrained encoder, so `medcl embed` (the classifier's
    encoder, read by medcl's predict path) and the logged encoder pyfunc must agree on every file."""
    import mlflow
    import pandas as pd

    from medcl.predict import embed

    uri = _pretrain_run(trained_oct)
    assert uri.startswith("runs:/") and uri.endswith("/encoder")
    mlflow.set_tracking_uri(trained_oct["uri"])
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["encoder"] == "resnet18" and info.metadata["modality"] == "oct"
    assert info.metadata["model_config"]["encoder"] == "resnet18" and info.metadata["preprocessing"]["preset"] == "oct"
    images = sorted((trained_oct["manifest"].parent / "images").glob("*.png"))[:5]
    (tmp_path / "model").mkdir()  # MLflow would leave its copy of the model in a temporary folder
    model = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path / "model"))
    feats = model.predict(pd.DataFrame({"path": [str(p) for p in images]}), params={"batch_size": 2})
    assert list(feats.columns) == [f"f{j}" for j in range(info.metadata["feature_dim"])] and len(feats) == 5
    emb = pd.read_csv(embed(trained_oct["ctx"].parent_run_id, images[0].parent, tmp_path / "e.csv",
                            tracking_uri=trained_oct["uri"], progress=False).samples)
    emb = emb.set_index("source").loc[[str(p) for p in images]]
    np.testing.assert_allclose(feats.to_numpy(), emb[list(feats.columns)].to_numpy(), rtol=1e-4, atol=1e-5)


def test_pretrained_path_takes_runs_and_models_uris(trained_oct, tmp_path):
    """The weights an encoder starts from, given as a URI, are exactly those of the logged model."""
    import mlflow

    from medcl.pipeline import load_pipeline
    from medcl.stages.common import make_encoder

    uri = _pretrain_run(trained_oct)
    mlflow.set_tracking_uri(trained_oct["uri"])
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    want = torch.load(next(local.rglob("encoder.pt")), weights_only=False).state_dict()
    version = mlflow.register_model(uri, "oct-demo-encoder").version
    demo = Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "oct.yaml"
    classifier = trained_oct["ctx"].outputs["calibrate"]["model_uri"]
    (tmp_path / "clf").mkdir()
    clf = torch.load(next(Path(mlflow.artifacts.download_artifacts(classifier, dst_path=str(tmp_path / "clf")))
                          .rglob("model.pt")),
                     weights_only=False).encoder.state_dict()
    for source, expected in ((uri, want), (f"models:/oct-demo-encoder/{version}", want), (classifier, clf)):
        cfg = load_pipeline(demo, [f"model.pretrained_path={source}", "model.encoder=resnet18",
                                   f"tracking.uri={trained_oct['uri']}"])
        assert cfg.model.pretrained_path == source  # a URI is not resolved as a path
        got = make_encoder(cfg).state_dict()
        assert set(got) == set(expected)
        for k, v in expected.items():
            assert torch.equal(got[k], v), (source, k)


def test_a_pipeline_starts_from_a_logged_encoder(trained_oct, tiny_overrides, tmp_path):
    """A classify-only pipeline whose encoder is another run's logged model: it runs, records the URI, and its
    linear probe sees the same features as the source run's (same weights, same data)."""
    from mlflow import MlflowClient

    from medcl.pipeline import load_pipeline, run_pipeline

    uri = _pretrain_run(trained_oct)
    demo = Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "oct.yaml"
    sets = [s for s in tiny_overrides(trained_oct["manifest"], tmp_path) if not s.startswith("stages=")]
    cfg = load_pipeline(demo, [*sets, "stages=[classify]", f"model.pretrained_path={uri}",
                               f"tracking.uri={trained_oct['uri']}"])
    ctx = run_pipeline(cfg)
    params = MlflowClient(tracking_uri=trained_oct["uri"]).get_run(ctx.parent_run_id).data.params
    assert params["model.pretrained_uri"] == uri
    a = np.load(ctx.outputs["classify"]["primary"])["test_logits"]
    b = np.load(trained_oct["ctx"].outputs["classify"]["primary"])["test_logits"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_bad_uri_says_what_to_use(trained_oct):
    from medcl.tracking.pyfunc import weights_from_uri

    with pytest.raises(TrackingError) as e:
        weights_from_uri("runs:/" + "0" * 32 + "/encoder", trained_oct["uri"])
    assert "runs:/<pretrain stage run id>/encoder" in e.value.fix
