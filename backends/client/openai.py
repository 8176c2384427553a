"""Streaming client for any OpenAI-compatible server (vLLM, SGLang, Dynamo, llama.cpp, TGI, ours).

Role in the data flow: `workloads/loadgen.py` calls `send_request(pool, req, clock)` once per
request at its send time (with the request's bytes built ahead by `build_wire`); this module
turns one HTTP streaming response into a `RawResult` (send time, and for every chunk that
carries output tokens: its arrival time on the run clock and its token count; usage; the
reference engine's server-side timing; or an error). `workloads/records.py` turns a `RawResult`
into a `RequestRecord` (one row of requests.parquet) with the metric functions. The transport is
`backends/http_client.py` (lean HTTP/1.1, keep-alive pool); SSE lines come from `backends/sse.py`.

Measurement rules (docs/design.md, "Metric definitions"):
- the send time is taken just before the request's bytes are written (`Response.send_ns`), less
  the connect time when a new connection had to be opened for it (a new connection's connect
  time is part of TTFT, as a user would see it: on plain TCP the handshake's duration as the
  kernel measured it, so a stall of the client while connecting is send lateness, not TTFT);
  if no connection could be opened, the time the request was handed to the pool;
- arrival timestamps are the times of the socket reads, taken before any parsing
  (http_client.py): on Linux over plain TCP the kernel's receive time of the read's data
  (SO_TIMESTAMPNS, backends/rawsock.py), else `time.perf_counter_ns()` right after the read
  (`RawResult.timestamps` says which: "kernel", "user" or "mixed"); each SSE event gets the
  time of the socket read that delivered its last byte. JSON is parsed only after the response
  is complete, so neither parsing nor a busy event loop's backlog of Python work inflates
  TTFT/ITL;
- a chunk whose delta is empty carries 0 tokens and is not a token arrival (not recorded);
- tokens per chunk: `token_ids` (vLLM style) or logprobs tokens when the server sends them, else
  `tokenize(chunk_text)` when a tokenizer callback is given, else 1 per content chunk;
- n_output: `usage.completion_tokens` ("usage"), else tokenizer count of the whole text
  ("tokenizer"), else the sum of chunk counts ("chunks"); per-chunk counts are never inflated to
  match usage;
- cross-check: `n_output_client` is the client's own count of the output (the tokenizer's count
  of the whole streamed text when a tokenizer is given, else the sum of per-chunk counts when
  every chunk carried `token_ids`/logprobs, else None: no independent count); when the server
  also sent usage and the two differ, `token_count_mismatch` is True (None: nothing to compare);
- E2E ends at the last content chunk, not at `[DONE]`;
- failures (never successes): `connect`, `http_4xx`, `http_5xx`, `timeout`, `disconnect`,
  `stream_error` (a streamed {"error": ...} event or unparseable stream), `client_error` (anything
  else raised by the client, with the exception class in the message).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .http import (ConnectError, DisconnectError, HttpPool, ProtocolError, Response,
                          build_request)
from .sse import sse_lines

_perf = time.perf_counter_ns

try:  # orjson parses an SSE event ~5x faster than json; same results (fallback below)
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency, but stay usable without it
    _orjson_loads = None


def _loads(data: bytes | str) -> Any:
    """json.loads, via orjson when installed; what orjson refuses (NaN, huge ints) goes to
    json, which raises ValueError for what is really malformed."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(data)
        except ValueError:
            pass
    return json.loads(data)


class RunClock:
    """The run's monotonic clock: t=0 at run start, seconds as float, ns resolution underneath."""

    def __init__(self, t0_ns: int | None = None):
        self.t0_ns = time.perf_counter_ns() if t0_ns is None else int(t0_ns)

    def to_s(self, ns: int) -> float:
        return (ns - self.t0_ns) / 1e9

    def now(self) -> float:
        return self.to_s(time.perf_counter_ns())

    def to_ns(self, s: float) -> int:
        return self.t0_ns + int(round(s * 1e9))


