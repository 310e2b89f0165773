"""Datasets, caching and loaders: real files read by the real readers, tiny sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.data.datasets import build_dataset, build_loader, collate_samples, records_to_items
from medcl.errors import ConfigError, DataError
from medcl.transforms import build_transforms


class CountingReader:
    """Wraps the real ``medcl.readers.read`` and records every path it reads."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path, **kwargs):
        from medcl.readers import read

        self.paths.append(str(path))
        return read(path, **kwargs)


def _with_reader(transform, reader):
    transform.transforms[0].reader = reader  # the LoadSampled at the head of every preset chain
    return transform


def _png_items(folder: Path, n: int) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = folder / f"scan{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(p)
        items.append({"image": str(p), "label": i % 3, "patient": i // 2, "index": i})
    return items


def _nifti_items(folder: Path, n: int) -> list[dict]:
    import nibabel as nib

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = folder / f"vol{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.uniform(-500, 500, (10, 10, 10)).astype(np.float32),
                                 np.diag([-1.0, -1.0, 1.0, 1.0])), str(p))
        items.append({"image": str(p), "label": i % 2, "patient": i, "index": i})
    return items


def _array_items(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"image": rng.uniform(0, 255, (1, 20, 20)).astype(np.float32), "label": i % 2, "patient": i // 2,
             "index": i} for i in range(n)]


def _batches(loader) -> list[dict]:
    return list(loader)


# ------------------------------------------------------------------------------------------------
# items from a manifest


def test_records_to_items_from_a_real_manifest(tmp_path):
    from PIL import Image

    from medcl.data.manifest import load_manifest, parse_labels

    for name in ("a", "b", "c", "m"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "manifest.csv").write_text(
        "patient_id,path,modality,label,mask\n"
        "MRN1,a.png,oct,early,m.png\n"
        "MRN2,b.png,oct,normal,\n"
        "MRN1,c.png,oct,,\n"
    )
    man = load_manifest(tmp_path / "manifest.csv")
    y, classes = parse_labels(man.records, classes=["normal", "early"])
    items = records_to_items(man.records, y)
    assert [it["label"] for it in items] == [1, 0, -1]
    assert [it["index"] for it in items] == [1, 2, 3]
    assert items[0]["patient"] == items[2]["patient"] != items[1]["patient"]
    assert items[0]["mask"] == str(tmp_path / "m.png") and "mask" not in items[1]
    assert all("MRN" not in str(v) for it in items for v in it.values())  # no clear patient ids
    multi = records_to_items(man.records, np.array([[1, 0], [0, 1], [np.nan, np.nan]], np.float32))
    assert multi[0]["label"] == [1.0, 0.0]
    with pytest.raises(DataError, match="labels for"):
        records_to_items(man.records, y[:2])


# ------------------------------------------------------------------------------------------------
# caching


def test_memory_cache_reads_each_file_once(tmp_path):
    items = _png_items(tmp_path, 4)
    reader = CountingReader()
    tr = _with_reader(build_transforms("oct", train=True, views=2, spatial_size=[16, 16]), reader)
    ds = build_dataset(items, tr, cache="memory")
    assert len(reader.paths) == 4  # filled at construction
    loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            assert tuple(batch["views"].shape) == (2, 2, 1, 16, 16)
    assert sorted(reader.paths) == sorted(it["image"] for it in items)


def test_disk_cache_hits_on_second_epoch_and_next_run(tmp_path):
    items = _nifti_items(tmp_path, 3)
    cache = tmp_path / "cache"
    reader = CountingReader()
    tr = _with_reader(build_transforms("ct", train=True, views=2, spatial_size=[8, 8, 8],
                                       spacing=[1.0, 1.0, 1.0]), reader)
    ds = build_dataset(items, tr, cache="disk", cache_dir=cache)
    loader = build_loader(ds, batch_size=3, shuffle=False, num_workers=0, seed=0)
    first = next(iter(loader))
    assert len(reader.paths) == 3 and len(list(cache.glob("*.pt"))) == 3
    loader.set_epoch(1)
    second = next(iter(loader))
    assert len(reader.paths) == 3  # cache hit: the MetaTensor files load (weights_only=False)
    assert not torch.equal(first["views"], second["views"])  # augmentation still runs per epoch
    # a new run over the same cache folder reads nothing either
    reader2 = CountingReader()
    tr2 = _with_reader(build_transforms("ct", train=True, views=2, spatial_size=[8, 8, 8],
                                        spacing=[1.0, 1.0, 1.0]), reader2)
    ds2 = build_dataset(items, tr2, cache="disk", cache_dir=cache)
    again = next(iter(build_loader(ds2, batch_size=3, shuffle=False, num_workers=0, seed=0)))
    assert reader2.paths == []
    torch.testing.assert_close(again["views"], first["views"])


