"""Text encoders that work offline: a small transformer with the project's own tokenizer, or a local HF folder.

Both turn a list of (de-identified) reports into embeddings ``(B, D)``:

* :class:`SmallTextTransformer` with a tokenizer trained on the project's reports (:func:`train_tokenizer`:
  WordPiece from the ``tokenizers`` library, lower-cased, the de-identification tags ``[NAME]`` … kept whole) —
  a pre-norm transformer encoder (token + learned position embeddings), the embedding the mean of the non-padding
  positions' outputs. Nothing to download: everything is learnt from the reports.
* :class:`HFTextEncoder` — any model folder on disk (e.g. a clinical BERT the hospital already has), loaded by
  ``transformers`` with ``local_files_only=True`` (nothing is fetched; ``HF_HUB_OFFLINE=1`` is set as well); the
  embedding is the mean of the last hidden states over the attention mask. A folder that does not exist, holds no
  model weights or config, or no tokenizer files is refused with what is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcl.errors import ConfigError
from medcl.text.deid import TAGS

#: special tokens of the project's tokenizer (padding first: id 0)
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TAGS)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> Any:
    """A WordPiece tokenizer (``tokenizers``) trained on ``texts``: lower-case, accents stripped, punctuation split.

    The de-identification tags (``[NAME]``, ``[DATE]`` …) are special tokens: one id each, never split.

    Returns:
        A ``tokenizers.Tokenizer`` (``save(path)`` writes one JSON file).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                        special_tokens=list(SPECIAL))
    tok.train_from_iterator([str(t) for t in texts], trainer=trainer)
    return tok


def encode_batch(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, L), mask (B, L) bool)``: ``[CLS] tokens [SEP]`` cut to ``max_len``, padded with ``[PAD]`` (id 0)."""
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    rows = [[cls, *e.ids[: max_len - 2], sep] for e in tokenizer.encode_batch([str(t) for t in texts])]
    width = max(len(r) for r in rows) if rows else 0
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
    return ids, ids != 0


class SmallTextTransformer(nn.Module):
    """A small pre-norm transformer encoder over the project's tokens; one embedding per text.

    Args:
        vocab_size: the tokenizer's vocabulary.
        dim: model width ``D`` (the embedding size).
        depth: transformer layers.
        heads: attention heads (``dim`` divisible by it).
        max_len: longest token sequence (position embeddings).
        dropout: dropout in the layers.

    Shapes:
        ``forward(ids (B, L) int64, mask (B, L) bool) -> (B, D)``: the mean of the outputs at non-padding positions.
    """

    def __init__(self, vocab_size: int, dim: int = 128, depth: int = 2, heads: int = 4, max_len: int = 128,
                 dropout: float = 0.1) -> None:
        """Embeddings, ``depth`` pre-norm layers and a final norm."""
        super().__init__()
        if dim % heads:
            raise ConfigError(f"text encoder width {dim} is not divisible by its {heads} heads",
                              where="text encoder", fix="choose dim a multiple of heads")
        self.dim, self.max_len = int(dim), int(max_len)
        self.tokens = nn.Embedding(int(vocab_size), dim, padding_idx=0)
        self.positions = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embed, attend over the non-padding tokens, average them."""
        ids, mask = ids[:, : self.max_len], mask[:, : self.max_len]
        x = self.tokens(ids) + self.positions[:, : ids.shape[1]]
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        w = mask.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class ProjectTextEncoder(nn.Module):
    """:class:`SmallTextTransformer` with its tokenizer: ``forward(texts) -> (B, D)``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (:func:`train_tokenizer`).
        **options: :class:`SmallTextTransformer`'s arguments (``dim``, ``depth``, ``heads``, ``max_len``, ``dropout``).
    """

    def __init__(self, tokenizer: Any, **options: Any) -> None:
        """Build the transformer for the tokenizer's vocabulary."""
        super().__init__()
        self.tokenizer = tokenizer
        self.options = dict(options)
        self.model = SmallTextTransformer(tokenizer.get_vocab_size(), **options)
        self.feature_dim = self.model.dim

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise on the CPU, embed on the model's device."""
        ids, mask = encode_batch(self.tokenizer, texts, self.model.max_len)
        dev = self.model.positions.device
        return self.model(ids.to(dev), mask.to(dev))

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild it: the tokenizer's JSON, the options and the weights."""
        return {"kind": "project", "tokenizer": self.tokenizer.to_str(), "options": self.options,
                "weights": self.model.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProjectTextEncoder:
        """The encoder :meth:`state` describes."""
        from tokenizers import Tokenizer

        enc = cls(Tokenizer.from_str(state["tokenizer"]), **state["options"])
        enc.model.load_state_dict(state["weights"])
        return enc


_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_dir(path: str | Path) -> Path:
    """The folder of a local Hugging Face text model, checked before ``transformers`` opens it.

    Raises:
        ConfigError: the folder is missing, or has no ``config.json``, no weights, or no tokenizer files.
    """
    p = Path(path).expanduser()
    where = "pretrain.method_options.text_encoder"
    if not p.is_dir():
        raise ConfigError(f"text model folder {p} does not exist", where=where,
                          fix="point at a folder saved with save_pretrained (config.json, weights, tokenizer files); "
                          "medcl downloads nothing")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any((p / w).is_file() for w in _WEIGHTS):
        missing.append(f"model weights ({' or '.join(_WEIGHTS[:2])})")
    if not any((p / t).is_file() for t in _TOKENIZER):
        missing.append(f"tokenizer files ({', '.join(_TOKENIZER[:3])} …)")
    if missing:
        raise ConfigError(f"text model folder {p} has no {', no '.join(missing)}", where=where,
                          fix="save the model and its tokenizer into the folder (model.save_pretrained(dir); "
                          "tokenizer.save_pretrained(dir)) on a machine that has them, then copy the folder")
    return p


class HFTextEncoder(nn.Module):
    """A local Hugging Face model and its tokenizer, offline: ``forward(texts) -> (B, D)``.

    Args:
        path: the model folder (:func:`check_model_dir`).
        max_len: longest token sequence.

    Shapes:
        ``forward(texts: list[str]) -> (B, hidden_size)``: the masked mean of the last hidden states.
    """

    def __init__(self, path: str | Path, max_len: int = 128) -> None:
        """Check the folder, load the tokenizer and the model from it (``local_files_only``)."""
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = check_model_dir(path)
        self.max_len = int(max_len)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.feature_dim = int(self.model.config.hidden_size)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise, run the model, average the last hidden states over the real tokens."""
        enc = self.tokenizer([str(t) for t in texts], padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        dev = next(self.model.parameters()).device
        enc = {k: v.to(dev) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state
        w = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

    def describe(self) -> str:
        """The model's architecture and size (never its path, which may name people or sites)."""
        return json.dumps({"model_type": self.model.config.model_type, "hidden_size": self.feature_dim})
