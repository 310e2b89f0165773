"""Segmentation runs put to work: the segmenter is an MLflow model, and `medcl predict --task segment` writes one mask
per input on the input's own grid (NIfTI, the series' affine) plus a DICOM SEG (highdicom) for DICOM series.

The geometry is checked independently of medcl's readers and transforms: the logged network is replaced by a
threshold of its input, so the right mask is known from the raw files — pydicom's Hounsfield units, nibabel for
the NIfTI, highdicom for reading the SEG back.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HU = 0.0  # threshold of the stand-in network, inside the CT preset's window (about a quarter of the voxels)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """The CT demo pipeline, segment stage only, two steps (a scratch U-Net; its masks are meaningless)."""
    from medcl.data.synth import synthesize
    from medcl.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("seg-run")
    synthesize(root / "data", modalities=["ct"], patients=8, seed=0)
    manifest = root / "data" / "ct" / "manifest.csv"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_pipeline(REPO / "pipelines" / "demo" / "ct.yaml", [
        f"data.manifest={manifest}", f"runtime.output_dir={root / 'runs'}", "runtime.progress=false",
        f"tracking.uri={uri}", "stages=[segment]", "segment.max_steps=2", "segment.epochs=1",
        "segment.label_fractions=[1.0]", "segment.n_boot=10", "segment.batch_size=2"])
    ctx = run_pipeline(cfg)
    return {"ctx": ctx, "uri": uri, "manifest": manifest}


class Threshold(torch.nn.Module):
    """Two-class logits ``(x - t, t - x)`` reversed so that class 1 is ``x > t``."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(float(t)), requires_grad=False)

    def forward(self, x):
        return torch.cat([self.t - x[:, :1], x[:, :1] - self.t], dim=1)


def _hu_volume(series: Path):
    """``(HU per slice in file order, the datasets)`` read with pydicom alone."""
    import pydicom

    ds = [pydicom.dcmread(f) for f in sorted(series.glob("*.dcm"))]
    return [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds], ds


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_predict_writes_masks_on_the_series_grid_and_a_dicom_seg(seg_run, tmp_path, monkeypatch):
    import highdicom as hd
    import mlflow
    import nibabel as nib

    from medcl.predict import model_kind, predict_masks
    from medcl.tasks.export import Segmenter

    run_id, uri = seg_run["ctx"].parent_run_id, seg_run["uri"]
    assert model_kind(run_id, uri) == "segment"  # no classifier in this run: auto segments
    seg_uri = seg_run["ctx"].outputs["segment"]["segmenter_uri"]
    mlflow.set_tracking_uri(uri)
    meta = mlflow.models.get_model_info(seg_uri).metadata
    assert meta["kind"] == "segmenter" and meta["class_names"][0] in ("0", "background")
    # the stand-in network: class 1 where the CT window's scaled intensity is above HU
    p = {"window_level": 40.0, "window_width": 400.0, **meta["preprocessing"]}
    lo = p["window_level"] - p["window_width"] / 2
    t = (HU - lo) / p["window_width"]
    real_init = Segmenter.__init__

    def init(self, network, m):
        real_init(self, Threshold(t), m)

    monkeypatch.setattr(Segmenter, "__init__", init)
    series = sorted(p for p in (seg_run["manifest"].parent).rglob("*") if p.is_dir() and list(p.glob("*.dcm")))[:2]
    res = predict_masks(run_id, series[0].parent, tmp_path / "seg.csv", tracking_uri=uri, progress=False)
    with open(res.samples, newline="") as fh:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(fh)}
    for s in series:
        row = rows[s.name]
        assert row["status"] == "ok", row
        hu, ds = _hu_volume(s)
        # NIfTI: the input's grid; each DICOM slice's pixels, mapped through the NIfTI affine, carry HU > t
        img = nib.load(tmp_path / row["mask"])
        mask = np.asarray(img.dataobj)
        inv = np.linalg.inv(img.affine)
        got, want, world = [], [], []
        for d, h in zip(ds, hu):
            ipp, iop = np.asarray(d.ImagePositionPatient, float), np.asarray(d.ImageOrientationPatient, float)
            dr, dc = (float(v) for v in d.PixelSpacing)
            r, c = np.mgrid[0:d.Rows, 0:d.Columns]
            ras = (ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]).reshape(-1, 3) * [-1, -1, 1]
            ijk = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
            assert (ijk >= 0).all() and (ijk < mask.shape).all()
            got.append(mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == 1)
            want.append(h.reshape(-1) > HU)
            world.append(ras)
        got, want, world = np.concatenate(got), np.concatenate(want), np.concatenate(world)
        assert want.any() and _dice(got, want) > 0.9  # resampled to the preset's spacing and back: edges differ
        # and in the right place: the centroids (patient coordinates, mm) within a third of a voxel
        assert np.linalg.norm(world[got].mean(0) - world[want].mean(0)) < 4.0
        ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
        assert float(row[f"volume_ml_{meta['class_names'][1]}"]) == pytest.approx((mask == 1).sum() * ml)
        # DICOM SEG: read back with highdicom; its frames reference the series' instances and match HU > t
        segd = hd.seg.segread(tmp_path / row["dicom_seg"])
        uids = [d.SOPInstanceUID for d in ds]
        assert {u for _, _, u in segd.get_source_image_uids()} == set(uids)
        vol = segd.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1],
                                                 combine_segments=True)
        assert _dice(vol.reshape(-1) > 0, np.concatenate([h.reshape(-1) > HU for h in hu])) > 0.9
        assert segd.PatientID == ds[0].PatientID and segd.StudyInstanceUID == ds[0].StudyInstanceUID


