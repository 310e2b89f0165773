"""Report section: multimodal fusion (the ``fuse`` stage) — fusion against each modality alone, and robustness."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcl.reporting.blocks import Missing, ci_text, esc, metric_cell, para, table

if TYPE_CHECKING:
    from medcl.reporting.data import ReportData

#: how a test condition is shown
_CONDITION = {"complete": "every modality", "all": "every test patient (some lack a modality)"}


def _condition(c: str) -> str:
    if c in _CONDITION:
        return _CONDITION[c]
    kind, _, modality = c.partition("_")
    return {"without": f"{modality} removed", "degraded": f"{modality} degraded (blurred, noisy)"}.get(
        kind, f"{modality} from another patient (mislinked)")


def fusion(d: ReportData) -> list[str]:
    """Section "Multimodal fusion": ``test/fusion/<model>/<condition>/*`` of the fuse stage.

    Raises:
        Missing: the run has no fuse stage, it did not finish, or it logged no metrics.
    """
    if "fuse" not in d.stages:
        raise Missing("this run has no multimodal fusion (fuse) stage.")
    if d.stage_status("fuse") != "FINISHED":
        raise Missing(f"the fuse stage has status {d.stage_status('fuse')}: no fusion results.")
    stage = d.stages["fuse"]
    m, params = stage.metrics, stage.params
    tags = sorted({k.rsplit("/", 1)[0] for k in m if k.startswith("test/fusion/") and k.endswith("/auroc")})
    if not tags:
        raise Missing("the fuse stage logged no metrics.")
    order = {"gated": 0, "ungated": 1}
    tags.sort(key=lambda t: (order.get(t.split("/")[2], 2), t.split("/")[2], t.split("/")[3] != "complete",
                             t.split("/")[3]))
    rows, gates = [], []
    for tag in tags:  # test/fusion/<model>/<condition>
        _, _, model, cond = tag.split("/")
        rows.append([esc(model.replace("_", " ")), esc(_condition(cond)),
                     metric_cell(f"{tag}/auroc", m[f"{tag}/auroc"]),
                     ci_text(m.get(f"{tag}/auroc_ci_low"), m.get(f"{tag}/auroc_ci_high")),
                     metric_cell(f"{tag}/accuracy", m.get(f"{tag}/accuracy", float("nan"))),
                     ci_text(m.get(f"{tag}/accuracy_ci_low"), m.get(f"{tag}/accuracy_ci_high"))])
        g = {k.rsplit("/gate_", 1)[1]: v for k, v in m.items() if k.startswith(f"{tag}/gate_")}
        if g and model == "gated":
            gates.append([esc(_condition(cond)), *[f"{g[x]:.2f}" for x in sorted(g)]])
    missing = {k.removeprefix("fuse.patients_without_"): v for k, v in params.items()
               if k.startswith("fuse.patients_without_")}
    out = [para("Each patient is classified from all of its examinations: every modality has its own encoder "
                "(pretrained by that modality's pipeline on the training patients), a patient's images of one modality "
                "are averaged, and a fusion head combines them. <i>gated</i>: attention gates with a NULL option "
                "(Gated Symile) decide per patient how much each modality counts and replace an unreliable or missing "
                "one by a learned neutral input; <i>ungated</i>: the same head without gates; <i>single</i>: one "
                "modality alone. Rows are test conditions: the test patients with every modality as they are, with one "
                "modality removed, with one modality taken from another patient (a mislinked examination), or with one "
                "modality's images degraded (blurred and noisy: an ungradable examination). "
                "Macro AUROC and accuracy with patient-level bootstrap 95 % CIs."),
           table(["model", "test condition", "AUROC", "95 % CI", "accuracy", "95 % CI"], rows)]
    if gates:
        names = sorted({k.rsplit("/gate_", 1)[1] for k in m if "/gate_" in k})
        out += [para("Mean gate of each modality in the gated model (1 = used fully, 0 = replaced by its neutral "
                     "input): a gate should fall where its modality is removed, mislinked or degraded."),
                table(["test condition", *[esc(n) for n in names]], gates)]
    if missing:
        out.append(para("Patients lacking a modality (classified from the others; listed in "
                        "<code>missing_modalities.json</code>): "
                        + ", ".join(f"{esc(k)}: {esc(str(v))}" for k, v in sorted(missing.items())) + "."))
    return out
