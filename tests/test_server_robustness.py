"""Robustness and security of the engine's HTTP server: bad input, overload, faults, API keys.

Bad input gets the right 4xx and an OpenAI-style JSON error and the server keeps serving; a full
waiting queue gets 429 + Retry-After (503 + Retry-After while draining); KV exhaustion preempts
instead of failing; a stalled body gets 408, an oversized one 413 without being read; a request
past --request-timeout-s ends with finish_reason "abort" and an error; --api-key guards every
endpoint but /health and never reaches a log. The fuzz test is tests/test_server_fuzz.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from test_server import FakeEngine, FakeTokenizer, parse_prometheus, read_sse, stream_text
from infer_bench.backends.engine.http import serve as serve_mod
from infer_bench.backends.engine.http.app import build_app, get_state, start_site, stop_site

MODEL = "tiny"
MAX_MODEL_LEN = 128
KEY = "sk-test-Zq8-very-secret-9f3b"


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from infer_bench.backends.engine.loader import load_model
    return load_model(str(tiny_model_dir), "cpu", None)


def make_engine(loaded, **kw):
    from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig
    cfg = dict(kv_cache_gb=0.05, block_size=16, max_model_len=MAX_MODEL_LEN, num_threads=1)
    cfg.update(kw)
    return AsyncEngine(EngineConfig(**cfg), loaded)


class served:
    """`async with served(app) as (session, server):` on 127.0.0.1 with handler cancellation."""

    def __init__(self, app, headers=None):
        self.app, self.headers = app, headers

    async def __aenter__(self):
        self.srv = TestServer(self.app, host="127.0.0.1", handler_cancellation=True)
        await self.srv.start_server()
        self.s = aiohttp.ClientSession(base_url=str(self.srv.make_url("")), headers=self.headers)
        return self.s, self.srv

    async def __aexit__(self, *exc):
        await self.s.close()
        await self.srv.close()


async def wait_for(pred, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


async def expect_error(resp, status, match=None, param=...):
    body = await resp.text()
    assert resp.status == status, (status, resp.status, body)
    assert resp.content_type == "application/json", body
    err = (await resp.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    if match:
        assert match in err["message"], err
    if param is not ...:
        assert err["param"] == param, err
    return err


async def raw_exchange(host, port, data: bytes, *, read_timeout=5.0, then_wait=None) -> bytes:
    """Send raw bytes, read until the server closes (or read_timeout); the bytes received."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        if then_wait:
            await asyncio.sleep(then_wait)
        out = b""
        t_end = time.monotonic() + read_timeout
        while time.monotonic() < t_end:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), t_end - time.monotonic())
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and out.startswith(b"HTTP/1.1 4"):
                head, _, rest = out.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and \
                            len(rest) >= int(line.split(b":")[1]):
                        return out
        return out
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def status_of(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


# --------------------------------------------------------------------------------------------
# 1. input


@pytest.fixture(scope="module")
def input_engine(loaded):
    engine = make_engine(loaded)
    yield engine
    engine.shutdown()


BAD_COMPLETIONS = [
    # (body, status, message fragment, param)
    ({"prompt": "hi", "max_tokens": 0}, 400, "'max_tokens' must be >= 1", "max_tokens"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "'max_tokens' must be >= 1", "max_tokens"),
    ({"prompt": "hi", "max_tokens": "5"}, 400, "must be an integer", "max_tokens"),
    ({"prompt": "hi", "max_tokens": True}, 400, "must be an integer", "max_tokens"),
    ({"prompt": "hi", "max_tokens": 1.5}, 400, "must be an integer", "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**30}, 400, "maximum context length", "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**400}, 400, "maximum context length", "max_tokens"),
    ({"prompt": "a " * 500}, 400, "maximum context length", "prompt"),
    ({"prompt": list(range(1, MAX_MODEL_LEN + 1))}, 400, "maximum context length", "prompt"),
    ({"prompt": ""}, 400, "must not be empty", "prompt"),
    ({"prompt": []}, 400, "must not be empty", "prompt"),
    ({"prompt": [[1, 2], [3]]}, 400, "batched prompts", "prompt"),
    ({"prompt": [1, -2]}, 400, "outside the vocabulary", "prompt"),
    ({"prompt": [1, 10**9]}, 400, "outside the vocabulary", "prompt"),
    ({"prompt": [1, 2.5]}, 400, "token ids must be integers", "prompt"),
    ({"prompt": None}, 400, "'prompt' is required", "prompt"),
    ({"prompt": 7}, 400, "'prompt' must be a string", "prompt"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist", "model"),
    ({"prompt": "hi", "model": 5}, 400, "'model' must be a string", "model"),
    ({"prompt": "hi", "stop": 5}, 400, "'stop' must be", "stop"),
    ({"prompt": "hi", "stop": [""]}, 400, "must not be empty", "stop"),
    ({"prompt": "hi", "stop": ["x", 1]}, 400, "'stop' must be", "stop"),
    ({"prompt": "hi", "stop": ["s"] * 17}, 400, "at most 16", "stop"),
    ({"prompt": "hi", "temperature": -0.1}, 400, "'temperature' must be >= 0", "temperature"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "finite number", "temperature"),
    ({"prompt": "hi", "temperature": 10**400}, 400, "finite number", "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "'top_p' must be in (0, 1]", "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "'top_p' must be in (0, 1]", "top_p"),
    ({"prompt": "hi", "top_k": -2}, 400, "'top_k' must be -1", "top_k"),
    ({"prompt": "hi", "top_k": 10**30}, 400, "'top_k' must be <=", "top_k"),
    ({"prompt": "hi", "seed": 2**64}, 400, "'seed' must be <=", "seed"),
    ({"prompt": "hi", "seed": "1"}, 400, "'seed' must be an integer", "seed"),
    ({"prompt": "hi", "n": 2}, 400, "only n=1", "n"),
    ({"prompt": "hi", "logprobs": 1}, 400, "'logprobs' is not supported", "logprobs"),
    ({"prompt": "hi", "stream": "yes"}, 400, "'stream' must be a boolean", "stream"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400,
     "only allowed when 'stream' is true", "stream_options"),
    ({"prompt": "hi", "ignore_eos": 1}, 400, "must be a boolean", "ignore_eos"),
    ({"prompt": "hi\ud800"}, 400, "lone surrogate", None),
    ({"prompt": "hi", "stop": ["\udfff"]}, 400, "lone surrogate", None),
]

BAD_CHATS = [
    ({"messages": "hi"}, 400, "'messages' must be an array", "messages"),
    ({"messages": []}, 400, "must not be empty", "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "must be one of", "messages"),
    ({"messages": [{"role": "user"}]}, 400, "content' is required", "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "only content parts of type 'text'", "messages[0].content"),
    ({"messages": [{"role": "user", "content": "\udc00"}]}, 400, "lone surrogate", None),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3}, 400,
     "must be >= 1", "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400,
     "'tools' are not supported", "tools"),
]


async def test_every_field_validated_with_json_4xx_and_server_keeps_serving(loaded,
                                                                            input_engine):
    app = build_app(input_engine, loaded.tokenizer, MODEL, max_body_bytes=64 * 1024)
    async with served(app) as (s, srv):
        for body, status, match, param in BAD_COMPLETIONS:
            async with s.post("/v1/completions", json=body) as r:
                await expect_error(r, status, match, param)
        for body, status, match, param in BAD_CHATS:
            async with s.post("/v1/chat/completions", json=body) as r:
                await expect_error(r, status, match, param)
        hdr = {"Content-Type": "application/json"}
        for data, match in [(b"", "empty"), (b"{oops", "not valid JSON"),
                            (b'{"prompt": "\xc3\x28"}', "not valid UTF-8"),
                            (b'{"prompt": NaN}', "not valid JSON"),
                            (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),
                            (b'"just a string"', "must be a JSON object")]:
            async with s.post("/v1/completions", data=data, headers=hdr) as r:
                await expect_error(r, 400, match)
        async with s.post("/v1/completions", data=b"x" * (65 * 1024), headers=hdr) as r:
            await expect_error(r, 413, "too large")
        async with s.get("/v1/nope") as r:
            await expect_error(r, 404, "Not found")
        for method, path in [("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"),
                             ("POST", "/v1/models"), ("DELETE", "/health"),
                             ("POST", "/metrics")]:
            async with s.request(method, path) as r:
                await expect_error(r, 405, "not allowed")
                assert "Allow" in r.headers
        # Odd but valid values are accepted: tiny temperature = greedy, huge top_k = no cut,
        # a non-ASCII X-Request-Id is echoed safely.
        for extra in ({"temperature": 1e-300}, {"temperature": 1e300}, {"top_k": 2**62},
                      {"top_p": 1e-300}, {"seed": -(2**63)}, {"stop": ["\u00e9", "\n"]}):
            async with s.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3,
                                                       **extra}) as r:
                assert r.status == 200, (extra, await r.text())
        async with s.post("/v1/completions", json={"prompt": "still fine", "max_tokens": 2},
                          headers={"X-Request-Id": "r\u00e9q-1"}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["infer_bench"]["client_request_id"].startswith("r")
        async with s.get("/metrics") as r:
            m = parse_prometheus(await r.text())
        assert m['infer_bench_http_errors_total{status="400"}'] >= 40
        assert await wait_for(lambda: input_engine.stats().kv_blocks_used == 0)


async def test_oversized_content_length_is_413_without_reading_the_body():
    app = build_app(FakeEngine(), FakeTokenizer(), MODEL, max_body_bytes=1024)
    async with served(app) as (s, srv):
        t0 = time.monotonic()
        raw = await raw_exchange(srv.host, srv.port, (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n{\"prompt\": "), read_timeout=5)
        assert status_of(raw) == 413, raw[:300]
        assert b'"error"' in raw and time.monotonic() - t0 < 4
        async with s.post("/v1/completions", json={"prompt": "ok", "max_tokens": 1}) as r:
            assert r.status == 200


async def test_stalled_body_gets_408_and_the_connection_is_closed():
    app = build_app(FakeEngine(), FakeTokenizer(), MODEL, body_timeout_s=0.5)
    async with served(app) as (s, srv):
        t0 = time.monotonic()
        raw = await raw_exchange(srv.host, srv.port, (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            b'{"prompt": '), read_timeout=5)
        assert status_of(raw) == 408, raw[:300]
        assert b"request_body_timeout" in raw
        assert b"Connection: close" in raw or b"connection: close" in raw.lower()
        assert time.monotonic() - t0 < 3
        async with s.post("/v1/completions", json={"prompt": "ok", "max_tokens": 1}) as r:
            assert r.status == 200


# --------------------------------------------------------------------------------------------
# 2. overload


async def test_full_waiting_queue_gets_429_with_retry_after(loaded):
    # A long context, so the running request surely outlives the checks (it is cut short below).
    engine = make_engine(loaded, max_num_seqs=1, max_model_len=2048)
    try:
        app = build_app(engine, loaded.tokenizer, MODEL, max_waiting_requests=2)
        state = get_state(app)
        async with served(app) as (s, srv):
            body = {"prompt": "overload", "max_tokens": 2000, "ignore_eos": True,
                    "stream": True}
            first = await s.post("/v1/completions", json=body)  # takes the only running slot
            assert first.status == 200
            await first.content.readuntil(b"\n\n")
            assert engine.stats().running == 1

            async def one():
                async with s.post("/v1/completions", json={**body, "max_tokens": 3}) as r:
                    assert r.status == 200
                    return await read_sse(r)

            waiting = [asyncio.create_task(one()) for _ in range(2)]
            assert await wait_for(lambda: len(state.inflight) == 3)
            assert state.num_waiting() == 2
            for stream in (True, False):
                async with s.post("/v1/completions", json={**body, "stream": stream}) as r:
                    err = await expect_error(r, 429, "overloaded")
                    assert r.headers["Retry-After"] == "1"
                    assert err["code"] == "rate_limit_exceeded"
            first.close()  # the running one goes away: the queue drains, all complete
            done = await asyncio.wait_for(asyncio.gather(*waiting), 30)
            assert all(ev[-1] == "[DONE]" for ev in done)
            async with s.post("/v1/completions", json={**body, "max_tokens": 2}) as r:
                assert r.status == 200  # room again
                await read_sse(r)
            async with s.get("/metrics") as r:
                m = parse_prometheus(await r.text())
            assert m['infer_bench_requests_rejected_total{reason="overloaded"}'] == 2
            assert m['infer_bench_http_errors_total{status="429"}'] == 2
            assert await wait_for(lambda: engine.stats().kv_blocks_used == 0)
    finally:
        engine.shutdown()


async def test_draining_gets_503_with_retry_after_and_in_flight_streams_are_aborted():
    engine = FakeEngine(delay=0.02)
    app = build_app(engine, FakeTokenizer(), MODEL)
    runner, url = await start_site(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(url) as s:
            r = await s.post("/v1/completions", json={"prompt": "x", "max_tokens": 100,
                                                      "stream": True})
            await r.content.readuntil(b"\n\n")
            get_state(app).draining = True
            async with s.post("/v1/completions", json={"prompt": "x"}) as r2:
                err = await expect_error(r2, 503, "shutting down")
                assert r2.headers["Retry-After"] == "1" and err["type"] == "server_error"
            async with s.get("/health") as r2:
                assert r2.status == 503 and r2.headers["Retry-After"] == "1"
            stopping = asyncio.create_task(stop_site(app, runner))
            events = await asyncio.wait_for(read_sse(r), 10)
            assert events[-1] == "[DONE]"
            assert events[-2]["choices"][0]["finish_reason"] == "abort"
            assert len(await asyncio.wait_for(stopping, 10)) == 1
            assert engine.stats().kv_blocks_used == 0
    finally:
        await runner.cleanup()


async def test_kv_exhaustion_preempts_and_every_request_completes(loaded):
    # 8 blocks x 16 tokens = 128 KV slots; 6 requests x (~5 + 60) tokens need ~3x that.
    engine = make_engine(loaded, kv_cache_gb=None, num_kv_blocks=8, max_num_seqs=8)
    try:
        app = build_app(engine, loaded.tokenizer, MODEL)
        async with served(app) as (s, srv):
            async def one(i, stream):
                body = {"prompt": f"request number {i}", "max_tokens": 60, "ignore_eos": True,
                        "temperature": 0, "stream": stream}
                async with s.post("/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    if stream:
                        events = await read_sse(r)
                        assert events[-1] == "[DONE]"
                        return events[-2]["choices"][0]["finish_reason"], \
                            sum(len(e["choices"][0]["token_ids"]) for e in events[:-1])
                    j = await r.json()
                    return j["choices"][0]["finish_reason"], j["usage"]["completion_tokens"]

            results = await asyncio.wait_for(
                asyncio.gather(*(one(i, i % 2 == 0) for i in range(6))), 120)
            assert results == [("length", 60)] * 6
            assert engine.stats().preemptions_total > 0
            # One request that alone outgrows the whole pool ends with "length", not an error.
            async with s.post("/v1/completions", json={"prompt": "big", "max_tokens": 120,
                                                       "ignore_eos": True}) as r:
                j = await r.json()
                assert r.status == 200 and j["choices"][0]["finish_reason"] == "length"
            assert await wait_for(lambda: engine.stats().kv_blocks_used == 0
                                  and engine.stats().running == 0)
    finally:
        engine.shutdown()


# --------------------------------------------------------------------------------------------
# 3. security


async def test_api_key_required_on_every_endpoint_but_health():
    engine = FakeEngine(delay=0.001)
    app = build_app(engine, FakeTokenizer(), MODEL, api_key=KEY)
    async with served(app) as (s, srv):
        async with s.get("/health") as r:
            assert r.status == 200
        bad_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                       {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"},
                       {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": "Bearer "},
                       {"X-Api-Key": KEY}]
        endpoints = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                     ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/debug/steps"),
                     ("GET", "/no/such/path"), ("GET", "/v1/completions")]
        for headers in bad_headers:
            for method, path in endpoints:
                async with s.request(method, path, headers=headers,
                                     json={"prompt": "x", "max_tokens": 1}) as r:
                    err = await expect_error(r, 401, "API key")
                    assert err["code"] == "invalid_api_key"
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert KEY not in await r.text()
        # Bytes that are not ASCII in the header: still a clean 401.
        raw = await raw_exchange(srv.host, srv.port, (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"))
        assert status_of(raw) == 401, raw[:200]

        ok = {"Authorization": f"Bearer {KEY}"}
        for scheme in ("Bearer", "bearer"):
            async with s.get("/v1/models", headers={"Authorization": f"{scheme} {KEY}"}) as r:
                assert r.status == 200
        async with s.post("/v1/completions", headers=ok,
                          json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["text"] == "ab"
        async with s.get("/metrics", headers=ok) as r:
            m = parse_prometheus(await r.text())
        assert m['infer_bench_requests_rejected_total{reason="unauthorized"}'] == \
            len(bad_headers) * len(endpoints) + 1
        async with s.get("/no/such/path", headers=ok) as r:
            await expect_error(r, 404, "Not found")


async def test_api_key_never_reaches_the_logs(caplog):
    engine = FakeEngine(delay=0.001)
    app = build_app(engine, FakeTokenizer(), MODEL, api_key=KEY)
    caplog.set_level(logging.DEBUG)  # everything, every logger (aiohttp.access included)
    runner, url = await start_site(app, "127.0.0.1", 0, access_log=True)
    try:
        async with aiohttp.ClientSession(url) as s:
            for auth in (f"Bearer {KEY}", f"Bearer {KEY}-wrong", f"Basic {KEY}", KEY):
                h = {"Authorization": auth, "X-Request-Id": "trace-me"}
                for path in ("/v1/completions", "/v1/models", "/nope"):
                    async with s.post(path, headers=h, json={"prompt": "x",
                                                             "max_tokens": 1}) as r:
                        await r.read()
            # an error path that logs (a 500 from a broken engine) also must not leak it
            engine.stats = lambda: 1 / 0  # noqa: E731
            async with s.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
    finally:
        await stop_site(app, runner)
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "aiohttp.access" in text and "/v1/completions" in text  # the access log did log
    assert KEY not in text and KEY[5:15] not in text


def serve_settings(monkeypatch, *argv):
    """The ServeSettings `infer-bench serve ARGV` hands to the engine (no server is started)."""
    typer_testing = pytest.importorskip("typer.testing")
    from infer_bench.cli.main import app as cli_app

    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda settings: seen.append(settings) or 0)
    res = typer_testing.CliRunner().invoke(cli_app, ["serve", *argv])
    assert res.exit_code == 0, res.output
    (settings,) = seen
    return settings


def test_serve_config_api_key_flag_env_and_repr(monkeypatch):
    monkeypatch.delenv(serve_mod.API_KEY_ENV, raising=False)
    cfg = serve_settings(monkeypatch, "--model", "m")
    assert cfg.host == "127.0.0.1"  # loopback unless told otherwise
    assert cfg.api_key is None and serve_mod.resolve_api_key(cfg) is None
    assert cfg.max_waiting_requests == 256 and cfg.request_timeout_s is None
    cfg = serve_settings(monkeypatch, "--model", "m", "--api-key", KEY,
                         "--max-waiting-requests", "3", "--request-timeout-s",
                         "2.5", "--body-timeout-s", "4", "--access-log")
    assert serve_mod.resolve_api_key(cfg) == KEY and KEY not in repr(cfg)
    assert (cfg.max_waiting_requests, cfg.request_timeout_s, cfg.body_timeout_s,
            cfg.access_log) == (3, 2.5, 4.0, True)
    monkeypatch.setenv(serve_mod.API_KEY_ENV, "from-env")
    assert serve_mod.resolve_api_key(serve_settings(monkeypatch, "--model", "m")) == "from-env"
    # settings built without api_key (library callers): the env still applies
    assert serve_mod.resolve_api_key(serve_mod.ServeSettings(model="m")) == "from-env"
    assert serve_mod.resolve_api_key(serve_mod.ServeSettings(model="m", api_key=KEY)) == KEY
    monkeypatch.setenv(serve_mod.API_KEY_ENV, "")
    assert serve_mod.resolve_api_key(serve_mod.ServeSettings(model="m")) is None
    import inspect
    assert inspect.signature(start_site).parameters["host"].default == "127.0.0.1"
    assert serve_mod.ServeSettings(model="m").host == "127.0.0.1"


def test_cli_serve_command_builds_serve_settings(monkeypatch):
    cfg = serve_settings(monkeypatch, "--model", "m", "--port", "8123")
    assert (cfg.model, cfg.port, cfg.host, cfg.api_key) == ("m", 8123, "127.0.0.1", None)
    assert cfg.max_waiting_requests == 256


# --------------------------------------------------------------------------------------------
# 4. per-request timeout


async def test_request_timeout_aborts_with_finish_reason_abort_and_an_error():
    engine = FakeEngine(delay=0.05)
    app = build_app(engine, FakeTokenizer(), MODEL, request_timeout_s=0.3)
    async with served(app) as (s, srv):
        body = {"prompt": "slow", "max_tokens": 100, "stream": True,
                "stream_options": {"include_usage": True}}
        t0 = time.monotonic()
        async with s.post("/v1/completions", json=body) as r:
            assert r.status == 200
            events = await read_sse(r)
        assert time.monotonic() - t0 < 2
        assert events[-1] == "[DONE]"
        err = events[-2]["error"]
        assert err["code"] == "request_timeout" and err["type"] == "timeout_error"
        usage = events[-3]["usage"]
        final = events[-4]
        assert final["choices"][0]["finish_reason"] == "abort"
        n_streamed = sum(len(e["choices"][0]["token_ids"]) for e in events[:-4])
        assert 1 <= n_streamed < 100 and usage["completion_tokens"] == n_streamed
        assert len(stream_text(events[:-3])) == n_streamed
        assert len(engine.aborted) == 1 and engine.stats().kv_blocks_used == 0

        async with s.post("/v1/completions", json={"prompt": "slow", "max_tokens": 100}) as r:
            assert r.status == 200
            j = await r.json()
        assert j["choices"][0]["finish_reason"] == "abort"
        assert j["error"]["code"] == "request_timeout"
        assert 1 <= j["usage"]["completion_tokens"] == len(j["choices"][0]["text"])
        assert len(engine.aborted) == 2 and engine.stats().kv_blocks_used == 0

        # Timed out before the first token (still queued): same ending, no tokens.
        engine.delay = 2.0
        async with s.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
            events = await read_sse(r)
        assert events[0]["choices"][0]["finish_reason"] == "abort"
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert events[1]["error"]["code"] == "request_timeout" and events[2] == "[DONE]"
        assert engine.stats().kv_blocks_used == 0

        engine.delay = 0.001  # fast requests are untouched
        async with s.post("/v1/completions", json={"prompt": "quick", "max_tokens": 5}) as r:
            j = await r.json()
        assert j["choices"][0]["finish_reason"] == "length" and "error" not in j
        async with s.get("/metrics") as r:
            m = parse_prometheus(await r.text())
        assert m["infer_bench_requests_timed_out_total"] == 3
        assert m['infer_bench_requests_total{finish_reason="abort"}'] == 3
        assert m["infer_bench_requests_aborted_by_server_total"] == 0  # not client disconnects


async def test_request_timeout_with_the_real_engine_frees_blocks(loaded):
    engine = make_engine(loaded, max_model_len=2048)
    try:
        app = build_app(engine, loaded.tokenizer, MODEL, request_timeout_s=0.05)
        async with served(app) as (s, srv):
            async with s.post("/v1/completions", json={"prompt": "long", "max_tokens": 2000,
                                                       "ignore_eos": True, "stream": True}) as r:
                events = await read_sse(r)
            assert events[-2]["error"]["code"] == "request_timeout"
            assert events[-3]["choices"][0]["finish_reason"] == "abort"
            assert await wait_for(lambda: engine.stats().kv_blocks_used == 0
                                  and engine.stats().running == 0), engine.stats()
    finally:
        engine.shutdown()
