"""The lean HTTP/1.1 client (backends/http_client.py) and its use by backends/openai.py, against
scripted servers on real loopback sockets: chunked framing split at awkward byte boundaries,
timestamps from the read that completed each event, multi-token chunks, streamed errors, HTTP
errors with bodies, drops, timeouts, keep-alive reuse, TLS; plus a property test of the parser
over random read splits."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_bench.backends.client import http as http_client
from infer_bench.backends.client.http import HttpPool, build_request
from infer_bench.backends.client.openai import (PreparedRequest, RunClock, send_request,
                                                wire_request_id)
from infer_bench.backends.client.sse import sse_lines

pytestmark = pytest.mark.timeout(60)

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def event(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def tok_event(n: int, finish=None) -> bytes:
    return event({"choices": [{"index": 0, "text": " t" * n, "token_ids": list(range(n)),
                               "finish_reason": finish}]})


def chunked(body: bytes, sizes) -> bytes:
    """`body` in chunked framing with the given chunk sizes (cycled), plus the terminator."""
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        out.append(b"%x\r\n%b\r\n" % (len(body[i:i + n]), body[i:i + n]))
        i += n
    return b"".join(out) + b"0\r\n\r\n"


class Scripted:
    """A loopback server; `script(writer, request_bytes, conn_no, req_no)` answers each request.
    Records connections and request bytes; stopped by `close()`."""

    def __init__(self, script):
        self.script = script
        self.requests: list[bytes] = []
        self.n_conns = 0
        self.server = None
        self.writers = []

    async def start(self) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def _serve(self, reader, writer):
        conn_no = self.n_conns
        self.n_conns += 1
        self.writers.append(writer)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                keep = await self.script(writer, head + body, conn_no, len(self.requests) - 1)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self):
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def serve():
    servers = []

    async def start(script):
        s = await Scripted(script).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.close()


def replies(answers: list[bytes]):
    """A server script that writes answers[i] for the connection's i-th request (keeps it open)."""
    async def script(w, request, conn_no, req_no):
        w.write(answers[req_no])
        await w.drain()
        return True
    return script


def req(url, rid="r1", **kw):
    return PreparedRequest(rid, "hello world", max_tokens=8, url=url, **kw)


# ----------------------------------------------------------------------------- socket tests
async def test_awkward_splits_and_read_timestamps(serve):
    body = tok_event(2) + tok_event(3) + tok_event(1, "length") + event(
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 6}}) + event(b"[DONE]")
    wire = SSE_HEAD + chunked(body, [7, 150, 3, 1000])
    # cut inside the header block, a hex size line, a CRLF, and inside each event
    e1 = wire.index(b"\n\n", len(SSE_HEAD)) + 2          # end of event 1 (in the wire)
    e2 = wire.index(b"\n\n", e1) + 2
    e3 = wire.index(b"\n\n", e2) + 2
    cuts = sorted({20, len(SSE_HEAD) + 1, len(SSE_HEAD) + 4, e1 - 1, e1 + 3, e2 - 2, e3 - 5,
                   len(wire) - 3})
    frags = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    writes: list[int] = []

    async def script(w, request, conn_no, req_no):
        for f in frags:
            writes.append(time.perf_counter_ns())
            w.write(f)
            await w.drain()
            await asyncio.sleep(0.03)
        return True

    srv = await serve(script)
    clock = RunClock()
    async with HttpPool() as pool:
        raw = await send_request(pool, req(srv.url), clock)
    assert raw.ok, raw.error
    assert raw.chunk_tokens == [2, 3, 1]
    assert raw.n_output == 6 and raw.n_output_source == "usage" and raw.n_output_client == 6
    assert raw.finish_reason == "length"
    # each event is timed by the read that delivered the last byte of its data line (the
    # line's newline, 2 bytes before the event's end): after that fragment's write
    for t_s, end in zip(raw.chunk_times_s, [e1, e2, e3]):
        frag = next(i for i, c in enumerate([*cuts, len(wire)]) if c > end - 2)
        t_ns = clock.to_ns(t_s)
        assert t_ns >= writes[frag], (frag, t_ns - writes[frag])
        if frag + 1 < len(writes):            # and before the next fragment was even written
            assert t_ns < writes[frag + 1]


