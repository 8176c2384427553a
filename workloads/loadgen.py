"""The load generator: sends a list of prepared requests at their arrival times and measures them.

Role in the data flow: `workloads/runner.py` builds prompts (`workloads/datasets.build_requests`),
then for each load point runs `LoadGenerator(url, endpoint, requests, arrival, ...).run()`; each
request goes through `backends/client/openai.send_request` on one shared `HttpPool`
(backends/client/http.py: keep-alive connections, timestamps at the socket reads); each result becomes a
`RequestRecord` handed to `on_record` as it completes (the runner appends it to the results dir,
the CLI advances its progress bar) and returned at the end with a `ClientHealth` summary.

Open loop (poisson / gamma / constant / trace): send times come from
`workloads/arrivals.send_times` (trace: the requests' own `send_at_s`) and are fixed before the
first send; one scheduler coroutine sleeps until each time on the monotonic clock (a timer set
0.5 ms early, then yielding to the loop until the time: epoll alone wakes up to 1 ms late) and
starts the request as its own task, so a slow request never delays the next send. A request's
HTTP bytes are built before its send time (`openai.build_wire`), so only the write happens at
it. The connection pool has no limit (a pool limit would queue sends silently in the client);
closed loop (`concurrency`: N workers, each sends its next request when its previous one
finished) holds at most N connections by construction. Callers run `run()` on
`backends/aioloop.run` (uvloop when installed).

Multi-turn: requests sharing a `conversation_id` form a chain, sent in `turn` order by one task;
turn k+1 is intended at (turn k's last token, or its end if it failed) + its `think_time_s`.
Open loop schedules the FIRST turn of each chain (the arrival process gives one time per chain;
for single-turn workloads that is one per request, as before); closed loop gives each worker
whole chains. `intended_send_s` of a later turn is that derived time.

`start_at_s` (run-clock seconds) fixes the load point's t=0 from the outside: the sharded client
(`workloads/multiproc.py`) gives every worker process the same origin.

Honesty about the client itself: a monitor coroutine measures event-loop lag (how late a 5 ms
sleep wakes up) and every send records its lateness (actual - intended send time). `ClientHealth`
reports both, the process CPU share, and `client_bound=True` when p99 lateness or p99 loop lag
exceeds its threshold: then the numbers measure the client as much as the server. Where the
chunk times came from is counted in `LoadResult.extra["timestamps"]` ({"kernel": n, "user": n,
"mixed": n} requests; see backends/rawsock.py): with kernel receive times a stall of the client
delays its reads but not its measurements (send lateness and loop lag still show the stall).

Garbage collection is paused for the load point (`pause_gc`, default on: one collection
before, automatic collection re-enabled after): a collector pause of several ms (measured up to
~35 ms for a full collection at 300 req/s) would delay socket reads and sends, i.e. show up as
TTFT error. The client's hot path creates no reference cycles, so memory stays bounded.

Cancel-safe: if `run()` is cancelled, in-flight requests are cancelled (not recorded) and `run()`
returns what completed so far with `cancelled=True`; `stop()` does the same gracefully from the
outside. Records are also available as `self.records` at any time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from infer_bench.backends.client.aioloop import raise_open_files_limit
from infer_bench.backends.client.http import HttpPool
from infer_bench.backends.client.openai import (PreparedRequest, RawResult, RunClock, build_wire,
                                         send_request)

from .arrivals import send_times, trace_send_times
from .records import RequestRecord
from .spec import ArrivalSpec

__all__ = ["LoadGenerator", "LoadResult", "ClientHealth", "RunClock", "build_chains",
           "health_from"]


@dataclass
class ClientHealth:
    n_sent: int = 0
    send_lateness_mean_s: float | None = None
    send_lateness_p99_s: float | None = None
    send_lateness_max_s: float | None = None
    loop_lag_mean_s: float | None = None
    loop_lag_p99_s: float | None = None
    loop_lag_max_s: float | None = None
    cpu_share: float | None = None            # process CPU time / wall time (1.0 = one core busy)
    lateness_threshold_s: float = 0.01
    loop_lag_threshold_s: float = 0.01
    client_bound: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LoadResult:
    records: list[RequestRecord]
    health: ClientHealth
    start_s: float = 0.0                      # run-clock time of the load point's t=0
    end_s: float = 0.0
    cancelled: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float]:
        return (self.start_s, self.end_s)


class LoadGenerator:
    """Drive `requests` against `url` with `arrival` (ArrivalSpec, or explicit send times in
    seconds from the start). Fields of each PreparedRequest that are unset (url "", model None,
    no headers/api key/timeout/tokenize) are filled from the constructor's arguments."""

    def __init__(
        self,
        url: str,
        endpoint: str,
        requests: Sequence[PreparedRequest],
        arrival: ArrivalSpec | Sequence[float],
        *,
        deployment: str = "",
        load_point: str = "",
        clock: RunClock | None = None,
        model: str | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
        timeout_s: float | None = 600.0,
        tokenize: Callable[[str], list[int]] | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
        lateness_threshold_s: float = 0.01,
        loop_lag_threshold_s: float = 0.01,
        session: HttpPool | None = None,
        start_at_s: float | None = None,
        pause_gc: bool = True,
    ):
        self.url = url
        self.endpoint = endpoint
        self.deployment = deployment
        self.load_point = load_point
        self.clock = clock or RunClock()
        self.on_record = on_record
        self.lateness_threshold_s = lateness_threshold_s
        self.loop_lag_threshold_s = loop_lag_threshold_s
        self._external_session = session
        self.start_at_s = start_at_s
        self.pause_gc = pause_gc
        self.requests = [self._fill(r, model, headers, api_key, timeout_s, tokenize)
                         for r in requests]
        self.chains = build_chains(self.requests)
        n_req, n_chain = len(self.requests), len(self.chains)
        firsts = [c[0] for c in self.chains]
        if isinstance(arrival, ArrivalSpec):
            self.arrival = arrival
            self.concurrency = arrival.concurrency if arrival.closed_loop else None
            if arrival.kind == "trace" and all(r.send_at_s is not None for r in self.requests):
                times = trace_send_times(self.requests) / float(arrival.speedup)
                times = times[firsts] if n_chain != n_req else times
            else:
                times = send_times(arrival, n_chain)
        else:
            self.arrival = None
            times = np.asarray(list(arrival), dtype=float)
            if len(times) == n_req:
                times = times[firsts] if n_chain != n_req else times
            elif len(times) != n_chain:
                raise ValueError(f"{len(times)} send times for {n_req} requests")
            self.concurrency = None
        self.times = times                  # one intended start per chain (= per request)
        self.records: list[RequestRecord] = []
        self._lateness: list[float] = []
        self._lags: list[float] = []
        self._ts_sources: Counter[str] = Counter()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sleeper: asyncio.Future | None = None

    def _fill(self, r: PreparedRequest, model, headers, api_key, timeout_s, tokenize):
        ch = {}
        if not r.url:
            ch["url"] = self.url
        if r.endpoint != self.endpoint and self.endpoint:
            ch["endpoint"] = self.endpoint
        if r.model is None and model is not None:
            ch["model"] = model
        if headers:
            ch["headers"] = {**headers, **r.headers}
        if r.api_key is None and api_key:
            ch["api_key"] = api_key
        if r.timeout_s is None and timeout_s:
            ch["timeout_s"] = timeout_s
        if r.tokenize is None and tokenize is not None:
            ch["tokenize"] = tokenize
        return dataclasses.replace(r, **ch) if ch else r

    # ----------------------------------------------------------------- running
    def stop(self) -> None:
        """Stop sending; in-flight requests are cancelled; run() returns what completed."""
        if self._stop is not None:
            self._stop.set()
        sl = self._sleeper
        if sl is not None and not sl.done():
            sl.set_result(None)

    async def _sleep_until(self, target_s: float, early_s: float = 0.0005,
                           register: bool = True) -> bool:
        """Sleep until run-clock time `target_s` (a timer early_s early, then yield to the loop
        until the time). False when stopped meanwhile."""
        loop = asyncio.get_running_loop()
        delay = target_s - self.clock.now() - early_s
        if delay > 0:
            fut = loop.create_future()
            if register:
                self._sleeper = fut
            h = loop.call_later(delay, _wake, fut)
            try:
                await fut
            finally:
                h.cancel()
                if register:
                    self._sleeper = None
        while not self._stop.is_set() and self.clock.now() < target_s:
            await asyncio.sleep(0)
        return not self._stop.is_set()

    async def _one(self, session, req: PreparedRequest, intended_s: float,
                   wire=None) -> RequestRecord:
        raw: RawResult = await send_request(session, req, self.clock, wire=wire)
        if raw.send_s is not None:
            self._lateness.append(raw.send_s - intended_s)
        if raw.timestamps is not None:
            self._ts_sources[raw.timestamps] += 1
        rec = RequestRecord.from_raw(raw, deployment=self.deployment, load_point=self.load_point,
                                     intended_send_s=intended_s, max_tokens=req.max_tokens,
                                     conversation_id=req.conversation_id,
                                     turn=req.turn if req.conversation_id is not None else None)
        self.records.append(rec)
        if self.on_record is not None:
            try:
                self.on_record(rec)
            except Exception:  # noqa: BLE001 - a progress callback must not kill the run
                pass
        return rec

    async def _chain(self, session, chain: list[int], intended_s: float, wire=None) -> None:
        """Send the turns of one chain in order; turn k+1 after turn k's last token + think."""
        for k, idx in enumerate(chain):
            req = self.requests[idx]
            if k > 0:
                intended_s += req.think_time_s
                if not await self._sleep_until(intended_s, early_s=0.0, register=False):
                    return
            rec = await self._one(session, req, intended_s, wire if k == 0 else None)
            done = rec.last_token_s if rec.last_token_s is not None else rec.end_s
            intended_s = max(done if done is not None else self.clock.now(), intended_s)

    async def _monitor(self, interval: float = 0.005) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            self._lags.append(max(0.0, time.perf_counter() - t0 - interval))

    async def _open_loop(self, session, start_s: float) -> None:
        loop = asyncio.get_running_loop()
        for chain, t in zip(self.chains, self.times):
            if self._stop.is_set():
                break
            target = start_s + float(t)
            first = self.requests[chain[0]]
            try:
                wire = build_wire(first)        # built before the send time, not at it
            except Exception:  # noqa: BLE001 - send_request reports it as this request's error
                wire = None
            # No long busy-wait (it would steal CPU from a server on the same host); the
            # remaining lateness is measured and reported in ClientHealth.
            if not await self._sleep_until(target):
                break
            if len(chain) == 1:
                coro = self._one(session, first, target, wire)
            else:
                coro = self._chain(session, chain, target, wire)
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while self._tasks and not self._stop.is_set():
            await asyncio.wait(list(self._tasks), timeout=0.2)

    async def _closed_loop(self, session) -> None:
        it = iter(self.chains)

        async def worker():
            while not self._stop.is_set():
                try:
                    chain = next(it)
                except StopIteration:
                    return
                await self._chain(session, chain, self.clock.now())

        workers = [asyncio.ensure_future(worker()) for _ in range(int(self.concurrency))]
        for w in workers:
            self._tasks.add(w)
            w.add_done_callback(self._tasks.discard)
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([*workers, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            while not all(w.done() for w in workers) and not self._stop.is_set():
                await asyncio.wait([*workers, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()

    async def run(self) -> LoadResult:
        self._stop = asyncio.Event()
        cancelled = False
        gc_was_enabled = gc.isenabled()
        if self.pause_gc:
            gc.collect()
            gc.disable()
        monitor = asyncio.ensure_future(self._monitor())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        start_s = self.clock.now() if self.start_at_s is None else float(self.start_at_s)
        session = self._external_session
        own = session is None
        if own:
            raise_open_files_limit()
            session = HttpPool()
        try:
            if self.concurrency:
                await self._closed_loop(session)
            else:
                await self._open_loop(session, start_s)
        except asyncio.CancelledError:
            cancelled = True
        finally:
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._stop.is_set():
                cancelled = True
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            if own:
                session.close()
            if self.pause_gc and gc_was_enabled:
                gc.enable()
        end_s = self.clock.now()
        wall = time.perf_counter() - wall0
        health = self._health(cpu_share=(time.process_time() - cpu0) / wall if wall > 0 else None)
        return LoadResult(records=list(self.records), health=health, start_s=start_s,
                          end_s=end_s, cancelled=cancelled,
                          extra={"send_lateness_s": list(self._lateness),
                                 "loop_lag_s": list(self._lags),
                                 "timestamps": dict(self._ts_sources)})

    def _health(self, cpu_share: float | None) -> ClientHealth:
        return health_from(self._lateness, self._lags, cpu_share,
                           self.lateness_threshold_s, self.loop_lag_threshold_s)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def build_chains(requests: Sequence[PreparedRequest]) -> list[list[int]]:
    """Indices of `requests` grouped into chains: one per conversation_id (sorted by turn), one
    per request without a conversation; in order of first appearance."""
    chains: list[list[int]] = []
    by_conv: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        cid = r.conversation_id
        if cid is None:
            chains.append([i])
        elif cid in by_conv:
            by_conv[cid].append(i)
        else:
            by_conv[cid] = [i]
            chains.append(by_conv[cid])
    for c in chains:
        if len(c) > 1:
            c.sort(key=lambda i: requests[i].turn)
    return chains


def health_from(lateness: Sequence[float], lags: Sequence[float], cpu_share: float | None,
                lateness_threshold_s: float = 0.01,
                loop_lag_threshold_s: float = 0.01) -> ClientHealth:
    """ClientHealth from raw send-lateness and loop-lag samples (also merges shards)."""
    h = ClientHealth(n_sent=len(lateness), cpu_share=cpu_share,
                     lateness_threshold_s=lateness_threshold_s,
                     loop_lag_threshold_s=loop_lag_threshold_s)
    if len(lateness):
        a = np.asarray(lateness, dtype=float)
        h.send_lateness_mean_s = float(a.mean())
        h.send_lateness_p99_s = float(np.percentile(a, 99))
        h.send_lateness_max_s = float(a.max())
    if len(lags):
        a = np.asarray(lags, dtype=float)
        h.loop_lag_mean_s = float(a.mean())
        h.loop_lag_p99_s = float(np.percentile(a, 99))
        h.loop_lag_max_s = float(a.max())
    h.client_bound = bool(
        (h.send_lateness_p99_s is not None and h.send_lateness_p99_s > lateness_threshold_s)
        or (h.loop_lag_p99_s is not None and h.loop_lag_p99_s > loop_lag_threshold_s))
    return h
