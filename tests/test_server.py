"""The engine's OpenAI-compatible HTTP server over real sockets on 127.0.0.1.

Three layers: (1) a fake engine with AsyncEngine's API (fast; checks the server's own logic,
including disconnect -> abort); (2) the real AsyncEngine on a tiny random model, served
in-process by aiohttp's TestServer; (3) the real `python -m infer_bench.cli serve` subprocess,
stopped with SIGTERM, leaving no orphan.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from conftest import free_port
from infer_bench.backends.engine.http.app import build_app
from infer_bench.backends.engine.stats import EngineStats, StepTimeHistogram

MODEL = "tiny"


# --------------------------------------------------------------------------------------------
# helpers


async def read_sse(resp: aiohttp.ClientResponse) -> list:
    """All `data:` payloads of an SSE response, JSON-decoded except the final "[DONE]"."""
    events = []
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            assert ev.startswith(b"data: "), ev
            data = ev[6:].decode()
            events.append(data if data == "[DONE]" else json.loads(data))
    assert buf == b""
    return events


def stream_text(events: list, chat: bool = False) -> str:
    out = []
    for e in events:
        if e == "[DONE]" or not e["choices"]:
            continue
        c = e["choices"][0]
        out.append(c["delta"].get("content", "") if chat else c["text"])
    return "".join(out)


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line; checks the exposition syntax loosely."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line == "" or re.match(r"# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* ", line), line
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)', line)
        assert m, line
        samples[m.group(1)] = float(m.group(2))
    return samples


# --------------------------------------------------------------------------------------------
# (1) fake engine


@dataclass
class FakeOutput:
    new_token_ids: list
    text_delta: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    timing: dict | None = None


class FakeTokenizer:
    vocab_size = 256
    eos_token_ids = {0}

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", "replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


class FakeEngine:
    """AsyncEngine's API: emits letters a, b, c, ... one per `delay`; 1 KV block per 4 tokens."""

    def __init__(self, delay: float = 0.01):
        self.delay = delay
        self.blocks: dict[str, int] = {}
        self.aborted: list[str] = []
        self.steps: list[dict] = []
        self.max_model_len = 128
        self.vocab_size = FakeTokenizer.vocab_size

    async def generate(self, request_id, prompt_token_ids, params, arrival_time=None):
        self.blocks[request_id] = len(prompt_token_ids) // 4 + 1
        n = 0
        while True:
            await asyncio.sleep(self.delay)
            if request_id not in self.blocks:  # aborted
                yield FakeOutput([], "", True, "abort", len(prompt_token_ids), n)
                return
            tok = ord("a") + n % 26
            n += 1
            self.steps.append({"step": len(self.steps), "duration_s": self.delay})
            done = n >= params.max_tokens
            if done:  # like the real engine, blocks are freed when it finishes or on abort()
                self.blocks.pop(request_id, None)
            yield FakeOutput([tok], chr(tok), done, "length" if done else None,
                             len(prompt_token_ids), n,
                             {"queue_s": 0.0, "prefill_s": self.delay} if done else None)
            if done:
                return

    def abort(self, request_id):
        if self.blocks.pop(request_id, None) is not None:
            self.aborted.append(request_id)

    def stats(self):
        step_time = StepTimeHistogram()
        for step in self.steps:
            step_time.observe(step["duration_s"])
        return EngineStats(running=len(self.blocks), kv_blocks_used=sum(self.blocks.values()),
                           kv_blocks_free=100, steps_total=len(self.steps), step_time=step_time)

    def step_trace(self):
        return list(self.steps)


