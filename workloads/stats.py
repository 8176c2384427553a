"""Statistics of a comparison: the intervals a verdict rests on (pure functions; numpy, scipy,
statsmodels). The report's verdict, `compare` and pass/fail gates are meant to share this one
implementation.

Role in the data flow: callers pass per-request values of one deployment x load point IN SEND
ORDER (e.g. the `ttft_s` column of requests.parquet sorted by `send_s`, NaN for a failed request),
per-request SLO hits (0/1, NaN = failed = miss), or one value per repeat; this module returns
`Interval`, `Comparison` and `GoodputInterval` objects and one-line wordings. It reads no files;
its only project import is `workloads/metrics.py` (the goodput rule). Validation: simulated data
with a known truth in `workloads/stats_sim.py`, asserted in tests/test_stats.py, tabulated by
bench/stats_coverage.py. All intervals are 95% unless `confidence` says otherwise.

Why not an iid bootstrap: requests of one load point are not independent. Under queueing a slow
request delays the ones queued behind it, so consecutive latencies are positively correlated (a
burst gives a run of slow TTFTs) and 200 requests carry the information of far fewer. Resampling
them as independent gives intervals that are too narrow: for p90 of 200 lognormal latencies with
AR(1) correlation 0.5, the iid percentile bootstrap covers ~82% at nominal 95% and calls a winner
between two samples of the SAME process ~10% of the time at 50 a side (the block bootstrap below:
~96% and ~3.5%).

1. One run, per-request samples (`interval`, `bootstrap_comparison`). Circular block bootstrap
   over requests in send order (Politis & Romano 1992): a replicate glues ceil(n/b) runs of b
   consecutive requests starting at uniform random positions, wrapping around the end, so the
   short-range dependence survives inside each run and every request is equally likely.
   Dependence (`dependence`), read from the RANKS of the successful values (quantiles depend on
   the data only through ranks; one huge outlier cannot dictate it; ms or s, raw or log give the
   same answer): the long-run variance g = sum_k R(k) and G = sum_k |k| R(k) are estimated twice,
   by Politis-White flat-top kernel sums with Politis' automatic lag (2004, as corrected by
   Patton, Politis & White 2009) and by an AR(1) plug-in from the lag-1 autocorrelation (Andrews
   1991 style, Kendall-bias-corrected); the more dependent reading (larger g) is used. Why both:
   the nonparametric lag rule needs |rho| > 2 sqrt(log10(n)/n) to see any dependence (0.28 at
   n = 100) and so missed phi = 0.3 queueing at 50-150 requests (mean coverage 85-89%), while the
   AR(1) reading sees it and the kernel reading still catches longer-memory dependence. Why not a
   fixed ceil(n^(1/3)): it ignores the data (too long for independent requests, too short for
   strongly queued ones). From (g, G): block length b = (2 G^2 / D_CB)^(1/3) n^(1/3), D_CB =
   (4/3) g^2 (Politis-White for the circular bootstrap), clamped to [1, min(3 sqrt n, n/3)];
   effective sample size n_eff = n R(0) / g.
   Three corrections, each measured to matter in the coverage tables: (a) percentiles use the
   smoothed bootstrap (Gaussian jitter of 0.5 sd n^(-1/5), on the log scale when all values are
   > 0): the plain bootstrap of a sample quantile takes few distinct values, and its p90
   interval covered 89-93% even for independent requests (n = 50-150); (b) the block
   bootstrap's variance is biased low by G / b (Politis-White): replicates are stretched about
   their median (on the log scale for positive statistics) by
   sqrt(g / (g - G/b) * n_eff / (n_eff - 1)), the first ratio capped at 4; (c) the percentile
   interval is read at the expanded level that spans t_{n_eff - 1} instead of z standard errors
   (Hesterberg's expanded percentile interval, with n_eff).
   Statistic: the mean or a percentile (numpy's linear interpolation, as metrics.py). Failed
   requests (NaN) keep their slot in the send order, so blocks span them, and are dropped from
   each replicate's statistic: a latency percentile is over successful requests only, and the
   number of successes varies across replicates as it would across runs.
   Two independent samples (two deployments): each side is resampled with its own dependence
   from its own child seed (SeedSequence.spawn); replicates of stat_b - stat_a and stat_b /
   stat_a give the intervals, read at one level (expanded with the Welch-Satterthwaite df of the
   two sides' n_eff). For stat_a > 0, stat_b - stat_a > 0 exactly when stat_b / stat_a > 1 in
   every replicate, so the difference interval excludes 0 exactly when the ratio interval
   excludes 1 (one decision, two units). n_boot = 1000 by default; deterministic given `seed`.
   Limits (bench/stats_coverage.py): coverage falls with strong correlation and few requests
   (p90 at phi = 0.6: ~85-90% at 50-100 requests, ~92% at 200); an extreme percentile with fewer
   than ~5 requests beyond it (`tail_count` = n (1 - q) < 5: p99 of anything under 500) is
   decided by the few slowest requests and no resampling interval covers it well (p99 of 100:
   ~75%). A verdict should not rest on such a figure.

2. Repeats (`repeats_comparison`, `compare_runs`). Per-repeat values are independent (separate
   runs) and carry the run-to-run variance (placement, caches, thermal state, other tenants)
   that a within-run bootstrap cannot see. Difference of means: Welch's t interval
   (scipy.stats.ttest_ind(equal_var=False)); ratio of means: Fieller's interval with the same t
   and variances, so it excludes 1 exactly when the difference interval excludes 0 (unbounded,
   +-inf, when mean_a itself is not distinguishable from 0). `compare_runs` uses repeats when
   every side has r >= REPEATS_MIN = 3, else the block bootstrap (each repeat resampled on its
   own, the statistic averaged over the side's repeats; r = 1 is the plain case). Why 3: with 2
   per side each variance rests on 1 degree of freedom (an estimate between 0.001x and 5x the
   truth, 95% of the time), the Welch df falls to 1-2 and t_0.975 to 4.3-12.7, so the interval is
   very wide AND erratic; from 3 per side (df >= 2, t <= 4.3) it is usable. The price of the
   bootstrap at r = 2 is blindness to run-to-run variance: with runs that differ by a random 10%
   it calls a winner between identical setups ~7% of the time instead of 5%; its method says
   "block-bootstrap" so a report can say the interval is within-run.

3. Attainment (`attainment_interval`, `compare_attainment`, `compare_proportions`). The share of
   requests meeting the SLO (failed requests miss). Wilson score interval (statsmodels
   proportion_confint(method="wilson")): unlike Wald it stays in [0, 1] and keeps its coverage
   near p = 0.9-1, where attainment lives. Difference: Newcombe's hybrid score interval
   (statsmodels confint_proportions_2indep(method="newcomb")), built from the two Wilson
   intervals. Misses cluster under queueing like latencies do, so by default n is replaced by
   the effective sample size of the 0/1 sequence in send order (`effective_n`, the same
   `dependence` reading: Kish's design effect) and the count by p * n_eff; independent requests
   give n_eff ~ n. `requests_for_halfwidth(p)`: the fewest requests for which the Wilson interval
   at proportion p is +-5 points or tighter (141 at p = 0.9), times a design effect n / n_eff.

4. Goodput (`goodput_interval`; metrics.goodput: the highest rate whose attainment >= target,
   interpolated between the last passing and the first failing rate). Each rate's SLO hits are
   block-bootstrapped (own dependence, own child seed); goodput is read from every replicate
   curve with the same first-crossing rule (`goodput_replicates`, equal to metrics.goodput row by
   row); the interval is the percentiles of those readings. An upper end at the highest rate
   measured is censored (the sweep stopped there: `hi_censored`). Monotonicity: attainment
   should not rise with rate. Any pair of rates r_i < r_j whose Newcombe interval (effective n)
   of attainment_j - attainment_i lies above 0 is a rise beyond noise (one-sided 2.5% per pair):
   the curve is flagged (`monotone=False`, `offending` = those pairs) and no goodput is read
   (rate, lo, hi None), since its first crossing would be an accident of the sweep.

5. Decision (`Comparison`, `describe`). B against A: diff = B - A, ratio = B / A, each with its
   interval; `significant` = the difference interval excludes 0; `better` = the name of the
   better side when significant (lower latency by default; `lower_is_better=False` for
   throughput; higher for attainment). `describe(c)`: "B 23% lower (95% CI 12–31%)" when
   significant, else "no significant difference (±x%)" where x is the half-width of the ratio
   interval around 1, max(ratio_hi - 1, 1 - ratio_lo): the largest relative difference, either
   way, that the data cannot rule out. Proportions are described by their difference in
   percentage points ("B 12.0 pp higher (95% CI 3.1–20.5 pp)", "±x pp").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from .metrics import goodput as _goodput_point

CONFIDENCE = 0.95
N_BOOT = 1000
REPEATS_MIN = 3
HALFWIDTH = 0.05


# ---------------------------------------------------------------------------- statistics

def parse_stat(stat: str | float | None) -> float | None:
    """"mean" / None -> None (the mean); "p90" / "90" / 90 -> 90.0 (a percentile in [0, 100])."""
    if stat is None:
        return None
    if isinstance(stat, str):
        s = stat.strip().lower()
        if s == "mean":
            return None
        if s.startswith("p"):
            s = s[1:]
        try:
            q = float(s)
        except ValueError:
            raise ValueError(f"unknown statistic {stat!r}: use 'mean' or 'pNN'") from None
    else:
        q = float(stat)
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    return q


def statistic(x: Sequence[float], stat: str | float | None = "p90") -> float:
    """The mean or percentile of the finite values of x (NaN: failed requests, dropped);
    NaN when none is left."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    if not a.size:
        return float("nan")
    q = parse_stat(stat)
    return float(a.mean()) if q is None else float(np.percentile(a, q))


