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
- output by kind: a delta's `reasoning_content` / `reasoning` text is reasoning, `content` (chat)
  or `text` (completions) is the answer, `tool_calls` (each call's name and argument pieces) is a
  tool call; every token of any kind is an output token (TTFT = first token of any kind, ITL over
  all of them), and `first_answer_s` is the arrival of the first answer token (TTFAT). A chunk's
  server-given token count (`token_ids`/logprobs) goes to the kind its text has (a chunk mixing
  kinds: split by the characters' shares); without one, each kind's text in the chunk counts
  as above (tokenizer, else 1). Per-kind totals: reasoning = usage's
  `completion_tokens_details.reasoning_tokens` when the server sends it, else the deltas'
  count; tool calls = the deltas' count; answer = the rest of n_output (so the three sum to
  n_output; for a plain stream answer = n_output and TTFAT = TTFT);
- failures (never successes): `connect`, `http_4xx`, `http_5xx`, `timeout`, `disconnect`,
  `stream_error` (a streamed {"error": ...} event, an unparseable stream, or [DONE] with no
  finish_reason: a response the server cut short), `client_error` (anything
  else raised by the client, with the exception class in the message); an HTTP error keeps the
  server's body (its JSON error message, else the text, at most ERROR_BODY_CHARS characters; an
  empty body is said to be empty).

Request ids: the `X-Request-Id` header is `wire_request_id(request_id)`, a UUID (uuid5 of the
workload's own id, so a rerun sends the same ids): several servers (llama-cpp-python's, through
starlette-context) answer 400 to a request id that is not a UUID. The workload's id stays the
record's `request_id`; the id sent is kept as `RawResult.wire_request_id` (a caller's own
X-Request-Id header, when given, is sent and kept as is).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
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


ERROR_BODY_CHARS = 500
# uuid5 namespace of the wire request ids (fixed: the same workload id always maps to the same UUID)
REQUEST_ID_NAMESPACE = uuid.UUID("6f1c3a52-9d0e-5b7a-8c41-2e7d9b0a4f13")


def wire_request_id(request_id: str) -> str:
    """The X-Request-Id sent for workload request `request_id`: itself when it already is a
    UUID, else uuid5(REQUEST_ID_NAMESPACE, request_id) (deterministic: reruns send the same)."""
    rid = str(request_id)
    try:
        return str(uuid.UUID(rid))
    except ValueError:
        return str(uuid.uuid5(REQUEST_ID_NAMESPACE, rid))


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
             "X-Request-Id": wire_request_id(self.request_id)}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(self.headers)
        return h

    def wire_id(self) -> str:
        """The X-Request-Id this request sends (a caller's own header wins)."""
        for k, v in self.headers.items():
            if k.lower() == "x-request-id":
                return str(v)
        return wire_request_id(self.request_id)


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
    wire_request_id: str | None = None      # the X-Request-Id sent (see the module docstring)
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
    first_answer_s: float | None = None     # arrival of the first answer (content) token
    n_output_reasoning: int = 0             # output tokens by kind (see the module docstring)
    n_output_answer: int = 0
    n_output_tool: int = 0
    kind_counts: dict = field(default_factory=lambda: {"reasoning": 0, "answer": 0, "tool": 0},
                              repr=False)   # the deltas' own counts per kind

    @property
    def ok(self) -> bool:
        return self.error_type is None


def _tool_text(calls: Any) -> str:
    """The text of tool-call deltas (or a message's tool calls): each call's function name and
    argument pieces."""
    if not isinstance(calls, list):
        return ""
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict):
            for k in ("name", "arguments"):
                v = fn.get(k)
                if isinstance(v, str):
                    out.append(v)
    return "".join(out)


def _choice_parts(choice: dict) -> tuple[str, str, str, int | None]:
    """(answer text, reasoning text, tool-call text, token count if the server says it) for one
    choice of one chunk (or of a non-streamed body)."""
    text = choice.get("text")
    reasoning, tool = "", ""
    for key in ("delta", "message"):
        d = choice.get(key)
        if d is None or not isinstance(d, dict):
            continue
        if text is None or key == "message":
            text = d.get("content")
        r = d.get("reasoning_content")       # some servers send both names with the same text
        if not (isinstance(r, str) and r):
            r = d.get("reasoning")
        if isinstance(r, str):
            reasoning = r
        calls = d.get("tool_calls")
        if calls:
            tool = _tool_text(calls)
    if not isinstance(text, str):
        text = ""
    ids = choice.get("token_ids")
    if ids is not None and isinstance(ids, list):
        return text, reasoning, tool, len(ids)
    lp = choice.get("logprobs")
    if lp is not None and isinstance(lp, dict):
        if isinstance(lp.get("tokens"), list):          # completions
            return text, reasoning, tool, len(lp["tokens"])
        if isinstance(lp.get("content"), list):         # chat
            return text, reasoning, tool, len(lp["content"])
    return text, reasoning, tool, None


