"""``python crash_launcher.py ARGS...``: run ``medcl ARGS...`` and SIGKILL this process half-way
through the N-th checkpoint write (``MEDCL_CRASH_IN_WRITE=N``).

A test-side fault injector (medcl itself has no kill hook): it wraps
:func:`medcl.checkpoint_file.atomic_write_bytes` so that, for the N-th ``ckpt-*.pt`` file, the
temporary file is created, half of the bytes are written and flushed to disk, and then the process
kills itself with ``SIGKILL`` — exactly what ``kill -9`` during the write leaves behind.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path


def install(n: int) -> None:
    from medcl import checkpoint_file as checkpoint

    real = checkpoint.atomic_write_bytes
    seen = {"ckpt": 0}

    def dying_write(path, chunks, mode=0o600):
        path = Path(path)
        if path.name.startswith("ckpt-"):
            seen["ckpt"] += 1
            if seen["ckpt"] == n:
                data = b"".join(bytes(c) for c in ([chunks] if isinstance(chunks, bytes) else chunks))
                fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.write(fd, data[: len(data) // 2])
                os.fsync(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(path, chunks, mode)

    checkpoint.atomic_write_bytes = dying_write


if __name__ == "__main__":
    install(int(os.environ["MEDCL_CRASH_IN_WRITE"]))
    from medcl.cli import main

    sys.exit(main(sys.argv[1:]))
