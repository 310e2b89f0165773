"""Patient-grouped batches (P patients × K samples): the groups, coverage, seeding, DDP split and repeats."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from medcl.data.datasets import build_dataset, build_loader
from medcl.data.sampling import PatientBatchSampler
from medcl.errors import ConfigError
from medcl.transforms import build_transforms

# 9 patients with 1..9 images each (45 samples), in an interleaved order so a patient's indices are not contiguous
PATIENTS = [p for r in range(9) for p in range(9) if r <= p]


def _decode(batch, n=len(PATIENTS)):
    return [i % n for i in batch]


def test_each_batch_is_p_blocks_of_k_images_of_one_patient_each():
    k, p = 3, 4
    sampler = PatientBatchSampler(PATIENTS, p * k, k, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum(-(-c // k) for c in Counter(PATIENTS).values()) // p
    for batch in batches:
        assert len(batch) == p * k
        owners = [PATIENTS[i] for i in _decode(batch)]
        blocks = [owners[j * k:(j + 1) * k] for j in range(p)]
        assert all(len(set(b)) == 1 for b in blocks), blocks
        assert len({b[0] for b in blocks}) == p  # P different patients (9 patients are plenty)


def test_an_epoch_covers_every_sample_and_repeats_only_to_fill_blocks():
    k = 4
    sampler = PatientBatchSampler(PATIENTS, 2 * k, k, seed=1)
    counts = Counter(i for b in sampler.epoch_batches() for i in b)
    per_patient = Counter(PATIENTS)
    # a patient with n images fills ceil(n / k) blocks: n distinct samples, ceil(n/k)*k - n repeats
    blocks = {pt: -(-n // k) for pt, n in per_patient.items()}
    dropped = sum(blocks.values()) % 2  # the last incomplete batch (one block) is dropped
    covered = {PATIENTS[i] for i in counts}
    assert len(covered) >= len(per_patient) - dropped
    assert sum(counts.values()) == (sum(blocks.values()) - dropped) * k
    expected = 1 - len(PATIENTS) / (sum(blocks.values()) * k)
    assert sampler.repeat_fraction() == pytest.approx(expected)


def test_same_seed_and_epoch_same_batches_other_epoch_other_order():
    a = PatientBatchSampler(PATIENTS, 8, 4, seed=5)
    b = PatientBatchSampler(PATIENTS, 8, 4, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first  # a resumed run that returns to epoch 0 sees the same batches


def test_ranks_take_disjoint_batches_of_one_global_list_with_equal_counts():
    one = PatientBatchSampler(PATIENTS, 6, 3, seed=2)
    ranks = [list(PatientBatchSampler(PATIENTS, 6, 3, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    glob = list(one)
    assert len(ranks[0]) == len(ranks[1]) == len(glob) // 2
    assert ranks[0] == glob[0:2 * len(ranks[0]):2] and ranks[1] == glob[1:2 * len(ranks[1]):2]


def test_bad_batch_shapes_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="multiple of 4"):
        PatientBatchSampler(PATIENTS, 10, 4, seed=0)
    with pytest.raises(ConfigError, match="single patient"):
        PatientBatchSampler(PATIENTS, 4, 4, seed=0)
    with pytest.raises(ConfigError, match="2 patients in the training data, but a batch needs 3"):
        PatientBatchSampler([0, 0, 1, 1], 6, 2, seed=0)


def _items(patients):
    rng = np.random.default_rng(0)
    return [{"image": rng.uniform(0, 255, (1, 20, 20)).astype(np.float32), "label": 0, "patient": p, "index": i}
            for i, p in enumerate(patients)]


def test_loader_batches_hold_the_groups_and_a_repeat_gets_its_own_augmentation():
    # patient 0 has one image: its block of 2 is the image twice, which must be augmented twice, differently
    patients = [0, 1, 1, 2, 2, 3, 3]
    tr = build_transforms("oct", train=True, views=2, spatial_size=[16, 16])
    loader = build_loader(build_dataset(_items(patients), tr), batch_size=4, shuffle=True, num_workers=0, seed=0,
                          per_patient=2)
    seen_repeat = False
    for batch in loader:
        pats = batch["patient"].tolist()
        assert pats[0] == pats[1] and pats[2] == pats[3] and pats[0] != pats[2]
        rows = batch["index"].tolist()
        for j in (0, 2):
            if rows[j] == rows[j + 1]:
                seen_repeat = True
                assert not torch.equal(batch["views"][j], batch["views"][j + 1])
    loader.set_epoch(3)
    assert len(list(loader)) == len(loader)
    assert seen_repeat


def test_loader_with_two_workers_gives_the_same_grouped_batches():
    tr = build_transforms("oct", train=True, views=2, spatial_size=[16, 16])
    runs = [list(build_loader(build_dataset(_items(PATIENTS[:20]), tr), batch_size=4, shuffle=True, num_workers=w,
                              seed=4, per_patient=2)) for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) > 0
    for x, y in zip(*runs):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["views"], y["views"])
