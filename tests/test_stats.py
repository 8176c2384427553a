"""Statistics core (workloads/stats.py): exact pieces on hand-checked values, and the intervals
validated by simulation (workloads/stats_sim.py; every study is seeded, so these are
deterministic). Larger tables: bench/stats_coverage.py."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from infer_bench.workloads import metrics as M
from infer_bench.workloads import stats as S
from infer_bench.workloads import stats_sim as sim


# ---------------------------------------------------------------------------- exact pieces

def test_parse_stat():
    assert S.parse_stat("mean") is None and S.parse_stat(None) is None
    assert S.parse_stat("p90") == 90.0 and S.parse_stat("P99") == 99.0 and S.parse_stat(50) == 50
    with pytest.raises(ValueError):
        S.parse_stat("median")
    with pytest.raises(ValueError):
        S.parse_stat("p101")


def test_rowwise_statistic_matches_numpy_with_nans():
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=(50, 37))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[3] = np.nan                                    # a row with nothing left
    for q in (0, 10, 50, 90, 99, 100):
        got = S.rowwise_statistic(x, f"p{q}")
        for i, row in enumerate(x):
            fin = row[np.isfinite(row)]
            want = np.percentile(fin, q) if fin.size else np.nan
            assert got[i] == pytest.approx(want, nan_ok=True)
    got = S.rowwise_statistic(x, "mean")
    assert np.isnan(got[3])
    assert got[0] == pytest.approx(np.nanmean(x[0]))


def test_statistic_drops_failed_requests():
    x = [0.1, np.nan, 0.3, 0.2, np.nan]
    assert S.statistic(x, "mean") == pytest.approx(0.2)
    assert S.statistic(x, "p50") == pytest.approx(0.2)
    assert math.isnan(S.statistic([np.nan, np.nan], "p90"))


def test_block_indices_are_circular_blocks():
    rng = np.random.default_rng(1)
    idx = S.block_indices(10, 4, 3, rng)
    assert idx.shape == (3, 10)
    for row in idx:                                  # blocks of 4 consecutive (mod 10) indices
        for start in (0, 4, 8):
            blk = row[start:start + 4]
            assert all((b - a) % 10 == 1 for a, b in zip(blk, blk[1:]))
    assert S.block_indices(7, 1, 2, rng).shape == (2, 7)


def test_dependence_sees_queueing_correlation():
    rng = np.random.default_rng(2)
    iid = sim.lognormal_series((1, 200), 0.0, rng)[0]
    queued = sim.lognormal_series((1, 200), 0.8, rng)[0]
    d0, d1 = S.dependence(iid), S.dependence(queued)
    assert d0.block <= 3 and d0.n_eff > 120
    assert d1.block >= 5 and d1.n_eff < 60 and d1.spread > d0.spread
    # the choice depends on ranks only: the same for seconds and milliseconds, and logs
    assert S.dependence(queued * 1000) == d1 and S.dependence(np.log(queued)) == d1
    # failed requests are skipped; tiny samples are treated as independent
    with_nan = queued.copy()
    with_nan[::10] = np.nan
    assert S.dependence(with_nan).n == 180
    assert S.dependence([1.0, 2.0, 3.0]).block == 1


def test_interval_is_deterministic_and_handles_failures():
    rng = np.random.default_rng(3)
    x = sim.lognormal_series((1, 120), 0.5, rng, fail=0.1)[0]
    a, b = S.interval(x, "p90", seed=7), S.interval(x, "p90", seed=7)
    assert a == b
    c = S.interval(x, "p90", seed=8)
    assert (c.lo, c.hi) != (a.lo, a.hi)
    assert a.lo < a.estimate < a.hi
    assert a.estimate == pytest.approx(np.percentile(x[np.isfinite(x)], 90))
    assert a.n == int(np.isfinite(x).sum()) and a.method == "block-bootstrap"
    none = S.interval([0.1, np.nan], "p90")
    assert none.method == "none" and math.isnan(none.lo)


def test_interval_speed():
    """n = 200, 1000 replicates: the target is <= ~50 ms; the bound leaves room for a busy host."""
    x = sim.lognormal_series((1, 200), 0.5, np.random.default_rng(4))[0]
    S.interval(x, "p90")
    best = math.inf
    for s in range(5):
        t = time.perf_counter()
        S.interval(x, "p90", seed=s)
        best = min(best, time.perf_counter() - t)
    assert best < 0.15


def test_comparison_difference_and_ratio_agree():
    rng = np.random.default_rng(5)
    for effect in (1.0, 0.93, 0.85, 0.8, 0.7):
        a = sim.lognormal_series((1, 80), 0.3, rng)[0]
        b = sim.lognormal_series((1, 80), 0.3, rng, scale=effect)[0]
        c = S.bootstrap_comparison(a, b, "p90", name_a="mono", name_b="disagg")
        assert c.diff == pytest.approx(c.estimate_b - c.estimate_a)
        assert c.ratio == pytest.approx(c.estimate_b / c.estimate_a)
        assert c.diff_lo <= c.diff <= c.diff_hi and c.ratio_lo <= c.ratio <= c.ratio_hi
        # one decision in two units: the difference excludes 0 iff the ratio excludes 1
        assert c.significant == (c.ratio_lo > 1 or c.ratio_hi < 1)
        if c.significant:
            assert c.better == ("disagg" if c.diff < 0 else "mono")
        else:
            assert c.better is None


def test_comparison_direction_and_higher_is_better():
    rng = np.random.default_rng(6)
    a = sim.lognormal_series((1, 100), 0.0, rng, sigma=0.2)[0]
    b = 1.5 * a[::-1]
    c = S.bootstrap_comparison(a, b, "mean", name_a="x", name_b="y", metric="throughput",
                               lower_is_better=False)
    assert c.significant and c.diff > 0 and c.better == "y"
    c = S.bootstrap_comparison(a, b, "mean", name_a="x", name_b="y")
    assert c.significant and c.better == "x"


def test_repeats_welch_and_fieller():
    va, vb = [1.00, 1.10, 0.95, 1.05], [0.80, 0.85, 0.78, 0.90]
    c = S.repeats_comparison(va, vb, name_a="A", name_b="B")
    ci = sps.ttest_ind(vb, va, equal_var=False).confidence_interval(0.95)
    assert (c.diff_lo, c.diff_hi) == pytest.approx((ci.low, ci.high))
    assert c.method == "repeats-welch" and c.n_a == 4 and c.significant and c.better == "B"
    # Fieller's bounds solve (mb - rho ma)^2 = t^2 (sb^2 + rho^2 sa^2)
    res = sps.ttest_ind(vb, va, equal_var=False)
    t = sps.t.ppf(0.975, res.df)
    ma, mb = np.mean(va), np.mean(vb)
    sa2, sb2 = np.var(va, ddof=1) / 4, np.var(vb, ddof=1) / 4
    for rho in (c.ratio_lo, c.ratio_hi):
        assert (mb - rho * ma) ** 2 == pytest.approx(t * t * (sb2 + rho * rho * sa2))
    assert c.ratio_lo < c.ratio < c.ratio_hi < 1
    # same t: the ratio interval holds 1 exactly when the difference interval holds 0
    for shift in np.linspace(-0.2, 0.2, 21):
        c = S.repeats_comparison(va, [v + shift for v in va[::-1]])
        assert c.significant == (c.ratio_lo > 1 or c.ratio_hi < 1)
    # too few repeats: no interval, no winner
    c = S.repeats_comparison([1.0], [2.0, 2.1])
    assert c.method == "none" and not c.significant and math.isnan(c.diff_lo)


def test_compare_runs_picks_repeats_from_three():
    rng = np.random.default_rng(7)
    runs = [sim.lognormal_series((1, 40), 0.3, rng)[0] for _ in range(6)]
    assert S.compare_runs(runs[:3], runs[3:], "p90").method == "repeats-welch"
    two = S.compare_runs(runs[:2], runs[2:4], "p90")
    assert two.method == "block-bootstrap" and two.n_a == 80
    assert two.estimate_a == pytest.approx(np.mean([np.percentile(r, 90) for r in runs[:2]]))
    assert S.compare_runs(runs[:1], runs[1:2], "p90").method == "block-bootstrap"
    assert S.compare_runs(runs[:3], runs[3:], "p90", min_repeats=4).method == "block-bootstrap"


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return c - h, c + h


def test_wilson_and_newcombe_by_hand():
    iv = S.wilson_interval(8, 10)
    assert (iv.lo, iv.hi) == pytest.approx(wilson_by_hand(8, 10))
    assert iv.lo == pytest.approx(0.4902, abs=1e-4) and iv.hi == pytest.approx(0.9433, abs=1e-4)
    c = S.compare_proportions(45, 50, 36, 50, name_a="A", name_b="B")
    (la, ua), (lb, ub) = wilson_by_hand(45, 50), wilson_by_hand(36, 50)
    pa, pb = 0.9, 0.72
    assert c.diff == pytest.approx(pb - pa)
    assert c.diff_lo == pytest.approx(pb - pa - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2))
    assert c.diff_hi == pytest.approx(pb - pa + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2))
    assert c.significant and c.better == "A" and c.scale == "points"


def test_attainment_effective_n():
    rng = np.random.default_rng(8)
    iid = sim.hit_series((1, 200), 0.8, 0.0, rng)[0]
    clustered = sim.hit_series((1, 200), 0.8, 0.8, rng)[0]
    assert S.effective_n(iid) > 140
    assert S.effective_n(clustered) < 100
    assert S.effective_n(np.ones(50)) == 50
    met = [1, 1, np.nan, 0, 1, None, 1, 1, 1, 1]          # failed requests are misses
    assert S.attainment_interval(met).estimate == pytest.approx(0.7)
    wide = S.attainment_interval(clustered)
    narrow = S.attainment_interval(clustered, correlated=False)
    assert wide.hi - wide.lo > narrow.hi - narrow.lo


@pytest.mark.parametrize("p", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_requests_for_halfwidth(p):
    n = S.requests_for_halfwidth(p)
    def half(m):
        lo, hi = wilson_by_hand(p * m, m)
        return (hi - lo) / 2
    assert half(n) <= 0.05 + 1e-12 < half(n - 1)
    assert S.requests_for_halfwidth(p, design_effect=2.0) == math.ceil(2 * n)
    if p == 0.9:
        assert 130 <= n <= 145           # Wald's 1.96^2 * 0.09 / 0.05^2 = 138


def test_goodput_replicates_equal_metrics_goodput():
    rng = np.random.default_rng(9)
    rates = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    att = np.clip(rng.random((300, 5)) * 0.4 + np.linspace(0.7, 0.5, 5) + 0.1, 0, 1)
    att[:20] = 0.95                                   # every rate passes
    att[20:40, 0] = 0.5                               # the lowest rate already fails
    got = S.goodput_replicates(rates, att, 0.9)
    for row, g in zip(att, got):
        assert g == pytest.approx(M.goodput(rates, row, 0.9))


def test_goodput_interval_and_monotonicity():
    rates = [1.0, 2.0, 3.0, 4.0]
    rng = np.random.default_rng(10)
    mets = [sim.hit_series((1, 80), p, 0.0, rng)[0] for p in (1.0, 0.97, 0.8, 0.4)]
    g = S.goodput_interval(rates[::-1], mets[::-1])      # order of the points does not matter
    att = [float(np.mean(m)) for m in mets]
    assert g.monotone and g.rate == pytest.approx(M.goodput(rates, att, 0.9))
    assert 2.0 <= g.lo <= g.rate <= g.hi <= 4.0 and not g.lower_bound and not g.hi_censored
    assert g.rates == tuple(rates) and g.attainment == pytest.approx(att)
    assert g == S.goodput_interval(rates, mets)            # deterministic
    # every rate meets the target: a lower bound, and the interval is censored at the top
    ok = S.goodput_interval(rates, [np.ones(50)] * 4)
    assert ok.lower_bound and ok.rate == 4.0 and ok.hi_censored
    # attainment that rises with rate beyond noise is flagged, not read at its first crossing
    bad = S.goodput_interval(rates, [np.ones(60), np.r_[np.ones(20), np.zeros(40)],
                                     np.ones(60), np.ones(60)])
    assert not bad.monotone and bad.rate is None and bad.lo is None
    assert (2.0, 3.0) in bad.offending and (2.0, 4.0) in bad.offending
    assert all(lo < hi for lo, hi in bad.offending)
    # a dip within noise is not flagged
    wiggle = S.goodput_interval(rates, [np.r_[np.ones(46), np.zeros(4)],
                                        np.r_[np.ones(44), np.zeros(6)],
                                        np.r_[np.ones(45), np.zeros(5)], np.zeros(50)])
    assert wiggle.monotone and wiggle.rate is not None


def comparison(ratio, lo, hi, sig, scale="relative"):
    a = 100.0
    return S.Comparison("ttft_p90_s", "A", "B", a, a * ratio, a * ratio - a, a * lo - a,
                        a * hi - a, ratio, lo, hi, "block-bootstrap", 50, 50, sig,
                        ("B" if ratio < 1 else "A") if sig else None, scale=scale)


def test_describe():
    assert S.describe(comparison(0.77, 0.69, 0.88, True)) == "B 23% lower (95% CI 12–31%)"
    assert S.describe(comparison(1.2, 1.05, 1.4, True)) == "B 20% higher (95% CI 5–40%)"
    # +-x: the half-width of the ratio interval around 1 (the larger side)
    assert S.describe(comparison(1.01, 0.92, 1.06, False)) == "no significant difference (±8%)"
    p = S.compare_proportions(45, 50, 36, 50)
    assert S.describe(p) == "B 18.0 pp lower (95% CI 2.5–32.8 pp)"
    same = S.compare_proportions(45, 50, 44, 50)
    assert not same.significant
    assert S.describe(same).startswith("no significant difference (±")
    assert S.describe(S.repeats_comparison([1.0], [1.0])) == "no interval"
    # no ratio (A's value is not positive): the difference itself
    c = S.Comparison("x", "A", "B", 0.0, -2.0, -2.0, -3.0, -1.0, float("nan"), float("nan"),
                     float("nan"), "repeats-welch", 3, 3, True, "B")
    assert S.describe(c) == "B lower by 2 (95% CI 1–3)"


# ---------------------------------------------------------------------------- validation

def test_percentile_coverage_under_queueing():
    """p90 of 200 AR(1)-correlated lognormal latencies (phi 0.5): the block bootstrap covers
    90-99%, the iid bootstrap does not (it treats correlated requests as independent)."""
    block = sim.interval_coverage("p90", n=200, phi=0.5, n_sets=200, seed=13)
    iid = sim.interval_coverage("p90", n=200, phi=0.5, n_sets=200, seed=13, method="iid")
    assert 0.90 <= block.rate <= 0.99, block
    assert iid.rate < 0.88 and block.rate - iid.rate >= 0.05, (block, iid)


def test_difference_coverage():
    """p90 of B = 0.7 x A's, 100 requests per side, phi 0.5: the difference interval covers."""
    st = sim.comparison_study("p90", n=100, phi=0.5, effect=0.7, n_sets=200, seed=14)
    assert 0.90 <= st.rate <= 0.99, st


