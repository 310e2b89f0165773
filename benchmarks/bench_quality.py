"""Learning quality on the demo data: medcl against plain reference loops, per modality, method and seed.

One invocation runs the whole plan, seed by seed (1–2 for seed 0, then for seed 1, …; then 3 seed by seed; 4 last; each modality's
pipeline followed by its references), so that a run cut short by ``--budget-min`` has whole comparisons (resumable: a re-run skips the runs already finished in
``--out`` and retries failed ones, ``--redo MODALITY`` also re-runs a modality's finished ones after its recipe
changed, and a modality's runs measured before its demo data or recipe changed (``DATA_CHANGED``) are run again; every run is
written as soon as it ends, failures included, with the commit it ran at; SIGTERM stops
the benchmark — the run under way is not recorded and stays pending for the next invocation):

1. ``pipeline`` — per modality and seed, the demo pipeline (``pipelines/demo/<modality>.yaml``, its own
   method and budgets) with stages pretrain → classify (linear probe of the pretrained encoder, of the
   same encoder at random init and of raw pixels; fine-tuning from the pretrained encoder and from scratch
   at 1 %, 10 % and 100 % of the training patients) → segment (CT, MRI: Dice at 10 % and 100 %) →
   calibrate (test ECE before/after, and whether the calibrator was applied).
2. ``reference`` — per modality (2D, ECG, CT, MRI) and seed, the plain loops of ``benchmarks/reference/`` on the
   split that run wrote (``split.csv``), with medcl's budgets: supervised from scratch with the fine-tune's
   steps and batch, SimCLR with the pretraining's steps and batch, same architecture (CT/MRI: a plain 3D CNN of the
   demo encoder's widths).
3. ``ablation`` — what each recipe fix is worth: the 2D demo pipelines with one fix undone, measured by what
   the fix is for: ``output_stride_32`` (the encoder's default final 2×2 map on 64×64 images instead of output
   stride 16; pretraining → linear probe), ``finetune_lr1e-3_wd1e-4`` (the demos' former fine-tune optimiser)
   and ``hed_beta_0.28`` (the former strength of the histo HED stain jitter; both: the from-scratch fine-tune
   at 100 % of the labels), ``oct_shift_zero_fill`` (the OCT shift's former zero fill; the linear probe), and the
   others listed in :data:`ABLATIONS`.
4. ``method`` — every method preset that applies to the modality (its confusable pairs or class graph
   where the preset needs one), pretraining at the demo's budget → linear probe at 100 % of the labels.

Nothing is merged by hand: ``benchmarks/README.md`` is rendered from the one result file
(``medcl bench --only quality``), with the commit, machine and load of the run.

Usage::

    python benchmarks/bench_quality.py --out benchmarks/results/quality.json [--quick] [--budget-min 600]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import _common  # noqa: F401
from _common import ROOT, base_meta, finished_rows, git_commit, quiet_logs, write_results

#: per modality: the manifest column with the class names, classification label fractions, whether the plain
#: reference loops apply (2D images, ECG, CT/MRI volumes), and settings the benchmark adds to the demo pipeline
#: (``classify.pairs``: the confusable pair of each 2D demo — the pair supcon-hardneg names — gets its own AUROC in
#: every run, so that supcon-hardneg is compared with the other methods on it)
HARD_PAIRS: dict[str, str] = {"oct": "[[early,intermediate]]", "fundus": "[[moderate,severe]]",
                              "histo": "[[stroma,normal]]"}
MODALITIES: dict[str, dict[str, Any]] = {
    "oct": {"fractions": "[0.01,0.1,1.0]", "reference": True, "extra": [f"classify.pairs={HARD_PAIRS['oct']}"]},
    "fundus": {"fractions": "[0.01,0.1,1.0]", "reference": True,
               "extra": [f"classify.pairs={HARD_PAIRS['fundus']}"]},
    "histo": {"fractions": "[0.01,0.1,1.0]", "reference": True, "extra": [f"classify.pairs={HARD_PAIRS['histo']}"]},
    "ecg": {"fractions": "[0.01,0.1,1.0]", "reference": True},
    "ct": {"fractions": "[0.1,1.0]", "reference": True},
    # the MRI demo segments only: a validation split and a classify stage (lesion present?) are added
    "mri": {"fractions": "[0.1,1.0]", "reference": True, "extra": ["data.val_fraction=0.15"]},
    # issue 18: the class-balanced presets where they should help — fundus grades long-tailed (``medcl data synth
    # --modalities fundus-lt``), the fundus demo pipeline, only these methods (no pipeline row: SimCLR is one of them)
    "fundus-lt": {"fractions": "[1.0]", "reference": False, "pipeline": "fundus",
                  "methods": ["simclr", "supcon", "supcon-balanced", "prototypes"]},
}
#: method presets and, per modality, what a preset needs (None: does not apply)
GENERIC = ["simclr", "moco", "micle", "supcon", "supcon-balanced", "prototypes"]
SPECIFIC: dict[str, dict[str, list[str]]] = {
    "supcon-hardneg": {m: [f"pretrain.method_options.hard_pairs={p}"] for m, p in HARD_PAIRS.items()},
    "supcon-graph": {"oct": ["pretrain.method_options.similarity={classes: [normal, early, intermediate], "
                             "edges: [[normal, early, 0.5], [early, intermediate, 0.5]]}"],
                     "fundus": ["pretrain.method_options.similarity={classes: [no_dr, mild, moderate, severe], "
                                "edges: [[no_dr, mild, 0.5], [mild, moderate, 0.5], [moderate, severe, 0.5]]}"],
                     "ecg": []},
    "clocs": {"ecg": []},
    "oct-severity": {"oct": []},
    "dense": {"ct": [], "mri": []},
}
#: presets whose row also runs the demo's segment stage (10 % and 100 % of the labels): what they are for
SEGMENTING = ("dense",)


#: recipe fixes, undone one at a time: name -> (modalities, settings that undo it, what it is measured by:
#: ``probe`` = pretraining → SSL linear probe, ``scratch`` = the from-scratch fine-tune alone, 100 % labels)
ABLATIONS: dict[str, tuple[tuple[str, ...], list[str], str]] = {
    "output_stride_32": (("oct", "fundus", "histo"), ["model.options={}"], "probe"),
    # the demos' fine-tune recipe was AdamW lr 1e-3, weight decay 1e-4 (now 2e-3 and 0.05, the plain loop's)
    "finetune_lr1e-3_wd1e-4": (("oct", "fundus", "histo"),
                               ["classify.finetune.lr=1e-3", "classify.finetune.weight_decay=1e-4"], "scratch"),
    # HED jitter's beta used to act on skimage's rgb2hed scale (optical density / ln(1e6)): 0.02 there is
    # 0.28 optical density, 14x Tellez's HED-light (|beta| <= 0.05 OD)
    "hed_beta_0.28": (("histo",), ["transforms.hed_beta=0.276"], "scratch"),
    # the OCT and histo demos' pretraining warmed up for one epoch (~4-5 steps of 240); now 24 steps (10 %, the plain
    # loop's). warmup_epochs=1 too: the demos' base pipelines set 5 epochs
    "pretrain_warmup_1_epoch": (("oct", "histo"), ["pretrain.warmup_steps=null", "pretrain.warmup_epochs=1"], "probe"),
    # issue 14 item 3: the encoder handed on is chosen by the online probe; undone, the last one. On histo seed 1
    # the kNN probe's arg-max handed on step 24 of 240 (rows before the linear probe and the one-SE rule)
    "pretrain_select_last": (("histo",), ["pretrain.select=last"], "probe"),
    # the OCT preset's vertical shift filled the rows it vacates with zeros (a black strip); now the edge row
    "oct_shift_zero_fill": (("oct",), ["transforms.shift_padding=zeros"], "probe"),
    # the CT views shifted intensities by up to ±0.1 of the 400-HU window, ±40 HU, while the demo's lesion is 30–55 HU
    # below the liver; now ±0.0125 (±5 HU, a site's calibration offset). At the demo's new budget (below)
    "ct_shift_40hu": (("ct",), ["transforms.intensity_shift=0.1"], "probe"),
    # the CT demo pretrained 150 steps of 8 volumes (warm-up 15); now 300 of 32 (warm-up 30). With the ±5 HU views
    "ct_pretrain_150_of_8": (("ct",), ["pretrain.steps=150", "pretrain.batch_size=8", "pretrain.warmup_steps=15"],
                             "probe"),
    # the MRI views had no geometric draw and the demo's random crop is the whole volume, so the two views of a volume
    # shared the head's position, size and tilt; now RandAffined (p 0.5, ±0.2 rad, ±15 %, ±2 voxels). At the new budget
    "mri_no_affine": (("mri",), ["transforms.affine_prob=0.0"], "probe"),
    # the MRI demo's NT-Xent temperature: 0.2 (the 2D demos' and the plain loop's) from a916bdb, measured then against
    # SimCLR's preset 0.1 (the rows of mri_temperature_0.1: 0.1 higher on 2 of 3 seeds and on the mean); 0.1 again
    "mri_temperature_0.2": (("mri",), ["pretrain.temperature=0.2"], "probe"),
    # the MRI demo pretrained 150 steps of 8 volumes (warm-up 15); now 300 of 32 (warm-up 30), as CT
    "mri_pretrain_150_of_8": (("mri",), ["pretrain.steps=150", "pretrain.batch_size=8", "pretrain.warmup_steps=15"],
                              "probe"),
    # ``segment``: the dense row's own checkpoint segmented again (10 % and 100 %) with the decoder pretrained with
    # the encoder left out, so the encoder alone is pretrained — which of the two holds the dense start back
    "dense_decoder_not_handed_on": (("ct", "mri"), ["segment.pretrained_decoder=false"], "segment"),
    # ``pretrained``: two settings of the pretrained fine-tune compared — the pipeline row's own encoder fine-tuned
    # again at 10 % and 100 % of the labels with these settings and with the other arm's (TRIED), with the
    # from-scratch baseline beside the other arm. Here: the head at random, as shipped, against a head started from
    # a linear probe on the frozen features (LP-FT, Kumar et al. 2022), a change tried and not shipped
    "finetune_head_random": (("oct", "fundus", "histo", "ecg", "ct", "mri"), ["classify.finetune.head_init=random"],
                             "pretrained"),
    # the pretrained fine-tune's layer-wise LR decay: medcl's default 0.75 against none (1.0), which the MRI demo
    # ships: with 0.75 its encoder's stem learnt at ~0.24x the LR and the pretrained fine-tune trailed the
    # from-scratch one at 10 % of the labels on seed 1. Histo too: its pretrained fine-tune trails at 10 % on seed 1
    "finetune_layer_decay_0.75": (("histo", "mri"), ["classify.finetune.layer_decay=0.75"], "pretrained"),
    # MoCo v3 on ECG (method row): its online branch ends in a predictor MLP (4096 wide, started at random), as
    # BYOL's; at the demo's 60 steps its probe trails SimCLR's most on AF. Without the predictor (not the paper's
    # MoCo v3): what the predictor costs at this budget
    "moco_no_predictor": (("ecg",), ["pretrain.method_options.predictor=false"], "probe"),
}
#: an ablation of a method preset's row (:data:`ABLATIONS` changes that preset's row, at the demo's budget, instead of
#: the demo pipeline): the row it is compared with is that method's
ABLATION_OF_METHOD = {"moco_no_predictor": "moco"}
#: a ``pretrained`` ablation's other arm (its row's ``with_fix``, with the scratch baseline)
TRIED = {"finetune_head_random": ["classify.finetune.head_init=probe"],
         "finetune_layer_decay_0.75": ["classify.finetune.layer_decay=1.0"]}
#: what an ablation's row reads from another row: ``segment``, the dense method row; ``pretrained``, the pipeline row
SOURCE_KIND = {"segment": ("method", "dense"), "pretrained": ("pipeline", "")}


def _demo_yaml(mod: str) -> Path:
    """The demo pipeline a benchmark modality runs (``fundus-lt``: the fundus demo on the long-tailed set)."""
    return ROOT / "pipelines" / "demo" / f"{MODALITIES[mod].get('pipeline', mod)}.yaml"


def methods_for(modality: str) -> list[str]:
    """The presets run on ``modality`` (its pipeline's own method is the ``pipeline`` run; presets that do not apply
    to its demo's task, :func:`not_applicable`, are left out)."""
    if "methods" in MODALITIES[modality]:
        return list(MODALITIES[modality]["methods"])
    own = _demo_method(modality)
    out = [m for m in GENERIC if m != own]
    out += [m for m, per in SPECIFIC.items() if modality in per and m != own]
    skip = not_applicable(modality)
    return [m for m in out if m not in skip]


def not_applicable(modality: str) -> dict[str, str]:
    """The generic presets that do not apply to ``modality``'s demo, each with the reason: the methods that read one
    class per sample (``Method.single_label``) on a multilabel demo (ECG); the pretraining stage refuses them."""
    from medcl.methods import METHODS, multilabel_label_methods
    from medcl.pipeline import load_pipeline

    if "methods" in MODALITIES[modality]:
        return {}
    task = load_pipeline(_demo_yaml(modality), ["data.manifest=x.csv"]).data.task
    if task != "multilabel":
        return {}
    multi = ", ".join(multilabel_label_methods())
    return {m: f"needs one class per sample; the {modality} demo is multilabel ({multi} is the multilabel form)"
            for m in GENERIC if METHODS[m].single_label}


def plan(seeds: int, modalities: list[str], with_methods: bool, quick: bool) -> list[dict[str, Any]]:
    """Every run, in priority order: per seed the pipelines of every modality and their references; then the
    ablations, seed by seed; then the method presets."""
    if quick:
        return [{"kind": "pipeline", "modality": "oct", "seed": 0},
                {"kind": "reference", "modality": "oct", "seed": 0, "loop": "supervised"},
                {"kind": "reference", "modality": "oct", "seed": 0, "loop": "simclr"},
                {"kind": "method", "modality": "oct", "seed": 0, "method": "moco"}]
    runs: list[dict[str, Any]] = []
    for s in range(seeds):  # seed by seed, each modality's pipeline next to its references, so that a run
        for m in modalities:  # cut short by --budget-min has whole comparisons
            if "methods" in MODALITIES[m]:  # a set for the method presets only
                continue
            runs.append({"kind": "pipeline", "modality": m, "seed": s})
            if MODALITIES[m]["reference"]:
                runs += [{"kind": "reference", "modality": m, "seed": s, "loop": loop}
                         for loop in ("supervised", "simclr")]
    ablations = [{"kind": "ablation", "modality": m, "seed": s, "method": name, "measure": measure,
                  **({"of_method": ABLATION_OF_METHOD[name]} if name in ABLATION_OF_METHOD else {})}
                 for s in range(seeds) for name, (mods, _, measure) in ABLATIONS.items() for m in modalities
                 if m in mods]
    runs += [a for a in ablations if a["measure"] != "segment"]
    if with_methods:
        runs += [{"kind": "method", "modality": m, "seed": s, "method": x} for s in range(seeds) for m in modalities
                 for x in methods_for(m)]
        runs += [a for a in ablations if a["measure"] == "segment"]  # after the dense rows whose checkpoints they use
    return runs


#: modality -> (commit, what changed[, "data" or "recipe"[, the row kinds it touches]]), or a list of such changes:
#: that modality's demo data (or the demo's recipe: its views, budget or loss) changed at the commit, so its rows
#: (of those kinds; default every kind) measured at an earlier commit ran on other data or with another recipe; they
#: are run again and, until then, listed as not run with the reason
Change = tuple[str, ...] | tuple[str, str, str, tuple[str, ...]]
DATA_CHANGED: dict[str, Change | list[Change]] = {
    "fundus": ("cb872ef", "acquisition nuisances 1.6 times and sensor noise 3 times as large"),
    # the data changed at c8b0247 (160 patients instead of 40, the 3D encoder with batch norm), the recipe after it
    "ct": ("b3946d4", "views shifting ±5 HU instead of ±40 HU, and 300 pretraining steps of 32 volumes instead of 150 "
                      "of 8", "recipe"),
    "mri": [("a916bdb", "views with a random affine draw, and 300 pretraining steps of 32 volumes at T = 0.2 instead "
                        "of 150 of 8 at T = 0.1", "recipe"),
            # only the pipeline rows fine-tune with the demo's own settings (the references are plain loops, the
            # method rows and the other ablations measure a linear probe, finetune_layer_decay_0.75 sets both arms)
            ("3ab8fcf", "the fine-tune without layer-wise LR decay, layer_decay 1.0 instead of 0.75", "recipe",
             ("pipeline",)),
            # the pretraining: every row that pretrains with the demo's settings (not the plain reference loops)
            ("b7d85f7", "NT-Xent temperature 0.1 instead of 0.2", "recipe", ("pipeline", "method", "ablation"))],
}
#: every modality's method presets: the encoder a pretraining hands on is the one the linear online probe picks with
#: the one-SE rule (cacbcce), no longer the kNN probe's best; a method row measured before it may have handed on
#: another encoder (ECG SimCLR's seed-0 row at f58a223, run again at d450086 outside the benchmark, did not give the
#: same probe)
SELECTION_RULE: Change = ("cacbcce", "the encoder handed on chosen by the linear online probe with the one-SE rule, "
                          "not by the kNN probe's best", "recipe", ("method",))
for _m in MODALITIES:
    _had = DATA_CHANGED.get(_m, [])
    DATA_CHANGED[_m] = [*([_had] if isinstance(_had, tuple) else _had), SELECTION_RULE]


def stale_reason(row: dict[str, Any], changed: dict[str, Change | list[Change]] = DATA_CHANGED,
                 repo: Path = ROOT) -> str | None:
    """Why a finished row no longer counts: it was measured before a change of its modality's demo data (or recipe)
    that touches its kind of row, or at a commit this repository does not hold (rebased away: it cannot be told from
    one before the change). ``None``: it counts, also when git cannot tell (no git, or the change's own commit
    unknown)."""
    changes = changed.get(row.get("modality", ""))
    commit = (row.get("commit") or "").removesuffix("+dirty")
    if changes is None or not commit:
        return None
    for change in [changes] if isinstance(changes, tuple) else changes:
        if len(change) > 3 and row.get("kind") not in change[3]:
            continue
        if why := _stale_for(change, row["modality"], commit, repo):
            return why
    return None


def _stale_for(change: Change, modality: str, commit: str, repo: Path) -> str | None:
    """:func:`stale_reason` for one change."""
    part = change[2] if len(change) > 2 else "data"

    def git(*args: str) -> int | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=10).returncode
        except (OSError, subprocess.SubprocessError):
            return None

    if git("cat-file", "-e", f"{change[0]}^{{commit}}") != 0:  # no git, or the change unknown: cannot tell
        return None
    if git("cat-file", "-e", f"{commit}^{{commit}}") != 0:
        return (f"not run on the current demo {part}: measured at {commit[:12]}, a commit this repository does not "
                f"hold, so it cannot be told from one before the {modality} demo {part} changed at {change[0]} "
                f"({change[1]})")
    if git("merge-base", "--is-ancestor", change[0], commit) != 1:  # 0: measured on the changed data
        return None
    return (f"not run on the current demo {part}: measured at {commit[:12]}, before the {modality} demo "
            f"{part} changed at {change[0]} ({change[1]})")


