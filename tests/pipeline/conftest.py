from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def oct_demo(tmp_path_factory) -> Path:
    """A small OCT demo set (12 patients), synthesised once per session."""
    from medcl.data.synth import synthesize

    out = tmp_path_factory.mktemp("oct-demo")
    synthesize(out, modalities=["oct"], patients=12, seed=0)
    return out / "oct" / "manifest.csv"


def _tiny_overrides(manifest: Path, tmp: Path) -> list[str]:
    """Settings that make the OCT demo pipeline run in seconds."""
    return [
        f"data.manifest={manifest}", f"runtime.output_dir={tmp / 'runs'}", "runtime.progress=false",
        "model.encoder=resnet18", "model.proj_hidden_dim=64", "model.proj_dim=32",
        "pretrain.epochs=1", "pretrain.max_steps=2", "pretrain.batch_size=8", "pretrain.warmup_steps=0",
        "data.batch_size=16", "classify.protocols=[linear]", "classify.label_fractions=[1.0]", "calibrate.fit_on=auto",
        "classify.baselines=[random]", "classify.n_boot=20", "stages=[pretrain, classify, calibrate]",
    ]


@pytest.fixture(scope="session")
def tiny_overrides():
    return _tiny_overrides


@pytest.fixture(scope="session")
def trained_oct(tmp_path_factory):
    """The tiny OCT demo pipeline, run once per session: pretrain → classify (linear) → calibrate, with its logged
    model (used by the predict and evaluate tests)."""
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("trained-oct")
    manifest = Path(synthesize(root / "data", modalities=["oct"], patients=12, seed=0)).parent / "oct" / "manifest.csv"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_pipeline(REPO / "pipelines" / "demo" / "oct.yaml", [*_tiny_overrides(manifest, root), f"tracking.uri={uri}"])
    ctx = run_pipeline(cfg)
    return {"ctx": ctx, "uri": uri, "manifest": manifest, "root": root}