@pytest.mark.parametrize("cache", ["memory", "disk"])
@pytest.mark.parametrize("preset", ["oct", "fundus", "histo"])
def test_caches_hold_the_deterministic_part_not_just_the_file(tmp_path, monkeypatch, preset, cache):
    """2D chains run their deterministic part (scaling, FOV crop, resize) once per item, not once per access:
    over two epochs of training, the fixed-range scaling at the head of that part runs once per item."""
    from monai.transforms import ScaleIntensityRanged
    from PIL import Image

    calls = []
    original = ScaleIntensityRanged.__call__
    monkeypatch.setattr(ScaleIntensityRanged, "__call__",
                        lambda self, d, *a, **k: calls.append(1) or original(self, d, *a, **k))
    items = _png_items(tmp_path, 4)
    if preset != "oct":  # fundus photographs and H&E tiles are RGB
        for it in items:
            Image.open(it["image"]).convert("RGB").save(it["image"])
    ds = build_dataset(items, build_transforms(preset, train=True, views=1, spatial_size=[16, 16]), cache=cache,
                       cache_dir=tmp_path / "c")
    loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        assert [tuple(b["image"].shape) for b in _batches(loader)] == [(2, 1 if preset == "oct" else 3, 16, 16)] * 2
    assert len(calls) == len(items)


def test_a_disk_cache_filled_with_other_settings_is_not_read_back(tmp_path):
    """The fundus evaluation chain resizes to spatial_size in its (cached) deterministic part: a second run with
    another size over the same cache folder gets its own size, not the first run's cached tensors."""
    from PIL import Image

    items = _png_items(tmp_path, 2)
    for it in items:
        Image.open(it["image"]).convert("RGB").save(it["image"])
    for size in (16, 12):
        ev = build_transforms("fundus", train=False, spatial_size=[size, size])
        batch = next(iter(build_loader(build_dataset(items, ev, cache="disk", cache_dir=tmp_path / "c"),
                                       batch_size=2, shuffle=False, num_workers=0, seed=0)))
        assert tuple(batch["image"].shape) == (2, 3, size, size)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 4


