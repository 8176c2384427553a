"""Shared pytest fixtures: tiny random models written once per session, free ports, the mock
server, kernel receive timestamps switched on."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_model import make_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (untied embeddings) in a Hugging Face directory."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Call with make_tiny_model_dir's keyword arguments; returns a fresh directory."""
    def make(**kwargs) -> Path:
        return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), **kwargs)
    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
async def mock():
    """Start calibrated mock servers on loopback: `await mock(ttft_s=..., ...)`; all stopped after."""
    from infer_bench.backends.mock.server import start_mock_server

    servers = []

    async def start(**cfg):
        s = await start_mock_server("127.0.0.1", free_port(), **cfg)
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.stop()


@pytest.fixture(scope="session")
def kernel_timestamps_on():
    """Turn the kernel's receive timestamping on for the session and wait until it stamps.

    Linux switches it on lazily (a deferred work item) when the first socket asks for it, so
    packets in the first moments may come unstamped (backends/rawsock.py falls back to
    user-space times for those reads, correctly): tests that assert every read was stamped
    first hold one stamping socket open for the whole session. Yields whether it works."""
    from infer_bench.backends.client import rawsock

    if not rawsock.kernel_ts_wanted(True):
        yield False
        return
    lsock = socket.create_server(("127.0.0.1", 0))
    tx = socket.create_connection(lsock.getsockname())
    rx, _ = lsock.accept()
    rx.setsockopt(socket.SOL_SOCKET, rawsock.SO_TIMESTAMPNS, 1)
    ok = False
    try:
        deadline = time.monotonic() + 2.0
        while not ok and time.monotonic() < deadline:
            tx.send(b"x")
            _, anc, _, _ = rx.recvmsg(16, socket.CMSG_SPACE(16))
            ok = bool(rawsock._kernel_ns(anc))
            if not ok:
                time.sleep(0.005)
        yield ok
    finally:
        for s in (tx, rx, lsock):
            s.close()


@pytest.fixture
def mock_process():
    """Start calibrated mock servers as subprocesses (for code that runs its own event loop, like
    the runner): `url = mock_process("--ttft-ms", "20")`; all killed after the test."""
    import subprocess
    import sys
    import time
    import urllib.request

    procs = []

    def start(*args: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "infer_bench.backends.mock.server",
                                 "--port", str(port), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    start.procs = procs                       # to kill a server mid-test
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
