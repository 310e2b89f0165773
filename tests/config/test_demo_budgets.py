"""The shipped demos give every label fraction and every model the same training budget.

The segment stage trains one network per label fraction; with a budget in epochs, a fraction of the
patients gets that fraction of the steps. The CT and MRI demos meant a 400-step budget but capped it at
200 epochs, so at 10 % of the patients (one step per epoch) the segmenter got 200 steps — too few for
small lesions to appear. A budget that does not depend on the size of the training set is the check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.pipeline import load_pipeline
from medcl.stages.common import budget

REPO = Path(__file__).resolve().parents[2]
DEMOS = sorted((REPO / "pipelines" / "demo").glob("*.yaml"))


def _budgets(cfg):
    """(name, steps, epochs, max_steps) of every supervised loop a pipeline trains per label fraction."""
    out = []
    if "segment" in cfg.stages:
        s = cfg.segment
        out.append(("segment", s.steps, s.epochs, s.max_steps))
    if "classify" in cfg.stages and "finetune" in cfg.classify.protocols:
        f = cfg.classify.finetune
        out.append(("classify.finetune", f.steps, f.epochs, f.max_steps))
    return out


@pytest.mark.parametrize("path", DEMOS, ids=[p.stem for p in DEMOS])
def test_demo_budget_is_the_same_at_every_label_fraction(path):
    cfg = load_pipeline(path)
    for name, steps, epochs, max_steps in _budgets(cfg):
        # one step per epoch (a handful of patients) and 50 steps per epoch (all of them): the same total
        small = budget(steps, epochs, 1, max_steps)[1]
        large = budget(steps, epochs, 50, max_steps)[1]
        assert small == large, (f"{path.name}: {name} trains {small} steps on a small label fraction and {large} "
                                f"on the full one; give the budget as {name}.steps")
