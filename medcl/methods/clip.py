"""CLIP-style pretraining of an image (2D, 3D) or ECG encoder against the reports written about each sample.

Radford et al. 2021 ("Learning Transferable Visual Models From Natural Language Supervision"); for ECGs and their
reports, the setting of ECGCLIP and MERL (Liu et al. 2024). The image encoder and a text encoder each get a
projection to a shared space; :class:`~medcl.losses.clip.CLIPLoss` aligns every sample with its own report
(symmetric InfoNCE, learnable temperature, negatives from every rank), or — ``soft_targets`` — with every report
of its class (Ultrasound-CLIP's soft labels, here with the identity class similarity or ``class_similarity``).

Text encoders (:mod:`medcl.text.encoders`): ``text_encoder: project`` — a WordPiece tokenizer trained on the
training split's de-identified reports and a small transformer trained from scratch with the image encoder;
or the path of a local Hugging Face model folder (fine-tuned with the rest, nothing downloaded).

What differs from the papers: each of the loader's ``V`` augmented views of a sample is aligned with its report (the
mean of ``V`` CLIP losses; CLIP used one view per image), linear projections on both sides (CLIP's), a text encoder far smaller than CLIP's 63M-parameter transformer (the demo reports are short and
formulaic); MERL's cross-modal alignment of ECG and text beyond the CLIP loss is not implemented.

Batch: ``views`` ``(B, V, C, *S)``, ``report`` (``B`` de-identified strings), ``label`` for soft targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medcl.errors import ConfigError, DataError
from medcl.losses.clip import CLIPLoss
from medcl.methods.base import Method
from medcl.networks.base import Encoder
from medcl.text.encoders import HFTextEncoder, ProjectTextEncoder, train_tokenizer


class CLIPPretrain(Method):
    """Image (or signal) encoder and text encoder aligned by CLIP's loss.

    Args:
        encoder: the image/signal backbone.
        reports: the training split's de-identified reports (the project tokenizer is trained on them).
        text_encoder: ``project`` (tokenizer + small transformer trained here) or a local Hugging Face folder.
        text_dim, text_depth, text_heads, text_max_len: the project transformer's size.
        vocab_size: the project tokenizer's vocabulary.
        out_dim: the shared embedding size (both projections).
        temperature: the loss's initial temperature (CLIP: 0.07; learnt unless ``learn_temperature`` is off).
        learn_temperature: train the temperature.
        soft_targets: same-class reports are positives too (needs one label per sample).
        class_similarity: ``(K, K)`` similarity of the classes for the soft targets (default: the identity).
        num_classes: K (filled by the pretrain stage).
        gather_distributed: negatives from every rank.

    Raises:
        ConfigError: no training reports for the project tokenizer, or a similarity of the wrong size.
    """

    needs = ("report",)

    def __init__(self, encoder: Encoder, *, reports: Sequence[str] = (), text_encoder: str = "project",
                 text_dim: int = 128, text_depth: int = 2, text_heads: int = 4, text_max_len: int = 96,
                 vocab_size: int = 2000, out_dim: int = 128, temperature: float = 0.07,
                 learn_temperature: bool = True, soft_targets: bool = False,
                 class_similarity: list[list[float]] | None = None, num_classes: int = 0,
                 gather_distributed: bool = False) -> None:
        """Build the text encoder, the two projections and the loss."""
        super().__init__(encoder)
        if text_encoder == "project":
            texts = [t for t in reports if str(t).strip()]
            if not texts:
                raise ConfigError("the clip method needs the training patients' reports to train its tokenizer, and "
                                  "none has one", where="data.report_column",
                                  fix="fill the manifest's report column (or name yours with data.report_column)")
            self.text = ProjectTextEncoder(train_tokenizer(texts, vocab_size=vocab_size), dim=text_dim,
                                           depth=text_depth, heads=text_heads, max_len=text_max_len)
        else:
            self.text = HFTextEncoder(text_encoder, max_len=text_max_len)
        self.image_proj = nn.Linear(encoder.feature_dim, out_dim, bias=False)
        self.text_proj = nn.Linear(self.text.feature_dim, out_dim, bias=False)
        sim = None
        if soft_targets:
            sim = class_similarity if class_similarity is not None else torch.eye(max(1, int(num_classes))).tolist()
            if num_classes and len(sim) != int(num_classes):
                raise ConfigError(f"class_similarity is {len(sim)}×{len(sim)} for {num_classes} classes",
                                  where="pretrain.method_options.class_similarity",
                                  fix="one row and column per class of data.classes, in that order")
        self.soft_targets = bool(soft_targets)
        self.criterion = CLIPLoss(temperature, learn_temperature=learn_temperature, similarity=sim,
                                  gather_distributed=gather_distributed)

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, out_dim)``: what zero-shot classification compares with the class prompts."""
        return self.image_proj(self.encoder(x))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``B`` strings ``-> (B, out_dim)``."""
        return self.text_proj(self.text(list(texts)))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss", "temperature", "pair_cos"}`` of a batch of images and their reports."""
        views = self.views(batch, min_views=1)  # (B, V, C, *S)
        reports = self.require(batch, "report")
        if len(reports) != views.shape[0]:
            raise DataError(f"{len(reports)} reports for {views.shape[0]} samples", where="method clip",
                            fix="every sample of the batch needs its report")
        labels = None
        if self.soft_targets:
            labels = self.require(batch, "label")
            if labels.ndim != 1:
                raise DataError("soft targets need one class per sample, the labels are multi-label",
                                where="pretrain.method_options.soft_targets",
                                fix="set soft_targets: false for multi-label data (each sample keeps its own report)")
        b, n_views = views.shape[:2]
        u = self.embed_images(views.flatten(0, 1)).view(b, n_views, -1)  # one encoder pass for every view
        v = self.embed_texts(reports)
        loss = sum(self.criterion(u[:, k], v, labels) for k in range(n_views)) / n_views
        with torch.no_grad():
            cos = nn.functional.cosine_similarity(u.detach().float(), v.detach().float()[:, None], dim=2).mean()
        return {"loss": loss, "temperature": 1.0 / self.criterion.scale().detach(), "pair_cos": cos}
