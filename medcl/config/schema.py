"""Typed schema of a pipeline YAML.

Every section rejects unknown keys (``extra="forbid"``) so a typo fails before training.
``transforms`` is the one open section: its extra keys are parameters of the modality
preset, checked by :func:`medcl.transforms.build_transforms` against the preset.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medcl.modalities import Modality

Task = Literal["binary", "multiclass", "multilabel", "ordinal"]
StageName = Literal["pretrain", "classify", "segment", "detect", "slides", "fuse", "calibrate", "report"]
#: the order stages always run in, whatever order the YAML lists them
STAGE_ORDER: tuple[str, ...] = ("pretrain", "classify", "segment", "detect", "slides", "fuse", "calibrate", "report")


def _check_fractions(v: list[float]) -> list[float]:
    """Label fractions of training patients: each in (0, 1], sorted, unique."""
    for f in v:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"label fraction {f} is not in (0, 1]")
    return sorted(set(v))


class Section(BaseModel):
    """Base of every config section: unknown keys are an error and assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WsiConfig(Section):
    """How the whole-slide images of a manifest are cut into tiles (``data.wsi``; rows pointing at a slide).

    Exactly one of ``magnification``, ``mpp`` or ``level`` chooses the resolution (none: level 0).
    """

    magnification: float | None = Field(None, gt=0.0, description="objective power of the tiles, e.g. 20 "
                                         "(read from the nearest finer pyramid level and resized)")
    mpp: float | None = Field(None, gt=0.0, description="microns per pixel of the tiles (10 / mpp = magnification)")
    level: int | None = Field(None, description="pyramid level to cut tiles from (-1 = smallest)")
    tile_size: int = Field(224, ge=8, description="tile side in pixels (at the chosen resolution)")
    stride: int | None = Field(None, ge=1, description="step between tiles in pixels (default tile_size: no "
                               "overlap)")
    min_tissue: float = Field(0.5, ge=0.0, le=1.0, description="minimum tissue fraction of a tile (Otsu on "
                              "saturation at the smallest level)")
    max_tiles: int | None = Field(None, ge=1, description="at most this many tiles per slide (default: all)")
    sampling: Literal["grid", "random"] = Field("grid", description="which tiles max_tiles keeps: evenly spread "
                                                "over the slide's tissue (grid) or drawn at random (seeded by the "
                                                "run's seed and the slide)")

    @model_validator(mode="after")
    def _one_resolution(self) -> WsiConfig:
        given = [k for k in ("magnification", "mpp", "level") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"data.wsi sets {' and '.join(given)}: choose one (magnification, mpp or level)")
        return self


class DataConfig(Section):
    """Where the data is and how it is split and loaded."""

    manifest: str | None = Field(None, description="CSV or MONAI datalist JSON (paths relative to it)")
    root: str | None = Field(None, description="dataset root; paths may not escape it (default: manifest folder)")
    modality: Modality | None = Field(None, description="keep only rows of this modality")
    classes: list[str] | None = Field(None, description="class names in order; default: sorted labels found")
    task: Task = "multiclass"
    label_column: str = Field("label", description="manifest column holding the label (e.g. class_name)")
    label_sep: str = Field(";", description="separator of multi-label labels")
    report_column: str = Field("report", description="manifest column of free-text reports (optional): the text is "
                               "de-identified as the manifest is read (names, dates, record and phone numbers, the "
                               "patient ids) and only the scrubbed text is kept; never a subgroup")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="stop before training on bad rows, or skip them (listed and logged)"
    )
    validate_files: bool = Field(True, description="read every file before training")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    stratify: bool = True
    split_file: str | None = Field(None, description="a split.csv medcl wrote (row, patient, split): every patient "
                                   "keeps the split it has there (a fixed split across runs; the fuse stage hands its "
                                   "split to each modality's pretraining this way); a patient missing from it is an "
                                   "error")
    cache: Literal["none", "memory", "disk"] = "none"
    cache_dir: str | None = None
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    persistent_workers: bool = Field(
        True, description="keep the training loaders' worker processes between epochs (no start-up wait each "
        "epoch; batches are the same either way)")
    reader_options: dict[str, Any] = Field(default_factory=dict, description="keyword options of every read, in "
                                           "validation and in training (e.g. {series: 0} for DICOM folders holding "
                                           "several series; a manifest `series` column chooses per row)")
    max_voxels: int | None = Field(
        2**29, ge=1, description="largest sample in values (channels × voxels; 2**29 = 2 GiB as float32) read into "
        "memory; larger files are rejected before training, naming the file and its size (null: no limit)")
    wsi: WsiConfig = Field(default_factory=WsiConfig, description="tiling of rows that point at a whole-slide "
                           "image (SVS, NDPI, MRXS, pyramidal TIFF)")
    synth_patients: int | None = Field(None, ge=2, description="`medcl demo` only: patients per modality it "
                                       "synthesises when its data folder is empty (default: the demo set's own)")


