"""The engine's arrival stamp comes from the kernel (backends/engine/http/arrival.py): a handler that
runs late must not move it."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from infer_bench.backends.engine.http.arrival import arrival_times, since_last_data_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")


class _Transport:
    def __init__(self, sock):
        self.sock = sock

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None


class _Request:
    def __init__(self, sock):
        self.transport = _Transport(sock)


def test_arrival_is_when_the_bytes_landed_not_when_the_handler_ran():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    client = socket.create_connection(ls.getsockname())
    server, _ = ls.accept()
    try:
        t_sent = time.perf_counter()
        client.sendall(b"POST /v1/completions HTTP/1.1\r\n\r\n")
        time.sleep(0.15)                       # the event loop was busy elsewhere
        server.recv(1024)
        mono, perf, source = arrival_times(_Request(server))
        assert source == "kernel"
        assert perf - t_sent == pytest.approx(0.0, abs=0.012)
        assert time.perf_counter() - perf >= 0.13
        assert time.monotonic() - mono >= 0.13
        assert since_last_data_s(server) == pytest.approx(0.15, abs=0.03)
    finally:
        for s in (client, server, ls):
            s.close()


def test_no_socket_falls_back_to_now():
    t0 = time.perf_counter()
    _, perf, source = arrival_times(object())
    assert source == "handler" and perf >= t0
    assert since_last_data_s(None) is None
