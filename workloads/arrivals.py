"""When requests are sent: send schedules computed up front from the seed.

Role in the data flow: `workloads/loadgen.py` calls `send_times(arrival, n)` before the first
send and sleeps until each time on the run clock. Same spec and seed -> the same times, bit for
bit (numpy PCG64 via `default_rng(seed)`). The first request is sent at t=0 (relative to the load
point's start); the gaps between requests are:
- poisson: exponential with mean 1/rate;
- gamma: gamma with shape = burstiness and mean 1/rate (coefficient of variation
  1/sqrt(burstiness): 1 is poisson, < 1 burstier, > 1 smoother);
- constant: exactly 1/rate.
`concurrency` is closed-loop: there is no schedule (returns None); N workers each send the next
request when their previous one finishes (implemented in loadgen).
`trace` replays a timestamped JSONL trace (`arrival.trace_path`): the send times are the
trace's timestamps minus the first one, divided by `arrival.speedup`, exactly (no rounding,
no jitter); `trace_send_times(requests)` does the same from the requests of a "trace" workload.

`rate_sweep(...)` produces the load points of a sweep (linear or geometric rates, one
LoadPoint each, all with the same seed so each point's schedule is reproducible).
"""

from __future__ import annotations

import numpy as np

from .spec import ArrivalSpec, LoadPoint


def gaps(arrival: ArrivalSpec, n: int) -> np.ndarray | None:
    """n-1 gaps between consecutive sends (seconds), or None for closed-loop."""
    if arrival.kind == "concurrency":
        return None
    if arrival.kind == "trace":
        t = send_times(arrival, n)
        return np.diff(t)
    m = max(n - 1, 0)
    rate = float(arrival.rate)
    if arrival.kind == "constant":
        return np.full(m, 1.0 / rate)
    rng = np.random.default_rng(arrival.seed)
    if arrival.kind == "poisson":
        return rng.exponential(1.0 / rate, size=m)
    if arrival.kind == "gamma":
        shape = float(arrival.burstiness)
        return rng.gamma(shape, 1.0 / (rate * shape), size=m)
    raise ValueError(f"unknown arrival kind {arrival.kind!r}")


def send_times(arrival: ArrivalSpec, n: int) -> np.ndarray | None:
    """n send times in seconds from the load point's start (first at 0.0), or None (closed-loop).
    A trace arrival needs `trace_path` here (with a "trace" workload the load generator takes
    the times from the requests instead) and at least n lines in it."""
    if arrival.kind == "trace":
        if not arrival.trace_path:
            raise ValueError("trace arrival without trace_path: pass requests that carry "
                             "send_at_s (a 'trace' workload) or set trace_path")
        from .dataset_files import read_trace

        stamps = np.asarray([e["timestamp"] for e in read_trace(arrival.trace_path)], float)
        if len(stamps) < n:
            raise ValueError(f"trace {arrival.trace_path} has {len(stamps)} entries, "
                             f"{n} requested")
        stamps = stamps[:n]
        return (stamps - stamps[0]) / float(arrival.speedup) if n else np.zeros(0)
    g = gaps(arrival, n)
    if g is None:
        return None
    if n <= 0:
        return np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(g)])


def trace_send_times(requests) -> np.ndarray:
    """Send times of requests that carry `send_at_s` (a "trace" workload), relative to the
    earliest one."""
    t = np.asarray([getattr(r, "send_at_s", None) for r in requests], dtype=object)
    if any(v is None for v in t):
        raise ValueError("trace arrival: some requests have no send_at_s (not a trace workload)")
    t = t.astype(float)
    return t - t.min() if t.size else t


def rate_sweep(rates=None, *, start: float | None = None, stop: float | None = None,
               num: int | None = None, geometric: bool = False, kind: str = "poisson",
               burstiness: float = 1.0, seed: int = 0) -> list[LoadPoint]:
    """Load points of a rate sweep, lowest rate first. Either explicit `rates`, or `num` rates
    from `start` to `stop` inclusive (evenly spaced, or geometrically with geometric=True).
    kind: "poisson" | "constant" | "gamma" (with `burstiness`). Names are like "4rps"."""
    if rates is None:
        if start is None or stop is None or not num:
            raise ValueError("rate_sweep needs rates, or start, stop and num")
        if start <= 0 or stop < start or num < 1:
            raise ValueError(f"rate_sweep: need 0 < start <= stop and num >= 1 "
                             f"(got {start}, {stop}, {num})")
        if num == 1:
            rates = [float(start)]
        elif geometric:
            rates = np.geomspace(start, stop, num).tolist()
        else:
            rates = np.linspace(start, stop, num).tolist()
    rates = sorted(float(r) for r in rates)
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"rate_sweep: rates must be > 0, got {rates}")
    if kind not in ("poisson", "constant", "gamma"):
        raise ValueError(f"rate_sweep kind must be poisson, constant or gamma, not {kind!r}")
    out = []
    for r in rates:
        r = float(f"{r:.6g}")
        out.append(LoadPoint(name=f"{r:g}rps", arrival=ArrivalSpec(
            kind=kind, rate=r, burstiness=burstiness, seed=seed)))
    return out
