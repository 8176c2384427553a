"""Tiny random Llama-family models made inside the tests (no hub, no downloads).

`make_tiny_model_dir(path)` writes a Hugging Face model directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a ChatML chat template) for a randomly initialised
decoder small enough that a forward pass takes milliseconds on one CPU core. The tokenizer is a
byte-level BPE trained on a small built-in corpus, so any text (including unicode) round-trips.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Large language models are served by engines that batch requests together.",
    "Prefill processes the prompt; decode produces one token at a time.",
    "Disaggregation puts prefill and decode on separate workers.",
    "Time to first token, inter-token latency, and throughput are measured.",
    "def add(a, b):\n    return a + b\n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "0123456789 + - * / = ( ) [ ] { } < > ! ? , . ; : ' \" @ # $ % ^ & _ ~ `",
    "Äpfel und Birnen, café, naïve, 東京, 😀",
] * 20

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def make_tiny_model_dir(
    path: str | Path,
    *,
    arch: str = "llama",
    tie_word_embeddings: bool = False,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    rope_scaling: dict | None = None,
) -> Path:
    """Write a random tiny model of family `arch` ("llama", "qwen2" or "mistral") to `path`."""
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok_json = _tokenizer_json(vocab_size)
    (path / "tokenizer.json").write_text(tok_json)
    real_vocab = len(json.loads(tok_json)["model"]["vocab"])
    common = dict(
        vocab_size=max(vocab_size, real_vocab),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=0,
    )
    if arch == "llama":
        cfg = transformers.LlamaConfig(rope_scaling=rope_scaling, **common)
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "mistral":
        cfg = transformers.MistralConfig(sliding_window=None, **common)
        cls = transformers.MistralForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = cls(cfg)
    # Larger-than-default init so greedy decoding is not a constant token stream.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2 if "embed" in name else 0.08)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|endoftext|>",
        "unk_token": None,
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    return path
