"""Which of an engine's Prometheus metrics give which per-load-point figure, one mapping per engine.

Role in the data flow: `detect_engines(snapshot)` names the engines whose metrics a /metrics page
exports (by their name prefixes); `figures.py` evaluates each detected mapping's specs on the
before/after scrapes. An endpoint no mapping recognises is "unknown engine": no figure is
guessed, its metric names are listed instead.

Figures (the same names for every engine; an engine that does not export one has none):

    queue_time, prefill_time, decode_time, kv_transfer_time, ttft   seconds per request (or
        per transfer / per batch where the engine measures that; the spec's note says so):
        `_mean`, `_p50`, `_p90` from a histogram's sum/count/bucket deltas; `_mean` only from
        a seconds counter divided by the load point's requests sent
    kv_cache_usage     fraction of the KV pool in use: `_after` (gauge after the load point),
                       `_max` (highest value the telemetry sampler saw during it)
    running, waiting   requests: `_after`, `_max` likewise
    prefix_cache_hit_rate   hit tokens / looked-up tokens, from counter deltas
    preemptions        counter delta over the load point

Metric names are taken from each project's source; each mapping cites the file it read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .snapshot import Snapshot


@dataclass(frozen=True)
class Hist:
    """A per-request histogram: mean, p50, p90 of the load point's observations."""
    figure: str
    name: str
    match: tuple[tuple[str, str], ...] = ()
    note: str = ""


@dataclass(frozen=True)
class SecondsPerRequest:
    """A counter of seconds divided by the requests the load point sent: a mean only."""
    figure: str
    name: str
    note: str = ""


@dataclass(frozen=True)
class Gauge:
    """A gauge: its value after the load point and the maximum the telemetry saw during it."""
    figure: str
    name: str
    how: str = "sum"            # how series combine: "sum" (counts) or "max" (usage ratios)
    scale: float = 1.0          # to the figure's unit (a gauge in ms -> 1e-3)
    unit: str = ""
    note: str = ""


@dataclass(frozen=True)
class Ratio:
    """delta(num) / delta(den) (or / (delta(num) + delta(den)) with `den_excludes_num`)."""
    figure: str
    num: str
    den: str
    den_excludes_num: bool = False
    note: str = ""


@dataclass(frozen=True)
class Count:
    """A counter's delta over the load point."""
    figure: str
    name: str
    unit: str = ""
    note: str = ""


Spec = Union[Hist, SecondsPerRequest, Gauge, Ratio, Count]


@dataclass(frozen=True)
class EngineMapping:
    engine: str
    prefixes: tuple[str, ...]        # an endpoint exporting a metric with one of these is this engine
    source: str                      # where the names were read
    specs: tuple[Spec, ...] = field(default_factory=tuple)   # first present spec per figure wins

    def figures(self) -> list[str]:
        return list(dict.fromkeys(s.figure for s in self.specs))


# The bundled engine: backends/engine/http/app.py render_metrics (this repository).
INFER_BENCH = EngineMapping(
    "infer-bench", ("infer_bench_",), "backends/engine/http/app.py render_metrics", (
        Hist("queue_time", "infer_bench_request_queue_time_seconds"),
        Hist("prefill_time", "infer_bench_request_prefill_time_seconds"),
        Hist("decode_time", "infer_bench_request_decode_time_seconds"),
        Hist("kv_transfer_time", "infer_bench_request_kv_transfer_time_seconds",
             note="per request (disaggregated deployments)"),
        Hist("ttft", "infer_bench_time_to_first_token_seconds"),
        Gauge("kv_cache_usage", "infer_bench_kv_cache_usage_perc", how="max", unit="fraction"),
        Ratio("prefix_cache_hit_rate", "infer_bench_prefix_cache_hit_tokens_total",
              "infer_bench_prefix_cache_queried_tokens_total"),
        Count("preemptions", "infer_bench_num_preemptions_total"),
        Gauge("running", "infer_bench_num_requests_running", unit="requests"),
        Gauge("waiting", "infer_bench_num_requests_waiting", unit="requests"),
    ))

# vLLM v1: vllm/v1/metrics/loggers.py (PrometheusStatLogger), read at commit
# 005a810bc40faa25b8870fbc8559c3462581eee3; labels model_name, engine. KV transfer: the NIXL
# connector's vllm:nixl_xfer_time_seconds (vllm/distributed/kv_transfer/kv_connector/v1/
# nixl_connector.py, NixlPromMetrics), per transfer.
VLLM = EngineMapping(
    "vllm", ("vllm:",), "vllm/v1/metrics/loggers.py @005a810b", (
        Hist("queue_time", "vllm:request_queue_time_seconds"),
        Hist("prefill_time", "vllm:request_prefill_time_seconds"),
        Hist("decode_time", "vllm:request_decode_time_seconds"),
        Hist("kv_transfer_time", "vllm:nixl_xfer_time_seconds", note="per NIXL transfer"),
        Hist("ttft", "vllm:time_to_first_token_seconds"),
        Gauge("kv_cache_usage", "vllm:kv_cache_usage_perc", how="max", unit="fraction"),
        Gauge("kv_cache_usage", "vllm:gpu_cache_usage_perc", how="max", unit="fraction",
              note="deprecated name (vLLM < 0.10)"),
        Ratio("prefix_cache_hit_rate", "vllm:prefix_cache_hits_total",
              "vllm:prefix_cache_queries_total"),
        Ratio("prefix_cache_hit_rate", "vllm:gpu_prefix_cache_hits_total",
              "vllm:gpu_prefix_cache_queries_total", note="deprecated names"),
        Count("preemptions", "vllm:num_preemptions_total"),
        Gauge("running", "vllm:num_requests_running", unit="requests"),
        Gauge("waiting", "vllm:num_requests_waiting", unit="requests"),
    ))

