"""Disaggregated serving (backends/engine/disagg/): correctness of the KV handoff.

Greedy outputs of disagg (1P1D and 2P1D; shared memory and torch.distributed/gloo; layer-wise on
and off; with and without prefix caching; conditional disaggregation) are token-identical to the
monolithic engine's; the KV that arrives at the decode worker equals the KV the engine computes
itself. Worker processes are shared at module scope (spawning one costs seconds).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from infer_bench.backends.engine.disagg.router import DisaggEngine, DisaggOptions
from infer_bench.backends.engine.disagg.transport import LinkThrottle, copy_runs, gather_runs, scatter_runs, slot_runs
from infer_bench.backends.engine.engine import EngineConfig, LLMEngine
from infer_bench.backends.engine.loader import load_model
from infer_bench.backends.engine.sampling import SamplingParams

BS = 4
ENGINE = {"num_kv_blocks": 256, "block_size": BS, "max_num_batched_tokens": 32}


def greedy(n=8):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def prompts():
    return [[(i * 37 + j * 11) % 400 + 3 for j in range(n)] for i, n in enumerate([5, 17, 40, 3, 64])]


class Loop:
    """One asyncio loop in a thread for the module's DisaggEngines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def collect(eng, rid, prompt, params, **kw):
    toks, timing = [], None
    async for out in eng.generate(rid, prompt, params, **kw):
        toks += out.new_token_ids
        if out.finished:
            timing = out.timing
    return toks, timing


async def collect_many(eng, items):
    return await asyncio.gather(*(collect(eng, *it) for it in items))


@pytest.fixture(scope="module")
def loop():
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def mono(loaded, prompt_list, params, prefix=True):
    eng = LLMEngine(EngineConfig(**ENGINE, enable_prefix_caching=prefix), loaded)
    return [eng.generate([p], params)[0] for p in prompt_list]


def start_engine(loop, tiny_model_dir, **kw):
    opts = DisaggOptions(model=str(tiny_model_dir), num_threads=2, engine=dict(ENGINE, **kw.pop("engine", {})), **kw)
    eng = DisaggEngine(opts)
    loop.run(eng.start())
    return eng


@pytest.fixture(scope="module")
def shm2p1d(loop, tiny_model_dir):
    eng = start_engine(loop, tiny_model_dir, prefill_workers=2, decode_workers=1, transport="shm")
    yield eng
    loop.run(eng.shutdown())


@pytest.fixture(scope="module")
def dist1p1d(loop, tiny_model_dir):
    eng = start_engine(loop, tiny_model_dir, prefill_workers=1, decode_workers=1, transport="dist",
                       engine={"enable_prefix_caching": False})
    yield eng
    loop.run(eng.shutdown())


# ---- transport units (no processes) ------------------------------------------------------------

def test_slot_runs_and_copies():
    runs = slot_runs([3, 4, 9], [0, 1, 2], 2, 11, 4)
    assert runs == [(14, 2, 6), (36, 8, 3)]
    src = torch.randn(2, 2, 64, 8)
    dst = torch.zeros(2, 2, 64, 8)
    copy_runs(dst, src, runs)
    for s, d, n in runs:
        assert torch.equal(dst[:, :, d:d + n], src[:, :, s:s + n])
    buf = gather_runs(src, runs)
    assert buf.shape == (2, 2, 9, 8)
    out = torch.zeros_like(dst)
    scatter_runs(out, buf, runs)
    assert torch.equal(out, dst)


def test_link_throttle_paces_bytes():
    import time
    th = LinkThrottle(0.08)  # 10 MB/s
    t0 = time.monotonic()
    for _ in range(3):
        th.pace(100_000, time.monotonic())
    assert time.monotonic() - t0 >= 0.029


# ---- token identity ----------------------------------------------------------------------------

def test_1p1d_and_2p1d_match_mono_shm(loop, shm2p1d, loaded):
    ps = prompts()
    ref = mono(loaded, ps, greedy())
    # 1P1D: every prefill on prefill-0, one at a time
    got = [loop.run(collect(shm2p1d, f"a{i}", p, greedy(), prefill_worker="prefill-0"))
           for i, p in enumerate(ps)]
    assert [g[0] for g in got] == ref
    for (_, t), p in zip(got, ps):
        assert t["disagg"] == {"prefill_worker": "prefill-0", "decode_worker": "decode-0",
                               "local_prefill": False, "layerwise": True}
        for k in ("queue_s", "prefill_s", "transfer_s", "transfer_bytes", "admission_s",
                  "decode_s", "cached_tokens", "preemptions", "token_steps", "steps"):
            assert k in t, k
        assert len(t["token_steps"]) == 8 and t["token_workers"][0] == "prefill-0"
        assert t["transfer_bytes"] > 0
    # 2P1D: concurrently, both prefill workers used
    res = loop.run(collect_many(shm2p1d, [(f"b{i}", p, greedy()) for i, p in enumerate(ps)]))
    assert [r[0] for r in res] == ref
    assert {r[1]["disagg"]["prefill_worker"] for r in res} == {"prefill-0", "prefill-1"}


