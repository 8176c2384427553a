"""Streaming client for any OpenAI-compatible server (vLLM, SGLang, Dynamo, llama.cpp, TGI, ours).

Role in the data flow: `workloads/loadgen.py` calls `send_request(session, req, clock)` once per
request at its send time; this module turns one HTTP streaming response into a `RawResult` (send
time, and for every chunk that carries output tokens: its arrival time on the run clock and its
token count; usage; the reference engine's server-side timing; or an error). `workloads/records.py`
turns a `RawResult` into a `RequestRecord` (one row of requests.parquet) with the metric functions.

Measurement rules (docs/design.md, "Metric definitions"):
- timestamps come from `time.perf_counter_ns()` taken when the bytes came off the socket: the
  connection's protocol `data_received` is wrapped for the duration of the response and notes
  (time, payload bytes so far) before aiohttp parses anything; each SSE event gets the time of
  the socket read that delivered its last byte. This is independent of when the coroutine gets
  scheduled again, so a busy event loop does not inflate TTFT/ITL by its backlog. Where the
  wrapper cannot be installed, the time the coroutine's read returned is used instead (still
  before any JSON parsing);
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

import aiohttp

ERROR_TYPES = ("connect", "http_4xx", "http_5xx", "timeout", "disconnect", "stream_error",
               "client_error")


class RunClock:
    """The run's monotonic clock: t=0 at run start, seconds as float, ns resolution underneath."""

    def __init__(self, t0_ns: int | None = None):
        self.t0_ns = time.perf_counter_ns() if t0_ns is None else int(t0_ns)

    @staticmethod
    def now_ns() -> int:
        return time.perf_counter_ns()

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

    @property
    def ok(self) -> bool:
        return self.error_type is None


def _choice_text_and_tokens(choice: dict) -> tuple[str, int | None]:
    """(text delta, token count if the server says it) for one choice of one chunk."""
    text = choice.get("text")
    delta = choice.get("delta")
    if text is None and isinstance(delta, dict):
        parts = [delta.get(k) for k in ("content", "reasoning_content", "reasoning")]
        text = "".join(p for p in parts if isinstance(p, str))
    text = text if isinstance(text, str) else ""
    n: int | None = None
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        n = len(ids)
    else:
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if isinstance(lp.get("tokens"), list):          # completions
                n = len(lp["tokens"])
            elif isinstance(lp.get("content"), list):       # chat
                n = len(lp["content"])
    return text, n


class _StreamError(Exception):
    pass


def _error_message(obj: Any) -> str:
    if isinstance(obj, dict):
        msg = obj.get("message") or obj.get("detail") or json.dumps(obj)[:500]
        return str(msg)
    return str(obj)[:500]