def _split_count(n: int, parts: tuple[str, str, str]) -> list[int]:
    """A server-given count `n` for one chunk over its (answer, reasoning, tool) texts: all to the
    one kind with text; mixed: by characters (largest remainder); no text at all: the answer."""
    lens = [len(p) for p in parts]
    total = sum(lens)
    if total == 0:
        return [n, 0, 0]
    exact = [n * k / total for k in lens]
    out = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - out[i], reverse=True)[:n - sum(out)]:
        out[i] += 1
    return out


class _StreamError(Exception):
    pass


def _error_message(obj: Any) -> str:
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("detail") or json.dumps(obj)[:ERROR_BODY_CHARS]
        return msg if isinstance(msg, str) else json.dumps(msg, default=str)
    return str(obj)[:ERROR_BODY_CHARS]


def http_error_text(status: int, reason: str, body: bytes) -> str:
    """`HTTP 400: <the server's message>` for an error response: the JSON body's error message
    (`error.message`, `message`, `detail`), else the body's text, on one line, at most
    ERROR_BODY_CHARS characters; an empty body says so (with the status line's reason)."""
    text = body[:8192].decode("utf-8", "replace").strip()
    if not text:
        why = f" {reason.strip()}" if reason and reason.strip() else ""
        return f"HTTP {status}{why} (empty body)"
    msg = text
    try:
        j = json.loads(text)
        msg = _error_message(j.get("error", j) if isinstance(j, dict) else j)
    except ValueError:
        pass
    msg = " ".join(str(msg).split())
    if len(msg) > ERROR_BODY_CHARS:
        msg = msg[:ERROR_BODY_CHARS - 3] + "..."
    return f"HTTP {status}: {msg}"


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
    res = RawResult(request_id=str(req.request_id), wire_request_id=req.wire_id(),
                    n_input=req.n_input)
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
            res.error_type = "http_4xx" if resp.status < 500 else "http_5xx"
            res.error = http_error_text(resp.status, resp.reason, resp.body())
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
            if res.error_type is None and res.finish_reason is None:
                if not state["done"]:
                    res.error_type = "disconnect"
                    res.error = ("stream ended before [DONE] or a finish_reason" if resp.pieces
                                 else f"HTTP {resp.status} with an empty event stream")
                else:           # every server we know ends a whole answer with a finish_reason
                    res.error_type = "stream_error"
                    res.error = ("[DONE] without a finish_reason: the server cut the response "
                                 "short (llama-cpp-python's server does so when another request "
                                 "arrives, unless started with --interrupt_requests False)")
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
    kc = res.kind_counts
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        answer, reasoning, tool, n = _choice_parts(choice)
        if n is not None:
            n_ans, n_rea, n_tool = _split_count(n, (answer, reasoning, tool))
        else:
            tok = req.tokenize
            counts = [(max(1, len(tok(x))) if tok is not None else 1) if x else 0
                      for x in (answer, reasoning, tool)]
            n_ans, n_rea, n_tool = counts
            if n_ans or n_rea or n_tool:
                res.chunk_counts_exact = False
        n_tok_total += n_ans + n_rea + n_tool
        kc["answer"] += n_ans
        kc["reasoning"] += n_rea
        kc["tool"] += n_tool
        if n_ans and res.first_answer_s is None:
            res.first_answer_s = t
        for x in (reasoning, answer, tool):
            if x:
                texts.append(x)
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
    # output tokens by kind (module docstring): reasoning from usage's details when given
    kc = res.kind_counts
    details = usage.get("completion_tokens_details")
    n_rea = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if not isinstance(n_rea, int) or isinstance(n_rea, bool) or res.n_output_source != "usage":
        n_rea = kc["reasoning"]
    res.n_output_reasoning = min(n_rea, res.n_output)
    res.n_output_tool = min(kc["tool"], res.n_output - res.n_output_reasoning)
    res.n_output_answer = res.n_output - res.n_output_reasoning - res.n_output_tool
