"""Tiny real pipelines and their outcome fingerprints, for tests/config/test_every_key_has_an_effect.py.

A *scenario* is a shipped demo pipeline shrunk to seconds (tiny CNN encoder, 1-2 steps, tiny bootstraps) on
synthetic data. :func:`outcome` runs it in-process and reduces the run to what it produced — every stage's MLflow
metrics, its outputs (files read back and hashed: encoder/model weights, results, per-case tables, logits), the
patient split and the sample counts — leaving out whatever merely echoes the settings (logged params, the saved
config) or measures the machine (seconds, throughput).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: the settings every scenario shares: a fast, deterministic, quiet run
COMMON = ["runtime.progress=false", "runtime.deterministic=true", "runtime.device=cpu", "seed=0",
          "model.encoder=tiny_cnn", "model.options={widths: [8, 16]}", "model.proj_hidden_dim=16",
          "model.proj_dim=8", "pretrain.epochs=1", "pretrain.steps=null", "pretrain.max_steps=null",
          "pretrain.warmup_epochs=0", "pretrain.warmup_steps=null", "pretrain.batch_size=8", "data.cache=none",
          "data.num_workers=0"]

#: each modality's pipeline in the fusion scenario: the scenarios' tiny encoder, 2 pretraining steps, no probe
FUSE_TINY = ("model.encoder=tiny_cnn, 'model.options={widths: [8, 16]}', 'transforms.spatial_size=[32, 32]', "
             "pretrain.steps=2, pretrain.warmup_steps=0, pretrain.batch_size=8, pretrain.probe=false, "
             "model.proj_hidden_dim=16, model.proj_dim=8")

#: a pipeline YAML with no modality defaults (``transforms.preset`` can change without leaving parameters behind
#: that the other preset refuses)
BARE_MRI = """\
name: bare-mri
stages: [pretrain]
data: {modality: mri, task: binary, classes: [no_lesion, lesion], val_fraction: 0.0, test_fraction: 0.25}
transforms: {preset: mri, spatial_size: [16, 16, 16], spacing: [6.0, 6.0, 7.0]}
model: {spatial_dims: 3, in_channels: 1}
"""

#: scenario -> (demo pipeline, or the YAML text of one, and its overrides); ``{data}`` is the synthetic data folder
SCENARIOS: dict[str, tuple[str, list[str]]] = {
    # OCT severity (ordinal, 3 classes): pretrain (3 steps) -> linear probe + kNN -> temperature scaling; the
    # manifest has extra rows that data settings decide about (see _oct_extra)
    # (SimCLR, the OCT preset's method, not the demo's MICLe: pretrain.batches and samples_per_patient are perturbed
    # from shuffled batches)
    "oct": ("pipelines/demo/oct.yaml", [
        "pretrain.method=simclr", "data.manifest={data}/oct/manifest-extra.csv", "data.root={data}", "data.on_error=skip",
        "data.test_fraction=0.25", "data.batch_size=16", "transforms.spatial_size=[32, 32]",
        "stages=[pretrain, classify, calibrate]", "classify.protocols=[linear, knn]",
        "classify.label_fractions=[0.5, 1.0]", "classify.baselines=[random]", "classify.n_boot=10",
        "classify.knn_k=3", "calibrate.fit_on=validation", "calibrate.folds=2"]),
    # MRI lesion segmentation (3D): pretrain -> U-Net decoder on the encoder vs from scratch, 8^3 windows on 16^3
    "mri": ("pipelines/demo/mri.yaml", [
        "data.manifest={data}/mri/manifest.csv", "data.test_fraction=0.5", "data.batch_size=4",
        "transforms.spatial_size=[16, 16, 16]", "pretrain.batch_size=4", "stages=[pretrain, segment]",
        "segment.network_options={decoder_channels: [8], input_channels: 4}", "segment.steps=null", "segment.epochs=1",
        "segment.max_steps=null", "segment.batch_size=4", "segment.sw_batch_size=2", "segment.roi_size=[8, 8, 8]",
        "segment.eval_spatial_size=null", "segment.class_names=null", "segment.label_fractions=[1.0]",
        "segment.n_boot=10", "segment.overlays=1"]),
    # rare malignant cytology tiles: DROC pretraining -> one-class detection (Deep SVDD, kNN)
    "cytology": ("pipelines/demo/cytology.yaml", [
        "data.manifest={data}/cytology/manifest.csv", "data.batch_size=64", "transforms.spatial_size=[32, 32]",
        "stages=[pretrain, detect]", "pretrain.max_steps=2", "detect.dsvdd_epochs=2", "detect.dsvdd_hidden=[8, 4]",
        "detect.n_boot=10"]),
    # whole-slide images (pyramidal TIFF, slide-level labels) cut into tiles by data.wsi: pretrain on the tiles ->
    # slide-level classification (attention MIL, mean pooling)
    "slides": ("pipelines/demo/histo.yaml", [
        "data.manifest={data}/histo/slides.csv", "stages=[pretrain, slides]", "transforms.spatial_size=[32, 32]",
        "data.test_fraction=0.34", "data.batch_size=16", "pretrain.max_steps=2", "data.wsi.tile_size=64",
        "data.wsi.max_tiles=6", "slides.hidden=16", "slides.attention_dim=8", "slides.epochs=2", "slides.n_boot=10",
        "slides.scratch_steps=2", "slides.scratch_tiles=2", "slides.calibration_folds=2"]),
    # linked OCT + fundus patients (2 of 16 lack one): each modality's tiny encoder pretrained 2 steps by its own demo
    # pipeline -> gated fusion, its baselines and test conditions
    "fuse": ("pipelines/demo/eye-multimodal.yaml", [
        "data.manifest={data}/eye/manifest.csv", "stages=[fuse]", "data.test_fraction=0.25", "data.batch_size=16",
        f"fuse.modalities={{oct: {{pipeline: demo/oct.yaml, set: [{FUSE_TINY}]}}, "
        f"fundus: {{pipeline: demo/fundus.yaml, set: [{FUSE_TINY}]}}}}",
        "fuse.steps=5", "fuse.n_boot=10", "fuse.hidden=8", "fuse.gate_dim=4"]),
    # MRI volumes through a pipeline without modality defaults: pretraining only
    "bare-mri": (BARE_MRI, ["data.manifest={data}/mri/manifest.csv", "data.batch_size=4", "pretrain.batch_size=4"]),
}


def synth_data(root: Path) -> Path:
    """Synthesise every scenario's data under ``root`` (once per module); returns ``root``."""
    from medcl.data.synth import synthesize

    synthesize(root, modalities=["oct", "mri", "cytology", "histo", "eye"],
               patients={"oct": 16, "mri": 12, "cytology": 16, "histo": 12, "eye": 16}, seed=0,
               size={"oct": 32, "mri": 16, "cytology": 32, "histo": 32, "eye": 32})
    _oct_extra(root)
    _fixed_split(root / "oct" / "manifest-extra.csv", root / "oct" / "split-fixed.csv")
    pretrained = root / "pretrained" / "tiny_cnn-2d.pt"
    pretrained.parent.mkdir()
    _random_encoder(pretrained)
    return root


