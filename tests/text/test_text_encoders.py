"""Offline text encoders: the project's tokenizer and small transformer, and a local Hugging Face folder."""

from __future__ import annotations

import pytest
import torch

from medcl.errors import ConfigError
from medcl.text.encoders import (
    HFTextEncoder,
    ProjectTextEncoder,
    SmallTextTransformer,
    check_model_dir,
    encode_batch,
    train_tokenizer,
)

REPORTS = [
    "Multiple medium and large drusen. No subretinal fluid. Reported by Dr. [NAME] on [DATE].",
    "A few small drusen beneath the RPE. Reported by Dr. [NAME] on [DATE]. MRN [ID].",
    "No drusen. Retinal layers intact. Reported by Dr. [NAME] on [DATE].",
    "Sinus rhythm. Ventricular rate 64 bpm. No acute ST changes.",
    "Atrial fibrillation. Ventricular rate 112 bpm. QRS duration normal.",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(REPORTS, vocab_size=300, min_frequency=1)


def test_the_tokenizer_keeps_the_deid_tags_whole_and_lowercases(tokenizer):
    enc = tokenizer.encode("Reported by Dr. [NAME] on [DATE]: DRUSEN")
    assert "[NAME]" in enc.tokens and "[DATE]" in enc.tokens  # one token each, never split
    assert "drusen" in enc.tokens and "DRUSEN" not in enc.tokens
    ids, mask = encode_batch(tokenizer, ["drusen", "no drusen seen today"], max_len=6)
    assert ids.shape == (2, 6) and ids[0, 0] == tokenizer.token_to_id("[CLS]")
    assert mask.sum(1).tolist() == [3, 6]  # [CLS] drusen [SEP]; the second cut to 6 tokens
    assert (ids[~mask] == 0).all() and tokenizer.id_to_token(0) == "[PAD]"


def test_padding_does_not_change_a_texts_embedding(tokenizer):
    torch.manual_seed(0)
    net = SmallTextTransformer(tokenizer.get_vocab_size(), dim=32, depth=2, heads=4, max_len=64).eval()
    short = "No drusen."
    own = encode_batch(tokenizer, [short], 64)
    alone = net(*own)
    ids, mask = encode_batch(tokenizer, [short, REPORTS[0]], 64)  # padded to the long report's length
    batched = net(ids, mask)
    assert ids.shape[1] > own[0].shape[1] and batched.shape == (2, 32)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_the_project_encoder_round_trips_through_its_state(tokenizer):
    torch.manual_seed(1)
    enc = ProjectTextEncoder(tokenizer, dim=16, depth=1, heads=2, max_len=32).eval()
    again = ProjectTextEncoder.from_state(enc.state()).eval()
    with torch.no_grad():
        assert torch.equal(enc(REPORTS[:3]), again(REPORTS[:3]))
    assert enc(REPORTS[:3]).shape == (3, 16) and enc.feature_dim == 16


def _tiny_bert(folder, tokenizer):
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(2)
    model = BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    return model


def test_a_local_hugging_face_folder_is_loaded_offline_and_pooled_over_real_tokens(tokenizer, tmp_path):
    model = _tiny_bert(tmp_path / "bert", tokenizer).eval()
    enc = HFTextEncoder(tmp_path / "bert").eval()
    texts = ["no drusen", REPORTS[0]]
    with torch.no_grad():
        out = enc(texts)
        # independently: the model itself on each text alone (no padding), mean over its tokens
        ref = torch.stack([model(**enc.tokenizer([t], return_tensors="pt")).last_hidden_state[0].mean(0)
                           for t in texts])
    assert out.shape == (2, 32) and enc.feature_dim == 32
    assert torch.allclose(out, ref, atol=1e-5)
    assert "bert" in enc.describe() and str(tmp_path) not in enc.describe()


def test_a_model_folder_without_what_it_needs_is_refused(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_model_dir(tmp_path / "nowhere")
    _tiny_bert(tmp_path / "bert", tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "bert" / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="no tokenizer files"):
        HFTextEncoder(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no model weights .*, no tokenizer files"):
        check_model_dir(tmp_path / "bert")