def _so_far(todo: list[dict[str, Any]], rows: dict[str, dict], done: dict[str, dict]) -> list[dict[str, Any]]:
    """Every planned run as it stands, in plan order: run by this invocation, kept from the result file (also those
    the loop has not reached yet, and those waiting to be run again — a run stopped now must not lose them), or
    pending."""
    return [rows.get(run_key(x)) or done.get(run_key(x)) or {**x, "key": run_key(x), "skipped": "pending"}
            for x in todo]


def run_key(r: dict[str, Any]) -> str:
    extra = r.get("loop") or r.get("method") or ""
    return "/".join(str(p) for p in (r["kind"], r["modality"], extra, f"seed{r['seed']}") if p != "")


def _demo_raw(mod: str) -> dict[str, Any]:
    from medcl.config import load_raw

    return load_raw(_demo_yaml(mod))


def _demo_method(mod: str) -> str:
    from medcl.pipeline import load_pipeline

    return load_pipeline(_demo_yaml(mod), ["data.manifest=x.csv"]).pretrain.method


def _base_sets(r: dict[str, Any], work: Path, manifest: Path, quick: bool) -> list[str]:
    sets = [f"data.manifest={manifest}", f"seed={r['seed']}", f"runtime.output_dir={work / 'runs'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "runtime.progress=false", "runtime.device=cpu",
            "classify.n_boot=200", "segment.n_boot=200", "segment.overlays=0",
            *MODALITIES[r["modality"]].get("extra", [])]
    return sets


