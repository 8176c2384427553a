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
"""

from __future__ import annotations

import numpy as np

from .spec import ArrivalSpec


def gaps(arrival: ArrivalSpec, n: int) -> np.ndarray | None:
    """n-1 gaps between consecutive sends (seconds), or None for closed-loop."""
    if arrival.kind == "concurrency":
        return None
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
    """n send times in seconds from the load point's start (first at 0.0), or None (closed-loop)."""
    g = gaps(arrival, n)
    if g is None:
        return None
    if n <= 0:
        return np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(g)])
