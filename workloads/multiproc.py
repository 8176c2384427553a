"""The sharded client: one load point driven by N worker processes, for rates one Python event
loop cannot send and read precisely.

Role in the data flow: a caller with a list of PreparedRequests and their send times (the same
inputs as `LoadGenerator`) calls `run_sharded(url, endpoint, requests, send_times, workers)`
instead of `LoadGenerator(...).run()`, and gets one merged `LoadResult`.

How: the send times are computed up front in the parent (from an ArrivalSpec with its seed, or
given), and the requests are grouped into chains (`loadgen.build_chains`: a multi-turn
conversation stays in one process). Process w gets chains w, w+N, w+2N, ... (every N-th request
for single-turn workloads) with their precomputed send times. The workers are started (spawn),
import everything and report ready; only then does the parent fix the load point's t=0 on the
shared run clock: an absolute `time.perf_counter_ns()` origin (CLOCK_MONOTONIC, the same in every
process on the host) plus a start time a little in the future, sent to all workers. Each worker
runs a `LoadGenerator` with `clock=RunClock(t0_ns)` and `start_at_s`, so every record is on the
parent's run clock. Records, send-lateness and loop-lag samples come back over a pipe and are
merged: records sorted by intended send time, ClientHealth recomputed from the pooled samples
(client-bound if the pooled p99 exceeds a threshold), cpu_share summed over the workers.

Constraints: `tokenize` must be picklable (a top-level function, `str.split`), or pass
`tokenizer_path` (each worker loads the tokenizer itself). `on_record` is called in the parent
after the workers finish. Closed loop (`concurrency=C`) splits C workers across processes.
Ctrl-C: workers ignore SIGINT; the parent tells them to stop, collects what completed, and
returns it with `cancelled=True` and `extra["interrupted"]=True`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import signal
import time
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import PreparedRequest, RunClock

from .arrivals import send_times as _send_times
from .arrivals import trace_send_times
from .loadgen import LoadResult, build_chains, health_from
from .records import RequestRecord
from .spec import ArrivalSpec

__all__ = ["run_sharded"]


def _worker(conn, kw: dict) -> None:
    """Worker process body: wait for the start time, run one LoadGenerator, send results. Ctrl-C
    is the parent's business: the worker ignores SIGINT and stops when the parent says "stop"."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from infer_bench.workloads.loadgen import LoadGenerator

        tokenize = kw.pop("tokenize")
        tok_path = kw.pop("tokenizer_path")
        if tok_path:
            from infer_bench.workloads.prompt_text import load_tokenizer_for
            tokenize = load_tokenizer_for(tok_path).tokenize
        clock = RunClock(kw.pop("t0_ns"))
        conn.send(("ready", None))
        msg, start_at_s = conn.recv()
        if msg != "start":
            return
        gen = LoadGenerator(kw.pop("url"), kw.pop("endpoint"), kw.pop("requests"),
                            kw.pop("arrival"), clock=clock, tokenize=tokenize,
                            start_at_s=start_at_s, **kw)
        cpu0 = time.process_time()
        res = run_loop(_run_until_stopped(gen, conn))
        conn.send(("done", {
            "records": [r.to_dict() for r in res.records],
            "lateness": res.extra.get("send_lateness_s", []),
            "lags": res.extra.get("loop_lag_s", []),
            "timestamps": res.extra.get("timestamps", {}),
            "cpu_s": time.process_time() - cpu0,
            "start_s": res.start_s, "end_s": res.end_s, "cancelled": res.cancelled,
        }))
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


def _resolve_times(requests: Sequence[PreparedRequest], chains: list[list[int]],
                   send_times, concurrency: int | None) -> np.ndarray | None:
    """One intended start per chain (None: closed loop)."""
    if isinstance(send_times, ArrivalSpec):
        if send_times.closed_loop:
            return None
        if send_times.kind == "trace" and all(r.send_at_s is not None for r in requests):
            t = trace_send_times(requests) / float(send_times.speedup)
            return t[[c[0] for c in chains]]
        return _send_times(send_times, len(chains))
    if send_times is None:
        if not concurrency:
            raise ValueError("run_sharded needs send_times (or an ArrivalSpec) or concurrency")
        return None
    t = np.asarray(list(send_times), dtype=float)
    if len(t) == len(requests):
        return t[[c[0] for c in chains]]
    if len(t) == len(chains):
        return t
    raise ValueError(f"{len(t)} send times for {len(requests)} requests")


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
    if isinstance(send_times, ArrivalSpec) and send_times.closed_loop:
        concurrency = send_times.concurrency
    chains = build_chains(requests)
    times = _resolve_times(requests, chains, send_times, concurrency)
    _check_picklable(tokenize)
    workers = min(max(1, int(workers)), max(1, len(chains)))
    common = dict(url=url, endpoint=endpoint, deployment=deployment, load_point=load_point,
                  model=model, headers=headers, api_key=api_key, timeout_s=timeout_s,
                  tokenize=tokenize, tokenizer_path=tokenizer_path, t0_ns=clock.t0_ns,
                  lateness_threshold_s=lateness_threshold_s,
                  loop_lag_threshold_s=loop_lag_threshold_s)
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    try:
        for w in range(workers):
            shard = _shard(w, workers, requests, chains, times, concurrency)
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
    result = _merge(results, start_at_s, interrupted, lateness_threshold_s, loop_lag_threshold_s)
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


def _shard(w: int, workers: int, requests: Sequence[PreparedRequest], chains: list[list[int]],
           times: np.ndarray | None, concurrency: int | None) -> dict:
    """Process w's requests (chains w, w+N, ...) and its arrival: their precomputed send times,
    or its share of the closed-loop concurrency."""
    mine = list(range(w, len(chains), workers))
    reqs = [dataclasses.replace(requests[i], tokenize=None) for c in mine for i in chains[c]]
    if times is None:
        share = concurrency // workers + (1 if w < concurrency % workers else 0)
        arrival: Any = ArrivalSpec(kind="concurrency", concurrency=max(1, share))
    else:
        arrival = [float(times[c]) for c in mine]
    return {"requests": reqs, "arrival": arrival}


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


def _merge(results: list[dict], start_at_s: float, interrupted: bool,
           lateness_threshold_s: float, loop_lag_threshold_s: float) -> LoadResult:
    """One LoadResult from the shards': records sorted by intended send time, ClientHealth from
    the pooled samples, CPU summed over the shards."""
    records = [RequestRecord.from_dict(d) for r in results for d in r["records"]]
    records.sort(key=lambda r: (r.intended_send_s if r.intended_send_s is not None
                                else float("inf"), r.request_id))
    lateness = [x for r in results for x in r["lateness"]]
    lags = [x for r in results for x in r["lags"]]
    end_s = max(r["end_s"] for r in results)
    wall = end_s - start_at_s
    cpu = sum(r["cpu_s"] for r in results)
    sources: Counter[str] = Counter()
    for r in results:
        sources.update(r.get("timestamps", {}))
    health = health_from(lateness, lags, cpu / wall if wall > 0 else None,
                         lateness_threshold_s, loop_lag_threshold_s)
    return LoadResult(records=records, health=health, start_s=start_at_s, end_s=end_s,
                      cancelled=interrupted or any(r["cancelled"] for r in results),
                      extra={"workers": len(results), "interrupted": interrupted,
                             "send_lateness_s": lateness, "loop_lag_s": lags,
                             "timestamps": dict(sources),
                             "shard_cpu_s": [r["cpu_s"] for r in results]})