def pipeline_config(r: dict[str, Any], work: Path, manifest: Path, quick: bool) -> Any:
    from medcl.pipeline import load_pipeline

    mod = r["modality"]
    raw = _demo_raw(mod)
    stages = ["pretrain", "classify"] + (["segment"] if "segment" in raw.get("stages", []) else []) + ["calibrate"]
    sets = [*_base_sets(r, work, manifest, quick), f"stages=[{','.join(stages)}]",
            "classify.protocols=[linear,knn,finetune]", "classify.baselines=[random,raw,scratch]",
            f"classify.label_fractions={MODALITIES[mod]['fractions']}", "segment.label_fractions=[0.1,1.0]"]
    if quick:
        sets = [*sets, "classify.label_fractions=[0.5,1.0]", "segment.label_fractions=[0.5,1.0]"]
    return load_pipeline(_demo_yaml(mod), sets, smoke=quick)


def method_config(r: dict[str, Any], work: Path, manifest: Path, quick: bool, source: dict[str, Any] | None = None
                  ) -> Any:
    """The method's preset with the demo's optimiser, learning rate, budget and batch (an ablation: the demo
    pipeline with one recipe fix undone; a ``segment`` ablation: ``source``, the dense row, segmented again)."""
    from medcl.pipeline import load_pipeline

    mod, method = r["modality"], r["method"]
    if r["kind"] == "ablation" and ABLATIONS[method][2] == "segment":
        return _segment_again(r, source, work, manifest, quick)
    if r["kind"] == "ablation" and ABLATIONS[method][2] == "pretrained":
        return _finetune_again(r, source, work, manifest, quick, undo=True)
    if r["kind"] == "ablation" and method in ABLATION_OF_METHOD:
        yaml_path, sets = _method_sets({**r, "kind": "method", "method": ABLATION_OF_METHOD[method]}, work, manifest,
                                       quick)
        return load_pipeline(yaml_path, [*sets, "classify.label_fractions=[1.0]", *ABLATIONS[method][1]], smoke=quick)
    if r["kind"] == "ablation":
        _, undo, measure = ABLATIONS[method]
        stages = (["stages=[classify]", "classify.protocols=[finetune]", "classify.baselines=[scratch]"]
                  if measure == "scratch" else
                  ["stages=[pretrain,classify]", "classify.protocols=[linear]", "classify.baselines=[random]"])
        return load_pipeline(_demo_yaml(mod), [
            *_base_sets(r, work, manifest, quick), *stages, "classify.label_fractions=[1.0]", *undo], smoke=quick)
    yaml_path, sets = _method_sets(r, work, manifest, quick)
    return load_pipeline(yaml_path, sets, smoke=quick)


