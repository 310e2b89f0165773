"""Helpers shared by the benchmark scripts: run metadata (machine load included), JSON results, demo data.

Every script writes ``{"meta": {...}, "rows": [...], ...}`` to its ``--out`` file; ``meta`` says on
what it ran (CPU count, torch threads, load average before and after — the figures from a shared
machine are only comparable to each other) and whether it was a ``--quick`` (tiny) run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as ``python benchmarks/x.py`` from anywhere
    sys.path.insert(0, str(ROOT))

NO_GPU = "not measured: no GPU lent to this task"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files other than the benchmarks' own outputs differ from
    it (``None`` outside git)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        # the benchmarks' own outputs (results a resumed run appends to, the README, plots, logs) do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results", ":(exclude)benchmarks/README.md",
                                ":(exclude)benchmarks/plots", ":(exclude)benchmarks/logs"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def base_meta(quick: bool) -> dict[str, Any]:
    """What every result file records about the machine and the code, at the start of a benchmark."""
    import torch

    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "quick": bool(quick),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_before": load_average(),
    }


def finished_rows(path: Path, quick: bool, fresh: bool = False) -> dict[str, dict[str, Any]]:
    """The runs a resumable benchmark finished before, by key: the rows of ``path`` without an error and not skipped
    (none when ``fresh``, when the file is absent, or when it holds runs of the other size, quick or full)."""
    if fresh or not Path(path).is_file():
        return {}
    old = json.loads(Path(path).read_text())
    if bool(old.get("meta", {}).get("quick")) != quick:
        return {}
    return {x["key"]: x for x in old.get("rows", []) if "error" not in x and "skipped" not in x}


def write_results(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], t0: float, **extra: Any) -> None:
    """Finish ``meta`` (load after, wall time) and write the JSON results atomically."""
    meta = {**meta, "load_after": load_average(), "wall_s": round(time.time() - t0, 1)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, **extra}, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def demo_manifest(modality: str, data_dir: Path, patients: int | None = None) -> Path:
    """The synthetic demo set of one modality (synthesised once into ``data_dir``); its manifest."""
    from medcl.data.synth import synthesize

    manifest = Path(data_dir) / modality / "manifest.csv"
    if not manifest.is_file():
        synthesize(data_dir, modalities=[modality], patients=patients, seed=0)
    return manifest


def demo_config(modality: str, manifest: Path, work: Path, extra: list[str] | None = None):
    """The ``pipelines/demo/<modality>.yaml`` config pointed at ``manifest``, writing under ``work``."""
    from medcl.pipeline import load_pipeline

    sets = [f"data.manifest={manifest}", f"runtime.output_dir={work / 'runs'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "runtime.progress=false", "runtime.device=cpu",
            *(extra or [])]
    return load_pipeline(ROOT / "pipelines" / "demo" / f"{modality}.yaml", sets)


def demo_training_set(modality: str, work: Path, quick: bool):
    """The demo pipeline of ``modality`` (data synthesised under ``work/data``) ready for pretraining.

    Returns:
        ``(cfg, data, items, batch_size, transform)``: the config, the prepared data, the training items,
        the pretraining batch size (capped by the number of items) and the multi-view training transform.
    """
    from medcl.data.prepare import prepare_data
    from medcl.stages.common import make_transforms

    manifest = demo_manifest(modality, Path(work) / "data", patients=8 if quick else None)
    cfg = demo_config(modality, manifest, Path(work))
    data = prepare_data(cfg)
    items = data.items("train")
    batch_size = max(2, min(cfg.pretrain.batch_size, len(items)))
    return cfg, data, items, batch_size, make_transforms(cfg, train=True, views=cfg.pretrain.views)


def build_method(cfg, data, device: str = "cpu"):
    """The demo's pretraining method (as the pretrain stage builds it) on ``device``, and its optimiser.

    Seeded by ``cfg.seed``: two calls give the same initial weights.
    """
    import numpy as np

    from medcl.engine.optim import build_optimizer
    from medcl.methods import build_method as _build
    from medcl.methods import method_options
    from medcl.stages.common import make_encoder, seed_everything

    seed_everything(cfg.seed)
    p = cfg.pretrain
    encoder = make_encoder(cfg)
    allowed = method_options(p.method)
    defaults = {"temperature": p.temperature, "hidden_dim": cfg.model.proj_hidden_dim,
                "out_dim": cfg.model.proj_dim, "gather_distributed": False, "num_classes": len(data.classes)}
    kwargs = {k: v for k, v in defaults.items() if k in allowed}
    if "classes" in allowed:
        kwargs["classes"] = data.classes
    if "class_counts" in allowed and data.y.ndim == 1:
        y = data.y[data.indices("train")]
        kwargs["class_counts"] = np.bincount(y[y >= 0], minlength=len(data.classes)).tolist()
    kwargs.update(p.method_options)
    method = _build(p.method, encoder, **kwargs).to(device)
    groups = method.param_groups(p.weight_decay)
    return method, build_optimizer(groups, p.optimizer, lr=p.lr, weight_decay=p.weight_decay)


def quiet_logs() -> None:
    """INFO lines of medcl on stderr (progress of a long benchmark), libraries at WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("medcl").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def stage_seconds(root: Path) -> dict[str, float | None]:
    """``{stage: seconds}`` from the ``<stage>/outputs.json`` files of the pipeline runs under ``root``."""
    import json

    from medcl.config.schema import STAGE_ORDER

    return {out.parent.name: json.loads(out.read_text()).get("seconds")
            for out in sorted(Path(root).rglob("outputs.json")) if out.parent.name in STAGE_ORDER}
