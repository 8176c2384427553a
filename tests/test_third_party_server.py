"""The load generator's client against servers not written here (issue 16, part 0).

1. A real one: llama-cpp-python's server (`python -m llama_cpp.server`) on the default GGUF,
   when the python named by LLAMA_PYTHON can import it (it is never a dependency of this
   project: it compiles llama.cpp; bench/llamacpp_target.py's docstring says how to install it);
   skipped, with the reason, otherwise. /v1/completions and /v1/chat/completions, streamed, with
   and without `stream_options.include_usage`: every request succeeds, with token counts and
   TTFT; a non-UUID X-Request-Id is refused with a 400 that the record describes.
2. Always (no build): `LlamaLike`, a small aiohttp server that behaves like that server on the
   points that broke or matter to the client: it refuses an X-Request-Id that is not a UUID with
   400 and an empty body (starlette-context's RequestIdPlugin, as llama-cpp-python 0.3.36 does;
   the client used to send `req-0-00000`), answers a prompt over its context window with 400
   and an OpenAI-style JSON error, never sends a usage chunk (it ignores stream_options), and
   streams the chunk shapes recorded from the real server (below, `RECORDED_*`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from infer_bench.backends.client.http import HttpPool
from infer_bench.backends.client.openai import (ERROR_BODY_CHARS, PreparedRequest, RunClock,
                                                send_request)
from infer_bench.workloads.loadgen import LoadGenerator
from infer_bench.workloads.metrics import summarize
from infer_bench.workloads.runner import ErrorRateStop

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
GGUF = Path.home() / ".cache" / "infer-bench" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Recorded from llama-cpp-python 0.3.36's server (`python -m llama_cpp.server --model
# SmolLM2-135M-Instruct.Q4_1.gguf`, as bench/llamacpp_target.py starts it) with curl -N on
# 2026-12-07 (ids and `created` replaced, the model id is the GGUF path it was started with):
# - a streamed response is `text/event-stream; charset=utf-8`, chunked, one `data: {json}` line
#   per event and a blank line after it ("\n" line ends), then `data: [DONE]`;
# - completions: one chunk per token (below), then a chunk with text "" and the finish_reason;
# - chat: a role-only first chunk (below), one `delta.content` chunk per token, then a chunk
#   with an empty delta and the finish_reason;
# - no usage chunk, with or without stream_options.include_usage (and ignore_eos is ignored);
# - an X-Request-Id that is not a UUID: `400 Bad Request`, Content-Length: 0 (an empty body);
# - a prompt over the context window: non-streamed, 400 with the JSON error below; streamed,
#   200 and an empty event stream (the error is raised after the headers went out);
# - GET /metrics: 404 {"detail":"Not Found"} (it exports no Prometheus metrics);
# - one request generates at a time, and by default (interrupt_requests) a request that arrives
#   while another streams makes the running one end at once with `data: [DONE]` and no
#   finish_reason: a benchmark must start it with `--interrupt_requests False`.
MODEL_ID = "/root/.cache/infer-bench/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
RECORDED_COMPLETION_CHUNK = {
    "id": "cmpl-fbe6872b-17ed-45e4-b016-cd9a63d98eba", "object": "text_completion",
    "created": 1796613310, "model": MODEL_ID,
    "choices": [{"text": " the", "index": 0, "logprobs": None, "finish_reason": None}]}
RECORDED_CHAT_ROLE_CHUNK = {
    "id": "chatcmpl-b2017019-05fa-4e64-84ca-c62f7c89c5ee", "model": MODEL_ID,
    "created": 1796613311, "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                 "finish_reason": None}]}
RECORDED_400_NON_UUID = b""
RECORDED_CONTEXT_ERROR = {"error": {
    "message": "This model's maximum context length is 2048 tokens. However, you requested "
               "2146 tokens (2130 in the messages, 16 in the completion). Please reduce the "
               "length of the messages or completion.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


# --------------------------------------------------------------------------- the look-alike

class LlamaLike:
    """aiohttp server with the behaviour of the module docstring; `context` words of prompt at
    most; `delay_s` between tokens; `log` keeps each request's X-Request-Id and status."""

    def __init__(self, context: int = 64, delay_s: float = 0.003, message_pad: int = 0,
                 interrupt_requests: bool = False):
        self.context, self.delay_s, self.message_pad = context, delay_s, message_pad
        self.interrupt_requests = interrupt_requests
        self.log: list[tuple[str | None, int]] = []
        self.lock = asyncio.Lock()               # one request generates at a time
        self.waiting = 0

    async def start(self) -> "LlamaLike":
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "owned_by": "me", "permissions": []}]})

    def _refuse(self, request) -> web.Response | None:
        rid = request.headers.get("X-Request-Id")
        if rid is not None:
            try:
                uuid.UUID(rid, version=4)
            except ValueError:
                self.log.append((rid, 400))
                return web.Response(status=400, body=RECORDED_400_NON_UUID)
        return None

    async def _stream(self, request, chunks: list[dict]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)              # headers first, then wait for the model
        self.waiting += 1
        async with self.lock:
            self.waiting -= 1
            for i, c in enumerate(chunks):
                if i:
                    await asyncio.sleep(self.delay_s)
                await resp.write(b"data: " + json.dumps(c).encode() + b"\n\n")
                if self.interrupt_requests and self.waiting:
                    break                        # another request came: [DONE] now
            if chunks:
                await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _too_long(self, request, body: dict, words: int) -> web.StreamResponse | None:
        """Over the context window: an empty event stream when streamed, else the JSON 400."""
        if words <= self.context:
            return None
        self.log.append((request.headers.get("X-Request-Id"), 400))
        if body.get("stream"):
            return await self._stream(request, [])
        err = json.loads(json.dumps(RECORDED_CONTEXT_ERROR))
        err["error"]["message"] += " " + "x" * self.message_pad
        return web.json_response(err, status=400)

    async def completions(self, request):
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        too_long = await self._too_long(request, body, len(str(body.get("prompt", "")).split()))
        if too_long is not None:
            return too_long
        self.log.append((request.headers.get("X-Request-Id"), 200))
        tok = RECORDED_COMPLETION_CHUNK
        last = json.loads(json.dumps(tok))
        last["choices"][0].update(text="", finish_reason="length")
        return await self._stream(request, [tok] * n + [last])

    async def chat(self, request):
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        too_long = await self._too_long(request, body, words)
        if too_long is not None:
            return too_long
        self.log.append((request.headers.get("X-Request-Id"), 200))
        role = RECORDED_CHAT_ROLE_CHUNK
        tok = json.loads(json.dumps(role))
        tok["choices"][0]["delta"] = {"content": " tok"}
        last = json.loads(json.dumps(role))
        last["choices"][0].update(delta={}, finish_reason="length")
        return await self._stream(request, [role] + [tok] * n + [last])


