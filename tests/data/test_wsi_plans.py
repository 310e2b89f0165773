"""Slides in the manifest: tiling plans (level, tissue, thinning), their cache, tile items read as regions, and
the slides the settings cannot serve named as row problems before training."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from readers_testfiles import _levels, slide_pixels

from medcl.config.schema import PipelineConfig
from medcl.data import wsi_plans
from medcl.data.prepare import prepare_data
from medcl.data.wsi_plans import plan_slide, plans_table
from medcl.errors import ConfigError, DataError


def _write_slide(path, img=None, mpp=0.5):
    import tifffile

    levels = _levels(slide_pixels() if img is None else img, 3)
    with tifffile.TiffWriter(str(path)) as tif:
        tif.write(levels[0], tile=(64, 64), photometric="rgb", compression="zlib", subifds=2,
                  resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
        for lvl in levels[1:]:
            tif.write(lvl, tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=1)
    return levels


@pytest.fixture
def slides(tmp_path):
    """A manifest of 8 patients, one slide each (the same 512-px slide: tissue at rows 128:384, cols 64:320)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    levels = _write_slide(folder / "p0.tif")
    rows = []
    for i in range(8):
        if i:
            shutil.copy(folder / "p0.tif", folder / f"p{i}.tif")
        rows.append({"patient_id": f"P{i}", "path": f"slides/p{i}.tif", "modality": "histo",
                     "label": ["tumour", "normal"][i % 2]})
    manifest = tmp_path / "slides.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest, levels


def _cfg(manifest, tmp_path, **wsi):
    return PipelineConfig(name="t", seed=3, data={"manifest": str(manifest), "modality": "histo", "wsi": wsi,
                                                  "classes": ["tumour", "normal"], "val_fraction": 0.25,
                                                  "test_fraction": 0.25},
                          runtime={"output_dir": str(tmp_path / "out"), "progress": False})


def _settings(**kw):
    return PipelineConfig(name="t", data={"wsi": kw}).data.wsi