def source_key(r: dict[str, Any]) -> str | None:
    """The key of the row whose checkpoint an ablation uses (:data:`SOURCE_KIND`), or ``None``."""
    kind = SOURCE_KIND.get(r.get("measure", ""))
    return run_key({**r, "kind": kind[0], "method": kind[1]}) if kind else None


def _checkpoint_of(source: dict[str, Any] | None) -> Path | None:
    """The encoder.pt that ``source``'s run handed on (its run folder is the one of the split it recorded)."""
    return Path(source["split"]).parent / "pretrain" / "encoder.pt" if source and source.get("split") else None


def sources_to_run_again(todo: list[dict[str, Any]], done: dict[str, dict[str, Any]],
                         again: set[str]) -> dict[str, str]:
    """``{source row key: ablation key}`` for each ablation this invocation runs whose source row must run first:
    done but its checkpoint is gone (the work folder was cleaned since), or not done (pending, failed, or stale: its
    demo recipe changed). Such a source runs as early as the earliest ablation reading it, just before it (``--first``
    an ablation runs its source first instead of failing for want of a checkpoint).

    Adds the done ones to ``again``, and to ``again`` as well every finished ablation whose source runs again (its
    numbers belong to the old checkpoint).
    """
    needed: dict[str, str] = {}
    for r in todo:
        key, src = run_key(r), source_key(r)
        if not src or (key in done and key not in again) or src in needed:
            continue
        if src not in done:  # it runs in this invocation anyway (budget allowing): first, then
            needed[src] = key
        elif src not in again:
            weights = _checkpoint_of(done[src])
            if weights is None or not weights.is_file():
                needed[src] = key
    again.update(k for k in needed if k in done)
    again.update(run_key(r) for r in todo if source_key(r) in again and run_key(r) in done)
    return needed


