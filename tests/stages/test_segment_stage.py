"""The ``segment`` stage end to end on tiny synthetic MRI (real NIfTI files from medcl.data.synth).

pretrain (2 SimCLR steps) → segment (encoder_unet, pretrained vs scratch, 3 steps each), on
8 patients of 16×16×24 volumes resampled and cropped to 16³, with a NullTracker.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medcl.errors import ConfigError, DataError

CONFIG = {
    "name": "seg-test",
    "seed": 0,
    "stages": ["pretrain", "segment"],
    "data": {"modality": "mri", "task": "binary", "val_fraction": 0.0, "test_fraction": 0.25, "batch_size": 4,
             "validate_files": False},
    "model": {"encoder": "tiny_cnn", "spatial_dims": 3, "in_channels": 1, "options": {"widths": [8, 16]},
              "proj_hidden_dim": 16, "proj_dim": 8},
    "transforms": {"preset": "mri", "spatial_size": [16, 16, 16], "spacing": [6.0, 6.0, 10.5]},
    "pretrain": {"method": "simclr", "epochs": 1, "max_steps": 2, "batch_size": 4, "warmup_epochs": 0},
    "segment": {"network": "encoder_unet", "network_options": {"decoder_channels": [8], "input_channels": 4},
                "epochs": 1, "max_steps": 3, "batch_size": 2, "num_classes": 2,
                "class_names": ["background", "lesion"], "roi_size": [8, 8, 8], "n_boot": 50, "overlays": 2},
    "runtime": {"device": "cpu", "progress": False},
}


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory) -> Path:
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, modalities=["mri"], patients=8, seed=0, size=16)
    return root / "mri" / "manifest.csv"


def _context(tmp_path: Path, manifest: Path, overrides: list[str] | None = None):
    import torch

    from medcl.config import load_config
    from medcl.data.prepare import prepare_data
    from medcl.stages.context import RunContext

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    cfg = load_config(path, [f"data.manifest={manifest}", f"runtime.output_dir={tmp_path / 'runs'}",
                             *(overrides or [])])
    data = prepare_data(cfg)
    return RunContext(cfg, "test", tmp_path / "runs" / "seg-test", data, device=torch.device("cpu"))


def test_segment_stage_compares_pretrained_and_scratch(tmp_path, demo_manifest):
    from medcl.stages import STAGES
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest)
    ctx.outputs["pretrain"] = STAGES["pretrain"](ctx, NullTracker("pretrain"))
    assert Path(ctx.outputs["pretrain"]["encoder"]).is_file()
    tracker = NullTracker("segment")
    out = STAGES["segment"](ctx, tracker)

    results = json.loads(Path(out["results"]).read_text())
    assert Path(out["results"]) == ctx.run_dir / "segment" / "results.json"
    by_model = {r["model"]: r for r in results}
    assert set(by_model) == {"pretrained", "scratch"}
    # the pretrained encoder went in (every tensor of it), the baseline had the same budget from scratch
    assert by_model["pretrained"]["pretrained_tensors_loaded"] > 0
    assert by_model["scratch"]["pretrained_tensors_loaded"] == 0
    assert by_model["pretrained"]["steps"] == by_model["scratch"]["steps"] == 3
    for r in results:
        d = r["dice_mean"]
        assert np.isfinite(d["value"]) and 0.0 <= d["value"] <= 1.0
        assert d["n_cases"] >= 1 and set(r["per_class"]) == {"lesion"}
        assert r["hd95_unit"] == "mm"
        assert r["n_train_patients"] == 6
    # metrics under test/{model}/{fraction}/...
    assert "test/pretrained/f100/dice_mean" in tracker.metrics
    assert "test/scratch/f100/dice_lesion" in tracker.metrics
    assert tracker.metrics["test/pretrained/f100/dice_mean"][-1][1] == pytest.approx(
        by_model["pretrained"]["dice_mean"]["value"])

    # per-case Dice: one row per test case and model; mean Dice is the mean of the finite ones
    rows = list(csv.DictReader(Path(out["per_case"]).read_text(encoding="utf-8").splitlines()))
    test_idx = ctx.data.indices("test")
    assert len(rows) == 2 * len(test_idx)
    pre = [float(r["dice_lesion"]) for r in rows if r["model"] == "pretrained" and r["dice_lesion"]]
    assert np.mean(pre) == pytest.approx(by_model["pretrained"]["dice_mean"]["value"], abs=1e-3)
    # lesion-free cases have no Dice (empty ground truth) but are still listed
    empty = [r for r in rows if int(r["fg_voxels_true"]) == 0]
    assert all(r["dice_lesion"] == "" for r in empty)

    # overlays: PNGs named by row index, no patient identifiers anywhere in names or tables
    assert 1 <= len(out["overlays"]) <= 2
    for p in out["overlays"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
    stage_dir = ctx.run_dir / "segment"
    names = " ".join(str(p.relative_to(stage_dir)) for p in stage_dir.rglob("*"))
    text = Path(out["results"]).read_text() + Path(out["per_case"]).read_text()
    for r in ctx.data.records:
        assert r.patient not in names and r.patient not in text
    assert "DEMO-MRI" not in names + text
    assert {"model", "metric", "value"} <= set(out["summary"][0])


def test_segment_stage_rejects_a_roi_the_network_cannot_take(tmp_path, demo_manifest):
    from medcl.stages.segment import run
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest, ["segment.network=unet", "segment.roi_size=[16,16,12]"])
    with pytest.raises(ConfigError, match="multiples of 16"):
        run(ctx, NullTracker())


def test_class_names_must_match_num_classes(tmp_path, demo_manifest):
    with pytest.raises(ConfigError, match="class_names"):
        _context(tmp_path, demo_manifest, ["segment.num_classes=3"])


def test_a_network_that_cannot_take_the_encoder_trains_from_scratch_only(tmp_path, demo_manifest):
    from medcl.checkpoint_file import save_checkpoint
    from medcl.stages.common import make_encoder
    from medcl.stages.segment import run
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest, [
        "segment.network=unet", 'segment.network_options={"channels": [4, 8, 16], "strides": [2, 2], '
        '"num_res_units": 1}', "segment.max_steps=2", "segment.overlays=0"])
    enc = make_encoder(ctx.cfg)
    path = tmp_path / "encoder.pt"
    save_checkpoint(path, {"encoder": enc.state_dict(), "encoder_name": "tiny_cnn"})
    ctx.outputs["pretrain"] = {"encoder": str(path)}
    out = run(ctx, NullTracker())
    results = json.loads(Path(out["results"]).read_text())
    assert [r["model"] for r in results] == ["scratch"]
    assert results[0]["network"] == "unet" and results[0]["steps"] == 2
    assert out["overlays"] == []


DENSE = ["pretrain.method=dense", "pretrain.method_options={decoder: true, num_samples: 16}",
         "transforms.aligned_views=true"]


def test_dense_pretraining_hands_its_decoder_to_segmentation(tmp_path, demo_manifest, monkeypatch):
    """dense → segment: the decoder pretrained with the encoder goes into encoder_unet, tensor for tensor."""
    import torch

    from medcl.checkpoint_file import load_checkpoint
    from medcl.stages import STAGES
    from medcl.stages import segment as seg
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest, DENSE)
    ctx.outputs["pretrain"] = STAGES["pretrain"](ctx, NullTracker("pretrain"))
    ckpt = load_checkpoint(ctx.outputs["pretrain"]["encoder"])
    # the decoder was built with segment's widths (copied by the pretrain stage) and saved with the encoder
    assert ckpt["decoder_options"] == {"decoder_channels": [8], "input_channels": 4}
    decoder = ckpt["decoder"]
    assert decoder and not any(k.startswith(("encoder.", "head.")) for k in decoder)

    built = []
    build = seg._build

    def spy(ctx_, weights, dims):
        net, n = build(ctx_, weights, dims)
        built.append((weights, net, n))
        return net, n

    monkeypatch.setattr(seg, "_build", spy)
    nets = {}
    train = seg._train

    def keep(ctx_, net, *args, **kwargs):  # the weights as they go into training
        nets.setdefault(id(net), {k: v.clone() for k, v in net.state_dict().items()})
        return train(ctx_, net, *args, **kwargs)

    monkeypatch.setattr(seg, "_train", keep)
    out = STAGES["segment"](ctx, NullTracker("segment"))
    results = {r["model"]: r for r in json.loads(Path(out["results"]).read_text())}
    pre = next(net for w, net, _ in built if w)
    start = nets[id(pre)]
    for k, v in decoder.items():
        assert torch.equal(start[k], v), k
    n_encoder = len(ckpt["encoder"])
    assert results["pretrained"]["pretrained_tensors_loaded"] == n_encoder + len(decoder)
    scratch = next(net for w, net, _ in built if not w)
    assert not all(torch.equal(nets[id(scratch)][k], v) for k, v in decoder.items())

    # segment.pretrained_decoder: false — the same checkpoint gives the encoder alone; the decoder starts random
    ctx.cfg = ctx.cfg.model_copy(update={"segment": ctx.cfg.segment.model_copy(update={"pretrained_decoder": False})})
    net, n = build(ctx, ctx.outputs["pretrain"]["encoder"], 3)
    assert n == n_encoder
    own = net.state_dict()
    assert not any(torch.equal(own[k], v) for k, v in decoder.items() if v.dim() > 1)  # conv weights: random
    assert all(torch.equal(own[f"encoder.{k}"], v) for k, v in ckpt["encoder"].items())


def test_dense_without_aligned_views_is_refused(tmp_path, demo_manifest):
    from medcl.stages import STAGES
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest, DENSE[:2])
    with pytest.raises(ConfigError, match="spatially aligned") as info:
        STAGES["pretrain"](ctx, NullTracker("pretrain"))
    assert "aligned_views: true" in info.value.fix


def test_aligned_views_share_geometry_and_differ_in_intensity():
    """With a shared geometric draw two views differ by the intensity shift alone: a constant offset."""
    import torch

    from medcl.transforms import build_transforms
    from medcl.transforms.seeding import set_transform_seed

    vol = np.random.default_rng(0).uniform(-500, 500, (1, 40, 40, 20)).astype(np.float32)
    kw = {"spatial_size": [24, 24, 12], "spacing": [1, 1, 1], "affine_prob": 1.0, "intensity_prob": 1.0,
          "intensity_shift": 0.1}
    for seed in range(3):
        tr = build_transforms("ct", train=True, views=2, aligned_views=True, **kw)
        set_transform_seed(tr, seed)
        v = tr({"image": vol})["views"]
        diff = v[1] - v[0]
        assert float(diff.std()) < 1e-6 and float(diff.abs().mean()) > 1e-4
    tr = build_transforms("ct", train=True, views=2, aligned_views=False, **kw)
    set_transform_seed(tr, 0)
    v = tr({"image": vol})["views"]
    assert float((v[1] - v[0]).std()) > 1e-2  # independent geometry: not an offset
    assert torch.isfinite(v).all()


def test_segment_stops_before_training_when_a_step_cannot_fit(tmp_path, demo_manifest, monkeypatch):
    from medcl.stages import STAGES, common
    from medcl.tracking import NullTracker

    ctx = _context(tmp_path, demo_manifest, ["stages=[segment]"])
    monkeypatch.setattr(common, "available_bytes", lambda device: 4096)
    with pytest.raises(ConfigError, match="stage segment: one optimiser step needs about") as info:
        STAGES["segment"](ctx, NullTracker("segment"))
    assert "segment.batch_size" in info.value.line()


def test_small_segmentation_shares_hold_masks_with_and_without_foreground(tmp_path, monkeypatch):
    """Half the MRI demo's patients have no lesion: a 1-patient share was all background on some seeds."""
    import nibabel as nib

    from medcl.data.synth import synthesize
    from medcl.stages import segment
    from medcl.tracking import NullTracker

    synthesize(tmp_path / "synth", modalities=["mri"], patients=16, seed=3, size=16)
    manifest = tmp_path / "synth" / "mri" / "manifest.csv"

    class Stop(Exception):
        pass

    for seed in range(4):
        shares: list[list[dict]] = []

        def record(ctx, net, items, *a, _shares=shares, **k):
            _shares.append(list(items))
            raise Stop

        monkeypatch.setattr(segment, "_train", record)
        (tmp_path / f"s{seed}").mkdir()
        ctx = _context(tmp_path / f"s{seed}", manifest, [f"seed={seed}", "segment.label_fractions=[0.05, 1.0]"])
        with pytest.raises(Stop):
            segment.run(ctx, NullTracker())
        (items,) = shares
        lesion = {it["index"]: bool((np.asarray(nib.load(it["mask"]).dataobj) > 0).any()) for it in items}
        assert set(lesion.values()) == {True, False}, seed  # 5 % of 12 training patients asks for one patient
        patients = set(ctx.data.patients_of(np.asarray(list(lesion))))
        train = [it for it in ctx.data.items("train") if it.get("mask")]
        whole = [it["index"] for it in train if ctx.data.patients_of(np.asarray([it["index"]]))[0] in patients]
        assert sorted(whole) == sorted(lesion)  # every study of a chosen patient


def test_mask_classes_read_every_foreground_label(tmp_path):
    import nibabel as nib

    from medcl.stages.segment import _mask_classes

    masks = {"a": [0, 2], "b": [0], "c": [1, 2, 1], "d": [0, 7]}
    items = []
    for name, values in masks.items():
        arr = np.zeros((4, 4, 3), np.uint8)
        arr.flat[: len(values)] = values
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.nii.gz")
        items.append({"mask": str(tmp_path / f"{name}.nii.gz")})
    assert _mask_classes(items[:3], 3).tolist() == [[0, 1], [0, 0], [1, 1]]
    with pytest.raises(DataError, match=r"d\.nii\.gz: mask labels span \[0, 7\] but num_classes=3"):
        _mask_classes(items, 3)  # 7 is no class of 3: named with its file before any training
    arr = np.zeros((4, 4, 3), np.float32)
    arr[0, 0, 0] = 0.5  # a mask resampled with linear interpolation
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "e.nii.gz")
    with pytest.raises(DataError, match=r"e\.nii\.gz: the mask holds non-integer values"):
        _mask_classes([{"mask": str(tmp_path / "e.nii.gz")}], 3)
