"""The load generator: sends a list of prepared requests at their arrival times and measures them.

Role in the data flow: `workloads/runner.py` builds prompts (`workloads/synthetic.py`), then for
each load point runs `LoadGenerator(url, endpoint, requests, arrival, ...).run()`; each request
goes through `backends/openai.send_request` on one shared aiohttp session; each result becomes a
`RequestRecord` handed to `on_record` as it completes (the runner appends it to the results dir,
the CLI advances its progress bar) and returned at the end with a `ClientHealth` summary.

Open loop (poisson / gamma / constant): send times come from `workloads/arrivals.send_times` and
are fixed before the first send; one scheduler coroutine sleeps until each time on the monotonic
clock and starts the request as its own task, so a slow request never delays the next send. The
connection pool is unlimited in open loop (a pool limit would queue sends silently in the client)
and sized to the worker count in closed loop (`concurrency`: N workers, each sends its next
request when its previous one finished).

Honesty about the client itself: a monitor coroutine measures event-loop lag (how late a 5 ms
sleep wakes up) and every send records its lateness (actual - intended send time). `ClientHealth`
reports both, the process CPU share, and `client_bound=True` when p99 lateness or p99 loop lag
exceeds its threshold: then the numbers measure the client as much as the server.

Cancel-safe: if `run()` is cancelled, in-flight requests are cancelled (not recorded) and `run()`
returns what completed so far with `cancelled=True`; `stop()` does the same gracefully from the
outside. Records are also available as `self.records` at any time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import aiohttp
import numpy as np

from infer_bench.backends.openai import PreparedRequest, RawResult, RunClock, send_request

from .arrivals import send_times
from .records import RequestRecord
from .spec import ArrivalSpec

__all__ = ["LoadGenerator", "LoadResult", "ClientHealth", "RunClock"]


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
        session: aiohttp.ClientSession | None = None,
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
        self.requests = [self._fill(r, model, headers, api_key, timeout_s, tokenize)
                         for r in requests]
        if isinstance(arrival, ArrivalSpec):
            self.arrival = arrival
            times = send_times(arrival, len(self.requests))
            self.concurrency = arrival.concurrency if arrival.closed_loop else None
        else:
            self.arrival = None
            times = np.asarray(list(arrival), dtype=float)
            if len(times) != len(self.requests):
                raise ValueError(f"{len(times)} send times for {len(self.requests)} requests")
            self.concurrency = None
        self.times = times
        self.records: list[RequestRecord] = []
        self._lateness: list[float] = []
        self._lags: list[float] = []
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

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

    async def _one(self, session, req: PreparedRequest, intended_s: float) -> None:
        raw: RawResult = await send_request(session, req, self.clock)
        if raw.send_s is not None:
            self._lateness.append(raw.send_s - intended_s)
        rec = RequestRecord.from_raw(raw, deployment=self.deployment, load_point=self.load_point,
                                     intended_send_s=intended_s, max_tokens=req.max_tokens)
        self.records.append(rec)
        if self.on_record is not None:
            try:
                self.on_record(rec)
            except Exception:  # noqa: BLE001 - a progress callback must not kill the run
                pass

    async def _monitor(self, interval: float = 0.005) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            self._lags.append(max(0.0, time.perf_counter() - t0 - interval))

    async def _open_loop(self, session, start_s: float) -> None:
        loop = asyncio.get_running_loop()
        for req, t in zip(self.requests, self.times):
            if self._stop.is_set():
                break
            target = start_s + float(t)
            delay = target - self.clock.now()
            if delay > 0:
                # No busy-wait (it would steal CPU from a server on the same host): epoll wakes
                # up to ~1 ms late; the lateness is measured and reported in ClientHealth.
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            task = loop.create_task(self._one(session, req, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while self._tasks and not self._stop.is_set():
            await asyncio.wait(list(self._tasks), timeout=0.2)

    async def _closed_loop(self, session) -> None:
        it = iter(self.requests)

        async def worker():
            while not self._stop.is_set():
                try:
                    req = next(it)
                except StopIteration:
                    return
                await self._one(session, req, self.clock.now())

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
        monitor = asyncio.ensure_future(self._monitor())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        start_s = self.clock.now()
        session = self._external_session
        own = session is None
        if own:
            limit = int(self.concurrency) if self.concurrency else 0
            connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit,
                                             force_close=False, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(connector=connector,
                                            timeout=aiohttp.ClientTimeout(total=None))
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
                await session.close()
        end_s = self.clock.now()
        wall = time.perf_counter() - wall0
        health = self._health(cpu_share=(time.process_time() - cpu0) / wall if wall > 0 else None)
        return LoadResult(records=list(self.records), health=health, start_s=start_s,
                          end_s=end_s, cancelled=cancelled)

    def _health(self, cpu_share: float | None) -> ClientHealth:
        h = ClientHealth(n_sent=len(self._lateness), cpu_share=cpu_share,
                         lateness_threshold_s=self.lateness_threshold_s,
                         loop_lag_threshold_s=self.loop_lag_threshold_s)
        if self._lateness:
            a = np.asarray(self._lateness)
            h.send_lateness_mean_s = float(a.mean())
            h.send_lateness_p99_s = float(np.percentile(a, 99))
            h.send_lateness_max_s = float(a.max())
        if self._lags:
            a = np.asarray(self._lags)
            h.loop_lag_mean_s = float(a.mean())
            h.loop_lag_p99_s = float(np.percentile(a, 99))
            h.loop_lag_max_s = float(a.max())
        h.client_bound = bool(
            (h.send_lateness_p99_s is not None
             and h.send_lateness_p99_s > self.lateness_threshold_s)
            or (h.loop_lag_p99_s is not None and h.loop_lag_p99_s > self.loop_lag_threshold_s))
        return h