def _encoder_of(r: dict[str, Any], source: dict[str, Any] | None, what: str) -> Path:
    """The encoder.pt that ``source``'s run handed on (:func:`_checkpoint_of`).

    Raises:
        FileNotFoundError: no finished source row, or its run's checkpoint is gone.
    """
    weights = _checkpoint_of(source)
    if weights is None or not weights.is_file():
        raise FileNotFoundError(f"{weights or 'no checkpoint'}: run {source_key(r)} first (this ablation {what} "
                                "its checkpoint again)")
    return weights


def _finetune_again(r: dict[str, Any], source: dict[str, Any] | None, work: Path, manifest: Path, quick: bool,
                    undo: bool) -> Any:
    """A ``pretrained`` ablation's config: ``source``'s (the pipeline row's) encoder fine-tuned again at 10 % and
    100 % of the labels — with ``undo``, with the ablation's settings (the recipe as shipped; no baseline), else with
    the change tried (:data:`TRIED`) and the from-scratch baseline beside it (it does not depend on the change)."""
    from medcl.pipeline import load_pipeline

    weights = _encoder_of(r, source, "fine-tunes")
    return load_pipeline(_demo_yaml(r["modality"]), [
        *_base_sets(r, work, manifest, quick), "stages=[classify]", "classify.protocols=[finetune]",
        f"classify.baselines=[{'' if undo else 'scratch'}]", "classify.label_fractions=[0.1,1.0]",
        f"model.pretrained_path={weights}", *(ABLATIONS[r["method"]][1] if undo else TRIED[r["method"]])],
        smoke=quick)


def _segment_again(r: dict[str, Any], source: dict[str, Any] | None, work: Path, manifest: Path, quick: bool) -> Any:
    """A ``segment`` ablation: the run of ``source`` (the finished ``dense`` row of the same modality and seed)
    segmented again from the encoder.pt it handed on — its run folder is the one of the split it recorded — with the
    ablation's setting and without the from-scratch baseline (the dense row has it).

    Raises:
        FileNotFoundError: no finished dense row, or its run's checkpoint is gone.
    """
    from medcl.pipeline import load_pipeline

    dense = {**r, "kind": "method", "method": "dense"}
    weights = _encoder_of(r, source, "segments")
    yaml_path, sets = _method_sets(dense, work, manifest, quick)
    return load_pipeline(yaml_path, [*sets, "stages=[segment]", f"model.pretrained_path={weights}",
                                     "segment.baseline=false", *ABLATIONS[r["method"]][1]], smoke=quick)