def test_attainment_coverage():
    """Wilson at p = 0.9: plain on independent requests; on clustered misses (phi 0.3) plain
    Wilson under-covers and the effective-n version does not. Newcombe for a difference."""
    plain = sim.wilson_coverage(0.9, n=100, phi=0.0, n_sets=400, seed=21, correlated=False)
    assert 0.93 <= plain.rate <= 0.99, plain
    neff = sim.wilson_coverage(0.9, n=100, phi=0.3, n_sets=400, seed=21)
    naive = sim.wilson_coverage(0.9, n=100, phi=0.3, n_sets=400, seed=21, correlated=False)
    assert 0.90 <= neff.rate <= 0.99 and naive.rate < neff.rate, (neff, naive)
    diff = sim.attainment_diff_coverage(0.9, 0.8, n=100, phi=0.3, n_sets=400, seed=22)
    assert 0.90 <= diff.rate <= 0.99, diff


def test_a_a_calls_no_winner():
    """Two samples of one process (p90, 50 requests a side, phi 0.5), 200 seeds: a winner is
    called in <= 5% (the iid bootstrap calls one about twice as often)."""
    block = sim.comparison_study("p90", n=50, phi=0.5, effect=1.0, n_sets=200, seed=11,
                                 count="called")
    iid = sim.comparison_study("p90", n=50, phi=0.5, effect=1.0, n_sets=200, seed=11,
                               count="called", method="iid")
    assert block.rate <= 0.05 and iid.rate > block.rate, (block, iid)


def test_a_b_detects_30_percent():
    """p90 TTFT 30% lower on B (60 requests a side, lognormal sigma 0.25, phi 0.3): detected,
    the right way round, in >= 95% of 200 seeds."""
    st = sim.comparison_study("p90", n=60, phi=0.3, effect=0.7, n_sets=200, seed=12,
                              sigma=0.25, count="called")
    assert st.rate >= 0.95, st
    rng = np.random.default_rng(12)
    a = sim.lognormal_series((1, 60), 0.3, rng, sigma=0.25)[0]
    b = sim.lognormal_series((1, 60), 0.3, rng, sigma=0.25, scale=0.7)[0]
    c = S.bootstrap_comparison(a, b, "p90", name_a="mono", name_b="disagg")
    assert c.better == "disagg" and S.describe(c).startswith("disagg ")
