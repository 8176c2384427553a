"""The client against the mock server on loopback (bounded, a few seconds each): multi-turn
ordering, token-count cross-check, the sharded client, the self-test, the extra CLI commands."""

from __future__ import annotations

import asyncio

import pytest

from infer_bench.backends.client.openai import PreparedRequest, RunClock
from infer_bench.workloads.loadgen import LoadGenerator
from infer_bench.workloads.metrics import summarize
from infer_bench.workloads.spec import ArrivalSpec, WorkloadSpec
from infer_bench.workloads.datasets import build_requests

pytestmark = pytest.mark.timeout(60)



@pytest.mark.parametrize("arrival", [ArrivalSpec("constant", rate=50.0),
                                     ArrivalSpec("concurrency", concurrency=2)])
async def test_multi_turn_ordering(mock, arrival):
    srv = await mock(ttft_s=0.02, token_delay_s=0.002)
    spec = WorkloadSpec(kind="multi_turn", num_requests=3, num_turns=3, input_len=4,
                        output_len=3, think_time_s=0.03, endpoint="chat")
    reqs = build_requests(spec)
    res = await LoadGenerator(srv.url, "chat", reqs, arrival).run()
    assert len(res.records) == 9 and all(r.ok for r in res.records)
    by: dict[str, list] = {}
    for r in res.records:
        by.setdefault(r.conversation_id, []).append(r)
    assert len(by) == 3
    log = {e["request_id"]: e for e in srv.log}
    for turns in by.values():
        turns.sort(key=lambda r: r.turn)
        assert [r.turn for r in turns] == [0, 1, 2]
        for a, b in zip(turns, turns[1:]):
            # turn k+1 leaves after turn k's last token plus the think time
            assert b.send_s >= a.last_token_s + 0.03 - 1e-4
            assert b.intended_send_s == pytest.approx(a.last_token_s + 0.03, abs=1e-6)
            assert log[b.wire_request_id]["received_s"] > log[a.wire_request_id]["chunk_s"][-1]
            assert b.n_input > a.n_input          # prompts grow (mock counts words)


async def test_token_count_mismatch_detection(mock):
    liar = await mock(ttft_s=0.005, token_delay_s=0.001, usage_delta=2)
    honest = await mock(ttft_s=0.005, token_delay_s=0.001, include_token_ids=True,
                        tokens_per_chunk=2)
    reqs = [PreparedRequest(f"r{i}", "a b", max_tokens=5) for i in range(4)]
    # tokenizer given: the client counts the streamed text itself (" tok" x 5 -> 5 words)
    res = await LoadGenerator(liar.url, "completions", reqs,
                              ArrivalSpec("concurrency", concurrency=2), tokenize=str.split).run()
    for r in res.records:
        assert r.ok and r.n_output == 7 and r.n_output_source == "usage"
        assert r.n_output_client == 5 and r.token_count_mismatch is True
    s = summarize(res.records)
    assert s["n_token_mismatch"] == 4 and s["n_token_checked"] == 4
    # server token ids agree with usage: checked, no mismatch
    res2 = await LoadGenerator(honest.url, "completions", reqs,
                               ArrivalSpec("concurrency", concurrency=2)).run()
    assert all(r.n_output_client == 5 and r.token_count_mismatch is False for r in res2.records)
    # no independent count (no tokenizer, no ids): not checked
    res3 = await LoadGenerator(liar.url, "completions", reqs,
                               ArrivalSpec("concurrency", concurrency=2)).run()
    assert all(r.token_count_mismatch is None for r in res3.records)
    assert summarize(res3.records)["n_token_mismatch"] == 0


def test_sharded_client_matches_ids_and_ttft():
    from infer_bench.workloads.multiproc import run_sharded
    from infer_bench.workloads.selftest import MockProcess

    with MockProcess(ttft_s=0.03, token_delay_s=0.002) as m:
        reqs = [PreparedRequest(f"s{i:03d}", "x y z", max_tokens=4) for i in range(24)]
        clock = RunClock()
        res = run_sharded(m.url, "completions", reqs, ArrivalSpec("constant", rate=40.0), 2,
                          clock=clock, tokenize=str.split, load_point="c40")
    assert sorted(r.request_id for r in res.records) == [r.request_id for r in reqs]
    assert all(r.ok and r.n_output == 4 for r in res.records)
    assert res.extra["workers"] == 2 and res.health.n_sent == 24
    for r in res.records:
        assert 0.025 < r.ttft_s < 0.2, r.ttft_s
        assert r.token_count_mismatch is False
    # one run clock: intended send times are the constant schedule from the shared start
    offs = sorted(r.intended_send_s - res.start_s for r in res.records)
    assert offs == pytest.approx([i / 40.0 for i in range(24)], abs=1e-6)
    assert all(r.send_s - r.intended_send_s < 0.1 for r in res.records)


