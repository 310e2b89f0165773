"""``python -m medcl`` for the torchrun tests, recording which files this rank opens for writing.

A Python audit hook (PEP 578) sees every ``open``/``os.open`` and ``os.replace``/``os.rename``; paths
under ``MEDCL_TEST_WATCH_DIR`` are written to ``MEDCL_TEST_WRITE_LOG`` (``{rank}`` is filled in) as JSON
when the process ends, so the test can check that only rank 0 writes checkpoints.

``MEDCL_TEST_STALL=STAGE:RANK:SECONDS`` makes that rank sleep at the start of that stage, before its
first collective: what a rank stuck in slow I/O or a deadlock looks like to the others.
"""

from __future__ import annotations

import json
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install_hook(watch: str, writes: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = os.fsdecode(args[0]), args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if writing and path.startswith(watch):
                writes.append(path)
        elif event == "os.rename" and len(args) >= 2 and isinstance(args[1], (str, bytes, os.PathLike)):
            dst = os.fsdecode(args[1])
            if dst.startswith(watch):
                writes.append(dst)

    sys.addaudithook(hook)


def _install_stall(spec: str) -> None:
    import time

    from medcl import stages

    stage, rank, seconds = spec.split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    real = stages.STAGES[stage]

    def stalled(ctx, tracker):
        time.sleep(float(seconds))
        return real.run(ctx, tracker)

    stages.STAGES[stage] = stages.Stage(stalled, main_only=real.main_only)


def main() -> int:
    writes: list[str] = []
    _install_hook(os.environ["MEDCL_TEST_WATCH_DIR"], writes)
    if os.environ.get("MEDCL_TEST_STALL"):
        _install_stall(os.environ["MEDCL_TEST_STALL"])
    from medcl.cli import main as medcl_main

    try:
        return medcl_main(sys.argv[1:])
    finally:
        log = os.environ["MEDCL_TEST_WRITE_LOG"].format(rank=os.environ.get("RANK", "0"))
        with open(log, "w", encoding="utf-8") as f:
            json.dump(sorted(set(writes)), f)


if __name__ == "__main__":
    sys.exit(main())
