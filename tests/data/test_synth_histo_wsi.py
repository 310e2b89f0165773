"""The histo-wsi demo set: slides labelled by a minority of their tissue, readable as pyramids, reproducible."""

from __future__ import annotations

import csv

import numpy as np

from medcl.data.synth import synthesize
from medcl.data.synth.histo_wsi import TUMOUR_SHARE, render_wsi


def test_a_tumour_slide_is_mostly_benign_tissue_with_one_focus():
    rng = np.random.default_rng(3)
    rgb, tissue, focus = render_wsi(True, rng, size=256)
    share = focus.sum() / tissue.sum()
    assert TUMOUR_SHARE[0] - 0.03 <= share <= TUMOUR_SHARE[1] + 0.03  # a minority of the tissue
    assert not (focus & ~tissue).any()  # the focus lies in the tissue
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    _, _, none = render_wsi(False, np.random.default_rng(3), size=256)
    assert not none.any()


def test_the_set_is_slides_with_slide_labels_and_is_reproducible(tmp_path):
    import tifffile

    for out in ("a", "b"):
        synthesize(tmp_path / out, modalities=["histo-wsi"], patients=6, seed=1, size=256)
    rows = list(csv.DictReader((tmp_path / "a" / "histo-wsi" / "manifest.csv").open()))
    assert [r["label"] for r in rows] == ["benign", "tumour"] * 3
    assert all(r["modality"] == "histo" and r["path"].startswith("slides/") for r in rows)
    assert all(float(r["tumour_share"]) == 0 for r in rows if r["label"] == "benign")
    assert all(0.05 < float(r["tumour_share"]) < 0.3 for r in rows if r["label"] == "tumour")
    for r in rows:
        a, b = (tmp_path / o / "histo-wsi" / r["path"] for o in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()  # same seed, same bytes
        with tifffile.TiffFile(a) as tif:
            assert len(tif.series[0].levels) == 3 and tif.series[0].levels[0].shape[:2] == (256, 256)


def test_medcl_demo_runs_the_extra_demos_by_name(tmp_path, capsys):
    import pytest

    from medcl.demo import run_demo
    from medcl.errors import ConfigError

    assert run_demo("histo-wsi", data_dir=tmp_path / "data", dry_run=True, overrides=[
        "data.synth_patients=6", f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false"]) == 0
    rows = list(csv.DictReader((tmp_path / "data" / "histo-wsi" / "manifest.csv").open()))
    assert len(rows) == 6
    out = capsys.readouterr().out
    assert "│ slides" in out and "dry run: nothing was trained" in out
    with pytest.raises(ConfigError, match="did you mean 'histo-wsi'"):
        run_demo("histo_wsi", data_dir=tmp_path / "data", dry_run=True)