def test_layerwise_off_matches(loop, shm2p1d, loaded):
    ps = prompts()[1:3]
    ref = mono(loaded, ps, greedy())
    shm2p1d.layerwise = False
    try:
        got = [loop.run(collect(shm2p1d, f"nl{i}", p, greedy())) for i, p in enumerate(ps)]
    finally:
        shm2p1d.layerwise = True
    assert [g[0] for g in got] == ref
    assert all(g[1]["disagg"]["layerwise"] is False for g in got)


def test_decode_prefix_hits_not_resent(loop, shm2p1d, loaded):
    base = [(j * 13) % 300 + 5 for j in range(48)]
    p2 = base + [7, 8, 9, 10, 11]
    ref = mono(loaded, [base, p2], greedy())
    a = loop.run(collect(shm2p1d, "px1", base, greedy()))
    b = loop.run(collect(shm2p1d, "px2", p2, greedy()))
    assert [a[0], b[0]] == ref
    assert b[1]["decode_cached_tokens"] >= 48 - BS
    per_token = a[1]["transfer_bytes"] / 48
    assert b[1]["transfer_bytes"] <= per_token * (len(p2) - b[1]["decode_cached_tokens"]) + 1


def test_seeded_sampling_matches_mono(loop, shm2p1d, loaded):
    params = SamplingParams(max_tokens=6, temperature=0.8, top_k=50, seed=1234, ignore_eos=True)
    p = prompts()[2]
    ref = mono(loaded, [p], params)[0]
    assert loop.run(collect(shm2p1d, "seeded", p, params))[0] == ref


def test_conditional_disagg_threshold(loop, shm2p1d, loaded):
    short, long_ = prompts()[3], [(j * 17) % 390 + 9 for j in range(30)]  # long_: not cached yet
    ref = mono(loaded, [short, long_], greedy())
    shm2p1d.disagg_threshold = 16
    try:
        s = loop.run(collect(shm2p1d, "th1", short, greedy()))
        lg = loop.run(collect(shm2p1d, "th2", long_, greedy()))
    finally:
        shm2p1d.disagg_threshold = None
    assert [s[0], lg[0]] == ref
    assert s[1]["disagg"]["local_prefill"] is True and s[1]["transfer_bytes"] == 0
    assert lg[1]["disagg"]["local_prefill"] is False


def test_transferred_kv_equals_computed(loop, shm2p1d, loaded, tmp_path):
    p = [(j * 29) % 450 + 2 for j in range(37)]
    loop.run(collect(shm2p1d, "kv1", p, greedy(2)))
    path = str(tmp_path / "kv.npy")
    loop.run(shm2p1d.debug_dump_kv("decode-0", p, path))
    got = torch.from_numpy(np.load(path, allow_pickle=False))
    eng = LLMEngine(EngineConfig(**ENGINE), loaded)
    eng.generate([p], greedy(1))
    ids, _ = eng.block_manager._lookup(p + [0])
    slots = torch.tensor([b * BS + o for b in ids for o in range(BS)])
    want = eng.cache.kv.index_select(3, slots)
    assert got.shape == want.shape and got.shape[3] == (len(p) // BS) * BS
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


def test_step_trace_and_stats_cover_all_workers(loop, shm2p1d):
    import time
    time.sleep(0.4)  # traces are pushed every 0.25 s
    rows = shm2p1d.step_trace()
    assert {(r["worker"], r["role"]) for r in rows} >= {("prefill-0", "prefill"), ("prefill-1", "prefill"),
                                                       ("decode-0", "decode")}
    st = shm2p1d.stats()
    assert st.workers_alive_prefill == 2 and st.kv_blocks_total == 3 * 256
    code, h = shm2p1d.health()
    assert code == 200 and h["status"] == "ok"


# ---- torch.distributed transport, no prefix caching ----------------------------------------------

@pytest.mark.parametrize("layerwise", [True, False])
def test_dist_transport_matches_mono(loop, dist1p1d, loaded, layerwise):
    ps = prompts()
    ref = mono(loaded, ps, greedy(), prefix=False)
    dist1p1d.layerwise = layerwise
    try:
        res = loop.run(collect_many(dist1p1d, [(f"d{layerwise}{i}", p, greedy()) for i, p in enumerate(ps)]))
    finally:
        dist1p1d.layerwise = True
    assert [r[0] for r in res] == ref
    assert all(r[1]["transfer_bytes"] > 0 and r[1]["disagg"]["layerwise"] is layerwise for r in res)