@pytest.fixture
async def llama_like():
    servers = []

    async def start(**kw) -> LlamaLike:
        s = await LlamaLike(**kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.stop()


def requests_for(endpoint: str, n: int, usage: bool, max_tokens: int = 8,
                 prompt: str = "Tell me a short story about a cat") -> list[PreparedRequest]:
    extra = {} if usage else {"stream_options": {"include_usage": False}}
    return [PreparedRequest(f"req-0-{i:05d}", prompt, max_tokens, endpoint=endpoint,
                            extra_body=dict(extra)) for i in range(n)]


def check_records(records, endpoint: str, usage_sent_by_server: bool) -> None:
    """Every request succeeded, with token counts and TTFT, and sent a UUID request id."""
    assert records and all(r.ok for r in records), [r.error for r in records if not r.ok]
    for r in records:
        assert r.request_id.startswith("req-0-")                  # the workload's own id
        assert str(uuid.UUID(r.wire_request_id)) == r.wire_request_id
        assert r.n_output > 0 and sum(r.chunk_tokens) > 0 and r.ttft_s and r.ttft_s > 0
        assert r.e2e_s >= r.ttft_s and r.finish_reason in ("length", "stop")
        assert r.n_output_source == ("usage" if usage_sent_by_server else "chunks")
        assert r.n_output_answer == r.n_output and r.ttfat_s == r.ttft_s
    s = summarize(records)
    assert s["n_failed"] == 0 and s["ttft_p50_s"] > 0 and s["n_output_tokens"] > 0


# --------------------------------------------------------------------------- look-alike tests

@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("usage", [True, False], ids=["include_usage", "no_usage"])
async def test_llama_like_streams(llama_like, endpoint, usage):
    srv = await llama_like()
    res = await LoadGenerator(srv.url, endpoint, requests_for(endpoint, 4, usage),
                              [0.0, 0.01, 0.02, 0.03], model=MODEL_ID).run()
    check_records(res.records, endpoint, usage_sent_by_server=False)
    assert all(r.n_output == 8 and r.chunk_tokens == [1] * 8 for r in res.records)
    assert [status for _, status in srv.log] == [200] * 4


async def test_interrupted_requests_are_failures(llama_like):
    """llama-cpp-python's default: a new request cuts the running one short ([DONE], no
    finish_reason). Those are failures with a line that says why, not short successes."""
    srv = await llama_like(interrupt_requests=True, delay_s=0.01)
    res = await LoadGenerator(srv.url, "completions", requests_for("completions", 2, True),
                              [0.0, 0.03], model=MODEL_ID).run()
    first, second = sorted(res.records, key=lambda r: r.request_id)
    assert first.error_type == "stream_error" and "interrupt_requests False" in first.error
    assert 0 < first.n_output < 8 and first.finish_reason is None
    assert second.ok and second.n_output == 8


async def test_non_uuid_request_id_is_refused_and_described(llama_like):
    """What broke: `X-Request-Id: req-0-00000` got HTTP 400 with an empty body and an empty
    error text. The same request with the client's own (UUID) id succeeds."""
    srv = await llama_like()
    async with HttpPool() as pool:
        bad = await send_request(pool, PreparedRequest(
            "req-0-00000", "hi", 4, url=srv.url, headers={"X-Request-Id": "req-0-00000"}),
            RunClock())
        good = await send_request(pool, PreparedRequest("req-0-00000", "hi", 4, url=srv.url),
                                  RunClock())
    assert bad.error_type == "http_4xx" and bad.http_status == 400
    assert bad.error == "HTTP 400 Bad Request (empty body)"
    assert bad.wire_request_id == "req-0-00000"
    assert good.ok and good.n_output == 4 and good.wire_request_id != "req-0-00000"
    assert srv.log == [("req-0-00000", 400), (good.wire_request_id, 200)]


@pytest.mark.parametrize("kernel_ts", [True, False], ids=["rawsock", "asyncio"])
async def test_json_400_body_is_kept_in_the_record(llama_like, kernel_ts):
    """An over-long prompt: HTTP 400 with an OpenAI-style JSON error: the record keeps the
    server's message (at most ERROR_BODY_CHARS characters), on both read paths; the error-rate
    guard's line names it."""
    srv = await llama_like(context=4)
    long_srv = await llama_like(context=4, message_pad=5000)
    prompt = "one two three four five six"
    once = {"stream": False}                  # streamed, that server sends an empty stream
    async with HttpPool(kernel_ts=kernel_ts) as pool:
        raw = await send_request(pool, PreparedRequest("r", prompt, 16, url=srv.url,
                                                       extra_body=once), RunClock())
        big = await send_request(pool, PreparedRequest("r", prompt, 16, url=long_srv.url,
                                                       extra_body=once), RunClock())
        empty = await send_request(pool, PreparedRequest("r", prompt, 16, url=srv.url),
                                   RunClock())
    want = RECORDED_CONTEXT_ERROR["error"]["message"]
    assert raw.error_type == "http_4xx" and raw.error == f"HTTP 400: {want}"
    assert big.error.startswith(f"HTTP 400: {want} xxx") and big.error.endswith("...")
    assert len(big.error) == len("HTTP 400: ") + ERROR_BODY_CHARS
    assert empty.error_type == "disconnect" and empty.http_status == 200
    assert "empty event stream" in empty.error
    stop = ErrorRateStop(0.5, window=4, min_seen=2)
    stop.observe(False)
    stop.observe(True, raw.error)
    assert stop.observe(True, big.error)
    line = stop.describe()
    assert line.startswith("2 of the last 3 requests failed; last error: HTTP 400: This model")
    assert len(line) < 600


async def test_a_run_against_the_look_alike_keeps_the_error_text(llama_like):
    """Through the load generator: every request refused with a JSON 400 -> every record says
    why (the error-rate guard reads these)."""
    srv = await llama_like(context=2)
    reqs = requests_for("chat", 3, True)
    for r in reqs:
        r.extra_body["stream"] = False
    res = await LoadGenerator(srv.url, "chat", reqs, [0.0, 0.0, 0.0], model=MODEL_ID).run()
    assert [r.http_status for r in res.records] == [400] * 3
    assert all("maximum context length" in r.error for r in res.records)


# --------------------------------------------------------------------------- the real server

def _bench_module():
    spec = importlib.util.spec_from_file_location("llamacpp_target",
                                                  REPO / "bench" / "llamacpp_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    bench = _bench_module()
    python = os.environ.get("LLAMA_PYTHON")
    why = bench.has_llama_server(python)
    if why:
        pytest.skip(f"no llama-cpp-python server: {why} (set LLAMA_PYTHON to a python with "
                    f"llama-cpp-python[server]; see bench/llamacpp_target.py)")
    if not GGUF.exists():
        pytest.skip(f"{GGUF} not downloaded")
    srv = bench.LlamaServer(python, GGUF, tmp_path_factory.mktemp("llama") / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("usage", [True, False], ids=["include_usage", "no_usage"])
async def test_real_llama_cpp_server(llama_server, endpoint, usage):
    t0 = time.monotonic()
    res = await LoadGenerator(llama_server.url, endpoint, requests_for(endpoint, 3, usage),
                              [0.0, 0.2, 0.4], timeout_s=120).run()
    # llama-cpp-python 0.3.36 sends no usage chunk, whatever stream_options says
    check_records(res.records, endpoint, usage_sent_by_server=False)
    assert all(r.n_output == sum(r.chunk_tokens) <= 8 for r in res.records)
    assert time.monotonic() - t0 < 120


async def test_real_llama_cpp_server_refuses_a_non_uuid_request_id(llama_server):
    async with HttpPool() as pool:
        bad = await send_request(pool, PreparedRequest(
            "req-0-00000", "hi", 4, url=llama_server.url,
            headers={"X-Request-Id": "req-0-00000"}), RunClock())
        good = await send_request(pool, PreparedRequest("req-0-00000", "hi", 4,
                                                        url=llama_server.url), RunClock())
    assert bad.http_status == 400 and bad.error == "HTTP 400 Bad Request (empty body)"
    assert good.ok and good.n_output > 0, good.error


async def test_real_llama_cpp_server_json_error_is_kept(llama_server):
    """A prompt over the context window, not streamed: its JSON 400's message in the record."""
    prompt = " ".join(["word"] * 2100)
    async with HttpPool() as pool:
        raw = await send_request(pool, PreparedRequest(
            "long", prompt, 16, url=llama_server.url, endpoint="chat",
            extra_body={"stream": False}), RunClock())
    assert raw.http_status == 400 and raw.error_type == "http_4xx"
    assert raw.error.startswith("HTTP 400: This model's maximum context length is 2048 tokens")
