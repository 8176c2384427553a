"""Reasoning- and tool-call-aware streams (issue 16, part 3): the mock streams reasoning tokens
(and a tool call) before the answer with a known schedule; the client's TTFT (first token of any
kind) and TTFAT (first answer token) must match when the mock really sent those chunks to 1 ms,
on both read paths (kernel receive times through backends/client/rawsock.py, and the asyncio
transport); output tokens by kind must be exact, from usage's reasoning_tokens or from the
deltas. Plus the summary's TTFAT columns (only when a request reasoned), the report's summary
table, and old results dirs (no such columns) still read."""

from __future__ import annotations

import json
import urllib.request

import pytest

from infer_bench.backends.client.http import HttpPool
from infer_bench.backends.client.openai import (PreparedRequest, RawResult, RunClock,
                                                _finish_counts, _handle_event, send_request)
from infer_bench.workloads import metrics
from infer_bench.workloads.records import RequestRecord

pytestmark = pytest.mark.timeout(60)

TTFT, DELAY = 0.05, 0.01
MS = 1e-3


def chat(url: str, rid: str, max_tokens: int = 4, **kw) -> PreparedRequest:
    return PreparedRequest(rid, "think about it", max_tokens=max_tokens, endpoint="chat",
                           url=url, **kw)


@pytest.fixture(params=["kernel", "user"])
def read_path(request, kernel_timestamps_on):
    """Both client read paths: kernel receive times (rawsock) and the asyncio transport."""
    if request.param == "kernel" and not kernel_timestamps_on:
        pytest.skip("this kernel does not stamp received TCP data")
    return request.param == "kernel"


async def test_reasoning_first_both_ttfts_to_1ms(mock_process, read_path):
    """The mock runs in a process of its own (its receive and send times are the truth, on the
    kernel's clock where it stamps), the client reads either way."""
    n_rea, n_ans = 5, 4
    url = mock_process("--ttft-ms", str(TTFT * 1e3), "--token-delay-ms", str(DELAY * 1e3),
                       "--reasoning-tokens", str(n_rea))
    clock = RunClock()
    off = clock.t0_ns / 1e9
    async with HttpPool(kernel_ts=read_path) as pool:
        raws = [await send_request(pool, chat(url, f"r{i}", n_ans), clock) for i in range(3)]
    with urllib.request.urlopen(url + "/mock/log", timeout=10) as r:
        log = {e["request_id"]: e for e in json.loads(r.read())}
    # kernel receive times: 1 ms. User-space read times also carry this process's scheduling
    # delays on a busy host (5-12 ms at p99 on the shared VM: docs/design.md, issue 5), so that
    # path is held to what it can promise; the per-kind logic is the same code on both.
    tol = 1 * MS if read_path else 15 * MS
    for raw in raws:
        rec = RequestRecord.from_raw(raw)
        assert rec.ok, rec.error
        assert raw.timestamps == ("kernel" if read_path else "user")
        e = log[raw.wire_request_id]
        assert e["chunk_kinds"] == ["reasoning"] * n_rea + ["answer"] * n_ans
        # the mock's schedule: first token at TTFT, first answer token 5 tokens later
        tgt = e["chunk_target_s"]
        assert tgt[0] - e["received_s"] == pytest.approx(TTFT, abs=1e-9)
        assert tgt[n_rea] - tgt[0] == pytest.approx(n_rea * DELAY, abs=1e-9)
        # When each chunk really left the mock: between its due time (the mock's timer sends up
        # to 0.2 ms early) and the moment its write returned (`chunk_s`; later than the bytes
        # when the mock's process is descheduled right after the write). The client's arrival
        # times must fall in that window, to `tol` (same CLOCK_MONOTONIC, other process).
        for idx, got in ((0, rec.first_token_s), (n_rea, rec.first_answer_token_s)):
            arrived = got + off
            assert tgt[idx] - 0.25 * MS <= arrived <= e["chunk_s"][idx] + tol, (idx, arrived)
        # the request reached the mock right after the client's send time
        assert -0.05 * MS <= e["received_s"] - (rec.send_s + off) < tol
        # so both TTFTs are the mock's known delays (TTFT; TTFT + 5 token delays) to `tol`, plus
        # whatever the mock's timer was late on a busy host (chunk_s - due time)
        late = [c - t for c, t in zip(e["chunk_s"], tgt)]
        assert TTFT - 0.3 * MS <= rec.ttft_s <= TTFT + late[0] + 2 * tol
        assert (TTFT + n_rea * DELAY - 0.3 * MS <= rec.ttfat_s
                <= TTFT + n_rea * DELAY + late[n_rea] + 2 * tol)
        assert rec.ttft_s == pytest.approx(rec.first_token_s - rec.send_s)
        assert rec.ttfat_s == pytest.approx(rec.first_answer_token_s - rec.send_s)
        # tokens by kind: usage's completion_tokens_details.reasoning_tokens
        assert rec.n_output == n_rea + n_ans and rec.n_output_source == "usage"
        assert (rec.n_output_reasoning, rec.n_output_answer, rec.n_output_tool) == (n_rea, n_ans, 0)
        assert raw.usage["completion_tokens_details"] == {"reasoning_tokens": n_rea}
        # TTFT, ITL and TPOT count every token of any kind
        assert rec.chunk_tokens == [1] * (n_rea + n_ans)
        assert rec.tpot_s == pytest.approx((rec.last_token_s - rec.first_token_s)
                                           / (n_rea + n_ans - 1))


