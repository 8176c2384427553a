"""The KV pool and the paged attention context the model calls once per layer.

Data flow: `KVCache` is one preallocated tensor [num_layers, 2 (k, v), n_kv_heads,
num_blocks * block_size, head_dim]; a "slot" is block_id * block_size + offset. Each engine step,
`model_runner` builds a `PagedAttention` from the step's sequences (query length, context length
and block table of each, in the order of the flattened batch) and passes it to the model as `attn`.
`attend(layer, q, k, v)`:
  1. writes the step's k/v into the pool at the step's slot mapping;
  2. prefill rows (a whole prompt, or a chunk after earlier context), float32 on the CPU: one call
     per layer of the C kernel csrc/paged_prefill.c for all prefill sequences (flash-attention
     style tiles; keys and values read in place through the block tables; GQA without repeating
     k/v; causal with the chunk's offset). Measured (bench/paged_prefill.py, 512-token prompt,
     SmolLM2 shapes, 2 threads): 3.3 ms per layer vs 9.9 ms for the PyTorch path below.
     Elsewhere (no compiler, other dtypes, CUDA, head dims not a multiple of 8), per sequence,
     torch SDPA of its query rows against its context (a fresh prompt uses the step's own k/v
     and no gather; a chunk after earlier context gathers it and passes a mask);
  3. decode rows (one query token each), float32 on the CPU: one call per layer of the fused C
     kernel csrc/paged_decode.c (native.py builds it once per machine) for all sequences: it
     reads every sequence's blocks in place through its block table, GQA without repeating k/v.
     Measured (64 sequences, contexts 48-1280, SmolLM2 shapes, 2 threads): 4.5 ms per layer
     with consecutive blocks and 6.4 ms with shuffled ones, against 9-12 ms for the PyTorch path.
     Elsewhere (no compiler, other dtypes, CUDA) the PyTorch path: per sequence, the CPU
     flash-attention kernel read in place on the pool (runs of consecutive blocks are strided
     views, no copy; stray blocks are gathered, a small copy), partial results merged by
     log-sum-exp; GQA without repeating k/v (a kv head's g query heads are g query rows).
     No padding to the longest context.
Index tensors (slots, masks) are built once per step and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import native


MIN_VIEW_RUN_BLOCKS = 4  # shorter runs of consecutive blocks are gathered (one small copy)


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
    """kv: [num_layers, 2 (k, v), n_kv_heads, num_blocks * block_size, head_dim].

    Head-major, so gathering a sequence's blocks yields [n_kv_heads, tokens, head_dim] directly in
    the layout attention wants (no transpose copy); a block of one head is contiguous.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, n_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.kv = torch.zeros(num_layers, 2, n_kv_heads, num_blocks * block_size, head_dim,
                              dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


def _padded_tables(seqs, block_size: int) -> torch.Tensor:
    """[len(seqs), most blocks] int32: each sequence's block table cut to its context's blocks and
    padded with zeros (the rows the C kernels index)."""
    nblk = [-(-s.context_len // block_size) for s in seqs]
    width = max(nblk)
    return torch.tensor([s.block_table[:m] + [0] * (width - m) for s, m in zip(seqs, nblk)], dtype=torch.int32)


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
        native_ok = dev.type == "cpu" and cache.kv.dtype == torch.float32 and cache.kv.is_contiguous()
        self.native_prefill = None
        if native_ok and cache.head_dim % 8 == 0 and any(s.query_len > 1 for s in seqs):
            self.native_prefill = native.paged_prefill_kernel()
        pf_rows, pf_seqs = [], []
        slots: list[int] = []
        # prefill: (row start, row end, context slots or None, mask or None)
        self.prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = []
        decode_rows, decode_seqs = [], []
        row = 0
        for s in seqs:
            start = s.context_len - s.query_len
            table = s.block_table
            if s.query_len == 1 or self.native_prefill is not None:
                # decode, and the prefill kernel, read the context through the block table: only
                # the new rows' slots
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, s.context_len))
                rows_of, seqs_of = (decode_rows, decode_seqs) if s.query_len == 1 else (pf_rows, pf_seqs)
                rows_of.append(row)
                seqs_of.append(s)
            else:
                t = torch.tensor(table[:-(-s.context_len // bs)], dtype=torch.long)
                ctx = torch.arange(s.context_len)
                ctx_slots = t[ctx // bs] * bs + ctx % bs
                slots.extend(ctx_slots[start:].tolist())
                if start == 0:
                    self.prefills.append((row, row + s.query_len, None, None))
                else:
                    # query i (absolute position start + i) sees keys j <= start + i
                    mask = ctx.unsqueeze(0) <= torch.arange(start, s.context_len).unsqueeze(1)
                    self.prefills.append((row, row + s.query_len, ctx_slots.to(dev), mask.to(dev)))
            row += s.query_len
        self.slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev)
        if pf_seqs:
            self.prefill_tables = _padded_tables(pf_seqs, bs)
            self.prefill_meta = torch.tensor([pf_rows, [s.query_len for s in pf_seqs],
                                              [s.context_len for s in pf_seqs]], dtype=torch.int32)

        self.decode_rows: torch.Tensor | slice | None = None
        self.native_decode = None
        if decode_seqs:
            n = len(decode_seqs)
            # decodes contiguous in the batch (the scheduler puts them first): a slice, no copy
            if decode_rows == list(range(decode_rows[0], decode_rows[0] + n)):
                self.decode_rows = slice(decode_rows[0], decode_rows[0] + n)
            else:
                self.decode_rows = torch.tensor(decode_rows, device=dev)
            if native_ok:
                self.native_decode = native.paged_decode_kernel()
        if self.native_decode is not None:
            # the fused kernel reads every sequence's blocks in place through its table
            self.decode_tables = _padded_tables(decode_seqs, bs)
            self.decode_lens = torch.tensor([s.context_len for s in decode_seqs], dtype=torch.int32)
        elif decode_seqs:
            # per sequence: its context as (start slot, length) runs of consecutive blocks, read
            # in place from the pool as views; the blocks outside long runs (decode blocks
            # appended one at a time, interleaved with other sequences') as one slot index for a
            # small gather. See _decode.
            self.decode_parts: list[tuple[list[tuple[int, int]], torch.Tensor | None]] = []
            for s in decode_seqs:
                nblk = -(-s.context_len // bs)
                table = s.block_table[:nblk]
                runs, loose = [], []
                i = 0
                while i < nblk:
                    j = i + 1
                    while j < nblk and table[j] == table[j - 1] + 1:
                        j += 1
                    ntok = min(j * bs, s.context_len) - i * bs
                    if dev.type == "cpu" and (j - i >= MIN_VIEW_RUN_BLOCKS or (i == 0 and j == nblk)):
                        runs.append((table[i] * bs, ntok))
                    else:
                        loose.extend(range(table[i] * bs, table[i] * bs + ntok) if j - i == 1 else
                                     [table[b_] * bs + o for b_ in range(i, j) for o in range(bs)][:ntok])
                    i = j
                idx = torch.tensor(loose, dtype=torch.long, device=dev) if loose else None
                self.decode_parts.append((runs, idx))
            # the in-place runs as per-layer views [1, Hkv, n, D] of k and of v, made once per
            # step for all layers (two ops per run instead of four per run and layer)
            kv = cache.kv
            self.decode_views = [[(kv[:, 0, None, :, s0:s0 + n].unbind(0), kv[:, 1, None, :, s0:s0 + n].unbind(0))
                                  for s0, n in runs] for runs, _ in self.decode_parts]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_pool, v_pool = self.cache.kv[layer_idx, 0], self.cache.kv[layer_idx, 1]   # [Hkv, S, D]
        k_pool.index_copy_(1, self.slot_mapping, k.transpose(0, 1).to(k_pool.dtype))
        v_pool.index_copy_(1, self.slot_mapping, v.transpose(0, 1).to(v_pool.dtype))
        if self.native_prefill is not None:
            out = self._prefill_native(q, layer_idx)
        elif not self.prefills and self.decode_rows is not None:
            return self._decode(q, layer_idx)  # decode-only step: no scatter copy
        else:
            out = self._prefill_torch(q, k, v, k_pool, v_pool)
        if self.decode_rows is not None:
            out[self.decode_rows] = self._decode(q[self.decode_rows], layer_idx)
        return out

    def _prefill_torch(self, q, k, v, k_pool, v_pool) -> torch.Tensor:
        """Per prefill sequence, torch SDPA of its query rows against its context -> [T, H, D]
        with the prefill rows filled."""
        gqa = q.shape[1] != k.shape[1]
        rep = q.shape[1] // k.shape[1]
        out = torch.empty_like(q)
        for r0, r1, ctx_slots, mask in self.prefills:
            qs = q[r0:r1].transpose(0, 1)                       # [H, Tq, D]
            # CPU SDPA takes its fused (flash) kernel only for 4-D inputs without enable_gqa; 3-D
            # or enable_gqa=True falls back to the unfused math path (bmm + softmax + masking ops:
            # ~0.5 s of a ~1.1 s 512-token prefill of SmolLM2-135M, torch.profiler). So: a batch
            # dim of 1, and k/v repeated to all heads (cheap next to the attention itself).
            if ctx_slots is None:
                ks, vs = k[r0:r1].transpose(0, 1), v[r0:r1].transpose(0, 1)
                if gqa:
                    ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
                o = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], is_causal=True)[0]
            else:
                ks, vs = k_pool.index_select(1, ctx_slots).to(q.dtype), v_pool.index_select(1, ctx_slots).to(q.dtype)
                if gqa:
                    ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
                o = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], attn_mask=mask)[0]
            out[r0:r1] = o.transpose(0, 1)
        return out

    def _decode(self, q: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """q: [B, H, D], one query token per sequence -> [B, H, D].

        Per sequence, the CPU flash-attention kernel (out and log-sum-exp) on each long run of
        consecutive blocks read in place from the pool (a strided view, no copy), and once on the
        gathered remaining slots; the partial outputs are merged by their log-sum-exps. GQA: the
        g query heads of a kv head are g query rows of that head. Measured (B = 32, contexts
        48-1280, 2 threads): 5.4 ms per layer vs 12.5 ms for one padded batch gathered into a
        scratch buffer (the copy and the padding were most of that step's time).
        """
        if self.native_decode is not None:
            return self._decode_native(q, layer_idx)
        c = self.cache
        b, h, d = q.shape
        hkv = c.n_kv_heads
        g = h // hkv
        k_pool, v_pool = c.kv[layer_idx, 0], c.kv[layer_idx, 1]   # [Hkv, S, D]
        same = k_pool.dtype == q.dtype
        qg = q.view(b, 1, hkv, g, d)
        if q.device.type == "cpu":
            flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        else:  # other devices: every sequence is one gathered part (see __init__), no merge
            def flash(qs, ks, vs):
                return F.scaled_dot_product_attention(qs, ks, vs), None
        qs = qg.unbind(0)
        outs = []
        for i, (runs, idx) in enumerate(self.decode_parts):
            views = self.decode_views[i]
            if idx is None and len(runs) == 1:  # the common case: one run, no merge
                ks, vs = views[0][0][layer_idx], views[0][1][layer_idx]
                if not same:
                    ks, vs = ks.to(q.dtype), vs.to(q.dtype)
                outs.append(flash(qs[i], ks, vs)[0])
                continue
            o = lse = None
            for j in range(len(runs) + (idx is not None)):
                if j < len(runs):
                    ks, vs = views[j][0][layer_idx], views[j][1][layer_idx]
                else:
                    ks, vs = k_pool.index_select(1, idx)[None], v_pool.index_select(1, idx)[None]
                if not same:
                    ks, vs = ks.to(q.dtype), vs.to(q.dtype)
                o_j, lse_j = flash(qs[i], ks, vs)[:2]
                if o is None:
                    o, lse = o_j, lse_j
                    continue
                # merge two softmax-normalised parts: weight of the new one = sigmoid(lse_j - lse)
                w = torch.sigmoid(lse_j - lse).unsqueeze(-1).to(q.dtype)
                o = o + (o_j - o) * w
                if j + 1 < len(runs) + (idx is not None):
                    lse = torch.logaddexp(lse, lse_j)
            outs.append(o)
        return torch.cat(outs).reshape(b, h, d)

    def _kernel_buffers(self, q: torch.Tensor, layer_idx: int):
        """What both C kernels take: q float32 with contiguous heads (rows may be strided, a view
        into the fused qkv output), the layer's k and v pools, and an output [rows, H, D]."""
        if q.dtype != torch.float32 or q.stride(2) != 1 or q.stride(1) != q.shape[2]:
            q = q.float().contiguous()
        kv = self.cache.kv
        return q, kv[layer_idx, 0], kv[layer_idx, 1], torch.empty(q.shape, dtype=torch.float32)

    def _prefill_native(self, q: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """The prompt-attention kernel (csrc/paged_prefill.c): one call for every prefill sequence
        of the layer, keys and values read from the pool through the block tables (this step's
        k/v are already written there) -> [T, H, D] with the prefill rows filled."""
        c, meta = self.cache, self.prefill_meta
        q, k_pool, v_pool, out = self._kernel_buffers(q, layer_idx)
        _, h, d = q.shape
        rc = self.native_prefill(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), out.data_ptr(),
                                 self.prefill_tables.data_ptr(), meta[0].data_ptr(), meta[1].data_ptr(),
                                 meta[2].data_ptr(), meta.shape[1], self.prefill_tables.shape[1], q.stride(0),
                                 out.stride(0), k_pool.stride(0), h, c.n_kv_heads, d, c.block_size, d ** -0.5,
                                 torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"paged_prefill kernel failed (code {rc})")
        return out

    def _decode_native(self, q: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """The fused kernel (csrc/paged_decode.c): one call for all sequences of the layer, on
        torch's thread count."""
        c = self.cache
        q, k_pool, v_pool, out = self._kernel_buffers(q, layer_idx)
        b, h, d = q.shape
        rc = self.native_decode(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), out.data_ptr(),
                                self.decode_tables.data_ptr(), self.decode_lens.data_ptr(), b,
                                self.decode_tables.shape[1], q.stride(0), k_pool.stride(0), h,
                                c.n_kv_heads, d, c.block_size, d ** -0.5, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"paged_decode kernel failed (code {rc})")
        return out
