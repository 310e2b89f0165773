"""Patient-grouped batches: P patients × K samples per batch (for MICLe-style cross-image positives).

A shuffled loader puts few images of one patient into a batch: on the OCT demo an anchor meets ~0.4 other
images of its patient per batch of 64, so a method whose positives are "other images of the same patient"
(MICLe, Azizi et al. 2021) sees them by chance. :class:`PatientBatchSampler` builds every batch from ``P``
blocks of ``K`` samples, each block from one patient, the way re-identification and metric-learning work
forms "P×K" batches (Hermans et al. 2017, "In Defense of the Triplet Loss"; pytorch-metric-learning's
``MPerClassSampler`` with classes replaced by patients).

One epoch, in an order fixed by ``(seed, epoch)``:

1. each patient's samples are shuffled and cut into blocks of ``K``; the last block, when short, is topped
   up with the patient's own other samples (cycling through its shuffled list). A patient with fewer than
   ``K`` samples therefore repeats some: each repeat is yielded as a separate, encoded index that
   :class:`~medcl.data.datasets.SeededDataset` augments with a seed of its own. A patient with one sample gives a block of
   ``K`` copies of it, i.e. extra views of one image;
2. the blocks are shuffled and dealt into batches of ``P``; a block whose patient already has a block in
   the batch is deferred to the next batch, so a batch holds ``P`` different patients whenever that many
   are left;
3. the last incomplete batch is dropped; under DDP every rank builds the same list and takes batches
   ``rank, rank + W, ...`` of it, cut to a multiple of ``W`` so all ranks run the same number of steps.

The sampler is a pure function of ``(patients, seed, epoch)``: a resumed run that skips the batches
already done sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from medcl.errors import ConfigError
from medcl.transforms.seeding import derive_seed


class PatientBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // per_patient`` patients × ``per_patient`` samples.

    Args:
        patients: ``(N,)`` patient id of each dataset index (any hashable ids).
        batch_size: samples per batch and process (``P × K``; must be a multiple of ``per_patient``).
        per_patient: ``K``, samples of one patient per block (≥ 2 for cross-image positives).
        seed: base seed of the order.
        epoch: epoch to start at (or call :meth:`set_epoch`).
        num_replicas: processes sharing the batches (1 when each process holds its own share).
        rank: this process's index among them.

    Raises:
        ConfigError: ``batch_size`` not a multiple of ``per_patient``, fewer than 2 patients per batch,
            fewer patients than a batch needs, or fewer batches than processes.
    """

    def __init__(self, patients: Sequence, batch_size: int, per_patient: int, *, seed: int, epoch: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        """Group the indices by patient; see the class docstring."""
        k, b = int(per_patient), int(batch_size)
        where = "pretrain.samples_per_patient"
        if k < 1 or b % k:
            raise ConfigError(f"a batch of {b} samples per process cannot hold blocks of {k} samples per patient",
                              where=where, fix=f"make the per-process batch a multiple of {k} (e.g. "
                              f"{max(2 * k, b - b % k)}) or change {where}")
        if b // k < 2:
            raise ConfigError(f"a batch of {b} samples with {k} per patient holds a single patient: no negatives",
                              where=where, fix=f"use a per-process batch of at least {2 * k} or lower {where}")
        if not 0 <= int(rank) < int(num_replicas):
            raise ConfigError(f"rank {rank} is not in a world of size {num_replicas}", where="runtime",
                              fix="pass the rank and world size from medcl.distributed")
        ids = list(patients)
        self.patients = ids
        by_patient: dict = {}
        for i, p in enumerate(ids):
            by_patient.setdefault(p, []).append(i)
        self.groups = [np.asarray(v, dtype=np.int64) for _, v in sorted(by_patient.items(), key=lambda kv: kv[1][0])]
        self.k, self.p, self.batch_size = k, b // k, b
        self.seed, self.epoch = int(seed), int(epoch)
        self.replicas, self.rank = int(num_replicas), int(rank)
        if len(self.groups) < self.p:
            raise ConfigError(f"{len(self.groups)} patients in the training data, but a batch needs {self.p} "
                              f"({b} samples, {k} per patient)", where=where,
                              fix=f"lower the batch size or {where} so that batch / samples_per_patient <= "
                              f"{len(self.groups)}")
        self.blocks_per_epoch = sum(-(-len(g) // k) for g in self.groups)
        if len(self) < 1:
            raise ConfigError(f"{self.blocks_per_epoch // self.p} patient-grouped batches per epoch for "
                              f"{self.replicas} processes", where=where,
                              fix="lower the batch size, the processes or samples_per_patient")

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        return (self.blocks_per_epoch // self.p) // self.replicas

    def repeat_fraction(self) -> float:
        """Share of an epoch's batch slots that repeat a sample (top-ups of patients with < K left)."""
        n = sum(len(g) for g in self.groups)
        return 1.0 - n / (self.blocks_per_epoch * self.k)

    def epoch_batches(self) -> list[list[int]]:
        """Every process's batches of the current epoch (the global list, before it is dealt to ranks)."""
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, 0x9A71E7))
        blocks: list[tuple[int, list[int]]] = []
        for pid, g in enumerate(self.groups):
            order = g[rng.permutation(len(g))]
            n_blocks = -(-len(order) // self.k)
            cycled = np.resize(order, n_blocks * self.k)  # tops up the last block from the patient's own samples
            blocks += [(pid, cycled[j * self.k:(j + 1) * self.k].tolist()) for j in range(n_blocks)]
        pending = deque(blocks[i] for i in rng.permutation(len(blocks)))
        batches: list[list[int]] = []
        while len(pending) >= self.p:
            chosen: list[tuple[int, list[int]]] = []
            deferred: list[tuple[int, list[int]]] = []
            seen: set[int] = set()
            while pending and len(chosen) < self.p:
                blk = pending.popleft()
                (deferred if blk[0] in seen else chosen).append(blk)
                seen.add(blk[0])
            while len(chosen) < self.p:  # fewer different patients left than P: share patients
                chosen.append(deferred.pop(0))
            pending.extendleft(reversed(deferred))
            batches.append([i for _, idx in chosen for i in idx])
        usable = (len(batches) // self.replicas) * self.replicas
        return batches[:usable]

    def __iter__(self) -> Iterator[list[int]]:
        """This process's batches of the current epoch: dataset indices, repeats encoded.

        The ``r``-th repeat (``r >= 1``) of index ``i`` within the epoch is yielded as ``i + r * N`` (``N``
        samples), which :class:`~medcl.data.datasets.SeededDataset` reads as item ``i`` with its own
        augmentation seed.
        """
        n = len(self.patients)
        seen: dict[int, int] = {}
        for j, batch in enumerate(self.epoch_batches()):
            coded = []
            for i in batch:
                r = seen[i] = seen.get(i, -1) + 1
                coded.append(i + r * n)
            if j % self.replicas == self.rank:
                yield coded
