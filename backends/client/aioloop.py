"""Event-loop choice for the load generator and the mock server.

Role: `workloads/` (loadgen runs, the sharded client's workers, the self-test) and
`backends/mock_server.py` call `run(coro)` instead of `asyncio.run(coro)`. With uvloop installed
(the `fast` extra, `pip install infer-bench[fast]`) the loop is uvloop's: its I/O callbacks cost
a fraction of asyncio's selector loop, which is what limits a one-core client reading ~64k SSE
events/s. Without it, asyncio's default loop is used and everything works the same, slower.
`INFER_BENCH_UVLOOP=0` forces the default loop (to compare the two).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Callable, Coroutine


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's `new_event_loop` when available and not disabled, else None."""
    if os.environ.get("INFER_BENCH_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    """"uvloop" or "asyncio": what `run` will use."""
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(coro)` on the chosen loop."""
    factory = loop_factory()
    if factory is None or sys.version_info < (3, 11):
        if factory is not None:
            loop = factory()
            try:
                asyncio.set_event_loop(loop)
                return loop.run_until_complete(coro)
            finally:
                asyncio.set_event_loop(None)
                loop.close()
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def raise_open_files_limit(want: int = 65536) -> int:
    """Raise this process's soft limit on open files toward `want` (at most the hard limit): an
    open-loop client at 1,000 req/s holds ~700 connections at once. Returns the soft limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
