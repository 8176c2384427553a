"""Minimal asyncio HTTP/1.1 server and a one-timer write scheduler, for the mock server.

Role in the data flow: `backends/mock_server.py` (the calibrated mock OpenAI server) is built on
this so that one core can emit tens of thousands of SSE events per second with known send times:
aiohttp's per-write machinery cannot (it saturates near 20k events/s). Only what the mock needs:
- `ServerConn`: one connection; parses requests (request line, headers, Content-Length body;
  no chunked request bodies, no pipelining beyond buffering the next request until the current
  response ended); `Request.t_recv` is the time (perf_counter seconds) of the socket read that
  delivered the request's first byte: on Linux connections are `backends/rawsock.py`
  transports and it is the kernel's receive time of that read (`Request.recv_kernel` True), so
  a stall of the mock between the request's arrival and its parsing does not move it; otherwise
  (other systems, `INFER_BENCH_KERNEL_TS=0`: asyncio/uvloop transports) `perf_counter()` right
  after the read. The handler is a plain function `handler(conn, request)` that answers now
  (`respond`) or later (`start_stream` / `write` / `end_stream`, or `respond` from a timer);
- `frame(data)`: one chunk of chunked transfer-encoding;
- `Ticker`: one loop timer for all scheduled callbacks (a heap by due time): every callback due
  within `early_s` runs in one batch, so thousands of streams cost one timer wake-up per batch
  instead of one per event.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any, Callable

from ..client import rawsock

__all__ = ["Request", "ServerConn", "Ticker", "frame", "start_server"]

_perf = time.perf_counter
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


def frame(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "t_recv", "keep_alive",
                 "recv_kernel")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 t_recv: float, keep_alive: bool, recv_kernel: bool = False):
        self.method, self.path, self.query = method, path, query
        self.headers, self.body, self.t_recv, self.keep_alive = headers, body, t_recv, keep_alive
        self.recv_kernel = recv_kernel


class ServerConn(asyncio.Protocol):
    """One server-side connection, driven by a `rawsock.RawTransport` (`data_at`) with kernel
    timestamps, else by an asyncio transport (`data_received`). `closed` turns True when the
    peer went away."""

    def __init__(self, handler: Callable[["ServerConn", Request], Any], conns: set):
        self.handler = handler
        self.conns = conns
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.t_first = 0.0
        self.k_first = False
        self.t_read = 0.0
        self.k_read = False
        self.busy = False
        self.keep_alive = True
        self.closed = False
        self.on_lost: list[Callable[[], Any]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conns.add(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.transport = None                   # no protocol <-> transport cycle left behind
        self.conns.discard(self)
        for cb in self.on_lost:
            cb()
        self.on_lost.clear()

    def data_received(self, data: bytes) -> None:
        self.data_at(time.perf_counter_ns(), data, False)

    def data_at(self, t_ns: int, data: bytes, kernel: bool) -> None:
        """One read's bytes; `t_ns` its time (perf_counter_ns; `kernel`: the kernel's)."""
        t = self.t_read = t_ns / 1e9
        self.k_read = kernel
        if not self.buf:
            self.t_first, self.k_first = t, kernel
            self.buf = data
        else:
            self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        buf = self.buf
        if not buf or self.closed:
            return
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > _MAX_HEAD:
                self._error(400, "request headers too large")
            return
        lines = buf[:i].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._error(400, "bad request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._error(400, "chunked request bodies are not supported")
            return
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            self._error(400, "bad Content-Length")
            return
        if length > _MAX_BODY:
            self._error(413, "body too large")
            return
        end = i + 4 + length
        if len(buf) < end:
            return
        body = buf[i + 4:end]
        self.buf = buf[end:]
        t_recv, k_recv = self.t_first, self.k_first
        if self.buf:                       # the next request's bytes came in the latest read
            self.t_first, self.k_first = self.t_read, self.k_read
        conn_hdr = headers.get("connection", "").lower()
        keep = (parts[2] == "HTTP/1.1" and "close" not in conn_hdr) or "keep-alive" in conn_hdr
        path, _, query = parts[1].partition("?")
        req = Request(parts[0], path, query, headers, body, t_recv, keep, k_recv)
        self.keep_alive = keep
        self.busy = True
        self.handler(self, req)

    def _error(self, status: int, msg: str) -> None:
        self.keep_alive = False
        self.busy = True
        self.respond(status, b'{"error": {"message": "%s"}}' % msg.encode())

    # ------------------------------------------------------------ answering
    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        h = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"]
        for k, v in headers.items():
            h.append(f"{k}: {v}\r\n")
        if not self.keep_alive:
            h.append("Connection: close\r\n")
        h.append("\r\n")
        return "".join(h).encode("latin-1")

    def respond(self, status: int, body: bytes, content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> None:
        """A whole response with Content-Length; ends the exchange."""
        if self.closed:
            return
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body))}
        if headers:
            hdrs.update(headers)
        self.transport.write(self._head(status, hdrs) + body)
        self._done()

    def start_stream(self, status: int = 200, headers: dict[str, str] | None = None,
                     first: bytes = b"") -> None:
        """Send the head of a chunked response (and `first`, already framed, with it)."""
        if self.closed:
            return
        hdrs = dict(headers or {})
        hdrs["Transfer-Encoding"] = "chunked"
        self.transport.write(self._head(status, hdrs) + first)

    def write(self, data: bytes) -> None:
        """Raw bytes (framed chunks) of the response in progress."""
        if not self.closed:
            self.transport.write(data)

    def end_stream(self, last: bytes = b"") -> None:
        """`last` (framed chunks) and the terminating chunk; ends the exchange."""
        if self.closed:
            return
        self.transport.write(last + b"0\r\n\r\n")
        self._done()

    def close(self) -> None:
        """Drop the connection (graceful close: what was written still goes out)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _done(self) -> None:
        self.busy = False
        if not self.keep_alive:
            self.close()
        elif self.buf:
            self._next()


