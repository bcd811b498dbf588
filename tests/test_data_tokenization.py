"""Expression tokenisation against known bert-base-uncased ids and the official cut/pad rules."""
from __future__ import annotations

import json

import pytest
import torch

from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.errors import LAVTUserError


@pytest.fixture(scope="module")
def tokenizer() -> ExpressionTokenizer:
    return ExpressionTokenizer(default_text_encoder_dir() / "vocab.txt")


def test_known_ids(tokenizer):
    # bert-base-uncased: the=1996 red=2417 circle=4418, [CLS]=101 [SEP]=102
    ids, mask = tokenizer.encode("the red circle")
    assert ids[:5] == [101, 1996, 2417, 4418, 102]
    assert ids[5:] == [0] * 15 and len(ids) == 20
    assert mask == [1] * 5 + [0] * 15


def test_lowercase_and_wordpiece(tokenizer):
    assert tokenizer.encode("The RED Circle")[0] == tokenizer.encode("the red circle")[0]
    # "donut" is not one word piece: do ##nut
    assert tokenizer.tokenize("donut") == ["don", "##ut"]
    cased = ExpressionTokenizer(default_text_encoder_dir(), lowercase=False)
    assert cased.encode("The RED")[0][1] != tokenizer.encode("The RED")[0][1]


def test_long_expression_loses_sep_like_the_official_code(tokenizer):
    text = " ".join(["red"] * 30)
    ids, mask = tokenizer.encode(text)
    assert len(ids) == 20 and mask == [1] * 20
    assert ids[0] == 101 and 102 not in ids and ids[-1] == 2417
    assert tokenizer.is_truncated(text)
    assert not tokenizer.is_truncated(" ".join(["red"] * 18))  # 18 + [CLS] + [SEP] = 20
    assert tokenizer.encode(" ".join(["red"] * 18))[0][-1] == 102


def test_batch_matches_single(tokenizer):
    texts = ["the red circle", "", "leftmost star on the far left of the picture"]
    input_ids, attention_mask = tokenizer(texts)
    assert input_ids.shape == (3, 20) and input_ids.dtype == torch.int64
    assert attention_mask.dtype == torch.int64
    for row, text in enumerate(texts):
        ids, mask = tokenizer.encode(text)
        assert input_ids[row].tolist() == ids and attention_mask[row].tolist() == mask
    assert input_ids[1, :3].tolist() == [101, 102, 0]  # empty: the "image only" input
    single_ids, _ = tokenizer("the red circle")
    assert single_ids.shape == (1, 20)


def test_max_tokens_configurable(tmp_path, tokenizer):
    short = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=4)
    assert short.encode("the red circle")[0] == [101, 1996, 2417, 4418]
    short.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["max_tokens"] == 4 and config["do_lower_case"] is True
    loaded = ExpressionTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.max_tokens == 4
    assert loaded.encode("the red circle") == short.encode("the red circle")
    assert ExpressionTokenizer.from_pretrained(tmp_path / "tok", max_tokens=20).max_tokens == 20


def test_from_pretrained_reads_hugging_face_folder():
    tok = ExpressionTokenizer.from_pretrained(default_text_encoder_dir())
    assert tok.max_tokens == 20 and tok.lowercase and tok.vocab_size == 30522


def test_bad_vocabulary(tmp_path):
    with pytest.raises(LAVTUserError, match="does not exist"):
        ExpressionTokenizer(tmp_path / "nope.txt")
    with pytest.raises(LAVTUserError, match="max_tokens"):
        ExpressionTokenizer(default_text_encoder_dir(), max_tokens=1)
    with pytest.raises(LAVTUserError, match="does not exist"):
        ExpressionTokenizer.from_pretrained(tmp_path / "missing")