def test_another_process_reuses_the_disk_cache(tmp_path):
    """The disk cache's file names include a hash of the cached transforms (so other settings miss it); that hash
    must not change from one process to the next, or a later run would fill the folder again."""
    import subprocess
    import sys

    from PIL import Image

    items = _png_items(tmp_path, 3)
    for it in items:
        Image.open(it["image"]).convert("RGB").save(it["image"])
    code = ("import json, sys; from medcl.data.datasets import build_dataset, build_loader; "
            "from medcl.transforms import build_transforms; "
            "ds = build_dataset(json.loads(sys.argv[1]), build_transforms('fundus', train=True, views=2, "
            "spatial_size=[16, 16]), cache='disk', cache_dir=sys.argv[2]); "
            "[b for b in build_loader(ds, batch_size=3, shuffle=False, num_workers=0, seed=0)]")
    import json

    ds = build_dataset(items, build_transforms("fundus", train=True, views=2, spatial_size=[16, 16]), cache="disk",
                       cache_dir=tmp_path / "c")
    _batches(build_loader(ds, batch_size=3, shuffle=False, num_workers=0, seed=0))
    assert len(list((tmp_path / "c").glob("*.pt"))) == len(items)
    # a second process (its own hash seed and random states) over the same folder adds no file
    subprocess.run([sys.executable, "-c", code, json.dumps(items), str(tmp_path / "c")], check=True,
                   capture_output=True, timeout=300)
    assert len(list((tmp_path / "c").glob("*.pt"))) == len(items)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_training_batches_equal_uncached_ones(tmp_path, cache):
    """Caching the deterministic part changes nothing in what training sees: same views, every epoch."""
    items = _png_items(tmp_path, 5)
    tr = build_transforms("oct", train=True, views=2, spatial_size=[16, 16])
    plain = build_loader(build_dataset(items, tr), batch_size=2, shuffle=True, num_workers=0, seed=3)
    cached = build_loader(build_dataset(items, build_transforms("oct", train=True, views=2, spatial_size=[16, 16]),
                                        cache=cache, cache_dir=tmp_path / "c"),
                          batch_size=2, shuffle=True, num_workers=0, seed=3)
    for epoch in range(2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        a, b = _batches(plain), _batches(cached)
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert torch.equal(x["index"], y["index"])
            torch.testing.assert_close(x["views"], y["views"])


@pytest.mark.parametrize("views", [2, 1])
def test_memory_cache_is_never_changed_by_the_augmentations(tmp_path, views):
    """The augmentations clone what they change (MultiViewd per view, PlainCompose for one view), so the memory
    cache skips MONAI's per-access deep copy; the cached items still come out of two epochs of every OCT
    augmentation bit for bit unchanged."""
    import copy

    items = _png_items(tmp_path, 4)
    tr = build_transforms("oct", train=True, views=views, spatial_size=[16, 16], tilt_deg=15, offset=0.1,
                          illumination=0.3)
    ds = build_dataset(items, tr, cache="memory")
    assert ds.copy_cache is False
    before = copy.deepcopy(ds._cache)
    loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        _batches(loader)
    for old, new in zip(before, ds._cache):
        assert old.keys() == new.keys()
        for k in old:
            if isinstance(old[k], torch.Tensor):
                assert torch.equal(old[k], new[k]), k
            else:
                assert old[k] == new[k], k


def test_eval_chain_is_cached_whole_and_matches_uncached(tmp_path):
    items = _nifti_items(tmp_path, 2)
    ev = build_transforms("ct", train=False, spatial_size=[8, 8, 8], spacing=[1.0, 1.0, 1.0])
    plain = next(iter(build_loader(build_dataset(items, ev), batch_size=2, shuffle=False, num_workers=0, seed=0)))
    cached = next(iter(build_loader(build_dataset(items, ev, cache="disk", cache_dir=tmp_path / "c"),
                                    batch_size=2, shuffle=False, num_workers=0, seed=0)))
    torch.testing.assert_close(plain["image"], cached["image"])
    assert tuple(plain["image"].shape) == (2, 1, 8, 8, 8)


def test_ranks_cache_disjoint_shares(tmp_path):
    items = _png_items(tmp_path, 6)
    seen = []
    for rank in range(2):
        reader = CountingReader()
        tr = _with_reader(build_transforms("oct", train=False, spatial_size=[16, 16]), reader)
        ds = build_dataset(items, tr, cache="memory", rank=rank, world_size=2)
        assert len(ds) == 3 and ds.medcl_world_size == 2
        seen.append(set(reader.paths))
        assert len(reader.paths) == 3
        # the loader does not split a rank's share a second time
        loader = build_loader(ds, batch_size=3, shuffle=True, num_workers=0, seed=0, distributed=True,
                              rank=rank, world_size=2)
        assert sum(len(b["index"]) for b in loader) == 3
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {it["image"] for it in items}


# ------------------------------------------------------------------------------------------------
# seeding


def _oct_loader(seed, workers, epoch=0, n=6):
    tr = build_transforms("oct", train=True, views=2, spatial_size=[16, 16])
    ds = build_dataset(_array_items(n), tr)
    return build_loader(ds, batch_size=2, shuffle=True, num_workers=workers, seed=seed, epoch=epoch)


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = (_batches(_oct_loader(s, 0)) for s in (3, 3, 4))
    for x, y in zip(a, b):
        assert torch.equal(x["views"], y["views"]) and torch.equal(x["index"], y["index"])
    assert not all(torch.equal(x["views"], z["views"]) for x, z in zip(a, c))


def test_zero_and_two_workers_give_the_same_batches():
    zero = _batches(_oct_loader(7, 0))
    two = _batches(_oct_loader(7, 2))
    assert len(zero) == len(two) == 3
    for x, y in zip(zero, two):
        assert torch.equal(x["index"], y["index"])
        assert torch.equal(x["views"], y["views"])


class _ThreadsSeen(torch.utils.data.Dataset):
    """Records torch's intra-op thread count at each item; item ``fail`` raises."""

    def __init__(self, n, fail=None):
        self.n, self.fail, self.seen = n, fail, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.seen.append(torch.get_num_threads())
        if i == self.fail:
            raise ValueError("bad item")
        return {"image": torch.full((1, 2, 2), float(i))}


def test_a_main_process_loader_fetches_on_one_thread_and_gives_the_step_its_threads_back():
    """Without workers the fetch runs on one intra-op thread, as in a worker; the loop body keeps its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ds = _ThreadsSeen(6)
        loader = build_loader(ds, batch_size=2, shuffle=False, num_workers=0, seed=0)
        assert len(iter(loader)) == 3
        got = []
        for batch in loader:
            assert torch.get_num_threads() == 2  # the step runs with the caller's threads
            got.append(batch["image"][:, 0, 0, 0].tolist())
        assert ds.seen == [1] * 6
        assert got == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
        bad = build_loader(_ThreadsSeen(4, fail=1), batch_size=2, shuffle=False, num_workers=0, seed=0)
        with pytest.raises(ValueError, match="bad item"):
            next(iter(bad))
        assert torch.get_num_threads() == 2  # restored after a failed fetch too
    finally:
        torch.set_num_threads(before)


def test_persistent_workers_follow_set_epoch_like_fresh_loaders():
    """One loader whose 2 workers live across epochs gives each epoch's batches of a fresh 0-worker loader."""
    tr = build_transforms("oct", train=True, views=2, spatial_size=[16, 16])
    kept = build_loader(build_dataset(_array_items(6), tr), batch_size=2, shuffle=True, num_workers=2, seed=5,
                        persistent_workers=True)
    assert kept.persistent_workers
    for epoch in (0, 1, 2):
        kept.set_epoch(epoch)
        got, ref = _batches(kept), _batches(_oct_loader(5, 0, epoch=epoch))
        assert len(got) == len(ref) == 3
        for x, y in zip(got, ref):
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["views"], y["views"])
    e0, e1 = (_batches(_oct_loader(5, 0, epoch=e)) for e in (0, 1))
    assert not all(torch.equal(x["views"], y["views"]) for x, y in zip(e0, e1))  # epochs do differ


