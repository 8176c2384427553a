"""The run orchestrator: RunSpec -> deployments x load points -> one results dir.

For each deployment in turn: launch it (or check an external URL), send warm-up requests, then
drive every load point with precomputed requests and send times (identical for every deployment
at a given load point; load point i uses workload seed + 7919*i, so no prompt is re-sent to hit a
warm prefix cache), appending each
RequestRecord to the results dir as it completes; pull the engine's step trace; stop it. A run
that fails part-way (a deployment that does not start, Ctrl-C, an error) still finalises the
results dir, marked incomplete, with everything measured so far.

`run` drives a `RunSession` (the results dir being written, each load point's prompts, what
run.json will say) through its steps: `measure_deployment` for each deployment (start, warm up,
`_measure_load_point` for each load point, step trace, stop), then `finish`. Each load point
reads the host's energy counters just before and after its load (workloads/energy.py ->
energy.jsonl: its energy and wall time).

Each load point's client is one `LoadGenerator`, or, with `client_workers` > 1, shards of it:
processes of this host (`multiproc.run_sharded`) or, with `ray_address`, Ray actors on a
cluster's nodes (`ray_shards.run_ray_sharded`; their nodes and clock offsets go to run.json's
`client_shards`; a shard that died marks the run incomplete, `client_shard_failures`). Process
shards have `client_shards` lines too (`process_shards`: this host, no clock offset, each
shard's own send health), which the report's "Client shards" section shows.

The runner talks to deployments only through `backends.launch` (HTTP); it never imports the
engine. Progress goes to a `RunObserver` (the CLI draws rich progress bars with it).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infer_bench.backends.cpu_pinning import pin_client, plan_for_run
from infer_bench.backends.launch import (
    DeploymentError, EngineDeploymentSpec, ExternalDeploymentSpec, make_deployment,
)
from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import RunClock

from .datasets import build_requests, request_count_note
from .energy import energy_row, open_energy_meter
from .loadgen import LoadGenerator, LoadResult
from .metrics import summarize
from .prompt_text import load_tokenizer_for
from .records import RequestRecord
from .results import ResultsWriter, collect_env
from .spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec
from .schedule import WarmupTracker, interleaved_schedule
from .server_metrics import ServerMetricsRecorder, deployment_metrics_url, gauge_names
from .telemetry import TelemetrySampler, client_sampler

# Engine series worth scraping from /metrics onto the telemetry timeline.
ENGINE_PROMETHEUS_ALLOW = ["infer_bench_num_requests_*", "infer_bench_kv_*", "infer_bench_prefix_cache_hit_rate",
                           "infer_bench_num_preemptions_total", "vllm:num_requests_*", "vllm:gpu_cache_usage_perc",
                           *gauge_names()]   # the server-metrics gauges' maxima come from these rows


class RunError(RuntimeError):
    """The run produced no measurements; the message says why in one line."""


@dataclass
class BisectSpec:
    """Goodput search (DistServe): measure rate_lo and rate_hi, then bisect (geometric midpoints)
    toward the highest rate whose joint SLO attainment is >= target."""

    rate_lo: float
    rate_hi: float
    iterations: int = 3
    target: float = 0.9
    kind: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunSpec:
    deployments: list[EngineDeploymentSpec | ExternalDeploymentSpec]
    workload: WorkloadSpec
    load_points: list[LoadPoint]
    slo: SLO = field(default_factory=lambda: SLO(ttft_s=2.0, tpot_s=0.2))
    out_dir: Path = Path("results/run")
    warmup_requests: int = 2
    timeout_s: float = 300.0
    tokenizer_path: str | None = None
    name: str = ""
    bisect: BisectSpec | None = None  # adaptive load points (goodput search) instead of load_points
    max_error_rate: float = 0.5      # stop a load point when this share of recent requests failed
    error_window: int = 20           # ... over the last this many requests (and at least 10 seen)
    client_workers: int = 1          # >1: each load point's client is sharded over processes
    ray_address: str | None = None   # client shards as Ray actors on this cluster (ray_shards.py)
    repeats: int = 1                 # every load point measured this many times (fresh prompts each)
    interleave: bool = True          # ABBA order across deployments (all alive); False: one at a time
    warmup_max_requests: int = 8     # warm-up goes on until stable (schedule.WarmupTracker) or this
    steady_state_ramp: float = 0.1   # share of each load point's send span left out as ramp-up
    pin_cores: bool = True           # each deployment on the cores its chips count (cpu_pinning)
    scenario: dict | None = None     # the default run's scenario this run measures (scenarios.py)
    price_per_chip_hour: float | None = None  # USD; cost per token / good request (workloads/cost.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name or Path(self.out_dir).name,
            "deployments": [d.to_dict() for d in self.deployments],
            "workload": self.workload.to_dict(),
            "load_points": [lp.to_dict() for lp in self.load_points],
            "slo": self.slo.to_dict(),
            "warmup_requests": self.warmup_requests,
            "load_point_seed_stride": 7919,  # load point i (first-seen order) uses workload.seed + 7919*i
            "timeout_s": self.timeout_s,
            "tokenizer_path": self.tokenizer_path,
            "bisect": self.bisect.to_dict() if self.bisect else None,
            "max_error_rate": self.max_error_rate,
            "error_window": self.error_window,
            "client_workers": self.client_workers,
            "client_ray_address": self.ray_address,
            "repeats": self.repeats,
            "order": "interleaved" if self.interleaved else "sequential",
            "warmup_max_requests": self.warmup_max_requests,
            "steady_state": ({"ramp_fraction": self.steady_state_ramp}
                             if self.steady_state_ramp > 0 else None),
            "scenario": self.scenario,
            "price_per_chip_hour": self.price_per_chip_hour,
        }

    @property
    def interleaved(self) -> bool:
        """Interleaving needs fixed load points and more than one deployment."""
        return self.interleave and self.bisect is None and len(self.deployments) > 1


class RunObserver:
    """Callbacks for progress; the default does nothing."""

    def deployment_starting(self, name: str, description: str) -> None: ...
    def deployment_ready(self, name: str, seconds: float) -> None: ...
    def deployment_failed(self, name: str, message: str) -> None: ...
    def load_point_starting(self, deployment: str, load_point: str, n_requests: int) -> None: ...
    def record(self, record: RequestRecord) -> None: ...
    def load_point_done(self, deployment: str, load_point: str, health: dict) -> None: ...
    def message(self, text: str) -> None: ...


class ErrorRateStop:
    """Trips when more than `max_rate` of the last `window` requests failed (after >= min_seen);
    `describe()` names the last failure's error text (the server's message: a diagnosis)."""

    def __init__(self, max_rate: float, window: int, min_seen: int = 10):
        self.max_rate, self.window, self.min_seen = max_rate, max(1, window), min_seen
        self.recent: list[bool] = []
        self.tripped = False
        self.last_error: str | None = None

    def observe(self, failed: bool, error: str | None = None) -> bool:
        if failed and error:
            self.last_error = " ".join(str(error).split())[:500]
        self.recent = (self.recent + [failed])[-self.window:]
        if (not self.tripped and len(self.recent) >= min(self.min_seen, self.window)
                and sum(self.recent) / len(self.recent) > self.max_rate):
            self.tripped = True
        return self.tripped

    def describe(self) -> str:
        last = f"; last error: {self.last_error}" if self.last_error else ""
        return f"{sum(self.recent)} of the last {len(self.recent)} requests failed{last}"


def _rate_point(rate: float, kind: str, burstiness: float, seed: int) -> LoadPoint:
    return LoadPoint(name=f"{rate:.3g}rps", arrival=ArrivalSpec(kind=kind, rate=float(rate), seed=seed,
                                                                  burstiness=burstiness))


def plan_load_points(spec: RunSpec, measured: dict[float, float]):
    """The load points of one deployment, lazily: the fixed list, or a bisection that reads the
    joint attainment of each measured rate from `measured` (filled in by the caller)."""
    if spec.bisect is None:
        yield from spec.load_points
        return
    b = spec.bisect
    lo, hi = float(b.rate_lo), float(b.rate_hi)
    for r in (lo, hi):
        yield _rate_point(r, b.kind, b.burstiness, b.seed)
    if r not in measured:
        return
    for _ in range(b.iterations):
        if measured.get(lo, 0.0) < b.target or measured.get(hi, 0.0) >= b.target:
            return  # even the lowest rate misses, or the highest passes: nothing to bisect
        mid = float(f"{(lo * hi) ** 0.5:.3g}")
        if mid in (lo, hi):
            return
        yield _rate_point(mid, b.kind, b.burstiness, b.seed)
        if mid not in measured:
            return
        if measured[mid] >= b.target:
            lo = mid
        else:
            hi = mid


def default_load_points(rates: list[float] | None, concurrency: list[int] | None, seed: int,
                        kind: str = "poisson", burstiness: float = 1.0) -> list[LoadPoint]:
    points = []
    if concurrency:
        for c in concurrency:
            points.append(LoadPoint(name=f"c{c}", arrival=ArrivalSpec(kind="concurrency", concurrency=int(c), seed=seed)))
    else:
        for r in rates or [1.0]:
            points.append(LoadPoint(name=f"{r:g}rps", arrival=ArrivalSpec(kind=kind, rate=float(r), seed=seed,
                                                                           burstiness=burstiness)))
    return points


def _run_load(gen: LoadGenerator):
    """Run one load point; Ctrl-C stops sending, keeps completed records, then raises KeyboardInterrupt."""
    interrupted = False

    async def main():
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            gen.stop()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
        try:
            return await gen.run()
        finally:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    result = run_loop(main())
    if interrupted:
        raise KeyboardInterrupt
    return result


def _run_sharded_load(url: str, spec: RunSpec, requests: list, lp: LoadPoint, on_record,
                      client: dict):
    """One load point over `spec.client_workers` processes (workloads/multiproc.py): send times
    precomputed here, each worker loads the tokenizer itself. Records reach `on_record` when the
    shards finish; Ctrl-C keeps what completed, then raises KeyboardInterrupt."""
    from .multiproc import run_sharded

    kw = {k: v for k, v in client.items() if k != "tokenize"}
    tok_path = spec.tokenizer_path if client.get("tokenize") is not None else None
    result = run_sharded(url, spec.workload.endpoint, requests, lp.arrival, spec.client_workers,
                         load_point=lp.name, on_record=on_record, tokenizer_path=tok_path, **kw)
    if result.extra.get("interrupted"):
        raise KeyboardInterrupt
    return result


def process_shards(result: LoadResult) -> list[dict]:
    """run.json's `client_shards` lines of a load point sharded over this host's processes
    (multiproc.py): every shard on this host and its CLOCK_MONOTONIC, so no clock offset."""
    counts: dict[int, int] = {}
    for r in result.records:
        if r.client_shard is not None:
            counts[r.client_shard] = counts.get(r.client_shard, 0) + 1
    return [{"shard": w, "client_node": None, "hostname": socket.gethostname(),
             "n_records": counts.get(w, 0), "status": "ok", "error": None,
             "clock_offset_s": 0.0, "clock_uncertainty_s": 0.0, "health": h}
            for w, h in enumerate(result.extra["shard_health"])]


def _run_ray_load(url: str, spec: RunSpec, requests: list, lp: LoadPoint, on_record,
                  client: dict):
    """One load point over `spec.client_workers` Ray actors of the cluster at
    `spec.ray_address` (workloads/ray_shards.py): records reach `on_record` as the shards stream
    them; the tokenizer travels to the nodes pickled. Ctrl-C keeps what completed, then raises
    KeyboardInterrupt."""
    from .ray_shards import run_ray_sharded

    result = run_ray_sharded(spec.ray_address, url, spec.workload.endpoint, requests, lp.arrival,
                             spec.client_workers, load_point=lp.name, on_record=on_record,
                             **client)
    if result.extra.get("interrupted"):
        raise KeyboardInterrupt
    return result


def run(spec: RunSpec, observer: RunObserver | None = None) -> Path:
    """Execute the run; returns the results dir (also when incomplete, unless nothing was measured)."""
    session = RunSession(spec, observer or RunObserver())
    try:
        if spec.interleaved:
            session.measure_interleaved()
        else:
            for dep_spec in spec.deployments:
                session.measure_deployment(dep_spec)
    except BaseException:
        session.status = "incomplete"
        raise
    finally:
        session.finish()
    if not session.writer.records and session.failures:
        raise RunError(next(iter(session.failures.values())))
    return session.out


class RunSession:
    """One run in progress: the results dir being written, the prompts of each load point, the
    deployments alive, and what run.json will say (status, failures, client health, telemetry
    status, warm-up, load windows). `run` drives it: `measure_interleaved` (every deployment alive,
    load points in ABBA order) or `measure_deployment` for each deployment in turn, then `finish`."""

    def __init__(self, spec: RunSpec, observer: RunObserver):
        self.spec, self.obs = spec, observer
        self.out = Path(spec.out_dir)
        self.writer = ResultsWriter(self.out, overwrite=True)
        (self.out / "telemetry.jsonl").unlink(missing_ok=True)
        local_clients = 1 if spec.ray_address else spec.client_workers
        self.cpu_plan = plan_for_run(spec.deployments, local_clients) if spec.pin_cores else None
        client_pinning = pin_client(self.cpu_plan) if self.cpu_plan is not None else None
        self.writer.write_spec({**spec.to_dict(),
                                "cpu_plan": self.cpu_plan.to_dict() if self.cpu_plan else None})
        self.writer.write_env(collect_env(extra={"command": sys.argv,
                                                 "client_pinning": client_pinning}))
        self.clock = RunClock()
        self.tokenizer = load_tokenizer_for(spec.tokenizer_path) if spec.tokenizer_path else None
        self.lp_requests: dict[tuple[str, int], list] = {}
        self.count_note: str | None = None      # the last request_count_note shown
        self.status = "complete"
        self.windows: dict[tuple, tuple[float, float]] = {}
        self.failures: dict[str, str] = {}
        self.health: dict[str, dict] = {}
        self.telemetry: dict[str, dict] = {}
        self.warmups: dict[str, dict] = {}
        self.client_shards: dict[str, list] = {}   # Ray shards of each load point (ray_shards.py)
        self.client_failures: dict[str, dict] = {}
        self.seen_lps: dict[str, LoadPoint] = {}
        self.live: dict[str, tuple[Any, dict, TelemetrySampler]] = {}   # name -> (dep, client, sampler)
        self.client_sampler = client_sampler(self.out / "telemetry.jsonl", self.clock.now).start()
        self.server_metrics = ServerMetricsRecorder(self.out, self.out / "telemetry.jsonl")
        self.energy = open_energy_meter()       # the measuring host's NVML / RAPL counters

    # ------------------------------------------------------------------ prompts

    def requests_for(self, lp: LoadPoint, repeat: int = 0) -> list:
        """The prompts of load point `lp` in repeat `repeat`. Each (load point, repeat) gets its
        own (same length distribution, a seed of its own: the i-th first seen uses workload seed
        + 7919*i): re-sent prompts would hit the server's prefix cache and make later
        measurements look fast. Every deployment gets the same prompts at the same point."""
        key = (lp.name, repeat)
        if key not in self.lp_requests:
            i = len(self.lp_requests)
            seed = self.spec.workload.seed + 7919 * i
            reqs = build_requests(replace(self.spec.workload, seed=seed), self.tokenizer,
                                  id_prefix=f"req-{i}")
            self.lp_requests[key] = reqs
            note = request_count_note(self.spec.workload, len(reqs))
            if note and note != self.count_note:     # say it once, not per load point
                self.obs.message(note)
                self.count_note = note
        return self.lp_requests[key]

    def _warmup_requests(self) -> list:
        """Warm-up prompts: the workload's prompt lengths, 8 output tokens, a seed of their own."""
        wl = self.spec.workload
        return build_requests(
            WorkloadSpec(input_len=wl.input_len, output_len=LengthDist.fixed(8),
                         num_requests=max(1, self.spec.warmup_max_requests,
                                          self.spec.warmup_requests),
                         seed=wl.seed + 10_000, endpoint=wl.endpoint),
            self.tokenizer, id_prefix="warmup")

    # ------------------------------------------------------------------ deployments

    def start_deployment(self, dep_spec: EngineDeploymentSpec | ExternalDeploymentSpec) -> bool:
        """Launch it on its cores, start its telemetry, warm it up; False if it did not start."""
        cores = self.cpu_plan.for_deployment(dep_spec.name) if self.cpu_plan is not None else None
        dep = make_deployment(dep_spec, self.out / "logs", cores=cores)
        if not self._start(dep_spec, dep):
            return False
        sampler = TelemetrySampler(self.out / "telemetry.jsonl", dep.pids, clock_fn=self.clock.now,
                                   deployment=dep_spec.name,
                                   prometheus_url=deployment_metrics_url(dep_spec, dep.base_url),
                                   prometheus_allow=ENGINE_PROMETHEUS_ALLOW,
                                   prometheus_headers=({"Authorization": f"Bearer {dep.api_key}"}
                                                       if dep.api_key else None)).start()
        client = dict(deployment=dep_spec.name, clock=self.clock, model=dep.model_name,
                      api_key=dep.api_key, timeout_s=self.spec.timeout_s,
                      tokenize=self.tokenizer.tokenize if self.tokenizer else None)
        self.live[dep_spec.name] = (dep, client, sampler)
        self.warm_up(dep_spec.name)
        return True

    def warm_up(self, name: str) -> None:
        """Warm-up requests one at a time until their latencies are stable (schedule.py)."""
        if not self.spec.warmup_requests:
            return
        dep, client, _ = self.live[name]
        tracker = WarmupTracker(min_requests=self.spec.warmup_requests,
                                max_requests=max(self.spec.warmup_requests,
                                                 self.spec.warmup_max_requests))
        for req in self._warmup_requests():
            result = _run_load(LoadGenerator(dep.base_url, self.spec.workload.endpoint, [req],
                                             ArrivalSpec(kind="concurrency", concurrency=1),
                                             load_point="warmup", **client))
            rec = result.records[0] if result.records else None
            tracker.add(rec.e2e_s if rec is not None and not rec.error else None)
            if tracker.done:
                break
        self.warmups[name] = tracker.to_dict()
        if tracker.stable:
            self.obs.message(f"{name}: warm after {len(tracker.latencies)} requests "
                             f"(last {tracker.latencies[-1] * 1e3:.0f} ms)")
        else:
            self.obs.message(f"{name}: warm-up latencies did not settle within "
                             f"{tracker.max_requests} requests "
                             f"({', '.join(f'{v * 1e3:.0f}' for v in tracker.latencies)} ms)")

    def stop_deployment(self, name: str) -> None:
        """Keep its step trace, stop its telemetry, stop it."""
        dep, _, sampler = self.live.pop(name)
        try:
            steps = dep.fetch_steps()
            if steps:
                self.writer.append_steps(steps, deployment=name)
        finally:
            self.telemetry[name] = sampler.stop()
            dep.stop()

    def _start(self, dep_spec, dep) -> bool:
        desc = getattr(dep_spec, "url", None) or f"engine {dep_spec.mode} ({dep_spec.model})"
        self.obs.deployment_starting(dep_spec.name, desc)
        t0 = time.perf_counter()
        try:
            dep.start()
        except DeploymentError as e:
            self._fail(dep_spec.name, str(e))
            return False
        self.obs.deployment_ready(dep_spec.name, time.perf_counter() - t0)
        return True

    # ------------------------------------------------------------------ the two orders

    def measure_interleaved(self) -> None:
        """Every deployment started (and warmed up) first; then each load point measured on every
        deployment in ABBA order, `repeats` times. A deployment that dies or trips the error-rate
        stop is dropped from the rest of the schedule; the others go on."""
        try:
            for dep_spec in self.spec.deployments:
                self.start_deployment(dep_spec)
            names = [d.name for d in self.spec.deployments]
            for name, lp, r in interleaved_schedule(names, self.spec.load_points, self.spec.repeats):
                if name not in self.live:
                    continue
                self.seen_lps.setdefault(lp.name, lp)
                if not self._measure_if_alive(name, lp, r, {}):
                    self.stop_deployment(name)
        finally:
            for name in list(self.live):
                self.stop_deployment(name)

    def measure_deployment(self, dep_spec: EngineDeploymentSpec | ExternalDeploymentSpec) -> None:
        """One deployment alone: start, warm up, every load point (`repeats` times, or the goodput
        search's adaptive points), step trace, stop. A deployment that fails to start, dies, or
        trips the error-rate stop is recorded in `failures`; the next deployment still runs."""
        if not self.start_deployment(dep_spec):
            return
        try:
            for r in range(max(1, self.spec.repeats)):
                measured: dict[float, float] = {}   # rate -> joint SLO attainment (--bisect)
                for lp in plan_load_points(self.spec, measured):
                    self.seen_lps.setdefault(lp.name, lp)
                    if not self._measure_if_alive(dep_spec.name, lp, r, measured):
                        return
        finally:
            self.stop_deployment(dep_spec.name)

    def _measure_if_alive(self, name: str, lp: LoadPoint, repeat: int,
                          measured: dict[float, float]) -> bool:
        dep, client, _ = self.live[name]
        if not dep.alive():
            self._fail(name, f"deployment died before load point {lp.name}")
            return False
        return self._measure_load_point(name, dep.base_url, lp, client, measured, repeat)

    def _measure_load_point(self, deployment: str, url: str, lp: LoadPoint, client: dict,
                            measured: dict[float, float], repeat: int = 0) -> bool:
        """Send one load point's requests, appending each record as it completes; False when the
        error-rate stop tripped (the deployment's remaining load points are skipped)."""
        requests = self.requests_for(lp, repeat)
        label = lp.name if self.spec.repeats <= 1 else f"{lp.name} (repeat {repeat + 1})"
        self.obs.load_point_starting(deployment, label, len(requests))
        stopper = ErrorRateStop(self.spec.max_error_rate, self.spec.error_window)
        gen: LoadGenerator | None = None
        dep = self.live[deployment][0]
        key = getattr(dep, "api_key", None)
        self.server_metrics.before(deployment, deployment_metrics_url(getattr(dep, "spec", None), url),
                                   {"Authorization": f"Bearer {key}"} if key else None)

        def on_record(rec: RequestRecord) -> None:
            rec.repeat = repeat
            self.writer.append_record(rec)
            self.obs.record(rec)
            if stopper.observe(bool(rec.error), rec.error) and gen is not None:
                gen.stop()

        energy_before = self.energy.read()
        if self.spec.ray_address:
            result = _run_ray_load(url, self.spec, requests, lp, on_record, client)
        elif self.spec.client_workers > 1:
            result = _run_sharded_load(url, self.spec, requests, lp, on_record, client)
        else:
            gen = LoadGenerator(url, self.spec.workload.endpoint, requests, lp.arrival,
                                load_point=lp.name, on_record=on_record, **client)
            result = _run_load(gen)
        self.writer.append_energy(energy_row(deployment, lp.name, repeat, self.energy,
                                             energy_before, self.energy.read()))
        self.windows[(deployment, lp.name, repeat)] = result.window
        self.server_metrics.after(deployment, lp.name, repeat, len(requests), result.window)
        if lp.arrival.rate is not None:
            att = summarize(result.records, self.spec.slo, result.window).get("slo_attainment")
            measured[float(lp.arrival.rate)] = float(att) if att is not None else 0.0
        key = f"{deployment}/{lp.name}" + (f"/{repeat}" if repeat else "")
        self.health[key] = result.health.to_dict()
        if "shards" in result.extra:
            self.client_shards[key] = result.extra["shards"]
        elif "shard_health" in result.extra:       # process shards: this host, one clock
            self.client_shards[key] = process_shards(result)
        if result.extra.get("shard_failures"):    # the other shards finished; the run did not
            self.client_failures[key] = result.extra["shard_failures"]
            self.status = "incomplete"
            for msg in result.extra["shard_failures"].values():
                self.obs.message(f"{deployment} @ {label}: {msg}")
        self.obs.load_point_done(deployment, label, result.health.to_dict())
        if stopper.tripped:
            self._fail(deployment, f"stopped at load point {lp.name}: error rate over "
                                   f"{self.spec.max_error_rate:.0%} ({stopper.describe()})")
            return False
        return True

    def _fail(self, deployment: str, message: str) -> None:
        self.failures[deployment] = message
        self.status = "incomplete"
        self.obs.deployment_failed(deployment, message)

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Write run.json and requests.parquet / summary (also after a failure or Ctrl-C)."""
        for name in list(self.live):
            self.stop_deployment(name)
        self.telemetry["client"] = self.client_sampler.stop()
        self.energy.close()
        if self.spec.bisect is not None and self.seen_lps:  # the load points the search chose
            self.writer.write_spec({**self.spec.to_dict(),
                                    "cpu_plan": self.cpu_plan.to_dict() if self.cpu_plan else None,
                                    "load_points": [lp.to_dict() for lp in self.seen_lps.values()]})
        if self.spec.ray_address:
            from .ray_shards import disconnect
            disconnect()
        if self.spec.ray_address or self.client_shards:
            self.writer.set_run_info(client_shards=self.client_shards,
                                     client_shard_failures=self.client_failures)
        self.writer.set_run_info(deployment_failures=self.failures, client_health=self.health,
                                 telemetry=self.telemetry, warmup=self.warmups,
                                 energy=self.energy.status(),
                                 load_windows=[{"deployment": d, "load_point": lp, "repeat": r,
                                                "start_s": w[0], "end_s": w[1]}
                                               for (d, lp, r), w in self.windows.items()])
        self.writer.finalize(status=self.status, windows=self.windows)