async def test_request_bytes_headers_and_body(serve):
    async def script(w, request, conn_no, req_no):
        w.write(SSE_HEAD + chunked(tok_event(1, "stop") + event(b"[DONE]"), [4096]))
        await w.drain()
        return True

    srv = await serve(script)
    r = req(srv.url + "/v1", rid="abc", endpoint="chat", api_key="sk-1",
            headers={"X-Custom": "yes"}, model="m1")
    raw = await send_request(None, r, RunClock())
    assert raw.ok and raw.chunk_tokens == [1]
    head, _, body = srv.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert hdrs["authorization"] == "Bearer sk-1" and hdrs["x-custom"] == "yes"
    assert hdrs["x-request-id"] == wire_request_id("abc") == raw.wire_request_id
    assert str(uuid.UUID(hdrs["x-request-id"])) == hdrs["x-request-id"]   # a UUID on the wire
    assert raw.request_id == "abc" and hdrs["host"] == f"127.0.0.1:{srv.port}"
    assert int(hdrs["content-length"]) == len(body)
    j = json.loads(body)
    assert j["stream"] is True and j["model"] == "m1"
    assert j["messages"] == [{"role": "user", "content": "hello world"}]


async def test_streamed_error_events(serve):
    bodies = [tok_event(1) + event({"error": {"message": "boom", "code": 500}}),
              tok_event(2) + b"event: error\n" + event({"message": "bad thing"})]

    srv = await serve(replies([SSE_HEAD + chunked(b, [11]) for b in bodies]))
    async with HttpPool() as pool:
        a = await send_request(pool, req(srv.url), RunClock())
        b = await send_request(pool, req(srv.url), RunClock())
    assert a.error_type == "stream_error" and "boom" in a.error and a.chunk_tokens == [1]
    assert b.error_type == "stream_error" and "bad thing" in b.error and b.chunk_tokens == [2]


async def test_http_errors_keep_status_and_body(serve):
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: 44\r\n\r\n" + b'{"error": {"message": "overloaded, retry"}}'.ljust(44),
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"slow down please", [5]),
    ]

    srv = await serve(replies(answers))
    async with HttpPool() as pool:
        a = await send_request(pool, req(srv.url), RunClock())
        b = await send_request(pool, req(srv.url), RunClock())
        assert pool.opened == 1                      # error responses keep the connection
    assert a.error_type == "http_5xx" and a.http_status == 503
    assert a.error == "HTTP 503: overloaded, retry"
    assert b.error_type == "http_4xx" and b.http_status == 429 and "slow down please" in b.error
    assert a.chunk_tokens == [] and a.n_output == 0


async def test_drop_mid_stream_keeps_what_arrived(serve):
    async def script(w, request, conn_no, req_no):
        w.write(SSE_HEAD + chunked(tok_event(1) + tok_event(1), [4096])[:-5])  # no terminator
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()
        return False

    srv = await serve(script)
    raw = await send_request(None, req(srv.url), RunClock())
    assert raw.error_type == "disconnect" and raw.http_status == 200
    assert raw.chunk_tokens == [1, 1]


async def test_closed_before_response_is_disconnect_and_refused_is_connect(serve):
    async def script(w, request, conn_no, req_no):
        return False                               # read the request, close without answering

    srv = await serve(script)
    raw = await send_request(None, req(srv.url), RunClock())
    assert raw.error_type == "disconnect" and raw.http_status is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = await send_request(None, req(f"http://127.0.0.1:{port}"), RunClock())
    assert raw.error_type == "connect" and "cannot connect" in raw.error


async def test_timeout_mid_stream(serve):
    async def script(w, request, conn_no, req_no):
        w.write(SSE_HEAD + b"%x\r\n%b\r\n" % (len(tok_event(1)), tok_event(1)))
        await w.drain()
        await asyncio.sleep(5)
        return False

    srv = await serve(script)
    t0 = time.perf_counter()
    raw = await send_request(None, req(srv.url, timeout_s=0.3), RunClock())
    took = time.perf_counter() - t0
    assert raw.error_type == "timeout" and "0.3" in raw.error
    assert raw.chunk_tokens == [1]                 # the token that came is kept
    assert 0.25 < took < 2.0


