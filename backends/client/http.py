"""Lean asyncio HTTP/1.1 client: the load generator's transport (the hot path of every request).

Role in the data flow: `backends/openai.py` builds a request's bytes once (`build_request`) and
calls `HttpPool.request(origin, wire)`; this module writes them on a keep-alive connection and
returns a `Response` whose body is kept as a list of `(perf_counter_ns, bytes)` pieces: every
piece carries the time of the socket read that delivered it, taken before any parsing. On Linux,
plain TCP (http://) connections are read by `backends/rawsock.py` with recvmsg and that time is
the kernel's receive time of the read's data (SO_TIMESTAMPNS), so a stall of this process
between the data's arrival and the read does not move it; otherwise (https://, other systems,
`INFER_BENCH_KERNEL_TS=0` / `HttpPool(kernel_ts=False)`: an asyncio/uvloop transport, as before;
or a read without a kernel time) it is `perf_counter_ns()` taken right after the read.
`Response.reads` / `kernel_reads` count the response's reads and those timed by the kernel.
Nothing is decoded while the stream runs beyond the HTTP framing (status line, headers, chunked
transfer-encoding / Content-Length); SSE and JSON are parsed by the caller after the response is
complete, so the event loop spends a few microseconds per read and timestamps do not wait for
parsing.

Why not aiohttp: its send path alone costs ~0.8 ms of CPU per request and its per-read machinery
saturates one core near 100 streamed requests/s (64 events each); this client does the same job
with a small fraction of the work.

Pool: idle connections are kept per (scheme, host, port) and reused (HTTP/1.1 keep-alive) when
the previous response ended cleanly (complete body, no `Connection: close`); a connection that
the server closed while idle is dropped (and a request sent on one that turns out closed before
any response byte is retried once on a new connection). There is no connection limit (an
open-loop load generator must never queue sends in the client); closed-loop callers bound
concurrency themselves. https URLs use an `ssl.SSLContext` (the default verifying one unless
given).

Errors, as exceptions from `HttpPool.request`: `ConnectError` (no connection could be opened),
`DisconnectError` (the connection ended before the response was complete; `.response` holds what
arrived, `.started` says whether any response byte came), `ProtocolError` (malformed response
framing; `.response` holds what arrived) and `asyncio.TimeoutError` (the caller's deadline
passed; the connection is aborted; `.response` likewise attached when available).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from urllib.parse import urlsplit

from . import rawsock

__all__ = ["HttpPool", "Response", "build_request", "split_url", "HttpError", "ConnectError",
           "DisconnectError", "ProtocolError"]

_perf = time.perf_counter_ns
_MAX_HEADER = 64 * 1024

# parser states
_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class HttpError(Exception):
    """Base of this module's request failures."""

    response: "Response | None" = None


class ConnectError(HttpError):
    pass


class DisconnectError(HttpError):
    def __init__(self, msg: str, response: "Response | None" = None, started: bool = False):
        super().__init__(msg)
        self.response = response
        self.started = started


class ProtocolError(HttpError):
    def __init__(self, msg: str, response: "Response | None" = None):
        super().__init__(msg)
        self.response = response


