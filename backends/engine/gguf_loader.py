"""Read a GGUF file into a ModelConfig and a Hugging Face-named fp32 state dict.

Data flow: `loader.load_model("x.gguf")` and `model_store` (which converts the default model's
GGUF once into a cached HF directory) call `load_gguf(path)`: metadata -> `ModelConfig`; every
tensor dequantized with `gguf.quants.dequantize` to fp32, renamed to HF names, and the q/k rows
of Llama models put back from llama.cpp's rotary order into HF's (so outputs match transformers).
The tokenizer comes from transformers' GGUF support, plus the chat template from the metadata.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig

ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


class GGUFError(Exception):
    """The file is not a GGUF model this engine can run."""


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise GGUFError(f"unsupported tensor {gguf_name!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert convert_hf_to_gguf's `w.reshape(n_head, 2, d // n_head // 2, *rest).swapaxes(1, 2)`."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


@dataclass
class GGUFModel:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    chat_template: str | None
    quantization: str  # e.g. "Q4_1+Q8_0" (the tensor types other than F32/F16, most common first)
    path: Path

    def make_tokenizer(self):
        from .tokenizer import Tokenizer

        return Tokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name,
                                         extra_eos_ids=self.config.eos_token_ids,
                                         chat_template=self.chat_template)


def read_config(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise GGUFError(f"unsupported GGUF architecture {arch!r} (supported: {', '.join(ARCHS)})")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    hidden, n_heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", 0) or meta("rope.dimension_count", 0) or hidden // n_heads)
    scaling = None
    kind = meta("rope.scaling.type")
    if kind in ("linear", "yarn") and kind != "linear":
        raise GGUFError(f"unsupported rope scaling {kind!r}")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))}
    tok_names = reader.fields.get("tokenizer.ggml.tokens")
    vocab = meta("vocab_size") or (len(tok_names.data) if tok_names else None)
    if vocab is None:
        vocab = reader.get_tensor(0).shape[-1]
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=n_heads,
        num_kv_heads=int(meta("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(meta("context_length", 2048)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=[] if eos is None else [int(eos)],
        architecture=ARCHS[arch],
    )


def load_gguf(path: str | Path) -> GGUFModel:
    """Read and dequantize a whole GGUF model (SmolLM2-135M: a few seconds)."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/struct.error/... on bad files
        raise GGUFError(f"not a readable GGUF file ({type(e).__name__}: {e})") from e
    cfg = read_config(reader)
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise GGUFError("per-frequency RoPE factors (rope_freqs, Llama 3.1 style) are not supported; "
                        "load the Hugging Face directory instead")
    permute = cfg.architecture != "Qwen2ForCausalLM"  # convert_hf_to_gguf permutes Llama q/k only
    sd: dict[str, torch.Tensor] = {}
    qtypes: Counter = Counter()
    for t in reader.tensors:
        name = hf_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"tensor {t.name}: quantization {t.tensor_type.name} not supported") from e
        w = np.ascontiguousarray(w, dtype=np.float32).reshape(shape)
        if not w.flags.writeable:  # F32 tensors are views of the read-only memory map
            w = w.copy()
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rotary(w, cfg.num_heads)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rotary(w, cfg.num_kv_heads)
        sd[name] = torch.from_numpy(w)
        if t.tensor_type.name not in ("F32", "F16", "BF16"):
            qtypes[t.tensor_type.name] += 1
    quant = "+".join(k for k, _ in qtypes.most_common()) or "F32"
    return GGUFModel(cfg, sd, _field(reader, "tokenizer.chat_template"), quant, path)


def convert_to_hf_dir(gguf_path: str | Path, out_dir: str | Path, extra_meta: dict | None = None) -> dict:
    """Dequantize once and write a HF directory (config, fp32 safetensors, tokenizer) to out_dir."""
    from safetensors.torch import save_file

    g = load_gguf(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(g.config.to_hf_dict(), indent=2))
    sd = {k: v for k, v in g.state_dict.items() if not (g.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    g.make_tokenizer().save_pretrained(out)
    # Readable by transformers 4.x and 5.x alike: a generic fast tokenizer, template inline.
    tok_cfg_file = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if g.chat_template:
        tok_cfg["chat_template"] = g.chat_template
    tok_cfg_file.write_text(json.dumps(tok_cfg, indent=2))
    meta = {"source": str(gguf_path), "quantization": g.quantization, "dtype": "float32",
            "architecture": g.config.architecture, **(extra_meta or {})}
    (out / "infer_bench_meta.json").write_text(json.dumps(meta, indent=2))
    return meta
