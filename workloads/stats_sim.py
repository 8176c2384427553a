"""Simulation studies of `workloads/stats.py`: data sets with a known truth, and the coverage /
false-positive / power counts that validate the intervals (pure functions of a seed; numpy, scipy).

Role in the data flow: none at run time. tests/test_stats.py runs these studies small (a few
hundred data sets) and asserts on them; bench/stats_coverage.py runs them large and prints tables.

Model of per-request latencies under queueing: a Gaussian AR(1) series in send order,
z_t = phi z_{t-1} + sqrt(1 - phi^2) e_t (stationary, unit variance; phi = how much a request's
latency carries over to the next one: 0 = independent, 0.6 = a slow request drags ~the next 2-3),
and latency = scale * exp(sigma * z_t): lognormal marginals with known percentiles and mean.
SLO hits: 1{z_t <= Phi^-1(p)} of the same kind of series, so misses cluster and the true
attainment is p. Failed requests: NaN at random positions (they carry no latency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy import stats as sps

from . import stats as S


def ar1(shape: tuple[int, int], phi: float, rng: np.random.Generator) -> np.ndarray:
    """(m, n) independent stationary Gaussian AR(1) series with unit variance, along axis 1."""
    m, n = shape
    e = rng.standard_normal((m, n))
    if phi == 0:
        return e
    z0 = e[:, :1]
    rest, _ = signal.lfilter([math.sqrt(1 - phi * phi)], [1.0, -phi], e[:, 1:], axis=1,
                             zi=phi * z0)
    return np.concatenate([z0, rest], axis=1)


def lognormal_series(shape: tuple[int, int], phi: float, rng: np.random.Generator,
                     sigma: float = 0.5, scale: float = 1.0, fail: float = 0.0) -> np.ndarray:
    """(m, n) latency series: scale * exp(sigma * AR(1)); a share `fail` set to NaN at random."""
    x = scale * np.exp(sigma * ar1(shape, phi, rng))
    if fail > 0:
        x[rng.random(shape) < fail] = np.nan
    return x


def lognormal_truth(stat: str | float | None, sigma: float = 0.5, scale: float = 1.0) -> float:
    """The true mean / percentile of scale * exp(sigma * N(0, 1))."""
    q = S.parse_stat(stat)
    if q is None:
        return scale * math.exp(sigma * sigma / 2)
    return scale * math.exp(sigma * float(sps.norm.ppf(q / 100.0)))


def hit_series(shape: tuple[int, int], p: float, phi: float,
               rng: np.random.Generator) -> np.ndarray:
    """(m, n) 0/1 SLO hits with P(hit) = p, clustered like an AR(1) with coefficient phi."""
    return (ar1(shape, phi, rng) <= sps.norm.ppf(p)).astype(float)


@dataclass(frozen=True)
class Study:
    """The outcome of a simulation study: `hits` of `n_sets` data sets (covered, or a winner
    called), and the mean interval width relative to the truth where it applies."""
    hits: int
    n_sets: int
    width: float = float("nan")

    @property
    def rate(self) -> float:
        return self.hits / self.n_sets

    def binomial_interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the rate itself (how precisely the study measured it)."""
        iv = S.wilson_interval(self.hits, self.n_sets)
        return iv.lo, iv.hi


def interval_coverage(stat: str = "p90", n: int = 150, phi: float = 0.6, n_sets: int = 200,
                      seed: int = 0, method: str = "block", sigma: float = 0.5,
                      fail: float = 0.0, n_boot: int = S.N_BOOT) -> Study:
    """How often the nominal-95% interval of one sample's statistic covers the truth."""
    rng = np.random.default_rng(seed)
    data = lognormal_series((n_sets, n), phi, rng, sigma, fail=fail)
    truth = lognormal_truth(stat, sigma)
    hits, width = 0, 0.0
    for i, x in enumerate(data):
        iv = S.interval(x, stat, n_boot=n_boot, seed=seed * 100_003 + i, method=method)
        hits += bool(iv.lo <= truth <= iv.hi)
        width += (iv.hi - iv.lo) / truth
    return Study(hits, n_sets, width / n_sets)


