"""A calibrated mock OpenAI-compatible server (aiohttp) with known timing.

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
- `usage_delta`: usage.completion_tokens is reported that much off the truth (a server that lies
  about its token counts, for the client's cross-check);
- the schedule is absolute (no drift), and for every chunk the time it really left (after the
  write was handed to the transport, `time.perf_counter()`) is logged: `GET /mock/log` returns
  [{"request_id", "received_s", "chunk_s": [...], "chunk_target_s": [...], "chunk_tokens":
  [...], "status"}] (perf_counter seconds: CLOCK_MONOTONIC, comparable with the client's clock
  in any process on the same host); `chunk_s - chunk_target_s` is the mock's own lateness.
  `POST /mock/reset` clears the log.
Also `GET /health`, `GET /v1/models`, and non-streamed responses (one JSON body after the whole
output's time).

Command line (also `infer-bench mock-server`): `python -m infer_bench.backends.mock_server
--port 8100 --ttft-ms 50 --token-delay-ms 10 --tokens-per-chunk 1`; `main(argv)` prints the URL
on one line ("mock server listening on http://127.0.0.1:8100") and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web


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


@dataclass
class MockServer:
    runner: web.AppRunner
    host: str
    port: int
    config: MockConfig
    log: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


def _app(cfg: MockConfig, log: list[dict]) -> web.Application:
    state = {"count": 0}

    async def health(_request):
        return web.json_response({"status": "ok"})

    async def models(_request):
        return web.json_response({"object": "list", "data": [{"id": cfg.model, "object": "model"}]})

    async def get_log(_request):
        return web.json_response(log)

    async def reset_log(_request):
        log.clear()
        return web.json_response({"status": "ok"})

    async def generate(request: web.Request) -> web.StreamResponse:
        t_recv = time.perf_counter()
        state["count"] += 1
        n = state["count"]
        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request"}},
                                     status=400)
        rid = request.headers.get("X-Request-Id", f"mock-{n}")
        entry: dict[str, Any] = {"request_id": rid, "received_s": t_recv, "chunk_s": [],
                                 "chunk_target_s": [], "chunk_tokens": [], "status": 200}
        log.append(entry)
        if cfg.fail_every and n % cfg.fail_every == 0:
            entry["status"] = cfg.fail_status
            return web.json_response({"error": {"message": f"mock failure for request {n}",
                                                "type": "server_error"}}, status=cfg.fail_status)
        if chat:
            msgs = body.get("messages") or []
            prompt = " ".join(str(m.get("content", "")) for m in msgs)
        else:
            prompt = body.get("prompt", "")
            prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        n_prompt = len(prompt.split())
        n_out = cfg.output_tokens if cfg.output_tokens is not None else int(
            body.get("max_tokens") or 16)
        k = max(1, int(cfg.tokens_per_chunk))
        sizes = [min(k, n_out - i) for i in range(0, n_out, k)]
        n_claim = max(0, n_out + int(cfg.usage_delta))
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_claim,
                 "total_tokens": n_prompt + n_claim}
        created = int(time.time())
        obj_kind = "chat.completion.chunk" if chat else "text_completion"

        def choice(text: str, ntok: int, finish: str | None) -> dict:
            c: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                c["delta"] = {"content": text} if text else {}
            else:
                c["text"] = text
            if cfg.include_token_ids:
                c["token_ids"] = [7] * ntok
            return c

        if not body.get("stream"):
            total = cfg.ttft_s + max(0, len(sizes) - 1) * k * cfg.token_delay_s
            await asyncio.sleep(total)
            text = " tok" * n_out
            ch: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                ch["message"] = {"role": "assistant", "content": text}
            else:
                ch["text"] = text
            out = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                   "created": created, "model": cfg.model, "choices": [ch], "usage": usage}
            if cfg.server_timing is not None:
                out["infer_bench"] = cfg.server_timing
            entry["chunk_target_s"].append(t_recv + total)
            entry["chunk_s"].append(time.perf_counter())
            entry["chunk_tokens"].append(n_out)
            return web.json_response(out)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())

        stream_error = cfg.stream_error_every and n % cfg.stream_error_every == 0
        disconnect = cfg.disconnect_every and n % cfg.disconnect_every == 0
        for j, size in enumerate(sizes):
            if stream_error and j == cfg.stream_error_after:
                await send({"error": {"message": "mock stream error", "type": "server_error",
                                      "code": 500}})
                entry["status"] = "stream_error"
                await resp.write_eof()
                return resp
            if disconnect and j == cfg.disconnect_after:
                entry["status"] = "disconnect"
                if request.transport is not None:
                    request.transport.close()
                return resp
            target = t_recv + cfg.ttft_s + j * k * cfg.token_delay_s
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            last = j == len(sizes) - 1
            await send({"id": rid, "object": obj_kind, "created": created, "model": cfg.model,
                        "choices": [choice(" tok" * size, size, "length" if last else None)]})
            entry["chunk_s"].append(time.perf_counter())
            entry["chunk_target_s"].append(target)
            entry["chunk_tokens"].append(size)
        opts = body.get("stream_options") or {}
        if opts.get("include_usage") or cfg.server_timing is not None:
            final: dict[str, Any] = {"id": rid, "object": obj_kind, "created": created,
                                     "model": cfg.model, "choices": []}
            if opts.get("include_usage"):
                final["usage"] = usage
            if cfg.server_timing is not None:
                final["infer_bench"] = cfg.server_timing
            await send(final)
        await send("[DONE]")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/mock/log", get_log)
    app.router.add_post("/mock/reset", reset_log)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    return app


async def start_mock_server(host: str = "127.0.0.1", port: int = 0, **cfg: Any) -> MockServer:
    """Start the mock on host:port (0: a free port); `cfg` are MockConfig fields. Call
    `await handle.stop()` to stop it."""
    names = {f.name for f in fields(MockConfig)}
    unknown = set(cfg) - names
    if unknown:
        raise TypeError(f"unknown mock config {sorted(unknown)}; known: {sorted(names)}")
    config = MockConfig(**cfg)
    log: list[dict] = []
    runner = web.AppRunner(_app(config, log), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    actual = port
    if not actual:
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001
        actual = sockets[0].getsockname()[1]
    return MockServer(runner=runner, host=host, port=actual, config=config, log=log)


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
    return p


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(ttft_s=args.ttft_ms / 1e3, token_delay_s=args.token_delay_ms / 1e3,
                tokens_per_chunk=args.tokens_per_chunk, output_tokens=args.output_tokens,
                include_token_ids=args.include_token_ids, usage_delta=args.usage_delta,
                fail_every=args.fail_every)


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
        import gc
        gc.freeze()
        asyncio.run(serve(args.host, args.port,
                          ready=lambda url: print(f"mock server listening on {url}", flush=True),
                          **config_from_args(args)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
