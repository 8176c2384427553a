"""The sharded client: one load point driven by N worker processes, for rates one Python event
loop cannot send and read precisely.

Role in the data flow: a caller with a list of PreparedRequests and their send times (the same
inputs as `LoadGenerator`) calls `run_sharded(url, endpoint, requests, send_times, workers)`
instead of `LoadGenerator(...).run()`, and gets one merged `LoadResult`.

How: the split and the merge are `workloads/shards.py`'s (`plan_shards`: chains w, w+N, ...
with their precomputed send times; `merge_shards`). The workers are started (spawn), import
everything and report ready; only then does the parent fix the load point's t=0 on the shared run
clock: an absolute `time.perf_counter_ns()` origin (CLOCK_MONOTONIC, the same in every process
on the host) plus a start time a little in the future, sent to all workers. Each worker runs
`shards.make_shard_generator` (a LoadGenerator with `clock=RunClock(t0_ns)` and `start_at_s`),
so every record is on the parent's run clock. Records, send-lateness and loop-lag samples come
back over a pipe and are merged: records sorted by intended send time and tagged with their
shard (`client_shard`), ClientHealth recomputed from the pooled samples (client-bound if the
pooled p99 exceeds a threshold), cpu_share summed over the workers.

Constraints: `tokenize` must be picklable (a top-level function, `str.split`), or pass
`tokenizer_path` (each worker loads the tokenizer itself). `on_record` is called in the parent
after the workers finish. Closed loop (`concurrency=C`) splits C workers across processes.
Ctrl-C: workers ignore SIGINT; the parent tells them to stop, collects what completed, and
returns it with `cancelled=True` and `extra["interrupted"]=True`.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import time
from typing import Callable, Sequence

from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import PreparedRequest, RunClock

from .loadgen import LoadResult
from .records import RequestRecord
from .shards import make_shard_generator, merge_shards, plan_shards, shard_result
from .spec import ArrivalSpec

__all__ = ["run_sharded"]


def _worker(conn, kw: dict) -> None:
    """Worker process body: wait for the start time, run one LoadGenerator, send results. Ctrl-C
    is the parent's business: the worker ignores SIGINT and stops when the parent says "stop"."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from infer_bench.workloads import loadgen  # noqa: F401 - import everything before "ready"

        clock = RunClock(kw.pop("t0_ns"))
        if kw.get("tokenizer_path"):
            from infer_bench.workloads.prompt_text import load_tokenizer_for
            kw["tokenize"] = load_tokenizer_for(kw.pop("tokenizer_path")).tokenize
        conn.send(("ready", None))
        msg, start_at_s = conn.recv()
        if msg != "start":
            return
        gen = make_shard_generator(kw, clock, start_at_s)
        cpu0 = time.process_time()
        res = run_loop(_run_until_stopped(gen, conn))
        conn.send(("done", shard_result(res, time.process_time() - cpu0)))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:  # noqa: BLE001
            pass
    finally:
        conn.close()


async def _run_until_stopped(gen, conn) -> LoadResult:
    """gen.run(), stopped early when the parent sends "stop" (or goes away)."""
    import asyncio

    loop = asyncio.get_running_loop()
    fd = conn.fileno()

    def on_message() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = ("stop", None)
        if msg[0] == "stop":
            loop.remove_reader(fd)
            gen.stop()

    try:
        loop.add_reader(fd, on_message)
    except (NotImplementedError, RuntimeError, ValueError):  # platform without fd readers
        fd = -1
    try:
        return await gen.run()
    finally:
        if fd >= 0:
            loop.remove_reader(fd)


def run_sharded(
    url: str,
    endpoint: str,
    requests: Sequence[PreparedRequest],
    send_times: Sequence[float] | ArrivalSpec | None,
    workers: int,
    *,
    concurrency: int | None = None,
    clock: RunClock | None = None,
    deployment: str = "",
    load_point: str = "",
    model: str | None = None,
    headers: dict[str, str] | None = None,
    api_key: str | None = None,
    timeout_s: float | None = 600.0,
    tokenize: Callable[[str], list[int]] | None = None,
    tokenizer_path: str | None = None,
    lateness_threshold_s: float = 0.01,
    loop_lag_threshold_s: float = 0.01,
    start_delay_s: float = 0.1,
    on_record: Callable[[RequestRecord], None] | None = None,
    ready_timeout_s: float = 60.0,
) -> LoadResult:
    """Drive `requests` over `workers` processes (see the module docstring); returns one merged
    LoadResult on `clock` (a new RunClock when None). `send_times`: seconds from the load point's
    start, one per request (or per chain), an ArrivalSpec, or None with `concurrency`."""
    clock = clock or RunClock()
    shards = plan_shards(requests, send_times, workers, concurrency)
    _check_picklable(tokenize)
    common = dict(url=url, endpoint=endpoint, deployment=deployment, load_point=load_point,
                  model=model, headers=headers, api_key=api_key, timeout_s=timeout_s,
                  tokenize=tokenize, tokenizer_path=tokenizer_path, t0_ns=clock.t0_ns,
                  lateness_threshold_s=lateness_threshold_s,
                  loop_lag_threshold_s=loop_lag_threshold_s)
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    try:
        for w, shard in enumerate(shards):
            proc, conn = _spawn(ctx, w, {**common, **shard})
            procs.append(proc)
            conns.append(conn)
        _await_ready(conns, ready_timeout_s)
        start_at_s = clock.now() + start_delay_s
        for c in conns:
            c.send(("start", start_at_s))
        results, interrupted = _collect(conns, procs)
    finally:
        _reap(conns, procs)
    result = merge_shards(results, start_at_s, interrupted, lateness_threshold_s, loop_lag_threshold_s)
    if on_record is not None:
        for rec in result.records:
            try:
                on_record(rec)
            except Exception:  # noqa: BLE001
                pass
    return result


def _check_picklable(tokenize) -> None:
    if tokenize is not None:
        try:
            pickle.dumps(tokenize)
        except Exception as e:  # noqa: BLE001
            raise ValueError("run_sharded: tokenize must be picklable (a top-level function); "
                             "or pass tokenizer_path") from e


def _spawn(ctx, w: int, kw: dict):
    """Start shard w's process; returns (process, the parent's end of its pipe)."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, kw), daemon=True,
                       name=f"infer-bench-shard-{w}")
    proc.start()
    child.close()
    return proc, parent


def _await_ready(conns: list, timeout_s: float) -> None:
    """Wait until every shard has imported everything and says "ready"."""
    for w, c in enumerate(conns):
        if not c.poll(timeout_s):
            raise RuntimeError(f"shard {w} did not start within {timeout_s} s")
        msg, info = c.recv()
        if msg != "ready":
            raise RuntimeError(f"shard {w} failed to start: {info}")


def _collect(conns: list, procs: list) -> tuple[list[dict], bool]:
    """Every shard's results, and whether Ctrl-C came meanwhile (then every shard was told to stop
    sending and returned what completed)."""
    results, interrupted = [], False
    for w, c in enumerate(conns):
        while True:
            try:
                msg, info = c.recv()
                break
            except KeyboardInterrupt:
                interrupted = True
                for c2 in conns:
                    try:
                        c2.send(("stop", None))
                    except OSError:
                        pass
            except EOFError:
                raise RuntimeError(f"shard {w} exited without results "
                                   f"(exit code {procs[w].exitcode})") from None
        if msg != "done":
            raise RuntimeError(f"shard {w} failed: {info}")
        results.append(info)
    return results, interrupted


def _reap(conns: list, procs: list) -> None:
    for c in conns:
        c.close()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)

