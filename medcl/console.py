"""What a pipeline prints on the console.

The plan of a dry run, and the results table at the end of a run with where to look next (the MLflow UI command,
the report).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medcl.config import PipelineConfig
from medcl.stages.context import RunContext


def print_plan(cfg: PipelineConfig, data: Any, key: str, run_dir: Path) -> None:
    """Print what a run of ``cfg`` would do (``--dry-run``): one line per stage, the data and its split, the folder.

    Args:
        cfg: the resolved pipeline config.
        data: the prepared :class:`~medcl.data.prepare.DataBundle` (records, classes, split summary).
        key: the config's key.
        run_dir: the run folder the pipeline would write to.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"plan: {cfg.name} (key {key})")
    t.add_column("stage")
    t.add_column("what")
    desc = {
        "pretrain": f"{cfg.pretrain.method} on {cfg.model.encoder}, {_budget_text(cfg.pretrain)}, "
        f"batch {cfg.pretrain.batch_size}, {cfg.pretrain.optimizer} lr {cfg.pretrain.lr}"
        + (", online kNN probe on the validation patients" if cfg.pretrain.probe else ""),
        "classify": f"{', '.join(cfg.classify.protocols)} at label fractions {cfg.classify.label_fractions}, "
        f"baselines {', '.join(cfg.classify.baselines) or 'none'}"
        + (f"; fine-tuning {_budget_text(cfg.classify.finetune)}" if "finetune" in cfg.classify.protocols else ""),
        "segment": f"{cfg.segment.network}, {_budget_text(cfg.segment)}, {cfg.segment.num_classes} classes",
        "detect": f"one-class detection of what is not {cfg.detect.normal_class!r}: {', '.join(cfg.detect.scorers)} "
        f"scorers, sensitivity at {cfg.detect.specificity:.0%} specificity",
        "slides": f"slide-level classification from tile features: {', '.join(cfg.slides.poolings)} pooling, "
        f"{cfg.slides.epochs} epochs, baselines {', '.join(cfg.slides.baselines) or 'none'}",
        "calibrate": f"{cfg.calibrate.method} scaling, ECE with {cfg.calibrate.n_bins} bins",
        "report": "HTML report from the MLflow run",
    }
    for s in cfg.stages:
        t.add_row(s, desc[s])
    console.print(t)
    s = data.summary
    console.print(f"data: {len(data.records)} samples from {len(data.patient_index)} patients, "
                  f"{len(data.excluded)} excluded; classes: {', '.join(data.classes) or '(none)'}; task {data.task}")
    for split, n in (s.get("patients") or {}).items():
        console.print(f"  {split}: {n} patients, {s.get('samples', {}).get(split, '?')} samples")
    console.print(f"run folder: {run_dir}")


def _budget_text(section: Any) -> str:
    """``"160 optimiser steps"`` when a step budget is set (epochs then unused), else ``"30 epochs"``."""
    if getattr(section, "steps", None):
        return f"{section.steps} optimiser steps"
    return f"{section.epochs} epochs" + (f" (at most {section.max_steps} steps)" if section.max_steps else "")


def mlflow_command() -> str:
    """How to call ``mlflow`` from a shell.

    The executable next to this Python (a venv's ``bin/``) when ``mlflow`` is not on ``PATH`` — e.g.
    ``.venv/bin/mlflow`` after ``make demo`` without activating the venv; else plain ``mlflow``.
    """
    import shutil
    import sys

    exe = Path(sys.executable).parent / "mlflow"
    on_path = shutil.which("mlflow")
    if exe.is_file() and (on_path is None or Path(on_path).resolve() != exe.resolve()):
        try:
            return os.path.relpath(exe)
        except ValueError:  # another drive (Windows)
            return str(exe)
    return "mlflow"


def print_summary(ctx: RunContext) -> None:
    """A table of the headline results of every stage, and where to look next."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{ctx.cfg.name}: results (95% CI, patient-level bootstrap)")
    for col in ("stage", "model", "metric", "value"):
        t.add_column(col)
    for stage, out in ctx.outputs.items():
        for row in out.get("summary", []):
            t.add_row(stage, str(row.get("model", "")), str(row.get("metric", "")), str(row.get("value", "")))
    console.print(t)
    uri = ctx.tracking_uri or ""
    console.print(f"MLflow run: {ctx.parent_run_id}")
    if uri.startswith("sqlite:///"):
        console.print(f"open the MLflow UI:  {mlflow_command()} ui --backend-store-uri {uri} "
                      f"--default-artifact-root {Path(uri[10:]).parent / 'mlartifacts'}")
    else:
        console.print(f"MLflow UI: {uri}")
    if "report" in ctx.outputs and ctx.outputs["report"].get("html"):
        console.print(f"report: {ctx.outputs['report']['html']}")
