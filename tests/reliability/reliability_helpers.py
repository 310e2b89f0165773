"""Shared helpers of the reliability tests: searching every byte of a folder, subprocess runs."""

from __future__ import annotations

import gzip
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _members(name: str, data: bytes, depth: int = 0):
    """``(name, bytes)`` of a file and of everything decompressible inside it (gzip, zip/npz/.pt, tar)."""
    yield name, data
    if depth > 3:
        return
    if data[:2] == b"\x1f\x8b":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError, zipfile.BadZipFile):
            inner = None
        if inner is not None:
            yield from _members(f"{name}!gunzip", inner, depth + 1)
    # torch checkpoints written by medcl: 48-byte header, then a zip archive
    for offset in (0, 48):
        if data[offset : offset + 4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(data[offset:])) as z:
                    for info in z.infolist():
                        yield from _members(f"{name}!{info.filename}", z.read(info), depth + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
                pass
            break
    if len(data) > 512 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t.getmembers():
                    f = t.extractfile(m)
                    if f is not None:
                        yield from _members(f"{name}!{m.name}", f.read(), depth + 1)
        except (tarfile.TarError, OSError, EOFError):
            pass


def search_bytes(roots: list[Path], needles: list[str], extra: dict[str, str] | None = None) -> list[str]:
    """Every ``file[!member]: needle`` where a needle occurs (case-insensitive, also UTF-16 and
    HTML-escaped) in a file under ``roots``, in a decompressed member of one, or in ``extra`` texts."""
    variants: dict[bytes, str] = {}
    for n in needles:
        low = n.lower()
        for v in {low, low.replace("^", "&#94;"), low.replace("^", "\\u005e"), low.replace("^", "%5e")}:
            variants[v.encode("utf-8")] = n
            variants[v.encode("utf-16-le")] = n
    hits: list[str] = []
    blobs: list[tuple[str, bytes]] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for p in files:
            # file and folder names count as bytes too
            blobs.append((f"{p} (name)", str(p.relative_to(root) if root.is_dir() else p.name).encode()))
            blobs.extend(_members(str(p), p.read_bytes()))
    for name, text in (extra or {}).items():
        blobs.append((name, text.encode("utf-8")))
    for name, data in blobs:
        low = data.lower()
        for v, n in variants.items():
            if v in low:
                hits.append(f"{name}: {n}")
    return sorted(set(hits))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a ``python -m medcl`` child: one thread (deterministic, polite on 2 cores)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "PYTHONHASHSEED": "0"})
    env.update(extra)
    return env