async def test_keep_alive_reuse_close_and_stale_connections(serve):
    async def script(w, request, conn_no, req_no):
        extra = b"Connection: close\r\n" if req_no == 2 else b""
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + extra +
                b"Transfer-Encoding: chunked\r\n\r\n" +
                chunked(tok_event(1, "stop") + event(b"[DONE]"), [9]))
        await w.drain()
        if req_no == 4:                            # close this kept-alive connection while idle
            await asyncio.sleep(0.05)
            return False
        return req_no != 2

    srv = await serve(script)
    async with HttpPool() as pool:
        for i in range(3):
            raw = await send_request(pool, req(srv.url, rid=f"k{i}"), RunClock())
            assert raw.ok
        assert pool.opened == 1 and srv.n_conns == 1      # three requests, one connection
        raw = await send_request(pool, req(srv.url), RunClock())   # after Connection: close
        assert raw.ok and pool.opened == 2
        raw = await send_request(pool, req(srv.url), RunClock())
        assert raw.ok and pool.opened == 2
        await asyncio.sleep(0.2)                   # the server closed the idle connection
        raw = await send_request(pool, req(srv.url), RunClock())
        assert raw.ok, raw.error
        assert pool.opened == 3 and srv.n_conns == 3


async def test_non_streamed_and_until_close_bodies(serve):
    full = json.dumps({"choices": [{"index": 0, "text": " a b c", "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": 3}}).encode()
    sse = tok_event(2, "length") + event(b"[DONE]")

    async def script(w, request, conn_no, req_no):
        if req_no == 0:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(full), full))
            await w.drain()
            return True
        w.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + sse[:9])
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(sse[9:])
        await w.drain()
        return False                               # the body ends when the connection does

    srv = await serve(script)
    async with HttpPool() as pool:
        a = await send_request(pool, req(srv.url), RunClock())
        b = await send_request(pool, req(srv.url), RunClock())
    assert a.ok and a.chunk_tokens == [1] and a.n_output == 3 and a.text == " a b c"
    assert b.ok and b.chunk_tokens == [2] and b.finish_reason == "length"


async def test_malformed_chunk_framing_is_stream_error(serve):
    async def script(w, request, conn_no, req_no):
        w.write(SSE_HEAD + b"zz\r\nnonsense\r\n")
        await w.drain()
        await asyncio.sleep(0.5)
        return False

    srv = await serve(script)
    raw = await send_request(None, req(srv.url), RunClock())
    assert raw.error_type == "stream_error" and "chunk size" in raw.error


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https(tmp_path):
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(crt, key)

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SSE_HEAD + chunked(tok_event(3, "length") + event(b"[DONE]"), [5]))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        cctx = ssl.create_default_context(cafile=str(crt))
        async with HttpPool(ssl_context=cctx) as pool:
            raw = await send_request(pool, req(f"https://localhost:{port}"), RunClock())
        assert raw.ok, raw.error
        assert raw.chunk_tokens == [3]
        # the default context verifies certificates: a self-signed one is refused
        raw = await send_request(None, req(f"https://localhost:{port}"), RunClock())
        assert raw.error_type == "connect" and "SSL" in raw.error
    finally:
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------- parser property
class _FakeTransport:
    def __init__(self):
        self.written = []
        self.closed = False

    def write(self, b):
        self.written.append(b)

    def close(self):
        self.closed = True

    abort = close

    def is_closing(self):
        return self.closed


def _feed(frags: list[bytes]):
    """Feed response fragments to a client connection as separate reads; read k (1-based) is
    stamped with time k. Returns the completed Response."""
    clock = iter(range(1, 100_000))
    saved = http_client._perf
    http_client._perf = lambda: next(clock)
    loop = asyncio.new_event_loop()
    try:
        conn = http_client._Conn(HttpPool(), ("http", "x", 80))
        conn.connection_made(_FakeTransport())
        fut = loop.create_future()
        conn.start(b"GET / HTTP/1.1\r\n\r\n", fut)
        for f in frags:
            conn.data_received(f)
        assert fut.done(), "response not complete"
        return fut.result()
    finally:
        loop.close()
        http_client._perf = saved


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.binary(min_size=0, max_size=40).map(
           lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), min_size=1, max_size=8),
       sizes=st.lists(st.integers(1, 60), min_size=1, max_size=5),
       cuts=st.lists(st.integers(0, 2000), max_size=25),
       crlf=st.booleans())