#: grade -> a multi-label "findings" cell, for data.label_column / data.label_sep: "/"-separated, not the default
#: ";" (a class named "drusen;atrophy" could not name an MLflow metric; "drusen/atrophy" can)
_FINDINGS = {"0": "none", "1": "drusen", "2": "drusen/atrophy"}


def _oct_extra(root: Path) -> None:
    """Manifests the OCT scenario's data settings decide about.

    ``manifest-extra.csv`` is the OCT manifest with a ``findings`` column (:data:`_FINDINGS`) plus four rows:

    * ``outside``: a scan in ``<data>/oct-outside`` (``../`` from the manifest): inside ``data.root`` = ``<data>``,
      outside the manifest's folder (the default root);
    * ``big``: a 48 x 48 scan (the others are 32 x 32): over a ``data.max_voxels`` of 2000;
    * ``tiny``: a 3 x 3 scan: too small for validation (``bad-shape``), padded to 32 x 32 by the transforms;
    * ``histo``: a scan whose modality cell says ``histo``: dropped by ``data.modality: oct``.

    ``manifest-fewer.csv`` is the plain manifest without its last two patients.
    """
    from PIL import Image

    folder = root / "oct"
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["findings"] = _FINDINGS[r["grade"]]
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    patients = list(by_patient)
    (root / "oct-outside").mkdir()
    extra = []
    # file names like the synthesiser's: path components are registered as identifiers (PHI guard), so a file
    # named after a word medcl logs ("missing" of the problem code missing-mask) would stop the logging
    for k, name in enumerate(("outside", "big", "tiny", "histo")):
        src = by_patient[patients[k]][0]
        stem = f"{Path(src['path']).stem}x{k + 1}"
        path = f"../oct-outside/{stem}.png" if name == "outside" else f"images/{stem}.png"
        image = Image.open(folder / src["path"])
        if name in ("big", "tiny"):
            image = image.resize((48, 48) if name == "big" else (3, 3))
        image.save(folder / path)
        extra.append({**src, "path": path, "study_id": f"{src['study_id']}x{k + 1}",
                      "modality": "histo" if name == "histo" else src["modality"]})
    cols = list(rows[0])
    for name, body in (("manifest-extra.csv", rows + extra),
                       ("manifest-fewer.csv", [r for r in rows if r["patient_id"] not in patients[-2:]])):
        with open(folder / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(body)


def _fixed_split(manifest: Path, out: Path) -> None:
    """A ``split.csv`` (for ``data.split_file``) of the manifest's patients: the first four test, two val, the rest
    train — another split than the seeded one."""
    from medcl.data.manifest import load_manifest
    from medcl.data.splits import save_split

    records = load_manifest(manifest).records
    patients = sorted({r.patient for r in records})
    save_split(out, records, {p: "test" if i < 4 else "val" if i < 6 else "train" for i, p in enumerate(patients)})


def _random_encoder(path: Path) -> None:
    """A randomly initialised 2D tiny CNN (the scenarios' encoder) saved as pretrained weights."""
    import torch

    from medcl.checkpoint_file import save_checkpoint
    from medcl.networks import build_encoder

    torch.manual_seed(123)
    enc = build_encoder("tiny_cnn", in_channels=1, spatial_dims=2, widths=[8, 16])
    save_checkpoint(path, {"encoder": enc.state_dict(), "encoder_name": "tiny_cnn", "feature_dim": enc.feature_dim})


# -- fingerprint -----------------------------------------------------------------------------------------------
#: output entries and metrics that measure the machine or name a run, not what it computed
_VOLATILE = re.compile(r"(^|[/._])(run_id|seconds|train_seconds|images_per_s|samples_per_s|data_wait_fraction|"
                       r"encoder_uri|model_uri|segmenter_uri)$")


def _round(x: float) -> float | str:
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.6g}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensors(obj: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        a = obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.detach().cpu().numpy()
        return {"shape": list(a.shape), "sha": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]}
    if isinstance(obj, dict):
        return {str(k): _tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tensors(v) for v in obj]
    return obj


