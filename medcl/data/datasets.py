"""Datasets and loaders: manifest records → items → (cached) MONAI datasets → seeded DataLoaders.

* :func:`records_to_items` turns manifest :class:`~medcl.data.manifest.Record`s into MONAI-style
  item dicts ``{"image": path, "mask": path?, "label": ..., "patient": int, "index": int}``.
* :func:`build_dataset` picks ``monai.data.Dataset`` / ``CacheDataset`` (memory) /
  ``PersistentDataset`` (disk); the cache holds the deterministic head of the transform chain,
  random augmentations run after it on every access. Under DDP each rank caches only its share
  (``monai.data.partition_dataset``) instead of the whole set ``world_size`` times.
* :func:`build_loader` makes a ``DataLoader`` whose augmentations are reproducible: the
  transform chain is re-seeded per sample from ``(seed, epoch, rank share, index)``
  (:mod:`medcl.transforms.seeding`), so batches are identical with 0 or 2 workers; a
  ``worker_init_fn`` seeds the global RNGs of each worker from ``(seed, epoch, worker, rank)``.

This module never touches the process group: rank and world size are arguments
(:mod:`medcl.distributed` is the only place that talks to the process group).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from medcl.data.sampling import PatientBatchSampler
from medcl.errors import ConfigError, DataError
from medcl.lookup import did_you_mean
from medcl.transforms.batch import Draw
from medcl.transforms.seeding import derive_seed, set_transform_seed

log = logging.getLogger(__name__)

CACHE_MODES: tuple[str, ...] = ("none", "memory", "disk")


# ------------------------------------------------------------------------------------------------
# items


def records_to_items(
    records: Sequence[Any],
    labels: Sequence[Any] | np.ndarray | None = None,
    patient_index: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Manifest records → MONAI item dicts.

    Args:
        records: :class:`~medcl.data.manifest.Record`s (``.path``, ``.mask``, ``.patient``, ``.row``).
        labels: per-record labels aligned with ``records``, e.g. ``y`` from
            :func:`medcl.data.manifest.parse_labels`: ``(N,)`` ints (``-1`` unlabelled) or ``(N, K)``
            multi-hot floats (NaN rows unlabelled). ``None``: every item gets ``-1``.
        patient_index: pseudonymised patient id → int; ``None`` numbers the sorted unique patients
            of ``records`` (pass one mapping for train/val/test so indices agree across splits).

    Returns:
        ``[{"image": str, "mask": str (only if the record has one), "label": int | list[float],
        "patient": int, "index": int (the manifest row)}]``.

    Raises:
        DataError: ``labels`` has a different length, or a patient is missing from ``patient_index``.
    """
    if labels is not None and len(labels) != len(records):
        raise DataError(f"{len(labels)} labels for {len(records)} records", where="records_to_items",
                        fix="pass the labels parsed from the same records, in the same order")
    if patient_index is None:
        patient_index = {p: i for i, p in enumerate(sorted({r.patient for r in records}))}
    items: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        if r.patient not in patient_index:
            raise DataError(f"patient of manifest row {r.row} is not in patient_index", where=f"row {r.row}",
                            fix="build patient_index from all records (every split) of the manifest")
        item: dict[str, Any] = {"image": str(r.path), "patient": int(patient_index[r.patient]), "index": int(r.row)}
        if getattr(r, "mask", None) is not None:
            item["mask"] = str(r.mask)
        if labels is None:
            item["label"] = -1
        else:
            lab = np.asarray(labels[i])
            item["label"] = [float(v) for v in lab.ravel()] if lab.ndim else int(lab)
        items.append(item)
    return items


# ------------------------------------------------------------------------------------------------
# datasets