class Ticker:
    """Run callbacks at perf_counter times, batched on one loop timer."""

    def __init__(self, early_s: float = 0.0002):
        self.early_s = early_s
        self.heap: list = []
        self.seq = itertools.count()
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = float("inf")
        self.running = False                 # inside a batch: re-armed once at its end
        self.loop: asyncio.AbstractEventLoop | None = None

    def at(self, when: float, fn: Callable[[Any], Any], arg: Any) -> None:
        heapq.heappush(self.heap, (when, next(self.seq), fn, arg))
        if when < self.armed_at and not self.running:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self.armed_at = when
        self.handle = self.loop.call_later(max(0.0, when - _perf() - self.early_s), self._run)

    def _run(self) -> None:
        self.handle = None
        self.armed_at = float("inf")
        heap = self.heap
        pop = heapq.heappop
        self.running = True
        try:
            limit = _perf() + self.early_s
            while heap and heap[0][0] <= limit:
                _, _, fn, arg = pop(heap)
                fn(arg)
                limit = _perf() + self.early_s
        finally:
            self.running = False
            if heap:
                self._arm(heap[0][0])

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = None
        self.heap.clear()
        self.armed_at = float("inf")


async def start_server(handler: Callable[[ServerConn, Request], Any], host: str, port: int,
                       kernel_ts: bool | None = None) -> tuple[Any, set]:
    """Listen on host:port (0: a free port); returns (server, live connections). `kernel_ts`:
    see backends/rawsock.py (None: the environment's choice)."""
    conns: set = set()
    if rawsock.kernel_ts_wanted(kernel_ts):
        server = await rawsock.start_server(lambda: ServerConn(handler, conns), host, port,
                                            backlog=2048, kernel_ts=True)
    else:
        server = await asyncio.get_running_loop().create_server(
            lambda: ServerConn(handler, conns), host, port, reuse_address=True, backlog=2048)
    return server, conns