async def test_counts_by_kind_from_deltas_without_usage(mock, read_path):
    """No usage chunk (stream_options.include_usage off): reasoning / tool / answer from the
    deltas, `reasoning` field name, a tool call between reasoning and answer."""
    srv = await mock(ttft_s=0.01, token_delay_s=0.002, reasoning_tokens=6, tool_call_tokens=3,
                     reasoning_field="reasoning", kernel_ts=read_path)
    req = chat(srv.url, "nodetails", 5, extra_body={"stream_options": {"include_usage": False}})
    clock = RunClock()
    async with HttpPool(kernel_ts=read_path) as pool:
        raw = await send_request(pool, req, clock)
    rec = RequestRecord.from_raw(raw)
    assert rec.ok and raw.usage is None and rec.n_output_source == "chunks"
    assert (rec.n_output, rec.n_output_reasoning, rec.n_output_tool, rec.n_output_answer) == (
        14, 6, 3, 5)
    e = srv.log[0]
    assert e["chunk_kinds"] == ["reasoning"] * 6 + ["tool"] * 3 + ["answer"] * 5
    off = clock.t0_ns / 1e9
    assert abs(rec.first_token_s - (e["chunk_s"][0] - off)) < 1 * MS
    assert abs(rec.first_answer_token_s - (e["chunk_s"][9] - off)) < 1 * MS
    assert "mock_tool" in raw.text and " arg" in raw.text and " think" in raw.text


async def test_multi_token_chunks_with_token_ids_and_usage_details(mock):
    """Chunks of 2 tokens with token_ids (vLLM style): server counts per kind, exact."""
    srv = await mock(ttft_s=0.01, token_delay_s=0.002, reasoning_tokens=5, tool_call_tokens=2,
                     tokens_per_chunk=2, include_token_ids=True)
    async with HttpPool() as pool:
        raw = await send_request(pool, chat(srv.url, "ids", 3), RunClock())
    rec = RequestRecord.from_raw(raw)
    assert rec.chunk_tokens == [2, 2, 1, 2, 2, 1]
    assert raw.kind_counts == {"reasoning": 5, "tool": 2, "answer": 3}
    assert (rec.n_output, rec.n_output_reasoning, rec.n_output_tool, rec.n_output_answer) == (
        10, 5, 2, 3)
    assert raw.chunk_counts_exact and raw.token_count_mismatch is False


async def test_plain_streams_ttfat_equals_ttft_and_non_streamed_reasoning(mock):
    srv = await mock(ttft_s=0.01, token_delay_s=0.002, reasoning_tokens=3)
    async with HttpPool() as pool:
        # completions have no reasoning (the mock's reasoning is chat only)
        plain = await send_request(pool, PreparedRequest("c", "hi", 4, url=srv.url), RunClock())
        body = await send_request(pool, chat(srv.url, "ns", 4, extra_body={"stream": False}),
                                  RunClock())
    rec = RequestRecord.from_raw(plain)
    assert rec.ttfat_s == rec.ttft_s and rec.first_answer_token_s == rec.first_token_s
    assert (rec.n_output_reasoning, rec.n_output_answer, rec.n_output_tool) == (0, 4, 0)
    # a non-streamed body: one arrival for everything, reasoning counted from usage
    nb = RequestRecord.from_raw(body)
    assert nb.ok and nb.n_output == 7 and nb.n_output_reasoning == 3 and nb.n_output_answer == 4
    assert nb.ttfat_s == nb.ttft_s


def _events(*objs) -> RawResult:
    req = PreparedRequest("x", "p", 8, endpoint="chat")
    res, texts = RawResult(request_id="x", send_s=0.0), []
    for t, obj in objs:
        _handle_event(obj, t, req, res, texts)
    _finish_counts(req, res, texts)
    return res