class ModelConfig(Section):
    """The encoder and its projection head."""

    encoder: str = "resnet18"
    in_channels: int = Field(1, ge=1)
    spatial_dims: Literal[1, 2, 3] = 2
    pretrained_path: str | None = Field(None, description="local weights file, or the runs:/ or models:/ URI of a "
                                        "model medcl logged to your tracking store (a pretrain stage's encoder, a "
                                        "calibrate stage's model); never downloaded from a hub")
    options: dict[str, Any] = Field(default_factory=dict, description="extra encoder arguments")
    proj_hidden_dim: int = Field(512, ge=1)
    proj_dim: int = Field(128, ge=1)


class TransformsConfig(BaseModel):
    """Modality preset name plus its parameters (checked against the preset)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    preset: str = "oct"
    augment_on: Literal["sample", "batch"] = Field(
        "sample", description="where training augmentations run: 'sample' = MONAI transforms per sample in the "
        "DataLoader (every preset); 'batch' = whole batches on the training device with vectorised torch ops "
        "(oct, fundus, histo: faster on few CPU cores; on the OCT demo it learns as well as 'sample' on the seeds "
        "measured, so the OCT demo ships it; fundus and histo are not measured yet: benchmarks/README.md, section 4d)")


class PretrainConfig(Section):
    """Contrastive pretraining (the ``pretrain`` stage)."""

    method: str = "simclr"
    method_options: dict[str, Any] = Field(default_factory=dict, description="method/loss arguments")
    temperature: float = Field(0.1, gt=0.0)
    epochs: int = Field(10, ge=1, description="passes over the training data (unused when pretrain.steps is set)")
    steps: int | None = Field(None, ge=1, description="budget in optimiser steps (small data sets: set it from the "
                              "online probe's convergence); when set, pretrain.epochs is not used")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs)")
    batch_size: int = Field(64, ge=2)
    batches: Literal["auto", "shuffle", "patients"] = Field(
        "auto", description="how training batches are formed: shuffle (samples in random order), patients "
        "(P patients x K samples each, K = pretrain.samples_per_patient: several images of one patient per batch, "
        "for same-patient positives), auto (patients for methods whose positives are other images of the patient, "
        "micle; shuffle otherwise)")
    samples_per_patient: int = Field(4, ge=1, description="K of pretrain.batches: patients (the per-process batch "
                                     "must be a multiple of it); not used with shuffled batches")
    views: int = Field(2, ge=2)
    optimizer: Literal["adamw", "lars", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear LR warmup, in epochs (unused when "
                                 "pretrain.warmup_steps is set)")
    warmup_steps: int | None = Field(None, ge=0, description="linear LR warmup in optimiser steps; use it with a "
                                     "step budget (small data: one epoch can be a handful of steps), e.g. 10 % of "
                                     "pretrain.steps; when set, pretrain.warmup_epochs is not used")
    amp: Literal["off", "bf16", "fp16"] = "off"
    grad_accum: int = Field(1, ge=1)
    clip_grad: float | None = Field(None, gt=0.0)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = Field(False, description="synchronise BatchNorm statistics across the processes of a torchrun "
                          "job (SyncBatchNorm; no effect in a single process)")
    checkpoint_every_steps: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    probe: bool = Field(True, description="online probe on the labelled validation patients, and effective "
                        "rank (collapse), while pretraining")
    probe_protocol: Literal["linear", "knn"] = Field(
        "linear", description="the online probe whose validation AUROC selects the encoder handed on: linear — the "
        "classify stage's linear probe (logistic regression, C by patient-grouped CV), so it tracks the reported "
        "figure; knn — a weighted cosine kNN, cheaper (always logged too, as probe/knn_auroc)")
    probe_every_steps: int | None = Field(None, ge=1, description="probe every N optimiser steps (default: 10 "
                                          "probes per run)")
    select: Literal["best_probe", "last"] = Field(
        "best_probe", description="which encoder to hand on: best_probe — by the online probe's validation AUROC, "
        "the latest encoder within one bootstrap standard error of the best (the one-SE rule: an earlier peak wins "
        "only by more than the probe's noise); last — the last (always the last when there are no labelled "
        "validation patients)")


class FinetuneConfig(Section):
    """The ``finetune`` classification protocol (``classify.finetune``): optimiser, budget, LRs, checkpoints."""

    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd: momentum 0.9, L2 weight decay")
    epochs: int = Field(10, ge=1, description="passes over the labelled training data (unused when steps is set)")
    steps: int | None = Field(None, ge=1, description="budget in optimiser steps, the same for every label fraction "
                              "and start; when set, epochs is not used")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    layer_decay: float = Field(0.75, gt=0.0, le=1.0, description="layer-wise LR decay of the pretrained encoder "
                               "(BEiT); never applied to the from-scratch baseline")
    batch_size: int = Field(32, ge=1)
    head_init: Literal["random", "probe"] = Field(
        "random", description="the head of a pretrained encoder's fine-tune: random — N(0, 0.01²); probe — a linear "
        "probe fitted on the frozen encoder's features of the same labelled patients (LP-FT, Kumar et al. 2022; "
        "measured against random on the demos in benchmarks/README.md). The from-scratch baseline's head is always "
        "random")
    max_steps: int | None = Field(None, ge=1)
    warmup_steps: int | None = Field(None, ge=0, description="linear LR warmup in optimiser steps (default: half an "
                                     "epoch, which with few labels can be no warmup at all)")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every this many steps (always at each epoch end); --resume continues")
    keep_checkpoints: int = Field(2, ge=1)


class ClassifyConfig(Section):
    """Downstream classification on the pretrained encoder."""

    protocols: list[Literal["linear", "knn", "finetune"]] = Field(default_factory=lambda: ["linear"])
    label_fractions: list[float] = Field(
        default_factory=lambda: [1.0], description="shares of the training patients with labels (nested: 1 % ⊂ 10 % "
        "⊂ 100 %, stratified by class); a small share is raised to the patients needed for every class, or for "
        "multilabel every label present and absent")
    baselines: list[Literal["random", "raw", "scratch"]] = Field(
        default_factory=lambda: ["random"],
        description="random: probe on a random-init encoder; raw: probe on pixels; scratch: fine-tune from scratch",
    )
    probe: Literal["sklearn", "torch"] = "sklearn"
    prompts: dict[str, list[str]] = Field(
        default_factory=dict, description="zero-shot classification after clip pretraining: class -> prompt texts "
        "(averaged); a class left out gets '<class>.' and 'findings of <class>.'")
    knn_k: int = Field(20, ge=1)
    pairs: list[list[str]] | None = Field(
        None, description="multiclass/ordinal: class pairs whose own one-vs-one AUROC is reported next to the macro "
        "AUROC (Hand & Till 2001; e.g. [[stroma, normal]] for two look-alike tissues); default: the hard pairs of a "
        "supcon-hardneg pretraining, else none; [] for none")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    operating_point: str = Field("youden", description="binary tasks: the threshold chosen on the validation "
                                 "patients — youden, sensitivity>=0.9 or specificity>=0.95 (any target in (0, 1])")
    n_boot: int = Field(1000, ge=1)

    _fractions = field_validator("label_fractions")(classmethod(lambda cls, v: _check_fractions(v)))

    @field_validator("operating_point")
    @classmethod
    def _rule(cls, v: str) -> str:
        rule = str(v).replace(" ", "").lower()
        m = re.fullmatch(r"(sensitivity|specificity)>=(0?\.\d+|1(\.0*)?)", rule)
        if rule != "youden" and m is None:
            raise ValueError(f"unknown operating point {v!r}: use youden, sensitivity>=0.9 or specificity>=0.95 "
                             "(a target in (0, 1])")
        return rule


class SegmentConfig(Section):
    """Downstream segmentation (the ``segment`` stage, :mod:`medcl.stages.segment`)."""

    network: Literal["unet", "basic_unet", "swin_unetr", "encoder_unet"] = Field(
        "encoder_unet",
        description="encoder_unet: U-Net decoder on the pretrained encoder; basic_unet/swin_unetr take a pretrained "
        "unet_encoder/swin_unetr_encoder; unet: MONAI UNet from scratch only",
    )
    network_options: dict[str, Any] = Field(default_factory=dict, description="extra network arguments")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd: momentum 0.9, L2 weight decay")
    epochs: int = Field(20, ge=1, description="passes over the training data (unused when steps is set)")
    steps: int | None = Field(None, ge=1, description="budget in optimiser steps; when set, epochs is not used")
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    warmup_steps: int | None = Field(None, ge=0, description="linear LR warmup in optimiser steps (default: half an "
                                     "epoch)")
    batch_size: int = Field(4, ge=1)
    num_classes: int = Field(2, ge=2, description="including background")
    class_names: list[str] | None = Field(None, description="mask class names incl. background (default 0, 1, ...)")
    roi_size: list[int] | None = Field(None, description="sliding-window size (default: transforms.spatial_size)")
    eval_spatial_size: list[int] | None = Field(
        None, description="crop/pad size of evaluation images (default: transforms.spatial_size); make it larger "
        "than roi_size to cover whole volumes with sliding windows")
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="sliding-window overlap")
    sw_batch_size: int = Field(4, ge=1)
    label_fractions: list[float] = Field(
        default_factory=lambda: [1.0], description="shares of the training patients whose masks train the "
        "networks (nested, whole patients); a share below 1 starts with patients whose masks between them have "
        "every foreground class both present and absent, so it can be larger than asked")
    baseline: bool = Field(True, description="also train from scratch for comparison")
    pretrained_decoder: bool = Field(
        True, description="encoder_unet starts from the decoder pretrained with the encoder when the checkpoint has "
        "one (pretrain.method dense with decoder: true); false: only the encoder is pretrained, the decoder starts "
        "random")
    n_boot: int = Field(1000, ge=0, description="patient-level bootstrap resamples for the mean-Dice CI")
    overlays: int = Field(4, ge=0, description="overlay PNGs of test cases to save")

    _fractions = field_validator("label_fractions")(classmethod(lambda cls, v: _check_fractions(v)))

    @model_validator(mode="after")
    def _names(self) -> SegmentConfig:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes} "
                             "(background included)")
        return self


class DetectConfig(Section):
    """One-class detection of a rare finding (the ``detect`` stage): "normal" is learnt from normal samples only."""

    normal_class: str | None = Field(None, description="the class of data.classes that is normal (required when "
                                     "the stage runs); every other class is the finding to detect")
    scorers: list[Literal["dsvdd", "knn"]] = Field(
        default_factory=lambda: ["dsvdd", "knn"],
        description="dsvdd: Deep SVDD (Ruff et al. 2018) on the encoder's features; knn: mean cosine distance to "
        "the k nearest normal training samples")
    baselines: list[Literal["random"]] = Field(
        default_factory=lambda: ["random"], description="random: the same scorers on a random-init encoder")
    specificity: float = Field(0.95, gt=0.0, lt=1.0, description="the threshold is set on the validation normal "
                               "samples for this specificity; test sensitivity and specificity are reported there")
    k: int = Field(5, ge=1, description="neighbours of the knn scorer")
    dsvdd_hidden: list[int] = Field(default_factory=lambda: [128, 32], description="widths of Deep SVDD's "
                                    "bias-free MLP on the encoder's features")
    dsvdd_epochs: int = Field(50, ge=1)
    dsvdd_lr: float = Field(1e-3, gt=0.0)
    dsvdd_weight_decay: float = Field(1e-6, ge=0.0)
    n_boot: int = Field(1000, ge=10, description="patient-bootstrap resamples of the CIs")


class SlidesConfig(Section):
    """Slide-level classification from tile features (the ``slides`` stage): attention MIL and mean pooling."""

    poolings: list[Literal["attention", "mean"]] = Field(
        default_factory=lambda: ["attention", "mean"], description="attention: gated attention MIL (Ilse et al. "
        "2018); mean: the mean of the tile embeddings (baseline)")
    baselines: list[Literal["random", "scratch"]] = Field(
        default_factory=lambda: ["random", "scratch"], description="random: the same poolings on a random-init "
        "encoder's tiles; scratch: a random-init encoder trained end to end with each pooling on the slide labels "
        "(no pretraining, no ImageNet)")
    hidden: int = Field(128, ge=1, description="size of the tile embedding")
    attention_dim: int = Field(64, ge=1, description="hidden size of the gated attention")
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    epochs: int = Field(30, ge=1, description="passes over the training slides (one slide per optimiser step)")
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    label_fractions: list[float] = Field(default_factory=lambda: [1.0], description="shares of the training "
                                         "patients whose slides train the poolings (nested, stratified; every "
                                         "class kept)")
    n_boot: int = Field(1000, ge=10, description="patient-bootstrap resamples of the CIs")
    scratch_steps: int = Field(300, ge=1, description="optimiser steps of the end-to-end scratch baseline (one "
                               "training slide per step)")
    scratch_tiles: int = Field(16, ge=1, description="tiles drawn (and augmented) from the step's slide by the "
                               "scratch baseline")
    scratch_lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the scratch baseline (encoder and "
                              "pooling)")
    calibration: Literal["temperature", "none"] = Field(
        "temperature", description="post-hoc calibration of each slide model (full labels): temperature scaling "
        "fitted on the validation slides and out-of-fold logits over the training slides, applied only when it "
        "lowers the NLL (and does not raise the ECE) on held-out folds")
    calibration_folds: int = Field(5, ge=2, description="patient-grouped folds of the out-of-fold logits and of the "
                                   "check that calibration helps")

    _fractions = field_validator("label_fractions")(classmethod(lambda cls, v: _check_fractions(v)))


class FuseModality(Section):
    """One modality of a fusion pipeline (``fuse.modalities.<modality>``): its pipeline and its encoder."""

    pipeline: str = Field(description="the modality's pipeline YAML (its transforms, model and pretraining); a "
                          "relative path is looked up from the working folder, then in medcl's pipelines/ folder")
    encoder: str | None = Field(None, description="a trained encoder of that pipeline (encoder.pt, or a runs:/ or "
                                "models:/ URI); none: the pipeline's pretrain stage runs first, on this pipeline's "
                                "manifest rows of the modality and its training patients")
    set: list[str] = Field(default_factory=list, description="--set overrides of that pipeline (e.g. "
                           "[pretrain.steps=200])")


class FuseConfig(Section):
    """Multimodal fusion (the ``fuse`` stage): a patient classified from all of its modalities, with learned gates."""

    modalities: dict[str, FuseModality] = Field(default_factory=dict, description="modality (the manifest's "
                                                "modality column) -> its pipeline and encoder; two or more")
    hidden: int = Field(64, ge=1, description="size each modality's embedding is projected to")
    gate_dim: int = Field(32, ge=1, description="query/key size of the attention gates")
    gated: bool = Field(True, description="learned gates (attention with a NULL option, Gated Symile); false: every "
                        "present modality counts fully (plain late fusion)")
    modality_dropout: float = Field(0.3, ge=0.0, lt=1.0, description="training: each modality of a patient is "
                                    "dropped with this probability (never all)")
    corrupt_prob: float = Field(0.1, ge=0.0, lt=1.0, description="training: each modality of a patient is replaced "
                                "with another patient's with this probability (mislinked), so the gates learn to "
                                "down-weight an input that does not fit the others")
    degraded: bool = Field(True, description="also embed every image degraded (blurred 4x and noisy: an ungradable "
                           "examination), train with it (degrade_prob) and test with each modality degraded")
    degrade_prob: float = Field(0.1, ge=0.0, lt=1.0, description="training: each modality of a patient is replaced "
                                "by its degraded examination with this probability (with degraded: true)")
    steps: int = Field(400, ge=1, description="optimiser steps of the fusion head (and of each baseline)")
    select_on: Literal["validation", "last"] = Field(
        "validation", description="which weights each head keeps: those of the step with the lowest loss on the "
        "validation patients (checked every steps/40 steps), or the last step's")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    baselines: list[Literal["single", "ungated"]] = Field(
        default_factory=lambda: ["single", "ungated"], description="single: one head per modality on that modality "
        "alone; ungated: the same fusion without gates, trained alike")
    require_all: bool = Field(False, description="stop when a patient lacks a modality (default: such patients are "
                              "listed and classified from the modalities they have)")
    n_boot: int = Field(1000, ge=10, description="patient-bootstrap resamples of the CIs")


class CalibrateConfig(Section):
    """Post-hoc calibration of the classifier's probabilities (the ``calibrate`` stage)."""

    method: Literal["temperature", "vector", "dirichlet"] = "temperature"
    n_bins: int = Field(15, ge=2)
    fit_on: Literal["auto", "validation", "cross_fit"] = Field(
        "auto", description="what the calibrator is fitted on: the validation patients, or those plus out-of-fold "
        "logits over the training patients (patient-grouped cross-fitting: the primary model is re-trained on "
        "`folds` subsets); auto cross-fits when there are fewer than min_val_patients validation patients")
    min_val_patients: int = Field(50, ge=1, description="auto: fewer validation patients than this → cross-fit")
    folds: int = Field(5, ge=2, description="folds of the cross-fitting and of the check that calibration helps")
    min_gain_se: float = Field(1.0, ge=0.0, description="the held-out NLL must fall by more than this many "
                               "patient-level standard errors of the fall for the calibrator to be applied (one-SE "
                               "rule; 0 = any fall): a gain within noise is not taken (the slides stage's "
                               "calibration too)")
    target_smoothing: Literal["none", "platt"] = Field(
        "none", description="the calibrator's fit targets: none = the labels (Guo et al. 2017); platt = Platt's "
        "(1999) out-of-sample targets, (n + 1) / (n + 2) for a class seen n times, which keep the temperature finite "
        "on a calibration set without a single error (on the labels it sharpens the logits without bound) but cap "
        "the confidence near that value (the slides stage's calibration too)")