def comparison_study(stat: str = "p90", n: int = 50, phi: float = 0.3, effect: float = 1.0,
                     n_sets: int = 100, seed: int = 0, method: str = "block",
                     sigma: float = 0.5, n_boot: int = S.N_BOOT,
                     count: str = "covered") -> Study:
    """Two independent samples, B = A's process scaled by `effect` (1.0: A/A). count "covered":
    how often the difference interval covers the true difference; "called": how often a
    winner is called (significant)."""
    rng = np.random.default_rng(seed)
    a = lognormal_series((n_sets, n), phi, rng, sigma)
    b = lognormal_series((n_sets, n), phi, rng, sigma, scale=effect)
    t_a = lognormal_truth(stat, sigma)
    truth = t_a * effect - t_a
    hits, width = 0, 0.0
    for i in range(n_sets):
        c = S.bootstrap_comparison(a[i], b[i], stat, n_boot=n_boot, seed=seed * 100_003 + i,
                                   method=method)
        if count == "covered":
            hits += bool(c.diff_lo <= truth <= c.diff_hi)
        elif count == "called":
            hits += c.significant
        else:
            raise ValueError(count)
        width += (c.diff_hi - c.diff_lo) / t_a
    return Study(hits, n_sets, width / n_sets)


def wilson_coverage(p: float = 0.9, n: int = 100, phi: float = 0.0, n_sets: int = 400,
                    seed: int = 0, correlated: bool = True) -> Study:
    """How often the attainment interval covers the true attainment p."""
    rng = np.random.default_rng(seed)
    data = hit_series((n_sets, n), p, phi, rng)
    hits, width = 0, 0.0
    for x in data:
        iv = S.attainment_interval(x, correlated=correlated)
        hits += bool(iv.lo <= p <= iv.hi)
        width += iv.hi - iv.lo
    return Study(hits, n_sets, width / n_sets)


def attainment_diff_coverage(p_a: float = 0.9, p_b: float = 0.8, n: int = 100, phi: float = 0.0,
                             n_sets: int = 400, seed: int = 0, correlated: bool = True) -> Study:
    """How often the Newcombe interval of p_b - p_a covers the true difference."""
    rng = np.random.default_rng(seed)
    a = hit_series((n_sets, n), p_a, phi, rng)
    b = hit_series((n_sets, n), p_b, phi, rng)
    hits, width = 0, 0.0
    for xa, xb in zip(a, b):
        c = S.compare_attainment(xa, xb, correlated=correlated)
        hits += bool(c.diff_lo <= p_b - p_a <= c.diff_hi)
        width += c.diff_hi - c.diff_lo
    return Study(hits, n_sets, width / n_sets)


def attainment_curve(rates: np.ndarray, knee: float, width: float) -> np.ndarray:
    """A smooth decreasing attainment curve: 1 - Phi((rate - knee) / width) scaled to [0, 1]."""
    return sps.norm.sf((np.asarray(rates, dtype=float) - knee) / width)


def goodput_coverage(rates: tuple[float, ...] = (1, 2, 3, 4, 5, 6), knee: float = 4.0,
                     width: float = 1.0, n: int = 60, phi: float = 0.3, target: float = 0.9,
                     n_sets: int = 200, seed: int = 0, n_boot: int = S.N_BOOT) -> Study:
    """How often the goodput interval covers the goodput of the true curve read with the same
    rule at the same rates (what a sweep at these rates estimates). Flagged (non-monotone)
    curves count as misses."""
    r = np.asarray(rates, dtype=float)
    p = attainment_curve(r, knee, width)
    truth = S.goodput_replicates(r, p[None, :], target)[0]
    rng = np.random.default_rng(seed)
    hits, width_sum = 0, 0.0
    for i in range(n_sets):
        mets = [hit_series((1, n), float(pi), phi, rng)[0] for pi in p]
        g = S.goodput_interval(r, mets, target, n_boot=n_boot, seed=seed * 100_003 + i)
        if g.lo is not None and g.lo <= truth <= g.hi:
            hits += 1
        if g.lo is not None:
            width_sum += g.hi - g.lo
    return Study(hits, n_sets, width_sum / n_sets)


def repeats_coverage(r: int = 3, n: int = 50, phi: float = 0.3, run_sd: float = 0.1,
                     stat: str = "p90", n_sets: int = 200, seed: int = 0,
                     min_repeats: int = S.REPEATS_MIN) -> Study:
    """Coverage of `compare_runs` (A/A) with r repeats per side whose runs differ by a random
    factor exp(run_sd * N(0, 1)) (run-to-run variance a within-run bootstrap cannot see).
    The truth is 0; covered = no winner called."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n_sets):
        sides = []
        for _ in range(2):
            f = np.exp(run_sd * rng.standard_normal(r))
            sides.append([lognormal_series((1, n), phi, rng, scale=float(fk))[0] for fk in f])
        c = S.compare_runs(sides[0], sides[1], stat, seed=seed * 100_003 + i,
                           min_repeats=min_repeats)
        hits += not c.significant
    return Study(hits, n_sets)
