"""``benchmarks/_flops.py``: model FLOPs of a training step against hand-counted ones, peak lookups, MFU in the README."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def flops():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("_flops")
    finally:
        sys.path.remove(str(BENCH))


class _Method(nn.Module):
    """A pretraining-method-shaped wrapper: ``forward(batch) -> {"loss": ...}``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, batch):
        return {"loss": self.net(batch["image"]).pow(2).mean()}


def test_linear_step_flops_match_the_hand_count(flops):
    b, i, o = 8, 32, 16
    method = _Method(nn.Linear(i, o))
    n = flops.step_flops(method, {"image": torch.randn(b, i)})
    # forward x @ W^T: 2·b·i·o; backward: dL/dW = g^T x, 2·b·i·o (the input needs no gradient)
    assert n == 4 * b * i * o
    assert all(p.grad is None for p in method.parameters())  # the counting step leaves no gradients behind


def test_conv_step_flops_match_the_hand_count(flops):
    b, ci, co, k, hw = 2, 3, 4, 3, 10
    first = nn.Conv2d(ci, co, k, padding=1)
    second = nn.Conv2d(co, co, k, padding=1)
    method = _Method(nn.Sequential(first, second))
    n = flops.step_flops(method, {"image": torch.randn(b, ci, hw, hw)})
    fwd1 = 2 * b * hw * hw * co * ci * k * k
    fwd2 = 2 * b * hw * hw * co * co * k * k
    # first conv: forward + weight gradient; second conv: forward + weight gradient + input gradient
    assert n == 2 * fwd1 + 3 * fwd2


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A10G", 70e12), ("NVIDIA L4", 121e12), ("NVIDIA GeForce GTX 1080", None), (None, None),
])
def test_spec_peak_finds_the_most_specific_gpu_name(flops, name, peak):
    assert flops.spec_peak_flops(name) == peak


def test_measured_peak_is_a_rate_per_dtype(flops):
    rates = flops.measured_peak_flops("cpu", n=64, reps=2)
    assert set(rates) == {"fp32", "bf16"}
    assert all(math.isfinite(r) and r > 1e6 for r in rates.values())


def test_readme_renders_gpu_rows_with_mfu_against_the_spec_peak(tmp_path):
    """A precision_gpu.json copied back from a GPU machine shows up next to the CPU rows, with MFU from the rows."""
    from runner import write_readme

    results = tmp_path / "results"
    results.mkdir()
    row = {"modality": "oct", "method": "simclr", "encoder": "resnet18", "batch": 64, "views": 2, "device": "cuda",
           "input_shape": [1, 64, 64], "flops_per_step": 1.0e11, "variant": "bf16 + channels_last", "amp": "bf16",
           "channels_last": True, "compile": False, "steps": 30, "warmup_s": 2.0, "step_s": 0.001,
           "images_per_s": 128000.0, "achieved_tflops": 100.0, "mfu_spec": 100e12 / 989e12,
           "mfu_measured": 100e12 / 700e12, "speedup_vs_fp32": 2.5, "step_memory_gb": 3.25}
    meta = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "steps": 30, "warmup": 3,
            "peak_flops_spec": 989e12, "peak_flops_measured": {"fp32": 50e12, "bf16": 700e12}, "cpu_count": 16,
            "load_before": [0.1, 0.1, 0.1]}
    failed = {**row, "variant": "bf16 + channels_last + torch.compile", "error": "BackendCompilerFailed: no cc"}
    for k in ("images_per_s", "mfu_spec", "mfu_measured", "speedup_vs_fp32", "achieved_tflops"):
        failed.pop(k)
    (results / "precision_gpu.json").write_text(json.dumps({"meta": meta, "rows": [row, failed]}))
    text = write_readme(tmp_path).read_text()
    assert "**NVIDIA H100 80GB HBM3** (cuda): peak used for MFU — spec sheet 989 TFLOP/s dense bf16" in text
    assert ("| oct | resnet18 | 1×64×64 | 64 | bf16 + channels_last | 128000.0 | 2.50× | 2.0 | 100.0 | 100.000 "
            "| 10.1 % | 14.3 % | 3.25 |") in text
    assert "failed: BackendCompilerFailed: no cc" in text
    assert "not measured — no GPU" not in text


def test_merge_joins_runs_of_one_device_and_refuses_two_devices(tmp_path):
    """The GPU recipe splits the modalities over two time-limited calls; --merge joins their files."""
    import subprocess

    def part(name, device, rows):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"meta": {"device_name": device, "wall_s": 10.0},
                                    "rows": [{"modality": m, "variant": v, "images_per_s": x} for m, v, x in rows]}))
        return str(path)

    a = part("a", "H100", [("oct", "fp32", 1.0), ("fundus", "fp32", 2.0)])
    b = part("b", "H100", [("fundus", "fp32", 3.0), ("mri", "fp32", 4.0)])
    c = part("c", "A100", [("ct", "fp32", 5.0)])
    script = str(BENCH / "bench_precision.py")
    out = tmp_path / "merged.json"
    subprocess.run([sys.executable, script, "--merge", a, b, "--out", str(out)], check=True, timeout=120)
    merged = json.loads(out.read_text())
    # a modality measured in both files keeps the later file's rows
    assert [(r["modality"], r["images_per_s"]) for r in merged["rows"]] == [("oct", 1.0), ("fundus", 3.0), ("mri", 4.0)]
    assert merged["meta"]["modalities_done"] == ["oct", "fundus", "mri"] and merged["meta"]["wall_s"] == 20.0
    bad = subprocess.run([sys.executable, script, "--merge", a, c, "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "different devices" in bad.stderr and not (tmp_path / "x.json").exists()
    missing = subprocess.run([sys.executable, script, "--merge", a, str(tmp_path / "nope.json"), "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "cannot read" in missing.stderr and "nope.json" in missing.stderr