def split_url(url: str) -> tuple[tuple[str, str, int], str, str]:
    """`http://h:p/path?q` -> ((scheme, host, port), "/path?q", "h:p" for the Host header)."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = u.port or (443 if scheme == "https" else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    host_header = u.netloc.rsplit("@", 1)[-1]
    return (scheme, u.hostname, port), target, host_header


def build_request(method: str, url: str, headers: dict[str, str], body: bytes = b""
                  ) -> tuple[tuple[str, str, int], bytes]:
    """The wire bytes of one request: (origin, bytes). Header values must not contain CR/LF."""
    origin, target, host_header = split_url(url)
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"]
    lower = {k.lower() for k in headers}
    for k, v in headers.items():
        v = str(v)
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
            raise ValueError(f"invalid header {k!r}")
        parts.append(f"{k}: {v}\r\n")
    if body or method not in ("GET", "HEAD"):
        parts.append(f"Content-Length: {len(body)}\r\n")
    if "user-agent" not in lower:
        parts.append("User-Agent: infer-bench\r\n")
    parts.append("\r\n")
    return origin, "".join(parts).encode("utf-8") + body


class Response:
    """One HTTP response. `pieces`: body bytes as (perf_counter_ns of the read, bytes);
    `first_ns`: the read that delivered the first response byte; `end_ns`: the read that
    completed the body (or the time the connection ended); `reads` / `kernel_reads`: socket
    reads that delivered it, and how many of them were timed by the kernel; `send_ns`: the
    request's send time (see `HttpPool.request`)."""

    __slots__ = ("status", "reason", "version", "headers", "pieces", "first_ns", "head_ns",
                 "end_ns", "complete", "keep_alive", "reads", "kernel_reads", "send_ns")

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self.version = ""
        self.headers: dict[str, str] = {}
        self.pieces: list[tuple[int, bytes]] = []
        self.first_ns: int | None = None
        self.head_ns: int | None = None
        self.end_ns: int | None = None
        self.complete = False
        self.keep_alive = False
        self.reads = 0
        self.kernel_reads = 0
        self.send_ns: int | None = None

    @property
    def timestamps(self) -> str | None:
        """"kernel" (every read timed by the kernel), "user", "mixed", or None (no read)."""
        if not self.reads:
            return None
        if self.kernel_reads == self.reads:
            return "kernel"
        return "user" if not self.kernel_reads else "mixed"

    def body(self) -> bytes:
        return b"".join(p for _, p in self.pieces)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class _Conn(asyncio.Protocol):
    """One client connection; parses the response of the request in flight. Driven by a
    `rawsock.RawTransport` (`data_at`) with kernel timestamps, else by an asyncio transport
    (`data_received`)."""

    __slots__ = ("pool", "origin", "transport", "closed", "resp", "fut", "state", "buf",
                 "remaining", "uses", "connect_ns")

    def __init__(self, pool: "HttpPool", origin: tuple[str, str, int]):
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.resp: Response | None = None
        self.fut: asyncio.Future | None = None
        self.state = _DONE
        self.buf = b""
        self.remaining = 0
        self.uses = 0
        self.connect_ns = 0                 # time its connect took (counted in the first send)

    # ------------------------------------------------------------ protocol callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        t = _perf()
        self.closed = True
        self.transport = None                   # no protocol <-> transport cycle left behind
        self.pool._forget(self)
        r, fut = self.resp, self.fut
        if r is None or fut is None or fut.done():
            return
        if self.state == _UNTIL_CLOSE:
            self._finish(t, keep_alive=False)
            return
        r.end_ns = t
        started = r.first_ns is not None
        why = f": {exc}" if exc else ""
        self.resp = self.fut = None
        fut.set_exception(DisconnectError(
            ("connection closed mid-response" if started else "server closed the connection "
             "before responding") + why, r, started))

    def data_received(self, data: bytes) -> None:
        self.data_at(_perf(), data, False)

    def data_at(self, t: int, data: bytes, kernel: bool) -> None:
        """One read's bytes, `t` its time (perf_counter_ns; `kernel`: the kernel's)."""
        r = self.resp
        if r is None:                       # bytes nobody asked for: drop the connection
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        r.reads += 1
        if kernel:
            r.kernel_reads += 1
        if r.first_ns is None:
            r.first_ns = t
        state = self.state
        # fast path: one whole chunk of a chunked body per read ("<hex>\r\n<data>\r\n")
        if state == _CHUNK_SIZE and not self.buf:
            i = data.find(b"\r\n")
            if i > 0:
                try:
                    size = int(data[:i], 16)
                except ValueError:
                    size = -1
                if size > 0 and len(data) == i + size + 4 and data.endswith(b"\r\n"):
                    r.pieces.append((t, data[i + 2:i + 2 + size]))
                    return
        try:
            self._parse(t, self.buf + data if self.buf else data)
        except ProtocolError as e:
            self._fail(e)

    # ------------------------------------------------------------ parsing
    def _parse(self, t: int, buf: bytes) -> None:
        r = self.resp
        pos, n = 0, len(buf)
        while True:
            state = self.state
            if state == _CHUNK_DATA:
                if pos >= n:
                    break
                end = pos + self.remaining
                if end <= n:
                    r.pieces.append((t, buf[pos:end]))
                    pos = end
                    self.remaining = 2
                    self.state = _CHUNK_CRLF
                else:
                    r.pieces.append((t, buf[pos:]))
                    self.remaining = end - n
                    pos = n
                    break
            elif state == _CHUNK_SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > 4096:
                        raise ProtocolError("chunk size line too long", r)
                    break
                line = buf[pos:i].split(b";", 1)[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}", r) from None
                if size < 0:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}", r)
                pos = i + 2
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.remaining = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                take = min(self.remaining, n - pos)
                if buf[pos:pos + take] != b"\r\n"[2 - self.remaining:2 - self.remaining + take]:
                    raise ProtocolError("missing CRLF after a chunk", r)
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                self.state = _CHUNK_SIZE
            elif state == _TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                empty = i == pos
                pos = i + 2
                if empty:
                    self._finish(t, keep_alive=r.keep_alive and pos == n)
                    return
            elif state == _LENGTH:
                take = min(self.remaining, n - pos)
                if take:
                    r.pieces.append((t, buf[pos:pos + take]))
                    pos += take
                    self.remaining -= take
                if not self.remaining:
                    self._finish(t, keep_alive=r.keep_alive and pos == n)
                    return
                break
            elif state == _UNTIL_CLOSE:
                if pos < n:
                    r.pieces.append((t, buf[pos:]))
                pos = n
                break
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n", pos)
                if i < 0:
                    if n - pos > _MAX_HEADER:
                        raise ProtocolError("response headers too large", r)
                    break
                head = buf[pos:i]
                pos = i + 4
                if self._headers(t, head):      # 1xx: another header block follows
                    continue
                if self.state == _DONE:         # no body
                    self._finish(t, keep_alive=r.keep_alive and pos == n)
                    return
            else:
                break
        self.buf = buf[pos:] if pos < n else b""

    def _headers(self, t: int, head: bytes) -> bool:
        """Parse one header block; set the body state. True for an interim (1xx) response."""
        r = self.resp
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"bad status line {lines[0][:80]!r}", r)
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0][:80]!r}", r) from None
        if 100 <= status < 200:
            return True
        r.version, r.status = parts[0], status
        r.reason = parts[2] if len(parts) > 2 else ""
        r.head_ns = t
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if not sep:
                continue
            k = k.strip().lower()
            v = v.strip()
            hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
        r.headers = hdrs
        conn = hdrs.get("connection", "").lower()
        r.keep_alive = (r.version == "HTTP/1.1" and "close" not in conn) or (
            r.version == "HTTP/1.0" and "keep-alive" in conn)
        te = hdrs.get("transfer-encoding", "").lower()
        if status in (204, 304):
            self.state = _DONE
        elif "chunked" in te:
            self.state = _CHUNK_SIZE
        elif "content-length" in hdrs:
            try:
                length = int(hdrs["content-length"].split(",")[0])
            except ValueError:
                raise ProtocolError("bad Content-Length", r) from None
            self.remaining = length
            self.state = _LENGTH if length > 0 else _DONE
        else:
            self.state = _UNTIL_CLOSE
            r.keep_alive = False
        return False

    # ------------------------------------------------------------ completion
    def _finish(self, t: int, keep_alive: bool) -> None:
        r, fut = self.resp, self.fut
        r.end_ns = t
        r.complete = True
        self.resp = self.fut = None
        self.state = _DONE
        self.buf = b""
        if keep_alive and not self.closed:
            self.pool._release(self)
        else:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if fut is not None and not fut.done():
            fut.set_result(r)

    def _fail(self, exc: BaseException) -> None:
        fut = self.fut
        self.resp = self.fut = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    # ------------------------------------------------------------ sending
    def start(self, wire: bytes, fut: asyncio.Future) -> Response:
        r = Response()
        self.resp, self.fut = r, fut
        self.state = _HEAD
        self.buf = b""
        self.uses += 1
        self.transport.write(wire)
        return r