def test_selftest_small_error_at_low_load(kernel_timestamps_on):
    from infer_bench.backends.client.rawsock import kernel_ts_wanted
    from infer_bench.workloads.selftest import bottleneck_rate, run_selftest

    rows = run_selftest([10, 20], duration_s=0.5, min_requests=8, max_requests=20,
                        ttft_s=0.01, token_delay_s=0.002, tokens_per_chunk=2, output_tokens=6)
    assert [r["rate_rps"] for r in rows] == [10.0, 20.0]
    for r in rows:
        assert r["n_ok"] == r["n"] >= 8
        assert abs(r["ttft_err_p50_ms"]) < 5.0            # generous: a shared, noisy host
        assert abs(r["itl_err_p50_ms"]) < 5.0
        # causality: the socket-read timestamps never precede the mock's send (beyond jitter)
        assert -1.0 < r["recv_delay_p50_ms"] < 5.0
        assert r["bottleneck"] in ("", "client", "mock")
        # where the times came from: the kernel's receive timestamps wherever available
        want = "kernel" if kernel_ts_wanted() else "user"
        assert r["client_timestamps"] == want and r["mock_timestamps"] == want
    assert bottleneck_rate(rows) in (None, 10.0, 20.0)


def test_extra_cli_commands_help():
    import typer
    from typer.testing import CliRunner

    from infer_bench.cli.extra_cmds import register

    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    runner = CliRunner()
    for cmd in ("mock-server", "selftest"):
        out = runner.invoke(app, [cmd, "--help"], terminal_width=200)
        assert out.exit_code == 0 and f"Example: infer-bench {cmd}" in out.output


def test_run_workers_flag_shards_the_client(tmp_path, monkeypatch):
    """`infer-bench run --workers 2`: the load point goes through run_sharded with 2 processes
    (spied in-process), every request is measured once, and the spec records the worker count;
    --workers 0 is refused in one line."""
    import json as _json
    import subprocess
    import sys

    import pandas as pd

    from infer_bench.workloads import multiproc
    from infer_bench.workloads.selftest import MockProcess

    calls = []
    real = multiproc.run_sharded

    def spy(*args, **kw):
        calls.append(args[4])                      # the worker count
        return real(*args, **kw)

    monkeypatch.setattr(multiproc, "run_sharded", spy)
    from infer_bench.cli.main import app
    from typer.testing import CliRunner

    with MockProcess(ttft_s=0.01, token_delay_s=0.002) as m:
        out = tmp_path / "run"
        res = CliRunner().invoke(app, ["run", "--url", m.url, "--rates", "30", "--num-requests",
                                       "12", "--output-len", "4", "--warmup", "1",
                                       "--workers", "2", "--out", str(out)],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert calls == [2]
        df = pd.read_parquet(out / "requests.parquet")
        assert len(df) == 12 and df["request_id"].is_unique and df["error"].isna().all()
        assert (df["n_output"] == 4).all()
        spec = _json.loads((out / "spec.json").read_text())
        assert spec["client_workers"] == 2
        run = _json.loads((out / "run.json").read_text())
        assert next(iter(run["client_health"].values()))["n_sent"] == 12
        # default: one process, no sharding
        calls.clear()
        res = CliRunner().invoke(app, ["run", "--url", m.url, "--rates", "30", "--num-requests",
                                       "4", "--output-len", "2", "--warmup", "0",
                                       "--out", str(tmp_path / "run1")], catch_exceptions=False)
        assert res.exit_code == 0 and calls == []
    proc = subprocess.run([sys.executable, "-m", "infer_bench.cli.main", "run", "--workers", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--workers" in proc.stderr
