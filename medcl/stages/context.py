"""What a stage gets: :class:`RunContext` (config, data, device, where to write, what earlier stages made)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medcl import distributed
from medcl.config import PipelineConfig
from medcl.data.prepare import DataBundle

if TYPE_CHECKING:  # torch stays off the import path of `medcl --help`
    import torch

T = TypeVar("T")


@dataclass
class RunContext:
    """What a stage gets: the config, the data, where to write, and what earlier stages made.

    Attributes:
        cfg: the resolved pipeline config.
        key: the config's key (names the run folder and finds the MLflow run to re-open).
        run_dir: the run folder (``<runtime.output_dir>/<name>-<key>``).
        data: the validated records, labels and patient split.
        device: where this rank trains (``None`` in a dry run).
        rank, world_size: this process under ``torchrun`` (0 and 1 otherwise).
        resume: continue unfinished stages from their checkpoints.
        smoke: a ``--smoke`` run (a few steps per stage).
        outputs: ``{stage: outputs}`` of the stages run (or skipped as done) so far.
        parent_run_id: the pipeline's MLflow run.
        tracking_uri: the MLflow store.
        modalities: a fusion pipeline's modalities, set by the pipeline before the fuse stage: modality ->
            ``{"config": its pipeline's config, "encoder": weights path or URI, "run_id": its pretraining run}``.
    """

    cfg: PipelineConfig
    key: str
    run_dir: Path
    data: DataBundle
    device: torch.device | None
    rank: int = 0
    world_size: int = 1
    resume: bool = False
    smoke: bool = False
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that logs, writes artifacts and runs the probes)."""
        return self.rank == 0

    def stage_dir(self, stage: str) -> Path:
        """``run_dir/stage``, created (owner-only) if needed."""
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def on_main(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on rank 0 alone (probes, evaluation, writing artifacts) and give every rank its result.

        Under ``torchrun`` the other ranks wait here, once, and ``fn`` runs in a local section where no
        collective can wait for them (:func:`medcl.distributed.run_on_main`); on one process it is ``fn()``.
        """
        return distributed.run_on_main(fn, what)
