"""Our LlamaForCausalLM against Hugging Face transformers on tiny random models (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from infer_bench.backends.engine.attention import DenseCausalAttention
from infer_bench.backends.engine.config import ModelConfig
from infer_bench.backends.engine.loader import load_model

PROMPT = "The quick brown fox jumps over the lazy dog. Prefill processes the prompt; decode"

CASES = {
    "llama-untied": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tie_word_embeddings=True),
    "qwen2-bias-tied": dict(arch="qwen2", tie_word_embeddings=True),
    "qwen2-bias-untied": dict(arch="qwen2"),
    "mistral": dict(arch="mistral"),
    "llama3-rope": dict(arch="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "linear-rope": dict(arch="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # 32 trained positions, prompts go past them: the dynamic-NTK base stretch kicks in
    "dynamic-rope": dict(arch="llama", max_position_embeddings=32,
                         rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tiny_model_factory):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    path = tiny_model_factory(**CASES[request.param])
    ours = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return ours, hf


def _our_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        t = torch.tensor(ids)
        hidden = model(t, torch.arange(len(ids)), DenseCausalAttention())
        return model.compute_logits(hidden)


def test_logits_match_transformers(pair):
    ours, hf = pair
    ids = ours.tokenizer.encode(PROMPT + " " + PROMPT)
    assert len(ids) > 40  # past the dynamic-rope case's 32 trained positions
    logits = _our_logits(ours.model, ids)
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0].float()
    assert logits.dtype == torch.float32
    assert logits.shape == ref.shape == (len(ids), ours.config.vocab_size)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_greedy_matches_transformers_generate(pair):
    ours, hf = pair
    ids = ours.tokenizer.encode(PROMPT)
    out: list[int] = []
    for _ in range(16):
        nxt = int(_our_logits(ours.model, ids + out)[-1].argmax())
        out.append(nxt)
        if nxt in ours.tokenizer.eos_token_ids:
            break
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                          pad_token_id=ours.tokenizer.eos_token_ids and min(ours.tokenizer.eos_token_ids))
    ref_out = ref[0, len(ids):].tolist()
    assert out == ref_out


def test_flattened_batch_matches_single(tiny_model_dir):
    """Two sequences concatenated with per-sequence attention give each sequence's own result."""
    lm = load_model(tiny_model_dir)
    a = lm.tokenizer.encode("Decode produces one token at a time.")
    b = lm.tokenizer.encode("Lorem ipsum dolor")

    class TwoSeq:
        def attend(self, layer_idx, q, k, v):
            dense = DenseCausalAttention()
            n = len(a)
            return torch.cat([dense.attend(layer_idx, q[:n], k[:n], v[:n]),
                              dense.attend(layer_idx, q[n:], k[n:], v[n:])])

    with torch.inference_mode():
        ids = torch.tensor(a + b)
        pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])
        both = lm.model.compute_logits(lm.model(ids, pos, TwoSeq()))
    torch.testing.assert_close(both[: len(a)], _our_logits(lm.model, a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[len(a):], _our_logits(lm.model, b), atol=1e-5, rtol=1e-5)


def test_config_from_hf_dict_variants():
    base = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=128)
    old = ModelConfig.from_hf_dict({**base, "architectures": ["LlamaForCausalLM"], "rope_theta": 5e5,
                                    "rope_scaling": {"type": "linear", "factor": 4.0}, "eos_token_id": [1, 2]})
    assert old.rope_theta == 5e5 and old.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert old.num_kv_heads == 4 and old.head_dim == 16 and old.eos_token_ids == [1, 2]
    assert not old.attention_bias
    qwen = ModelConfig.from_hf_dict({**base, "architectures": ["Qwen2ForCausalLM"],
                                     "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}})
    assert qwen.attention_bias and qwen.rope_theta == 1e6 and qwen.rope_scaling is None
    assert ModelConfig.from_hf_dict(old.to_hf_dict()) == old
    with pytest.raises(ValueError, match="unsupported architecture"):
        ModelConfig.from_hf_dict({**base, "architectures": ["GPT2LMHeadModel"]})


def test_half_precision_path_runs_and_agrees(tiny_model_dir):
    """The accelerator code path (bf16 weights, fp32 norms/logits) on CPU, against fp32."""
    full = load_model(tiny_model_dir)
    half = load_model(tiny_model_dir, dtype=torch.bfloat16)
    assert half.model.layers[0].qkv_w.dtype == torch.bfloat16
    ids = full.tokenizer.encode(PROMPT)
    ref, got = _our_logits(full.model, ids), _our_logits(half.model, ids)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