def build_dataset(
    items: Sequence[Mapping[str, Any]],
    transform: Callable | None,
    *,
    cache: str = "none",
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
):
    """A MONAI dataset over ``items``, caching the deterministic head of ``transform``.

    Args:
        items: item dicts (:func:`records_to_items`).
        transform: a ``monai.transforms.Compose`` (caching needs one: MONAI caches up to the
            first random transform of its *top-level* list, as built by
            :func:`medcl.transforms.build_transforms`).
        cache: ``"none"`` (``Dataset``), ``"memory"`` (``CacheDataset``: filled now, in threads) or
            ``"disk"`` (``PersistentDataset``: one ``.pt`` file per item in ``cache_dir``, filled on
            first access, reused by later runs with the same deterministic transforms and settings).
        cache_dir: folder of the disk cache (required for ``"disk"``).
        cache_rate: fraction of items held in the memory cache (the rest are computed on access).
        num_workers: threads filling the memory cache.
        rank: this process's rank (``0 <= rank < world_size``).
        world_size: the number of processes. With caching and
            ``world_size > 1`` the dataset holds only this rank's share (equal sizes, interleaved:
            rank ``r`` gets items ``r, r + W, ...``, padded by repetition); :func:`build_loader`
            then shuffles that share locally.

    Returns:
        ``monai.data.Dataset``, ``CacheDataset`` or ``PersistentDataset`` with attributes
        ``medcl_rank`` and ``medcl_world_size`` (``1`` when not partitioned).

    Raises:
        ConfigError: unknown cache mode (did-you-mean), missing ``cache_dir``, bad rank/world size.
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset, partition_dataset
    from monai.data.utils import pickle_hashing

    if cache not in CACHE_MODES:
        hint = did_you_mean(cache, CACHE_MODES, cutoff=0.5, paren=True)
        raise ConfigError(f"unknown cache mode {cache!r}{hint}",
                          where="data.cache", fix=f"use one of {', '.join(CACHE_MODES)}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in a world of size {world_size}", where="runtime",
                          fix="pass the rank and world size from medcl.distributed")
    data = [dict(it) for it in items]
    part_world = 1
    if cache != "none" and world_size > 1:
        if len(data) < world_size:
            raise DataError(f"{len(data)} items cannot be shared among {world_size} ranks", where="data",
                            fix="use fewer processes or more data")
        data = partition_dataset(data, num_partitions=world_size, shuffle=False, even_divisible=True)[rank]
        part_world = world_size
    if cache == "none":
        ds = Dataset(data, transform)
    elif cache == "memory":
        ds = CacheDataset(data, transform, cache_rate=cache_rate, num_workers=max(int(num_workers), 1),
                          progress=False, copy_cache=not _views_copy_their_input(transform))
    else:
        if cache_dir is None:
            raise ConfigError("cache 'disk' needs a cache_dir", where="data.cache_dir",
                              fix="set data.cache_dir to a folder on fast local disk")
        # track_meta: keep MetaTensors (affine) in the cached files; weights_only=False: the files hold
        # dicts and MetaTensors, which torch.load(weights_only=True) rejects — MONAI then deletes and
        # silently recomputes every item on every access. The cache folder is written by medcl itself.
        # hash_transform: the cached part's transforms and their settings go into each file's key, so a folder
        # filled with other settings (another spatial_size, say) is not read back as if it were this one's
        ds = PersistentDataset(data, transform, cache_dir=Path(cache_dir), track_meta=True, weights_only=False,
                               hash_transform=pickle_hashing)
    ds.medcl_rank = rank if part_world > 1 else 0
    ds.medcl_world_size = part_world
    return ds


def _views_copy_their_input(transform: Any) -> bool:
    """Whether the transforms after the cached head leave the cached items untouched.

    True when the first random transform after the cached head is a
    :class:`~medcl.transforms.views.MultiViewd` or a copying
    :class:`~medcl.transforms.compose.PlainCompose`, which clone the arrays they augment and never
    change their input dict: then the memory cache need not deep-copy every item on every access
    (MONAI's ``copy_cache``), a quarter of the input pipeline's time on 64×64 images.
    """
    from monai.transforms import Randomizable

    from medcl.transforms.compose import PlainCompose  # lazy: monai
    from medcl.transforms.views import MultiViewd  # lazy: monai

    for t in getattr(transform, "transforms", None) or []:
        if isinstance(t, Randomizable):
            return isinstance(t, MultiViewd) or (isinstance(t, PlainCompose) and t.copy_inputs)
    return False


# ------------------------------------------------------------------------------------------------
# loaders


class SeededDataset(TorchDataset):
    """Wraps a dataset so sample ``i`` of epoch ``e`` is augmented with seed ``f(seed, e, share, i)``.

    The epoch lives in a shared-memory tensor, so :meth:`set_epoch` reaches worker processes
    too (including persistent workers).

    Args:
        dataset: a MONAI dataset (its ``.transform`` is re-seeded before each item).
        seed: base seed.
        epoch: starting epoch.
        share: partition id mixed into the seed (the rank when the dataset is a rank's share, so two
            ranks' item ``i`` — different samples — do not get the same augmentation).
    """

    def __init__(self, dataset: Any, seed: int, epoch: int = 0, share: int = 0) -> None:
        """Wrap ``dataset``; the epoch counter is put in shared memory."""
        self.dataset, self.seed, self.share = dataset, int(seed), int(share)
        self._epoch = torch.tensor([int(epoch)], dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The current epoch (as seen by this process, worker or not)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: later items get that epoch's augmentation seeds, in every worker."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        """Number of items of the wrapped dataset."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        """Item ``index`` of the wrapped dataset, its transform seeded from (seed, epoch, share, index).

        An index ``i + r * len(self)`` with ``r >= 1`` is the ``r``-th repeat of item ``i`` in this epoch (as
        :class:`~medcl.data.sampling.PatientBatchSampler` yields them): item ``i`` with a seed of its own, so a
        repeated sample is augmented differently each time.
        """
        repeat, i = divmod(int(index), len(self.dataset))
        key = (self.seed, self.epoch, self.share, i) + ((repeat,) if repeat else ())
        set_transform_seed(getattr(self.dataset, "transform", None), derive_seed(*key))
        return self.dataset[i]


def _seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch global RNGs of a worker from (seed, epoch, worker id, rank)."""
    info = torch.utils.data.get_worker_info()
    ds = info.dataset if info is not None else None
    epoch = ds.epoch if isinstance(ds, SeededDataset) else 0
    s = derive_seed(seed, epoch, worker_id, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    if isinstance(ds, SeededDataset):
        set_transform_seed(getattr(ds.dataset, "transform", None), s)


def _to_plain(x: Any) -> Any:
    as_tensor = getattr(x, "as_tensor", None)  # MetaTensor → Tensor (drops per-item metadata)
    return as_tensor() if callable(as_tensor) else x


def collate_samples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate item dicts into a batch dict.

    Tensors and arrays are stacked (``"views"`` ``(V, C, *spatial)`` → ``(B, V, C, *spatial)``),
    ints become ``int64`` and floats ``float32`` tensors, ``"label"`` lists (multi-label) a ``(B, K)``
    float tensor; anything else (metadata dicts, paths) stays a list of length ``B``.

    Raises:
        DataError: items with different keys, or tensors of different shapes under one key.
    """
    if not batch:
        return {}
    keys = list(batch[0])
    if any(set(b) != set(keys) for b in batch):
        raise DataError("items in one batch have different keys", where="collate",
                        fix="make every item carry the same keys (e.g. all or none with 'mask')")
    out: dict[str, Any] = {}
    for k in keys:
        vals = [_to_plain(b[k]) for b in batch]
        first = vals[0]
        if isinstance(first, torch.Tensor | np.ndarray):
            ts = [torch.as_tensor(v) for v in vals]
            shapes = {tuple(t.shape) for t in ts}
            if len(shapes) > 1:
                raise DataError(f"{k!r} has different shapes in one batch: {sorted(shapes)[:4]}", where="collate",
                                fix="crop/pad every sample to one spatial_size in the transforms")
            out[k] = torch.stack(ts)
        elif isinstance(first, bool):
            out[k] = list(vals)
        elif all(isinstance(v, int | np.integer) for v in vals):
            out[k] = torch.as_tensor(vals, dtype=torch.int64)
        elif all(isinstance(v, int | float | np.number) for v in vals) or all(isinstance(v, list | tuple) for v in vals) and all(
                isinstance(x, int | float | np.number) for v in vals for x in v) and len({len(v) for v in vals}) == 1:
            out[k] = torch.as_tensor(vals, dtype=torch.float32)
        else:
            out[k] = list(vals)
    return out


class _OneThreadFetch:
    """Iterator over a main-process loader's batches that fetches each one with torch's intra-op threads set to 1.

    With ``num_workers: 0`` the samples are read and augmented in the training process, op by op on small tensors
    (a 64×64 view: a ``grid_sample``, a few elementwise ops). Spread over the training step's threads, each such op
    waits for the other threads to wake; while another process kept a core busy (profiled with ``cProfile``
    beside ``make test``), that made the OCT demo's per-view augmentation several times slower than on one thread.
    On an idle machine the two were alike and the loop's rate did not change. Loader workers already run on one
    thread each (PyTorch sets that in every worker), so the fetch now runs the same way in either place; the step
    gets its threads back for the model.
    """

    def __init__(self, it: Any) -> None:
        """Wrap the DataLoader iterator ``it``."""
        self.it = it

    def __iter__(self) -> _OneThreadFetch:
        """This iterator."""
        return self

    def __len__(self) -> int:
        """Batches left, as the wrapped iterator counts them."""
        return len(self.it)

    def __next__(self) -> Any:
        """The next batch, fetched on one thread; the caller's thread count is restored afterwards."""
        threads = torch.get_num_threads()
        if threads == 1:
            return next(self.it)
        torch.set_num_threads(1)
        try:
            return next(self.it)
        finally:
            torch.set_num_threads(threads)


class MedclLoader(DataLoader):
    """``DataLoader`` with :meth:`set_epoch` (sampler order and augmentation seeds both follow it).

    Without workers the batches are fetched (read, augmented, collated) on one intra-op thread, as a worker
    process fetches them (:class:`_OneThreadFetch`).
    """

    def __iter__(self) -> Any:
        """The batches; fetched on one thread when there are no worker processes."""
        it = super().__iter__()
        return it if self.num_workers > 0 else _OneThreadFetch(it)

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating epoch ``epoch`` (also works with persistent workers)."""
        for s in (self.sampler, self.batch_sampler):
            if hasattr(s, "set_epoch"):
                s.set_epoch(int(epoch))
        if isinstance(self.dataset, SeededDataset):
            self.dataset.set_epoch(int(epoch))


class BatchAugmentedLoader:
    """A training loader whose batches are augmented as wholes on ``device`` (``transforms.augment_on: batch``).

    Each batch is moved to ``device`` and its ``"views"`` / ``"image"`` (and ``"mask"``) go through ``augment``
    (:class:`medcl.transforms.batch.BatchAugment`). Every image of the batch draws from its own stream, seeded by
    ``(seed, epoch, manifest row, occurrence, view)`` (occurrence counts repeated crops of one row in a batch): a
    sample's views depend on the seed, the epoch and the sample only, as with ``augment_on: sample``. So two
    processes under DDP give the views one process gives, and a run resumed mid-epoch or on another number of
    processes sees the views of an uninterrupted one. A batch without ``"index"`` (a dataset not built by
    :func:`build_dataset`) falls back to ``(seed, epoch, rank, batch index, row)``.

    Args:
        loader: the :class:`MedclLoader` of un-augmented samples (the preset's ``batch_sample_part`` only).
        augment: ``augment(batch, draw) -> batch``.
        device: where the batch is augmented (and then stays).
        seed: base seed.
        rank: this process's rank (only for the fallback above).
    """

    def __init__(self, loader: MedclLoader, augment: Callable[..., dict[str, Any]], device: torch.device | str,
                 seed: int, rank: int = 0) -> None:
        """Wrap ``loader``; see the class docstring."""
        self.loader, self.augment, self.device = loader, augment, torch.device(device)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None)

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating epoch ``epoch``: the loader's order and this epoch's augmentation stream."""
        self.epoch = int(epoch)
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.loader)

    def row_seeds(self, batch: Mapping[str, Any], batch_index: int) -> list[int]:
        """One seed per image of ``batch`` in ``augment``'s row order (sample-major, then view)."""
        x = batch["views"] if "views" in batch else batch["image"]
        views = x.shape[1] if "views" in batch else 1
        index = batch.get("index")
        if not isinstance(index, torch.Tensor) or index.shape != (x.shape[0],):
            return [derive_seed(self.seed, self.epoch, self.rank, batch_index, r) for r in range(x.shape[0] * views)]
        seen: dict[int, int] = {}
        seeds = []
        for row in index.tolist():
            occurrence = seen[row] = seen.get(row, -1) + 1
            seeds += [derive_seed(self.seed, self.epoch, row, occurrence, v) for v in range(views)]
        return seeds

    def __iter__(self):
        """Augmented batches on ``device``."""
        for i, batch in enumerate(self.loader):
            seeds = self.row_seeds(batch, i)
            moved = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            yield self.augment(moved, Draw(seeds, self.device))


def _patients_of(dataset: Any) -> list[int]:
    """The ``"patient"`` of every item of a dataset from :func:`build_dataset` (or a list of item dicts)."""
    items = getattr(dataset, "data", dataset)
    missing = [i for i, it in enumerate(items) if "patient" not in it]
    if missing:
        raise DataError(f"{len(missing)} item(s) have no 'patient' (first: item {missing[0]})", where="per_patient",
                        fix="build the items with records_to_items, which numbers each record's patient")
    return [int(it["patient"]) for it in items]


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    epoch: int = 0,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    collate: Callable[[list], Any] | None = collate_samples,
    pin_memory: bool | None = None,
    persistent_workers: bool = False,
    per_patient: int | None = None,
) -> MedclLoader:
    """A reproducible ``DataLoader`` over a dataset from :func:`build_dataset`.

    Args:
        dataset: the dataset (its ``.transform`` is re-seeded per sample).
        batch_size: samples per batch (per process under DDP).
        shuffle: shuffle each epoch (order from ``(seed, epoch)``).
        num_workers: worker processes; the batches are the same for any value.
        seed: base seed of order and augmentations.
        epoch: epoch to start at (or call ``loader.set_epoch``).
        distributed: split the data among ``world_size`` ranks with a ``DistributedSampler``
            (given ``rank``/``world_size`` explicitly — no process group is queried). A dataset that
            :func:`build_dataset` already partitioned by rank is not split again.
        rank: this process's rank (also seeds the workers and the loader's generator).
        world_size: the number of processes.
        drop_last: drop the last incomplete batch (and, distributed, pad-free splitting).
        collate: batch collation (default :func:`collate_samples`).
        pin_memory: default: ``True`` when CUDA is available.
        persistent_workers: keep workers between epochs (off by default: workers then see the
            dataset as it is at each epoch start).
        per_patient: patient-grouped batches of ``batch_size // per_patient`` patients × ``per_patient`` samples
            (:class:`~medcl.data.sampling.PatientBatchSampler`, reading each item's ``"patient"``; always
            shuffled, the last incomplete batch dropped). A dataset that is a rank's share is grouped within
            that share.

    Returns:
        :class:`MedclLoader` yielding batch dicts (see ``medcl/README.md`` for the keys).

    Raises:
        ConfigError: bad batch size, worker count or rank.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}", where="batch_size", fix="use e.g. 32")
    if int(num_workers) < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}", where="data.num_workers",
                          fix="use 0 (main process) or the number of CPU cores per GPU")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in a world of size {world_size}", where="runtime",
                          fix="pass the rank and world size from medcl.distributed")
    part_world = int(getattr(dataset, "medcl_world_size", 1))
    share = int(getattr(dataset, "medcl_rank", 0))
    if distributed and part_world > 1:
        # already this rank's share: shuffle it locally rather than split it a second time
        replicas, replica_rank, sampler_seed = 1, 0, derive_seed(seed, share)
    elif distributed:
        replicas, replica_rank, sampler_seed = world_size, rank, seed
    else:
        replicas, replica_rank, sampler_seed = 1, 0, seed
    wrapped = SeededDataset(dataset, seed=seed, epoch=epoch, share=share)
    workers = int(num_workers)
    if per_patient:
        batching: dict[str, Any] = {"batch_sampler": PatientBatchSampler(
            _patients_of(dataset), int(batch_size), int(per_patient), seed=sampler_seed, epoch=epoch,
            num_replicas=replicas, rank=replica_rank)}
    else:
        # one code path: with one replica DistributedSampler is a seeded, epoch-aware shuffle
        sampler = DistributedSampler(dataset, num_replicas=replicas, rank=replica_rank, shuffle=bool(shuffle),
                                     seed=int(sampler_seed) % 2**31, drop_last=bool(drop_last) and replicas > 1)
        sampler.set_epoch(int(epoch))
        batching = {"batch_size": int(batch_size), "sampler": sampler, "drop_last": bool(drop_last)}
    return MedclLoader(
        wrapped,
        **batching,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
        worker_init_fn=partial(_seed_worker, seed=int(seed), rank=int(rank)) if workers > 0 else None,
        generator=torch.Generator().manual_seed(derive_seed(seed, epoch, rank)),
        persistent_workers=bool(persistent_workers) and workers > 0,
    )
