"""Non-blocking TCP connections read with recvmsg, so that every read carries the kernel's
receive time.

Role in the data flow: when kernel timestamps are wanted (`kernel_ts_wanted`: on Linux, unless
turned off), `backends/http_client.py` (the load generator's plain-TCP connections) and
`backends/mock_http.py` (the mock server's connections) drive their protocol objects with a
`RawTransport` instead of an asyncio/uvloop transport. Those transports read with recv(), which
drops ancillary data; here the socket is watched with `loop.add_reader` and read with
`recvmsg_into`. On Linux, `SO_TIMESTAMPNS` makes the kernel attach to each read the time the
data arrived (SCM_TIMESTAMPNS, a struct timespec on CLOCK_REALTIME), converted at once to the
run clock (`perf_counter_ns`, CLOCK_MONOTONIC):

    t = kernel_realtime_ns - (time_ns() - perf_counter_ns())     (never later than now)

with the two clocks' offset measured right after each read (a clock step between two reads
cannot skew it; the realtime read is bracketed by two monotonic ones, so an interrupt between
them does not either). A stall of this process between the data's
arrival and the read (another process on the core, the VM descheduled, a page fault) then no
longer moves the timestamp. One limit: TCP gives one time per read, that of the newest segment
the read consumed (the kernel also merges queued segments under the newest one's time), so
bytes that piled up during a stall all get the arrival time of the last of them: still never
later than the user-space time, and exact whenever the reader keeps up.

When no kernel time comes (kernel timestamps not asked for, or a read without the cmsg:
the kernel switches stamping on lazily when the first socket of the host asks for it, so the
very first packets may come unstamped), the read's time is `perf_counter_ns()` taken right
after it, as an asyncio transport's `data_received` would see it; the protocol is told which.
`INFER_BENCH_KERNEL_TS=0` (or `kernel_ts=False`) disables kernel timestamps (the callers then
use asyncio's transports, as before: ~2.5 us less CPU per read), to compare the two.

Interface: a protocol object with `connection_made(transport)`, `data_at(t_ns, data, kernel)`
(`kernel`: the time came from the kernel) and `connection_lost(exc)`; the transport offers
`write`, `close` (after pending writes are out), `abort`, `is_closing` and `kernel_ts` (the
socket was set up for kernel timestamps). `open_connection` connects one and sets its
`connect_ns`: the TCP handshake's duration as the kernel measured it (TCP_INFO's round-trip time
of the SYN, when the SYN went out once), else the user-space time the connect took; so a stall
of this process while connecting is not counted as connection time. `RawServer` accepts
connections and gives each a RawTransport.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["RawTransport", "RawServer", "open_connection", "start_server", "kernel_ts_wanted",
           "SO_TIMESTAMPNS"]

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # == SCM_TIMESTAMPNS on Linux
_SOL_SOCKET = socket.SOL_SOCKET
_ANC_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TIMESPEC = struct.Struct("@qq")                    # struct timespec on 64-bit Linux
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCPI_RTT, _TCPI_TOTAL_RETRANS, _TCPI_LEN = 68, 100, 104   # offsets in Linux's struct tcp_info
_BUF_SIZE = 256 * 1024
_perf = time.perf_counter_ns
_real = time.time_ns
_local = threading.local()


def kernel_ts_wanted(flag: bool | None = None) -> bool:
    """Whether to ask for kernel receive timestamps: `flag` if given, else the environment
    (`INFER_BENCH_KERNEL_TS`, default on); always False off Linux."""
    if not sys.platform.startswith("linux") or not _ANC_SIZE:
        return False
    if flag is not None:
        return bool(flag)
    return os.environ.get("INFER_BENCH_KERNEL_TS", "1").strip().lower() not in (
        "0", "false", "no", "off")


def _read_buffer() -> memoryview:
    """One receive buffer per thread (every read is copied out of it at once)."""
    mv = getattr(_local, "buf", None)
    if mv is None:
        mv = _local.buf = memoryview(bytearray(_BUF_SIZE))
    return mv


def _realtime_minus_perf() -> int:
    """CLOCK_REALTIME - perf_counter_ns now, from a realtime read bracketed by two monotonic
    ones: an interrupt between the reads (tens of us, seen on VMs) would shift a single pair,
    so a bracket wider than 4 us is read again (at most twice more)."""
    m1 = _perf()
    r = _real()
    m2 = _perf()
    tries = 0
    while m2 - m1 > 4_000 and tries < 2:
        tries += 1
        m1 = _perf()
        r = _real()
        m2 = _perf()
    return r - ((m1 + m2) >> 1)


def _kernel_ns(ancdata: list) -> int:
    """The SCM_TIMESTAMPNS time (CLOCK_REALTIME ns) among a read's cmsgs; 0 if none."""
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return 0


