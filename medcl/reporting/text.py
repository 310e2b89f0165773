"""Report section: zero-shot classification from class prompts and image↔report retrieval (``clip`` pretraining)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcl.reporting.blocks import Missing, ci_text, esc, metric_cell, para, table

if TYPE_CHECKING:
    from medcl.reporting.data import ReportData


def zero_shot(d: ReportData) -> list[str]:
    """Section "Zero-shot and retrieval": the classify stage's ``test/zero_shot/*`` and ``test/retrieval/*``.

    Raises:
        Missing: no classify stage, or it logged no zero-shot metrics (the encoder was not pretrained with clip).
    """
    stage = d.stages.get("classify")
    if stage is None:
        raise Missing("this run has no classify stage.")
    m = stage.metrics
    names = sorted(k.removeprefix("test/zero_shot/") for k in m if k.startswith("test/zero_shot/")
                   and not k.endswith(("_ci_low", "_ci_high")))
    if not names:
        raise Missing("no zero-shot results: the encoder was not pretrained with the clip method (reports).")
    rows = [[esc(n.replace("_", " ")), metric_cell(f"test/zero_shot/{n}", m[f"test/zero_shot/{n}"]),
             ci_text(m.get(f"test/zero_shot/{n}_ci_low"), m.get(f"test/zero_shot/{n}_ci_high"))] for n in names]
    out = [para("Classification with <b>no labels</b>: each class is described by prompts (the pipeline's "
                "<code>classify.prompts</code>), and each test sample is given the class whose prompts its embedding "
                "is closest to, in the space CLIP pretraining aligned with the reports. Compare with the linear "
                "probe above, which learnt from the labels. Patient-level bootstrap 95 % CIs."),
           table(["metric", "zero-shot", "95 % CI"], rows)]
    ks = sorted({int(k.rsplit("_", 1)[-1]) for k in m if k.startswith("test/retrieval/")})
    if ks:
        sides = {"image_to_text": "image → report", "text_to_image": "report → image"}
        rr = [[shown, *[f"{m.get(f'test/retrieval/{side}_recall_at_{k}', float('nan')):.2f}" for k in ks]]
              for side, shown in sides.items()]
        out += [para("Retrieval among the test samples' de-identified reports: how often the sample's own report "
                     "(or one with the same text) is among the K nearest."),
                table(["direction", *[f"recall@{k}" for k in ks]], rr)]
    return out