def test_event_accounting_edge_cases():
    d = lambda t, **delta: (t, {"choices": [{"index": 0, "delta": delta}]})   # noqa: E731
    # both reasoning names with the same text (some servers send both): counted once;
    # a tool call's first delta with only its id/type carries no token; a mixed chunk with
    # server token ids is split by characters
    res = _events(d(0.1, reasoning_content="a", reasoning="a"),
                  d(0.2, tool_calls=[{"index": 0, "id": "c1", "type": "function"}]),
                  d(0.3, tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]),
                  (0.4, {"choices": [{"index": 0, "token_ids": [1, 2, 3, 4],
                                      "delta": {"reasoning_content": "xx", "content": "yy"}}]}),
                  d(0.5, content="z"))
    assert res.chunk_times_s == [0.1, 0.3, 0.4, 0.5] and res.chunk_tokens == [1, 1, 4, 1]
    assert res.kind_counts == {"reasoning": 3, "tool": 1, "answer": 3}
    assert res.first_answer_s == 0.4
    # usage's reasoning_tokens wins over the deltas; the answer is the rest of n_output
    res = _events(d(0.1, reasoning_content="a"), d(0.2, content="b"),
                  (0.3, {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 9,
                                                  "completion_tokens_details": {
                                                      "reasoning_tokens": 6}}}))
    assert (res.n_output, res.n_output_reasoning, res.n_output_answer, res.n_output_tool) == (
        9, 6, 3, 0)
    # only tool calls, no answer: no first answer token
    res = _events(d(0.1, tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{"}}]))
    assert res.first_answer_s is None and res.n_output_tool == 1
    assert RequestRecord.from_raw(res).ttfat_s is None


def _rec(i: int, reasoning: int) -> dict:
    send = float(i)
    return dict(deployment="d", load_point="lp", request_id=f"r{i}", send_s=send,
                intended_send_s=send, first_token_s=send + 0.1, last_token_s=send + 0.5,
                chunk_times_s=[send + 0.1, send + 0.5], chunk_tokens=[1, 1], n_output=2,
                ttft_s=0.1, ttfat_s=0.1 + 0.01 * i if reasoning else 0.1,
                n_output_reasoning=reasoning, n_output_answer=2 - reasoning, n_output_tool=0)


def test_summary_has_ttfat_only_when_a_request_reasoned():
    plain = metrics.summarize([_rec(i, 0) for i in range(5)])
    assert not any(k.startswith("ttfat") for k in plain) and "n_reasoning_tokens" not in plain
    s = metrics.summarize([_rec(i, 1) for i in range(5)])
    assert s["ttfat_p50_s"] == pytest.approx(0.12) and s["ttfat_mean_s"] == pytest.approx(0.12)
    assert s["ttft_p50_s"] == pytest.approx(0.1)
    assert s["n_reasoning_tokens"] == 5 and s["n_tool_tokens"] == 0


def test_results_dir_with_and_without_the_new_columns(tmp_path):
    """A run's records with the new columns round-trip through requests.parquet; the report's
    summary table shows TTFAT only for runs that have it; a results dir written before these
    columns existed still loads (they read as missing)."""
    from infer_bench.reports.data import load_run
    from infer_bench.reports.summary import summary_table
    from infer_bench.workloads.results import ResultsWriter, load_results
    from report_fixtures import make_results_dir

    out = tmp_path / "new"
    with ResultsWriter(out) as w:
        w.write_spec({"name": "t", "deployments": [{"name": "d"}],
                      "load_points": [{"name": "lp"}]})
        for i in range(5):
            r = RequestRecord.from_dict(_rec(i, 1))
            r.wire_request_id = f"00000000-0000-0000-0000-00000000000{i}"
            w.append_record(r)
        w.finalize()
    res = load_results(out)
    row = res.records.iloc[0]
    assert row["wire_request_id"].endswith("0") and row["n_output_reasoning"] == 1
    assert res.summary["ttfat_p50_s"].iloc[0] == pytest.approx(0.12)
    headers = summary_table(load_run(out).summary).headers
    assert "TTFAT p50 (ms)" in headers and "TTFAT p90 (ms)" in headers

    old = make_results_dir(tmp_path / "old", n_deployments=1, n_load_points=1, n_requests=10)
    run = load_run(old)
    assert run.records["ttfat_s"].isna().all() and run.records["wire_request_id"].isna().all()
    assert "TTFAT p50 (ms)" not in summary_table(run.summary).headers
    back = RequestRecord.from_dict(json.loads(run.records.iloc[0].to_json()))
    assert back.n_output_reasoning is None and back.ttfat_s is None
