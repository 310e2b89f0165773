"""oct-severity under torchrun: the anomaly model and the bins come from rank 0 (broadcast), even when ranks see
other data, and equal what one process computes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torchrun_helpers import ROOT, torchrun_env


@pytest.mark.distributed
def test_oct_severity_pseudo_labels_are_rank_0s_on_every_rank(tmp_path):
    out = tmp_path / "severity.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "distributed" / "severity_dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=torchrun_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rank0, rank1 = res["ranks"]
    assert rank0 == rank1 == res["single"]
    labels = [v for v in rank0["labels"] if v >= 0]
    assert len(labels) == 24 and len(set(labels)) == 3  # every row 100..123 labelled, into 3 bins
