"""End-to-end engine correctness on a tiny random model.

Greedy outputs must be token-identical to Hugging Face `generate(do_sample=False)` for a ragged
batch of concurrent requests, whatever the engine does underneath: prefix caching on/off (with
shared prefixes so it really hits), chunked prefill on/off (a small token budget so chunks really
happen), a KV pool so small that sequences get preempted and recomputed.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig, LLMEngine
from infer_bench.backends.engine.loader import load_model
from infer_bench.backends.engine.sampling import SamplingParams

torch.set_num_threads(1)

N_REQ = 16


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def workload():
    """16 prompts of mixed lengths; half share one of two long prefixes (prefix-cache hits)."""
    rng = random.Random(7)
    shared = [[rng.randrange(3, 500) for _ in range(n)] for n in (21, 37)]
    prompts, max_tokens = [], []
    for i in range(N_REQ):
        tail = [rng.randrange(3, 500) for _ in range(rng.randint(1, 30))]
        prompts.append(shared[i % 2] + tail if i % 4 < 2 else tail)
        max_tokens.append(rng.randint(1, 24))
    return prompts, max_tokens


@pytest.fixture(scope="module")
def hf_reference(tiny_model_dir, workload):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts, max_tokens = workload
    refs = []
    with torch.no_grad():
        for p, m in zip(prompts, max_tokens):
            ids = torch.tensor([p])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=m,
                                 min_new_tokens=m, do_sample=False)
            refs.append(out[0, len(p):].tolist())
    return refs


def greedy(m):
    return SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)


def run_engine(loaded, workload, **cfg):
    prompts, max_tokens = workload
    engine = LLMEngine(EngineConfig(**cfg), loaded)
    outs = engine.generate(prompts, [greedy(m) for m in max_tokens])
    return engine, outs


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("chunked", [True, False])
def test_greedy_matches_hf(loaded, workload, hf_reference, prefix, chunked):
    # block_size 8 and a 64-token budget: prompts up to 67 tokens, so chunking really happens
    engine, outs = run_engine(loaded, workload, block_size=8, max_num_batched_tokens=64 if chunked else 128,
                              num_kv_blocks=512, enable_prefix_caching=prefix, enable_chunked_prefill=chunked)
    assert outs == hf_reference
    trace = engine.step_trace()
    assert max(s["n_prefill_tokens"] for s in trace) <= engine.config.max_num_batched_tokens
    # mixed steps (prefill co-batched with decodes) happen
    assert any(s["n_prefill_tokens"] and s["n_decode_seqs"] for s in trace)
    bm = engine.block_manager
    if prefix:
        assert bm.prefix_hit_tokens > 0
    else:
        assert bm.prefix_hit_tokens == 0 and bm.num_cached_blocks == 0
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.seqs


def test_chunked_prefill_really_chunks(loaded, workload, hf_reference):
    # a 16-token budget: every prompt longer than 16 is split over several steps
    engine, outs = run_engine(loaded, workload, block_size=4, max_num_batched_tokens=16, num_kv_blocks=512)
    assert outs == hf_reference
    chunked = [s for s in engine.step_trace() if s["n_prefill_tokens"] == 16]
    assert len(chunked) >= 3


def test_preemption_keeps_outputs_identical(loaded, workload, hf_reference):
    engine, outs = run_engine(loaded, workload, block_size=4, max_num_batched_tokens=64, num_kv_blocks=24)
    assert engine.scheduler.num_preemptions > 0
    assert outs == hf_reference
    assert engine.block_manager.num_free_blocks == 24


def test_preemption_without_prefix_cache_or_chunking(loaded, workload, hf_reference):
    engine, outs = run_engine(loaded, workload, block_size=4, max_num_batched_tokens=128, num_kv_blocks=24,
                              enable_prefix_caching=False, enable_chunked_prefill=False)
    assert engine.scheduler.num_preemptions > 0
    assert outs == hf_reference


def test_timing_and_trace(loaded, workload):
    prompts, max_tokens = workload
    engine = LLMEngine(EngineConfig(block_size=4, num_kv_blocks=24, max_num_batched_tokens=32), loaded)
    for i, (p, m) in enumerate(zip(prompts, max_tokens)):
        engine.add_request(f"r{i}", p, greedy(m))
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert len(finals) == N_REQ
    steps = {s["step"]: s for s in engine.step_trace()}
    for i, m in enumerate(max_tokens):
        out = finals[f"r{i}"]
        t = out.timing
        assert out.finish_reason == "length" and out.num_output_tokens == m
        assert t["queue_s"] >= 0 and t["prefill_s"] >= 0 and t["e2e_s"] >= t["queue_s"]
        assert len(t["token_steps"]) == m and t["token_steps"] == sorted(t["token_steps"])
        for sid in t["token_steps"]:
            b = t["steps"][str(sid)]
            assert b["prefill_tokens"] == steps[sid]["n_prefill_tokens"]
            assert b["decode_batch"] == steps[sid]["n_decode_seqs"]
    assert sum(finals[k].timing["preemptions"] for k in finals) == engine.scheduler.num_preemptions > 0
    st = engine.stats()
    assert st.generation_tokens_total == sum(max_tokens)
    assert st.step_time.count == st.steps_total == len(steps)


def test_prefix_hits_reported(loaded):
    engine = LLMEngine(EngineConfig(block_size=4, num_kv_blocks=64), loaded)
    prompt = list(range(10, 40))
    engine.generate([prompt], greedy(3))
    engine.add_request("again", prompt + [5, 6], greedy(2))
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            final = out
    assert final.timing["num_cached_tokens"] == 28  # 7 full blocks of the shared 30 tokens
    assert engine.stats().prefix_hit_rate > 0


def test_seeded_sampling_reproducible(loaded, workload):
    prompts, _ = workload
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, top_k=50, seed=1234, ignore_eos=True)
    engine = LLMEngine(EngineConfig(num_kv_blocks=256), loaded)
    alone = engine.generate([prompts[3]], params)[0]
    other = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    batched = engine.generate([prompts[0], prompts[3], prompts[5]], [other, params, other])[1]
    assert alone == batched
    different = engine.generate([prompts[3]], SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95,
                                                             top_k=50, seed=99, ignore_eos=True))[0]
    assert different != alone


def test_stop_token_ids_and_eos(loaded, workload, hf_reference):
    prompts, _ = workload
    ref = hf_reference[2]
    full = LLMEngine(EngineConfig(num_kv_blocks=256), loaded).generate([prompts[2]], greedy(24))[0]
    stop_at = 3
    stop_id = full[stop_at]
    first = full.index(stop_id)
    engine = LLMEngine(EngineConfig(num_kv_blocks=256), loaded)
    engine.add_request("s", prompts[2], SamplingParams(max_tokens=24, temperature=0, stop_token_ids=[stop_id]))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    toks = [t for o in outs for t in o.new_token_ids]
    assert toks == full[:first + 1]
    assert outs[-1].finish_reason == "stop" and outs[-1].finished
    assert ref[:len(toks)] == toks[:len(ref)]
    # EOS: treat that same id as EOS; ignore_eos disables it
    engine.eos_token_ids = {stop_id}
    assert engine.generate([prompts[2]], SamplingParams(max_tokens=24, temperature=0))[0] == full[:first + 1]
    assert engine.generate([prompts[2]], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0] == full


def _collect(engine, rid, prompt, params):
    engine.add_request(rid, prompt, params)
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    return outs


def test_stop_strings(loaded):
    tok = loaded.tokenizer
    prompt = tok.encode("The quick brown fox")
    engine = LLMEngine(EngineConfig(num_kv_blocks=256), loaded)
    outs = _collect(engine, "a", prompt, greedy(30))
    full_text = "".join(o.text_delta for o in outs)
    assert full_text == tok.decode([t for o in outs for t in o.new_token_ids])
    assert len(full_text) >= 6
    stop = full_text[3:6]
    first = full_text.find(stop)
    outs = _collect(engine, "b", prompt, SamplingParams(max_tokens=30, temperature=0, stop=[stop, "\x00never"]))
    text = "".join(o.text_delta for o in outs)
    assert text == full_text[:first]
    assert outs[-1].finish_reason == "stop"
    # the streamed text never contained any part of the stop string beyond the cut
    assert all(stop not in o.text_delta for o in outs)


def test_max_context_length(loaded):
    engine = LLMEngine(EngineConfig(num_kv_blocks=256, max_model_len=20), loaded)
    outs = _collect(engine, "x", list(range(3, 18)), greedy(50))
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 5
    with pytest.raises(ValueError, match="context"):
        engine.add_request("y", list(range(3, 23)), greedy(5))


def test_sequence_filling_the_pool_finishes_with_length(loaded):
    engine = LLMEngine(EngineConfig(num_kv_blocks=5, block_size=4), loaded)
    outs = _collect(engine, "big", [5, 6, 7], greedy(100))
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert outs[-1].num_output_tokens == 5 * 4 - 3 + 1  # last token sampled; its K/V had no room
    assert engine.block_manager.num_free_blocks == 5


def test_bad_requests_rejected(loaded):
    engine = LLMEngine(EngineConfig(num_kv_blocks=2, block_size=4, enable_chunked_prefill=False,
                                    max_num_batched_tokens=8), loaded)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("a", [], greedy(1))
    with pytest.raises(ValueError, match="not an id"):
        engine.add_request("a", [10**6], greedy(1))
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        engine.add_request("a", list(range(3, 13)), greedy(1))
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add_request("a", list(range(3, 11)), greedy(1))
    engine.add_request("a", [5, 6], greedy(2))
    with pytest.raises(ValueError, match="in use"):
        engine.add_request("a", [5, 6], greedy(2))
    assert len(engine.scheduler.waiting) == 1


def test_abort_frees_blocks(loaded, workload):
    prompts, _ = workload
    engine = LLMEngine(EngineConfig(block_size=4, num_kv_blocks=128, max_num_batched_tokens=16,
                                    enable_prefix_caching=False), loaded)
    for i, p in enumerate(prompts[:6]):
        engine.add_request(f"r{i}", p, greedy(20))
    for _ in range(4):
        engine.step()
    assert engine.block_manager.num_used_blocks > 0
    for i in range(6):
        assert engine.abort(f"r{i}")
    assert not engine.abort("r0")
    outs = engine.step()
    assert sorted(o.request_id for o in outs) == [f"r{i}" for i in range(6)]
    assert all(o.finished and o.finish_reason == "abort" for o in outs)
    assert engine.block_manager.num_free_blocks == 128
    assert not engine.has_unfinished()


# ---- AsyncEngine ---------------------------------------------------------------------------

async def _consume(engine, rid, prompt, params):
    toks, text, last = [], "", None
    async for out in engine.generate(rid, prompt, params):
        toks.extend(out.new_token_ids)
        text += out.text_delta
        last = out
    return toks, last


async def test_async_engine_matches_sync(loaded, workload, hf_reference):
    prompts, max_tokens = workload
    engine = AsyncEngine(EngineConfig(block_size=4, num_kv_blocks=48, max_num_batched_tokens=32), loaded)
    try:
        results = await asyncio.gather(*(_consume(engine, f"r{i}", p, greedy(m))
                                         for i, (p, m) in enumerate(zip(prompts, max_tokens))))
        assert [r[0] for r in results] == hf_reference
        assert all(r[1].finished and r[1].finish_reason == "length" and r[1].timing for r in results)
        st = engine.stats()
        assert st.running == st.waiting == 0 and st.kv_blocks_used == 0
        assert len(engine.step_trace()) == st.steps_total > 0
        with pytest.raises(ValueError, match="empty"):
            await _consume(engine, "bad", [], greedy(1))
    finally:
        engine.shutdown()


async def test_async_cancel_aborts_request(loaded):
    engine = AsyncEngine(EngineConfig(block_size=4, num_kv_blocks=600, enable_prefix_caching=False), loaded)
    try:
        got_first = asyncio.Event()

        async def consumer():
            async for out in engine.generate("long", list(range(3, 40)), greedy(2000 - 40)):
                got_first.set()

        task = asyncio.create_task(consumer())
        await asyncio.wait_for(got_first.wait(), 30)
        assert engine.stats().kv_blocks_used > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            st = engine.stats()
            if st.running == 0 and st.kv_blocks_used == 0:
                break
            await asyncio.sleep(0.01)
        assert st.running == 0 and st.kv_blocks_used == 0
        # a consumer that stops early (break) also aborts
        gen = engine.generate("brk", list(range(3, 40)), greedy(1000))
        async for _ in gen:
            break
        await gen.aclose()
        for _ in range(200):
            if engine.stats().kv_blocks_used == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.stats().kv_blocks_used == 0
        # the engine keeps serving
        toks, last = await _consume(engine, "after", [5, 6, 7], greedy(3))
        assert len(toks) == 3 and last.finish_reason == "length"
    finally:
        engine.shutdown()
