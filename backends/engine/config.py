"""Model hyper-parameters of a Llama-family decoder (Llama, Qwen2, Mistral, SmolLM).

Data flow: a Hugging Face `config.json` (`ModelConfig.from_hf_dict`) or GGUF metadata
(`gguf_loader`) -> `ModelConfig` -> `model.LlamaForCausalLM(cfg)`; the engine also reads it to size
the KV cache (num_layers, num_kv_heads, head_dim) and to know the EOS ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3"|"linear"|"dynamic", "factor": ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2); o_proj never has one
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    architecture: str = "LlamaForCausalLM"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face config.json dict (transformers 4.x or 5.x layout)."""
        archs = d.get("architectures") or []
        arch = archs[0] if archs else {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}.get(
            d.get("model_type", "llama"), "LlamaForCausalLM")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {arch!r} (supported: "
                             f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))})")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r} (only silu)")
        n_heads = d["num_attention_heads"]
        hidden = d["hidden_size"]
        # transformers 5 nests rope settings in rope_parameters; 4.x has rope_theta + rope_scaling.
        rope = dict(d.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        scaling = d.get("rope_scaling") or rope or None
        scaling = normalize_rope_scaling(scaling)
        eos = d.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        is_qwen2 = SUPPORTED_ARCHITECTURES[arch] == "qwen2"
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=n_heads,
            num_kv_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or hidden // n_heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)) or is_qwen2,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            architecture=arch,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that transformers (4.x and 5.x) and `from_hf_dict` both read."""
        model_type = SUPPORTED_ARCHITECTURES[self.architecture]
        d = {
            "architectures": [self.architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else self.eos_token_ids,
            "torch_dtype": "float32",
        }
        if model_type != "qwen2":
            d["attention_bias"] = self.attention_bias
        return d

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def normalize_rope_scaling(scaling: dict | None) -> dict | None:
    """Return a rope_scaling dict with a "rope_type" key, or None for plain RoPE."""
    if not scaling:
        return None
    s = dict(scaling)
    s.pop("rope_theta", None)
    kind = s.pop("rope_type", None) or s.pop("type", None) or "default"
    s.pop("type", None)
    if kind == "default":
        return None
    if kind not in ("llama3", "linear", "dynamic"):
        raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: llama3, linear, dynamic)")
    return {"rope_type": kind, **s}
