"""Shared pytest fixtures: tiny random models written once per session, free ports."""

from __future__ import annotations

import os
import socket
import sys
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
    from infer_bench.backends.mock_server import start_mock_server

    servers = []

    async def start(**cfg):
        s = await start_mock_server("127.0.0.1", free_port(), **cfg)
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.stop()