def rowwise_statistic(samples: np.ndarray, stat: str | float | None = "p90") -> np.ndarray:
    """The statistic of every row of a 2-D array, NaNs dropped per row (vectorised; percentiles
    interpolate linearly like numpy's default). A row with no finite value gives NaN."""
    s = np.asarray(samples, dtype=float)
    q = parse_stat(stat)
    ok = np.isfinite(s)
    cnt = ok.sum(axis=1)
    out = np.full(s.shape[0], np.nan)
    has = cnt > 0
    if q is None:
        tot = np.where(ok, s, 0.0).sum(axis=1)
        out[has] = tot[has] / cnt[has]
        return out
    srt = np.sort(np.where(ok, s, np.inf), axis=1)          # non-finite values last
    h = (np.maximum(cnt, 1) - 1) * (q / 100.0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(cnt - 1, 0))
    rows = np.arange(s.shape[0])
    v_lo, v_hi = srt[rows, lo], srt[rows, hi]
    with np.errstate(invalid="ignore"):              # rows of no finite value: inf - inf
        val = v_lo + (h - lo) * np.where(hi > lo, v_hi - v_lo, 0.0)
    out[has] = val[has]
    return out


def tail_count(n: int, stat: str | float | None) -> float:
    """Expected number of values beyond the percentile (n * (1 - q)); inf for the mean.
    Below ~5 the bootstrap interval of that percentile is unreliable."""
    q = parse_stat(stat)
    return float("inf") if q is None else n * (1 - q / 100.0)


