"""Kernel receive timestamps (backends/rawsock.py) on real loopback sockets: a chunk's time is
when it arrived, not when a stalled event loop got to read it (client), a request's received
time likewise (mock server), the send time leaves out a stall while connecting; and the
fallbacks (timestamps turned off by parameter or environment, a read without a kernel time, no
TCP_INFO) give the user-space times. Each stall test runs both ways, so it fails if the kernel
time is not what is recorded, or if the fallback pretends to be one. Plus the transport's
write buffering / close, and one exchange on uvloop."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time

import pytest

from infer_bench.backends.client import rawsock
from infer_bench.backends.client.http import HttpPool
from infer_bench.backends.mock.server import start_mock_server
from infer_bench.backends.client.openai import PreparedRequest, RunClock, build_wire, send_request

pytestmark = pytest.mark.timeout(60)

KERNEL = rawsock.kernel_ts_wanted(True)       # this host can give kernel receive times
needs_kernel = pytest.mark.skipif(not KERNEL, reason="kernel receive timestamps need Linux")


@pytest.fixture
def stamping(kernel_timestamps_on):
    """A kernel-timestamp case: the host's receive timestamping is on (conftest.py); skipped on
    a Linux whose kernel does not stamp received TCP data at all (e.g. some sandboxes)."""
    if not kernel_timestamps_on:
        pytest.skip("this kernel does not stamp received TCP data")
MS = 1_000_000
STALL_S = 0.2                                 # how long the tests block the event loop

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def tok_event(finish=None) -> bytes:
    obj = {"choices": [{"index": 0, "text": " t", "token_ids": [1], "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def req(url, rid="r1", **kw):
    return PreparedRequest(rid, "hello world", max_tokens=kw.pop("max_tokens", 2), url=url, **kw)


def modes():
    """(kernel timestamps asked for, expected source) pairs this host can run."""
    return [pytest.param(True, marks=needs_kernel, id="kernel"), pytest.param(False, id="user")]


class OneShotServer:
    """A blocking loopback server in a thread: accepts one connection, reads one request, then
    calls `script(sock)`."""

    def __init__(self, script):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.script = script
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.lsock.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.script(conn)
            time.sleep(0.05)

    def close(self):
        self.thread.join(5)
        self.lsock.close()


@pytest.mark.parametrize("kernel", modes())
async def test_chunk_time_is_its_arrival_not_the_stalled_read(kernel, request):
    """The server sends the first chunk while the client's event loop is blocked: with kernel
    timestamps the chunk is timed at its arrival; without, at the read after the stall."""
    if kernel:
        request.getfixturevalue("stamping")
    got_request, go, marks = threading.Event(), threading.Event(), {}

    def script(sock):
        got_request.set()
        time.sleep(0.02)                        # well inside the client's stall
        marks["before"] = time.perf_counter_ns()
        sock.sendall(SSE_HEAD + frame(tok_event()))
        marks["after"] = time.perf_counter_ns()
        go.wait(5)
        sock.sendall(frame(tok_event("length") + b"data: [DONE]\n\n") + b"0\r\n\r\n")

    srv = OneShotServer(script)
    clock = RunClock()
    try:
        async with HttpPool(kernel_ts=kernel) as pool:
            assert pool.kernel_ts is kernel
            task = asyncio.ensure_future(send_request(pool, req(srv.url), clock))
            while not got_request.is_set():
                await asyncio.sleep(0.001)
            time.sleep(STALL_S)                 # the event loop stalls; the chunk arrives
            unblocked = time.perf_counter_ns()
            await asyncio.sleep(0.05)           # the late read, before the next bytes come
            go.set()                            # (else one read takes both, timed by the last)
            raw = await task
    finally:
        srv.close()
    assert raw.ok, raw.error
    assert raw.chunk_tokens == [1, 1]
    assert marks["after"] < unblocked - 100 * MS      # the chunk did arrive during the stall
    t_first = clock.to_ns(raw.chunk_times_s[0])
    if kernel:
        assert raw.timestamps == "kernel"
        assert marks["before"] - MS < t_first < marks["after"] + 2 * MS, (
            (t_first - marks["before"]) / MS)
    else:
        assert raw.timestamps == "user"
        assert t_first >= unblocked


@pytest.mark.parametrize("kernel", modes())
async def test_mock_received_time_is_the_arrival_not_the_parse(kernel, request):
    """A request reaches the mock while the mock's event loop is blocked: `received_s` (and the
    schedule built on it) is the arrival with kernel timestamps, the late read without."""
    if kernel:
        request.getfixturevalue("stamping")
    srv = await start_mock_server("127.0.0.1", 0, kernel_ts=kernel, ttft_s=0.005,
                                  token_delay_s=0.001)
    try:
        _, wire = build_wire(req(srv.url, rid="late", max_tokens=1))
        with socket.create_connection(("127.0.0.1", srv.port)) as s:   # handshake by the kernel
            before = time.perf_counter_ns()
            s.sendall(wire)
            after = time.perf_counter_ns()
            time.sleep(STALL_S)                 # the mock's loop (this one) stalls
            unblocked = time.perf_counter_ns()
            for _ in range(2000):
                if srv.log and srv.log[0]["chunk_s"]:
                    break
                await asyncio.sleep(0.001)
        e = srv.log[0]
    finally:
        await srv.stop()
    t_recv = int(e["received_s"] * 1e9)
    assert e["chunk_target_s"][0] == pytest.approx(e["received_s"] + 0.005)
    if kernel:
        assert e["received_ts"] == "kernel"
        assert before - MS < t_recv < after + 2 * MS, (t_recv - before) / MS
    else:
        assert e["received_ts"] == "user"
        assert t_recv >= unblocked


@needs_kernel
@pytest.mark.parametrize("tcp_info", [pytest.param(True, id="kernel"),
                                      pytest.param(False, id="user")])
async def test_send_time_leaves_out_a_stall_while_connecting(mock, monkeypatch, tcp_info):
    """The client stalls right after the TCP handshake, before writing: the handshake's kernel
    time counts as connect time, the stall does not (it is send lateness); without TCP_INFO the
    user-space connect time (stall included) counts."""
    srv = await mock(ttft_s=0.005, token_delay_s=0.001)
    loop = asyncio.get_running_loop()
    real_connect = loop.sock_connect

    async def stalling_connect(sock, addr):
        await real_connect(sock, addr)
        time.sleep(0.05)

    monkeypatch.setattr(loop, "sock_connect", stalling_connect)
    if not tcp_info:
        monkeypatch.setattr(rawsock, "_TCP_INFO", None)
    clock = RunClock()
    async with HttpPool(kernel_ts=True) as pool:           # the raw transport's connect
        t0 = clock.now()
        raw = await send_request(pool, req(srv.url), clock)
        assert pool.opened == 1
    assert raw.ok, raw.error
    to_mock = srv.log[0]["received_s"] - clock.t0_ns / 1e9 - raw.send_s   # send -> arrival
    if tcp_info:
        assert -0.001 < to_mock < 0.005, to_mock
        assert raw.send_s - t0 > 0.045                  # the stall is before the send time
    else:
        assert to_mock > 0.045, to_mock


@needs_kernel
async def test_read_without_a_kernel_time_falls_back_to_user_time(stamping):
    """Kernel timestamps asked for, but a read comes without the cmsg: user-space time."""
    class Recorder:
        def __init__(self):
            self.reads, self.lost = [], asyncio.Event()

        def connection_made(self, transport):
            self.transport = transport

        def data_at(self, t, data, kernel):
            self.reads.append((t, data, kernel))

        def connection_lost(self, exc):
            self.lost.set()

    lsock = socket.create_server(("127.0.0.1", 0))
    rec = Recorder()
    tr = await rawsock.open_connection("127.0.0.1", lsock.getsockname()[1], rec, kernel_ts=True)
    peer, _ = lsock.accept()
    try:
        assert tr.kernel_ts and 0 < tr.connect_ns < 1_000 * MS
        peer.sendall(b"one")
        while not rec.reads:
            await asyncio.sleep(0.001)
        tr._sock.setsockopt(socket.SOL_SOCKET, rawsock.SO_TIMESTAMPNS, 0)   # stop asking
        sent = time.perf_counter_ns()
        peer.sendall(b"two")
        time.sleep(0.05)                                  # read late: user time shows it
        while len(rec.reads) < 2:
            await asyncio.sleep(0.001)
        assert [(d, k) for _, d, k in rec.reads] == [(b"one", True), (b"two", False)]
        assert rec.reads[1][0] >= sent + 50 * MS
        peer.close()                                      # EOF -> connection_lost
        await asyncio.wait_for(rec.lost.wait(), 5)
        assert tr.is_closing()
    finally:
        peer.close()
        lsock.close()


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("INFER_BENCH_KERNEL_TS", "0")
    assert rawsock.kernel_ts_wanted() is False and HttpPool().kernel_ts is False
    assert rawsock.kernel_ts_wanted(True) is KERNEL        # an explicit choice wins
    monkeypatch.setenv("INFER_BENCH_KERNEL_TS", "1")
    assert rawsock.kernel_ts_wanted() is KERNEL and HttpPool().kernel_ts is KERNEL
    assert rawsock._kernel_ns([]) == 0                     # no cmsg: no kernel time
    ts = (3).to_bytes(8, sys.byteorder) + (7).to_bytes(8, sys.byteorder)
    assert rawsock._kernel_ns([(socket.SOL_SOCKET, rawsock.SO_TIMESTAMPNS, ts)]) == 3 * 10**9 + 7
    assert rawsock._kernel_ns([(socket.SOL_SOCKET, rawsock.SO_TIMESTAMPNS + 1, ts)]) == 0


async def test_large_writes_are_buffered_and_flushed_before_close():
    """More than the socket buffers hold: write() keeps the rest and sends it as the peer
    reads; close() ends the connection only after everything went out."""
    class Quiet:
        def connection_made(self, transport):
            pass

        def data_at(self, t, data, kernel):
            pass

        def connection_lost(self, exc):
            self.exc = exc
            done.set()

    done = asyncio.Event()
    lsock = socket.create_server(("127.0.0.1", 0))
    payload = bytes(range(256)) * (128 * 1024)          # 32 MiB: more than socket buffers
    got = bytearray()

    def reader():
        conn, _ = lsock.accept()
        with conn:
            while True:
                time.sleep(0.001)
                b = conn.recv(1 << 20)
                if not b:
                    return
                got.extend(b)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    proto = Quiet()
    tr = await rawsock.open_connection("127.0.0.1", lsock.getsockname()[1], proto)
    tr.write(payload[:1000])
    tr.write(payload[1000:])
    assert tr._out                                       # not all of it fit at once
    tr.close()
    tr.write(b"ignored after close")
    await asyncio.wait_for(done.wait(), 30)
    th.join(10)
    lsock.close()
    assert proto.exc is None and bytes(got) == payload


def test_client_and_mock_on_uvloop(kernel_timestamps_on):
    """The raw transports under uvloop (add_reader / sock_connect on its loop)."""
    uvloop = pytest.importorskip("uvloop")

    async def main():
        srv = await start_mock_server("127.0.0.1", 0, ttft_s=0.005, token_delay_s=0.001)
        try:
            async with HttpPool() as pool:
                raws = [await send_request(pool, req(srv.url, rid=f"u{i}", max_tokens=3),
                                           RunClock()) for i in range(3)]
                opened = pool.opened
            return raws, opened, [e["received_ts"] for e in srv.log]
        finally:
            await srv.stop()

    loop = uvloop.new_event_loop()
    try:
        raws, opened, mock_ts = loop.run_until_complete(main())
    finally:
        loop.close()
    assert all(r.ok and r.chunk_tokens == [1, 1, 1] for r in raws), [r.error for r in raws]
    assert opened == 1
    want = "kernel" if kernel_timestamps_on and rawsock.kernel_ts_wanted() else "user"
    assert mock_ts == [want] * 3
    assert [r.timestamps for r in raws[1:]] == [want] * 2   # (the very first may be "mixed")
