"""Logging set-up: a console handler and a per-invocation log file, both PHI-redacting.

Every record passes :class:`RedactPHI`, which replaces any value registered with
:data:`medcl.phi.REGISTRY` (patient IDs, DICOM patient tags, path components) by ``[PHI]``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from medcl import phi


class RedactPHI(logging.Filter):
    """A logging filter that replaces registered PHI values by ``[PHI]`` in messages and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place: its formatted message and, if any, its exception text.

        Returns:
            Always True (no record is dropped).
        """
        msg = record.getMessage()
        clean = phi.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = phi.redact(text)
        return True


def setup_logging(log_dir: str | Path | None = None, verbose: bool = False) -> Path | None:
    """Console at INFO (DEBUG with ``verbose``), file at DEBUG; returns the log file path.

    Under ``torchrun`` the ranks other than 0 print only errors to the console (prefixed with their rank),
    so a job's console reads like one process's; their log files keep everything.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG)
    rank = os.environ.get("RANK", "0")
    quiet = rank.isdigit() and int(rank) > 0 and not verbose
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    prefix = f"[rank {rank}] " if rank.isdigit() and int(rank) > 0 else ""
    console.setFormatter(logging.Formatter(prefix + "%(levelname)s %(name)s: %(message)s"))
    console.addFilter(RedactPHI())
    root.addHandler(console)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "git", "numba", "asyncio", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    path = None
    if log_dir is not None:
        d = Path(log_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / f"medcl-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        # created owner-only from the first byte (log lines may name files of the data set)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.addFilter(RedactPHI())
        root.addHandler(fh)
    return path
