"""When a request's bytes landed: the server's arrival stamp, taken from the kernel, not the loop.

Role in the data flow: the HTTP handler (`app.py`) stamps each request's arrival with
`arrival_times(request)`; the stamp starts the engine's queue time and the server-side TTFT
histogram. Stamping "now" when the handler runs is late by however long the busy event loop took
to get to the request (measured: ~50 ms at 8 concurrent requests on one engine thread), and that
delay then shows as client-side "network" time. The kernel knows better: TCP_INFO's
`tcpi_last_data_recv` is the time since the socket last received data, in milliseconds (jiffies
underneath), and when the handler runs the last data received is this request's own last bytes.
So arrival = now - last_data_recv, good to ~1 ms (the resolution of that counter). Where TCP_INFO is
missing (not Linux, a unix socket, a TLS transport hiding the socket) the stamp is "now", as before,
and the source says so.
"""

from __future__ import annotations

import socket
import struct
import time

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked,
# sacked, lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv, ...
_LAST_DATA_RECV_OFFSET = 8 + 11 * 4
_TCP_INFO = getattr(socket, "TCP_INFO", None)
MAX_BACKDATE_S = 60.0          # a larger "since last data" is not this request's (idle keep-alive)


def since_last_data_s(sock) -> float | None:
    """Seconds since `sock` last received data, from the kernel (None where unknown)."""
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_RECV_OFFSET + 4)
        (ms,) = struct.unpack_from("I", info, _LAST_DATA_RECV_OFFSET)
    except (OSError, struct.error, ValueError):
        return None
    s = ms / 1e3
    return s if 0.0 <= s <= MAX_BACKDATE_S else None


def arrival_times(request) -> tuple[float, float, str]:
    """(monotonic, perf_counter, source) of the request's arrival; source "kernel" or "handler".
    `request`: an aiohttp request (its transport's socket is read)."""
    mono, perf = time.monotonic(), time.perf_counter()
    transport = getattr(request, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    back = since_last_data_s(sock)
    if back is None:
        return mono, perf, "handler"
    return mono - back, perf - back, "kernel"
