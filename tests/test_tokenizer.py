"""Tokenizer wrapper and streaming detokenization on the tiny byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from infer_bench.backends.engine.loader import load_model
from infer_bench.backends.engine.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Äpfel und Birnen, café, naïve — 東京 and 日本語のテキスト 😀🎉👍🏽 ok",
    "  leading spaces and trailing   ",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_and_eos(tok):
    im_start = tok.encode("<|im_start|>")
    assert len(im_start) == 1  # special tokens in text parse as one id
    assert tok.decode(im_start) == ""
    assert tok.decode(im_start, skip_special_tokens=False) == "<|im_start|>"
    assert tok.eos_token_ids == {tok.encode("<|endoftext|>")[0]}
    assert tok.vocab_size >= 256


def test_chat_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(msgs)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert not tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("assistant\n")


def test_loaded_model_has_tokenizer_with_config_eos(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    assert 0 in lm.tokenizer.eos_token_ids  # config.json eos_token_id
    assert lm.tokenizer.has_chat_template


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_matches_full_decode(tok, text):
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.feed(i) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    if any(ord(c) > 0x7FF for c in text):  # 3-4 byte characters: some tokens must be held back
        assert "" in deltas[:-1]


def test_incremental_detokenizer_with_prompt_context(tok):
    prompt = tok.encode("Prefill processes the prompt;")
    out = tok.encode(" decode produces 東京 😀 tokens")
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
    text = "".join(detok.feed(i) for i in out) + detok.flush()
    assert text == tok.decode(prompt + out)[len(tok.decode(prompt)):]
    assert detok.text == text


def test_incremental_detokenizer_skips_special_tokens(tok):
    ids = tok.encode("hello<|im_end|> world")
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.feed(i) for i in ids) + detok.flush() == "hello world"