class HttpPool:
    """Keep-alive connections per origin; `await request(origin, wire)` -> Response.
    `kernel_ts`: time reads with the kernel's receive timestamps on plain TCP (None: the
    `INFER_BENCH_KERNEL_TS` environment variable, default on; always off except on Linux; see
    backends/rawsock.py)."""

    def __init__(self, ssl_context: _ssl.SSLContext | None = None,
                 kernel_ts: bool | None = None):
        self._ssl = ssl_context
        self.kernel_ts = rawsock.kernel_ts_wanted(kernel_ts)
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._conns: set[_Conn] = set()
        self.opened = 0                     # connections opened so far (tests, diagnostics)
        self.closed = False

    def _ssl_context(self) -> _ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: tuple[str, str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        conn = _Conn(self, origin)
        try:
            if scheme == "http" and self.kernel_ts:
                transport = await rawsock.open_connection(host, port, conn, True)
                conn.connect_ns = transport.connect_ns
            else:
                kw = {"ssl": self._ssl_context(), "server_hostname": host} \
                    if scheme == "https" else {}
                t0 = _perf()
                await loop.create_connection(lambda: conn, host, port, **kw)
                conn.connect_ns = _perf() - t0
        except (OSError, _ssl.SSLError) as e:
            raise ConnectError(f"cannot connect to {host}:{port}: {type(e).__name__}: {e}") \
                from e
        self.opened += 1
        self._conns.add(conn)
        return conn

    def _take_idle(self, origin) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            c = idle.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():
                return c
        return None

    def _release(self, conn: _Conn) -> None:
        if self.closed:
            conn.closed = True
            conn.transport.close()
            return
        self._idle.setdefault(conn.origin, []).append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    async def request(self, origin: tuple[str, str, int], wire: bytes, *,
                      timeout_s: float | None = None) -> Response:
        """Send `wire` (from build_request) and wait for the whole response. `timeout_s` bounds
        everything (connect included). The response's `send_ns` is the perf_counter_ns just
        before the bytes were first written, less the connect time when a new connection had
        to be opened for them (on plain TCP the handshake's time as the kernel measured it, see
        backends/rawsock.py): time this process spent before the write, e.g. noticing that the
        connection was up during a stall, is not part of it."""
        if self.closed:
            raise RuntimeError("HttpPool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s else None
        send_ns = None
        for attempt in (0, 1):
            conn = self._take_idle(origin)
            reused = conn is not None
            if conn is None:
                if deadline is None:
                    conn = await self._connect(origin)
                else:
                    conn = await asyncio.wait_for(self._connect(origin),
                                                  max(0.0, deadline - loop.time()))
            fut = loop.create_future()
            timer = None
            if deadline is not None:
                timer = loop.call_at(deadline, _expire, conn, fut, timeout_s)
            if send_ns is None:
                send_ns = _perf() - (0 if reused else conn.connect_ns)
            conn.start(wire, fut).send_ns = send_ns
            try:
                return await fut
            except DisconnectError as e:
                # a kept-alive connection the server had closed: retry once on a new one
                if reused and not e.started and attempt == 0:
                    continue
                raise
            except asyncio.CancelledError:
                if conn.fut is fut:          # mid-response: the connection cannot be reused
                    conn._fail(asyncio.CancelledError())
                raise
            finally:
                if timer is not None:
                    timer.cancel()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every connection (idle or busy)."""
        self.closed = True
        for c in list(self._conns):
            c.closed = True
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()
        self._idle.clear()

    async def __aenter__(self) -> "HttpPool":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


def _expire(conn: _Conn, fut: asyncio.Future, timeout_s: float) -> None:
    """The request's deadline passed: abort its connection, fail it with a TimeoutError that
    carries what arrived so far."""
    if fut.done():
        return
    r = conn.resp if conn.fut is fut else None
    if r is not None:
        r.end_ns = _perf()
    err = asyncio.TimeoutError(f"no complete response within {timeout_s} s")
    err.response = r  # type: ignore[attr-defined]
    conn._fail(err)
    if not fut.done():
        fut.set_exception(err)