async def test_fake_engine_stream_and_disconnect():
    engine = FakeEngine()
    app = build_app(engine, FakeTokenizer(), MODEL)
    async with TestServer(app, host="127.0.0.1", handler_cancellation=True) as srv, \
            aiohttp.ClientSession() as s:
        url = str(srv.make_url("/v1/completions"))
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 5, "stream": True,
                "stream_options": {"include_usage": True}}
        async with s.post(url, json=body) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            events = await read_sse(r)
        assert events[-1] == "[DONE]"
        assert len(events) == 5 + 2  # one chunk per token, usage chunk, [DONE]
        assert stream_text(events) == "abcde"
        assert events[4]["choices"][0]["finish_reason"] == "length"
        assert events[4]["infer_bench"]["prefill_s"] == engine.delay
        assert events[5]["choices"] == [] and events[5]["usage"]["completion_tokens"] == 5

        async with s.post(url, json={**body, "stream": False, "stream_options": None}) as r:
            j = await r.json()
        assert j["choices"][0]["text"] == "abcde" and j["usage"]["total_tokens"] == 10

        # Disconnect mid-stream: the request is aborted and its blocks freed.
        engine.delay = 0.05
        r = await s.post(url, json={**body, "max_tokens": 100})
        assert r.status == 200
        await r.content.readuntil(b"\n\n")
        assert engine.stats().kv_blocks_used > 0
        r.close()
        for _ in range(100):
            if engine.stats().kv_blocks_used == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.stats().kv_blocks_used == 0 and len(engine.aborted) == 1

        # Non-streaming disconnect (handler cancellation) also aborts.
        task = asyncio.create_task(s.post(url, json={**body, "stream": False,
                                                     "stream_options": None, "max_tokens": 100}))
        await asyncio.sleep(0.2)
        task.cancel()
        for _ in range(100):
            if engine.stats().kv_blocks_used == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.stats().kv_blocks_used == 0 and len(engine.aborted) == 2

        async with s.get(srv.make_url("/metrics")) as r:
            m = parse_prometheus(await r.text())
        assert m['infer_bench_requests_total{finish_reason="abort"}'] == 2
        assert m['infer_bench_requests_total{finish_reason="length"}'] == 2
        assert m["infer_bench_step_duration_seconds_count"] == len(engine.steps)


async def test_fake_engine_refusal_is_400_and_server_keeps_serving():
    class Refusing(FakeEngine):
        async def generate(self, request_id, prompt_token_ids, params, arrival_time=None):
            if bytes(prompt_token_ids) == b"refuse":
                raise ValueError("prompt + max_tokens need 99 KV blocks; the pool has 4")
            async for out in super().generate(request_id, prompt_token_ids, params):
                yield out

    engine = Refusing(delay=0.001)
    app = build_app(engine, FakeTokenizer(), MODEL)
    async with TestServer(app, host="127.0.0.1", handler_cancellation=True) as srv, \
            aiohttp.ClientSession() as s:
        url = srv.make_url("/v1/completions")
        for stream in (False, True):
            async with s.post(url, json={"prompt": "refuse", "stream": stream}) as r:
                assert r.status == 400
                assert "KV blocks" in (await r.json())["error"]["message"]
        async with s.post(url, json={"prompt": "ok", "max_tokens": 3}) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["text"] == "abc"


# --------------------------------------------------------------------------------------------
# (2) the real engine on a tiny random model, in-process


class RecordingEngine:
    """Wraps AsyncEngine; remembers every output per request id (to compare with the HTTP)."""

    def __init__(self, engine):
        self.inner = engine
        self.outputs: dict[str, list] = {}

    async def generate(self, request_id, prompt_token_ids, params, arrival_time=None):
        outs = self.outputs.setdefault(request_id, [])
        async for out in self.inner.generate(request_id, prompt_token_ids, params):
            outs.append(out)
            yield out

    def __getattr__(self, name):
        return getattr(self.inner, name)


MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def real_engine(tiny_model_dir):
    from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig
    from infer_bench.backends.engine.loader import load_model

    loaded = load_model(str(tiny_model_dir), "cpu", None)
    engine = AsyncEngine(EngineConfig(num_kv_blocks=64, block_size=16,
                                      max_model_len=MAX_MODEL_LEN, num_threads=1), loaded)
    yield RecordingEngine(engine), loaded.tokenizer
    engine.shutdown()


@pytest.fixture
async def real_server(real_engine):
    engine, tok = real_engine
    app = build_app(engine, tok, MODEL, max_body_bytes=64 * 1024)
    async with TestServer(app, host="127.0.0.1", handler_cancellation=True) as srv, \
            aiohttp.ClientSession(base_url=str(srv.make_url(""))) as s:
        yield s, engine, tok