async def send_request(session: aiohttp.ClientSession, req: PreparedRequest,
                       clock: RunClock) -> RawResult:
    """Send `req` with streaming and measure it. Never raises for request failures (they come back
    as a RawResult with error_type set); re-raises asyncio.CancelledError."""
    res = RawResult(request_id=str(req.request_id), n_input=req.n_input)
    texts: list[str] = []
    got_done = False
    started_response = False
    hook = None
    timeout = aiohttp.ClientTimeout(total=req.timeout_s) if req.timeout_s else None
    payload = json.dumps(req.payload())
    url = req.endpoint_url()
    headers = req.request_headers()
    try:
        send_ns = time.perf_counter_ns()
        res.send_s = clock.to_s(send_ns)
        kwargs = {"data": payload, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        async with session.post(url, **kwargs) as resp:
            started_response = True
            res.http_status = resp.status
            if resp.status >= 400:
                body = (await resp.content.read(4096)).decode("utf-8", "replace")
                msg = body
                try:
                    j = json.loads(body)
                    msg = _error_message(j.get("error", j) if isinstance(j, dict) else j)
                except ValueError:
                    pass
                res.error_type = "http_4xx" if resp.status < 500 else "http_5xx"
                res.error = f"HTTP {resp.status}: {msg.strip()[:500]}"
                res.end_s = clock.now()
                return res

            ctype = resp.headers.get("Content-Type", "")
            if "text/event-stream" not in ctype and "application/json" in ctype:
                # The server ignored stream=true: one body, all tokens at once.
                body = await resp.read()
                t = clock.to_s(time.perf_counter_ns())
                got_done = _handle_event(json.loads(body), t, req, res, texts) or True
            else:
                marks, hook = _install_marks(resp)
                mi = 0                      # first mark that may cover the next line
                off = 0                     # payload offset of buf[0]
                buf = b""
                async for data in resp.content.iter_any():
                    t_read = time.perf_counter_ns()
                    t = clock.to_s(t_read)
                    buf += data
                    if b"\n" not in data:
                        continue
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        off += len(raw) + 1
                        if marks is not None:
                            while mi < len(marks) and marks[mi][1] < off:
                                mi += 1
                            t = clock.to_s(marks[mi][0] if mi < len(marks) else t_read)
                        line = raw.strip()
                        if not line or line.startswith(b":"):
                            continue
                        if line.startswith(b"event:"):
                            if line[6:].strip() == b"error":
                                res.error_type = "stream_error"
                            continue
                        if not line.startswith(b"data:"):
                            continue
                        data_s = line[5:].strip()
                        if data_s == b"[DONE]":
                            got_done = True
                            continue
                        try:
                            obj = json.loads(data_s)
                        except ValueError as e:
                            raise _StreamError(f"unparseable SSE data: {data_s[:200]!r}") from e
                        _handle_event(obj, t, req, res, texts)
                _remove_marks(resp, hook)
                hook = None
                if buf.strip().startswith(b"data:"):
                    tail = buf.strip()[5:].strip()
                    if tail == b"[DONE]":
                        got_done = True
                    elif tail:
                        try:
                            _handle_event(json.loads(tail), clock.now(), req, res, texts)
                        except ValueError as e:
                            raise _StreamError(f"unparseable SSE data: {tail[:200]!r}") from e
        res.end_s = clock.now()
        if res.error_type is None and not got_done and res.finish_reason is None:
            res.error_type = "disconnect"
            res.error = "stream ended before [DONE] or a finish_reason"
    except _StreamError as e:
        res.error_type, res.error = "stream_error", str(e)
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError:
        res.error_type, res.error = "timeout", f"no complete response within {req.timeout_s} s"
    except aiohttp.ClientConnectorError as e:
        res.error_type, res.error = "connect", f"{type(e).__name__}: {e}"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
            aiohttp.ClientOSError, ConnectionError) as e:
        res.error_type = "disconnect" if started_response or isinstance(
            e, aiohttp.ServerDisconnectedError) else "connect"
        res.error = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a benchmark never dies on one request
        res.error_type, res.error = "client_error", f"{type(e).__name__}: {e}"
    _remove_marks(None, hook)
    if res.end_s is None:
        res.end_s = clock.now()
    if res.error_type is not None and res.error is None:
        res.error = "server sent an error event"
    _finish_counts(req, res, texts)
    return res


def _install_marks(resp) -> tuple[list | None, Any]:
    """Wrap the connection protocol's `data_received` to note (perf_counter_ns, payload bytes
    received so far) for every socket read of this response. Returns (marks, hook) or
    (None, None) when the connection cannot be instrumented."""
    conn = getattr(resp, "connection", None)
    proto = getattr(conn, "protocol", None) if conn is not None else None
    content = resp.content
    if proto is None or not hasattr(proto, "__dict__") or not hasattr(content, "total_bytes"):
        return None, None
    orig = type(proto).data_received.__get__(proto)
    marks: list[tuple[int, int]] = [(time.perf_counter_ns(), content.total_bytes)]
    perf = time.perf_counter_ns
    append = marks.append

    def hook(data: bytes) -> None:
        t = perf()
        orig(data)
        append((t, content.total_bytes))

    proto.data_received = hook
    return marks, (proto, hook)


def _remove_marks(resp, hook) -> None:
    if hook is None:
        return
    proto, fn = hook
    if proto.__dict__.get("data_received") is fn:
        del proto.__dict__["data_received"]


def _handle_event(obj: Any, t: float, req: PreparedRequest, res: RawResult,
                  texts: list[str]) -> bool:
    if not isinstance(obj, dict):
        raise _StreamError(f"SSE event is not a JSON object: {str(obj)[:200]}")
    if "error" in obj and obj["error"]:
        res.error_type = "stream_error"
        res.error = "stream error: " + _error_message(obj["error"])
        return False
    if res.error_type == "stream_error":          # data after `event: error`
        res.error = "stream error: " + _error_message(obj)
        return False
    usage = obj.get("usage")
    if isinstance(usage, dict):
        res.usage = usage
    ext = obj.get("infer_bench")
    if isinstance(ext, dict):
        res.server_timing = ext
    n_tok_total = 0
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if choice.get("index", 0) != 0:
            continue
        text, n = _choice_text_and_tokens(choice)
        if "message" in choice and isinstance(choice["message"], dict):   # non-streamed body
            text = choice["message"].get("content") or ""
        if n is None:
            if text:
                res.chunk_counts_exact = False
            if not text:
                n = 0
            elif req.tokenize is not None:
                n = max(1, len(req.tokenize(text)))
            else:
                n = 1
        n_tok_total += n
        if text:
            texts.append(text)
        if choice.get("finish_reason"):
            res.finish_reason = choice["finish_reason"]
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