class ReportConfig(Section):
    """The HTML report (the ``report`` stage)."""

    out: str | None = Field(None, description="HTML path (default: run folder/report.html)")


class TrackingConfig(Section):
    """MLflow tracking: experiment, server, retries on a flaky server, model registry name."""

    experiment: str = "medcl"
    uri: str | None = Field(None, description="overrides MLFLOW_TRACKING_URI")
    retries: int = Field(3, ge=0)
    retry_wait_s: float = Field(2.0, ge=0.0)
    register_model: str | None = Field(None, description="registry name for the final model")


class RuntimeConfig(Section):
    """How a run executes: device, output folder, determinism, progress, checkpoint cadence, DDP timeout."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = Field("medcl-runs", description="run folders (checkpoints, split, config)")
    deterministic: bool = False
    progress: bool = True
    checkpoint_every_s: float = Field(
        300.0, ge=0.0, description="epoch-end checkpoints closer together than this are skipped (small data sets "
        "have epochs of a few steps); the last one, and every *.checkpoint_every_steps, are always written")
    dist_timeout_s: float = Field(
        300.0, gt=0.0, description="under torchrun: seconds a rank waits in a collective for the others before the "
        "run stops with a clear error (gloo and NCCL); rank-0-only work (probes, calibration, report) is not "
        "limited by it")


class PipelineConfig(Section):
    """One end-to-end pipeline: what a user runs with ``medcl run``."""

    name: str
    description: str = ""
    seed: int = 0
    stages: list[StageName] = Field(default_factory=lambda: ["pretrain", "classify", "calibrate"])
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    transforms: TransformsConfig = Field(default_factory=TransformsConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    slides: SlidesConfig = Field(default_factory=SlidesConfig)
    fuse: FuseConfig = Field(default_factory=FuseConfig)
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _order_stages(self) -> PipelineConfig:
        seen = [s for s in STAGE_ORDER if s in self.stages]
        if seen != list(self.stages):
            object.__setattr__(self, "stages", seen)
        return self
