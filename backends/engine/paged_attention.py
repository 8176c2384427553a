"""The KV pool and the paged attention context the model calls once per layer.

Data flow: `KVCache` is one preallocated tensor [num_layers, 2 (k, v), num_blocks * block_size,
n_kv_heads, head_dim]; a "slot" is block_id * block_size + offset. Each engine step,
`model_runner` builds a `PagedAttention` from the step's sequences (query length, context length
and block table of each, in the order of the flattened batch) and passes it to the model as `attn`.
`attend(layer, q, k, v)`:
  1. writes the step's k/v into the pool at the step's slot mapping;
  2. prefill rows (a whole prompt, or a chunk after earlier context): per sequence, torch SDPA of
     its query rows against its context (causal; offset by the earlier context when there is
     some; a fresh prompt uses the step's own k/v and no gather);
  3. decode rows (one query token each): one batched SDPA over all of them, their contexts gathered
     through the block tables into a padded [B, L] batch with a length mask.
Index tensors (slots, masks) are built once per step and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def kv_bytes_per_block(num_layers: int, block_size: int, n_kv_heads: int, head_dim: int,
                       dtype: torch.dtype) -> int:
    return num_layers * 2 * block_size * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def num_blocks_for_budget(budget_bytes: float, num_layers: int, block_size: int, n_kv_heads: int,
                          head_dim: int, dtype: torch.dtype) -> int:
    return int(budget_bytes // kv_bytes_per_block(num_layers, block_size, n_kv_heads, head_dim, dtype))


def default_kv_budget_bytes(device: torch.device | str, fraction: float) -> float:
    """`fraction` of the memory free now on `device` (GPU: cudaMemGetInfo; CPU: available RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * fraction
    import psutil
    return psutil.virtual_memory().available * fraction


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, n_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.kv = torch.zeros(num_layers, 2, num_blocks * block_size, n_kv_heads, head_dim,
                              dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@dataclass
class SeqSlice:
    """One sequence's part of the flattened batch."""
    query_len: int          # rows of this sequence in the batch
    context_len: int        # tokens attended to: earlier context + query rows
    block_table: list[int]


class PagedAttention:
    """The `attn` object of one engine step (see module docstring)."""

    def __init__(self, cache: KVCache, seqs: list[SeqSlice]):
        self.cache = cache
        dev = cache.kv.device
        bs = cache.block_size
        self.num_tokens = sum(s.query_len for s in seqs)
        slot_parts = []
        # prefill: (row start, row end, context slots or None, mask or None)
        self.prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = []
        decode_rows, decode_seqs = [], []
        row = 0
        for s in seqs:
            start = s.context_len - s.query_len
            table = torch.tensor(s.block_table, dtype=torch.long)
            pos = torch.arange(start, s.context_len)
            slot_parts.append(table[pos // bs] * bs + pos % bs)
            if s.query_len == 1:
                decode_rows.append(row)
                decode_seqs.append(s)
            elif start == 0:
                self.prefills.append((row, row + s.query_len, None, None))
            else:
                ctx = torch.arange(s.context_len)
                ctx_slots = (table[ctx // bs] * bs + ctx % bs).to(dev)
                # query i (absolute position start + i) sees keys j <= start + i
                mask = ctx.unsqueeze(0) <= pos.unsqueeze(1)
                self.prefills.append((row, row + s.query_len, ctx_slots, mask.to(dev)))
            row += s.query_len
        self.slot_mapping = (torch.cat(slot_parts) if slot_parts else torch.empty(0, dtype=torch.long)).to(dev)

        self.decode_rows: torch.Tensor | slice | None = None
        if decode_seqs:
            n = len(decode_seqs)
            # decodes contiguous in the batch (the scheduler puts them first): a slice, no copy
            if decode_rows == list(range(decode_rows[0], decode_rows[0] + n)):
                self.decode_rows = slice(decode_rows[0], decode_rows[0] + n)
            else:
                self.decode_rows = torch.tensor(decode_rows, device=dev)
            ctx_lens = torch.tensor([s.context_len for s in decode_seqs])
            max_len = int(ctx_lens.max())
            max_blocks = -(-max_len // bs)
            tables = torch.zeros(n, max_blocks, dtype=torch.long)
            for i, s in enumerate(decode_seqs):
                nb = -(-s.context_len // bs)
                tables[i, :nb] = torch.tensor(s.block_table[:nb], dtype=torch.long)
            pos = torch.arange(max_len)
            self.decode_slots = (tables[:, pos // bs] * bs + pos % bs).to(dev)       # [B, L]
            self.decode_mask = (pos.unsqueeze(0) < ctx_lens.unsqueeze(1)).to(dev)[:, None, None, :]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_pool, v_pool = self.cache.kv[layer_idx, 0], self.cache.kv[layer_idx, 1]
        k_pool.index_copy_(0, self.slot_mapping, k.to(k_pool.dtype))
        v_pool.index_copy_(0, self.slot_mapping, v.to(v_pool.dtype))
        gqa = q.shape[1] != k.shape[1]
        out = torch.empty_like(q)
        for r0, r1, ctx_slots, mask in self.prefills:
            qs = q[r0:r1].transpose(0, 1)                       # [H, Tq, D]
            if ctx_slots is None:
                ks, vs = k[r0:r1].transpose(0, 1), v[r0:r1].transpose(0, 1)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
            else:
                ks, vs = k_pool[ctx_slots].transpose(0, 1), v_pool[ctx_slots].transpose(0, 1)
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=gqa)
            out[r0:r1] = o.transpose(0, 1)
        if self.decode_rows is not None:
            qd = q[self.decode_rows].unsqueeze(2)               # [B, H, 1, D]
            kd = k_pool[self.decode_slots].transpose(1, 2)      # [B, Hkv, L, D]
            vd = v_pool[self.decode_slots].transpose(1, 2)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=self.decode_mask, enable_gqa=gqa)
            out[self.decode_rows] = o.squeeze(2)
        return out
