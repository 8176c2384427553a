"""The goodput search picks its load points from measured attainment (bisection on the rate)."""

from __future__ import annotations

from infer_bench.workloads.runner import BisectSpec, RunSpec, plan_load_points
from infer_bench.workloads.spec import WorkloadSpec


def drive(bisect: BisectSpec, capacity: float) -> list[float]:
    """Attainment 1.0 below `capacity` req/s, 0.0 above; returns the rates measured in order."""
    spec = RunSpec(deployments=[], workload=WorkloadSpec(), load_points=[], bisect=bisect)
    measured: dict[float, float] = {}
    rates = []
    for lp in plan_load_points(spec, measured):
        rates.append(lp.arrival.rate)
        measured[lp.arrival.rate] = 1.0 if lp.arrival.rate <= capacity else 0.0
    return rates


def test_bisection_brackets_capacity():
    rates = drive(BisectSpec(rate_lo=0.25, rate_hi=4.0, iterations=4), capacity=1.3)
    assert rates[:2] == [0.25, 4.0]
    assert len(rates) == 6
    passed = [r for r in rates if r <= 1.3]
    failed = [r for r in rates if r > 1.3]
    # after 4 geometric halvings of [0.25, 4] the bracket is within a factor 16**(1/16) ~ 1.19
    assert max(passed) <= 1.3 < min(failed) <= max(passed) * 1.2


def test_no_bisection_when_ends_decide():
    assert drive(BisectSpec(rate_lo=1, rate_hi=2, iterations=5), capacity=10) == [1, 2]
    assert drive(BisectSpec(rate_lo=1, rate_hi=2, iterations=5), capacity=0.5) == [1, 2]


def test_fixed_load_points_pass_through():
    from infer_bench.workloads.runner import default_load_points
    lps = default_load_points([0.5, 1.0], None, seed=0)
    spec = RunSpec(deployments=[], workload=WorkloadSpec(), load_points=lps)
    assert [lp.name for lp in plan_load_points(spec, {})] == ["0.5rps", "1rps"]