async def wait_for(pred, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def test_streamed_text_equals_nonstreamed_and_tokens(real_server):
    s, engine, tok = real_server
    body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 12,
            "temperature": 0, "ignore_eos": True}
    async with s.post("/v1/completions", json=body) as r:
        assert r.status == 200
        full = await r.json()
    assert full["object"] == "text_completion" and full["model"] == MODEL
    assert full["id"].startswith("cmpl-")
    assert full["usage"]["completion_tokens"] == 12
    assert full["usage"]["prompt_tokens"] == len(tok.encode("The quick brown fox"))
    assert full["choices"][0]["finish_reason"] == "length"
    assert {"queue_s", "prefill_s", "token_steps"} <= set(full["infer_bench"])

    async with s.post("/v1/completions", json={**body, "stream": True,
                                               "stream_options": {"include_usage": True}}) as r:
        assert r.status == 200
        events = await read_sse(r)
    assert events[-1] == "[DONE]"
    usage_ev, chunks = events[-2], events[:-2]
    assert usage_ev["choices"] == [] and usage_ev["usage"] == full["usage"]
    rid = chunks[0]["id"]
    outs = engine.outputs[rid]
    assert len(chunks) == len(outs) == 12  # one SSE chunk per engine output = per token
    assert all(c["id"] == rid and c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "queue_s" in chunks[-1]["infer_bench"]
    text = stream_text(chunks)
    assert text == full["choices"][0]["text"]
    tokens = [t for o in outs for t in o.new_token_ids]
    assert text == tok.decode(tokens)
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == tokens
    assert full["choices"][0]["token_ids"] == tokens

    # without include_usage: no usage chunk, still [DONE] last
    async with s.post("/v1/completions", json={**body, "stream": True}) as r:
        events = await read_sse(r)
    assert events[-1] == "[DONE]" and len(events) == 13 and "usage" not in events[-2]


async def test_concurrent_greedy_requests_match_sequential(real_server):
    s, engine, tok = real_server
    prompts = ["Prefill processes", "Time to first token", "Lorem ipsum dolor", "def add(a, b):"]

    async def one(p):
        async with s.post("/v1/completions", json={"prompt": p, "max_tokens": 6,
                                                   "temperature": 0, "ignore_eos": True,
                                                   "stream": True}) as r:
            return stream_text(await read_sse(r))

    together = await asyncio.gather(*(one(p) for p in prompts))
    alone = [await one(p) for p in prompts]
    assert together == alone


async def test_project_openai_client_reads_our_stream(real_server):
    """backends/openai.py (the load generator's client) against this server: exact token counts
    from usage and per-chunk token_ids, and the server timing joined by X-Request-Id."""
    from infer_bench.backends.client.openai import (PreparedRequest, RunClock, send_request,
                                                    wire_request_id)

    s, engine, tok = real_server
    base = str(s._base_url).rstrip("/")
    for endpoint in ("completions", "chat"):
        req = PreparedRequest(request_id=f"r-{endpoint}", prompt="Hello", max_tokens=7,
                              endpoint=endpoint, url=base, model=MODEL)
        res = await send_request(s, req, RunClock())
        assert res.error is None, res.error
        assert res.n_output == 7 and res.n_output_source == "usage"
        assert sum(res.chunk_tokens) == 7 and len(res.chunk_times_s) == 7
        assert res.finish_reason == "length"
        assert res.request_id == f"r-{endpoint}"
        assert res.server_timing["client_request_id"] == res.wire_request_id == wire_request_id(
            f"r-{endpoint}")
        assert res.server_timing["queue_s"] >= 0 and res.server_timing["prefill_s"] > 0


async def test_chat_applies_the_chat_template(real_server):
    s, engine, tok = real_server
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    templated = tok.apply_chat_template(
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Hello there"}], add_generation_prompt=True)
    assert "<|im_start|>assistant" in templated
    common = {"model": MODEL, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    async with s.post("/v1/chat/completions", json={**common, "messages": messages}) as r:
        assert r.status == 200
        chat = await r.json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["prompt_tokens"] == len(tok.encode(templated))
    async with s.post("/v1/completions", json={**common, "prompt": templated}) as r:
        comp = await r.json()
    assert chat["choices"][0]["message"]["content"] == comp["choices"][0]["text"]

    async with s.post("/v1/chat/completions",
                      json={**common, "messages": messages, "stream": True}) as r:
        events = await read_sse(r)
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert stream_text(events, chat=True) == comp["choices"][0]["text"]


async def test_models_health_metrics(real_server):
    s, engine, tok = real_server
    async with s.get("/health") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}
    async with s.get("/v1/models") as r:
        models = await r.json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == MAX_MODEL_LEN

    async def scrape():
        async with s.get("/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            return parse_prometheus(await r.text())

    before = await scrape()
    for name in ("infer_bench_num_requests_running", "infer_bench_num_requests_waiting",
                 "infer_bench_kv_blocks_used", "infer_bench_kv_blocks_free",
                 "infer_bench_prefix_cache_hit_rate", "infer_bench_generation_tokens_total",
                 'infer_bench_requests_total{finish_reason="length"}',
                 'infer_bench_step_duration_seconds_bucket{le="+Inf"}',
                 "infer_bench_step_duration_seconds_count"):
        assert name in before, name
    assert before["infer_bench_kv_blocks_free"] > 0
    async with s.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 5,
                                               "ignore_eos": True}) as r:
        assert r.status == 200
    after = await scrape()
    assert after["infer_bench_generation_tokens_total"] == \
        before["infer_bench_generation_tokens_total"] + 5
    key = 'infer_bench_requests_total{finish_reason="length"}'
    assert after[key] == before[key] + 1
    assert after["infer_bench_step_duration_seconds_count"] > \
        before["infer_bench_step_duration_seconds_count"]

    async with s.get("/debug/steps") as r:
        steps = await r.json()
    assert isinstance(steps, list) and steps and "wall_s" in steps[-1]
    last = steps[-1]["step"]
    async with s.get(f"/debug/steps?since={last}") as r:
        assert [e["step"] for e in await r.json()] == [last]


async def test_bad_requests_get_json_4xx_and_server_keeps_serving(real_server):
    s, engine, tok = real_server

    async def expect(status, method, path, match, **kw):
        async with s.request(method, path, **kw) as r:
            assert r.status == status, (path, kw, await r.text())
            assert r.content_type == "application/json"
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert match in err["message"], err
            return err

    hdr = {"Content-Type": "application/json"}
    await expect(400, "POST", "/v1/completions", "not valid JSON", data=b"{oops", headers=hdr)
    await expect(400, "POST", "/v1/completions", "not valid UTF-8",
                 data=b'{"prompt": "\xff"}', headers=hdr)
    await expect(400, "POST", "/v1/completions", "must be a JSON object", json=[1])
    await expect(400, "POST", "/v1/completions", "'prompt' must be a string",
                 json={"prompt": {"a": 1}})
    await expect(400, "POST", "/v1/completions", "'max_tokens' must be >= 1",
                 json={"prompt": "hi", "max_tokens": -5})
    await expect(400, "POST", "/v1/completions", "maximum context length",
                 json={"prompt": "hi", "max_tokens": 10**9})
    await expect(400, "POST", "/v1/completions", "'temperature' must be",
                 json={"prompt": "hi", "temperature": "warm"})
    err = await expect(404, "POST", "/v1/completions", "does not exist",
                       json={"prompt": "hi", "model": "gpt-4"})
    assert err["param"] == "model"
    await expect(400, "POST", "/v1/completions", "maximum context length",
                 json={"prompt": list(range(5, 5 + MAX_MODEL_LEN))})
    await expect(400, "POST", "/v1/chat/completions", "'messages' must be an array",
                 json={"messages": "hi"})
    await expect(404, "GET", "/v1/nothing", "Not found")
    await expect(404, "POST", "/v2/completions", "Not found", json={"prompt": "x"})
    await expect(405, "GET", "/v1/completions", "not allowed")
    await expect(405, "DELETE", "/health", "not allowed")
    await expect(413, "POST", "/v1/completions", "too large",
                 json={"prompt": "x" * (100 * 1024)})

    async with s.post("/v1/completions", json={"prompt": "still alive", "max_tokens": 3}) as r:
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] >= 1
    async with s.get("/metrics") as r:
        m = parse_prometheus(await r.text())
    assert m['infer_bench_http_errors_total{status="400"}'] >= 9


