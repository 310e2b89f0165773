"""Checkpoints: atomic writes, checksums, permissions, full disk, rolling checkpointer, RNG state."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import stat

import numpy as np
import pytest
import torch
from torch import nn

from medcl import checkpoint_file as ck
from medcl.checkpoint_file import load_checkpoint, save_checkpoint
from medcl.engine.checkpoint import (
    Checkpointer,
    build_training_state,
    capture_rng_state,
    restore_rng_state,
    restore_training_state,
)
from medcl.errors import CheckpointError


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state(),
        "epoch": 2, "global_step": 17, "run_id": "abc123", "config": {"lr": 0.1, "path": np.float32(2.5)},
        "array": np.arange(6).reshape(2, 3),
    }


def test_round_trip_weights_only(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "a.pt", state)
    back = load_checkpoint(path)
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert back["run_id"] == "abc123" and back["global_step"] == 17
    assert back["config"] == {"lr": 0.1, "path": 2.5}
    assert torch.equal(back["array"], torch.arange(6).reshape(2, 3))
    # the payload is a plain torch file that loads with weights_only=True
    raw = path.read_bytes()[ck._HEADER.size:]
    assert isinstance(torch.load(io.BytesIO(raw), weights_only=True), dict)


def test_file_mode_is_0600(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"x": torch.ones(2)})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cp = Checkpointer(tmp_path / "run")
    p = cp.save({"x": 1}, 3)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cp.directory / "latest").st_mode) == 0o600


def test_checksum_mismatch_detected(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"w": torch.arange(100.0)})
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_detected(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", {"w": torch.arange(100.0)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError, match="not a medcl checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_code_is_refused_even_with_valid_checksum(tmp_path):
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    payload = buf.getvalue()
    header = ck._HEADER.pack(ck.MAGIC, ck.FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    path = tmp_path / "evil.pt"
    path.write_bytes(header + payload)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_unsupported_object_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path / "a.pt", {"config": {"fn": lambda: 1}})
    assert "state.config.fn" in e.value.where
    assert not list(tmp_path.iterdir())


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cp = Checkpointer(tmp_path, keep=2)
    cp.save({"step": 1, "w": torch.ones(3)}, 1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.os, "replace", full)
    with pytest.raises(CheckpointError) as e:
        cp.save({"step": 2, "w": torch.zeros(3)}, 2)
    assert "disk is full" in e.value.what and str(tmp_path) in e.value.line()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt", "latest"]  # no temp left
    state = cp.load_latest()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_full_disk_during_write(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", {"v": 1})
    real_fdopen = os.fdopen

    class _FullFile(io.RawIOBase):
        def __init__(self, fd):
            self._f = real_fdopen(fd, "wb")

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self._f.close()
            super().close()

    monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: _FullFile(fd))
    with pytest.raises(CheckpointError, match="disk is full"):
        save_checkpoint(path, {"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_checkpointer_keeps_last_k_and_pointer(tmp_path):
    cp = Checkpointer(tmp_path, keep=2)
    for step in (5, 10, 15):
        cp.save({"step": step}, step)
    assert [s for s, _ in cp.checkpoints()] == [10, 15]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000015.pt"
    assert cp.load_latest()["step"] == 15
    # resuming from 10 and saving 12 drops the abandoned 15
    cp.save({"step": 12}, 12)
    assert [s for s, _ in cp.checkpoints()] == [10, 12]


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    cp = Checkpointer(tmp_path, keep=3)
    cp.save({"step": 1}, 1)
    cp.save({"step": 2}, 2)
    latest = cp.path_for(2)
    latest.write_bytes(latest.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="medcl.engine.checkpoint"):
        state = cp.load_latest()
    assert state["step"] == 1 and cp.last_loaded == cp.path_for(1)
    assert any("ckpt-00000002.pt" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)


def test_no_checkpoint_none_all_corrupt_raises(tmp_path):
    cp = Checkpointer(tmp_path / "empty")
    assert cp.load_latest() is None
    cp.save({"a": 1}, 1)
    cp.path_for(1).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        cp.load_latest()


def test_non_main_rank_writes_nothing(tmp_path):
    cp = Checkpointer(tmp_path / "r1", is_main=False)
    assert cp.save({"a": 1}, 1) is None
    assert not (tmp_path / "r1").exists()


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.randn(2)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng_state()
    expected = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    save_checkpoint(tmp_path / "r.pt", {"rng": state})
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_training_state_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    st = build_training_state(model, opt, epoch=1, batches_done=4, global_step=9, run_id="r", config={"a": 1})
    save_checkpoint(tmp_path / "s.pt", st)
    back = load_checkpoint(tmp_path / "s.pt")
    other = nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    restore_training_state(back, other, other_opt)
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other_opt.state[other.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])
    with pytest.raises(CheckpointError, match="do not fit this model"):
        restore_training_state(back, nn.Linear(4, 2))
