"""The run orchestrator: RunSpec -> deployments x load points -> one results dir.

For each deployment in turn: launch it (or check an external URL), send warm-up requests, then
drive every load point with precomputed requests and send times (identical for every deployment
at a given load point; load point i uses workload seed + 7919*i, so no prompt is re-sent to hit a
warm prefix cache), appending each
RequestRecord to the results dir as it completes; pull the engine's step trace; stop it. A run
that fails part-way (a deployment that does not start, Ctrl-C, an error) still finalises the
results dir, marked incomplete, with everything measured so far.

The runner talks to deployments only through `backends.launch` (HTTP); it never imports the
engine. Progress goes to a `RunObserver` (the CLI draws rich progress bars with it).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infer_bench.backends.launch import (
    DeploymentError, EngineDeploymentSpec, ExternalDeploymentSpec, make_deployment,
)
from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import RunClock

from .datasets import build_requests
from .loadgen import LoadGenerator
from .metrics import summarize
from .prompt_text import load_tokenizer_for
from .records import RequestRecord
from .results import ResultsWriter, collect_env
from .spec import SLO, ArrivalSpec, LoadPoint, WorkloadSpec
from .telemetry import TelemetrySampler

# Engine series worth scraping from /metrics onto the telemetry timeline.
ENGINE_PROMETHEUS_ALLOW = ["infer_bench_num_requests_*", "infer_bench_kv_*", "infer_bench_prefix_cache_hit_rate",
                           "infer_bench_num_preemptions_total", "vllm:num_requests_*", "vllm:gpu_cache_usage_perc"]


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
        }


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
    """Trips when more than `max_rate` of the last `window` requests failed (after >= min_seen)."""

    def __init__(self, max_rate: float, window: int, min_seen: int = 10):
        self.max_rate, self.window, self.min_seen = max_rate, max(1, window), min_seen
        self.recent: list[bool] = []
        self.tripped = False

    def observe(self, failed: bool) -> bool:
        self.recent = (self.recent + [failed])[-self.window:]
        if (not self.tripped and len(self.recent) >= min(self.min_seen, self.window)
                and sum(self.recent) / len(self.recent) > self.max_rate):
            self.tripped = True
        return self.tripped

    def describe(self) -> str:
        return f"{sum(self.recent)} of the last {len(self.recent)} requests failed"


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
        nonlocal interrupted
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
                      common: dict):
    """One load point over `spec.client_workers` processes (workloads/multiproc.py): send times
    precomputed here, each worker loads the tokenizer itself. Records reach `on_record` when the
    shards finish; Ctrl-C keeps what completed, then raises KeyboardInterrupt."""
    from .multiproc import run_sharded

    kw = {k: v for k, v in common.items() if k != "tokenize"}
    tok_path = spec.tokenizer_path if common.get("tokenize") is not None else None
    result = run_sharded(url, spec.workload.endpoint, requests, lp.arrival, spec.client_workers,
                         load_point=lp.name, on_record=on_record, tokenizer_path=tok_path, **kw)
    if result.extra.get("interrupted"):
        raise KeyboardInterrupt
    return result


def run(spec: RunSpec, observer: RunObserver | None = None) -> Path:
    """Execute the run; returns the results dir (also when incomplete, unless nothing was measured)."""
    obs = observer or RunObserver()
    out = Path(spec.out_dir)
    writer = ResultsWriter(out, overwrite=True)
    (out / "telemetry.jsonl").unlink(missing_ok=True)
    writer.write_spec(spec.to_dict())
    writer.write_env(collect_env(extra={"command": sys.argv}))
    clock = RunClock()
    tokenizer = load_tokenizer_for(spec.tokenizer_path) if spec.tokenizer_path else None
    # Each load point gets its own prompts (same length distribution, a seed of its own): re-sent
    # prompts would hit the server's prefix cache and make later load points look fast. Every
    # deployment gets the same prompts at the same load point.
    lp_requests: dict[str, list] = {}

    def requests_for(lp: LoadPoint) -> list:
        if lp.name not in lp_requests:
            seed = spec.workload.seed + 7919 * len(lp_requests)
            lp_requests[lp.name] = build_requests(replace(spec.workload, seed=seed), tokenizer,
                                                     id_prefix=f"req-{len(lp_requests)}")
        return lp_requests[lp.name]

    warm = build_requests(
        WorkloadSpec(input_len=spec.workload.input_len, output_len=8, num_requests=max(1, spec.warmup_requests),
                     seed=spec.workload.seed + 10_000, endpoint=spec.workload.endpoint),
        tokenizer, id_prefix="warmup") if spec.warmup_requests else []

    windows: dict[tuple[str, str], tuple[float, float]] = {}
    failures: dict[str, str] = {}
    health: dict[str, dict] = {}
    telemetry: dict[str, dict] = {}
    status = "complete"
    seen_lps: dict[str, LoadPoint] = {}
    try:
        for dep_spec in spec.deployments:
            dep = make_deployment(dep_spec, out / "logs")
            desc = getattr(dep_spec, "url", None) or f"engine {dep_spec.mode} ({dep_spec.model})"
            obs.deployment_starting(dep_spec.name, desc)
            t0 = time.perf_counter()
            try:
                dep.start()
            except DeploymentError as e:
                failures[dep_spec.name] = str(e)
                status = "incomplete"
                obs.deployment_failed(dep_spec.name, str(e))
                continue
            obs.deployment_ready(dep_spec.name, time.perf_counter() - t0)
            sampler = TelemetrySampler(out / "telemetry.jsonl", dep.pids, clock_fn=clock.now,
                                       deployment=dep_spec.name, prometheus_url=dep.base_url,
                                       prometheus_allow=ENGINE_PROMETHEUS_ALLOW).start()
            try:
                common = dict(deployment=dep_spec.name, clock=clock, model=dep.model_name,
                              api_key=dep.api_key, timeout_s=spec.timeout_s,
                              tokenize=tokenizer.tokenize if tokenizer else None)
                if warm:
                    _run_load(LoadGenerator(dep.base_url, spec.workload.endpoint, warm,
                                            ArrivalSpec(kind="concurrency", concurrency=1),
                                            load_point="warmup", **common))
                measured: dict[float, float] = {}
                for lp in plan_load_points(spec, measured):
                    if lp.name not in seen_lps:
                        seen_lps[lp.name] = lp
                    if not dep.alive():
                        failures[dep_spec.name] = f"deployment died before load point {lp.name}"
                        status = "incomplete"
                        obs.deployment_failed(dep_spec.name, failures[dep_spec.name])
                        break
                    requests = requests_for(lp)
                    obs.load_point_starting(dep_spec.name, lp.name, len(requests))
                    stopper = ErrorRateStop(spec.max_error_rate, spec.error_window)
                    gen: LoadGenerator | None = None

                    def on_record(rec: RequestRecord) -> None:
                        writer.append_record(rec)
                        obs.record(rec)
                        if stopper.observe(bool(rec.error)) and gen is not None:
                            gen.stop()

                    if spec.client_workers > 1:
                        result = _run_sharded_load(dep.base_url, spec, requests, lp, on_record,
                                                   common)
                    else:
                        gen = LoadGenerator(dep.base_url, spec.workload.endpoint, requests,
                                            lp.arrival, load_point=lp.name, on_record=on_record,
                                            **common)
                        result = _run_load(gen)
                    windows[(dep_spec.name, lp.name)] = result.window
                    if lp.arrival.rate is not None:
                        att = summarize(result.records, spec.slo, result.window).get("slo_attainment")
                        measured[float(lp.arrival.rate)] = float(att) if att is not None else 0.0
                    health[f"{dep_spec.name}/{lp.name}"] = result.health.to_dict()
                    obs.load_point_done(dep_spec.name, lp.name, result.health.to_dict())
                    if stopper.tripped:
                        failures[dep_spec.name] = (f"stopped at load point {lp.name}: error rate over "
                                                   f"{spec.max_error_rate:.0%} ({stopper.describe()})")
                        status = "incomplete"
                        obs.deployment_failed(dep_spec.name, failures[dep_spec.name])
                        break
                steps = dep.fetch_steps()
                if steps:
                    writer.append_steps(steps, deployment=dep_spec.name)
            finally:
                telemetry[dep_spec.name] = sampler.stop()
                dep.stop()
    except BaseException:
        status = "incomplete"
        raise
    finally:
        if spec.bisect is not None and seen_lps:  # record the load points the search chose
            writer.write_spec({**spec.to_dict(), "load_points": [lp.to_dict() for lp in seen_lps.values()]})
        writer.set_run_info(deployment_failures=failures, client_health=health, telemetry=telemetry)
        writer.finalize(status=status, windows=windows)
    if not writer.records and failures:
        first = next(iter(failures.values()))
        raise RunError(first)
    return out