@dataclass
class PreparedRequest:
    """Everything needed to send one request. `prompt` is text (completions; for chat it becomes
    one user message) or a list of chat messages. `url` is the server base URL (`http://h:p`,
    `http://h:p/v1`, or a full `.../completions` URL)."""

    request_id: str
    prompt: str | list[dict]
    max_tokens: int
    n_input: int | None = None
    endpoint: str = "completions"          # "completions" | "chat"
    url: str = ""
    model: str | None = None
    ignore_eos: bool | None = True          # None: do not send the field
    temperature: float | None = 0.0         # None: do not send the field
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    timeout_s: float | None = None          # total per-request timeout
    extra_body: dict[str, Any] = field(default_factory=dict)
    # multi-turn: turns of one conversation_id are sent in `turn` order, each `think_time_s`
    # after the previous turn's last token (workloads/loadgen.py); None = independent request
    conversation_id: str | None = None
    turn: int = 0
    think_time_s: float = 0.0
    # trace replay: intended send time (s, trace clock); used with ArrivalSpec(kind="trace")
    send_at_s: float | None = None
    tokenize: Callable[[str], list[int]] | None = field(default=None, repr=False, compare=False)

    def endpoint_url(self) -> str:
        return endpoint_url(self.url, self.endpoint)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": int(self.max_tokens),
        }
        if self.model is not None:
            body["model"] = self.model
        if self.endpoint == "chat":
            if isinstance(self.prompt, str):
                body["messages"] = [{"role": "user", "content": self.prompt}]
            else:
                body["messages"] = list(self.prompt)
        else:
            body["prompt"] = self.prompt
        if self.ignore_eos is not None:
            body["ignore_eos"] = bool(self.ignore_eos)
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        body.update(self.extra_body)
        return body

    def request_headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream",
             "X-Request-Id": str(self.request_id)}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(self.headers)
        return h


def endpoint_url(base: str, endpoint: str) -> str:
    """`http://h:p` -> `http://h:p/v1/completions` (or /v1/chat/completions); a base ending in /v1
    gets only the tail; a full URL ending in /completions is used as is."""
    if endpoint not in ("completions", "chat"):
        raise ValueError(f"endpoint must be 'completions' or 'chat', not {endpoint!r}")
    b = base.rstrip("/")
    if b.endswith("/completions"):
        return b
    tail = "/chat/completions" if endpoint == "chat" else "/completions"
    return b + tail if b.endswith("/v1") else b + "/v1" + tail


@dataclass
class RawResult:
    """What one streamed request produced. Times are seconds on the run clock; chunk lists hold
    token-bearing chunks only."""

    request_id: str
    send_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end_s: float | None = None              # when the stream ended ([DONE], EOF or failure)
    n_input: int | None = None
    n_output: int = 0
    n_output_source: str = "chunks"         # "usage" | "tokenizer" | "chunks"
    usage: dict | None = None
    server_timing: dict | None = None       # the engine's `infer_bench` extension field
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    error_type: str | None = None
    text: str = ""
    n_output_client: int | None = None     # client's own count (see module docstring)
    token_count_mismatch: bool | None = None
    chunk_counts_exact: bool = True         # every chunk's count came from the server's ids
    timestamps: str | None = None           # read times: "kernel" | "user" | "mixed" | None

    @property
    def ok(self) -> bool:
        return self.error_type is None


def _choice_text_and_tokens(choice: dict) -> tuple[str, int | None]:
    """(text delta, token count if the server says it) for one choice of one chunk."""
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        if delta is not None and isinstance(delta, dict):
            parts = [delta.get(k) for k in ("content", "reasoning_content", "reasoning")]
            text = "".join(p for p in parts if isinstance(p, str))
    if not isinstance(text, str):
        text = ""
    ids = choice.get("token_ids")
    if ids is not None and isinstance(ids, list):
        return text, len(ids)
    lp = choice.get("logprobs")
    if lp is not None and isinstance(lp, dict):
        if isinstance(lp.get("tokens"), list):          # completions
            return text, len(lp["tokens"])
        if isinstance(lp.get("content"), list):         # chat
            return text, len(lp["content"])
    return text, None


class _StreamError(Exception):
    pass


def _error_message(obj: Any) -> str:
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("detail") or json.dumps(obj)[:500]
        return str(msg)
    return str(obj)[:500]


