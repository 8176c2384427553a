"""Block allocator: ref counts, prefix-cache hits, LRU eviction, collision guard, and a fuzz test
(block manager alone and driven by the scheduler) that every block comes back."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from infer_bench.backends.engine.block_manager import BlockManager
from infer_bench.backends.engine.sampling import SamplingParams
from infer_bench.backends.engine.scheduler import Scheduler
from infer_bench.backends.engine.sequence import Sequence, SequenceStatus


def seq(tokens, rid="r", max_tokens=16) -> Sequence:
    return Sequence.create(rid, list(tokens), SamplingParams(max_tokens=max_tokens))


def compute_all(bm: BlockManager, s: Sequence) -> None:
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)


def check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    refs = [0] * bm.num_blocks
    for s in live:
        for b in s.block_table:
            refs[b] += 1
    assert refs == [b.ref_count for b in bm.blocks]
    free, evictable = set(bm.free_ids), set(bm.evictable)
    assert not free & evictable and len(free) == len(bm.free_ids)
    assert all(bm.blocks[b].ref_count == 0 for b in free | evictable)
    assert all(bm.blocks[b].hash is not None for b in evictable)
    assert bm.num_used_blocks == sum(1 for r in refs if r)
    for h, b in bm.hash_to_block.items():
        assert bm.blocks[b].hash == h


def test_allocate_and_free_ref_counts():
    bm = BlockManager(8, 4)
    a = seq(range(10))
    assert bm.can_allocate(a) and bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in a.block_table)
    # decode growth: 12 tokens still fit 3 blocks, the 13th needs a 4th
    a.token_ids += [1, 2]
    assert bm.can_append(a)
    bm.append_slot(a)
    assert len(a.block_table) == 3
    a.token_ids.append(3)
    bm.append_slot(a)
    assert len(a.block_table) == 4 and bm.num_free_blocks == 4
    bm.free(a)
    assert a.block_table == [] and bm.num_free_blocks == 8
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_no_room_says_so():
    bm = BlockManager(3, 4)
    a = seq(range(12), "a")
    assert bm.allocate(a)
    b = seq(range(100, 105), "b")
    assert not bm.can_allocate(b) and not bm.allocate(b)
    assert b.block_table == [] and bm.num_free_blocks == 0
    a.token_ids.append(7)
    assert not bm.can_append(a)


def test_prefix_hit_reuses_blocks():
    bm = BlockManager(16, 4)
    a = seq(range(12), "a")
    bm.allocate(a)
    assert a.num_computed_tokens == 0
    compute_all(bm, a)
    assert bm.num_cached_blocks == 3
    b = seq(list(range(8)) + [50, 51, 52], "b")
    assert bm.num_prefix_hit_tokens(b) == 8
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert b.num_computed_tokens == 8
    assert [bm.blocks[x].ref_count for x in a.block_table] == [2, 2, 1]
    # an identical prompt hits all but the block holding its last token (always computed)
    c = seq(range(12), "c")
    bm.allocate(c)
    assert c.num_computed_tokens == 8 and c.block_table[2] != a.block_table[2]
    assert bm.prefix_hit_tokens == 16 and bm.prefix_queried_tokens == 12 + 11 + 12
    for s in (a, b, c):
        bm.free(s)
    check_invariants(bm, [])
    # freed cached blocks still hit
    d = seq(list(range(12)) + [1], "d")
    bm.allocate(d)
    assert d.num_computed_tokens == 12
    # a divergent block breaks the chain: later blocks do not hit even if their tokens match
    e = seq([99, 1, 2, 3] + list(range(4, 12)) + [1], "e")
    bm.allocate(e)
    assert e.num_computed_tokens == 0


def test_prefix_caching_off():
    bm = BlockManager(16, 4, enable_prefix_caching=False)
    a = seq(range(12))
    bm.allocate(a)
    compute_all(bm, a)
    bm.free(a)
    b = seq(range(13))
    bm.allocate(b)
    assert b.num_computed_tokens == 0 and bm.num_cached_blocks == 0


def test_lru_eviction_order():
    bm = BlockManager(4, 4)
    seqs = [seq([10 * i + j for j in range(4)] + [0], f"s{i}") for i in range(3)]
    for s in seqs:  # one full cached block + one partial block each... allocate/free one at a time
        bm.allocate(s)
        compute_all(bm, s)
        bm.free(s)
    # cached: blocks of s0, s1, s2 (freed in that order); partial blocks went to the plain free list
    assert bm.num_cached_blocks == 3 and bm.num_free_blocks == 4
    # touch s0 again (hit, then free): it becomes most recently used
    again = seq(seqs[0].token_ids[:4] + [7], "again")
    bm.allocate(again)
    assert again.num_computed_tokens == 4
    bm.free(again)
    # need 3 fresh blocks: 1 never-cached + evict 2 LRU (s1, then s2); s0 survives
    big = seq(range(200, 211), "big")
    bm.allocate(big)
    assert bm.num_prefix_hit_tokens(seq(seqs[0].token_ids, "x")) == 4
    assert bm.num_prefix_hit_tokens(seq(seqs[1].token_ids, "x")) == 0
    assert bm.num_prefix_hit_tokens(seq(seqs[2].token_ids, "x")) == 0
    check_invariants(bm, [big])


def test_hits_on_evictable_blocks_count_against_free_space():
    bm = BlockManager(3, 4)
    a = seq(range(9), "a")  # 3 blocks, 2 full
    bm.allocate(a)
    compute_all(bm, a)
    bm.free(a)
    # b hits a's 2 cached blocks and needs 1 fresh: fits exactly
    b = seq(list(range(8)) + [5, 6, 7, 8], "b")
    assert bm.can_allocate(b) and bm.allocate(b)
    assert b.num_computed_tokens == 8 and bm.num_free_blocks == 0
    check_invariants(bm, [b])


def test_collision_guard():
    bm = BlockManager(8, 4, hash_fn=lambda parent, tokens: 0)  # every block collides
    a = seq(range(5), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = seq([9, 9, 9, 9, 1], "b")
    assert bm.num_prefix_hit_tokens(b) == 0  # same hash, different tokens: a miss
    bm.allocate(b)
    assert b.num_computed_tokens == 0
    compute_all(bm, b)  # its block is not registered over a's
    assert bm.blocks[bm.hash_to_block[0]].block_id == a.block_table[0]
    c = seq(list(range(4)) + [8], "c")
    bm.allocate(c)
    assert c.num_computed_tokens == 4 and c.block_table[0] == a.block_table[0]
    for s in (a, b, c):
        bm.free(s)
    check_invariants(bm, [])
    assert bm.num_free_blocks == 8


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "compute", "decode", "finish"]),
                          st.integers(0, 10**6)), min_size=1, max_size=60))
def test_fuzz_block_manager_returns_all_blocks(ops):
    bm = BlockManager(24, 4)
    live: list[Sequence] = []
    n = 0
    for op, r in ops:
        if op == "add":
            # tokens from a small alphabet with a shared start: many prefix hits
            length = 1 + r % 30
            toks = [(r >> (i % 16)) % 3 if i > 6 else i for i in range(length)]
            s = seq(toks, f"s{n}")
            n += 1
            if bm.can_allocate(s):
                assert bm.allocate(s)
                live.append(s)
            else:
                assert not bm.allocate(s)
        elif live:
            s = live[r % len(live)]
            if op == "compute":
                s.num_computed_tokens = min(s.num_tokens, s.num_computed_tokens + 1 + r % 9)
                bm.cache_full_blocks(s)
            elif op == "decode" and s.num_computed_tokens == s.num_tokens:
                s.token_ids.append(r % 3)
                if bm.can_append(s):
                    bm.append_slot(s)
                else:
                    s.token_ids.pop()
            elif op == "finish":
                bm.free(s)
                live.remove(s)
        check_invariants(bm, live)
    for s in live:
        bm.free(s)
    check_invariants(bm, [])
    assert bm.num_free_blocks == 24


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12), st.integers(0, 30), st.booleans()),
                min_size=1, max_size=12),
       st.booleans(), st.booleans())
def test_fuzz_scheduler_returns_all_blocks(requests, chunked, prefix):
    """Arrivals, aborts and finishes through the real scheduler (fake model: next token is a
    function of the sequence): all requests end, every block is free again, and recomputation after
    preemption yields the same tokens as an unconstrained run."""
    def run(num_blocks):
        bm = BlockManager(num_blocks, 4, enable_prefix_caching=prefix)
        sch = Scheduler(bm, max_num_batched_tokens=48, max_num_seqs=6, enable_chunked_prefill=chunked)
        pending = [(f"r{i}", [(7 * i + j) % 5 for j in range(plen)], mt, abort_at, i % 3 == 0)
                   for i, (plen, mt, abort_at, _) in enumerate(requests)]
        seqs, results, step = {}, {}, 0
        while pending or sch.has_unfinished():
            if pending and step % 2 == 0:
                rid, toks, mt, abort_at, do_abort = pending.pop(0)
                seqs[rid] = (seq(toks, rid, mt), abort_at if do_abort else None)
                sch.add(seqs[rid][0])
            out = sch.schedule()
            for s in out.finished:
                results[s.request_id] = ("capacity", s.output_token_ids)
            for s, k in out.scheduled:
                assert s.status is SequenceStatus.RUNNING and len(s.block_table) * 4 >= s.num_computed_tokens + k
                s.num_computed_tokens += k
                bm.cache_full_blocks(s)
                if s.num_computed_tokens == s.num_tokens:
                    s.token_ids.append(sum(s.token_ids) % 5)
                    if s.num_output_tokens >= s.params.max_tokens:
                        sch.finish(s, "length")
                        results[s.request_id] = ("length", s.output_token_ids)
            for rid, (s, abort_at) in seqs.items():
                if abort_at is not None and step >= abort_at and not s.is_finished:
                    sch.finish(s, "abort")
                    results[rid] = ("abort", None)
            live = [s for s in sch.running]
            check_invariants(bm, live)
            step += 1
            assert step < 5000
        assert bm.num_free_blocks == num_blocks
        return results, sch.num_preemptions

    small, _ = run(14)
    big, preempted = run(200)
    assert preempted == 0
    for rid, (reason, toks) in small.items():
        if reason == "length" and big[rid][0] == "length":
            assert toks == big[rid][1]