def _method_sets(r: dict[str, Any], work: Path, manifest: Path, quick: bool) -> tuple[Path, list[str]]:
    """The YAML (the demo pipeline with the method preset included) and the settings of a method row."""
    mod, method = r["modality"], r["method"]
    p = _demo_raw(mod)["pretrain"]
    yaml_path = work / f"{mod}-{method}.yaml"
    yaml_path.write_text(f"include: [{_demo_yaml(mod)}, "
                         f"{ROOT / 'configs' / 'method' / (method + '.yaml')}]\nname: demo-{mod}-{method}\n")
    keep = [f"pretrain.{k}={p[k]}" for k in ("optimizer", "lr", "weight_decay", "steps", "epochs", "batch_size",
                                             "temperature") if k in p]
    segment = method in SEGMENTING and "segment" in _demo_raw(mod).get("stages", [])
    # the linear probe at the modality's label fractions (cheap; some presets are for few labels, e.g. oct-severity)
    sets = [*_base_sets(r, work, manifest, quick), *keep, *_own_method_settings(mod, method),
            f"stages=[pretrain,classify{',segment' if segment else ''}]", "classify.protocols=[linear]",
            "classify.baselines=[random]", f"classify.label_fractions={MODALITIES[mod]['fractions']}",
            "segment.label_fractions=[0.1,1.0]", *SPECIFIC.get(method, {}).get(mod, [])]
    return yaml_path, sets


def _own_method_settings(mod: str, method: str) -> list[str]:
    """Overrides that give ``method`` its preset's own options, not the demo method's: the includes merge, so the
    ECG demo's CLOCS options (``positives``, ``cross_view_only``; ``transforms.view_mode: cmsc``) would otherwise
    reach SimCLR, MoCo, … (refused as unknown options, or silently giving them CLOCS's views)."""
    import json

    from medcl.config import load_raw

    if method == _demo_method(mod):
        return []
    own = load_raw(ROOT / "configs" / "method" / f"{method}.yaml")
    out = [f"pretrain.method_options={json.dumps(own.get('pretrain', {}).get('method_options') or {})}"]
    demo_view = _demo_raw(mod).get("transforms", {}).get("view_mode")
    own_view = own.get("transforms", {}).get("view_mode")
    if demo_view is not None and own_view is None:
        out.append("transforms.view_mode=random")  # the ECG preset's default: each view's window drawn on its own
    return out


def _value(row: dict[str, Any], metric: str) -> float | None:
    m = row.get("metrics", {}).get(metric)
    v = m.get("value") if isinstance(m, dict) else None
    return None if v is None else float(v)


def _auroc(row: dict[str, Any]) -> float | None:
    return _value(row, "auroc")


def collect(ctx: Any) -> dict[str, Any]:
    """The figures of one finished pipeline run, read from its stage outputs."""
    out: dict[str, Any] = {"seconds": {k: v.get("seconds") for k, v in ctx.outputs.items()},
                           "method_run": ctx.cfg.pretrain.method, "task": ctx.data.task,
                           "n_patients": len(ctx.data.patient_index), "n_samples": len(ctx.data.records),
                           "split": str(ctx.run_dir / "split.csv")}
    pre = ctx.outputs.get("pretrain") or {}
    out["pretrain"] = {k: pre.get(k) for k in ("final_loss", "selected", "selected_step", "best_probe_auroc",
                                                "best_probe_se", "best_probe_step", "kept_probe_auroc",
                                                "last_probe_auroc", "probe_protocol", "train_seconds", "steps_run",
                                                "images_per_s", "severity_label_spearman")}
    out["pretrain"]["steps"] = ctx.cfg.pretrain.steps
    out["finetune"] = {"steps": ctx.cfg.classify.finetune.steps, "batch": ctx.cfg.classify.finetune.batch_size}
    cls = ctx.outputs.get("classify") or {}
    if cls.get("results"):
        rows = json.loads(Path(cls["results"]).read_text())
        out["classify"] = [{"model": x["model"], "protocol": x["protocol"], "fraction": x["fraction"],
                            "auroc": _auroc(x), "n_train_patients": x.get("n_train_patients"),
                            "balanced_accuracy": _value(x, "balanced_accuracy"),
                            "auroc_per_class": {k.split("/", 1)[1]: _value(x, k) for k in x.get("metrics", {})
                                                if k.startswith("auroc/")},
                            "auroc_pair": {k.split("/", 1)[1]: _value(x, k) for k in x.get("metrics", {})
                                           if k.startswith("auroc_pair/")},
                            **{k: x[k] for k in ("steps", "train_seconds", "images_per_s") if k in x}} for x in rows]
    cal = ctx.outputs.get("calibrate") or {}
    if cal.get("calibration"):
        rep = json.loads(Path(cal["calibration"]).read_text())
        d = rep.get("decision") or {}
        out["calibration"] = {"method": rep.get("method"), "n_bins": rep.get("n_bins"),
                              "ece_before": rep["before"]["ece"], "ece_after": rep["after"]["ece"],
                              "nll_before": rep["before"]["nll"], "nll_after": rep["after"]["nll"],
                              "ece_floor": rep["before"].get("ece_floor"),
                              "ece_floor_q95": rep["before"].get("ece_floor_q95"),
                              "applied": d.get("applied"), "fit_on": d.get("fit_on"), "reason": d.get("reason"),
                              "cv": d.get("cv"), "ece_if_applied": (rep.get("if_applied") or {}).get("ece")}
    seg = ctx.outputs.get("segment") or {}
    if seg.get("results"):
        rows = json.loads(Path(seg["results"]).read_text())
        fg = _foreground_ratio(Path(seg["results"]).with_name("per_case.csv"))
        out["segment"] = [{"model": x["model"], "fraction": x["fraction"],
                           "dice": (x.get("dice_mean") or {}).get("value"),
                           "dice_ci": [(x.get("dice_mean") or {}).get(k) for k in ("ci_low", "ci_high")],
                           "n_test_cases": (x.get("dice_mean") or {}).get("n_cases"),
                           "n_test_patients": (x.get("dice_mean") or {}).get("n_patients"),
                           "fg_ratio": fg.get((x["model"], float(x["fraction"]))),
                           "n_train_patients": x.get("n_train_patients")} for x in rows]
    return out


