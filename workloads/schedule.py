"""When each measurement runs: the interleaved order of load points across deployments, and when
a deployment's warm-up is over.

Role in the data flow: `workloads/runner.py` asks `interleaved_schedule` for the order in which
(deployment, load point, repeat) measurements run, and feeds each warm-up request's latency to
`WarmupTracker` until it says the deployment is warm. Both are pure.

Interleaving: measuring every load point of deployment A, then every one of B, lets drift over
minutes (thermal state, a neighbour's load, page cache) hit one side only. Instead each load point
is measured for every deployment before the next one starts, and the order of the deployments
alternates (A B, B A, A B, ...) from one load point to the next and from one repeat to the next,
so each deployment goes first as often as last (an ABBA design: a linear drift cancels out of the
pooled comparison). Repeats then measure the same point early and late, which shows the drift.

Warm-up: a fixed number of warm-up requests does not make a cold engine warm (first-touch page
faults, allocator growth, lazy kernel builds, CPU frequency). Warm-up requests are sent one at a
time until the last `window` of them agree to within `tolerance` (max/min - 1), after at least
`min_requests` and at most `max_requests`; whether it settled is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, TypeVar

D = TypeVar("D")
L = TypeVar("L")


def interleaved_schedule(deployments: Sequence[D], load_points: Sequence[L],
                         repeats: int = 1) -> list[tuple[D, L, int]]:
    """(deployment, load point, repeat) in the order to measure them: load point by load point,
    every deployment at each, the deployments' order reversed at every other step (ABBA)."""
    out: list[tuple[D, L, int]] = []
    step = 0
    for r in range(max(1, int(repeats))):
        for lp in load_points:
            order = list(deployments) if step % 2 == 0 else list(reversed(deployments))
            out.extend((d, lp, r) for d in order)
            step += 1
    return out


def sequential_schedule(deployments: Sequence[D], load_points: Sequence[L],
                        repeats: int = 1) -> list[tuple[D, L, int]]:
    """The old order (every load point of one deployment, then the next), for comparison."""
    return [(d, lp, r) for d in deployments for r in range(max(1, int(repeats)))
            for lp in load_points]


@dataclass
class WarmupTracker:
    """Feeds on one latency per warm-up request (seconds); `done` once they are stable or the
    budget is spent. `stable` says which."""

    min_requests: int = 3
    max_requests: int = 8
    window: int = 3
    tolerance: float = 0.25
    latencies: list[float] = field(default_factory=list)

    def add(self, latency_s: float | None) -> None:
        self.latencies.append(float("nan") if latency_s is None else float(latency_s))

    @property
    def stable(self) -> bool:
        if len(self.latencies) < max(self.min_requests, self.window):
            return False
        last = self.latencies[-self.window:]
        if any(not (v == v) or v <= 0 for v in last):     # a failed request is not stable
            return False
        return max(last) / min(last) - 1.0 <= self.tolerance

    @property
    def done(self) -> bool:
        return self.stable or len(self.latencies) >= self.max_requests

    def to_dict(self) -> dict:
        return {"n": len(self.latencies), "stable": self.stable,
                "latencies_s": [round(v, 6) for v in self.latencies],
                "window": self.window, "tolerance": self.tolerance}