async def test_client_disconnect_mid_stream_frees_kv_blocks(real_server):
    s, engine, tok = real_server
    assert await wait_for(lambda: engine.stats().kv_blocks_used == 0)
    r = await s.post("/v1/completions", json={"prompt": "a long story", "max_tokens": 200,
                                              "ignore_eos": True, "stream": True})
    assert r.status == 200
    await r.content.readuntil(b"\n\n")
    await r.content.readuntil(b"\n\n")
    assert engine.stats().kv_blocks_used > 0
    r.close()  # drop the connection mid-stream
    assert await wait_for(lambda: engine.stats().kv_blocks_used == 0
                          and engine.stats().running == 0), engine.stats()
    rid = next(reversed(engine.outputs))
    assert len(engine.outputs[rid]) < 200


# --------------------------------------------------------------------------------------------
# (3) the real server process


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "infer_bench.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_serve_subprocess_ready_request_sigterm_no_orphan(tiny_model_dir):
    psutil = pytest.importorskip("psutil")
    port = free_port()
    proc = _spawn(["--model", str(tiny_model_dir), "--port", str(port), "--threads", "1",
                   "--kv-cache-gb", "0.01", "--served-model-name", MODEL])
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or "ready" in line:
                break
        assert "infer-bench engine ready: http://127.0.0.1:%d" % port in line, \
            (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        children = psutil.Process(proc.pid).children(recursive=True)

        async def client():
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(base) as s:
                async with s.get("/health") as r:
                    assert r.status == 200
                async with s.post("/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                           "max_tokens": 4}) as r:
                    assert r.status == 200, await r.text()
                # A long stream in flight when SIGTERM arrives is aborted, not left hanging.
                r = await s.post("/v1/completions", json={"prompt": "x", "max_tokens": 1000,
                                                          "ignore_eos": True, "stream": True})
                assert r.status == 200
                await r.content.readuntil(b"\n\n")
                proc.send_signal(signal.SIGTERM)
                events = await asyncio.wait_for(read_sse(r), 30)
                assert events[-1] == "[DONE]"
                assert events[-2]["choices"][0]["finish_reason"] == "abort"

        asyncio.run(client())
        assert proc.wait(timeout=60) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not psutil.pid_exists(proc.pid) or \
            psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_serve_subprocess_bad_model_exits_2(tmp_path):
    proc = _spawn(["--model", str(tmp_path / "no-such-model"), "--port", str(free_port())])
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot load model" in lines[0], err


async def test_arrival_is_stamped_when_the_bytes_land_not_when_the_busy_loop_gets_to_them():
    """The handler runs late when the event loop is busy; the engine must still get the time
    the request arrived (http/arrival.py), so that wait shows as queue time."""
    import socket
    import sys
    import threading
    import time as _time

    if not sys.platform.startswith("linux"):
        pytest.skip("TCP_INFO is Linux's")

    class Recording(FakeEngine):
        arrivals: list = []

        async def generate(self, request_id, prompt_token_ids, params, arrival_time=None):
            self.arrivals.append((arrival_time, _time.perf_counter()))
            async for out in super().generate(request_id, prompt_token_ids, params):
                yield out

    engine = Recording()
    app = build_app(engine, FakeTokenizer(), MODEL)
    async with TestServer(app, host="127.0.0.1") as srv:
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2}).encode()
        raw = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        sent = []

        def client():
            with socket.create_connection((srv.host, srv.port)) as c:
                sent.append(_time.perf_counter())
                c.sendall(raw)
                while c.recv(65536):
                    pass

        t = threading.Thread(target=client)
        t.start()
        while not sent:
            _time.sleep(0.001)
        _time.sleep(0.3)                     # the loop is busy: nobody reads the request
        for _ in range(200):
            if engine.arrivals:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(t.join, 5)
    arrival, handled = engine.arrivals[0]
    assert handled - sent[0] >= 0.29                      # the handler really ran late
    assert arrival == pytest.approx(sent[0], abs=0.02)    # the stamp did not