def _foreground_ratio(per_case: Path) -> dict[tuple[str, float], float]:
    """Predicted over true foreground voxels, summed over the test cases, per (model, fraction): below 1 the network
    under-segments (a start that predicts background where the lesions are scores a low Dice for that reason)."""
    import csv

    if not per_case.is_file():
        return {}
    sums: dict[tuple[str, float], list[float]] = {}
    with per_case.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("fg_voxels_true") and row.get("fg_voxels_pred"):
                acc = sums.setdefault((row["model"], float(row["fraction"])), [0.0, 0.0])
                acc[0] += float(row["fg_voxels_pred"])
                acc[1] += float(row["fg_voxels_true"])
    return {k: p / t for k, (p, t) in sums.items() if t > 0}


def run_pipeline_kind(r: dict[str, Any], work: Path, manifest: Path, quick: bool,
                      source: dict[str, Any] | None = None) -> dict[str, Any]:
    from medcl.pipeline import run_pipeline

    cfg = (pipeline_config(r, work, manifest, quick) if r["kind"] == "pipeline" else
           method_config(r, work, manifest, quick, source))
    ctx = run_pipeline(cfg, smoke=quick)
    out = collect(ctx)
    if r.get("measure") == "pretrained":  # and the change tried, from the same encoder
        out["with_fix"] = collect(run_pipeline(_finetune_again(r, source, work, manifest, quick, undo=False),
                                               smoke=quick))
    if r["modality"] == "fundus-lt":  # the set's design: which grade is the rare one the claims are about
        from medcl.data.synth import fundus_lt

        out["long_tail"] = {"rare": fundus_lt.RARE, "shares": dict(zip(fundus_lt.CLASSES, fundus_lt.SHARES))}
    return out


def _split_file(r: dict[str, Any], pipeline_row: dict[str, Any], manifest: Path, work: Path,
                quick: bool) -> tuple[str, bool]:
    """``(the pipeline run's split.csv, False)``, or, when its run folder is gone, ``(the same split rebuilt, True)``.

    The split depends only on the manifest, the seed and the data settings: it is made again with the pipeline run's
    config (``prepare_data``; rows and splits, the only columns the plain loops read).
    """
    path = Path(pipeline_row["split"])
    if path.is_file():
        return str(path), False
    from medcl.data.prepare import prepare_data
    from medcl.data.splits import save_split

    data = prepare_data(pipeline_config({"kind": "pipeline", "modality": r["modality"], "seed": r["seed"]}, work,
                                        manifest, quick))
    out = work / "splits" / f"{r['modality']}-seed{r['seed']}.csv"
    save_split(out, data.records, data.assignment)
    return str(out), True


def run_reference(r: dict[str, Any], pipeline_row: dict[str, Any] | None, manifest: Path, work: Path,
                  quick: bool) -> dict[str, Any]:
    """A plain loop on the pipeline run's split, with that run's budget, batch and architecture."""
    from medcl.pipeline import load_pipeline

    if not pipeline_row or "split" not in pipeline_row:
        raise RuntimeError(f"the pipeline run of {r['modality']} seed {r['seed']} did not finish: no split to use")
    cfg = load_pipeline(_demo_yaml(r["modality"]), [f"data.manifest={manifest}"])
    if r["loop"] == "supervised":
        steps, batch = pipeline_row["finetune"]["steps"], cfg.classify.finetune.batch_size
    else:
        steps, batch = pipeline_row["pretrain"]["steps"], cfg.pretrain.batch_size
    if not steps and not quick:
        raise RuntimeError(f"the {r['modality']} demo gives no step budget (pretrain.steps / classify.finetune.steps)")
    steps = 3 if quick else steps
    column = cfg.data.label_column
    grid = (cfg.transforms.model_extra or {}).get("spatial_size", [64])  # 2D [H, W]; 3D [x, y, z]
    size, depth = grid[0], (grid[2] if len(grid) == 3 else 16)
    out = work / "reference" / f"{run_key(r).replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    split, rebuilt = _split_file(r, pipeline_row, manifest, work, quick)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reference" / f"{r['loop']}.py"), "--manifest", str(manifest),
           "--split", split, "--modality", r["modality"], "--label-column", column,
           "--classes", ",".join(cfg.data.classes or []), "--steps", str(steps), "--batch", str(batch),
           "--seed", str(r["seed"]), "--size", str(size), "--depth", str(depth), "--out", str(out),
           "--output-stride", str((cfg.model.options or {}).get("output_stride", 32))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200,
                          cwd=ROOT / "benchmarks" / "reference")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    return {"result": json.loads(out.read_text()), **({"split_rebuilt": True} if rebuilt else {})}