# ---------------------------------------------------------------------------- dependence

def flat_top(t: np.ndarray) -> np.ndarray:
    """The trapezoidal flat-top kernel of Politis & Romano: 1 on |t| <= 1/2, 0 beyond 1."""
    a = np.abs(t)
    return np.where(a <= 0.5, 1.0, np.where(a <= 1.0, 2.0 * (1.0 - a), 0.0))


def autocovariances(x: np.ndarray, max_lag: int) -> np.ndarray:
    """R(0..max_lag) of x (biased estimator: sums over n - k pairs divided by n)."""
    n = len(x)
    d = x - x.mean()
    return np.array([float(d[: n - k] @ d[k:]) / n for k in range(min(max_lag, n - 1) + 1)])


def kernel_bandwidth(x: np.ndarray) -> tuple[int, np.ndarray]:
    """Politis (2003) automatic lag for flat-top sums: M = 2 * m_hat, where m_hat is the first
    lag after which K_N = max(5, sqrt(log10 n)) autocorrelations in a row are insignificant
    (|rho| < 2 sqrt(log10(n) / n)); capped at ceil(sqrt(n)) + K_N. Returns (M, R(0..M))."""
    n = len(x)
    k_n = max(5, int(math.ceil(math.sqrt(math.log10(max(n, 10))))))
    m_max = int(math.ceil(math.sqrt(n))) + k_n
    r = autocovariances(x, m_max + k_n)
    if r[0] <= 0:
        return 0, r[:1]
    small = np.abs(r / r[0]) < 2.0 * math.sqrt(math.log10(max(n, 10)) / n)
    m_hat = m_max
    for m in range(0, m_max + 1):
        window = small[m + 1: m + 1 + k_n]
        if len(window) == k_n and window.all():
            m_hat = m
            break
    big_m = min(2 * m_hat, m_max, len(r) - 1)
    return big_m, r[: big_m + 1]


def max_block_length(n: int) -> int:
    """Upper clamp of the block length: max(1, floor(min(3 sqrt(n), n / 3)))."""
    return max(1, int(min(3.0 * math.sqrt(n), n / 3.0)))


@dataclass(frozen=True)
class Dependence:
    """How dependent a sequence is, from the ranks of its finite values in order.
    block: Politis-White circular-bootstrap block length, in [1, max_block_length(n)];
    n_eff: effective sample size n * R(0) / long-run variance, in [n / max_block_length(n), n];
    spread: factor (>= 1) that undoes the block bootstrap's variance bias and the plug-in
    (n_eff - 1) / n_eff bias: sqrt(g / (g - G / block) * n_eff / (n_eff - 1)), the first ratio
    capped at 4 (module docstring, 1.)."""
    n: int
    block: int
    n_eff: float
    spread: float


