"""``medcl demo``: synthesise the demo data if absent and run a complete pipeline on CPU.

The demo pipelines live in ``pipelines/demo/<modality>.yaml``; each includes the modality's
real pipeline and only shrinks it (epochs, sizes) so it runs on a laptop CPU in minutes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medcl import distributed
from medcl.data.synth import synthesize
from medcl.errors import ConfigError
from medcl.lookup import did_you_mean
from medcl.modalities import MODALITIES
from medcl.pipeline import load_pipeline, run_pipeline
from medcl.shipped import shipped

log = logging.getLogger(__name__)
DEMO_MODALITIES = MODALITIES  # every modality has a demo pipeline (pipelines/demo/<modality>.yaml); "all" runs them
#: further demos, run by name: the extra synthetic sets (medcl.data.synth.EXTRA_SETS) with pipelines/demo/<name>.yaml
EXTRA_DEMOS = ("cytology", "histo-wsi", "ecg-report-clip", "eye-multimodal")
#: demos that run on another demo's data: demo -> the synthetic data set it reads
DEMO_DATA = {"ecg-report-clip": "ecg", "eye-multimodal": "eye"}


def pipelines_dir() -> Path:
    """The ``pipelines/`` folder shipped with medcl (``MEDCL_PIPELINES`` overrides; see :mod:`medcl.shipped`)."""
    return shipped("pipelines", env="MEDCL_PIPELINES", must_have="demo")


def run_demo(modality: str = "oct", data_dir: str | Path = "medcl-demo-data", seed: int = 0,
             overrides: list[str] | None = None, force: bool = False, resume: bool = False, dry_run: bool = False,
             smoke: bool = False) -> int:
    """``medcl demo``: synthesise the demo data of ``modality`` (if absent) and run its demo pipeline.

    Args:
        modality: one of :data:`DEMO_MODALITIES` or :data:`EXTRA_DEMOS`, or ``"all"`` (the six modalities, one
            pipeline after the other).
        data_dir: where the demo data lives / is written (``<data_dir>/<modality>/manifest.csv``).
        seed: seed for the data and the training (``--set seed=…``).
        overrides: further ``--set`` overrides, applied after the demo's own.
        force: re-run stages that already completed.
        resume: continue an unfinished run from its checkpoint.
        dry_run: validate config and data, print the plan, train nothing.
        smoke: every stage for a few steps.

    Returns:
        The exit code, 0.

    Raises:
        ConfigError: an unknown modality.
    """
    if modality == "all":
        mods = list(DEMO_MODALITIES)
    elif modality in (*DEMO_MODALITIES, *EXTRA_DEMOS):
        mods = [modality]
    else:
        raise ConfigError(f"unknown demo modality {modality!r}", where="--modality",
                          fix=f"{did_you_mean(modality, (*DEMO_MODALITIES, *EXTRA_DEMOS))}"
                          f"use one of {', '.join((*DEMO_MODALITIES, *EXTRA_DEMOS))} or all")
    data_dir = Path(data_dir).resolve()
    for mod in mods:
        data_mod = DEMO_DATA.get(mod, mod)
        manifest = data_dir / data_mod / "manifest.csv"
        path = pipelines_dir() / "demo" / f"{mod}.yaml"
        sets = [f"data.manifest={manifest}", f"seed={seed}", *(overrides or [])]
        cfg = load_pipeline(path, sets, smoke=smoke)
        if not manifest.is_file():
            log.info("synthesising the %s demo data into %s", mod, data_dir)
            synthesize(data_dir, modalities=[data_mod], seed=seed, patients=cfg.data.synth_patients)
        elif cfg.data.synth_patients:
            log.warning("data.synth_patients=%d not used: the %s demo data already exist in %s (delete the folder to "
                        "synthesise them again)", cfg.data.synth_patients, mod, data_dir / data_mod)
        run_pipeline(cfg, force=force, resume=resume, dry_run=dry_run, smoke=smoke)
    distributed.cleanup()  # a live gloo group can abort the process's exit, which torchrun reports as a failure
    return 0
