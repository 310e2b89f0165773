"""The plain reference loops (``benchmarks/reference/``) run on a medcl manifest with medcl's patient split.

Mechanics only (no learning-quality number is asserted): they read the manifest and the ``split.csv`` a medcl
run writes, train for the given number of steps, and report a test AUROC and images/s; they import no medcl.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "benchmarks" / "reference"


def test_reference_loops_import_no_medcl():
    for f in REF.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+medcl", f.read_text(), flags=re.M), f.name


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Tiny OCT, ECG, CT and MRI demo sets and the split medcl's data preparation writes for them."""
    from medcl.config import load_config
    from medcl.data.prepare import prepare_data
    from medcl.data.splits import save_split
    from medcl.data.synth import synthesize

    root = tmp_path_factory.mktemp("reference")
    synthesize(root, modalities=["oct", "ecg", "ct", "mri"], patients=30, seed=1)
    out = {}
    for mod, pipe, column in (("oct", "oct", "label"), ("ecg", "ecg", "label"), ("ct", "ct", "label"),
                              ("mri", "mri", "label")):
        cfg = load_config(ROOT / "pipelines" / "demo" / f"{pipe}.yaml",
                          [f"data.manifest={root / mod / 'manifest.csv'}", f"data.label_column={column}"])
        data = prepare_data(cfg)
        save_split(root / f"{mod}-split.csv", data.records, data.assignment)
        out[mod] = (root / mod / "manifest.csv", root / f"{mod}-split.csv", column, ",".join(data.classes))
    return out


@pytest.mark.parametrize("script", ["supervised", "simclr"])
@pytest.mark.parametrize("modality", ["oct", "ecg", "ct", "mri"])
def test_reference_loop_runs_on_a_medcl_split(split, script, modality, tmp_path):
    manifest, split_csv, column, classes = split[modality]
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(REF / f"{script}.py"), "--manifest", str(manifest), "--split", str(split_csv),
           "--modality", modality, "--label-column", column, "--classes", classes, "--steps", "3", "--batch", "8",
           "--out", str(out)]
    if modality == "oct":
        cmd += ["--output-stride", "16"]
    if modality in ("ct", "mri"):
        cmd += ["--size", "32", "--depth", "16" if modality == "ct" else "24"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["reference"] == script and res["steps"] == 3 and res["images_per_s"] > 0
    assert res["arch"] == ("cnn3d" if modality in ("ct", "mri") else "resnet18")
    score = res["test_auroc" if script == "supervised" else "probe_auroc"]
    assert 0.0 <= score <= 1.0
    assert res["n_train"] > 0 and res["n_test"] > 0
    if script == "simclr":  # the same network untrained, probed the same way
        assert 0.0 <= res["random_probe_auroc"] <= 1.0
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == res


def test_reference_macro_auroc_is_scikit_learns():
    """The references' score is one-vs-rest macro AUROC (multi-class) / mean per-label AUROC (multi-label)."""
    import numpy as np

    sys.path.insert(0, str(REF))
    try:
        from common import macro_auroc
    finally:
        sys.path.remove(str(REF))
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.3, .3, .4], [.5, .4, .1], [.4, .3, .3]])
    # by hand, the fraction of (positive, negative) pairs ranked right, per class one-vs-rest:
    # class 0: positives .8, .4 vs .2, .1, .3, .5 -> 7/8; class 1: .7, .4 vs .1, .2, .3, .3 -> 8/8;
    # class 2: .7, .4 vs .1, .1, .1, .3 -> 8/8
    assert macro_auroc(y, p) == pytest.approx((7 / 8 + 1 + 1) / 3)
    ym = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    pm = np.array([[.9, .2], [.1, .8], [.3, .1], [.4, .3]])
    # label 0: positives .9,.3 vs .1,.4 -> pairs (.9>.1,.9>.4,.3>.1,.3<.4) = 3/4; label 1: .8,.1 vs .2,.3 -> 2/4
    assert macro_auroc(ym, pm) == pytest.approx((0.75 + 0.5) / 2)


def test_a_ct_series_is_read_in_slice_order_on_its_masks_grid(split):
    """The synthetic CT writes its slices under random-looking names (site-b numbers them from the top down) and its
    lesion mask as NIfTI ``(column, row, slice sorted along the normal)``. Read on the series' own grid, the volume
    must put the hypodense lesion (0-25 HU, liver 50-62 HU, other tissue 35-45 HU) under the mask: any wrong slice
    order or transposition puts the mask on other tissue."""
    import csv

    import nibabel
    import numpy as np

    sys.path.insert(0, str(REF))
    try:
        from common import read_volume
    finally:
        sys.path.remove(str(REF))
    manifest = split["ct"][0]
    rows = [r for r in csv.DictReader(manifest.open()) if r["label"] == "lesion"][:4]
    assert rows
    for r in rows:
        mask = np.asarray(nibabel.load(str(manifest.parent / r["mask"])).dataobj).transpose(2, 1, 0) > 0
        v = read_volume(manifest.parent / r["path"], "ct", mask.shape[1], mask.shape[0])[0]
        assert v.shape == mask.shape
        body = v > 0.3  # soft tissue in the window (air is 0)
        lesion_hu = v[mask].mean() * 400 - 160
        tissue_hu = v[body & ~mask].mean() * 400 - 160
        assert lesion_hu < 30 < tissue_hu, (r["path"], lesion_hu, tissue_hu)