def test_parser_any_read_split(events, sizes, cuts, crlf):
    nl = b"\r\n" if crlf else b"\n"
    lines = [b"data: " + e for e in events]
    body = b"".join(ln + nl + nl for ln in lines)
    wire = SSE_HEAD + chunked(body, sizes)
    pts = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    frags = [wire[a:b] for a, b in zip(pts, pts[1:]) if b > a]
    resp = _feed(frags)
    assert resp.complete and resp.status == 200 and resp.keep_alive
    assert resp.body() == body
    # wire offset of every body byte (walk the chunked framing)
    wire_of_body, i = [], len(SSE_HEAD)
    while True:
        j = wire.index(b"\r\n", i)
        n = int(wire[i:j], 16)
        if n == 0:
            break
        wire_of_body.extend(range(j + 2, j + 2 + n))
        i = j + 2 + n + 2
    frag_end = [sum(len(f) for f in frags[:k + 1]) for k in range(len(frags))]
    got = [(t, ln.strip()) for t, ln in sse_lines(resp.pieces) if ln.strip()]
    assert [ln for _, ln in got] == [ln.strip() for ln in lines]
    # each line is timed by the read that delivered its newline (its last byte)
    pos = 0
    for ln, (t, _) in zip(lines, got):
        w = wire_of_body[pos + len(ln) + len(nl) - 1]
        assert t == 1 + next(k for k, end in enumerate(frag_end) if end > w)
        pos += len(ln) + 2 * len(nl)


def test_parser_interim_response_and_content_length():
    resp = _feed([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Len",
                  b"gth: 7\r\nContent-Type: application/json\r\n\r\n{\"a\"", b":1}"])
    assert resp.status == 200 and resp.body() == b'{"a":1}' and resp.complete
    assert resp.headers["content-type"] == "application/json"
    assert [t for t, _ in resp.pieces] == [2, 3] and resp.end_ns == 3


def test_build_request_rejects_header_injection():
    with pytest.raises(ValueError):
        build_request("POST", "http://h/x", {"X-A": "1\r\nEvil: 2"}, b"")
    with pytest.raises(ValueError):
        build_request("POST", "ftp://h/x", {}, b"")
    origin, wire = build_request("POST", "http://h:81/a?b=1", {"X": "y"}, b"{}")
    assert origin == ("http", "h", 81)
    assert wire.startswith(b"POST /a?b=1 HTTP/1.1\r\nHost: h:81\r\n") and wire.endswith(b"\r\n\r\n{}")


async def test_mock_server_routes_keep_alive_and_log(mock):
    """The lean mock (backends/mock_http.py): routes and errors, keep-alive with our pool, and a
    log whose chunk times follow the schedule."""
    srv = await mock(ttft_s=0.02, token_delay_s=0.004, tokens_per_chunk=2, include_token_ids=True)
    async with HttpPool() as pool:
        for i in range(5):
            raw = await send_request(pool, req(srv.url, rid=f"m{i}"), RunClock())
            assert raw.ok and raw.chunk_tokens == [2, 2, 2, 2] and raw.n_output == 8
        assert pool.opened == 1
        origin, wire = build_request("POST", srv.url + "/v1/completions", {}, b"{not json")
        assert (await pool.request(origin, wire)).status == 400
        origin, wire = build_request("GET", srv.url + "/nope", {})
        assert (await pool.request(origin, wire)).status == 404
        origin, wire = build_request("GET", srv.url + "/v1/completions", {})
        assert (await pool.request(origin, wire)).status == 405
        origin, wire = build_request("GET", srv.url + "/v1/models", {})
        r = await pool.request(origin, wire)
        assert r.status == 200 and json.loads(r.body())["data"][0]["id"] == "mock-model"
        # non-streamed: one JSON body after the whole output's time
        raw = await send_request(pool, req(srv.url, rid="ns", extra_body={"stream": False}),
                                 RunClock())
        assert raw.ok and raw.n_output == 8 and raw.chunk_tokens == [1]
        assert pool.opened == 1
    log = {e["request_id"]: e for e in srv.log}
    for i in range(5):
        e = log[wire_request_id(f"m{i}")]
        assert e["chunk_tokens"] == [2, 2, 2, 2]
        gaps = [b - a for a, b in zip(e["chunk_target_s"], e["chunk_target_s"][1:])]
        assert gaps == pytest.approx([0.008] * 3)
        assert e["chunk_target_s"][0] == pytest.approx(e["received_s"] + 0.02)
        # a chunk never leaves before its time (batching may send it up to 0.2 ms early)
        assert all(s - t > -0.00025 for s, t in zip(e["chunk_s"], e["chunk_target_s"]))


def test_event_loop_choice(monkeypatch):
    from infer_bench.backends.client import aioloop

    async def which():
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.setenv("INFER_BENCH_UVLOOP", "0")
    assert aioloop.loop_name() == "asyncio" and aioloop.run(which()).startswith("asyncio")
    monkeypatch.delenv("INFER_BENCH_UVLOOP")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert aioloop.loop_name() == "asyncio"
    else:
        assert aioloop.loop_name() == "uvloop" and aioloop.run(which()).startswith("uvloop")
    assert aioloop.raise_open_files_limit() != 0
