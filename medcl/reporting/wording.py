"""Plain-language wording of the report's metrics: display names, headline choices and one-sentence readings."""

from __future__ import annotations

import math
from collections.abc import Sequence

from medcl.reporting.blocks import esc

METRIC_NAMES = {
    "auroc": "AUROC", "auprc": "Average precision (AUPRC)", "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV",
    "npv": "NPV", "f1": "F1 score", "f1_macro": "F1 score (macro)", "qwk": "Quadratic-weighted kappa",
    "subset_accuracy": "Exact-match accuracy",
}

HEADLINE_METRICS = {
    "binary": ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"),
    "multiclass": ("auroc", "auprc", "balanced_accuracy", "accuracy", "specificity", "f1_macro"),
    "ordinal": ("qwk", "auroc", "balanced_accuracy", "accuracy", "auprc"),
    "multilabel": ("auroc", "auprc", "sensitivity", "specificity", "subset_accuracy"),
}


def plain_sentence(name: str, value: float, task: str, classes: Sequence[str]) -> str:
    """One sentence a clinician can read, for a metric value (as a percentage where it is one)."""
    if not math.isfinite(value):
        return "Could not be computed on this test set (for example, a class is absent)."
    pct = f"{value:.0%}"
    pos = classes[1] if task == "binary" and len(classes) > 1 and not str(classes[1]).isdigit() else "the finding"
    avg = " (averaged over classes, each against the rest)" if task in ("multiclass", "ordinal") else ""
    avg = " (averaged over labels)" if task == "multilabel" else avg
    s = {
        "auroc": f"Given one case with and one without the finding, the model ranks the one with it higher "
                 f"{pct} of the time{avg}; 50 % is chance, 100 % is perfect.",
        "auprc": f"Across all thresholds, {pct} of the cases the model ranks highest are true cases on "
                 f"average{avg}; chance equals how common each class is.",
        "balanced_accuracy": f"On average the model recognises {pct} of the cases of each class, "
                             "whatever the class sizes.",
        "accuracy": f"{pct} of test cases get the correct class (can look good when one class dominates).",
        "sensitivity": f"Of the cases with {esc(pos)}, the model flags {pct}{avg}.",
        "specificity": f"Of the cases without {esc(pos)}, the model correctly clears {pct}{avg}.",
        "ppv": f"When the model flags {esc(pos)}, it is right {pct} of the time (depends on prevalence).",
        "npv": f"When the model clears a case, it is right {pct} of the time (depends on prevalence).",
        "f1": f"Balance of sensitivity and PPV for {esc(pos)}: {pct}.",
        "f1_macro": f"Balance of sensitivity and precision, averaged over classes: {pct}.",
        "qwk": f"Agreement between predicted and true grade beyond chance, counting a miss by two grades "
               f"worse than a miss by one: {value:.2f} (0 = chance, 1 = perfect; above 0.8 is usually "
               "called strong).",
        "subset_accuracy": f"{pct} of test cases get every label exactly right.",
    }
    return s.get(name, "")
