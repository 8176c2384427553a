"""Fuzzing the engine's HTTP server on 127.0.0.1: ~2,000 random and malformed HTTP requests and
~60 raw-socket abuses (garbage bytes, truncated HTTP, smuggling-style headers, a slow sender
that dribbles its headers, a client that announces a huge body and stops, abrupt resets), all
from a seeded generator so a failure replays exactly.

Then: no response was a 5xx (503 would be deliberate; none is expected here), every error was
OpenAI-style JSON, the server logged no error, a normal request still succeeds, and once nothing
is in flight the engine's KV blocks are all free again (used 0, free = the pool) — aborted,
disconnected and timed-out requests included.

Bounded: FUZZ_REQUESTS (env INFER_BENCH_FUZZ_REQUESTS) requests, 12 at a time, on the tiny
random model with small max_tokens; about 30-60 s on a shared 2-core box.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import random
import socket
import struct
import time
import zlib
from collections import Counter

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from infer_bench.backends.engine.http.app import build_app, get_state

MODEL = "tiny"
MAX_MODEL_LEN = 128
MAX_BODY = 64 * 1024
SEED = int(os.environ.get("INFER_BENCH_FUZZ_SEED", "20261129"))
FUZZ_REQUESTS = int(os.environ.get("INFER_BENCH_FUZZ_REQUESTS", "2000"))
CONCURRENCY = 12
ALLOWED = {200, 400, 401, 404, 405, 408, 413, 429}

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "seed", "stop", "stream", "stream_options", "n", "best_of", "echo",
          "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
          "repetition_penalty", "logit_bias", "response_format", "ignore_eos", "min_tokens",
          "suffix", "tools", "user"]
PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
         "/debug/steps", "/debug/steps?since=x", "/debug/steps?since=3", "/", "/v1",
         "/v1/completions/", "/v1//completions", "/v1/../health", "/%ff%fe", "/v1/engines",
         "/v1/completions?x=1", "/" + "a" * 3000, "/v1/chat/completions%00", "/favicon.ico"]
METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"]


# --------------------------------------------------------------------------------------------
# the random request generator


def weird(rng: random.Random, depth: int = 0):
    pool = [None, True, False, 0, 1, -1, 2, 3, 16, 0.0, -0.0, 0.5, 1.5, 16.0, 1e-300, 1e300,
            2**31, 2**63, -(2**63) - 1, 10**30, "", "a", "hello", "\u0000", "\ud800", "\u00e9",
            "\n", "</s>", "<|im_end|>", "x" * rng.randint(0, 400), "tiny", "gpt-4",
            [], [1, 2], ["a"], [[1]], [None], {}, {"a": 1}, {"type": "text"},
            {"include_usage": True}, {"include_usage": "yes"}, [{"role": "user"}]]
    if depth < 3 and rng.random() < 0.15:
        if rng.random() < 0.5:
            return [weird(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(FIELDS + ["role", "content", "type", "text", "\ud800"]):
                weird(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice(pool)


def base_body(rng: random.Random, chat: bool) -> dict:
    body: dict = {"model": MODEL, "max_tokens": rng.randint(1, 8)}
    if chat:
        body["messages"] = [{"role": "user", "content": rng.choice(["hi", "Tell me a story",
                                                                   "\u00e9t\u00e9"])}]
        if rng.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": "be brief"})
    else:
        body["prompt"] = rng.choice(["hello", "The quick brown fox", [1, 2, 3], ["one"],
                                     "a " * rng.randint(1, 60)])
    if rng.random() < 0.5:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    for name, values in (("temperature", [0, 0.7, 1.0, 1.9]), ("top_p", [0.5, 1.0]),
                         ("top_k", [-1, 0, 5, 1000]), ("seed", [0, 7]),
                         ("stop", ["\n", ["a", "b"]]), ("ignore_eos", [True, False])):
        if rng.random() < 0.2:
            body[name] = rng.choice(values)
    return body


def mutate(rng: random.Random, body: dict):
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        op = rng.random()
        if op < 0.55:
            body[rng.choice(FIELDS)] = weird(rng)
        elif op < 0.7 and body:
            body.pop(rng.choice(list(body)))
        elif op < 0.8:
            body["x-" + str(rng.randint(0, 99))] = weird(rng)
        elif op < 0.9 and isinstance(body.get("messages"), list) and body["messages"]:
            m = rng.choice(body["messages"])
            if isinstance(m, dict):
                m[rng.choice(["role", "content", "name"])] = weird(rng)
        else:
            return weird(rng)  # the whole body
    return body


def encode(rng: random.Random, body) -> tuple[bytes, dict]:
    headers = {}
    r = rng.random()
    if r < 0.6:
        data = json.dumps(body).encode()
    elif r < 0.75:  # raw UTF-8; lone surrogates become invalid UTF-8 bytes
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif r < 0.83:  # truncated
        data = json.dumps(body).encode()
        data = data[:rng.randint(0, max(len(data) - 1, 0))]
    elif r < 0.9:  # corrupted bytes
        data = bytearray(json.dumps(body).encode())
        for _ in range(rng.randint(1, 5)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    elif r < 0.93:
        data = rng.randbytes(rng.randint(0, 300))
    elif r < 0.95:  # over the size limit
        data = json.dumps({"prompt": "x" * (MAX_BODY + rng.randint(0, 5000))}).encode()
    elif r < 0.97:  # compressed: valid gzip, or garbage claiming to be gzip / deflate
        data = json.dumps(body).encode()
        if rng.random() < 0.5:
            data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
        else:
            data, headers["Content-Encoding"] = rng.randbytes(40), rng.choice(["gzip", "deflate",
                                                                             "br", "zstd", "xz"])
    else:  # deeply nested
        n = rng.randint(1000, 20000)
        data = b'{"prompt": ' + b"[" * n + b"]" * n + b"}"
    ctype = rng.choice(["application/json", "application/json", "text/plain", None,
                        "application/json; charset=latin-1", "multipart/form-data"])
    if ctype:
        headers["Content-Type"] = ctype
    if rng.random() < 0.05:
        headers["X-Request-Id"] = rng.choice(["abc", "x" * 1000, "\u00e9\u00e8", "a b c"])
    return data, headers


def make_request(rng: random.Random):
    if rng.random() < 0.1:
        method = rng.choice(METHODS)
        path = rng.choice(PATHS)
        data, headers = (encode(rng, weird(rng)) if method in ("POST", "PUT", "PATCH")
                         else (b"", {}))
        return method, path, data, headers, False
    chat = rng.random() < 0.4
    body = mutate(rng, base_body(rng, chat))
    data, headers = encode(rng, body)
    disconnect = rng.random() < 0.05
    return "POST", "/v1/chat/completions" if chat else "/v1/completions", data, headers, \
        disconnect


# --------------------------------------------------------------------------------------------
# raw sockets


def _req(path="/v1/completions", body=b'{"prompt": "hi", "max_tokens": 2}', extra=b"",
         method=b"POST", length: bytes | None = None) -> bytes:
    length = str(len(body)).encode() if length is None else length
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + extra +
            b"Content-Length: " + length + b"\r\n\r\n" + body)


def _deflate_bomb() -> bytes:
    c = zlib.compressobj()
    return c.compress(b"\x00" * (4 * MAX_BODY)) + c.flush()


def raw_cases(rng: random.Random) -> list[tuple[str, dict]]:
    """(name, spec): spec has `send` (bytes or list of (bytes, pause_s)), optional `expect`
    (a status or set of statuses; None = no response allowed), `close_after` (seconds to keep
    the socket open without reading), `reset` (RST instead of FIN after sending)."""
    ok = b'{"prompt": "hi", "max_tokens": 2}'
    cases: list[tuple[str, dict]] = []
    for i in range(12):
        cases.append((f"garbage-{i}", {"send": rng.randbytes(rng.randint(1, 3000))}))
    cases += [
        ("empty-line", {"send": b"\r\n\r\n", "expect": {400, None}}),
        ("truncated-request-line", {"send": b"POST /v1/completions HTT", "expect": {400, None}}),
        ("truncated-headers", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-",
                               "expect": {400, None}}),
        ("truncated-body-then-close", {"send": _req(body=ok)[:-10], "expect": {400, 408, None}}),
        ("http2-preface", {"send": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                           "expect": {400, 405, None}}),
        ("tls-client-hello", {"send": bytes.fromhex("16030100a5010000a10303") + rng.randbytes(80),
                              "expect": {400, None}}),
        ("nul-in-header", {"send": _req(extra=b"X-A: a\x00b\r\n"), "expect": {200, 400}}),
        ("long-header-line", {"send": _req(extra=b"X-Long: " + b"a" * 20000 + b"\r\n"),
                              "expect": {400, 431}}),
        ("many-headers", {"send": _req(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(300))),
                          "expect": {200, 400, 431}}),
        ("long-url", {"send": _req(path="/v1/completions?" + "a" * 20000), "expect": {400, 414}}),
        ("bad-method-token", {"send": _req(method=b"G@T"), "expect": {400, 405}}),
        ("unknown-method", {"send": _req(method=b"FROB"), "expect": {400, 405}}),
        ("lowercase-method", {"send": _req(method=b"post"), "expect": {400, 405}}),
        ("bad-version", {"send": _req().replace(b"HTTP/1.1", b"HTTP/9.9", 1),
                         "expect": {400, 505, 200}}),
        ("http-1.0-no-host", {"send": b"GET /health HTTP/1.0\r\n\r\n", "expect": {200}}),
        ("http-0.9", {"send": b"GET /health\r\n\r\n", "expect": {400, None}}),
        ("negative-content-length", {"send": _req(length=b"-1"),
                                     "expect": {400}}),
        ("non-numeric-content-length", {"send": _req(length=b"3x"),
                                        "expect": {400}}),
        ("duplicate-content-length", {"send": _req(extra=b"Content-Length: 5\r\n"),
                                      "expect": {400}}),
        ("content-length-and-chunked", {"send": _req(extra=b"Transfer-Encoding: chunked\r\n"),
                                        "expect": {400}}),
        ("chunked-ok", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" +
                                b"%x\r\n" % len(ok) + ok + b"\r\n0\r\n\r\n", "expect": {200}}),
        ("chunked-bad-size", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                              "expect": {400}}),
        ("chunked-huge-size", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\nab",
                               "expect": {400, 408, 413, None}}),
        ("chunked-truncated", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"pro",
                               "expect": {400, 408, None}}),
        ("unsupported-transfer-encoding", {"send": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                                   b"Transfer-Encoding: gzip\r\n\r\nabc",
                                           "expect": {400, 501, None}}),
        ("gzip-garbage", {"send": _req(body=b"\x1f\x8b" + rng.randbytes(30),
                                       extra=b"Content-Encoding: gzip\r\n"), "expect": {400}}),
        ("deflate-bomb", {"send": _req(body=_deflate_bomb(),
                                       extra=b"Content-Encoding: deflate\r\n"),
                          "expect": {400, 413}}),
        ("expect-100-continue", {"send": _req(extra=b"Expect: 100-continue\r\n"),
                                 "expect": {100, 200}}),
        ("websocket-upgrade", {"send": _req(extra=b"Upgrade: websocket\r\nConnection: Upgrade"
                                                  b"\r\n"), "expect": {200, 400, 426}}),
        ("absolute-uri", {"send": _req(path="http://evil.example/v1/completions"),
                          "expect": {200, 400, 404}}),
        ("asterisk-options", {"send": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
                              "expect": {400, 404, 405}}),
        ("connect", {"send": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n",
                     "expect": {400, 404, 405}}),
        ("path-traversal", {"send": b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
                            "expect": {400, 404}}),
        ("obs-fold-header", {"send": _req(extra=b"X-A: a\r\n folded\r\n"), "expect": {400, 200}}),
        ("space-before-colon", {"send": _req(extra=b"X-A : a\r\n"), "expect": {400}}),
        ("bare-cr", {"send": _req(extra=b"X-A: a\rb\r\n"), "expect": {400}}),
        ("non-ascii-request-id", {"send": _req(extra=b"X-Request-Id: \xff\xfe\xc3\x28\r\n"),
                                  "expect": {200}}),
        ("pipelined", {"send": _req(body=ok) + _req(path="/v1/models", body=b"{}",
                                                   method=b"GET"), "expect": {200}}),
        ("huge-content-length-then-stop", {"send": _req(length=b"99999999999999"),
                                           "expect": {413}}),
        ("content-length-under-limit-then-stop", {"send": _req(length=b"60000"), "expect": {408}}),
        ("slow-body", {"send": [(_req(body=b"", length=b"%d" % len(ok)), 0.0)] +
                       [(bytes([c]), 0.05) for c in ok],
                       "expect": {408}}),
        ("dribbled-headers", {"send": [(bytes([c]), 0.01)
                                       for c in _req(body=b"", length=b"%d" % len(ok))] +
                              [(ok, 0.0)], "expect": {200}}),
        ("open-and-silent", {"send": b"", "close_after": 1.0, "expect": {None}}),
        ("reset-mid-stream", {"send": _req(body=b'{"prompt": "hi", "max_tokens": 100, '
                                                b'"ignore_eos": true, "stream": true}'),
                              "reset": True, "close_after": 0.3, "expect": {None}}),
        ("reset-during-body", {"send": _req(body=b'{"prompt": "hi"' + b" " * 100 + b"}")[:-50],
                               "reset": True, "expect": {None}}),
    ]
    return cases


async def run_raw_case(host: str, port: int, spec: dict) -> int | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        send = spec["send"]
        parts = send if isinstance(send, list) else [(send, 0.0)]
        for data, pause in parts:
            if data:
                writer.write(data)
                await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if spec.get("reset"):
            if spec.get("close_after"):
                await asyncio.sleep(spec["close_after"])
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            return None
        if spec.get("close_after"):
            await asyncio.sleep(spec["close_after"])
            return None
        out = b""
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end and b"\r\n\r\n" not in out:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), t_end - time.monotonic())
            except (asyncio.TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            out += chunk
        if not out.startswith(b"HTTP/1."):
            return None
        status = int(out.split(b" ", 2)[1])
        if status >= 400 and status != 431:
            # our JSON errors, or aiohttp's own plain-text 400 for unparseable HTTP
            head = out.split(b"\r\n\r\n", 1)[0].lower()
            assert b"content-type: application/json" in head or b"text/plain" in head, out[:400]
        return status
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# --------------------------------------------------------------------------------------------
# the test


@pytest.fixture(scope="module")
def fuzz_engine(tiny_model_dir):
    from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig
    from infer_bench.backends.engine.loader import load_model

    loaded = load_model(str(tiny_model_dir), "cpu", None)
    engine = AsyncEngine(EngineConfig(kv_cache_gb=0.05, block_size=16, max_model_len=MAX_MODEL_LEN,
                                      max_num_seqs=16, num_threads=1), loaded)
    yield engine, loaded.tokenizer
    engine.shutdown()


async def test_fuzz_http_and_raw_sockets(fuzz_engine, caplog):
    engine, tok = fuzz_engine
    caplog.set_level(logging.WARNING)
    start_free = engine.stats().kv_blocks_free
    total_blocks = engine.stats().kv_blocks_total
    app = build_app(engine, tok, MODEL, max_body_bytes=MAX_BODY, body_timeout_s=1.0)
    state = get_state(app)
    rng = random.Random(SEED)
    requests = [make_request(rng) for _ in range(FUZZ_REQUESTS)]
    raw = raw_cases(random.Random(SEED + 1))
    statuses: Counter = Counter()
    raw_statuses: Counter = Counter()
    failures: list[str] = []
    t0 = time.monotonic()

    async with TestServer(app, host="127.0.0.1", handler_cancellation=True) as srv:
        timeout = aiohttp.ClientTimeout(total=60)
        conn = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=False)
        async with aiohttp.ClientSession(str(srv.make_url("")), timeout=timeout,
                                         connector=conn, auto_decompress=False) as s:

            async def one(i: int, method, path, data, headers, disconnect) -> None:
                try:
                    async with s.request(method, path, data=data or None, headers=headers,
                                         compress=None) as r:
                        statuses[r.status] += 1
                        if r.status not in ALLOWED:
                            failures.append(f"#{i} {method} {path} -> {r.status}: "
                                            f"{(await r.read())[:300]!r} body={data[:200]!r}")
                            return
                        if r.status >= 400:
                            if method != "HEAD":
                                body = await r.read()
                                # aiohttp's HTTP parser answers encodings it cannot decode
                                # itself (plain text), before any handler runs
                                parser_level = headers.get("Content-Encoding") in ("br", "zstd",
                                                                                   "xz")
                                assert r.content_type == "application/json" or (
                                    parser_level and r.status == 400), (r.status, body)
                                if r.content_type != "application/json":
                                    return
                                err = json.loads(body)["error"]
                                assert set(err) == {"message", "type", "param", "code"}, err
                            return
                        if disconnect:
                            await r.content.read(1)
                            r.close()
                            return
                        payload = await r.read()
                        if r.content_type == "text/event-stream":
                            assert payload.endswith(b"data: [DONE]\n\n"), payload[-300:]
                            assert b'"error"' not in payload, payload[-300:]
                        elif r.content_type == "application/json" and method != "HEAD":
                            json.loads(payload)
                except (aiohttp.ClientError, AssertionError, ValueError) as e:
                    failures.append(f"#{i} {method} {path}: {type(e).__name__}: {e} "
                                    f"body={data[:200]!r}")

            sem = asyncio.Semaphore(CONCURRENCY)

            async def bounded(i, req):
                async with sem:
                    await one(i, *req)

            async def raw_one(name, spec):
                try:
                    st = await asyncio.wait_for(run_raw_case(srv.host, srv.port, spec), 15)
                except (AssertionError, asyncio.TimeoutError) as e:
                    failures.append(f"raw {name}: {type(e).__name__}: {e}")
                    return
                raw_statuses[st] += 1
                expect = spec.get("expect")
                if expect is not None and st not in expect:
                    failures.append(f"raw {name}: status {st}, expected {sorted(map(str, expect))}")
                elif st is not None and st >= 500:
                    failures.append(f"raw {name}: {st}")

            raw_sem = asyncio.Semaphore(8)

            async def raw_bounded(name, spec):
                async with raw_sem:
                    await raw_one(name, spec)

            # The raw abuse runs while the HTTP fuzz is in flight: a slow or stuck client must
            # not hold anything up for the others.
            await asyncio.gather(*(bounded(i, r) for i, r in enumerate(requests)),
                                 *(raw_bounded(n, sp) for n, sp in raw))

            # afterwards: a normal request is served, the server is healthy...
            async with s.post("/v1/completions", json={"prompt": "after the storm",
                                                       "max_tokens": 4}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["usage"]["completion_tokens"] >= 1
            async with s.get("/health") as r:
                assert r.status == 200

        # ... and nothing leaked: no request in flight, every KV block free again.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = engine.stats()
            if not state.inflight and st.running == 0 and st.waiting == 0 \
                    and st.kv_blocks_used == 0:
                break
            await asyncio.sleep(0.05)
        st = engine.stats()
        elapsed = time.monotonic() - t0

    summary = (f"fuzz: {sum(statuses.values())} HTTP requests by status "
               f"{dict(sorted(statuses.items()))}; {len(raw)} raw-socket cases by status "
               f"{dict(sorted(raw_statuses.items(), key=str))}; server-side errors "
               f"{dict(sorted(state.metrics.http_errors.items()))}; {elapsed:.1f} s")
    print(summary)
    assert not failures, "\n".join(failures[:30]) + f"\n({len(failures)} failures)\n" + summary
    assert sum(statuses.values()) == FUZZ_REQUESTS
    assert not any(code >= 500 for code in statuses), summary
    assert not any(code >= 500 for code in state.metrics.http_errors), summary
    assert statuses[200] > FUZZ_REQUESTS // 10 and statuses[400] > FUZZ_REQUESTS // 10, summary
    # Our own code logged no error. (aiohttp.server logs, at ERROR, the garbage its parser
    # rejects, and a body it cannot decode while discarding it after our 4xx answered with
    # "Connection: close"; both are the client's fault and handled.)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and (
        r.name.startswith("infer_bench") or (
            "Unhandled exception" in r.getMessage()
            and "Can not decode content-encoding" not in (r.exc_text or "")))]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()} {r.exc_text}" for r in errors[:3])
    assert not state.inflight and state.awaiting_first == 0
    assert st.running == 0 and st.waiting == 0, st
    assert st.kv_blocks_used == 0, st
    assert st.kv_blocks_free == start_free == total_blocks, st