class Stopped(Exception):
    """SIGTERM reached the benchmark outside a pipeline (inside one, the pipeline raises its own error)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped("the benchmark was terminated (SIGTERM)")


def terminated(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it came from) is the benchmark being stopped by SIGTERM — not a failed run.

    A pipeline turns SIGTERM into a ``DistributedError`` ("... terminated (SIGTERM)"), which a stage may wrap.
    """
    from medcl.errors import DistributedError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, Stopped) or (isinstance(exc, DistributedError) and "(SIGTERM)" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="OCT on 24 patients, a few steps per stage")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    parser.add_argument("--no-methods", action="store_true", help="leave the method presets out of the plan")
    parser.add_argument("--budget-min", type=float, default=24 * 60.0,
                        help="start no new run after this many minutes (the rest are listed as not run; a re-run "
                             "continues)")
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in --out")
    parser.add_argument("--redo", nargs="+", default=[], choices=list(MODALITIES), metavar="MODALITY",
                        help="run these modalities' finished medcl runs again (their recipe changed; the plain "
                             "reference loops do not depend on it and are kept); the others' finished runs are kept, "
                             "each row with the commit it ran at")
    parser.add_argument("--rerun", nargs="+", default=[], metavar="PREFIX",
                        help="run the finished runs whose key starts with one of these again (e.g. "
                        "method/oct/oct-severity/seed0 after the method rows gained the few-label probes)")
    parser.add_argument("--first", nargs="+", default=[], metavar="PREFIX",
                        help="run the pending runs whose key starts with one of these before the others, in the "
                        "order given (a kind: method; or a key's start: method/oct/micle); the plan and the result "
                        "file's order stay the same")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "quality")
    args = parser.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    todo = plan(args.seeds, args.modalities, not args.no_methods, args.quick)
    done = finished_rows(args.out, args.quick, args.fresh)
    stale = {k: why for k, x in done.items() if (why := stale_reason(x))}  # run again: their data changed since
    done = {k: x for k, x in done.items() if k not in stale}
    again = {k for k, x in done.items()  # run again; their old rows stay until the new ones are written
             if (x.get("modality") in args.redo and x.get("kind") != "reference")
             or any(k.startswith(p) for p in args.rerun)}
    first_for = sources_to_run_again(todo, done, again)  # a source row is ordered as its ablation is
    commit = git_commit()  # the code every run of this invocation uses (a later commit does not change it)
    meta = {**base_meta(args.quick), "seeds": args.seeds, "budget_min": args.budget_min,
            "plan": [run_key(r) for r in todo],
            "not_applicable": {f"{m}/{x}": why for m in args.modalities if not args.quick
                               for x, why in not_applicable(m).items()}}
    from medcl.data.synth import synthesize

    signal.signal(signal.SIGTERM, _on_sigterm)  # a pipeline installs its own while it runs, and restores this one
    rows: dict[str, dict] = {}
    def rank(key: str) -> int:
        return next((k for k, p in enumerate(args.first) if key.startswith(p)), len(args.first))

    def priority(i: int) -> tuple[int, int]:
        key = run_key(todo[i])
        if key in first_for:  # a source that must run first: as early as the earliest of the ablations reading it
            return min(rank(key), *(rank(run_key(r)) for r in todo if source_key(r) == key)), i
        return rank(key), i

    for i in sorted(range(len(todo)), key=priority):
        r = todo[i]
        key = run_key(r)
        elapsed = (time.time() - t0) / 60
        if key in done and (key not in again or elapsed > args.budget_min):  # a row to run again that the budget
            rows[key] = done[key]  # does not reach keeps its old result (and its commit)
            continue
        if elapsed > args.budget_min:
            rows[key] = {**r, "key": key,
                         "skipped": stale.get(key) or f"not run: the {args.budget_min:g}-minute budget was spent"}
            continue
        print(f"# quality [{i + 1}/{len(todo)}] {key}, {elapsed:.1f} min elapsed", file=sys.stderr, flush=True)
        data_dir = work / "data"
        manifest = data_dir / r["modality"] / "manifest.csv"
        if not manifest.is_file():
            synthesize(data_dir, modalities=[r["modality"]], patients=24 if args.quick else None, seed=0)
        t1 = time.time()
        try:
            if r["kind"] == "reference":
                pk = run_key({"kind": "pipeline", "modality": r["modality"], "seed": r["seed"]})
                pipe = rows.get(pk) or done.get(pk)  # --first may put a reference before its finished pipeline
                res = run_reference(r, pipe, manifest, work, args.quick)
            else:
                src = source_key(r)
                res = run_pipeline_kind(r, work, manifest, args.quick, rows.get(src) or done.get(src) if src else None)
            rows[key] = {**r, "key": key, "commit": commit, "wall_s": round(time.time() - t1, 1), **res}
        except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others still run
            if terminated(exc):  # asked to stop: not a result; the run stays pending (or keeps its old row)
                print(f"# quality: stopped by SIGTERM during {key}; it is not recorded", file=sys.stderr, flush=True)
                write_results(args.out, meta, _so_far(todo, rows, done), t0)
                return 128 + signal.SIGTERM
            traceback.print_exc()
            rows[key] = {**r, "key": key, "commit": commit, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
        write_results(args.out, meta, _so_far(todo, rows, done), t0)
    write_results(args.out, meta, [rows[run_key(r)] for r in todo], t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
