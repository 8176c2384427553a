"""The attention interface between the model and whoever owns the KV cache.

Data flow: every decoder layer of `model.LlamaForCausalLM` projects q/k/v, applies RoPE, then calls
`attn.attend(layer_idx, q, k, v)`. The caller chooses `attn`: `DenseCausalAttention` here (one
sequence, no cache; reference and tests) or the engine's paged context (`paged_attention.py`),
which writes k/v into the KV pool and attends through block tables.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Attention(Protocol):
    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, n_heads, head_dim]; k, v: [T, n_kv_heads, head_dim] (RoPE applied).

        Returns [T, n_heads, head_dim]. T is the flattened batch; the object knows the boundaries.
        q, k and v are views into the fused qkv projection: not contiguous in dim 0.
        """
        ...


class DenseCausalAttention:
    """Causal self-attention over one whole sequence (all T tokens, positions 0..T-1), no cache."""

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n_heads, n_kv = q.shape[1], k.shape[1]
        if n_kv != n_heads:
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=q.shape[0] > 1)
        return out.transpose(0, 1)
