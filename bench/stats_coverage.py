"""Coverage tables of the statistics core (workloads/stats.py) on simulated data with a known truth.

Run:  .venv/bin/python bench/stats_coverage.py [--sets 1000] [--only interval,comparison,...]

Data (workloads/stats_sim.py): per-request latencies exp(sigma * AR(1)) in send order (phi: how
much a request's latency carries over to the next, as queueing does), SLO hits from a thresholded
AR(1). Prints, for nominal 95% intervals:
  interval     coverage of p50 / p90 / p99 / mean of one sample, block bootstrap vs iid bootstrap,
               and the mean width relative to the truth
  comparison   difference coverage (B = 0.7 x A), A/A winner-call rate (block and iid), A/B power
               for a 30% difference at sigma 0.25 and 0.5
  attainment   Wilson (plain / effective n) and Newcombe coverage at p = 0.9 (0.9 vs 0.8)
  goodput      coverage of the goodput interval on a smooth attainment curve at 6 rates
  repeats      A/A no-call rate of compare_runs by repeats per side, with and without run-to-run
               variance (why repeats take over from 3 per side)
  speed        time of one interval (n = 200, 1000 replicates)
Each rate carries its own 95% binomial interval (how precisely --sets measured it): at 1000
sets a coverage is known to about +-1.4 points. About 25 min at --sets 1000 on one busy core;
--sets 200 (about +-3 points) in about 5 min.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from infer_bench.workloads import stats as S
from infer_bench.workloads import stats_sim as sim


def fmt(st: sim.Study) -> str:
    lo, hi = st.binomial_interval()
    return f"{st.rate:6.3f} [{lo:.3f}, {hi:.3f}]"


def interval_table(sets: int) -> None:
    print("\n## One sample: coverage of nominal 95% intervals (lognormal sigma 0.5)")
    print(f"{'stat':5} {'phi':>4} {'n':>4}  {'block bootstrap':>22} {'width':>6}  "
          f"{'iid bootstrap':>22} {'width':>6}")
    for stat in ("p50", "p90", "p99", "mean"):
        for phi in (0.0, 0.3, 0.5, 0.7):
            for n in (50, 100, 200):
                b = sim.interval_coverage(stat, n, phi, sets, seed=1)
                i = sim.interval_coverage(stat, n, phi, sets, seed=1, method="iid")
                print(f"{stat:5} {phi:4.1f} {n:4d}  {fmt(b):>22} {b.width:6.3f}  {fmt(i):>22} "
                      f"{i.width:6.3f}", flush=True)


def comparison_table(sets: int) -> None:
    print("\n## Two samples (p90): difference coverage (B = 0.7 A), A/A winner calls, "
          "A/B power (B = 0.7 A)")
    print(f"{'phi':>4} {'n':>4}  {'diff coverage':>22}  {'A/A block':>22}  {'A/A iid':>22}  "
          f"{'power s=0.25':>22}  {'power s=0.5':>22}")
    for phi in (0.0, 0.3, 0.5, 0.7):
        for n in (40, 60, 150):
            cov = sim.comparison_study("p90", n, phi, 0.7, sets, seed=2)
            aa = sim.comparison_study("p90", n, phi, 1.0, sets, seed=3, count="called")
            aai = sim.comparison_study("p90", n, phi, 1.0, sets, seed=3, count="called",
                                       method="iid")
            p1 = sim.comparison_study("p90", n, phi, 0.7, sets, seed=4, sigma=0.25,
                                      count="called")
            p2 = sim.comparison_study("p90", n, phi, 0.7, sets, seed=4, sigma=0.5,
                                      count="called")
            print(f"{phi:4.1f} {n:4d}  {fmt(cov):>22}  {fmt(aa):>22}  {fmt(aai):>22}  "
                  f"{fmt(p1):>22}  {fmt(p2):>22}", flush=True)


def attainment_table(sets: int) -> None:
    print("\n## Attainment p = 0.9 (Newcombe: 0.9 vs 0.8): coverage")
    print(f"{'phi':>4} {'n':>4}  {'Wilson n_eff':>22}  {'Wilson plain':>22}  "
          f"{'Newcombe n_eff':>22}  {'Newcombe plain':>22}")
    for phi in (0.0, 0.3, 0.6):
        for n in (40, 100, 200):
            w = sim.wilson_coverage(0.9, n, phi, sets, seed=5)
            w0 = sim.wilson_coverage(0.9, n, phi, sets, seed=5, correlated=False)
            d = sim.attainment_diff_coverage(0.9, 0.8, n, phi, sets, seed=6)
            d0 = sim.attainment_diff_coverage(0.9, 0.8, n, phi, sets, seed=6, correlated=False)
            print(f"{phi:4.1f} {n:4d}  {fmt(w):>22}  {fmt(w0):>22}  {fmt(d):>22}  {fmt(d0):>22}",
                  flush=True)
    print("requests for a +-5 point Wilson interval:",
          ", ".join(f"p={p}: {S.requests_for_halfwidth(p)}" for p in (0.5, 0.8, 0.9, 0.95, 0.99)))


def goodput_table(sets: int) -> None:
    print("\n## Goodput at 90% (rates 1..6, knee 4, width 1): coverage of the interval")
    print(f"{'phi':>4} {'n/rate':>6}  {'coverage':>22}  {'mean width':>10}")
    for phi in (0.0, 0.3, 0.6):
        for n in (40, 100):
            g = sim.goodput_coverage(n=n, phi=phi, n_sets=sets, seed=7)
            print(f"{phi:4.1f} {n:6d}  {fmt(g):>22}  {g.width:10.2f}", flush=True)


def repeats_table(sets: int) -> None:
    print("\n## Repeats (A/A, p90, 50 requests per run, phi 0.3): share of no winner called")
    print(f"{'r':>2}  {'method':>16}  {'run sd 0':>22}  {'run sd 0.1':>22}  {'run sd 0.2':>22}")
    for r in (1, 2, 3, 5):
        row = [sim.repeats_coverage(r, 50, 0.3, sd, n_sets=sets, seed=8) for sd in (0, 0.1, 0.2)]
        method = "repeats-welch" if r >= S.REPEATS_MIN else "block-bootstrap"
        print(f"{r:2d}  {method:>16}  " + "  ".join(f"{fmt(s):>22}" for s in row), flush=True)
    row = [sim.repeats_coverage(2, 50, 0.3, sd, n_sets=sets, seed=8, min_repeats=2)
           for sd in (0, 0.1, 0.2)]
    print(f"{2:2d}  {'welch (forced)':>16}  " + "  ".join(f"{fmt(s):>22}" for s in row))


def speed() -> None:
    x = sim.lognormal_series((1, 200), 0.5, np.random.default_rng(0))[0]
    S.interval(x, "p90")
    ts = []
    for s in range(20):
        t = time.perf_counter()
        S.interval(x, "p90", seed=s)
        ts.append(time.perf_counter() - t)
    a = sim.lognormal_series((1, 200), 0.5, np.random.default_rng(1))[0]
    tc = []
    for s in range(20):
        t = time.perf_counter()
        S.bootstrap_comparison(x, a, "p90", seed=s)
        tc.append(time.perf_counter() - t)
    print(f"\n## Speed: interval(n=200, 1000 replicates) median {np.median(ts) * 1e3:.1f} ms; "
          f"bootstrap_comparison (200 vs 200) median {np.median(tc) * 1e3:.1f} ms")


TABLES = {"interval": interval_table, "comparison": comparison_table,
          "attainment": attainment_table, "goodput": goodput_table, "repeats": repeats_table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=1000, help="simulated data sets per cell")
    ap.add_argument("--only", default=",".join([*TABLES, "speed"]),
                    help="comma-separated tables: " + ", ".join([*TABLES, "speed"]))
    args = ap.parse_args()
    t0 = time.time()
    for name in args.only.split(","):
        if name == "speed":
            speed()
        elif name in TABLES:
            TABLES[name](args.sets)
        else:
            raise SystemExit(f"unknown table {name!r}")
    print(f"\n({args.sets} data sets per cell, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
