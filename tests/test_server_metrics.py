"""Server-side figures from the engines' own /metrics (workloads/server_metrics/).

Metrics text in each engine's format: vLLM and SGLang expose theirs with prometheus_client, so
their pages are made here with prometheus_client under the names and labels their source
registers; Dynamo (Rust `prometheus` crate), llama.cpp (hand-written in server.cpp) and TGI
(metrics-exporter-prometheus) are written out as those exporters print them. Deltas are
checked against values computed by hand.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infer_bench.workloads.server_metrics import (
    ServerMetricsRecorder, counter_delta, detect_engines, histogram_delta, histogram_quantile,
    load_point_figures, load_server_metrics, parse_snapshot,
)
from infer_bench.workloads.server_metrics.figures import RESET_NOTE


def figs(before: str, after: str, n_requests=None, gauge_max=None) -> tuple[str, dict]:
    out = load_point_figures(parse_snapshot(before), parse_snapshot(after), n_requests, gauge_max)
    return out.engine, {r.figure: r for r in out.rows}


# ----------------------------------------------------------------------------- vLLM

VLLM_LAT_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0]   # loggers.py's first ones


class FakeVllm:
    """The metrics vLLM v1's PrometheusStatLogger registers (two engines, labels model_name,
    engine), in a registry of their own; `restart()` is a server restart (counters from 0)."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.reg = r = CollectorRegistry()
        ln = ["model_name", "engine"]
        self.running = Gauge("vllm:num_requests_running", "running", ln, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "waiting", ln, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage", ln, registry=r)
        self.queries = Counter("vllm:prefix_cache_queries", "queries", ln, registry=r)
        self.hits = Counter("vllm:prefix_cache_hits", "hits", ln, registry=r)
        self.preempt = Counter("vllm:num_preemptions", "preemptions", ln, registry=r)
        self.success = Counter("vllm:request_success", "ok", ln + ["finished_reason"], registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds", "queue", ln,
                               buckets=VLLM_LAT_BUCKETS, registry=r)
        self.prefill = Histogram("vllm:request_prefill_time_seconds", "prefill", ln,
                                 buckets=VLLM_LAT_BUCKETS, registry=r)
        self.decode = Histogram("vllm:request_decode_time_seconds", "decode", ln,
                                buckets=VLLM_LAT_BUCKETS, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", ln,
                              buckets=[0.1, 0.25, 0.5, 1.0, 2.5], registry=r)

    def text(self) -> str:
        return generate_latest(self.reg).decode()


def test_vllm_deltas_hand_computed():
    v = FakeVllm()
    for e in ("0", "1"):
        v.queries.labels("m", e).inc(1000)
        v.hits.labels("m", e).inc(100)
        v.preempt.labels("m", e).inc(2)
        v.queue.labels("m", e).observe(0.2)           # history before the load point
    before = v.text()
    # the load point: engine 0 and 1 queue 4 requests each
    for e, q in (("0", [0.1, 0.4, 0.6, 0.9]), ("1", [0.2, 0.4, 1.2, 3.0])):
        for x in q:
            v.queue.labels("m", e).observe(x)
            v.prefill.labels("m", e).observe(x / 2)
            v.decode.labels("m", e).observe(2 * x)
        v.queries.labels("m", e).inc(400)
        v.hits.labels("m", e).inc(100)
    v.preempt.labels("m", "1").inc(3)
    v.running.labels("m", "0").set(0)
    v.waiting.labels("m", "1").set(1)
    v.kv.labels("m", "0").set(0.125)
    v.kv.labels("m", "1").set(0.375)
    engine, f = figs(before, v.text(), gauge_max={"vllm:kv_cache_usage_perc": 0.5})
    assert engine == "vllm"
    qs = [0.1, 0.4, 0.6, 0.9, 0.2, 0.4, 1.2, 3.0]
    assert f["queue_time_count"].value == 8
    assert f["queue_time_mean"].value == pytest.approx(sum(qs) / 8)
    # cumulative bucket deltas: <=0.3: 2, <=0.5: 4, <=0.8: 5, <=1.0: 6, <=1.5: 7, ..., <=5: 8
    # p50: rank 4 falls at the top of (0.3, 0.5]: 0.5; p90: rank 7.2 in (2.5, 5.0] (7 -> 8)
    assert f["queue_time_p50"].value == pytest.approx(0.5)
    assert f["queue_time_p90"].value == pytest.approx(2.5 + 2.5 * 0.2)
    assert f["prefill_time_mean"].value == pytest.approx(sum(qs) / 16)
    assert f["decode_time_mean"].value == pytest.approx(sum(qs) / 4)
    assert f["prefix_cache_hit_rate"].value == pytest.approx(200 / 800)
    assert f["preemptions"].value == 3
    assert f["kv_cache_usage_after"].value == 0.375          # max over the engines
    assert f["kv_cache_usage_max"].value == 0.5
    assert f["waiting_after"].value == 1 and f["running_after"].value == 0
    assert "ttft_mean" not in f and "ttft_count" not in f    # a labelled family never observed
    assert "kv_transfer_time_mean" not in f                  # no NIXL connector
    assert all(RESET_NOTE not in r.note for r in f.values())
    assert f["queue_time_mean"].source.startswith("vllm:request_queue_time_seconds")


def test_vllm_counter_reset_between_scrapes_uses_after_value_and_flags_it():
    v = FakeVllm()
    v.queries.labels("m", "0").inc(5000)
    v.hits.labels("m", "0").inc(4000)
    v.preempt.labels("m", "0").inc(7)
    for x in (0.4, 0.4, 0.4):
        v.queue.labels("m", "0").observe(x)
    before = v.text()
    v.restart()                                   # the server restarted during the load point
    v.queries.labels("m", "0").inc(300)
    v.hits.labels("m", "0").inc(30)
    v.preempt.labels("m", "0").inc(1)
    v.queue.labels("m", "0").observe(0.9)
    out = load_point_figures(parse_snapshot(before), parse_snapshot(v.text()))
    f = {r.figure: r for r in out.rows}
    assert f["prefix_cache_hit_rate"].value == pytest.approx(30 / 300)
    assert f["preemptions"].value == 1                          # 1 - 7 would be negative
    assert f["queue_time_count"].value == 1 and f["queue_time_mean"].value == pytest.approx(0.9)
    for k in ("prefix_cache_hit_rate", "preemptions", "queue_time_mean"):
        assert RESET_NOTE in f[k].note
    assert any("reset" in w for w in out.warnings)


def test_reset_detected_by_created_even_when_the_value_grew():
    before = ("# TYPE vllm:num_preemptions counter\n"
              'vllm:num_preemptions_total{engine="0",model_name="m"} 2.0\n'
              'vllm:num_preemptions_created{engine="0",model_name="m"} 1700000000.0\n')
    after = ("# TYPE vllm:num_preemptions counter\n"
             'vllm:num_preemptions_total{engine="0",model_name="m"} 5.0\n'
             'vllm:num_preemptions_created{engine="0",model_name="m"} 1700000900.0\n')
    d = counter_delta(parse_snapshot(before), parse_snapshot(after), "vllm:num_preemptions_total")
    assert d.value == 5.0 and d.reset
    same = after.replace("1700000900.0", "1700000000.0")
    d = counter_delta(parse_snapshot(before), parse_snapshot(same), "vllm:num_preemptions_total")
    assert d.value == 3.0 and not d.reset


def test_histogram_quantile_matches_hand_interpolation():
    b = [(0.1, 2.0), (0.2, 6.0), (0.4, 10.0), (math.inf, 10.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.1 + 0.1 * (5 - 2) / 4)
    assert histogram_quantile(0.9, b) == pytest.approx(0.2 + 0.2 * (9 - 6) / 4)
    assert histogram_quantile(0.1, b) == pytest.approx(0.1 * 1 / 2)
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1   # +Inf bucket
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


# ----------------------------------------------------------------------------- SGLang

def sglang_text(queue_obs, prompt, cached, retracted, running, queued, usage, kv_ms) -> str:
    """SGLang's collector.py metrics (labels model_name, engine_type, tp_rank, pp_rank)."""
    r = CollectorRegistry()
    ln = ["model_name", "engine_type", "tp_rank", "pp_rank"]
    lv = ("qwen", "unified", "0", "0")
    q = Histogram("sglang:queue_time_seconds", "queue", ln,
                  buckets=[0.0, 0.1, 0.2, 0.5, 1, 2, 3], registry=r)
    for x in queue_obs:
        q.labels(*lv).observe(x)
    Counter("sglang:prompt_tokens", "p", ln, registry=r).labels(*lv).inc(prompt)
    Counter("sglang:cached_tokens", "c", ln, registry=r).labels(*lv).inc(cached)
    Counter("sglang:num_retracted_requests", "r", ln, registry=r).labels(*lv).inc(retracted)
    Gauge("sglang:num_running_reqs", "r", ln, registry=r).labels(*lv).set(running)
    Gauge("sglang:num_queue_reqs", "q", ln, registry=r).labels(*lv).set(queued)
    Gauge("sglang:token_usage", "u", ln, registry=r).labels(*lv).set(usage)
    Gauge("sglang:kv_transfer_latency_ms", "k", ln, registry=r).labels(*lv).set(kv_ms)
    return generate_latest(r).decode()


def test_sglang_figures():
    # counters only grow: the after page re-registers with the totals (the _created of a
    # fresh registry differs, so build both from one registry-like history instead)
    before = sglang_text([0.05], 1000, 200, 1, 0, 0, 0.1, 0)
    after = before   # same _created lines keep the series; rewrite the values by hand
    after = after.replace('sglang:prompt_tokens_total{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 1000.0',
                          'sglang:prompt_tokens_total{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 1600.0')
    after = after.replace('sglang:cached_tokens_total{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 200.0',
                          'sglang:cached_tokens_total{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 350.0')
    after = after.replace('sglang:token_usage{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 0.1',
                          'sglang:token_usage{engine_type="unified",model_name="qwen",'
                          'pp_rank="0",tp_rank="0"} 0.42')
    after = after.replace('sglang:kv_transfer_latency_ms{engine_type="unified",'
                          'model_name="qwen",pp_rank="0",tp_rank="0"} 0.0',
                          'sglang:kv_transfer_latency_ms{engine_type="unified",'
                          'model_name="qwen",pp_rank="0",tp_rank="0"} 12.5')
    assert after.count("1600.0") == 1 and "0.42" in after and "12.5" in after
    engine, f = figs(before, after)
    assert engine == "sglang"
    assert f["prefix_cache_hit_rate"].value == pytest.approx(150 / 600)
    assert f["preemptions"].value == 0
    assert f["kv_cache_usage_after"].value == pytest.approx(0.42)
    assert f["kv_transfer_time_after"].value == pytest.approx(0.0125)
    assert "latest transfer" in f["kv_transfer_time_after"].note
    assert f["queue_time_count"].value == 0
    assert "prefill_time_mean" not in f and "decode_time_mean" not in f   # not exported


# ----------------------------------------------------------------------------- Dynamo

def dynamo_text(n_ttft, ttft_sum, b01, b05, cached, isl, inflight, queued, kv) -> str:
    return f"""\
# HELP dynamo_frontend_inflight_requests Number of inflight requests
# TYPE dynamo_frontend_inflight_requests gauge
dynamo_frontend_inflight_requests{{model="qwen/qwen3-0.6b"}} {inflight}
# HELP dynamo_frontend_queued_requests Number of requests in HTTP processing queue
# TYPE dynamo_frontend_queued_requests gauge
dynamo_frontend_queued_requests{{model="qwen/qwen3-0.6b"}} {queued}
# HELP dynamo_frontend_time_to_first_token_seconds Time to first token in seconds
# TYPE dynamo_frontend_time_to_first_token_seconds histogram
dynamo_frontend_time_to_first_token_seconds_bucket{{model="qwen/qwen3-0.6b",le="0.1"}} {b01}
dynamo_frontend_time_to_first_token_seconds_bucket{{model="qwen/qwen3-0.6b",le="0.5"}} {b05}
dynamo_frontend_time_to_first_token_seconds_bucket{{model="qwen/qwen3-0.6b",le="+Inf"}} {n_ttft}
dynamo_frontend_time_to_first_token_seconds_sum{{model="qwen/qwen3-0.6b"}} {ttft_sum}
dynamo_frontend_time_to_first_token_seconds_count{{model="qwen/qwen3-0.6b"}} {n_ttft}
# HELP dynamo_frontend_cached_tokens Number of cached tokens (prefix cache hits) per request
# TYPE dynamo_frontend_cached_tokens histogram
dynamo_frontend_cached_tokens_bucket{{model="qwen/qwen3-0.6b",le="+Inf"}} {n_ttft}
dynamo_frontend_cached_tokens_sum{{model="qwen/qwen3-0.6b"}} {cached}
dynamo_frontend_cached_tokens_count{{model="qwen/qwen3-0.6b"}} {n_ttft}
# HELP dynamo_frontend_input_sequence_tokens Input sequence length in tokens
# TYPE dynamo_frontend_input_sequence_tokens histogram
dynamo_frontend_input_sequence_tokens_bucket{{model="qwen/qwen3-0.6b",le="+Inf"}} {n_ttft}
dynamo_frontend_input_sequence_tokens_sum{{model="qwen/qwen3-0.6b"}} {isl}
dynamo_frontend_input_sequence_tokens_count{{model="qwen/qwen3-0.6b"}} {n_ttft}
# HELP dynamo_component_kvstats_gpu_cache_usage_percent GPU cache usage as a percentage (0.0-1.0)
# TYPE dynamo_component_kvstats_gpu_cache_usage_percent gauge
dynamo_component_kvstats_gpu_cache_usage_percent{{dynamo_component="backend",dynamo_endpoint="generate",dynamo_namespace="dynamo"}} {kv}
"""


def test_dynamo_frontend_and_worker_figures():
    before = dynamo_text(10, 2.0, 4, 9, 100, 1000, 0, 0, 0.0)
    after = dynamo_text(20, 5.0, 6, 15, 700, 3000, 2, 3, 0.3)
    engine, f = figs(before, after)
    assert engine == "dynamo"
    assert f["ttft_count"].value == 10 and f["ttft_mean"].value == pytest.approx(0.3)
    # bucket deltas: <=0.1: 2, <=0.5: 6, +Inf: 10; p50 rank 5 in (0.1, 0.5]: 0.1 + 0.4 * 3/4
    assert f["ttft_p50"].value == pytest.approx(0.4)
    assert f["ttft_p90"].value == pytest.approx(0.5)           # in +Inf: largest finite bound
    assert f["prefix_cache_hit_rate"].value == pytest.approx(600 / 2000)
    assert f["running_after"].value == 2 and f["waiting_after"].value == 3
    assert f["kv_cache_usage_after"].value == pytest.approx(0.3)
    assert "queue_time_mean" not in f and "prefill_time_mean" not in f


def test_dynamo_worker_page_with_vllm_metrics_uses_both():
    v = FakeVllm()
    before = v.text() + dynamo_text(0, 0, 0, 0, 0, 0, 0, 0, 0.1)
    v.queue.labels("m", "0").observe(0.4)
    v.kv.labels("m", "0").set(0.7)
    after = v.text() + dynamo_text(0, 0, 0, 0, 0, 0, 0, 0, 0.2)
    engine, f = figs(before, after)
    assert engine == "vllm+dynamo"
    assert f["queue_time_mean"].value == pytest.approx(0.4)
    assert f["kv_cache_usage_after"].source == "vllm:kv_cache_usage_perc"   # vLLM's own first
    assert f["kv_cache_usage_after"].value == pytest.approx(0.7)


# ----------------------------------------------------------------------------- llama.cpp

def llamacpp_text(pt, ps, tp, tps, cached, processing, deferred) -> str:
    rows = [("counter", "prompt_tokens_total", "Number of prompt tokens processed.", pt),
            ("counter", "prompt_seconds_total", "Prompt process time", ps),
            ("counter", "tokens_predicted_total", "Number of generation tokens processed.", tp),
            ("counter", "tokens_predicted_seconds_total", "Predict process time", tps),
            ("counter", "n_decode_total", "Total number of llama_decode() calls", 40),
            ("counter", "prompt_tokens_cached_total",
             "Number of prompt tokens reused from the cache", cached),
            ("gauge", "prompt_tokens_seconds", "Average prompt throughput in tokens/s.", 123.4),
            ("gauge", "predicted_tokens_seconds", "Average generation throughput in tokens/s.",
             20.5),
            ("gauge", "requests_processing", "Number of requests processing.", processing),
            ("gauge", "requests_deferred", "Number of requests deferred.", deferred)]
    return "".join(f"# HELP llamacpp:{n} {h}\n# TYPE llamacpp:{n} {t}\nllamacpp:{n} {v}\n"
                   for t, n, h, v in rows)


def test_llamacpp_seconds_counters_per_request_sent():
    before = llamacpp_text(100, 1.5, 50, 2.0, 0, 0, 0)
    after = llamacpp_text(900, 5.5, 250, 10.0, 200, 1, 2)
    engine, f = figs(before, after, n_requests=8)
    assert engine == "llama.cpp"
    assert f["prefill_time_total"].value == pytest.approx(4.0)
    assert f["prefill_time_mean"].value == pytest.approx(0.5)
    assert "8 requests sent" in f["prefill_time_mean"].source
    assert f["decode_time_mean"].value == pytest.approx(1.0)
    # prompt_tokens_total excludes cached tokens: 200 / (200 + 800)
    assert f["prefix_cache_hit_rate"].value == pytest.approx(0.2)
    assert f["running_after"].value == 1 and f["waiting_after"].value == 2
    assert "prefill_time_p50" not in f and "queue_time_mean" not in f


# ----------------------------------------------------------------------------- TGI

def tgi_text(success, q_buckets, q_sum, pre_buckets, pre_sum, queue_size, batch) -> str:
    les = ["0.005", "0.05", "0.5", "+Inf"]
    out = ["# TYPE tgi_request_success counter", f"tgi_request_success {success}",
           "# TYPE tgi_queue_size gauge", f"tgi_queue_size {queue_size}",
           "# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {batch}",
           "# TYPE tgi_request_queue_duration histogram"]
    out += [f'tgi_request_queue_duration_bucket{{le="{le}"}} {c}' for le, c in zip(les, q_buckets)]
    out += [f"tgi_request_queue_duration_sum {q_sum}",
            f"tgi_request_queue_duration_count {q_buckets[-1]}",
            "# TYPE tgi_batch_inference_duration histogram"]
    for method, bk, s in (("prefill", pre_buckets, pre_sum), ("decode", [5, 50, 90, 100], 3.0)):
        out += [f'tgi_batch_inference_duration_bucket{{method="{method}",le="{le}"}} {c}'
                for le, c in zip(les, bk)]
        out += [f'tgi_batch_inference_duration_sum{{method="{method}"}} {s}',
                f'tgi_batch_inference_duration_count{{method="{method}"}} {bk[-1]}']
    return "\n".join(out) + "\n"


def test_tgi_queue_and_prefill_batches():
    before = tgi_text(10, [1, 5, 10, 10], 0.5, [0, 1, 4, 4], 0.6, 0, 0)
    after = tgi_text(20, [1, 9, 20, 20], 2.5, [0, 3, 8, 8], 1.5, 3, 4)
    engine, f = figs(before, after)
    assert engine == "tgi"
    assert f["queue_time_count"].value == 10 and f["queue_time_mean"].value == pytest.approx(0.2)
    # deltas: <=0.005: 0, <=0.05: 4, <=0.5: 10; p50 rank 5 in (0.05, 0.5]: 0.05 + 0.45/6
    assert f["queue_time_p50"].value == pytest.approx(0.05 + 0.45 * 1 / 6)
    assert f["prefill_time_count"].value == 4
    assert f["prefill_time_mean"].value == pytest.approx(0.9 / 4)      # decode batches left out
    assert "per prefill batch" in f["prefill_time_mean"].note
    assert f["waiting_after"].value == 3 and f["running_after"].value == 4
    snap = parse_snapshot(after)
    assert counter_delta(parse_snapshot(before), snap, "tgi_request_success").value == 10


# ----------------------------------------------------------------------------- detection

def test_engine_detection_and_unknown_engine_lists_what_it_exports():
    assert [m.engine for m in detect_engines(parse_snapshot(FakeVllm().text()))] == ["vllm"]
    assert [m.engine for m in detect_engines(
        parse_snapshot(llamacpp_text(1, 1, 1, 1, 0, 0, 0)))] == ["llama.cpp"]
    assert [m.engine for m in detect_engines(
        parse_snapshot(tgi_text(1, [0, 0, 0, 0], 0, [0, 0, 0, 0], 0, 0, 0)))] == ["tgi"]
    other = ("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n"
             "# TYPE myserver_requests_inflight gauge\nmyserver_requests_inflight 3\n")
    out = load_point_figures(parse_snapshot(other), parse_snapshot(other))
    assert out.engine == "unknown engine" and out.rows == []
    assert out.exported == ["myserver_requests_inflight", "process_cpu_seconds_total"]
    assert "unknown engine" in out.warnings[0] and "myserver_requests_inflight" in out.warnings[0]


def test_histogram_delta_sums_series_per_le():
    v = FakeVllm()
    before = parse_snapshot(v.text())
    v.queue.labels("m", "0").observe(0.4)
    v.queue.labels("m", "1").observe(0.4)
    v.queue.labels("m", "1").observe(7.0)
    h = histogram_delta(before, parse_snapshot(v.text()), "vllm:request_queue_time_seconds")
    assert h.count == 3 and h.sum == pytest.approx(7.8)
    by_le = dict(h.buckets)
    assert by_le[0.3] == 0 and by_le[0.5] == 2 and by_le[5.0] == 2 and by_le[10.0] == 3


# ----------------------------------------------------------------------------- recorder

def test_recorder_missing_endpoint_warns_once_and_files_stay_readable(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = ServerMetricsRecorder(tmp_path, timeout_s=0.5)
    for lp in ("1rps", "2rps"):
        rec.before("ext", f"http://127.0.0.1:{port}/metrics")
        assert rec.after("ext", lp, 0, 4, (0.0, 1.0)) is None
    frame, info = load_server_metrics(tmp_path)
    assert frame is None
    assert len(info["warnings"]) == 1 and "ext: no server-side metrics" in info["warnings"][0]
    assert [e["load_point"] for e in info["load_points"]] == ["1rps", "2rps"]
    assert info["endpoints"]["ext"]["error"]


def test_recorder_gauge_max_from_telemetry_rows_in_window(tmp_path, monkeypatch):
    from infer_bench.workloads.server_metrics import recorder as recmod
    v = FakeVllm()
    pages = [v.text()]
    tel = tmp_path / "telemetry.jsonl"
    rows = [("A", 0.5, "0", 0.9),               # before the window
            ("A", 1.5, "0", 0.2), ("A", 1.5, "1", 0.6), ("A", 2.5, "0", 0.4),
            ("B", 2.0, "0", 0.99)]               # another deployment
    tel.write_text("".join(json.dumps({"deployment": d, "t_s": t, "source": "prometheus",
                                       "metric": "vllm:kv_cache_usage_perc",
                                       "entity": f"engine={e},model_name=m", "value": x,
                                       "unit": ""}) + "\n" for d, t, e, x in rows))
    v.kv.labels("m", "0").set(0.1)
    pages.append(v.text())
    monkeypatch.setattr(recmod, "scrape_prometheus", lambda url, timeout, headers=None:
                        pages.pop(0))
    rec = ServerMetricsRecorder(tmp_path / "out", tel)
    rec.before("A", "http://x/metrics")
    out = rec.after("A", "5rps", 1, 10, (1.0, 3.0))
    f = {r.figure: r.value for r in out.rows}
    assert f["kv_cache_usage_after"] == pytest.approx(0.1)
    assert f["kv_cache_usage_max"] == pytest.approx(0.6)      # max over engines at 1.5 s
    frame, info = load_server_metrics(tmp_path / "out")
    got = frame.set_index("figure")
    assert got.loc["kv_cache_usage_max", "value"] == pytest.approx(0.6)
    assert set(frame["deployment"]) == {"A"} and set(frame["repeat"]) == {1}
    assert set(frame["engine"]) == {"vllm"} and info["endpoints"]["A"]["engine"] == "vllm"


def test_run_against_the_mock_without_metrics_goes_on_with_a_warning(tmp_path, mock_process):
    """The mock server has no /metrics (404): the run completes, the warning is recorded and
    the report shows it."""
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.reports.html import render_report
    from infer_bench.workloads.runner import RunSpec, run
    from infer_bench.workloads.spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec

    url = mock_process("--ttft-ms", "5", "--token-delay-ms", "1")
    spec = RunSpec(deployments=[ExternalDeploymentSpec(name="ext", url=url)],
                   workload=WorkloadSpec(input_len=LengthDist.fixed(16),
                                         output_len=LengthDist.fixed(4), num_requests=5),
                   load_points=[LoadPoint(name=f"{r}rps", arrival=ArrivalSpec(kind="constant",
                                                                              rate=r))
                                for r in (20, 40)],
                   slo=SLO(ttft_s=1.0, tpot_s=0.5), out_dir=tmp_path / "run",
                   warmup_requests=1, warmup_max_requests=2)
    out = run(spec)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    frame, info = load_server_metrics(out)
    assert frame is None
    assert info["warnings"] == [f"ext: no server-side metrics from {url}/metrics (HTTP 404); "
                                "the run went on without them"]
    html = render_report(out).read_text()
    assert "no server-side metrics from" in html
    assert "server-side aggregates (from /metrics)" not in html     # nothing to show

    # the same run as if its target had exported vLLM's metrics: the report's server-side
    # section shows them beside the client-side view
    from infer_bench.reports.data import load_run
    from infer_bench.reports.figures.sections import report_figures
    from infer_bench.workloads.server_metrics.files import SERVER_METRICS_CSV, append_rows
    rows = [("queue_time_mean", 0.012, "s"), ("prefill_time_mean", 0.030, "s"),
            ("prefill_time_p90", 0.045, "s"), ("decode_time_mean", 0.2, "s"),
            ("ttft_mean", 0.05, "s"), ("prefix_cache_hit_rate", 0.25, "fraction")]
    for rep_value in (1.0, 3.0):              # two repeats of 20rps: the table shows the mean
        append_rows(out / SERVER_METRICS_CSV, (
            {"deployment": "ext", "load_point": "20rps", "repeat": int(rep_value), "figure": f,
             "value": v * rep_value / 2.0, "unit": u, "engine": "vllm", "source": "vllm:x",
             "note": ""} for f, v, u in rows))
    run_data = load_run(out)
    sec = {f.key: f for f in report_figures(run_data)}["server_phases"]
    assert sec.title == "Where the time goes: server-side aggregates (from /metrics)"
    table = sec.tables[0]
    cells = {h: c.text for h, c in zip(table.headers, table.rows[0])}
    assert cells["Deployment"] == "ext" and cells["Engine"] == "vllm"
    from infer_bench.reports.summary import format_ms
    assert cells["Queue mean (ms)"] == format_ms(0.012) == "12.0"
    assert cells["Decode mean (ms)"] == format_ms(0.2)
    assert cells["Prefix hit rate"] == "25.0%"
    bars = {t.name: list(t.y) for t in sec.figure.data if t.type == "bar"}
    assert bars["queue"] == pytest.approx([12.0]) and bars["prefill"] == pytest.approx([30.0])
    html = render_report(out).read_text()
    assert "server-side aggregates (from /metrics)" in html and "no server-side metrics" in html


# ----------------------------------------------------------------------------- bundled engine

async def test_bundled_engine_exports_phase_histograms_over_a_real_socket(tiny_model_dir,
                                                                         tmp_path):
    import aiohttp

    from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig
    from infer_bench.backends.engine.http.app import build_app, start_site, stop_site
    from infer_bench.backends.engine.loader import load_model

    loaded = load_model(str(tiny_model_dir), "cpu", None)
    engine = AsyncEngine(EngineConfig(kv_cache_gb=0.05, block_size=16, max_model_len=128,
                                      num_threads=1), loaded)
    app = build_app(engine, loaded.tokenizer, "tiny")
    runner, url = await start_site(app, "127.0.0.1", 0)
    rec = ServerMetricsRecorder(tmp_path)
    try:
        await asyncio.to_thread(rec.before, "mono", url + "/metrics")
        async with aiohttp.ClientSession() as s:
            async def one(i: int):
                body = {"model": "tiny", "prompt": f"request {i} " * 8, "max_tokens": 6,
                        "ignore_eos": True, "stream": i % 2 == 0}
                async with s.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()
            await asyncio.gather(*(one(i) for i in range(3)))
            async with s.get(url + "/metrics") as r:
                text = await r.text()
        out = await asyncio.to_thread(rec.after, "mono", "c3", 0, 3, None)
    finally:
        await stop_site(app, runner)
        engine.shutdown()
    # the page itself: histograms with buckets, no KV transfer on a mono deployment
    assert 'infer_bench_request_queue_time_seconds_bucket{le="+Inf"} 3' in text
    assert "infer_bench_request_prefill_time_seconds_count 3" in text
    assert "infer_bench_request_decode_time_seconds_count 3" in text
    assert "infer_bench_request_kv_transfer_time_seconds" not in text
    assert out.engine == "infer-bench" and not out.warnings
    f = {r.figure: r.value for r in out.rows}
    for k in ("queue_time", "prefill_time", "decode_time", "ttft"):
        assert f[f"{k}_count"] == 3 and f[f"{k}_mean"] >= 0 and f"{k}_p90" in f
    assert f["decode_time_mean"] > 0 and f["prefill_time_mean"] > 0
    assert f["ttft_mean"] >= f["prefill_time_mean"]          # TTFT contains the prefill
    assert 0 <= f["kv_cache_usage_after"] <= 1 and f["running_after"] == 0
    assert 0 <= f["prefix_cache_hit_rate"] <= 1 and f["preemptions"] == 0
    frame, _ = load_server_metrics(tmp_path)
    assert set(frame["figure"]) == set(f) and set(frame["load_point"]) == {"c3"}
