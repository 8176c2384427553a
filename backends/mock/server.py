"""A calibrated mock OpenAI-compatible server with known timing, lean enough for load tests.

Role in the data flow: tests of `backends/openai.py` and `workloads/loadgen.py` (and the CLI's
client self-test) point the client at it and compare what the client measured with what the mock
did. Behaviour for a streamed request received at t_r:
- chunk j (j = 0, 1, ...) leaves at t_r + ttft_s + j * tokens_per_chunk * token_delay_s and carries
  `tokens_per_chunk` tokens (the last one may carry fewer); the output has max_tokens tokens
  (or `output_tokens` if set); each token is the text " tok";
- with `include_token_ids` each choice also carries `token_ids` (as vLLM does);
- usage (prompt tokens = whitespace words of the prompt) on a final empty chunk when the request
  asks `stream_options.include_usage`; `server_timing` (a dict) rides on that chunk as `infer_bench`;
- every `fail_every`-th request (1-based count) gets HTTP `fail_status`; with `stream_error_after`
  set, every `stream_error_every`-th request streams that many chunks then an {"error": ...} event;
  `disconnect_after` chunks: the connection is dropped without [DONE];
- `ttft_sigma` > 0: ttft_s is multiplied per request by a seeded lognormal factor; with
  `serial_prefill` first tokens are produced one request at a time (a one-server queue), so
  TTFT includes the wait behind earlier requests and neighbours' latencies are correlated, as on
  a loaded engine (used by the verdict's A/A and A/B tests);
- reasoning / tool-call streams (chat only): `reasoning_tokens` R > 0 streams R tokens of
  reasoning first (" think" each, in `delta.<reasoning_field>`: "reasoning_content" as vLLM's and
  SGLang's reasoning parsers, or "reasoning"), then `tool_call_tokens` T > 0 a tool call
  (`delta.tool_calls`: the first chunk carries the call's id, type and function name, every
  chunk T's argument pieces " arg"), then the answer; chunks never mix kinds and follow one
  schedule (chunk j leaves at t_r + ttft_s + (tokens before it) * token_delay_s), so the first
  answer token leaves (R + T) * token_delay_s after the first token. usage.completion_tokens
  counts all of them, with `completion_tokens_details.reasoning_tokens` = R when R > 0 (unless
  `usage_reasoning_details` is off); the log's `chunk_kinds` says each chunk's kind;
- `usage_delta`: usage.completion_tokens is reported that much off the truth (a server that lies
  about its token counts, for the client's cross-check);
- the schedule is absolute (no drift); all streams share one timer (`mock_http.Ticker`: chunks
  due within 0.2 ms go out in one batch, each chunk's bytes prebuilt when the request arrived),
  so one core emits >60k events/s. `received_s` is the time of the socket read that delivered
  the request's first byte, the kernel's receive time on Linux (`received_ts`: "kernel", else
  "user"; see backends/rawsock.py), so a stall of the mock before it parses a request shifts
  neither the log nor the schedule; for every chunk the time it really left (after the write was
  handed to the transport, `time.perf_counter()`) is logged: `GET /mock/log` returns
  [{"request_id" (the X-Request-Id header), "received_s", "received_ts", "chunk_s": [...],
  "chunk_target_s": [...], "chunk_tokens": [...], "chunk_kinds": [...], "status"}] (perf_counter seconds: CLOCK_MONOTONIC, comparable with the
  client's clock in any process on the same host); `chunk_s - chunk_target_s` is the mock's own
  lateness.
  `POST /mock/reset` clears the log. The command-line server runs with automatic garbage
  collection off (a collector pause would delay chunks; its hot path makes no reference
  cycles) and collects at `/mock/reset` and every 20,000 requests.
Also `GET /health`, `GET /v1/models`, and non-streamed responses (one JSON body after the whole
output's time).

Command line (also `infer-bench mock-server`): `python -m infer_bench.backends.mock.server
--port 8100 --ttft-ms 50 --token-delay-ms 10 --tokens-per-chunk 1`; `main(argv)` prints the URL
on one line ("mock server listening on http://127.0.0.1:8100") and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from ..client.aioloop import raise_open_files_limit
from ..client.aioloop import run as _run_loop
from .http import Request, ServerConn, Ticker, frame, start_server

_perf = time.perf_counter


@dataclass
class MockConfig:
    ttft_s: float = 0.05
    token_delay_s: float = 0.01
    tokens_per_chunk: int = 1
    output_tokens: int | None = None       # None: max_tokens of the request (default 16)
    include_token_ids: bool = False
    fail_every: int = 0
    fail_status: int = 500
    stream_error_every: int = 0
    stream_error_after: int = 1
    disconnect_every: int = 0
    disconnect_after: int = 1
    server_timing: dict | None = None
    model: str = "mock-model"
    usage_delta: int = 0
    ttft_sigma: float = 0.0                # > 0: each request's TTFT is ttft_s * lognormal(0, sigma)
    serial_prefill: bool = False           # first tokens one at a time: TTFT includes queueing
    seed: int = 0                          # of the TTFT jitter
    reasoning_tokens: int = 0              # chat: reasoning tokens streamed before the answer
    reasoning_field: str = "reasoning_content"   # or "reasoning"
    tool_call_tokens: int = 0              # chat: a tool call's argument tokens, after reasoning
    usage_reasoning_details: bool = True   # usage.completion_tokens_details.reasoning_tokens


@dataclass
class MockServer:
    server: Any                             # rawsock.RawServer or asyncio.Server
    host: str
    port: int
    config: MockConfig
    log: list[dict] = field(default_factory=list)
    conns: set = field(default_factory=set)
    ticker: Ticker | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self.server.close()
        if self.ticker is not None:
            self.ticker.cancel()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        await self.server.wait_closed()


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class _Stream:
    """One streamed response in progress: its prebuilt frames and where it is."""

    __slots__ = ("conn", "entry", "frames", "targets", "sizes", "j", "tail", "error_at",
                 "drop_at", "kinds")

    def __init__(self, conn: ServerConn, entry: dict, frames: list[bytes], targets: list[float],
                 sizes: list[int], tail: bytes, error_at: int | None, drop_at: int | None):
        self.conn, self.entry, self.frames, self.targets = conn, entry, frames, targets
        self.sizes, self.tail, self.error_at, self.drop_at = sizes, tail, error_at, drop_at
        self.j = 0


class _MockApp:
    """Routes and the timing behaviour of the module docstring."""

    def __init__(self, cfg: MockConfig, log: list[dict], ticker: Ticker):
        self.cfg = cfg
        self.log = log
        self.ticker = ticker
        self.count = 0
        self.rng = random.Random(cfg.seed)
        self.busy_until = 0.0               # serial_prefill: when the "prefill" in progress ends

    def first_token_delay(self, t_recv: float) -> float:
        """Seconds from receipt to the first chunk: ttft_s, optionally lognormal-jittered, and
        with `serial_prefill` behind the requests still in their "prefill" (a one-server queue,
        so latencies of requests close in time are correlated, as on a real engine)."""
        cfg = self.cfg
        service = cfg.ttft_s * (math.exp(self.rng.gauss(0.0, cfg.ttft_sigma))
                                if cfg.ttft_sigma > 0 else 1.0)
        if not cfg.serial_prefill:
            return service
        start = max(t_recv, self.busy_until)
        self.busy_until = start + service
        return self.busy_until - t_recv

    def __call__(self, conn: ServerConn, req: Request) -> None:
        path = req.path
        if path in ("/v1/completions", "/v1/chat/completions"):
            if req.method != "POST":
                conn.respond(405, _json({"error": {"message": "use POST"}}))
            else:
                self.generate(conn, req, chat=path.endswith("/chat/completions"))
        elif path == "/health" and req.method == "GET":
            conn.respond(200, _json({"status": "ok"}))
        elif path == "/v1/models" and req.method == "GET":
            conn.respond(200, _json({"object": "list",
                                     "data": [{"id": self.cfg.model, "object": "model"}]}))
        elif path == "/mock/log" and req.method == "GET":
            conn.respond(200, _json(self.log))
        elif path == "/mock/reset" and req.method == "POST":
            self.log.clear()
            if not gc.isenabled():
                gc.collect()
            conn.respond(200, _json({"status": "ok"}))
        else:
            conn.respond(404, _json({"error": {"message": f"no route {req.method} {path}",
                                               "type": "not_found"}}))

    def generate(self, conn: ServerConn, req: Request, chat: bool) -> None:
        cfg = self.cfg
        t_recv = req.t_recv
        self.count += 1
        n = self.count
        if n % 20000 == 0 and not gc.isenabled():
            gc.collect()
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            conn.respond(400, _json({"error": {"message": "invalid JSON",
                                               "type": "invalid_request"}}))
            return
        rid = req.headers.get("x-request-id", f"mock-{n}")
        entry: dict[str, Any] = {"request_id": rid, "received_s": t_recv,
                                 "received_ts": "kernel" if req.recv_kernel else "user",
                                 "chunk_s": [], "chunk_target_s": [], "chunk_tokens": [],
                                 "chunk_kinds": [], "status": 200}
        self.log.append(entry)
        if cfg.fail_every and n % cfg.fail_every == 0:
            entry["status"] = cfg.fail_status
            conn.respond(cfg.fail_status, _json({"error": {
                "message": f"mock failure for request {n}", "type": "server_error"}}))
            return
        if chat:
            msgs = body.get("messages") or []
            prompt = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
        else:
            prompt = body.get("prompt", "")
            prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        n_prompt = len(prompt.split())
        n_out = cfg.output_tokens if cfg.output_tokens is not None else int(
            body.get("max_tokens") or 16)
        k = max(1, int(cfg.tokens_per_chunk))
        n_rea = max(0, int(cfg.reasoning_tokens)) if chat else 0
        n_tool = max(0, int(cfg.tool_call_tokens)) if chat else 0
        kinds: list[str] = []
        sizes: list[int] = []
        for kind, count in (("reasoning", n_rea), ("tool", n_tool), ("answer", n_out)):
            for i in range(0, count, k):
                kinds.append(kind)
                sizes.append(min(k, count - i))
        n_all = n_rea + n_tool + n_out
        n_claim = max(0, n_all + int(cfg.usage_delta))
        usage: dict[str, Any] = {"prompt_tokens": n_prompt, "completion_tokens": n_claim,
                                 "total_tokens": n_prompt + n_claim}
        if n_rea and cfg.usage_reasoning_details:
            usage["completion_tokens_details"] = {"reasoning_tokens": n_rea}
        created = int(time.time())
        obj_kind = "chat.completion.chunk" if chat else "text_completion"

        if not body.get("stream"):
            total = cfg.ttft_s + (n_all - sizes[-1] if sizes else 0) * cfg.token_delay_s
            text = " tok" * n_out
            ch: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                ch["message"] = {"role": "assistant", "content": text}
                if n_rea:
                    ch["message"][cfg.reasoning_field] = " think" * n_rea
                if n_tool:
                    ch["message"]["tool_calls"] = [{"id": "call_0", "type": "function", "function": {
                        "name": "mock_tool", "arguments": " arg" * n_tool}}]
            else:
                ch["text"] = text
            out = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                   "created": created, "model": cfg.model, "choices": [ch], "usage": usage}
            if cfg.server_timing is not None:
                out["infer_bench"] = cfg.server_timing
            payload = _json(out)

            def finish(_arg) -> None:
                conn.respond(200, payload)
                entry["chunk_target_s"].append(t_recv + total)
                entry["chunk_s"].append(_perf())
                entry["chunk_tokens"].append(n_all)
                entry["chunk_kinds"].append("all")

            self.ticker.at(t_recv + total, finish, None)
            return

        def event(obj: Any) -> bytes:
            return frame(b"data: " + (obj if isinstance(obj, bytes) else _json(obj)) + b"\n\n")

        def choice(size: int, finish: str | None, kind: str, first_of_kind: bool) -> dict:
            c: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if kind == "reasoning":
                c["delta"] = {cfg.reasoning_field: " think" * size}
            elif kind == "tool":
                call: dict[str, Any] = {"index": 0, "function": {"arguments": " arg" * size}}
                if first_of_kind:
                    call.update(id="call_0", type="function")
                    call["function"]["name"] = "mock_tool"
                c["delta"] = {"tool_calls": [call]}
            elif chat:
                text = " tok" * size
                c["delta"] = {"content": text} if text else {}
            else:
                c["text"] = " tok" * size
            if cfg.include_token_ids:
                c["token_ids"] = [7] * size
            return c

        cache: dict[tuple, bytes] = {}
        frames = []
        for j, size in enumerate(sizes):
            last = j == len(sizes) - 1
            first_of_kind = j == 0 or kinds[j - 1] != kinds[j]
            key = (size, last, kinds[j], first_of_kind)
            if key not in cache:
                cache[key] = event({"id": rid, "object": obj_kind, "created": created,
                                    "model": cfg.model,
                                    "choices": [choice(size, "length" if last else None,
                                                       kinds[j], first_of_kind)]})
            frames.append(cache[key])
        tail = b""
        opts = body.get("stream_options") or {}
        if opts.get("include_usage") or cfg.server_timing is not None:
            final: dict[str, Any] = {"id": rid, "object": obj_kind, "created": created,
                                     "model": cfg.model, "choices": []}
            if opts.get("include_usage"):
                final["usage"] = usage
            if cfg.server_timing is not None:
                final["infer_bench"] = cfg.server_timing
            tail = event(final)
        tail += event(b"[DONE]")
        first = self.first_token_delay(t_recv)
        targets, before = [], 0
        for size in sizes:                  # chunk j leaves after the tokens before it
            targets.append(t_recv + first + before * cfg.token_delay_s)
            before += size
        error_at = (cfg.stream_error_after if cfg.stream_error_every
                    and n % cfg.stream_error_every == 0 else None)
        drop_at = (cfg.disconnect_after if cfg.disconnect_every
                   and n % cfg.disconnect_every == 0 else None)
        st = _Stream(conn, entry, frames, targets, sizes, tail, error_at, drop_at)
        st.kinds = kinds
        conn.start_stream(200, {"Content-Type": "text/event-stream",
                                "Cache-Control": "no-cache"})
        if not self._interrupt(st):
            self.ticker.at(targets[0], self._tick, st)

    def _interrupt(self, st: _Stream) -> bool:
        """Before chunk st.j: a scheduled stream error or disconnect happens now (True)."""
        if st.error_at is not None and st.j == st.error_at:
            st.entry["status"] = "stream_error"
            st.conn.end_stream(frame(b"data: " + _json({"error": {
                "message": "mock stream error", "type": "server_error", "code": 500}}) + b"\n\n"))
            return True
        if st.drop_at is not None and st.j == st.drop_at:
            st.entry["status"] = "disconnect"
            st.conn.close()
            return True
        return False

    def _tick(self, st: _Stream) -> None:
        conn = st.conn
        if conn.closed:
            return
        j = st.j
        last = j == len(st.frames) - 1
        if last:
            conn.end_stream(st.frames[j] + st.tail)
        else:
            conn.write(st.frames[j])
        e = st.entry
        e["chunk_s"].append(_perf())
        e["chunk_target_s"].append(st.targets[j])
        e["chunk_tokens"].append(st.sizes[j])
        e["chunk_kinds"].append(st.kinds[j])
        if last:
            return
        st.j = j + 1
        if not self._interrupt(st):
            self.ticker.at(st.targets[j + 1], self._tick, st)


async def start_mock_server(host: str = "127.0.0.1", port: int = 0, *,
                            kernel_ts: bool | None = None, **cfg: Any) -> MockServer:
    """Start the mock on host:port (0: a free port); `cfg` are MockConfig fields; `kernel_ts`:
    time requests with kernel receive timestamps (None: `INFER_BENCH_KERNEL_TS`, default on).
    Call `await handle.stop()` to stop it."""
    names = {f.name for f in fields(MockConfig)}
    unknown = set(cfg) - names
    if unknown:
        raise TypeError(f"unknown mock config {sorted(unknown)}; known: {sorted(names)}")
    config = MockConfig(**cfg)
    log: list[dict] = []
    ticker = Ticker()
    server, conns = await start_server(_MockApp(config, log, ticker), host, port, kernel_ts)
    actual = server.sockets[0].getsockname()[1]
    return MockServer(server=server, host=host, port=actual, config=config, log=log,
                      conns=conns, ticker=ticker)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer-bench mock-server",
        description="Calibrated mock OpenAI-compatible server with known timing.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100, help="0: a free port")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="time to first chunk")
    p.add_argument("--token-delay-ms", type=float, default=10.0, help="delay per token")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--output-tokens", type=int, default=None,
                   help="tokens per response (default: the request's max_tokens)")
    p.add_argument("--include-token-ids", action="store_true",
                   help="send token_ids with each chunk (as vLLM does)")
    p.add_argument("--usage-delta", type=int, default=0,
                   help="report usage.completion_tokens this far off the truth")
    p.add_argument("--fail-every", type=int, default=0, help="every N-th request gets HTTP 500")
    p.add_argument("--ttft-sigma", type=float, default=0.0,
                   help="lognormal jitter of each request's TTFT (sigma of the log)")
    p.add_argument("--serial-prefill", action="store_true",
                   help="first tokens one request at a time: TTFT includes queueing")
    p.add_argument("--seed", type=int, default=0, help="seed of the TTFT jitter")
    p.add_argument("--reasoning-tokens", type=int, default=0,
                   help="chat: stream this many reasoning tokens before the answer")
    p.add_argument("--reasoning-field", choices=("reasoning_content", "reasoning"),
                   default="reasoning_content", help="the delta field reasoning comes in")
    p.add_argument("--tool-call-tokens", type=int, default=0,
                   help="chat: stream a tool call of this many tokens after the reasoning")
    return p


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(ttft_s=args.ttft_ms / 1e3, token_delay_s=args.token_delay_ms / 1e3,
                tokens_per_chunk=args.tokens_per_chunk, output_tokens=args.output_tokens,
                include_token_ids=args.include_token_ids, usage_delta=args.usage_delta,
                fail_every=args.fail_every, ttft_sigma=args.ttft_sigma,
                serial_prefill=args.serial_prefill, seed=args.seed,
                reasoning_tokens=args.reasoning_tokens, reasoning_field=args.reasoning_field,
                tool_call_tokens=args.tool_call_tokens)


async def serve(host: str = "127.0.0.1", port: int = 8100, *, ready=None,
                stop: asyncio.Event | None = None, **cfg: Any) -> None:
    """Serve until `stop` is set (forever without one); `ready(url)` is called once listening."""
    srv = await start_mock_server(host, port, **cfg)
    try:
        if ready is not None:
            ready(srv.url)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await srv.stop()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve the mock until interrupted."""
    args = _parser().parse_args(argv)
    try:
        gc.freeze()
        gc.disable()            # collected at /mock/reset and every 20k requests (see docstring)
        raise_open_files_limit()
        _run_loop(serve(args.host, args.port,
                          ready=lambda url: print(f"mock server listening on {url}", flush=True),
                          **config_from_args(args)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