def test_epoch_changes_order_and_augmentation_reproducibly():
    loader = _oct_loader(1, 0)
    e0 = _batches(loader)
    loader.set_epoch(1)
    e1 = _batches(loader)
    fresh1 = _batches(_oct_loader(1, 0, epoch=1))
    assert not all(torch.equal(x["views"], y["views"]) for x, y in zip(e0, e1))
    for x, y in zip(e1, fresh1):
        assert torch.equal(x["views"], y["views"])


def test_distributed_sampler_splits_by_rank_without_process_group():
    tr = build_transforms("oct", train=False, spatial_size=[16, 16])
    ds = build_dataset(_array_items(8), tr)
    idx = []
    for rank in range(2):
        loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=0, distributed=True,
                              rank=rank, world_size=2)
        idx.append({int(i) for b in loader for i in b["index"]})
    assert idx[0].isdisjoint(idx[1]) and idx[0] | idx[1] == set(range(8))


# ------------------------------------------------------------------------------------------------
# collate and errors


def test_collate_stacks_views_and_types_labels():
    batch = collate_samples([
        {"views": torch.zeros(2, 1, 4, 4), "label": [1.0, 0.0], "patient": 3, "index": 0, "image_meta_dict": {"a": 1}},
        {"views": torch.ones(2, 1, 4, 4), "label": [0.0, 1.0], "patient": 4, "index": 1, "image_meta_dict": {"a": 2}},
    ])
    assert tuple(batch["views"].shape) == (2, 2, 1, 4, 4)
    assert batch["label"].dtype == torch.float32 and tuple(batch["label"].shape) == (2, 2)
    assert batch["patient"].dtype == torch.int64 and batch["patient"].tolist() == [3, 4]
    assert batch["image_meta_dict"] == [{"a": 1}, {"a": 2}]
    with pytest.raises(DataError, match="different shapes"):
        collate_samples([{"image": torch.zeros(1, 4, 4)}, {"image": torch.zeros(1, 5, 4)}])


def test_dataset_and_loader_errors():
    tr = build_transforms("oct", train=False, spatial_size=[16, 16])
    with pytest.raises(ConfigError, match="did you mean 'memory'"):
        build_dataset([], tr, cache="memroy")
    with pytest.raises(ConfigError, match="cache_dir"):
        build_dataset(_array_items(2), tr, cache="disk")
    with pytest.raises(ConfigError, match="rank 2"):
        build_dataset(_array_items(2), tr, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        build_loader(build_dataset(_array_items(2), tr), batch_size=0, shuffle=False, num_workers=0, seed=0)


def test_missing_file_surfaces_as_reader_error(tmp_path):
    from medcl.errors import ReaderError

    tr = build_transforms("oct", train=False, spatial_size=[16, 16])
    loader = build_loader(build_dataset([{"image": str(tmp_path / "nope.png"), "label": 0, "patient": 0,
                                          "index": 1}], tr), batch_size=1, shuffle=False, num_workers=0, seed=0)
    with pytest.raises(ReaderError, match="nope.png"):
        next(iter(loader))