def dependence(x: Sequence[float]) -> Dependence:
    """`Dependence` of the finite values of x in their order (NaNs skipped), from their ranks:
    the long-run variance g and G = sum |k| R(k) are read twice, by Politis-White flat-top sums
    and by an AR(1) plug-in (lag-1 autocorrelation, Kendall's bias correction + (1 + 3 rho) / n,
    clamped to [0, 0.95]: g = R(0)(1 + rho)/(1 - rho), G = R(0) 2 rho/(1 - rho)^2), and the more
    dependent reading (larger g) is used. Fewer than 8 values: independent (block 1, n_eff = n)."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    n = len(a)
    if n < 8:
        return Dependence(n, 1, float(n), math.sqrt(n / (n - 1)) if n > 1 else 1.0)
    ranks = sps.rankdata(a)
    big_m, r = kernel_bandwidth(ranks)
    if r[0] <= 0:
        return Dependence(n, 1, float(n), math.sqrt(n / (n - 1)))
    cands = []                                   # (g, G) readings
    if big_m == 0:
        cands.append((r[0], 0.0))
    else:
        k = np.arange(1, big_m + 1)
        lam = flat_top(k / big_m)
        cands.append((r[0] + 2.0 * float((lam * r[1:]).sum()),
                      2.0 * float((lam * k * r[1:]).sum())))
    rho = r[1] / r[0] if len(r) > 1 else float(autocovariances(ranks, 1)[1] / r[0])
    rho = min(max(rho + (1 + 3 * rho) / n, 0.0), 0.95)
    cands.append((r[0] * (1 + rho) / (1 - rho), r[0] * 2 * rho / (1 - rho) ** 2))
    g, big_g = max(cands)
    b_max = max_block_length(n)
    if g <= 0:
        return Dependence(n, 1, float(n), math.sqrt(n / (n - 1)))
    b = (1.5 * big_g * big_g / (g * g)) ** (1.0 / 3.0) * n ** (1.0 / 3.0)   # (2 G^2 / D_CB)^1/3
    block = int(min(max(1, math.ceil(b)), b_max))
    n_eff = float(min(n, max(n / b_max, n * r[0] / g)))
    bias = g / (g - big_g / block) if g - big_g / block > g / 4 else 4.0
    spread = math.sqrt(min(max(bias, 1.0), 4.0) * n_eff / max(n_eff - 1.0, 1.0))
    return Dependence(n, block, n_eff, spread)


def block_length(x: Sequence[float]) -> int:
    """Politis-White block length of x (`dependence(x).block`)."""
    return dependence(x).block


def block_indices(n: int, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices of circular block bootstrap replicates: ceil(n / block) blocks of
    `block` consecutive indices (mod n) from uniform random starts, cut to n."""
    block = max(1, min(int(block), n))
    k = -(-n // block)
    starts = rng.integers(0, n, size=(n_boot, k), dtype=np.int32)
    idx = starts[:, :, None] + np.arange(block, dtype=np.int32)[None, None, :]
    idx[idx >= n] -= n
    return idx.reshape(n_boot, k * block)[:, :n]


# ---------------------------------------------------------------------------- one sample

@dataclass(frozen=True)
class Interval:
    """An estimate with its interval. `n`: the values it rests on (successful requests, requests
    for a proportion, repeats); `block`: bootstrap block length (None when not a bootstrap);
    `n_eff`: effective sample size where dependence was estimated."""
    estimate: float
    lo: float
    hi: float
    method: str
    n: float
    confidence: float = CONFIDENCE
    block: int | None = None
    n_eff: float | None = None


def smoothing(a: np.ndarray) -> tuple[bool, float]:
    """(log scale?, bandwidth) of the smoothed bootstrap for percentiles: Gaussian jitter of
    h = 0.5 sd n^(-1/5), on the log scale when every finite value is > 0 (latencies)."""
    fin = a[np.isfinite(a)]
    if fin.size < 2:
        return False, 0.0
    log = bool((fin > 0).all())
    v = np.log(fin) if log else fin
    return log, 0.5 * float(v.std()) * fin.size ** -0.2


def bootstrap_replicates(x: Sequence[float], stat: str | float | None = "p90",
                         n_boot: int = N_BOOT, rng: np.random.Generator | int | None = 0,
                         block: int | None = None, smooth: bool = True
                         ) -> tuple[np.ndarray, Dependence]:
    """(replicates of the statistic, dependence of x): circular block bootstrap of x in send order
    (NaN = failed request: keeps its slot, dropped from each replicate's statistic); percentiles
    from the smoothed bootstrap when `smooth` (`smoothing`). block=None: the Politis-White length;
    block=1 and smooth=False: the ordinary iid bootstrap. The replicates are not rescaled."""
    a = np.asarray(x, dtype=float)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    dep = dependence(a)
    if block is not None:
        dep = Dependence(dep.n, max(1, int(block)), dep.n_eff, dep.spread)
    if not a.size:
        return np.full(n_boot, np.nan), dep
    idx = block_indices(len(a), dep.block, n_boot, rng)
    if smooth and parse_stat(stat) is not None:
        log, h = smoothing(a)
        if h > 0:
            # the percentile is taken on the smoothing scale (log is monotone: same order)
            v = np.log(a) if log else a
            samp = v[idx] + h * rng.standard_normal(idx.shape, dtype=np.float32)
            reps = rowwise_statistic(samp, stat)
            return (np.exp(reps) if log else reps), dep
    return rowwise_statistic(a[idx], stat), dep


def rescale(reps: np.ndarray, factor: float) -> np.ndarray:
    """Stretch replicates about their median by `factor` (on the log scale when all are > 0)."""
    r = np.asarray(reps, dtype=float)
    if factor == 1.0 or not np.isfinite(r).any():
        return r
    fin = r[np.isfinite(r)]
    if (fin > 0).all():
        lr = np.log(r)
        m = float(np.median(np.log(fin)))
        return np.exp(m + factor * (lr - m))
    m = float(np.median(fin))
    return m + factor * (r - m)


def expanded_confidence(confidence: float, df: float) -> float:
    """The replicates' central coverage to read so that the interval spans t_{df} instead of z
    standard errors (Hesterberg's expanded percentile interval, df = effective n - 1)."""
    if not math.isfinite(df) or df <= 0:
        return confidence
    t = float(sps.t.ppf(0.5 + confidence / 2, max(df, 1.0)))
    return float(1.0 - 2.0 * sps.norm.sf(t))


def percentile_interval(reps: np.ndarray, confidence: float = CONFIDENCE,
                        max_nan: float = 0.01) -> tuple[float, float]:
    """(lo, hi) percentile interval of bootstrap replicates; NaN when more than `max_nan` of them
    are undefined (e.g. replicates with no successful request)."""
    r = np.asarray(reps, dtype=float)
    fin = r[~np.isnan(r)]
    if not fin.size or (r.size - fin.size) > max_nan * r.size:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(fin, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def interval(x: Sequence[float], stat: str | float | None = "p90",
             confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0,
             method: str = "block") -> Interval:
    """Interval of the mean / a percentile of one run's per-request values in send order
    (NaN = failed, dropped). method "block": the block bootstrap of the module docstring;
    "iid": the ordinary percentile bootstrap (for comparison: too narrow under queueing).
    NaN bounds with fewer than 2 successful values."""
    a = np.asarray(x, dtype=float)
    n_ok = int(np.isfinite(a).sum())
    est = statistic(a, stat)
    if n_ok < 2:
        return Interval(est, float("nan"), float("nan"), "none", n_ok, confidence)
    if method == "iid":
        reps, dep = bootstrap_replicates(a, stat, n_boot, seed, block=1, smooth=False)
        lo, hi = percentile_interval(reps, confidence)
        return Interval(est, lo, hi, "iid-bootstrap", n_ok, confidence, 1, float(n_ok))
    if method != "block":
        raise ValueError(f"unknown method {method!r}: use 'block' or 'iid'")
    reps, dep = bootstrap_replicates(a, stat, n_boot, seed)
    lo, hi = percentile_interval(rescale(reps, dep.spread),
                                 expanded_confidence(confidence, dep.n_eff - 1))
    return Interval(est, lo, hi, "block-bootstrap", n_ok, confidence, dep.block, dep.n_eff)


# ---------------------------------------------------------------------------- comparisons

@dataclass(frozen=True)
class Comparison:
    """B against A on one metric. diff = estimate_b - estimate_a, ratio = estimate_b / estimate_a,
    each with its interval; `significant`: the difference interval excludes 0; `better`: the name
    (a or b) of the better side when significant, else None. `scale`: "relative" (describe by the
    ratio, latency / throughput) or "points" (describe by the difference in percentage points,
    proportions). n_a / n_b: what the interval rests on (see `method`: successful requests for
    "block-bootstrap", repeats for "repeats-welch", effective requests for "newcombe")."""
    metric: str
    a: str
    b: str
    estimate_a: float
    estimate_b: float
    diff: float
    diff_lo: float
    diff_hi: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    method: str
    n_a: float
    n_b: float
    significant: bool
    better: str | None
    lower_is_better: bool = True
    confidence: float = CONFIDENCE
    scale: str = "relative"
    note: str = ""


def _decide(diff_lo: float, diff_hi: float, diff: float, a: str, b: str,
            lower_is_better: bool) -> tuple[bool, str | None]:
    sig = bool(math.isfinite(diff_lo) and math.isfinite(diff_hi)
               and (diff_lo > 0 or diff_hi < 0))
    if not sig:
        return False, None
    b_lower = diff < 0 if diff != 0 else diff_hi < 0
    return True, (b if b_lower == lower_is_better else a)


def _ratio(b: float, a: float) -> float:
    return b / a if a > 0 and math.isfinite(a) and math.isfinite(b) else float("nan")


def _nan_comparison(metric, a, b, ea, eb, n_a, n_b, lower_is_better, confidence, scale,
                    note) -> Comparison:
    nan = float("nan")
    return Comparison(metric, a, b, ea, eb, eb - ea, nan, nan, _ratio(eb, ea), nan, nan, "none",
                      n_a, n_b, False, None, lower_is_better, confidence, scale, note)


def _children(seed: int | None, k: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def bootstrap_comparison(a: Sequence[float], b: Sequence[float], stat: str | float | None = "p90",
                         *, metric: str = "", name_a: str = "A", name_b: str = "B",
                         lower_is_better: bool = True, confidence: float = CONFIDENCE,
                         n_boot: int = N_BOOT, seed: int = 0, method: str = "block") -> Comparison:
    """B vs A from one run each: per-request values in send order (NaN = failed), each side
    block-bootstrapped with its own block length (method "iid": the ordinary bootstrap, for
    comparison only)."""
    return compare_runs([a], [b], stat, metric=metric, name_a=name_a, name_b=name_b,
                        lower_is_better=lower_is_better, confidence=confidence, n_boot=n_boot,
                        seed=seed, method=method)


def repeats_comparison(values_a: Sequence[float], values_b: Sequence[float], *, metric: str = "",
                       name_a: str = "A", name_b: str = "B", lower_is_better: bool = True,
                       confidence: float = CONFIDENCE) -> Comparison:
    """B vs A from one value per repeat (>= 2 per side): Welch t interval of mean_b - mean_a,
    Fieller interval of mean_b / mean_a with the same t (module docstring, 2.)."""
    va = np.asarray([v for v in values_a if v is not None and math.isfinite(v)], dtype=float)
    vb = np.asarray([v for v in values_b if v is not None and math.isfinite(v)], dtype=float)
    ea = float(va.mean()) if va.size else float("nan")
    eb = float(vb.mean()) if vb.size else float("nan")
    if va.size < 2 or vb.size < 2:
        return _nan_comparison(metric, name_a, name_b, ea, eb, va.size, vb.size, lower_is_better,
                               confidence, "relative", "fewer than 2 repeats on a side")
    sa2, sb2 = va.var(ddof=1) / va.size, vb.var(ddof=1) / vb.size
    d = eb - ea
    if sa2 + sb2 == 0:
        lo = hi = d
        t = 0.0
    else:
        res = sps.ttest_ind(vb, va, equal_var=False)
        ci = res.confidence_interval(confidence_level=confidence)
        lo, hi = float(ci.low), float(ci.high)
        t = float(sps.t.ppf(0.5 + confidence / 2, res.df))
    # Fieller: {rho : (eb - rho ea)^2 <= t^2 (sb2 + rho^2 sa2)}
    qa = ea * ea - t * t * sa2
    if qa > 0:
        qb = ea * eb
        disc = max(qb * qb - qa * (eb * eb - t * t * sb2), 0.0)
        r_lo, r_hi = (qb - math.sqrt(disc)) / qa, (qb + math.sqrt(disc)) / qa
    else:
        r_lo, r_hi = -math.inf, math.inf
    sig, better = _decide(lo, hi, d, name_a, name_b, lower_is_better)
    return Comparison(metric, name_a, name_b, ea, eb, d, lo, hi, _ratio(eb, ea), r_lo, r_hi,
                      "repeats-welch", va.size, vb.size, sig, better, lower_is_better,
                      confidence, "relative", f"{va.size} vs {vb.size} repeats")


def compare_runs(runs_a: Sequence[Sequence[float]], runs_b: Sequence[Sequence[float]],
                 stat: str | float | None = "p90", *, metric: str = "", name_a: str = "A",
                 name_b: str = "B", lower_is_better: bool = True,
                 confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0,
                 min_repeats: int = REPEATS_MIN, method: str = "block") -> Comparison:
    """B vs A on a per-request statistic, from r >= 1 repeats per side (each a sequence of
    per-request values in send order, NaN = failed). Every side with >= `min_repeats` repeats:
    Welch/Fieller over the per-repeat statistics; else the block bootstrap, each repeat resampled
    on its own, the statistic averaged over a side's repeats (module docstring, 2.)."""
    ra = [np.asarray(r, dtype=float) for r in runs_a]
    rb = [np.asarray(r, dtype=float) for r in runs_b]
    if not ra or not rb:
        raise ValueError("each side needs at least one run")
    if min(len(ra), len(rb)) >= min_repeats:
        return repeats_comparison([statistic(r, stat) for r in ra],
                                  [statistic(r, stat) for r in rb], metric=metric,
                                  name_a=name_a, name_b=name_b, lower_is_better=lower_is_better,
                                  confidence=confidence)
    ea = float(np.mean([statistic(r, stat) for r in ra]))
    eb = float(np.mean([statistic(r, stat) for r in rb]))
    n_a = int(sum(np.isfinite(r).sum() for r in ra))
    n_b = int(sum(np.isfinite(r).sum() for r in rb))
    if any(np.isfinite(r).sum() < 2 for r in ra + rb):
        return _nan_comparison(metric, name_a, name_b, ea, eb, n_a, n_b, lower_is_better,
                               confidence, "relative", "fewer than 2 successful requests")
    if method not in ("block", "iid"):
        raise ValueError(f"unknown method {method!r}: use 'block' or 'iid'")
    iid = method == "iid"
    gens = _children(seed, len(ra) + len(rb))
    reps, deps = [], []
    for r, g in zip(ra + rb, gens):
        rep, dep = bootstrap_replicates(r, stat, n_boot, g, block=1 if iid else None,
                                        smooth=not iid)
        reps.append(rep if iid else rescale(rep, dep.spread))
        deps.append(dep)
    rep_a = np.mean(reps[: len(ra)], axis=0)
    rep_b = np.mean(reps[len(ra):], axis=0)
    level = confidence
    if not iid:                 # Welch-Satterthwaite df of the two sides' effective sizes
        va, vb = float(np.nanvar(rep_a)), float(np.nanvar(rep_b))
        fa = sum(d.n_eff for d in deps[: len(ra)]) - len(ra)
        fb = sum(d.n_eff for d in deps[len(ra):]) - len(rb)
        den = (va * va / fa if fa > 0 else 0.0) + (vb * vb / fb if fb > 0 else 0.0)
        level = expanded_confidence(confidence, (va + vb) ** 2 / den if den > 0 else math.inf)
    d = eb - ea
    lo, hi = percentile_interval(rep_b - rep_a, level)
    if ea > 0 and np.all(rep_a[np.isfinite(rep_a)] > 0):
        r_lo, r_hi = percentile_interval(rep_b / rep_a, level)
    else:
        r_lo = r_hi = float("nan")
    sig, better = _decide(lo, hi, d, name_a, name_b, lower_is_better)
    note = (f"blocks {'/'.join(str(x.block) for x in deps[:len(ra)])} vs "
            f"{'/'.join(str(x.block) for x in deps[len(ra):])}, {n_boot} replicates")
    return Comparison(metric, name_a, name_b, ea, eb, d, lo, hi, _ratio(eb, ea), r_lo, r_hi,
                      "iid-bootstrap" if iid else "block-bootstrap", n_a, n_b, sig, better,
                      lower_is_better, confidence, "relative", note)


# ---------------------------------------------------------------------------- proportions

def wilson_interval(k: float, n: float, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of the proportion k / n (k, n may be effective, non-integer)."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), "none", n, confidence)
    lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    return Interval(k / n, float(lo), float(hi), "wilson", n, confidence)


def hits(met: Sequence[float]) -> np.ndarray:
    """SLO hits as 0/1 floats; NaN / None (a failed request) counts as a miss."""
    a = np.asarray([0.0 if v is None else v for v in met], dtype=float)
    return np.where(np.isnan(a), 0.0, (a != 0).astype(float))


def effective_n(met: Sequence[float]) -> float:
    """Effective sample size of a 0/1 sequence in send order (`dependence(hits(met)).n_eff`:
    n * var / long-run variance, clamped to [n / max_block_length(n), n]); n when all values are
    equal or n < 8."""
    x = hits(met)
    if not len(x) or x.min() == x.max():
        return float(len(x))
    return dependence(x).n_eff


def attainment_interval(met: Sequence[float], confidence: float = CONFIDENCE,
                        correlated: bool = True) -> Interval:
    """Wilson interval of the share of requests meeting the SLO (per-request 0/1 in send order,
    NaN = failed = miss); with `correlated`, on the effective sample size (module docstring)."""
    x = hits(met)
    n = len(x)
    if not n:
        return wilson_interval(0, 0, confidence)
    p = float(x.mean())
    n_eff = effective_n(x) if correlated else float(n)
    iv = wilson_interval(p * n_eff, n_eff, confidence)
    return Interval(p, iv.lo, iv.hi, "wilson-neff" if correlated else "wilson", n_eff,
                    confidence)


def compare_proportions(k_a: float, n_a: float, k_b: float, n_b: float, *, metric: str = "",
                        name_a: str = "A", name_b: str = "B", higher_is_better: bool = True,
                        confidence: float = CONFIDENCE, method: str = "newcombe") -> Comparison:
    """B vs A on a proportion (k of n each; may be effective counts): Newcombe's hybrid score
    interval of p_b - p_a; the ratio p_b / p_a with the log interval, 0.5 added to the counts
    (statsmodels "log-adjusted"; shown for reference: a proportion is described by its
    difference)."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("each side needs at least one request")
    pa, pb = k_a / n_a, k_b / n_b
    lo, hi = confint_proportions_2indep(k_b, n_b, k_a, n_a, method="newcomb", compare="diff",
                                        alpha=1 - confidence)
    r_lo, r_hi = confint_proportions_2indep(k_b, n_b, k_a, n_a, method="log-adjusted",
                                            compare="ratio", alpha=1 - confidence)
    sig, better = _decide(float(lo), float(hi), pb - pa, name_a, name_b, not higher_is_better)
    return Comparison(metric, name_a, name_b, pa, pb, pb - pa, float(lo), float(hi),
                      _ratio(pb, pa), float(r_lo), float(r_hi), method, n_a, n_b, sig, better,
                      not higher_is_better, confidence, "points")


def compare_attainment(met_a: Sequence[float], met_b: Sequence[float], *,
                       metric: str = "slo_attainment", name_a: str = "A", name_b: str = "B",
                       confidence: float = CONFIDENCE, correlated: bool = True) -> Comparison:
    """B vs A on SLO attainment from per-request hits in send order (NaN = failed = miss);
    Newcombe on effective sample sizes when `correlated` (module docstring, 3.)."""
    xa, xb = hits(met_a), hits(met_b)
    na = effective_n(xa) if correlated else float(len(xa))
    nb = effective_n(xb) if correlated else float(len(xb))
    return compare_proportions(xa.mean() * na, na, xb.mean() * nb, nb, metric=metric,
                               name_a=name_a, name_b=name_b, confidence=confidence,
                               method="newcombe-neff" if correlated else "newcombe")


def wilson_halfwidth(p: float, n: float, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Wilson interval at proportion p with n requests."""
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def requests_for_halfwidth(p: float, halfwidth: float = HALFWIDTH,
                           confidence: float = CONFIDENCE, design_effect: float = 1.0) -> int:
    """Fewest requests for which the Wilson interval at proportion p is +-halfwidth or tighter,
    times `design_effect` (>= 1: n / n_eff of correlated requests), rounded up."""
    if not 0 <= p <= 1 or halfwidth <= 0:
        raise ValueError("need 0 <= p <= 1 and halfwidth > 0")
    hi = 1
    while wilson_halfwidth(p, hi, confidence) > halfwidth:
        hi *= 2
    lo = max(1, hi // 2)
    if wilson_halfwidth(p, lo, confidence) <= halfwidth:
        hi = lo
    while hi - lo > 1:                      # halfwidth decreases in n: bisect
        mid = (lo + hi) // 2
        if wilson_halfwidth(p, mid, confidence) <= halfwidth:
            hi = mid
        else:
            lo = mid
    return int(math.ceil(hi * max(1.0, design_effect)))


# ---------------------------------------------------------------------------- goodput

@dataclass(frozen=True)
class GoodputInterval:
    """Goodput (metrics.goodput's rule) with its bootstrap interval and the monotonicity check.
    rate / lo / hi: None when the attainment curve is not monotone (`offending`: the (lower rate,
    higher rate) pairs whose attainment rose beyond noise). `lower_bound`: every rate met the
    target, rate is the highest measured; `hi_censored`: the interval's upper end is the highest
    rate measured. rates / attainment / attainment_lo / attainment_hi: the curve, sorted by rate."""
    rate: float | None
    lo: float | None
    hi: float | None
    target: float
    lower_bound: bool
    hi_censored: bool
    monotone: bool
    offending: tuple[tuple[float, float], ...]
    rates: tuple[float, ...]
    attainment: tuple[float, ...]
    attainment_lo: tuple[float, ...]
    attainment_hi: tuple[float, ...]
    method: str = "block-bootstrap"
    confidence: float = CONFIDENCE
    n: tuple[int, ...] = field(default=())


def goodput_replicates(rates: Sequence[float], attainments: np.ndarray,
                       target: float = 0.9) -> np.ndarray:
    """metrics.goodput for every row of `attainments` (shape (m, k), columns matching `rates`,
    which must be sorted ascending): first crossing below target, interpolated."""
    r = np.asarray(rates, dtype=float)
    att = np.atleast_2d(np.asarray(attainments, dtype=float))
    fail = att < target
    any_fail = fail.any(axis=1)
    first = np.argmax(fail, axis=1)
    out = np.full(att.shape[0], r[-1])
    rows = np.arange(att.shape[0])
    at0 = any_fail & (first == 0)
    out[at0] = 0.0
    mid = any_fail & (first > 0)
    j = first[mid]
    a0, a1 = att[rows[mid], j - 1], att[rows[mid], j]
    r0, r1 = r[j - 1], r[j]
    out[mid] = r0 + (a0 - target) / (a0 - a1) * (r1 - r0)
    return out


def monotonicity(rates: Sequence[float], mets: Sequence[Sequence[float]],
                 confidence: float = CONFIDENCE,
                 correlated: bool = True) -> tuple[bool, list[tuple[float, float]]]:
    """(monotone, offending pairs): pairs r_i < r_j whose Newcombe interval of attainment_j -
    attainment_i lies above 0 (attainment rose with rate beyond noise)."""
    order = np.argsort(np.asarray(rates, dtype=float), kind="stable")
    rs = [float(rates[i]) for i in order]
    xs = [hits(mets[i]) for i in order]
    ns = [effective_n(x) if correlated else float(len(x)) for x in xs]
    bad: list[tuple[float, float]] = []
    for i in range(len(rs)):
        for j in range(i + 1, len(rs)):
            if rs[j] <= rs[i] or not len(xs[i]) or not len(xs[j]):
                continue
            lo, _ = confint_proportions_2indep(xs[j].mean() * ns[j], ns[j], xs[i].mean() * ns[i],
                                               ns[i], method="newcomb", compare="diff",
                                               alpha=1 - confidence)
            if lo > 0:
                bad.append((rs[i], rs[j]))
    return not bad, bad


def goodput_interval(rates: Sequence[float], mets: Sequence[Sequence[float]],
                     target: float = 0.9, confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
                     seed: int = 0, correlated: bool = True) -> GoodputInterval:
    """Goodput with its interval from per-request SLO hits of each rate's load point (send order;
    NaN = failed = miss): block bootstrap within each rate, goodput read from every replicate
    curve, percentile interval; flagged and not read when the curve rises beyond noise."""
    if len(rates) != len(mets):
        raise ValueError("one hits sequence per rate")
    keep = [i for i in range(len(rates)) if rates[i] is not None and len(mets[i])]
    order = sorted(keep, key=lambda i: float(rates[i]))
    rs = tuple(float(rates[i]) for i in order)
    xs = [hits(mets[i]) for i in order]
    att = tuple(float(x.mean()) for x in xs)
    ivs = [attainment_interval(x, confidence, correlated) for x in xs]
    base = dict(target=target, rates=rs, attainment=att,
                attainment_lo=tuple(iv.lo for iv in ivs),
                attainment_hi=tuple(iv.hi for iv in ivs), confidence=confidence,
                n=tuple(len(x) for x in xs))
    if not rs:
        return GoodputInterval(None, None, None, lower_bound=False, hi_censored=False,
                               monotone=True, offending=(), method="none", **base)
    mono, bad = monotonicity(rs, xs, confidence, correlated)
    if not mono:
        return GoodputInterval(None, None, None, lower_bound=False, hi_censored=False,
                               monotone=False, offending=tuple(bad), **base)
    point = _goodput_point(rs, att, target)
    gens = _children(seed, len(xs))
    reps = np.column_stack([bootstrap_replicates(x, "mean", n_boot, g, smooth=False)[0]
                            for x, g in zip(xs, gens)])
    g = goodput_replicates(rs, reps, target)
    lo, hi = percentile_interval(g, confidence)
    return GoodputInterval(point, lo, hi, lower_bound=all(a >= target for a in att),
                           hi_censored=bool(hi >= rs[-1]), monotone=True, offending=(), **base)


# ---------------------------------------------------------------------------- wording

def _pct(x: float) -> str:
    return f"{x * 100:.0f}"


def describe(c: Comparison) -> str:
    """One phrase for a comparison: "B 23% lower (95% CI 12–31%)" / "no significant difference
    (±8%)" (±: half-width of the ratio interval around 1); proportions in percentage points:
    "B 12.0 pp higher (95% CI 3.1–20.5 pp)" / "no significant difference (±6.0 pp)"."""
    conf = f"{c.confidence * 100:.3g}% CI"
    if c.scale == "points":
        if not (math.isfinite(c.diff_lo) and math.isfinite(c.diff_hi)):
            return "no interval"
        if not c.significant:
            w = max(abs(c.diff_lo), abs(c.diff_hi)) * 100
            return f"no significant difference (±{w:.1f} pp)"
        word = "higher" if c.diff > 0 else "lower"
        lo, hi = sorted((abs(c.diff_lo) * 100, abs(c.diff_hi) * 100))
        return f"{c.b} {abs(c.diff) * 100:.1f} pp {word} ({conf} {lo:.1f}–{hi:.1f} pp)"
    if not c.significant:
        if math.isnan(c.ratio_lo) or math.isnan(c.ratio_hi):
            return "no significant difference" if math.isfinite(c.diff_lo) else "no interval"
        w = max(c.ratio_hi - 1, 1 - c.ratio_lo)
        return ("no significant difference (interval unbounded)" if not math.isfinite(w)
                else f"no significant difference (±{_pct(w)}%)")
    word = "lower" if c.diff < 0 else "higher"
    if not all(math.isfinite(v) for v in (c.ratio, c.ratio_lo, c.ratio_hi)):
        lo, hi = sorted((abs(c.diff_lo), abs(c.diff_hi)))
        return f"{c.b} {word} by {abs(c.diff):.3g} ({conf} {lo:.3g}–{hi:.3g})"
    lo, hi = sorted((abs(1 - c.ratio_lo), abs(1 - c.ratio_hi)))
    return f"{c.b} {_pct(abs(1 - c.ratio))}% {word} ({conf} {_pct(lo)}–{_pct(hi)}%)"
