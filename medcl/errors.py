"""Error types medcl raises on purpose.

Every medcl error says *where* (file, row, key), *what* was wrong and *how to fix it*,
so the command line can print one clear line instead of a traceback. Anything that is
not a :class:`MedclError` escaping a reader or a check is a bug in medcl.
"""

from __future__ import annotations


class MedclError(Exception):
    """Base class: ``where: what — fix``.

    Args:
        what: what is wrong, with the offending value.
        where: file, row or config key path the problem is in ("" if global).
        fix: one sentence telling the user how to fix it.
    """

    def __init__(self, what: str, *, where: str = "", fix: str = "") -> None:
        """Keep the three parts; the exception's message is :meth:`line`."""
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line message ``where: what — fix`` (parts that are empty are left out)."""
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head} — {self.fix}" if self.fix else head


class ConfigError(MedclError):
    """A pipeline YAML, preset or ``--set`` override is invalid."""


class DataError(MedclError):
    """Input data (a file, a manifest row, a split) cannot be used."""


class ReaderError(DataError):
    """A file cannot be decoded by its reader (corrupt, truncated, unsupported)."""


class ManifestError(DataError):
    """A manifest cannot be parsed at all (encoding, missing columns)."""


class SplitError(DataError):
    """A split is impossible or leaks patients between train/val/test."""


class TrackingError(MedclError):
    """The tracking store or server is unusable."""


class CheckpointError(MedclError):
    """A checkpoint is missing, corrupt or incompatible."""


class TrainingError(MedclError):
    """Training cannot continue (NaN/Inf loss, resource limit)."""


class DistributedError(MedclError):
    """The processes of a ``torchrun`` job lost each other: a collective timed out or a rank is gone."""


class StageError(MedclError):
    """A pipeline stage failed; names the stage."""


class PHIError(MedclError):
    """A value that looks like protected health information was about to be written."""