def build_wire(req: PreparedRequest) -> tuple[tuple[str, str, int], bytes]:
    """The request's HTTP bytes, built once: (origin, bytes). The load generator calls this
    before the send time so that only the write happens at it."""
    body = json.dumps(req.payload(), separators=(",", ":")).encode("utf-8")
    return build_request("POST", req.endpoint_url(), req.request_headers(), body)


async def send_request(session: HttpPool | Any, req: PreparedRequest, clock: RunClock, *,
                       wire: tuple[tuple[str, str, int], bytes] | None = None) -> RawResult:
    """Send `req` with streaming and measure it. Never raises for request failures (they come back
    as a RawResult with error_type set); re-raises asyncio.CancelledError.

    `session`: the load generator's `HttpPool` (keep-alive connections). Anything else (None, or
    an aiohttp session from older callers) gets a one-off pool, closed after this request.
    `wire`: `build_wire(req)` done ahead of time."""
    if isinstance(session, HttpPool):
        return await _send(session, req, clock, wire)
    pool = HttpPool()
    try:
        return await _send(pool, req, clock, wire)
    finally:
        pool.close()


async def _send(pool: HttpPool, req: PreparedRequest, clock: RunClock, wire) -> RawResult:
    res = RawResult(request_id=str(req.request_id), n_input=req.n_input)
    texts: list[str] = []
    state = {"done": False}
    try:
        if wire is None:
            wire = build_wire(req)
        origin, data = wire
        res.send_s = clock.to_s(_perf())       # replaced by the pool's send time (see above)
        resp = await pool.request(origin, data, timeout_s=req.timeout_s)
        res.send_s = clock.to_s(resp.send_ns)
        res.http_status = resp.status
        res.timestamps = resp.timestamps
        res.end_s = clock.to_s(resp.end_ns)
        if resp.status >= 400:
            body = resp.body()[:4096].decode("utf-8", "replace")
            msg = body
            try:
                j = json.loads(body)
                msg = _error_message(j.get("error", j) if isinstance(j, dict) else j)
            except ValueError:
                pass
            res.error_type = "http_4xx" if resp.status < 500 else "http_5xx"
            res.error = f"HTTP {resp.status}: {msg.strip()[:500]}"
        else:
            ctype = resp.content_type
            if "text/event-stream" not in ctype and "application/json" in ctype:
                # The server ignored stream=true: one body, all tokens at once.
                try:
                    obj = _loads(resp.body())
                except ValueError as e:
                    raise _StreamError(f"unparseable JSON body: {resp.body()[:200]!r}") from e
                _handle_event(obj, clock.to_s(resp.end_ns), req, res, texts)
                state["done"] = True
            else:
                _parse_stream(resp.pieces, clock, req, res, texts, state)
            if res.error_type is None and not state["done"] and res.finish_reason is None:
                res.error_type = "disconnect"
                res.error = "stream ended before [DONE] or a finish_reason"
    except _StreamError as e:
        res.error_type, res.error = "stream_error", str(e)
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError as e:
        _salvage(getattr(e, "response", None), clock, req, res, texts, state)
        res.error_type, res.error = "timeout", f"no complete response within {req.timeout_s} s"
    except ConnectError as e:
        res.error_type, res.error = "connect", str(e)
    except DisconnectError as e:
        _salvage(e.response, clock, req, res, texts, state)
        if res.error_type is None:
            res.error_type, res.error = "disconnect", f"{type(e).__name__}: {e}"
    except ProtocolError as e:
        _salvage(e.response, clock, req, res, texts, state)
        if res.error_type is None:
            res.error_type, res.error = "stream_error", f"malformed HTTP response: {e}"
    except Exception as e:  # noqa: BLE001 - a benchmark never dies on one request
        res.error_type, res.error = "client_error", f"{type(e).__name__}: {e}"
    if res.end_s is None:
        res.end_s = clock.now()
    if res.error_type is not None and res.error is None:
        res.error = "server sent an error event"
    _finish_counts(req, res, texts)
    return res


