"""Speculative decoding (backends/engine/spec_decode.py) on tiny random models.

Greedy outputs must be token-identical with speculation on and off (n-gram and draft proposers,
concurrent requests, mixed batches, prefix caching, chunked prefill, preemption, stop tokens); a
draft equal to the target has every proposal accepted; the rejection sampler reproduces the target
distribution (chi-square on 100k draws); seeded sampled runs are reproducible; every KV block
(target and draft pools) comes back when the requests end.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch

from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig, LLMEngine
from infer_bench.backends.engine.loader import load_model
from infer_bench.backends.engine.sampling import SamplingParams
from infer_bench.backends.engine.spec_decode import (
    greedy_accept, ngram_propose, parse_spec_flag, rejection_sample)

torch.set_num_threads(1)

# chi-square critical values at alpha = 0.001 by degrees of freedom (scipy.stats.chi2.ppf(0.999, df))
CHI2_CRIT_999 = {3: 16.266, 4: 18.467, 5: 20.515, 7: 24.322}


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def other_draft(tiny_model_factory):
    """A different random model with the same tokenizer / vocab: a draft that is often wrong."""
    return load_model(str(tiny_model_factory(arch="llama", seed=1)))


@pytest.fixture(scope="module")
def prompts():
    """Prompts with repetition (so n-gram lookup proposes), some sharing a prefix."""
    rng = random.Random(3)
    shared = [rng.randrange(3, 500) for _ in range(19)]
    out = []
    for i in range(10):
        base = [rng.randrange(3, 500) for _ in range(rng.randint(4, 15))]
        p = base * rng.randint(2, 4) + base[:rng.randint(0, len(base))]
        out.append(shared + p if i % 3 == 0 else p)
    return out


def greedy(m=24, **kw):
    return SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, **kw)


def run(loaded, prompts, params, **cfg):
    cfg.setdefault("num_kv_blocks", 400)
    cfg.setdefault("block_size", 4)
    engine = LLMEngine(EngineConfig(**cfg), loaded)
    return engine, engine.generate(prompts, params)


@pytest.fixture(scope="module")
def reference(loaded, prompts):
    return run(loaded, prompts, [greedy(m) for m in range(10, 30, 2)])[1]


def assert_pools_empty(engine):
    bm = engine.block_manager
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    if engine.spec is not None and engine.spec.draft is not None:
        dbm = engine.spec.draft.bm
        assert dbm.num_used_blocks == 0 and not engine.spec.draft.states


# ---- unit -----------------------------------------------------------------------------------------
def test_ngram_propose():
    assert ngram_propose([1, 2, 3, 4, 1, 2], k=3) == [3, 4, 1]
    # the longest suffix wins: [5, 1, 2] matches at 4, the 2-gram [1, 2] also at 0
    assert ngram_propose([1, 2, 9, 9, 5, 1, 2, 7, 5, 1, 2], k=2) == [7, 5]
    assert ngram_propose([1, 2, 3], k=4) == []                 # no earlier occurrence
    assert ngram_propose([1, 2, 3, 1], k=4) == [2, 3, 1]       # continuation cut by the end
    assert ngram_propose([7, 7, 7], k=2, min_n=1, max_n=1) == [7]
    assert ngram_propose([1, 2, 1, 2], k=0) == []
    assert ngram_propose([1, 2, 3, 4, 1, 2], k=3, min_n=3, max_n=4) == []


def test_greedy_accept():
    assert greedy_accept([5, 6, 7, 8], [5, 6, 9]) == [5, 6, 7]
    assert greedy_accept([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]   # bonus token
    assert greedy_accept([4, 6], [5]) == [4]


def test_parse_spec_flag():
    assert parse_spec_flag("ngram") == {"spec_method": "ngram"}
    assert parse_spec_flag("draft:smollm2-135m") == {"spec_method": "draft",
                                                     "spec_draft_model": "smollm2-135m"}
    assert parse_spec_flag(None) == {} and parse_spec_flag("none") == {}
    with pytest.raises(ValueError):
        parse_spec_flag("medusa")
    with pytest.raises(ValueError):
        EngineConfig(spec_method="draft")


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with probability 0 was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize("kind", ["draft", "ngram"])
def test_rejection_sampler_matches_target(kind):
    """100k runs of a 2-token speculation on fixed distributions: the first output token ~ p1,
    and after an accepted first proposal the second ~ p2 (chi-square, alpha 0.001)."""
    p = torch.tensor([[0.30, 0.05, 0.25, 0.10, 0.20, 0.10],
                      [0.10, 0.40, 0.05, 0.05, 0.15, 0.25],
                      [0.20, 0.20, 0.20, 0.20, 0.10, 0.10]])
    q = torch.tensor([[0.05, 0.40, 0.15, 0.10, 0.25, 0.05],
                      [0.30, 0.10, 0.30, 0.10, 0.10, 0.10]])
    g = torch.Generator().manual_seed(1234)
    n = 100_000
    first = np.zeros(6, dtype=np.int64)
    second = np.zeros(6, dtype=np.int64)
    accepted_first = 0
    drafts = torch.stack([torch.multinomial(q[0], n, replacement=True, generator=g),
                          torch.multinomial(q[1], n, replacement=True, generator=g)], 1).tolist()
    for i in range(n):
        if kind == "draft":
            d = drafts[i]
            out = rejection_sample(p, d, q, g)
        else:
            d = [2, 1]        # deterministic proposals: q one-hot
            out = rejection_sample(p, d, None, g)
        first[out[0]] += 1
        if len(out) >= 2:
            assert out[0] == d[0]
            accepted_first += 1
            second[out[1]] += 1
    assert _chi2(first, p[0].numpy()) < CHI2_CRIT_999[5]
    assert accepted_first > 10_000
    assert _chi2(second, p[1].numpy()) < CHI2_CRIT_999[5]
    if kind == "ngram":   # acceptance of a fixed proposal is exactly p1(d1)
        assert abs(accepted_first / n - 0.25) < 0.01


def test_rejection_sampler_identical_distributions_accept_all():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        d = [int(torch.multinomial(p[0], 1, generator=g)), int(torch.multinomial(p[1], 1, generator=g))]
        assert rejection_sample(p, d, p[:2], g) == d + [0]


# ---- engine: greedy identity ----------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("budget", [512, 24])   # 24: chunked prefill competes with the proposals
def test_ngram_greedy_identical(loaded, prompts, reference, prefix, budget):
    engine, outs = run(loaded, prompts, [greedy(m) for m in range(10, 30, 2)], spec_method="ngram",
                       enable_prefix_caching=prefix, max_num_batched_tokens=budget)
    assert outs == reference
    st = engine.stats()
    assert st.spec.proposed_total > 0 and st.spec.accepted_total > 0
    assert st.spec.accepted_total <= st.spec.proposed_total
    assert_pools_empty(engine)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_draft_other_model_greedy_identical(loaded, other_draft, prompts, reference, k):
    engine, outs = run(loaded, prompts, [greedy(m) for m in range(10, 30, 2)], spec_method="draft",
                       spec_draft_model=other_draft, spec_k=k)
    assert outs == reference
    st = engine.stats()
    assert st.spec.proposed_total > 0
    assert st.spec.accepted_total < st.spec.proposed_total   # a different model: rejections
    assert_pools_empty(engine)


def test_draft_equal_to_target_accepts_everything(loaded, prompts, reference):
    engine, outs = run(loaded, prompts, [greedy(m) for m in range(10, 30, 2)], spec_method="draft",
                       spec_draft_model=loaded, spec_k=4)
    assert outs == reference
    st = engine.stats()
    assert st.spec.proposed_total > 0
    assert st.spec.accepted_total == st.spec.proposed_total
    assert_pools_empty(engine)


def test_draft_equal_to_target_sampling_accepts_everything(loaded, prompts):
    """p == q: min(1, p/q) = 1, so every sampled proposal is accepted too."""
    params = [SamplingParams(max_tokens=20, temperature=0.8, top_k=50, seed=i, ignore_eos=True)
              for i in range(len(prompts))]
    engine, outs = run(loaded, prompts, params, spec_method="draft", spec_draft_model=loaded)
    st = engine.stats()
    assert st.spec.proposed_total > 0
    assert st.spec.accepted_total == st.spec.proposed_total
    assert all(len(o) == 20 for o in outs)


def test_mixed_batch_with_and_without_speculation(loaded, prompts, reference):
    engine = LLMEngine(EngineConfig(num_kv_blocks=400, block_size=4, spec_method="ngram"), loaded)
    finals = {}
    tokens = {f"r{i}": [] for i in range(len(prompts))}
    for i, (p, m) in enumerate(zip(prompts, range(10, 30, 2))):
        engine.add_request(f"r{i}", p, greedy(m), speculate=i % 2 == 0)
    saw_mixed = False
    while engine.has_unfinished():
        running = list(engine.scheduler.running)
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finals[out.request_id] = out.timing
        spec_now = [s for s in running if s.spec_enabled and not s.is_prefill]
        plain_now = [s for s in running if not s.spec_enabled and not s.is_prefill]
        saw_mixed |= bool(spec_now and plain_now)
    assert saw_mixed
    assert [tokens[f"r{i}"] for i in range(len(prompts))] == reference
    for i in range(len(prompts)):
        t = finals[f"r{i}"]
        if i % 2:
            assert t["spec_proposed"] == 0 and t["spec_accepted"] == 0
        else:
            assert t["spec_proposed"] >= t["spec_accepted"] >= 0
    assert sum(finals[f"r{i}"]["spec_accepted"] for i in range(0, len(prompts), 2)) > 0
    assert_pools_empty(engine)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_preemption(loaded, prompts, reference, method):
    """A pool so small that sequences get preempted (and recomputed) while speculating."""
    engine, outs = run(loaded, prompts, [greedy(m) for m in range(10, 30, 2)], num_kv_blocks=24,
                       spec_method=method, spec_draft_model=loaded)
    assert outs == reference
    assert engine.scheduler.num_preemptions > 0
    assert engine.stats().spec.accepted_total > 0
    assert_pools_empty(engine)


def test_stop_tokens_inside_accepted_runs(loaded, prompts, reference):
    stops = [[ref[len(ref) // 2]] for ref in reference]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, stop_token_ids=s)
              for m, s in zip(range(10, 30, 2), stops)]
    _, plain = run(loaded, prompts, params)
    assert any(len(o) < m for o, m in zip(plain, range(10, 30, 2)))   # the stops really cut
    for method in ("ngram", "draft"):
        engine, outs = run(loaded, prompts, params, spec_method=method, spec_draft_model=loaded)
        assert outs == plain, method
        assert_pools_empty(engine)


def test_seeded_sampling_reproducible(loaded, prompts):
    params = [SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=100 + i, ignore_eos=True)
              for i in range(len(prompts))]
    for method, draft in (("ngram", None), ("draft", "other")):
        runs = []
        for _ in range(2):
            cfg = dict(spec_method=method, spec_draft_model=None)
            if draft:
                cfg["spec_draft_model"] = loaded
            engine, outs = run(loaded, prompts, params, **cfg)
            runs.append(outs)
            assert_pools_empty(engine)
        assert runs[0] == runs[1]
        assert all(len(o) == 20 for o in runs[0])


def test_abort_returns_blocks(loaded, prompts):
    for method in ("ngram", "draft"):
        engine = LLMEngine(EngineConfig(num_kv_blocks=400, block_size=4, spec_method=method,
                                        spec_draft_model=loaded), loaded)
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", p, greedy(40))
        for _ in range(6):
            engine.step()
        for i in range(len(prompts)):
            engine.abort(f"r{i}")
        while engine.has_unfinished():
            engine.step()
        assert_pools_empty(engine)


def test_async_engine_timing_and_metrics(loaded, prompts, reference):
    from infer_bench.backends.engine.http.app import ServerMetrics, render_metrics

    engine = AsyncEngine(EngineConfig(num_kv_blocks=400, block_size=4, spec_method="ngram"), loaded)

    async def one(i):
        toks, final = [], None
        async for out in engine.generate(f"a{i}", prompts[i], greedy(10 + 2 * i)):
            toks.extend(out.new_token_ids)
            final = out
        return toks, final.timing

    async def main():
        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    try:
        results = asyncio.run(main())
        assert [r[0] for r in results] == reference
        for _, timing in results:
            assert {"spec_proposed", "spec_accepted", "spec_acceptance_rate",
                    "spec_mean_accepted_len"} <= set(timing)
        assert sum(t["spec_accepted"] for _, t in results) > 0
        stats = engine.stats()
        assert stats.spec.accepted_total == sum(t["spec_accepted"] for _, t in results)
        text = render_metrics(stats, ServerMetrics(), "tiny")
        assert "infer_bench_engine_spec_proposed_total" in text
        assert "infer_bench_engine_spec_accepted_total" in text
    finally:
        engine.shutdown()


def test_off_by_default(loaded, prompts):
    engine, _ = run(loaded, prompts[:2], [greedy(5)] * 2)
    assert engine.spec is None
    assert engine.stats().spec.proposed_total == 0


def test_disaggregated_decode_workers_speculate(tiny_model_dir, loaded, prompts, reference):
    """Decode workers of a 1P1D deployment get spec_* through the per-worker EngineConfig kwargs."""
    router = pytest.importorskip("infer_bench.backends.engine.disagg.router")
    engine_kw = {"num_kv_blocks": 400, "block_size": 4, "max_num_batched_tokens": 64,
                 "spec_method": "ngram", "spec_k": 4}

    async def main():
        eng = router.DisaggEngine(router.DisaggOptions(model=str(tiny_model_dir), num_threads=2,
                                                       engine=engine_kw))
        await eng.start()
        try:
            async def one(i):
                toks, timing = [], None
                async for out in eng.generate(f"d{i}", prompts[i], greedy(10 + 2 * i)):
                    toks += out.new_token_ids
                    if out.finished:
                        timing = out.timing
                return toks, timing
            return await asyncio.gather(*(one(i) for i in range(len(prompts))))
        finally:
            await eng.shutdown()

    results = asyncio.run(main())
    assert [r[0] for r in results] == reference
    assert not all(t["disagg"]["local_prefill"] for _, t in results)   # KV came from a prefill worker
    assert sum(t["spec_accepted"] for _, t in results) > 0
