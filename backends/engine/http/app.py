"""The reference engine's OpenAI-compatible HTTP server (aiohttp).

Role in the data flow:

    client (backends/openai.py, curl, any OpenAI SDK)
      --HTTP--> this app: read body (size-limited) -> protocol.parse_*_request() -> EngineRequest
      --> AsyncEngine.generate(request_id, prompt_token_ids, SamplingParams)  (engine thread)
      --> one RequestOutput per engine step --> one SSE chunk (stream) / one JSON body (not)
      --> the final chunk / the body carries usage and `"infer_bench": {timing}` (server-side
          queue / prefill / per-token step info, read by the load generator into its records).

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus text from engine.stats() and the server's own counters),
GET /debug/steps (engine.step_trace() as JSON, saved into the results dir after a run),
GET /v1/engine/config (engine.config_report(): the engine options as they reached the engine).

Errors are JSON in OpenAI's shape everywhere (400 bad input, 401 missing/wrong API key, 404
unknown path or model, 405 wrong method, 408 body not received in time, 413 body too large, 429
waiting queue full, 503 draining, 500 our bug); the server keeps serving after any of them. A
request whose client goes away is aborted in the engine, so its KV blocks are freed: either the
next SSE write fails, or (non-streaming, or before the first token) aiohttp cancels the handler —
run the app with `handler_cancellation=True` (`start_site()` does).

Robustness and security (build_app's keyword arguments; serve.py's ServeSettings, from
`infer-bench serve`'s flags):

- `api_key`: every endpoint but /health needs `Authorization: Bearer KEY` (constant-time compare)
  else 401. The key is never logged; the optional access log (`start_site(access_log=True)`)
  prints no headers.
- `max_waiting_requests`: at most that many requests wait for the engine's running batch
  (counted as "in flight here" minus the engine's `running`, so also requests queued inside
  AsyncEngine that the scheduler has not seen yet, and preempted ones); more get 429 with
  `Retry-After` instead of an unbounded queue. While draining (shutdown): 503 with `Retry-After`.
- `request_timeout_s`: a request still generating after that long (from arrival) is aborted in
  the engine; it ends with finish_reason "abort" plus an OpenAI-style error (code
  "request_timeout"): an `{"error": ...}` SSE event before `[DONE]`, or, not streamed, an `error`
  member next to the partial choice (HTTP 200 either way: the headers of a stream are sent).
- `body_timeout_s`: a client that stops sending its body gets 408 and the connection is closed; a
  Content-Length over `max_body_bytes` gets 413 without reading the body.
- Large bodies are parsed/tokenized in a worker thread, so one huge prompt does not stall the
  event loop (and the other streams) while it is tokenized.
- Not covered: aiohttp has no timeout for a client that dribbles its *headers* (it holds one
  connection, nothing else; lines/fields are capped at 8 KiB), nor for a client that stops
  *reading* a stream (the handler waits on the socket; the engine finishes the request as usual).
  HTTP-level garbage is answered by aiohttp's parser itself (plain-text 400, before any handler).

`build_app()` is used by serve.py (the server lifecycle, mono and disagg) and by the tests.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import json
import logging
import time
import uuid
from typing import Any, Callable, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..stats import EngineStats
from . import protocol
from .arrival import arrival_times
from .protocol import RequestError

log = logging.getLogger("infer_bench.engine.server")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_WAITING_REQUESTS = 256
DEFAULT_BODY_TIMEOUT_S = 30.0
RETRY_AFTER_S = 1                      # Retry-After on 429 / 503
PARSE_IN_THREAD_BYTES = 32 * 1024      # bodies at least this large are parsed off the event loop
UNAUTHENTICATED_PATHS = frozenset({"/health"})

# Typed application keys (aiohttp >= 3.9 warns on string keys).
STATE_KEY = web.AppKey("infer_bench_state", object)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
FINISH_REASONS = ("stop", "length", "abort")
# (timing key, metric name, help) of the per-request phase histograms.
PHASE_HISTOGRAMS = (
    ("queue_s", "infer_bench_request_queue_time_seconds",
     "Time a request waited before its first scheduled step (disagg: on the prefill worker)."),
    ("prefill_s", "infer_bench_request_prefill_time_seconds",
     "Time from a request's first scheduled step to its first token."),
    ("decode_s", "infer_bench_request_decode_time_seconds",
     "Time from a request's first token to its last."),
    ("transfer_s", "infer_bench_request_kv_transfer_time_seconds",
     "Time from the end of prefill until the prompt's KV reached the decode worker "
     "(disaggregated deployments)."),
)


# --------------------------------------------------------------------------------------------
# Metrics


class Histogram:
    """A cumulative Prometheus histogram (le buckets, +Inf, sum, count)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str, help_: str) -> list[str]:
        lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        acc = 0
        for le, c in zip(self.buckets, self.counts):
            acc += c
            lines.append(f'{name}_bucket{{le="{le:g}"}} {acc}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_fmt(self.sum)}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


# Engine statistics with a name of their own: (metric, type, help, EngineStats -> value).
ENGINE_METRICS = [
    ("infer_bench_num_requests_running", "gauge", "Requests in the running batch.",
     lambda s: s.running),
    ("infer_bench_num_requests_waiting", "gauge", "Requests waiting for admission.",
     lambda s: s.waiting),
    ("infer_bench_num_preemptions_total", "counter", "Preemptions (recompute) so far.",
     lambda s: s.preemptions_total),
    ("infer_bench_kv_blocks_used", "gauge", "KV-cache blocks in use by sequences.",
     lambda s: s.kv_blocks_used),
    ("infer_bench_kv_blocks_free", "gauge", "KV-cache blocks free (including evictable cached).",
     lambda s: s.kv_blocks_free),
    ("infer_bench_kv_blocks_total", "gauge", "KV-cache blocks in the pool.",
     lambda s: s.kv_blocks_total),
    ("infer_bench_prefix_cache_hit_rate", "gauge",
     "Prefix cache hit rate: prompt tokens served from cache / prompt tokens looked up.",
     lambda s: s.prefix_hit_rate),
    ("infer_bench_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from cache.",
     lambda s: s.prefix_hit_tokens),
    ("infer_bench_prefix_cache_queried_tokens_total", "counter",
     "Prompt tokens looked up in the prefix cache.",
     lambda s: s.prefix_queried_tokens),
    ("infer_bench_engine_steps_total", "counter", "Engine steps (forward passes) so far.",
     lambda s: s.steps_total),
    ("infer_bench_kv_cache_usage_perc", "gauge",
     "KV-cache usage: blocks in use / blocks in the pool (1 means full).",
     lambda s: s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0),
    ("infer_bench_kv_blocks_cached", "gauge",
     "Unreferenced KV blocks kept for prefix reuse (evictable).",
     lambda s: s.kv_blocks_cached),
]


def engine_extra_metrics(s: EngineStats) -> list[tuple[str, str, Any]]:
    """The other engine statistics as `infer_bench_engine_<key>` (key, help, value), by key.
    Speculation's verify steps, acceptance rate and draft blocks appear only when it is on; the
    disagg hand-offs on disaggregated deployments; workers alive on the disagg router."""
    rows = [
        ("block_size", "Tokens per KV block.", s.block_size),
        ("generation_tokens_total", "Output tokens generated by the engine.",
         s.generation_tokens_total),
        ("prompt_tokens_total", "Prompt tokens of requests added to the engine.",
         s.prompt_tokens_total),
        ("requests_finished_total", "Requests the engine finished (any reason).",
         s.requests_finished_total),
        ("spec_proposed_total", "Speculative tokens proposed.", s.spec.proposed_total),
        ("spec_accepted_total", "Speculative tokens accepted.", s.spec.accepted_total),
    ]
    if s.spec.enabled:
        rows += [
            ("spec_verify_steps_total", "Speculative verify steps (one per speculating decode).",
             s.spec.verify_steps_total),
            ("spec_acceptance_rate", "Speculative tokens accepted / proposed.",
             s.spec.acceptance_rate),
            ("spec_draft_kv_blocks_used", "KV blocks in use by the draft model.",
             s.spec.draft_kv_blocks_used),
        ]
    if s.disagg is not None:
        rows += [
            ("disagg_imports", "Requests whose prompt KV a decode worker receives or holds.",
             s.disagg.imports),
            ("disagg_pending_reserves", "Decode-worker reservations waiting for free blocks.",
             s.disagg.pending_reserves),
            ("disagg_exports", "Requests whose KV a prefill worker is sending.",
             s.disagg.exports),
        ]
    if s.workers_alive_prefill is not None:
        rows.append(("workers_alive_prefill", "Prefill workers alive.", s.workers_alive_prefill))
    if s.workers_alive_decode is not None:
        rows.append(("workers_alive_decode", "Decode workers alive.", s.workers_alive_decode))
    return sorted(rows)


class ServerMetrics:
    """Counters the server keeps itself (independent of what the engine reports)."""

    def __init__(self) -> None:
        self.requests_by_reason = {r: 0 for r in FINISH_REASONS}
        self.requests_started = 0
        self.client_disconnects = 0
        self.http_errors: dict[int, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.timeouts = 0                  # requests aborted by request_timeout_s
        self.rejected = {"overloaded": 0, "draining": 0, "unauthorized": 0}
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        # Per-request phases from the engine's own timing of each finished request (the
        # `infer_bench` extension's queue_s / prefill_s / decode_s / transfer_s), named as
        # vLLM's vllm:request_*_time_seconds; KV transfer only on disaggregated deployments.
        self.phases = {key: Histogram(LATENCY_BUCKETS) for key, _, _ in PHASE_HISTOGRAMS}

    def observe_phases(self, timing: dict | None) -> None:
        """Add a finished request's phase times (absent or None phases are skipped)."""
        if not timing:
            return
        for key, _, _ in PHASE_HISTOGRAMS:
            v = timing.get(key)
            if key == "transfer_s" and (timing.get("disagg") or {}).get("local_prefill", True):
                continue  # prefilled on the decode worker (or mono): no KV transfer happened
            if isinstance(v, (int, float)) and v == v and v >= 0:
                self.phases[key].observe(float(v))


def render_metrics(stats: EngineStats | None, m: ServerMetrics, model_name: str) -> str:
    """Prometheus text exposition (version 0.0.4) of engine.stats() and the server's counters
    (no engine lines when the engine could not report its stats)."""
    lines: list[str] = []
    if stats is not None:
        for name, typ, help_, value in ENGINE_METRICS:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {typ}",
                      f"{name} {_fmt(value(stats))}"]
        for key, help_, v in engine_extra_metrics(stats):
            name = f"infer_bench_engine_{key}"
            typ = "counter" if key.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {typ}", f"{name} {_fmt(v)}"]
        name = "infer_bench_step_duration_seconds"
        lines += [f"# HELP {name} Engine step (one forward pass over the batch) wall time.",
                  f"# TYPE {name} histogram"]
        for le, c in stats.step_time.cumulative():
            label = "+Inf" if le == float("inf") else f"{le:g}"
            lines.append(f'{name}_bucket{{le="{label}"}} {c}')
        lines.append(f"{name}_sum {_fmt(stats.step_time.sum_s)}")
        lines.append(f"{name}_count {stats.step_time.count}")

    name = "infer_bench_requests_total"
    lines += [f"# HELP {name} Finished requests by finish reason.", f"# TYPE {name} counter"]
    for r, c in m.requests_by_reason.items():
        lines.append(f'{name}{{finish_reason="{_escape_label(r)}"}} {c}')
    lines += ["# HELP infer_bench_requests_started_total Requests accepted into the engine.",
              "# TYPE infer_bench_requests_started_total counter",
              f"infer_bench_requests_started_total {m.requests_started}"]
    lines += ["# HELP infer_bench_requests_aborted_by_server_total Requests the server aborted "
              "(client disconnected, or shutdown).",
              "# TYPE infer_bench_requests_aborted_by_server_total counter",
              f"infer_bench_requests_aborted_by_server_total {m.client_disconnects}"]
    lines += ["# HELP infer_bench_requests_timed_out_total Requests aborted by the server's "
              "request timeout.",
              "# TYPE infer_bench_requests_timed_out_total counter",
              f"infer_bench_requests_timed_out_total {m.timeouts}"]
    lines += ["# HELP infer_bench_requests_rejected_total Requests refused before the engine "
              "(overloaded: 429, draining: 503, unauthorized: 401).",
              "# TYPE infer_bench_requests_rejected_total counter"]
    for reason, c in m.rejected.items():
        lines.append(f'infer_bench_requests_rejected_total{{reason="{reason}"}} {c}')
    lines += ["# HELP infer_bench_http_errors_total Error responses by HTTP status.",
              "# TYPE infer_bench_http_errors_total counter"]
    for status, c in sorted(m.http_errors.items()):
        lines.append(f'infer_bench_http_errors_total{{status="{status}"}} {c}')
    lines += ["# HELP infer_bench_prompt_tokens_total Prompt tokens of requests served here.",
              "# TYPE infer_bench_prompt_tokens_total counter",
              f"infer_bench_prompt_tokens_total {m.prompt_tokens}",
              "# HELP infer_bench_generation_tokens_total Output tokens streamed by this server.",
              "# TYPE infer_bench_generation_tokens_total counter",
              f"infer_bench_generation_tokens_total {m.generation_tokens}"]
    lines += m.ttft.render("infer_bench_time_to_first_token_seconds",
                           "Server-side time from request arrival to the first token.")
    lines += m.e2e.render("infer_bench_e2e_request_latency_seconds",
                          "Server-side time from request arrival to the last token.")
    disagg = stats is not None and stats.disagg is not None
    for key, name, help_ in PHASE_HISTOGRAMS:
        if key == "transfer_s" and not (disagg or m.phases[key].count):
            continue
        lines += m.phases[key].render(name, help_)
    lines += ["# HELP infer_bench_model_info The served model.",
              "# TYPE infer_bench_model_info gauge",
              f'infer_bench_model_info{{model="{_escape_label(model_name)}"}} 1']
    return "\n".join(lines) + "\n"


def _escape_label(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --------------------------------------------------------------------------------------------
# App state


class ServerState:
    def __init__(self, engine: Any, tokenizer: Any, model_names: list[str],
                 max_model_len: int | None, vocab_size: int | None,
                 model_root: str | None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_names = model_names
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.model_root = model_root
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        self.inflight: set[str] = set()
        self.draining = False
        self.max_body_bytes = 0
        self.api_key: bytes | None = None
        self.max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS
        self.request_timeout_s: float | None = None
        self.body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
        self.awaiting_first: int = 0   # in flight here, no output from the engine yet
        self.health: Callable[[], tuple[int, dict]] | None = None

    def num_waiting(self) -> int:
        """Requests in flight here that are not in the engine's running batch: queued in the
        engine (or in AsyncEngine's hand-over list, which stats() does not see yet), or
        preempted. Without engine stats: those that have had no output yet."""
        stats = engine_stats(self.engine)
        if stats is None:
            return self.awaiting_first
        return max(len(self.inflight) - stats.running, 0)

    def check_admission(self) -> None:
        """Raise 503 (draining) or 429 (waiting queue full), with Retry-After."""
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self.draining:
            self.metrics.rejected["draining"] += 1
            raise RequestError(503, "server is shutting down", type="server_error",
                               code="server_shutting_down", headers=retry)
        limit = self.max_waiting_requests
        if limit is not None and self.num_waiting() >= limit:
            self.metrics.rejected["overloaded"] += 1
            raise RequestError(
                429, f"server overloaded: {limit} requests are already waiting; retry later",
                type="rate_limit_error", code="rate_limit_exceeded", headers=retry)

    def abort_all(self) -> list[str]:
        """Abort every in-flight request (graceful shutdown). Returns their ids."""
        ids = list(self.inflight)
        for rid in ids:
            _safe_abort(self.engine, rid)
        return ids


def _safe_abort(engine: Any, request_id: str) -> None:
    try:
        engine.abort(request_id)
    except Exception:  # already finished / unknown id: nothing to free
        log.debug("abort(%s) raised", request_id, exc_info=True)


def get_state(app: web.Application) -> ServerState:
    return app[STATE_KEY]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Middleware and small handlers


def json_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
               type: str | None = None, headers: dict | None = None) -> web.Response:
    err = RequestError(status, message, param, code=code, type=type)
    return web.json_response(err.to_body(), status=status, headers=headers)


def _authorized(request: web.Request, key: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values are str decoded with surrogateescape: encode back to the bytes sent.
    sent = token.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, key)


@web.middleware
async def error_middleware(request: web.Request, handler):
    state = get_state(request.app)
    try:
        if state.api_key is not None and request.path not in UNAUTHENTICATED_PATHS \
                and not _authorized(request, state.api_key):
            state.metrics.rejected["unauthorized"] += 1
            # Never echo what was sent: it may be a real key for something else.
            raise RequestError(401, "Missing or invalid API key: send 'Authorization: Bearer "
                                    "<key>'", code="invalid_api_key",
                               headers={"WWW-Authenticate": 'Bearer realm="infer-bench"'})
        resp = await handler(request)
    except RequestError as e:
        resp = web.json_response(e.to_body(), status=e.status, headers=e.headers or None)
        if e.close_connection:
            resp.force_close()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        if e.status == 404:
            msg = f"Not found: {request.method} {request.path}"
        elif e.status == 405:
            allowed = getattr(e, "allowed_methods", None) or headers.get("Allow", "")
            if not isinstance(allowed, str):
                allowed = ", ".join(sorted(allowed))
            msg = f"Method {request.method} not allowed on {request.path} (allowed: {allowed})"
        elif e.status == 413:
            msg = f"Request body too large (limit {state.max_body_bytes} bytes)"
        else:
            msg = e.reason or e.text or "error"
        resp = json_error(e.status, msg, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a bug of ours: say so, keep serving
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = json_error(500, f"internal server error: {type(e).__name__}: {e}",
                          type="server_error")
    if isinstance(resp, web.StreamResponse) and not resp.prepared:
        if resp.status >= 400:
            state.metrics.http_errors[resp.status] = \
                state.metrics.http_errors.get(resp.status, 0) + 1
        if _body_may_break(request):
            resp.force_close()
    return resp


def _body_may_break(request: web.Request) -> bool:
    """A body that failed to decode, or a compressed one the handler did not read (a 404/405/
    401 ...): after the response aiohttp would decode it to discard it, may fail, and then drop
    a connection it had just announced as keep-alive. Such responses say "close" up front."""
    try:
        content = request.content
        if content.exception() is not None:
            return True
        return "Content-Encoding" in request.headers and not content.at_eof()
    except Exception:  # noqa: BLE001 - no payload object: nothing to worry about
        return False


async def handle_health(request: web.Request) -> web.Response:
    state = get_state(request.app)
    if state.draining:
        return web.json_response({"status": "draining"}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
    if state.health is not None:
        code, body = state.health()
        return web.json_response(body, status=code)
    return web.json_response({"status": "ok"})


async def handle_models(request: web.Request) -> web.Response:
    state = get_state(request.app)
    return web.json_response(protocol.models_list(state.model_names, state.created,
                                                  state.max_model_len, state.model_root))


async def handle_metrics(request: web.Request) -> web.Response:
    state = get_state(request.app)
    text = render_metrics(engine_stats(state.engine), state.metrics, state.model_names[0])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


def engine_stats(engine: Any) -> EngineStats | None:
    """engine.stats(), or None (logged) if the engine failed to report them."""
    try:
        return engine.stats()
    except Exception:
        log.warning("engine.stats() failed", exc_info=True)
        return None


async def handle_engine_config(request: web.Request) -> web.Response:
    """engine.config_report(): the configuration the engine runs with, as it reports it."""
    return web.json_response(get_state(request.app).engine.config_report())


async def handle_debug_steps(request: web.Request) -> web.Response:
    """engine.step_trace() as a JSON array; `?since=N` keeps steps with "step" >= N."""
    state = get_state(request.app)
    since = request.query.get("since")
    try:
        since_n = int(since) if since is not None else None
    except ValueError:
        raise RequestError(400, f"'since' must be an integer, got {since!r}", "since")
    steps = _step_trace(state.engine)
    if since_n is not None:
        steps = [e for e in steps if isinstance(e, dict) and e.get("step", 0) >= since_n]
    return web.Response(text=json.dumps(steps, default=_json_default),
                        content_type="application/json")


def _step_trace(engine: Any) -> list:
    fn = getattr(engine, "step_trace", None)
    if not callable(fn):
        return []
    for _ in range(5):  # the engine thread may append while we copy (deque mutated)
        try:
            return list(fn())
        except RuntimeError:
            continue
    return []


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# --------------------------------------------------------------------------------------------
# Generation


async def _read_body(request: web.Request, state: ServerState) -> bytes:
    """The body, size- and time-limited: 413 over max_body_bytes (at once when Content-Length
    says so), 408 when the client stops sending before the body is complete."""
    try:
        declared = request.content_length
    except ValueError:  # aiohttp's parser rejects these first; belt and braces
        raise RequestError(400, "invalid Content-Length header")
    if declared is not None and state.max_body_bytes and declared > state.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=state.max_body_bytes,
                                            actual_size=declared)
    try:
        if state.body_timeout_s:
            # raises HTTPRequestEntityTooLarge over client_max_size
            return await asyncio.wait_for(request.read(), state.body_timeout_s)
        return await request.read()
    except asyncio.TimeoutError:
        # the rest of the body may never come: do not linger for it
        raise RequestError(408, f"request body not received within {state.body_timeout_s:g} s",
                           code="request_body_timeout", close_connection=True) from None
    except (RequestPayloadError, HttpProcessingError, ValueError) as e:
        # a Content-Encoding that does not decode, a broken chunked encoding, ...
        msg = " ".join(str(e).split()) or type(e).__name__
        # the request stream is broken: answer, then close (no keep-alive on a broken stream)
        raise RequestError(400, f"could not read the request body: {msg}",
                           close_connection=True) from None


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _handle_generate(request, "completion")


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _handle_generate(request, "chat")


def _parse(state: ServerState, kind: str, raw: bytes) -> protocol.EngineRequest:
    body = protocol.decode_json_body(raw)
    parse = protocol.parse_chat_request if kind == "chat" else protocol.parse_completion_request
    return parse(body, tokenizer=state.tokenizer, model_names=state.model_names,
                 max_model_len=state.max_model_len, vocab_size=state.vocab_size)


def _clean_client_id(value: str) -> str:
    """X-Request-Id as printable ASCII (header bytes >= 0x80 arrive as surrogate escapes)."""
    return "".join(c if " " <= c <= "~" else "?" for c in value[:256])


class _TimedOutput:
    """The final output the server makes up for a request it aborted at its deadline."""

    def __init__(self, num_prompt_tokens: int, num_output_tokens: int) -> None:
        self.new_token_ids: list[int] = []
        self.text_delta = ""
        self.finished = True
        self.finish_reason = "abort"
        self.num_prompt_tokens = num_prompt_tokens
        self.num_output_tokens = num_output_tokens
        self.timing = None


class _Outputs:
    """The engine's outputs for one request, cut off at the request deadline (if any): past it
    the request is aborted in the engine and a final "abort" output ends the iteration."""

    def __init__(self, state: ServerState, gen: Any, request_id: str, n_prompt: int,
                 deadline: float | None) -> None:
        self.state = state
        self.gen = gen
        self.request_id = request_id
        self.n_prompt = n_prompt
        self.deadline = deadline
        self.n_output = 0
        self.timed_out = False

    async def next(self) -> Any:
        if self.deadline is None:
            out = await self.gen.__anext__()
        else:
            try:
                # Cancelling __anext__ closes the engine's generator, which aborts the request.
                out = await asyncio.wait_for(self.gen.__anext__(),
                                             max(self.deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                self.timed_out = True
                self.state.metrics.timeouts += 1
                _safe_abort(self.state.engine, self.request_id)
                log.info("request %s exceeded the request timeout; aborted", self.request_id)
                return _TimedOutput(self.n_prompt, self.n_output)
        self.n_output += len(out.new_token_ids or ())
        return out

    async def iterate(self, first: Any):
        out = first
        yield out
        while not out.finished:
            out = await self.next()
            yield out

    def timeout_error(self) -> dict:
        return protocol.error_body(
            f"request exceeded the server's request timeout ({self.state.request_timeout_s:g} s)"
            f" and was aborted after {self.n_output} output tokens",
            type="timeout_error", code="request_timeout")


async def _handle_generate(request: web.Request, kind: str) -> web.StreamResponse:
    state = get_state(request.app)
    arrival, arrival_perf, _ = arrival_times(request)   # when the bytes landed (kernel)
    state.check_admission()  # cheap early refusal, before reading the body
    raw = await _read_body(request, state)
    if len(raw) >= PARSE_IN_THREAD_BYTES:  # tokenizing MBs of text takes a while
        req = await asyncio.to_thread(_parse, state, kind, raw)
    else:
        req = _parse(state, kind, raw)
    state.check_admission()  # authoritative: no await between here and inflight.add
    request_id = f"cmpl-{uuid.uuid4().hex}"
    client_id = request.headers.get("X-Request-Id")
    if client_id:  # echoed in the extension so a client can join server timing to its record
        req.extra["client_request_id"] = _clean_client_id(client_id)
    created = int(time.time())
    state.inflight.add(request_id)
    state.awaiting_first += 1
    awaiting = True
    gen = state.engine.generate(request_id, req.prompt_token_ids, req.sampling,
                                arrival_time=arrival_perf)
    deadline = arrival + state.request_timeout_s if state.request_timeout_s else None
    src = _Outputs(state, gen, request_id, len(req.prompt_token_ids), deadline)
    finished = False
    try:
        # The first output comes before any header: a request the engine refuses (ValueError
        # from its own validation, e.g. more KV blocks than the pool holds) is still a clean 4xx.
        try:
            first = await src.next()
        except ValueError as e:
            finished = True  # never queued
            raise RequestError(400, str(e))
        except StopAsyncIteration:
            finished = True
            raise RequestError(500, "engine produced no output", type="server_error")
        except RuntimeError as e:
            finished = True
            if state.draining or "shut down" in str(e):
                raise RequestError(503, f"engine unavailable: {e}", type="server_error",
                                   headers={"Retry-After": str(RETRY_AFTER_S)})
            raise RequestError(500, f"engine error: {e}", type="server_error")
        state.awaiting_first -= 1
        awaiting = False
        state.metrics.requests_started += 1
        state.metrics.prompt_tokens += len(req.prompt_token_ids)
        if src.timed_out:
            finished = True  # aborted by us, on purpose: not a client disconnect
        outputs = src.iterate(first)
        if req.stream:
            resp, finished = await _stream(request, state, req, outputs, request_id, created,
                                           arrival, src)
        else:
            resp, finished = await _collect(state, req, outputs, request_id, created, arrival,
                                            src)
        return resp
    finally:
        state.inflight.discard(request_id)
        if awaiting:
            state.awaiting_first -= 1
        if not finished:
            # Client went away (write failed or handler cancelled) or we failed: free the KV.
            _safe_abort(state.engine, request_id)
            state.metrics.requests_by_reason["abort"] += 1
            state.metrics.client_disconnects += 1
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            try:
                await asyncio.shield(aclose())
            except BaseException:  # noqa: BLE001 - best effort; never mask the real outcome
                pass


def _record_finish(state: ServerState, out: Any, arrival: float, first_token_t: float | None):
    reason = out.finish_reason or "stop"
    state.metrics.requests_by_reason[reason] = state.metrics.requests_by_reason.get(reason, 0) + 1
    now = time.monotonic()
    state.metrics.observe_phases(getattr(out, "timing", None))
    state.metrics.e2e.observe(now - arrival)
    if first_token_t is not None:
        state.metrics.ttft.observe(first_token_t - arrival)


async def _collect(state: ServerState, req: protocol.EngineRequest, gen, request_id: str,
                   created: int, arrival: float, src: _Outputs) -> tuple[web.Response, bool]:
    parts: list[str] = []
    token_ids: list[int] = []
    final = None
    first_token_t = None
    async for out in gen:
        token_ids.extend(out.new_token_ids)
        if out.new_token_ids:
            state.metrics.generation_tokens += len(out.new_token_ids)
            if first_token_t is None:
                first_token_t = time.monotonic()
        parts.append(out.text_delta or "")
        if out.finished:
            final = out
            break
    if final is None:
        raise RequestError(500, "engine stream ended without a final output", type="server_error")
    _record_finish(state, final, arrival, first_token_t)
    text = "".join(parts)
    usage = protocol.usage_dict(final.num_prompt_tokens, final.num_output_tokens)
    ext = protocol.extension_dict(request_id, getattr(final, "timing", None), req.extra)
    build = protocol.chat_response if req.kind == "chat" else protocol.completion_response
    body = build(request_id, req.model, created, text, final.finish_reason, usage, ext,
                 token_ids)
    if src.timed_out:
        body.update(src.timeout_error())
    return web.json_response(body, dumps=_dumps), True


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


async def _stream(request: web.Request, state: ServerState, req: protocol.EngineRequest, gen,
                  request_id: str, created: int, arrival: float, src: _Outputs
                  ) -> tuple[web.StreamResponse, bool]:
    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Request-Id": request_id,
    })
    await resp.prepare(request)
    done = [False]  # set once the engine reported the request finished
    try:
        await _stream_body(resp, state, req, gen, request_id, created, arrival, done, src)
    except ConnectionResetError:  # client went away mid-stream; the caller's finally aborts
        if not done[0]:
            log.info("client disconnected mid-stream; aborting %s", request_id)
    except Exception as e:  # headers are sent: report in-band, then end the stream
        log.exception("error while streaming %s", request_id)
        try:
            await resp.write(protocol.sse_event(protocol.error_body(
                f"internal server error: {type(e).__name__}: {e}", type="server_error")))
            await resp.write(protocol.SSE_DONE)
            await resp.write_eof()
        except Exception:
            pass
    return resp, done[0]


async def _stream_body(resp: web.StreamResponse, state: ServerState, req: protocol.EngineRequest,
                       gen, request_id: str, created: int, arrival: float, done: list,
                       src: _Outputs) -> None:
    first = True
    first_token_t = None
    async for out in gen:
        if out.new_token_ids:
            state.metrics.generation_tokens += len(out.new_token_ids)
            if first_token_t is None:
                first_token_t = time.monotonic()
        ext = None
        if out.finished:
            ext = protocol.extension_dict(request_id, getattr(out, "timing", None), req.extra)
        reason = out.finish_reason if out.finished else None
        if req.kind == "chat":
            chunk = protocol.chat_chunk(request_id, req.model, created, out.text_delta or "",
                                        reason, first=first, include_usage=req.include_usage,
                                        extension=ext, token_ids=out.new_token_ids)
        else:
            chunk = protocol.completion_chunk(request_id, req.model, created,
                                              out.text_delta or "", reason,
                                              include_usage=req.include_usage, extension=ext,
                                              token_ids=out.new_token_ids)
        first = False
        # A failed write (client gone) raises ConnectionResetError/ClientConnectionResetError;
        # the caller's finally aborts the request in the engine.
        if out.finished:
            done[0] = True
            _record_finish(state, out, arrival, first_token_t)
        await resp.write(protocol.sse_event(chunk))
        if out.finished:
            if req.include_usage:
                usage = protocol.usage_dict(out.num_prompt_tokens, out.num_output_tokens)
                await resp.write(protocol.sse_event(
                    protocol.usage_chunk(req.kind, request_id, req.model, created, usage)))
            if src.timed_out:
                await resp.write(protocol.sse_event(src.timeout_error()))
            await resp.write(protocol.SSE_DONE)
            await resp.write_eof()
            return
    raise RuntimeError("engine stream ended without a final output")


# --------------------------------------------------------------------------------------------
# App


def build_app(
    engine: Any,
    tokenizer: Any,
    model_name: str,
    *,
    extra_model_names: Sequence[str] = (),
    model_root: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
    max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS,
    request_timeout_s: float | None = None,
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
    health: Callable[[], tuple[int, dict]] | None = None,
) -> web.Application:
    """The OpenAI-compatible app around a running engine.

    engine: AsyncEngine-like: generate/abort/step_trace/config_report, stats() -> EngineStats,
    and the attributes max_model_len (the context window prompts are checked against) and
    vocab_size (the bound for token-id prompts); tokenizer: encode / apply_chat_template;
    model_name: the name clients must send as "model" (also accepted: extra_model_names).
    api_key (None/"": no auth), max_waiting_requests (None: unbounded), request_timeout_s (None:
    none), body_timeout_s (None: none): see the module docstring. health: GET /health's
    (status code, JSON body) while not draining (default: 200 {"status": "ok"}); the disagg
    router's reports its workers.
    Run it with `handler_cancellation=True` (see start_site) so disconnects abort requests.
    """
    if max_waiting_requests is not None and max_waiting_requests < 1:
        raise ValueError(f"max_waiting_requests must be >= 1 or None, got {max_waiting_requests}")
    if request_timeout_s is not None and not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0 or None, got {request_timeout_s}")
    names = [model_name] + [n for n in extra_model_names if n and n != model_name]
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    state = ServerState(engine, tokenizer, names, engine.max_model_len, engine.vocab_size,
                        model_root)
    state.max_body_bytes = max_body_bytes
    state.api_key = api_key.encode("utf-8") if api_key else None
    state.max_waiting_requests = max_waiting_requests
    state.request_timeout_s = request_timeout_s
    state.body_timeout_s = body_timeout_s
    state.health = health
    app[STATE_KEY] = state
    app.router.add_post("/v1/completions", handle_completions)
    app.router.add_post("/v1/chat/completions", handle_chat)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/debug/steps", handle_debug_steps)
    app.router.add_get("/v1/engine/config", handle_engine_config)
    return app


# Client address, request line (method, path, query; no headers), status, bytes, seconds. Never
# add %{Authorization}i or any other header here: the API key would end up in the logs.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'


async def start_site(app: web.Application, host: str = "127.0.0.1", port: int = 8000,
                     *, shutdown_timeout: float = 5.0, access_log: bool = False
                     ) -> tuple[web.AppRunner, str]:
    """Start serving `app`; returns (runner, base URL with the bound port). Stop with
    `await stop_site(app, runner)`. access_log: one INFO line per request on the
    "aiohttp.access" logger, in ACCESS_LOG_FORMAT (no headers)."""
    kwargs: dict[str, Any] = {"access_log": None}
    if access_log:
        kwargs = {"access_log": logging.getLogger("aiohttp.access"),
                  "access_log_format": ACCESS_LOG_FORMAT}
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout,
                           **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = addr[1]
            break
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


async def stop_site(app: web.Application, runner: web.AppRunner) -> list[str]:
    """Graceful stop: refuse new requests, abort in-flight ones, close the listener and wait for
    handlers to finish. Does not shut the engine down. Returns the aborted request ids."""
    state = get_state(app)
    state.draining = True
    aborted = state.abort_all()
    await runner.cleanup()
    return aborted
