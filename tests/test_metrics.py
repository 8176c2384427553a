"""Metric definitions on hand-computed examples (workloads/metrics.py, workloads/records.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infer_bench.backends.client.openai import RawResult
from infer_bench.workloads import metrics as M
from infer_bench.workloads.records import RequestRecord
from infer_bench.workloads.spec import SLO


def rec(rid, send, times, toks, n_output=None, *, error_type=None, intended=None,
        source="usage"):
    raw = RawResult(request_id=rid, send_s=send, chunk_times_s=list(times),
                    chunk_tokens=list(toks), end_s=(times[-1] if times else send + 0.5),
                    n_output=sum(toks) if n_output is None else n_output,
                    n_output_source=source, error_type=error_type,
                    error=None if error_type is None else "boom")
    return RequestRecord.from_raw(raw, deployment="d", load_point="lp",
                                  intended_send_s=intended)


def test_ttft_e2e_simple():
    # sent at 1.0, tokens at 1.25, 1.35, 1.50
    assert M.ttft(1.0, [1.25, 1.35, 1.5], [1, 1, 1]) == pytest.approx(0.25)
    assert M.e2e(1.0, 1.5) == pytest.approx(0.5)
    # a leading empty chunk (0 tokens) is not the first token
    assert M.ttft(1.0, [1.1, 1.25], [0, 1]) == pytest.approx(0.25)
    assert M.ttft(1.0, [], []) is None
    assert M.ttft_from_intended(0.9, [1.25], [1]) == pytest.approx(0.35)


def test_itl_chunk_with_several_tokens():
    # chunks at 0.0 (1 tok), 0.1 (1 tok), 0.4 (3 toks): gaps 0.1 and 0.3 -> ITL 0.1, 0.1, 0.1, 0.1
    itl = M.itl_per_token([0.0, 0.1, 0.4], [1, 1, 3])
    assert itl == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert M.chunk_gaps([0.0, 0.1, 0.4]) == pytest.approx([0.1, 0.3])
    # 2 tokens after a 0.5 s gap -> two samples of 0.25
    assert M.itl_per_token([1.0, 1.5], [1, 2]) == pytest.approx([0.25, 0.25])


def test_itl_per_token_spreads_multi_token_chunks():
    # (moved from test_report.py with the report's copy of itl_per_token: one definition now)
    assert list(M.itl_per_token([1.0, 1.1, 1.4], [1, 1, 3])) == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert len(M.itl_per_token([1.0], [5])) == 0
    # the chunks the metrics look at: token-bearing ones only
    assert M.token_chunks([1.0, 1.1, 1.4], [1, 0, 3]) == [(1.0, 1), (1.4, 3)]


def test_first_chunk_with_two_tokens():
    # first chunk carries 2 tokens at 0.2, then 1 token at 0.3 and 0.5: n_output 4
    r = rec("a", 0.0, [0.2, 0.3, 0.5], [2, 1, 1])
    assert r.ttft_s == pytest.approx(0.2)
    # TPOT = (0.5 - 0.2) / (4 - 2) = 0.15
    assert r.tpot_s == pytest.approx(0.15)
    assert M.tpot(0.2, 0.5, 4, 2) == pytest.approx(0.15)
    # the first chunk's extra token gives no ITL sample
    assert M.itl_per_token([0.2, 0.3, 0.5], [2, 1, 1]) == pytest.approx([0.1, 0.2])
    assert r.e2e_s == pytest.approx(0.5)


def test_all_tokens_at_once_tpot_undefined():
    r = rec("b", 0.0, [0.7], [5])
    assert r.tpot_s is None
    assert r.ttft_s == pytest.approx(0.7) and r.e2e_s == pytest.approx(0.7)
    assert M.tpot(0.7, 0.7, 5, 5) is None
    assert M.tpot(0.7, 0.7, 1, 1) is None
    assert M.itl_per_token([0.7], [5]) == []


def test_usage_more_tokens_than_chunks():
    # server streamed 3 chunks but usage says 7 tokens; counts per chunk are not invented
    r = rec("c", 0.0, [0.1, 0.2, 0.4], [1, 1, 1], n_output=7)
    assert r.chunk_tokens == [1, 1, 1] and r.n_output == 7
    assert r.tpot_s == pytest.approx((0.4 - 0.1) / 6)


def test_summary_failed_request_kept_counted_and_slo_miss():
    good = rec("g", 0.0, [0.1, 0.2, 0.3], [1, 1, 1])       # ttft .1, tpot .1
    slow = rec("s", 1.0, [1.5, 1.7], [1, 1])               # ttft .5, tpot .2
    fail = rec("f", 2.0, [], [], n_output=0, error_type="http_5xx")
    one = rec("o", 2.0, [2.05], [1])                       # n_output 1: TPOT undefined -> passes
    s = M.summarize([good, slow, fail, one], SLO(ttft_s=0.3, tpot_s=0.15))
    assert s["n_requests"] == 4 and s["n_failed"] == 1
    # joint: good yes, slow no (ttft), fail no, one yes -> 2/4
    assert s["slo_attainment"] == pytest.approx(0.5)
    assert s["slo_ttft_attainment"] == pytest.approx(0.5)
    assert s["slo_tpot_attainment"] == pytest.approx(0.5)     # good, one
    assert s["slo_ttft_p90_ok"] is False
    # latency stats only over successful requests
    assert s["ttft_mean_s"] == pytest.approx((0.1 + 0.5 + 0.05) / 3)
    assert s["tpot_mean_s"] == pytest.approx((0.1 + 0.2) / 2)
    # no SLO -> attainment undefined
    assert M.summarize([good], None)["slo_attainment"] is None
    # dicts and DataFrames work the same
    import pandas as pd
    df = pd.DataFrame([r.to_dict() for r in (good, slow, fail, one)])
    s2 = M.summarize(df, {"ttft_s": 0.3, "tpot_s": 0.15})
    assert s2["slo_attainment"] == pytest.approx(0.5)
    assert s2["ttft_p90_s"] == pytest.approx(s["ttft_p90_s"])


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    ttfts = rng.uniform(0.05, 1.0, size=50)
    recs = [rec(str(i), 10.0 * i, [10.0 * i + t, 10.0 * i + t + 0.02], [1, 1])
            for i, t in enumerate(ttfts)]
    s = M.summarize(recs)
    sent = np.array([r.ttft_s for r in recs])
    for p in (50, 90, 95, 99):
        assert s[f"ttft_p{p}_s"] == pytest.approx(np.percentile(sent, p))
    assert s["ttft_mean_s"] == pytest.approx(sent.mean())
    assert s["itl_p50_s"] == pytest.approx(0.02)


def test_throughput_over_window():
    a = rec("a", 0.0, [1.0, 2.0, 3.0], [1, 1, 1])          # finishes at 3
    b = rec("b", 1.0, [2.0, 4.0], [1, 1])                  # finishes at 4
    c = rec("c", 2.0, [5.0, 6.0], [2, 2], n_output=4)
    # default window: first send 0 -> last token 6: 3 requests, 9 tokens in 6 s
    s = M.summarize([a, b, c])
    assert s["duration_s"] == pytest.approx(6.0)
    assert s["request_throughput_rps"] == pytest.approx(3 / 6)
    assert s["output_throughput_tps"] == pytest.approx(9 / 6)
    # window [1.5, 4.5]: completions a, b; tokens at 2 (a), 3 (a), 2 (b), 4 (b) -> 4
    s = M.summarize([a, b, c], window=(1.5, 4.5))
    assert s["duration_s"] == pytest.approx(3.0)
    assert s["request_throughput_rps"] == pytest.approx(2 / 3)
    assert s["output_throughput_tps"] == pytest.approx(4 / 3)
    # usage > chunk counts: tokens scaled per chunk (2 chunks of 1 reported, usage 6 -> 3 each)
    d = rec("d", 0.0, [1.0, 3.0], [1, 1], n_output=6)
    s = M.summarize([d], window=(0.0, 2.0))
    assert s["output_throughput_tps"] == pytest.approx(3 / 2)


def test_goodput_interpolation():
    # attainment crosses 0.9 between rate 2 (0.95) and rate 3 (0.85): 2 + 0.05/0.10 * 1 = 2.5
    assert M.goodput([1, 2, 3, 4], [1.0, 0.95, 0.85, 0.5]) == pytest.approx(2.5)
    # unsorted input, target 0.8: between 3 (0.85) and 4 (0.5): 3 + 0.05/0.35
    assert M.goodput([4, 1, 3, 2], [0.5, 1.0, 0.85, 0.95], target=0.8) == pytest.approx(
        3 + 0.05 / 0.35)
    assert M.goodput([1, 2], [1.0, 0.99]) == 2.0            # all pass: highest measured
    assert M.goodput([1, 2], [0.5, 0.1]) == 0.0             # lowest already fails
    assert M.goodput([], []) is None
    assert M.goodput([1, 2], [0.9, 0.5]) == pytest.approx(1.0)   # exactly on target passes


def test_server_timing_columns():
    raw = RawResult(request_id="x", send_s=0.0, chunk_times_s=[0.1], chunk_tokens=[1],
                    n_output=1, server_timing={"queue_s": 0.01, "prefill_s": 0.02,
                                               "cached_tokens": 16, "steps": [1, 2]})
    r = RequestRecord.from_raw(raw)
    assert r.server_queue_s == pytest.approx(0.01) and r.server_prefill_s == pytest.approx(0.02)
    assert r.server_cached_tokens == 16
    assert '"steps":[1,2]' in r.server_timing_json
    assert math.isclose(r.ttft_s, 0.1)


def test_attainment_counts_from_intended_send_so_a_stalled_client_cannot_hide_latency():
    # Four requests scheduled at 0, 1, 2, 3 s. The client stalled and sent the last two 1.5 s late;
    # the server then answered in 0.3 s. From the actual send they all meet a 1 s TTFT SLO; from
    # the intended send the late two waited 1.8 s and miss.
    slo = SLO(ttft_s=1.0, tpot_s=None)
    rs = [rec("a", 0.0, [0.3, 0.4], [1, 1], intended=0.0),
          rec("b", 1.0, [1.3, 1.4], [1, 1], intended=1.0),
          rec("c", 3.5, [3.8, 3.9], [1, 1], intended=2.0),
          rec("d", 4.5, [4.8, 4.9], [1, 1], intended=3.0)]
    s = M.summarize(rs, slo)
    assert s["slo_attainment_from_send"] == pytest.approx(1.0)
    assert s["slo_attainment"] == pytest.approx(0.5)
    assert s["slo_ttft_attainment"] == pytest.approx(0.5)
    assert M.slo_checks(rs[2], slo) == (False, True)
    assert M.slo_checks(rs[2], slo, from_intended=False) == (True, True)


def test_steady_state_drops_ramp_up_and_counts_throughput_until_the_last_send():
    # Ten requests scheduled every second from t=0; the first two met an empty system (fast).
    rs = [rec(f"r{i}", float(i), [i + (0.1 if i < 2 else 0.5), i + 0.6], [1, 1], intended=float(i))
          for i in range(10)]
    kept, win = M.steady_state(rs, ramp_fraction=0.2)
    assert [r.request_id for r in kept] == [f"r{i}" for i in range(2, 10)]
    assert win == pytest.approx((1.8, 9.0))
    s = M.summarize(kept, None, win)
    assert s["ttft_p50_s"] == pytest.approx(0.5)
    # tokens arriving in [1.8, 9.0]: requests 2..8 deliver both tokens inside, 9 none -> 14 tokens
    assert s["output_throughput_tps"] == pytest.approx(14 / 7.2)
    assert M.steady_state(rs, 0.0)[0] == rs


def test_summary_rows_use_the_steady_state_from_the_spec_but_count_every_request():
    from infer_bench.workloads.results import compute_summary
    rs = [rec(f"r{i}", float(i), [i + (0.1 if i < 2 else 0.5), i + 0.6], [1, 1], intended=float(i))
          for i in range(10)]
    rs.append(rec("bad", 0.5, [], [], error_type="http_5xx", intended=0.5))
    spec = {"steady_state": {"ramp_fraction": 0.2}, "load_points": [{"name": "lp"}]}
    [row] = compute_summary(rs, spec).to_dict("records")
    assert row["n_requests"] == 11 and row["n_failed"] == 1 and row["n_measured"] == 8
    assert row["ttft_p50_s"] == pytest.approx(0.5)
    [row] = compute_summary(rs, {"load_points": [{"name": "lp"}]}).to_dict("records")
    assert row["n_measured"] == 11 and row["ttft_p50_s"] == pytest.approx(0.5)


def test_summary_rates_and_goodput_per_deployment():
    import pandas as pd

    from infer_bench.workloads.results import compute_goodput, summary_rates
    s = pd.DataFrame({"deployment": ["a", "a", "a", "b"], "load_point": ["1", "2", "c4", "c4"],
                      "rate_rps": [1.0, 2.0, None, None],
                      "offered_rate_rps": [0.9, 2.2, 3.0, None],
                      "slo_attainment": [1.0, 0.95, 0.5, 1.0]})
    # the spec's rate where set, else the rate measured from the intended sends, else NaN
    r = summary_rates(s)
    assert r.tolist()[:3] == [1.0, 2.0, 3.0] and math.isnan(r.iloc[3])
    assert summary_rates(s.drop(columns=["offered_rate_rps"])).tolist()[:2] == [1.0, 2.0]
    gp = compute_goodput(s, 0.9)
    assert gp == {"a": pytest.approx(2 + 0.05 / 0.45 * 1)}      # b has no rate: no goodput
