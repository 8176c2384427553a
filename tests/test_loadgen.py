"""Client + load generator against the calibrated mock server on loopback (bounded: tens of
requests, a few seconds), and the results dir round trip."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from conftest import free_port
from infer_bench.backends.client.openai import PreparedRequest, RunClock, send_request
from infer_bench.workloads.datasets import build_requests
from infer_bench.workloads.loadgen import LoadGenerator
from infer_bench.workloads.prompt_text import load_tokenizer_for
from infer_bench.workloads.records import RECORD_COLUMNS
from infer_bench.workloads.results import ResultsError, ResultsWriter, load_results
from infer_bench.workloads.spec import SLO, ArrivalSpec, WorkloadSpec

pytestmark = pytest.mark.timeout(60)


def reqs(n, max_tokens=6, **kw):
    return [PreparedRequest(f"r{i:03d}", "a b c d", max_tokens=max_tokens, **kw) for i in range(n)]



async def test_ttft_and_multi_token_chunks(mock):
    srv = await mock(ttft_s=0.1, token_delay_s=0.01, tokens_per_chunk=3, include_token_ids=True)
    lg = LoadGenerator(srv.url, "completions", reqs(6, max_tokens=9),
                       ArrivalSpec("constant", rate=20.0), deployment="mock", load_point="c20")
    res = await lg.run()
    assert len(res.records) == 6 and all(r.ok for r in res.records)
    for r in res.records:
        assert abs(r.ttft_s - 0.1) < 0.03, r.ttft_s
        assert r.n_output == 9 and r.n_output_source == "usage"
        assert r.chunk_tokens == [3, 3, 3]
        assert r.n_input == 4
        # chunks leave the mock every 3 * 10 ms; TPOT = (t_last - t_first) / (9 - 3)
        assert r.tpot_s == pytest.approx(0.06 / 6, abs=0.004)
        assert r.e2e_s == pytest.approx(r.last_token_s - r.send_s)
        assert r.finish_reason == "length"
    # ITL per token is gap / 3 for each of the 3 tokens of a chunk
    r = res.records[0]
    gaps = np.diff(r.chunk_times_s)
    from infer_bench.workloads.metrics import itl_per_token
    assert itl_per_token(r.chunk_times_s, r.chunk_tokens) == pytest.approx(
        [gaps[0] / 3] * 3 + [gaps[1] / 3] * 3)
    # the client saw each chunk shortly after the mock sent it (same host clock)
    async with aiohttp.ClientSession() as s:
        log = await (await s.get(srv.url + "/mock/log")).json()
    by_id = {e["request_id"]: e for e in log}
    for r in res.records:
        mock_times = np.asarray(by_id[r.wire_request_id]["chunk_s"]) - lg.clock.t0_ns / 1e9
        assert np.all(np.abs(np.asarray(r.chunk_times_s) - mock_times) < 0.03)
    assert res.health.n_sent == 6 and res.health.send_lateness_max_s < 0.05


async def test_tokenize_callback_counts_chunk_tokens(mock):
    srv = await mock(ttft_s=0.02, token_delay_s=0.005, tokens_per_chunk=2)
    clock = RunClock()
    # no usage: the mock only sends usage when asked, so strip stream_options
    req = PreparedRequest("t", "x y", max_tokens=5, url=srv.url, tokenize=str.split,
                          extra_body={"stream_options": {"include_usage": False}})
    async with aiohttp.ClientSession() as s:
        raw = await send_request(s, req, clock)
    assert raw.ok and raw.chunk_tokens == [2, 2, 1]
    assert raw.n_output == 5 and raw.n_output_source == "tokenizer"
    # without tokenizer or usage: 1 per content chunk, source "chunks"
    req2 = PreparedRequest("u", "x y", max_tokens=5, url=srv.url, endpoint="chat",
                           extra_body={"stream_options": {"include_usage": False}})
    async with aiohttp.ClientSession() as s:
        raw2 = await send_request(s, req2, clock)
    assert raw2.ok and raw2.chunk_tokens == [1, 1, 1]
    assert raw2.n_output == 3 and raw2.n_output_source == "chunks"


async def test_errors_are_failures(mock):
    srv = await mock(ttft_s=0.01, token_delay_s=0.002, fail_every=3, fail_status=500)
    lg = LoadGenerator(srv.url, "completions", reqs(9), ArrivalSpec("concurrency", concurrency=1))
    res = await lg.run()
    failed = [r for r in res.records if not r.ok]
    assert len(failed) == 3
    assert all(r.error_type == "http_5xx" and r.http_status == 500 for r in failed)
    assert all("mock failure" in r.error for r in failed)
    assert all(r.ok and r.n_output == 6 for r in res.records if r not in failed)

    clock = RunClock()
    async with aiohttp.ClientSession() as s:
        # closed port -> connect
        raw = await send_request(s, PreparedRequest("c", "x", 3, url=f"http://127.0.0.1:{free_port()}"),
                                 clock)
        assert raw.error_type == "connect" and not raw.ok
        # 404 -> http_4xx
        raw = await send_request(s, PreparedRequest("n", "x", 3, url=srv.url + "/nope/completions"),
                                 clock)
        assert raw.error_type == "http_4xx"

    srv2 = await mock(ttft_s=0.01, token_delay_s=0.002, stream_error_every=1, stream_error_after=2,
                      tokens_per_chunk=1)
    srv3 = await mock(ttft_s=0.01, token_delay_s=0.002, disconnect_every=1, disconnect_after=2)
    srv4 = await mock(ttft_s=0.5)
    async with aiohttp.ClientSession() as s:
        raw = await send_request(s, PreparedRequest("e", "x", 5, url=srv2.url), clock)
        assert raw.error_type == "stream_error" and "mock stream error" in raw.error
        assert raw.chunk_tokens == [1, 1]          # what arrived before the error is kept
        raw = await send_request(s, PreparedRequest("d", "x", 5, url=srv3.url), clock)
        assert raw.error_type == "disconnect"
        raw = await send_request(s, PreparedRequest("t", "x", 5, url=srv4.url, timeout_s=0.2),
                                 clock)
        assert raw.error_type == "timeout"


async def test_slow_request_does_not_delay_next_send(mock):
    srv = await mock(ttft_s=0.4, token_delay_s=0.001)
    lg = LoadGenerator(srv.url, "completions", reqs(8, max_tokens=2),
                       ArrivalSpec("constant", rate=40.0))
    res = await lg.run()
    assert all(r.ok for r in res.records)
    sends = sorted(r.send_s - res.start_s for r in res.records)
    assert np.allclose(sends, np.arange(8) / 40.0, atol=0.03)   # shared, noisy host
    assert res.health.client_bound is False


async def test_cancel_returns_partial(mock):
    srv = await mock(ttft_s=0.01, token_delay_s=0.001)
    seen = []
    lg = LoadGenerator(srv.url, "completions", reqs(40, max_tokens=2),
                       ArrivalSpec("constant", rate=20.0), on_record=seen.append)
    task = asyncio.ensure_future(lg.run())
    for _ in range(200):  # until a few records are in (a loaded host may start slowly), <= 10 s
        await asyncio.sleep(0.05)
        if len(seen) >= 3:
            break
    task.cancel()
    res = await task
    assert res.cancelled and 2 <= len(res.records) < 40
    assert len(seen) == len(res.records)


async def test_results_round_trip(mock, tmp_path):
    srv = await mock(ttft_s=0.02, token_delay_s=0.003, tokens_per_chunk=2, include_token_ids=True,
                     fail_every=4, server_timing={"queue_s": 0.001, "prefill_s": 0.004,
                                                  "cached_tokens": 0, "steps": [3, 4]})
    w = ResultsWriter(tmp_path / "run")
    w.write_spec({"slo": SLO(0.5, 0.05).to_dict(),
                  "load_points": [{"name": "r10", "arrival": ArrivalSpec("poisson", rate=10.0,
                                                                          seed=1).to_dict()}]})
    w.write_env()
    lg = LoadGenerator(srv.url, "chat", reqs(8, max_tokens=5), ArrivalSpec("poisson", rate=10.0,
                                                                           seed=1),
                       deployment="mock", load_point="r10", on_record=w.append_record)
    res = await lg.run()
    w.append_steps([{"step": 0, "batch": 2}], deployment="mock")
    # before finalize, a reader falls back to requests.jsonl
    partial = load_results(tmp_path / "run")
    assert len(partial.records) == 8 and not partial.complete
    w.finalize()
    out = load_results(tmp_path / "run")
    assert out.complete and out.run["schema_version"] == 1
    assert list(out.records.columns) == RECORD_COLUMNS
    assert len(out.records) == 8 and out.steps is not None and len(out.steps) == 1
    got = {row["request_id"]: row for row in out.records.to_dict("records")}
    for r in res.records:
        row = got[r.request_id]
        for k, v in r.to_dict().items():
            if v is None:
                assert row[k] is None or row[k] != row[k], k       # None or NaN
            else:
                assert row[k] == v, (k, row[k], v)
    ok = [r for r in res.records if r.ok]
    assert all(r.server_prefill_s == pytest.approx(0.004) for r in ok)
    srow = out.summary.iloc[0]
    assert srow["deployment"] == "mock" and srow["n_requests"] == 8 and srow["n_failed"] == 2
    assert srow["rate_rps"] == 10.0
    assert srow["slo_attainment"] == pytest.approx(6 / 8)
    assert "goodput_rps" in out.summary_meta
    assert out.env["python"]

    with pytest.raises(ResultsError):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError):
        load_results(tmp_path / "empty")


async def test_exact_token_prompts(tiny_model_dir, mock):
    from transformers import AutoTokenizer

    tok = load_tokenizer_for(tiny_model_dir)
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = WorkloadSpec(input_len="uniform:3,60", output_len=4, num_requests=12, seed=5,
                        shared_prefix_len=8)
    prepared = build_requests(spec, tok)
    assert [p.prompt for p in prepared] == [p.prompt for p in build_requests(spec, tok)]
    targets = np.maximum(spec.input_len.sample(np.random.default_rng(5), 12), 8)
    for p, t in zip(prepared, targets):
        assert len(hf.encode(p.prompt, add_special_tokens=False)) == t == p.n_input
    prefixes = {hf.decode(hf.encode(p.prompt, add_special_tokens=False)[:8]) for p in prepared}
    assert len(prefixes) == 1
    srv = await mock(ttft_s=0.005, token_delay_s=0.001)
    res = await LoadGenerator(srv.url, "completions", prepared,
                              ArrivalSpec("concurrency", concurrency=4)).run()
    assert len(res.records) == 12 and all(r.ok and r.n_output == 4 for r in res.records)