class _Norm:
    """Make a run's outputs comparable across runs: paths read back, run folders and ids dropped, floats rounded."""

    def __init__(self, run_dir: Path):
        self.run_dir = str(run_dir)

    def __call__(self, v: Any, key: str = "") -> Any:
        if isinstance(v, dict):
            return {k: self(x, k) for k, x in v.items() if not _VOLATILE.search(str(k))}
        if isinstance(v, (list, tuple)):
            if key == "summary":  # result rows: drop those that time the run
                v = [r for r in v if not re.search(r"wait|seconds|per s", str(r.get("metric", "")))]
            return [self(x, key) for x in v]
        if isinstance(v, float):
            return _round(v)
        if isinstance(v, str):
            return self.path(v)
        return v

    def path(self, s: str) -> Any:
        if not s.startswith("/") or "\n" in s:
            return s.replace(self.run_dir, "<run>")
        p = Path(s)
        if not p.is_file():
            return s.replace(self.run_dir, "<run>")
        return {"file": p.name, "content": self.content(p)}

    def content(self, p: Path) -> Any:
        import numpy as np

        suffix = p.suffix.lower()
        if suffix == ".pt":
            from medcl.checkpoint_file import load_checkpoint

            return _tensors(load_checkpoint(p))
        if suffix == ".json":
            return self(json.loads(p.read_text()))
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: _round_array(z[k]) for k in sorted(z.files)}
        if suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as fh:
                return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def _num(s: str) -> Any:
    try:
        return _round(float(s))
    except ValueError:
        return s


def _round_array(a: Any) -> Any:
    import numpy as np

    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = np.vectorize(lambda x: _round(float(x)), otypes=[object])(a) if a.size else a
    return {"shape": list(a.shape), "sha": _digest(a.tolist())}


