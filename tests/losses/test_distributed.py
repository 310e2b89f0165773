"""medcl.distributed: single-process no-ops, and a real 2-process torchrun (gloo, CPU) check that every loss of
``LOSSES`` with gather_distributed=True reproduces the full-batch loss and gradients (the 1/world_size bug), including
the weighted ones whose ranks hold different numbers (and weights) of labelled anchors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medcl import distributed as dist
from medcl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_single_process_helpers_are_no_ops():
    assert not dist.is_distributed()
    assert dist.rank() == 0 and dist.world_size() == 1
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.gather_with_grad(x) is x
    assert dist.all_gather(x) is x
    assert dist.gather_sizes(3) == [3]
    assert torch.equal(dist.all_reduce_mean(x), x) and dist.all_reduce_mean(x) is not x
    assert dist.all_reduce_sum(2.5) == 2.5
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()
    dist.cleanup()


def test_init_without_torchrun_starts_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_distributed() is False
    assert not torch.distributed.is_initialized()


def test_bad_backend_and_env(monkeypatch):
    with pytest.raises(ConfigError, match="did you mean 'nccl'"):
        dist.init_distributed(backend="ncl")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        dist.local_rank()


def test_seed_for_rank():
    assert dist.seed_for_rank(42) == 42  # one process reproduces single-GPU runs
    seeds = {dist.seed_for_rank(42, r) for r in range(8)}
    assert len(seeds) == 8


@pytest.mark.distributed
def test_torchrun_two_ranks_match_full_batch(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "losses" / "dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2
    cases = ("ntxent", "supcon", "supcon_simclr_one", "moco_v3", "dice_ce", "patient", "clocs", "clocs_record",
             "hard_negative_supcon", "graph_supcon", "balanced_supcon", "balanced_supcon_both", "prototype", "dense",
             "dense_batch", "clip", "clip_soft")
    # every registered loss is covered (infonce is ntxent under another name)
    assert {c.removesuffix("_record").removesuffix("_both").removesuffix("_batch").removesuffix("_soft")
            for c in cases} | {"infonce"} >= set(
        res["losses"]), sorted(set(res["losses"]) - set(cases))
    failed = {}
    for name in cases:
        r = res[name]
        # A backward that does not sum across ranks is off by O(grad_scale), not 1e-12.
        if not (r["loss_diff"] < 1e-12 and r["grad_scale"] > 1e-3 and r["grad_diff"] < 1e-12 * max(1.0, r["grad_scale"])):
            failed[name] = r
    assert failed == {}
    assert res["gather_with_grad"] == {"grad_err": 0.0, "rows_wrong": 0.0}
    assert res["broadcast"] == {"from": 0}