def _expected_grid(levels, tile, min_tissue):
    """Tiles of ``tile`` level-0 pixels whose tissue fraction reaches ``min_tissue``, computed independently:
    scikit-image's Otsu threshold on the HSV saturation of the smallest level (skimage's rgb2hsv)."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    small = levels[-1]
    sat = rgb2hsv(small)[..., 1]
    mask = sat > threshold_otsu(sat)
    scale = levels[0].shape[0] // small.shape[0]
    out = []
    for y in range(0, levels[0].shape[0] - tile + 1, tile):
        for x in range(0, levels[0].shape[1] - tile + 1, tile):
            frac = mask[y // scale:(y + tile) // scale, x // scale:(x + tile) // scale].mean()
            if frac >= min_tissue:
                out.append((x, y))
    return out


def test_a_plan_is_the_tissue_grid_an_independent_otsu_gives(slides, tmp_path):
    manifest, levels = slides
    tiles = plan_slide(manifest.parent / "slides" / "p0.tif", _settings(level=0, tile_size=64, min_tissue=0.5), 0)
    assert [(t["x"], t["y"]) for t in tiles] == _expected_grid(levels, 64, 0.5)
    assert len(tiles) == 16 and {(t["level"], t["size"], t["tile_size"]) for t in tiles} == {(0, 64, 64)}
    # 0.5 µm/pixel is 20x: mpp 1.0 = 10x is level 1, 32-pixel tiles cover 64 level-0 pixels
    t10 = plan_slide(manifest.parent / "slides" / "p0.tif", _settings(mpp=1.0, tile_size=32), 0)
    assert {(t["level"], t["size"]) for t in t10} == {(1, 32)}
    assert [(t["x"], t["y"]) for t in t10] == _expected_grid(levels, 64, 0.5)


def test_max_tiles_keeps_an_even_grid_or_a_seeded_random_draw(slides):
    path = slides[0].parent / "slides" / "p0.tif"
    every = plan_slide(path, _settings(level=0, tile_size=64), 0)
    grid = plan_slide(path, _settings(level=0, tile_size=64, max_tiles=4), 0)
    assert grid == [every[i] for i in (0, 5, 10, 15)]  # round(linspace(0, 15, 4))
    draws = [plan_slide(path, _settings(level=0, tile_size=64, max_tiles=5, sampling="random"), s) for s in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    for d in draws:
        assert len(d) == 5 and all(t in every for t in d) and d == sorted(d, key=every.index)


def test_tile_items_read_their_region_of_the_pyramid(slides, tmp_path):
    from medcl.transforms.io import LoadSampled

    manifest, levels = slides
    data = prepare_data(_cfg(manifest, tmp_path, magnification=10, tile_size=32, max_tiles=3))
    assert len(data.tiles) == 8 and all(len(t) == 3 for t in data.tiles.values())
    items = data.items("train")
    train_slides = {it["index"] for it in items}
    assert len(items) == 3 * len(train_slides)
    for it in items[:3]:
        x, y, level, size, out = it["region"]
        assert (level, size, out) == (1, 32, 32)
        loaded = LoadSampled(keys=("image",))(it)
        expect = levels[1][y // 2:y // 2 + 32, x // 2:x // 2 + 32]  # the reference pixels of level 1
        np.testing.assert_array_equal(loaded["image"].numpy(), np.moveaxis(expect, -1, 0))
        assert "region" not in loaded and loaded["patient"] == it["patient"] and loaded["index"] == it["index"]
    # 8x sits between levels 0 and 1: 40 pixels of level 1 are read and area-resized to 32
    data8 = prepare_data(_cfg(manifest, tmp_path, magnification=8, tile_size=32, max_tiles=2))
    it = data8.items("train")[0]
    assert it["region"][2:] == [1, 40, 32]
    x, y = it["region"][:2]
    got = LoadSampled(keys=("image",))(it)["image"]
    assert tuple(got.shape) == (3, 32, 32)
    ref = levels[1][y // 2:y // 2 + 40, x // 2:x // 2 + 40].astype(np.float64)
    np.testing.assert_allclose(got.numpy().mean(axis=(1, 2)), ref.mean(axis=(0, 1)), atol=0.5)


def test_plans_are_cached_by_slide_content_and_settings(slides, tmp_path, monkeypatch):
    manifest, _ = slides
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=4)
    first = prepare_data(cfg)
    cache = tmp_path / "out" / "wsi_plans"
    assert len(list(cache.glob("*.json"))) == 1  # 8 copies of one slide: one content, one plan

    def refuse(*a, **k):
        raise AssertionError("planned again although cached")

    monkeypatch.setattr(wsi_plans, "plan_slide", refuse)
    assert prepare_data(cfg).tiles == first.tiles
    monkeypatch.undo()
    prepare_data(_cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=3))  # other settings: a new plan
    _write_slide(manifest.parent / "slides" / "p5.tif", img=np.roll(slide_pixels(), 64, axis=1))  # re-scanned
    changed = prepare_data(cfg)
    row = 6
    assert changed.tiles[row] != first.tiles[row] and changed.tiles[1] == first.tiles[1]
    assert len(list(cache.glob("*.json"))) == 3  # settings A and B for the common slide, A for the new one


def test_slides_the_settings_cannot_serve_are_named_before_training(slides, tmp_path):
    manifest, _ = slides
    blank = np.full((512, 512, 3), 240, np.uint8)
    _write_slide(manifest.parent / "slides" / "p2.tif", img=blank)
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(manifest, tmp_path, level=0, tile_size=64))
    msg = str(e.value)
    assert "row 3 (slides/p2.tif): no tissue found" in msg and "data.wsi.min_tissue" in msg
    with pytest.raises(DataError, match=r"row 1 \(slides/p0.tif\): slide cannot be tiled: magnification 40x is not "
                                        r"available: the slide was scanned at 20x"):
        prepare_data(_cfg(manifest, tmp_path, magnification=40, tile_size=64))
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64)
    cfg.data.on_error = "skip"
    kept = prepare_data(cfg)
    assert [e["row"] for e in kept.excluded] == [3] and "slide-no-tissue" in kept.excluded[0]["codes"]
    assert 3 not in kept.tiles and len(kept.tiles) == 7


def test_one_resolution_setting_at_a_time():
    with pytest.raises(ValueError, match="sets magnification and level: choose one"):
        _settings(magnification=10, level=1)


def test_the_plan_table_names_rows_not_slide_paths(slides, tmp_path):
    manifest, _ = slides
    data = prepare_data(_cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=2))
    text = plans_table(data.tiles)
    assert text.splitlines()[0] == "row,tile,x,y,level,size,tile_size,tissue"
    assert len(text.splitlines()) == 1 + 16 and "p0.tif" not in text and "slides" not in text


def test_stages_that_need_tile_labels_refuse_slide_rows(slides, tmp_path):
    from medcl.pipeline import _preflight

    manifest, _ = slides
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=2)
    cfg.stages = ["pretrain", "classify"]
    data = prepare_data(cfg)
    with pytest.raises(ConfigError, match="would train on their tiles as if each tile had its slide's label"):
        _preflight(cfg, data)
    cfg.stages = ["pretrain"]
    _preflight(cfg, data)


def test_pretraining_reads_slides_tile_by_tile_and_logs_the_plans(slides, tmp_path, tracking_uri):
    from pathlib import Path

    from mlflow import MlflowClient

    from medcl.pipeline import load_pipeline, run_pipeline

    manifest, _ = slides
    cfg = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "histo.yaml", [
        f"data.manifest={manifest}", f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false",
        "stages=[pretrain]", "data.classes=[tumour, normal]", "data.wsi.magnification=10", "data.wsi.tile_size=32",
        "data.wsi.max_tiles=4", "transforms.spatial_size=[32, 32]", "pretrain.steps=2", "pretrain.batch_size=8",
        "pretrain.warmup_epochs=0", "model.proj_hidden_dim=32", "model.proj_dim=16", "data.cache=none"])
    ctx = run_pipeline(cfg)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(ctx.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.n_slides"] == "8" and parent.data.params["data.n_tiles"] == "32"
    table = client.download_artifacts(ctx.parent_run_id, "wsi_tiles.csv", str(tmp_path / "dl"))
    assert Path(table).read_text() == plans_table(ctx.data.tiles)
    assert ctx.outputs["pretrain"]["steps_run"] == 2


def test_the_slides_stage_classifies_slides_from_their_tiles(slides, tmp_path, tracking_uri):
    from pathlib import Path

    from mlflow import MlflowClient

    from medcl.pipeline import load_pipeline, run_pipeline

    manifest, _ = slides
    cfg = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "demo" / "histo.yaml", [
        f"data.manifest={manifest}", f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false",
        "stages=[slides]", "data.classes=[tumour, normal]", "data.wsi.magnification=10", "data.wsi.tile_size=32",
        "data.wsi.max_tiles=4", "transforms.spatial_size=[32, 32]", "slides.epochs=2", "slides.n_boot=20", "slides.label_fractions=[0.5, 1.0]",
        "slides.scratch_steps=3", "slides.scratch_tiles=2", "slides.calibration_folds=2",
        "data.cache=none", "data.task=binary", "data.val_fraction=0.25", "data.test_fraction=0.25"])
    ctx = run_pipeline(cfg)
    out = ctx.outputs["slides"]
    results = {(r["model"], r["pooling"], r["fraction"]): r
               for r in __import__("json").loads(Path(out["results"]).read_text())}
    # no pretrain stage: baselines only (frozen random-init features; an encoder trained end to end from scratch);
    # half of the 4 training patients, then all of them
    assert set(results) == {(m, p, f) for m in ("random", "scratch") for p in ("attention", "mean")
                            for f in (0.5, 1.0)}
    assert results[("random", "mean", 0.5)]["n_train_patients"] == 2
    test_rows = sorted(r.row for r in ctx.data.records if ctx.data.assignment[r.patient] == "test")
    r = results[("random", "attention", 1.0)]
    assert r["n_test_slides"] == len(test_rows) == 2 and r["n_train_slides"] == 4
    lines = Path(out["predictions"]).read_text().splitlines()
    assert lines[0].startswith("row,label,random_attention_p0") and [int(x.split(",")[0]) for x in lines[1:]] == \
        test_rows
    assert all(0 <= int(x.split(",")[-1]) < 4 for x in lines[1:])  # the most-attended of the slide's 4 tiles
    # calibration at the full fraction: decided for every model from 2 validation + 4 out-of-fold training slides
    # (the scratch encoder has seen its training slides: validation slides only)
    for (model, _pooling, fraction), r in results.items():
        assert ("calibration" in r) == (fraction == 1.0)
        if fraction == 1.0:
            cal = r["calibration"]
            assert isinstance(cal["applied"], bool) and cal["reason"]
            assert cal.get("n_calibration_slides") in (None, 2 if model == "scratch" else 6)
    client = MlflowClient(tracking_uri)
    exp = client.get_run(ctx.parent_run_id).info.experiment_id
    child = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'")[0]
    assert child.data.tags["medcl.stage"] == "slides" and child.info.status == "FINISHED"
    metrics = child.data.metrics
    assert {"test/slides/random/attention/f100/slide/auroc", "test/slides/random/mean/f100/patient/accuracy_ci_low",
            "test/slides/random/attention/f50/slide/auroc"} <= set(metrics)
    feats = __import__("numpy").load(Path(out["results"]).parent / "features_random.npz")
    assert sorted(feats.files) == sorted(f"row{r.row}" for r in ctx.data.records)  # train, validation, test
    assert all(feats[k].shape == (4, 512) for k in feats.files)  # 4 tiles x ResNet-18's 512 features
    # the report's Slides section: the metrics table and each test slide's attention map
    from medcl.reporting.data import ReportData
    from medcl.reporting.sections import render

    arts = {a.path for a in client.list_artifacts(child.info.run_id, "attention")}
    assert arts == {f"attention/row{r}.png" for r in test_rows}
    html = "\n".join(render(ReportData.load(ctx.parent_run_id, tracking_uri), "slides"))
    assert "slide AUROC" in html and html.count("<figure>") == 2 and "row" in html
    assert "ECE before" in html and html.count("applied</td>") == 4  # random, scratch × 2 poolings at 100 %
    assert ".tif" not in html  # manifest rows, never the slide files' names


def test_a_new_tiling_algorithm_does_not_reuse_old_plans(slides, tmp_path, monkeypatch):
    manifest, _ = slides
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=4)
    prepare_data(cfg)
    monkeypatch.setattr(wsi_plans, "PLAN_VERSION", wsi_plans.PLAN_VERSION + 1)
    calls = []
    real = wsi_plans.plan_slide
    monkeypatch.setattr(wsi_plans, "plan_slide", lambda *a, **k: calls.append(1) or real(*a, **k))
    prepare_data(cfg)
    assert calls  # planned again, not read from the old version's cache


def test_a_tile_row_in_a_slide_level_pipeline_is_refused(slides, tmp_path):
    from PIL import Image

    manifest, _ = slides
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(manifest.parent / "tile.png")
    with manifest.open("a") as f:
        f.write("P9,tile.png,histo,tumour\n")
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=2)
    cfg.stages = ["slides"]
    with pytest.raises(DataError, match=r"row 9 \(tile.png\): not a whole-slide image \(its format reads as 'image'\)"):
        prepare_data(cfg)
    cfg.stages = ["pretrain"]  # a tile-level pipeline takes the same row
    assert 9 in {r.row for r in prepare_data(cfg).records}


def test_a_flat_tiff_in_a_slide_level_pipeline_is_named_and_skipped(slides, tmp_path):
    """A single-level TIFF is not a slide (no pyramid to read a magnification from): one line naming it, and
    with on_error: skip it is excluded and listed while the slides train."""
    import tifffile

    manifest, _ = slides
    tifffile.imwrite(manifest.parent / "flat.tif", np.full((256, 256, 3), 150, np.uint8), photometric="rgb")
    with manifest.open("a") as f:
        f.write("P9,flat.tif,histo,tumour\n")
    cfg = _cfg(manifest, tmp_path, level=0, tile_size=64, max_tiles=2)
    cfg.stages = ["pretrain", "slides"]
    with pytest.raises(DataError, match=r"row 9 \(flat.tif\): a TIFF with a single resolution level \(no pyramid\)"):
        prepare_data(cfg)
    cfg.data.on_error = "skip"
    bundle = prepare_data(cfg)
    assert [e["row"] for e in bundle.excluded] == [9]
    assert "single resolution level" in bundle.excluded[0]["problems"][0]
    assert 9 not in bundle.tiles and len(bundle.tiles) == len(bundle.records)
