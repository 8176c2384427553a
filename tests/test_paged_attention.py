"""Paged attention (prefill, chunked prefill with earlier context, batched decode) vs dense SDPA."""

from __future__ import annotations

import random

import pytest
import torch

import shutil

from infer_bench.backends.engine import native, paged_attention
from infer_bench.backends.engine.paged_attention import KVCache, PagedAttention, SeqSlice

torch.set_num_threads(1)


@pytest.fixture(params=["native", "torch"], autouse=True)
def decode_path(request, monkeypatch):
    """Every test runs on both attention paths: the C kernels (decode and prefill) and the
    PyTorch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(paged_attention.native, "paged_decode_kernel", lambda: None)
        monkeypatch.setattr(paged_attention.native, "paged_prefill_kernel", lambda: None)
    elif native.paged_decode_kernel() is None or native.paged_prefill_kernel() is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is here but the native attention kernels did not build")
        pytest.skip("no C compiler: the native attention kernels are not built")
    return request.param


def dense_causal(q, k, v):
    """q: [T, H, D], k/v: [T, Hkv, D] -> [T, H, D], plain causal attention in float64."""
    h, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    q, k, v = (t.double().transpose(0, 1) for t in (q, k, v))
    t = q.shape[1]
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)


def run_schedule(n_heads, n_kv, head_dim, block_size, seq_lens, chunks_per_seq, seed=0):
    """Process each sequence in chunks (step by step, all sequences co-batched, ragged), and compare
    every row of every step against dense causal attention over the whole sequence."""
    g = torch.Generator().manual_seed(seed)
    num_layers = 2
    total_blocks = sum(-(-n // block_size) for n in seq_lens) + 3
    cache = KVCache(num_layers, total_blocks, block_size, n_kv, head_dim)
    rng = random.Random(seed)
    free = list(range(total_blocks))
    rng.shuffle(free)  # non-contiguous block tables
    tables = []
    for n in seq_lens:
        nb = -(-n // block_size)
        tables.append([free.pop() for _ in range(nb)])
    data = [[(torch.randn(n, n_heads, head_dim, generator=g), torch.randn(n, n_kv, head_dim, generator=g),
              torch.randn(n, n_kv, head_dim, generator=g)) for _ in range(num_layers)] for n in seq_lens]
    refs = [[dense_causal(*data[i][l]) for l in range(num_layers)] for i in range(len(seq_lens))]
    done = [0] * len(seq_lens)
    n_decode_rows = n_chunk_rows = 0
    while any(d < n for d, n in zip(done, seq_lens)):
        slices, rows = [], []
        # decodes first (like the scheduler), then prefill chunks
        order = sorted(range(len(seq_lens)), key=lambda i: seq_lens[i] - done[i] > 1)
        for i in order:
            if done[i] >= seq_lens[i]:
                continue
            remaining = seq_lens[i] - done[i]
            step = 1 if done[i] > 0 and chunks_per_seq[i] == 0 else max(1, min(remaining, rng.randint(1, 2 * block_size + 3)))
            if chunks_per_seq[i] < 0:
                step = remaining  # whole at once
            slices.append(SeqSlice(step, done[i] + step, tables[i]))
            rows.append((i, done[i], done[i] + step))
            if step == 1:
                n_decode_rows += 1
            elif done[i] > 0:
                n_chunk_rows += step
        attn = PagedAttention(cache, slices)
        for layer in range(num_layers):
            q = torch.cat([data[i][layer][0][a:b] for i, a, b in rows])
            k = torch.cat([data[i][layer][1][a:b] for i, a, b in rows])
            v = torch.cat([data[i][layer][2][a:b] for i, a, b in rows])
            out = attn.attend(layer, q, k, v)
            r = 0
            for i, a, b in rows:
                torch.testing.assert_close(out[r:r + b - a].double(), refs[i][layer][a:b], atol=2e-5, rtol=2e-5)
                r += b - a
        for i, a, b in rows:
            done[i] = b
    return n_decode_rows, n_chunk_rows


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_ragged_chunked_prefill_and_decode(n_heads, n_kv, block_size):
    lens = [1, 5, 17, 33, 40, 9]
    n_dec, n_chunk = run_schedule(n_heads, n_kv, 8, block_size, lens, [1, 0, 1, 1, 0, 1])
    assert n_dec > 0 and n_chunk > 0


def test_whole_prefill_then_decode_batched():
    # every sequence: whole prompt in one step, then token-by-token decode, all in one batch
    lens = [5, 16, 31, 64]
    g = torch.Generator().manual_seed(1)
    h, hkv, d, bs = 4, 2, 16, 8
    prompt = [n - 4 for n in lens]
    cache = KVCache(1, 40, bs, hkv, d)
    tables, nxt = [], 0
    for n in lens:
        nb = -(-n // bs)
        tables.append(list(range(nxt + nb - 1, nxt - 1, -1)))  # reversed ids
        nxt += nb
    data = [(torch.randn(n, h, d, generator=g), torch.randn(n, hkv, d, generator=g),
             torch.randn(n, hkv, d, generator=g)) for n in lens]
    refs = [dense_causal(*x) for x in data]
    # prefill
    attn = PagedAttention(cache, [SeqSlice(p, p, t) for p, t in zip(prompt, tables)])
    out = attn.attend(0, *(torch.cat([x[j][:p] for x, p in zip(data, prompt)]) for j in range(3)))
    r = 0
    for ref, p in zip(refs, prompt):
        torch.testing.assert_close(out[r:r + p].double(), ref[:p], atol=1e-5, rtol=1e-5)
        r += p
    for step in range(4):
        attn = PagedAttention(cache, [SeqSlice(1, p + step + 1, t) for p, t in zip(prompt, tables)])
        out = attn.attend(0, *(torch.stack([x[j][p + step] for x, p in zip(data, prompt)]) for j in range(3)))
        for i, (ref, p) in enumerate(zip(refs, prompt)):
            torch.testing.assert_close(out[i].double(), ref[p + step], atol=1e-5, rtol=1e-5)


def test_kv_written_at_slots():
    cache = KVCache(1, 4, 2, 1, 2)
    k = torch.arange(6, dtype=torch.float32).view(3, 1, 2)
    attn = PagedAttention(cache, [SeqSlice(3, 3, [2, 0])])
    attn.attend(0, torch.zeros(3, 1, 2), k, -k)
    assert torch.equal(cache.kv[0, 0, 0, 4:6], k[:2, 0])   # block 2 = slots 4, 5
    assert torch.equal(cache.kv[0, 0, 0, 0], k[2, 0])       # block 0, offset 0
    assert torch.equal(cache.kv[0, 1, 0, 4:6], -k[:2, 0])


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (6, 2)])
def test_decode_mixed_runs_and_stray_blocks(n_heads, n_kv, decode_path):
    """Decode over block tables mixing long runs of consecutive blocks (read in place as views)
    with stray blocks (gathered), whose partial attentions are merged by log-sum-exp."""
    g = torch.Generator().manual_seed(3)
    d, bs = 8, 4
    cache = KVCache(1, 64, bs, n_kv, d)
    tables = [list(range(0, 6)) + [40, 50] + list(range(10, 15)) + [41],   # run, strays, run, stray
              [51, 52, 53, 54, 55],                                       # one run
              [60, 30, 61, 20, 21, 22, 23],                               # strays, then a run
              [42]]                                                       # one block
    lens = [len(tables[0]) * bs - 1, len(tables[1]) * bs, len(tables[2]) * bs - 2, 3]
    data = [(torch.randn(n, n_heads, d, generator=g), torch.randn(n, n_kv, d, generator=g),
             torch.randn(n, n_kv, d, generator=g)) for n in lens]
    refs = [dense_causal(*x) for x in data]
    prompt = [n - 1 for n in lens]
    attn = PagedAttention(cache, [SeqSlice(p, p, t) for p, t in zip(prompt, tables)])
    attn.attend(0, *(torch.cat([x[j][:p] for x, p in zip(data, prompt)]) for j in range(3)))
    attn = PagedAttention(cache, [SeqSlice(1, n, t) for n, t in zip(lens, tables)])
    if decode_path == "torch":
        assert any(len(runs) > 1 or (runs and idx is not None) for runs, idx in attn.decode_parts)
    else:
        assert attn.native_decode is not None
    out = attn.attend(0, *(torch.stack([x[j][n - 1] for x, n in zip(data, lens)]) for j in range(3)))
    for i, (ref, n) in enumerate(zip(refs, lens)):
        torch.testing.assert_close(out[i].double(), ref[n - 1], atol=1e-5, rtol=1e-5)


def last_row_attention(q, k, v):
    """Attention of the last query row over all keys, float64 (the decode row of dense_causal)."""
    h, hkv = q.shape[1], k.shape[1]
    k = k.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)   # [H, T, D]
    v = v.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)
    ql = q[-1].double().unsqueeze(1)                                     # [H, 1, D]
    return (torch.softmax(ql @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)[:, 0]


def ragged_pool(n_heads, n_kv, head_dim, bs, lens, in_pool, seed):
    """A one-layer pool with a shuffled block table per sequence (lengths `lens`), random q/k/v
    for every position, and the first in_pool[i] positions' k/v already written to the pool (the
    earlier context). -> (cache, tables, [(q, k, v) per sequence])."""
    g = torch.Generator().manual_seed(head_dim * 10 + seed)
    total = sum(-(-n // bs) for n in lens) + 2
    cache = KVCache(1, total, bs, n_kv, head_dim)
    free = list(range(total))
    random.Random(seed).shuffle(free)
    tables = [[free.pop() for _ in range(-(-n // bs))] for n in lens]
    data = [(torch.randn(n, n_heads, head_dim, generator=g), torch.randn(n, n_kv, head_dim, generator=g),
             torch.randn(n, n_kv, head_dim, generator=g)) for n in lens]
    for start, t, (_, k, v) in zip(in_pool, tables, data):
        slots = torch.tensor([t[i // bs] * bs + i % bs for i in range(start)], dtype=torch.long)
        cache.kv[0, 0].index_copy_(1, slots, k[:start].transpose(0, 1))
        cache.kv[0, 1].index_copy_(1, slots, v[:start].transpose(0, 1))
    return cache, tables, data


@pytest.mark.parametrize("n_heads,n_kv,head_dim", [(4, 4, 8), (6, 2, 64), (8, 1, 80), (9, 3, 12), (16, 2, 128)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decode_kernel_ragged_against_dense(n_heads, n_kv, head_dim, threads, decode_path):
    """Decode of ragged contexts (1 token up to thousands, partial last blocks) over shuffled
    block tables, on 1-3 threads (long contexts, so the kernel really splits the work), for head
    dims on the kernel's vector paths (multiples of 8, with and without a 32-lane remainder) and
    its scalar path (12), GQA groups of 1-8."""
    lens = [1, 3, 4, 5, 17, 40, 2, 33, 4100, 4203]
    cache, tables, data = ragged_pool(n_heads, n_kv, head_dim, 4, lens, [n - 1 for n in lens], threads)
    torch.set_num_threads(threads)
    try:
        attn = PagedAttention(cache, [SeqSlice(1, n, t) for n, t in zip(lens, tables)])
        out = attn.attend(0, *(torch.stack([x[j][n - 1] for x, n in zip(data, lens)]) for j in range(3)))
    finally:
        torch.set_num_threads(1)
    for i, x in enumerate(data):
        torch.testing.assert_close(out[i].double(), last_row_attention(*x), atol=1e-5, rtol=1e-5)


def chunk_attention(q, k, v, start):
    """Rows of q at absolute positions start.. over keys k/v [ctx, Hkv, D], causal, float64."""
    h, hkv = q.shape[1], k.shape[1]
    k = k.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)   # [H, ctx, D]
    v = v.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)
    s = q.double().transpose(0, 1) @ k.transpose(1, 2) / q.shape[-1] ** 0.5   # [H, Tq, ctx]
    pos = torch.arange(start, start + q.shape[0]).unsqueeze(1)
    s = s.masked_fill(torch.arange(k.shape[1]).unsqueeze(0) > pos, float("-inf"))
    return (s.softmax(-1) @ v).transpose(0, 1)


@pytest.mark.parametrize("n_heads,n_kv,head_dim", [(4, 4, 8), (9, 3, 64), (8, 1, 80), (6, 2, 12), (16, 2, 128)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prefill_kernel_ragged_against_dense(n_heads, n_kv, head_dim, threads, decode_path):
    """One step mixing whole prompts (1 row up to 700), prompt chunks after earlier context (the
    chunk and the context not multiples of the kernel's 16-row tiles or 64-key chunks) and decode
    rows, over shuffled block tables, on 1-3 threads, GQA groups of 1-8; head dim 12 is not a
    multiple of 8 and takes the PyTorch path even when the kernel is there."""
    # (earlier context already in the pool, rows of this step)
    shapes = [(0, 700), (0, 2), (130, 77), (5, 1), (0, 16), (1000, 49), (64, 64), (33, 1)]
    cache, tables, data = ragged_pool(n_heads, n_kv, head_dim, 16, [a + b for a, b in shapes],
                                      [a for a, _ in shapes], threads)
    torch.set_num_threads(threads)
    try:
        attn = PagedAttention(cache, [SeqSlice(b, a + b, t) for (a, b), t in zip(shapes, tables)])
        assert (attn.native_prefill is not None) == (decode_path == "native" and head_dim % 8 == 0)
        out = attn.attend(0, *(torch.cat([x[j][a:] for x, (a, _) in zip(data, shapes)]) for j in range(3)))
    finally:
        torch.set_num_threads(1)
    r = 0
    for (start, rows), x in zip(shapes, data):
        ref = chunk_attention(x[0][start:], x[1], x[2], start)
        torch.testing.assert_close(out[r:r + rows].double(), ref, atol=2e-5, rtol=2e-5)
        r += rows