class RawTransport:
    """One non-blocking TCP socket driving `protocol` (see the module docstring)."""

    __slots__ = ("_loop", "_sock", "_fd", "_protocol", "_out", "_closing", "_closed", "_view",
                 "kernel_ts", "connect_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any,
                 kernel_ts: bool | None = None):
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._out = bytearray()
        self._closing = False
        self._closed = False
        self._view = _read_buffer()
        self.connect_ns = 0
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.kernel_ts = False
        if kernel_ts_wanted(kernel_ts):
            try:
                sock.setsockopt(_SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_ts = True
            except OSError:
                pass
        loop.add_reader(self._fd, self._read)
        protocol.connection_made(self)

    # ------------------------------------------------------------ reading
    def _read(self) -> None:
        """One read; its time is the kernel's when the socket stamps (SO_TIMESTAMPNS set and a
        cmsg came), else perf_counter_ns right after the read."""
        try:
            n, anc, _, _ = self._sock.recvmsg_into((self._view,), _ANC_SIZE if self.kernel_ts else 0)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fatal(e)
            return
        now = _perf()
        if not n:
            self._eof()
            return
        k = _kernel_ns(anc) if anc else 0
        if k:
            t = k - _realtime_minus_perf()
            self._protocol.data_at(t if t < now else now, bytes(self._view[:n]), True)
        else:
            self._protocol.data_at(now, bytes(self._view[:n]), False)

    def _eof(self) -> None:
        """The peer closed its side: close ours once pending writes are out."""
        self.close()

    # ------------------------------------------------------------ writing
    def write(self, data: bytes) -> None:
        if self._closed or self._closing:
            return
        if not self._out:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._fatal(e)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._loop.add_writer(self._fd, self._flush)
        self._out += data

    def _flush(self) -> None:
        try:
            n = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fatal(e)
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._shut(None)

    # ------------------------------------------------------------ closing
    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        """Stop reading; close once pending writes are out; then `connection_lost(None)`."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._out:
            self._shut(None)

    def abort(self) -> None:
        """Close now, dropping pending writes; then `connection_lost(None)`."""
        self._out.clear()
        self._shut(None)

    def _fatal(self, exc: BaseException) -> None:
        self._out.clear()
        self._shut(exc)

    def _shut(self, exc: BaseException | None) -> None:
        """Release the socket now; tell the protocol on the loop's next turn (as asyncio's
        transports do, so it never runs inside the caller's own call)."""
        if self._closed:
            return
        self._closing = self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: BaseException | None) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)


def _numeric_addr(host: str, port: int) -> tuple | None:
    """(family, address) without a resolver call when `host` is an IP literal."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        return fam, ((host, port) if fam == socket.AF_INET else (host, port, 0, 0))
    return None


def handshake_ns(sock: socket.socket, user_ns: int) -> int:
    """A just-connected socket's handshake time: the kernel's SYN round trip (TCP_INFO) when it
    is known and no SYN was retransmitted, else `user_ns` (the time connect took as seen from
    here); never more than `user_ns`."""
    if _TCP_INFO is None or not sys.platform.startswith("linux"):
        return user_ns
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_LEN)
    except OSError:
        return user_ns
    if len(info) < _TCPI_LEN:
        return user_ns
    rtt_us = int.from_bytes(info[_TCPI_RTT:_TCPI_RTT + 4], sys.byteorder)
    retrans = int.from_bytes(info[_TCPI_TOTAL_RETRANS:_TCPI_TOTAL_RETRANS + 4], sys.byteorder)
    if rtt_us <= 0 or retrans:
        return user_ns
    return min(user_ns, rtt_us * 1000)


async def open_connection(host: str, port: int, protocol: Any,
                          kernel_ts: bool | None = None) -> RawTransport:
    """Connect to host:port (each resolved address in turn) and drive `protocol`; raises
    OSError when no address accepts. The transport's `connect_ns`: see the module docstring."""
    loop = asyncio.get_running_loop()
    num = _numeric_addr(host, port)
    if num is not None:
        addrs = [num]
    else:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addrs = [(fam, addr) for fam, _, _, _, addr in infos]
    err: OSError = OSError(f"no address for {host}")
    for fam, addr in addrs:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            t0 = _perf()
            await loop.sock_connect(sock, addr)
            took = _perf() - t0
        except OSError as e:
            sock.close()
            err = e
            continue
        except BaseException:
            sock.close()
            raise
        transport = RawTransport(loop, sock, protocol, kernel_ts)
        transport.connect_ns = handshake_ns(sock, took)
        return transport
    raise err


class RawServer:
    """A listening socket; each accepted connection gets `RawTransport(..., factory())`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], Any], kernel_ts: bool | None = None):
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._kernel_ts = kernel_ts_wanted(kernel_ts)
        self.sockets = [sock]
        sock.setblocking(False)
        if self._kernel_ts:
            # ask now: the kernel turns receive timestamping on lazily (a deferred work item),
            # so packets in the first moments after the first request for it may come unstamped
            try:
                sock.setsockopt(_SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(256):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:                     # e.g. out of file descriptors: retry later
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(0.1, self._resume)
                return
            RawTransport(self._loop, conn, self._factory(), self._kernel_ts)

    def _resume(self) -> None:
        if self.sockets:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop listening (open connections are left to their owner)."""
        if self.sockets:
            self.sockets = []
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        """Let connections closed just before tell their protocols (one loop turn)."""
        await asyncio.sleep(0)


async def start_server(factory: Callable[[], Any], host: str, port: int, *, backlog: int = 2048,
                       kernel_ts: bool | None = None) -> RawServer:
    """Listen on host:port (0: a free port)."""
    loop = asyncio.get_running_loop()
    fam, addr = _numeric_addr(host, port) or (socket.AF_INET, (host, port))
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(_SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return RawServer(loop, sock, factory, kernel_ts)