# SGLang: python/sglang/srt/metrics/collector.py (SchedulerMetricsCollector,
# TokenizerMetricsCollector), read at commit 00ae9c1590d2d0bb6c0bfff39e312c34ae3dd538. No
# per-request prefill/decode histograms there; retractions are SGLang's preemptions; the KV
# transfer latency is a gauge of the latest transfer, in ms.
SGLANG = EngineMapping(
    "sglang", ("sglang:",), "python/sglang/srt/metrics/collector.py @00ae9c15", (
        Hist("queue_time", "sglang:queue_time_seconds"),
        Hist("ttft", "sglang:time_to_first_token_seconds"),
        Gauge("kv_transfer_time", "sglang:kv_transfer_latency_ms", how="max", scale=1e-3,
              unit="s", note="latest transfer (gauge), not a per-load-point mean"),
        Gauge("kv_cache_usage", "sglang:token_usage", how="max", unit="fraction"),
        Ratio("prefix_cache_hit_rate", "sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
        Count("preemptions", "sglang:num_retracted_requests_total", note="retracted requests"),
        Gauge("running", "sglang:num_running_reqs", unit="requests"),
        Gauge("waiting", "sglang:num_queue_reqs", unit="requests"),
    ))

# NVIDIA Dynamo: lib/runtime/src/metrics/prometheus_names.rs (frontend_service, work_handler,
# kvstats), read at commit 4415465e3e0d30b12163c3c3f15d49ed78b300a8. The frontend
# (dynamo_frontend_*) has TTFT, queued and in-flight requests and per-request input/cached
# token histograms; workers (dynamo_component_*) their KV stats. No queue/prefill/decode split.
DYNAMO = EngineMapping(
    "dynamo", ("dynamo_frontend_", "dynamo_component_"),
    "lib/runtime/src/metrics/prometheus_names.rs @4415465e", (
        Hist("ttft", "dynamo_frontend_time_to_first_token_seconds"),
        Gauge("kv_cache_usage", "dynamo_component_kvstats_gpu_cache_usage_percent", how="max",
              unit="fraction"),
        Ratio("prefix_cache_hit_rate", "dynamo_frontend_cached_tokens_sum",
              "dynamo_frontend_input_sequence_tokens_sum"),
        Gauge("prefix_cache_hit_rate", "dynamo_component_kvstats_gpu_prefix_cache_hit_rate",
              how="max", unit="fraction", note="worker gauge"),
        Gauge("running", "dynamo_frontend_inflight_requests", unit="requests"),
        Gauge("running", "dynamo_component_inflight_requests", unit="requests"),
        Gauge("waiting", "dynamo_frontend_queued_requests", unit="requests"),
    ))

# llama.cpp server: tools/server/server.cpp (GET /metrics with --metrics; `llamacpp:` prefix;
# newer trees render it in tools/server/server-context.cpp). Prompt and generation time are
# counters of seconds, so only a mean per request sent; prompt_tokens_total excludes cached
# tokens (prompt_tokens_cached_total, newer builds); kv_cache_usage_ratio in older builds.
LLAMACPP = EngineMapping(
    "llama.cpp", ("llamacpp:",), "tools/server/server.cpp (ggml-org/llama.cpp)", (
        SecondsPerRequest("prefill_time", "llamacpp:prompt_seconds_total",
                          note="prompt seconds / requests sent"),
        SecondsPerRequest("decode_time", "llamacpp:tokens_predicted_seconds_total",
                          note="generation seconds / requests sent"),
        Gauge("kv_cache_usage", "llamacpp:kv_cache_usage_ratio", how="max", unit="fraction"),
        Ratio("prefix_cache_hit_rate", "llamacpp:prompt_tokens_cached_total",
              "llamacpp:prompt_tokens_total", den_excludes_num=True),
        Gauge("running", "llamacpp:requests_processing", unit="requests"),
        Gauge("waiting", "llamacpp:requests_deferred", unit="requests"),
    ))

# Text Generation Inference: router/src/server.rs (tgi_request_*), router/src/infer/v3/queue.rs
# (tgi_request_queue_duration, tgi_queue_size) and the batching loop (tgi_batch_*), found with
# the code search over huggingface/text-generation-inference. Prefill is timed per batch.
TGI = EngineMapping(
    "tgi", ("tgi_",), "router/src/server.rs, router/src/infer/v3/queue.rs (TGI)", (
        Hist("queue_time", "tgi_request_queue_duration"),
        Hist("prefill_time", "tgi_batch_inference_duration", match=(("method", "prefill"),),
             note="per prefill batch"),
        Gauge("running", "tgi_batch_current_size", unit="requests"),
        Gauge("waiting", "tgi_queue_size", unit="requests"),
    ))

# Detection order: a Dynamo worker's page carries its backend's metrics too (vllm:, sglang:);
# the backend's own mapping answers first, Dynamo fills what it lacks.
MAPPINGS: tuple[EngineMapping, ...] = (INFER_BENCH, VLLM, SGLANG, LLAMACPP, TGI, DYNAMO)


def detect_engines(snap: Snapshot) -> list[EngineMapping]:
    """The mappings whose prefixes appear among the exported metric names, in MAPPINGS order."""
    names = snap.names()
    return [m for m in MAPPINGS if any(n.startswith(m.prefixes) for n in names)]


def gauge_names() -> list[str]:
    """Every gauge any mapping reads (the telemetry sampler keeps these for the `_max` figures)."""
    return sorted({s.name for m in MAPPINGS for s in m.specs if isinstance(s, Gauge)})