def test_the_segmenter_pyfunc_and_bad_inputs(seg_run, tmp_path):
    """The real (tiny) network through MLflow's pyfunc gives the label map medcl's Segmenter gives; a file of the
    wrong kind is a row with its error and the others are still segmented."""
    import mlflow

    from medcl.predict import predict_masks
    from medcl.tracking.pyfunc import load_segmenter

    uri = seg_run["uri"]
    seg_uri = seg_run["ctx"].outputs["segment"]["segmenter_uri"]
    mlflow.set_tracking_uri(uri)
    series = sorted(p for p in seg_run["manifest"].parent.rglob("*") if p.is_dir() and list(p.glob("*.dcm")))[0]
    (tmp_path / "model").mkdir()  # MLflow would leave its copy of the model in a temporary folder
    df = mlflow.pyfunc.load_model(seg_uri, dst_path=str(tmp_path / "model")).predict([str(series)])
    seg = load_segmenter(seg_uri, uri)
    x, affine = seg.prepare_whole(str(series))
    np.testing.assert_array_equal(np.asarray(df["labels"][0]), seg.labels(x))
    np.testing.assert_allclose(np.asarray(df["affine"][0]), affine)
    # a manifest with one unreadable series: one error row, the other segmented
    import shutil

    good = tmp_path / "a"
    shutil.copytree(series, good)
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"not a dicom file")
    res = predict_masks(seg_uri, tmp_path, tmp_path / "out" / "m.csv", tracking_uri=uri, progress=False,
                        dicom_seg=False)
    assert (res.n_ok, res.n_failed) == (1, 1)


def test_loading_the_segmenter_leaves_no_copy_behind(seg_run, tmp_path, monkeypatch):
    """MLflow copies a ``runs:/`` model into a new temporary folder and never removes it (shown first, so the
    check can fail: tens of MB per load on a hospital server); medcl loads from a copy it removes."""
    import tempfile

    import mlflow

    from medcl.tracking.pyfunc import load_segmenter, model_metadata

    seg_uri = seg_run["ctx"].outputs["segment"]["segmenter_uri"]
    mlflow.set_tracking_uri(seg_run["uri"])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    mlflow.pyfunc.load_model(seg_uri)
    assert list(scratch.rglob("segmenter.pt"))
    for p in scratch.iterdir():
        shutil.rmtree(p)
    seg = load_segmenter(seg_uri, seg_run["uri"])
    assert model_metadata(seg_uri, seg_run["uri"])["class_names"] == list(seg.class_names)
    assert list(scratch.iterdir()) == []


def test_reading_a_models_metadata_fetches_the_mlmodel_file_alone(seg_run, tmp_path, monkeypatch):
    """``medcl predict`` reads the model's metadata before it loads the model: a full copy there would fetch the
    weights twice from a remote server. What lies in the temporary folder when the MLmodel file is parsed is all
    that was fetched."""
    import tempfile

    import mlflow

    from medcl.tracking.pyfunc import model_metadata

    seg_uri = seg_run["ctx"].outputs["segment"]["segmenter_uri"]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fetched: list[list[str]] = []
    real = mlflow.models.Model.load

    def spy(path, *a, **k):
        fetched.append(sorted(p.name for p in scratch.rglob("*") if p.is_file()))
        return real(path, *a, **k)

    monkeypatch.setattr(mlflow.models.Model, "load", spy)
    meta = model_metadata(seg_uri, seg_run["uri"])
    assert meta["kind"] == "segmenter" and fetched == [["MLmodel"]]
    assert list(scratch.iterdir()) == []


def test_a_run_without_a_segment_stage_says_so(trained_oct):
    from medcl.errors import TrackingError
    from medcl.predict import model_kind

    run_id, uri = trained_oct["ctx"].parent_run_id, trained_oct["uri"]
    assert model_kind(run_id, uri) == "classify"
    with pytest.raises(TrackingError, match="no segmentation model"):
        model_kind(run_id, uri, "segment")


def test_embed_on_a_segmentation_run_gives_features_and_masks(seg_run, tmp_path):
    """`medcl embed` on a run with only a segmenter: one row per input with the segmenter encoder's pooled features
    (as many as the encoder's feature size) and the path of the input's mask on its own grid."""
    import nibabel as nib
    import pandas as pd

    from medcl.predict import embed
    from medcl.tracking.pyfunc import load_segmenter

    run_id, uri = seg_run["ctx"].parent_run_id, seg_run["uri"]
    series = sorted(p for p in seg_run["manifest"].parent.rglob("*") if p.is_dir() and list(p.glob("*.dcm")))[:3]
    res = embed(run_id, series[0].parent, tmp_path / "f.parquet", tracking_uri=uri, progress=False)
    df = pd.read_parquet(res.samples)
    seg = load_segmenter(seg_run["ctx"].outputs["segment"]["segmenter_uri"], uri)
    dim = seg.model.encoder.feature_dim
    assert [c for c in df.columns if c.startswith("f") and c[1:].isdigit()] == [f"f{j}" for j in range(dim)]
    assert (df["status"] == "ok").all() and len(df) == len(list(series[0].parent.iterdir()))
    for _, row in df.head(2).iterrows():
        img = nib.load(tmp_path / row["mask"])
        import pydicom

        first = pydicom.dcmread(next(Path(row["source"]).glob("*.dcm")))
        assert img.shape[:2] == (first.Columns, first.Rows)  # the series' own in-plane grid (X = columns)