def fingerprint(ctx: Any, uri: str) -> dict[str, Any]:
    """What a finished run produced (see the module docstring)."""
    from mlflow import MlflowClient

    norm = _Norm(ctx.run_dir)
    client = MlflowClient(tracking_uri=uri)
    data = ctx.data
    with open(ctx.run_dir / "split.csv", newline="", encoding="utf-8") as fh:
        split = list(csv.DictReader(fh))  # row, pseudonymised patient, split
    tiles = getattr(data, "tiles", {})  # the tiling plans of whole-slide images
    out: dict[str, Any] = {
        "data": {"n_samples": len(data.records), "n_patients": len(data.patient_index),
                 "n_excluded": len(data.excluded), "classes": list(data.classes), "task": data.task,
                 "split": _digest(split), "summary": norm(data.summary),
                 "n_tiles": sum(map(len, tiles.values())), "tiles": _digest(norm(tiles))},
        "stages": {},
    }
    for stage, outputs in ctx.outputs.items():
        metrics = client.get_run(outputs["run_id"]).data.metrics
        out["stages"][stage] = {
            "metrics": {k: _round(v) for k, v in sorted(metrics.items()) if not _VOLATILE.search(k)},
            "outputs": norm(outputs),
        }
    return out


def overrides(scenario: str, data: Path, out: Path, uri: str, extra: list[str] = ()) -> list[str]:
    """The scenario's ``--set`` list for one run writing under ``out``."""
    _, sets = SCENARIOS[scenario]
    fill = [s.replace("{data}", str(data)).replace("{out}", str(out)) for s in [*sets, *extra]]
    return [*COMMON, f"runtime.output_dir={out / 'runs'}", f"tracking.uri={uri}", *fill]


def pipeline_file(scenario: str, out: Path) -> Path:
    """The scenario's pipeline YAML (a demo pipeline, or its text written to ``out``)."""
    source = SCENARIOS[scenario][0]
    if "\n" not in source:
        return REPO / source
    path = out / f"{scenario}.yaml"
    path.write_text(source)
    return path


@contextlib.contextmanager
def isolated():
    """Run a pipeline in-process without leaving global state behind, on one thread.

    One BLAS/OpenMP/torch thread: on two busy cores sklearn's L-BFGS probes are ~10x slower with more (threads
    oversubscribed). ``runtime.deterministic`` switches torch to deterministic algorithms for the rest of the
    process (:func:`medcl.stages.common.seed_everything` never switches it back): restored here.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def run(scenario: str, data: Path, out: Path, uri: str, extra: list[str] = ()) -> Any:
    """Run ``scenario`` with the ``extra`` overrides under ``out`` (see :func:`isolated`); the run's context."""
    from medcl.pipeline import load_pipeline, run_pipeline

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_pipeline(pipeline_file(scenario, out), overrides(scenario, data, out, uri, list(extra)))
    with isolated():
        return run_pipeline(cfg, force=True)


def outcome(scenario: str, data: Path, out: Path, uri: str, extra: list[str] = (), expect_error: bool = False
            ) -> dict[str, Any]:
    """Run ``scenario`` with the ``extra`` overrides and return its :func:`fingerprint`.

    With ``expect_error`` a :class:`~medcl.errors.MedclError` is the outcome (its type and first line, paths
    removed); without, it propagates.
    """
    from medcl.errors import MedclError

    try:
        ctx = run(scenario, data, out, uri, extra)
    except MedclError as exc:
        if not expect_error:
            raise
        line = str(exc).splitlines()[0].replace(str(out), "<out>").replace(str(data), "<data>")
        return {"error": f"{type(exc).__name__}: {line}"}
    return fingerprint(ctx, uri)


_MISSING = object()
_SCALAR = (str, int, float, bool, type(None))


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, value, other value)`` wherever two fingerprints differ (``/``-joined keys, ``[i]`` positions)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path or "/", a, b)]


def echoes(diff: tuple[str, Any, Any], key: str) -> bool:
    """Whether a difference only repeats the setting ``key``: two plain values in a field or metric named after it.

    ``n_bins`` in ``calibration.json`` or the metric ``test/n_bins_after`` echo ``calibrate.n_bins``; the overlay
    files listed under ``overlays`` do not echo ``segment.overlays``.
    """
    path, a, b = diff
    leaf = re.escape(key.rsplit(".", 1)[-1])
    last = re.split(r"[/\[]", path.rstrip("]"))[-1]
    return isinstance(a, _SCALAR) and isinstance(b, _SCALAR) and re.search(
        rf"(^|[^A-Za-z0-9]){leaf}($|[^A-Za-z0-9])", last) is not None