def _salvage(resp: Response | None, clock: RunClock, req: PreparedRequest, res: RawResult,
             texts: list[str], state: dict) -> None:
    """Keep what arrived before a failure (status, end time, the chunks that came)."""
    if resp is None:
        return
    if resp.send_ns is not None:
        res.send_s = clock.to_s(resp.send_ns)
    if resp.status:
        res.http_status = resp.status
    res.timestamps = resp.timestamps
    if resp.end_ns is not None:
        res.end_s = clock.to_s(resp.end_ns)
    if resp.status and resp.status < 400 and resp.pieces:
        try:
            _parse_stream(resp.pieces, clock, req, res, texts, state)
        except _StreamError:
            pass


def _parse_stream(pieces, clock: RunClock, req: PreparedRequest, res: RawResult,
                  texts: list[str], state: dict) -> None:
    """SSE lines -> events, after the stream (timestamps were taken at the socket reads).
    Each `data:` line gets the time of the read that delivered its last byte."""
    t0 = clock.t0_ns
    loads = _loads
    for t_ns, line in sse_lines(pieces):
        line = line.strip()
        if not line or line[0] == 58:              # b":" comment
            continue
        if line.startswith(b"data:"):
            data_s = line[5:].strip()
            if data_s == b"[DONE]":
                state["done"] = True
                continue
            try:
                obj = loads(data_s)
            except ValueError as e:
                raise _StreamError(f"unparseable SSE data: {data_s[:200]!r}") from e
            _handle_event(obj, (t_ns - t0) / 1e9, req, res, texts)
        elif line.startswith(b"event:"):
            if line[6:].strip() == b"error":
                res.error_type = "stream_error"


def _handle_event(obj: Any, t: float, req: PreparedRequest, res: RawResult,
                  texts: list[str]) -> bool:
    """Account one parsed SSE event (or a whole non-streamed body) into `res`. Runs once per
    event after the stream, so it is kept lean."""
    if not isinstance(obj, dict):
        raise _StreamError(f"SSE event is not a JSON object: {str(obj)[:200]}")
    get = obj.get
    err = get("error")
    if err:
        res.error_type = "stream_error"
        res.error = "stream error: " + _error_message(err)
        return False
    if res.error_type == "stream_error":          # data after `event: error`
        res.error = "stream error: " + _error_message(obj)
        return False
    usage = get("usage")
    if usage is not None and isinstance(usage, dict):
        res.usage = usage
    ext = get("infer_bench")
    if ext is not None and isinstance(ext, dict):
        res.server_timing = ext
    choices = get("choices")
    if not choices:
        return False
    n_tok_total = 0
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        text, n = _choice_text_and_tokens(choice)
        msg = choice.get("message")
        if msg is not None and isinstance(msg, dict):   # non-streamed body
            text = msg.get("content") or ""
        if n is None:
            if not text:
                n = 0
            else:
                res.chunk_counts_exact = False
                n = max(1, len(req.tokenize(text))) if req.tokenize is not None else 1
        n_tok_total += n
        if text:
            texts.append(text)
        fin = choice.get("finish_reason")
        if fin:
            res.finish_reason = fin
    if n_tok_total > 0:
        res.chunk_times_s.append(t)
        res.chunk_tokens.append(n_tok_total)
    return False


def _finish_counts(req: PreparedRequest, res: RawResult, texts: list[str]) -> None:
    res.text = "".join(texts)
    usage = res.usage or {}
    if isinstance(usage.get("prompt_tokens"), int):
        res.n_input = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        res.n_output, res.n_output_source = usage["completion_tokens"], "usage"
    elif req.tokenize is not None and res.text:
        res.n_output, res.n_output_source = len(req.tokenize(res.text)), "tokenizer"
    else:
        res.n_output, res.n_output_source = int(sum(res.chunk_tokens)), "chunks"
    if res.n_output == 0 and res.chunk_tokens:    # usage said 0 but tokens arrived: trust the data
        res.n_output, res.n_output_source = int(sum(res.chunk_tokens)), "chunks"
    # the client's independent count, compared with the server's usage
    if req.tokenize is not None:
        res.n_output_client = len(req.tokenize(res.text)) if res.text else 0
    elif res.chunk_tokens and res.chunk_counts_exact:
        res.n_output_client = int(sum(res.chunk_tokens))
    if isinstance(usage.get("completion_tokens"), int) and res.n_output_client is not None:
        res.token_count_mismatch = usage["completion_tokens"] != res.n_output_client
