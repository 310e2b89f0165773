"""Throughput bookkeeping of the training loop: wall time, time spent waiting for the loader, samples.

The loop marks when a batch arrives and when its work (forward, backward and, at a group's end, the
optimiser step) is done; each optimiser step's figures and the whole call's are kept apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Span:
    """Seconds of wall time, of which ``wait`` seconds waiting for data, and the samples processed."""

    seconds: float = 0.0
    wait: float = 0.0
    samples: int = 0

    def rates(self) -> dict[str, float]:
        """``samples_per_s`` and ``data_wait_fraction`` (share of the time spent waiting, in [0, 1])."""
        if self.seconds <= 0:
            return {"samples_per_s": 0.0, "data_wait_fraction": 0.0}
        return {"samples_per_s": self.samples / self.seconds,
                "data_wait_fraction": min(1.0, self.wait / self.seconds)}


class Throughput:
    """Per-step and per-call :class:`Span` s of a training loop.

    Use: ``restart()`` before the first batch (and after work that should not count, e.g. callbacks);
    ``arrived()`` when a batch comes out of the loader; ``done(n)`` when its ``n`` samples are processed;
    ``close_step()`` at each optimiser step returns that step's rates and adds the step to :attr:`total`.
    """

    def __init__(self) -> None:
        """Start with empty step and total spans, the clock marked now."""
        self.step, self.total = Span(), Span()
        self._mark = time.perf_counter()

    def restart(self) -> None:
        """Mark the clock now: time before this point is not counted."""
        self._mark = time.perf_counter()

    def arrived(self) -> None:
        """A batch came out of the loader: the time since the mark counts as waiting for data."""
        self.step.wait += time.perf_counter() - self._mark

    def done(self, samples: int) -> None:
        """``samples`` samples were processed: the time since the mark counts to the step; mark again."""
        now = time.perf_counter()
        self.step.seconds += now - self._mark
        self.step.samples += samples
        self._mark = now

    def close_step(self) -> dict[str, float]:
        """End the optimiser step: its rates (``samples_per_s``, ``data_wait_fraction``), added to :attr:`total`."""
        rates = self.step.rates()
        self.total.seconds += self.step.seconds
        self.total.wait += self.step.wait
        self.total.samples += self.step.samples
        self.step = Span()
        return rates
