"""The planner: goodput sweeps on the simulator, deployment ranking, break-even maps, validation.

Role in the data flow: `infer-bench plan` calls `plan(...)`, which simulates (workloads/planning/simulator.py)
every candidate deployment of a chip count (mono, and xPyD disaggregation for every P:D split,
optionally conditional) with a latency model (workloads/latency_model.py), finds each one's goodput
by bisection on the simulated request rate, ranks them by goodput per chip, and builds a
break-even map over input length x output length x link bandwidth; `validate(results_dir, model)`
re-simulates a measured results dir so the report can show predicted vs measured.

Definitions (shared/DESIGN.md): goodput = the highest request rate at which joint SLO attainment
(TTFT <= S_ttft AND TPOT <= S_tpot, over all requests, failures are misses) is >= target (0.9),
linearly interpolated between the last passing and first failing simulated rate
(`workloads.metrics.goodput` over the bisection's points); per-chip goodput divides by ALL chips
the deployment uses (prefill and decode together). Rate sweeps use common random numbers: one
Poisson arrival sequence drawn at rate 1 (workloads.arrivals, the workload's seed) is stretched to
each rate, and the lengths are those workloads/synthetic.py draws, so attainment is close to
monotone in the rate and the bisection is stable.

Placement search (`placement_candidates`, DistServe-style): with a ProfileSet (fits per tensor-
parallel degree TP and pipeline stages PP, per engine, per role) the candidates are mono with n
instances of every (TP, PP) fit, and disagg with p prefill instances of one fit and d decode
instances of another (prefill and decode may come from different profiles or engines), each
instance using TP * PP chips; only MAXIMAL deployments within the chip budget are kept (no room
left for another instance of a role they use), since a deployment that leaves such a gap ranks
no better per chip than the same one grown into it. Mono instances run the scheduling policy
asked for (`policy`: "chunked", "prefill_priority", "decode_priority", or "search": each mono
placement under every policy, its best kept and labelled). Candidates are ranked by goodput per
chip. Speed: all candidates share one base request set (common random numbers); each one's
search starts from, and (prune=True) is skipped against, `rate_upper_bound` -- the rate at which
its busiest role is busy all the time with every step's fixed cost amortised (a true upper bound
on goodput: a candidate whose bound per chip is below the best goodput per chip found so far
cannot win and is reported as pruned).

Uncertainty: each prediction carries a band from the held-out error of the step-time fits it
uses (LatencyModel.heldout_rel_err; the largest of a disagg deployment's prefill and decode
fits): goodput x (1 -+ e), to first order (step times all e too slow or fast scale the rate at
which the same schedule meets the SLOs by about 1/(1 +- e)). Two deployments whose bands overlap
are "too close to call" (`verdict` with errors; the ranking's `call` column compares every row
with the best). Without a stored error (hand-written or converted profiles) the band is unknown.
A second source of uncertainty is the workload sample itself: one seed's lengths and arrivals
can move a goodput by several percent (a few long prompts near the SLO decide it). With
`seeds` > 1 each candidate is searched on that many workload seeds (seed, seed+1, ...; every
candidate sees the same ones), its goodput is the median, `seed_rel_spread` = (max - min) / 2 /
median, and the band's relative width `band_rel_err` = held-out error + seed spread (either
alone where the other is unknown). One seed (the default): the band is the held-out error.

Break-even verdict per map cell: diff = (best disagg - mono) / max(both) per-chip goodput;
"disagg" when diff >= +5%, "mono" when diff <= -5%, "same" in between (SAME_BAND: a fixed band
used only where no held-out error is known), "neither" when no deployment meets the SLO at any
rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import metrics
from ..arrivals import send_times
from .latency_model import LatencyModel, ProfileSet
from .sim_model import (SCHEDULING_POLICIES, Deployment, InstanceConfig, Link, SimRequests,
                        spec_lengths)
from .simulator import simulate
from ..spec import ArrivalSpec, LengthDist, WorkloadSpec, load_point_info

SAME_BAND = 0.05
TOO_CLOSE = "too close to call"
PLAN_POLICIES = (*SCHEDULING_POLICIES, "search")


# ---------------------------------------------------------------------------- goodput search

@dataclass
class GoodputResult:
    goodput_rps: float
    points: list[tuple[float, float]]        # (rate, attainment) simulated, sorted by rate
    n_sims: int


@dataclass
class SweepSpec:
    """How much to simulate per rate: requests arriving over `horizon_s` seconds (a real
    benchmark's duration), at least `min_requests` and at most `max_requests`. A finite burst is
    not a steady state -- a few hundred requests arriving at once can meet a TTFT SLO at any rate
    -- so the request count grows with the rate; overload then shows up as growing queues."""

    horizon_s: float = 60.0
    min_requests: int = 200
    max_requests: int = 20_000

    def n_at(self, rate: float) -> int:
        return int(min(self.max_requests, max(self.min_requests, math.ceil(rate * self.horizon_s))))


def base_requests(workload: WorkloadSpec, n_requests: int) -> SimRequests:
    """`n_requests` lengths of the workload (drawn as workloads/synthetic.py draws them) and a
    rate-1 Poisson schedule, stretched to each simulated rate."""
    wl = replace(workload, num_requests=int(n_requests))
    n_in, n_out = spec_lengths(wl)
    t = send_times(ArrivalSpec(kind="poisson", rate=1.0, seed=wl.seed), len(n_in))
    return SimRequests(np.asarray(t, float), n_in, n_out)


def requests_at_rate(base: SimRequests, rate: float, sweep: SweepSpec | None = None
                     ) -> SimRequests:
    """The first sweep.n_at(rate) requests of `base`, arrivals stretched to `rate`."""
    n = len(base) if sweep is None else min(len(base), sweep.n_at(rate))
    return SimRequests(base.arrival_s[:n] / rate, base.n_input[:n], base.n_output[:n])


def attainment_at_rate(deployment: Deployment, lm: LatencyModel, base: SimRequests,
                       rate: float, slo, sweep: SweepSpec | None = None) -> float:
    reqs = requests_at_rate(base, rate, sweep)
    return simulate(deployment, lm, reqs, per_token=False).attainment(slo)


def find_goodput(deployment: Deployment, lm: LatencyModel, base: SimRequests, slo,
                 *, target: float = 0.9, rate_hint: float = 1.0, rel_tol: float = 0.03,
                 max_sims: int = 24, sweep: SweepSpec | None = None) -> GoodputResult:
    """Highest rate with attainment >= target: bracket by doubling/halving from `rate_hint`,
    then bisect (geometric) until hi/lo < 1 + rel_tol; interpolated like metrics.goodput."""
    pts: dict[float, float] = {}

    def att(r: float) -> float:
        if r not in pts:
            pts[r] = attainment_at_rate(deployment, lm, base, r, slo, sweep)
        return pts[r]

    r = max(float(rate_hint), 1e-6)
    lo, hi = None, None
    if att(r) >= target:
        lo = r
        while len(pts) < max_sims // 2:
            r *= 2.0
            if att(r) >= target:
                lo = r
            else:
                hi = r
                break
    else:
        hi = r
        while len(pts) < max_sims // 2:
            r /= 2.0
            if att(r) >= target:
                lo = r
                break
            hi = r
    if lo is not None and hi is not None:
        while hi / lo > 1.0 + rel_tol and len(pts) < max_sims:
            mid = math.sqrt(lo * hi)
            if att(mid) >= target:
                lo = mid
            else:
                hi = mid
    points = sorted(pts.items())
    if lo is None:
        gp = 0.0
    elif hi is None:
        gp = lo                      # never failed within the search: a lower bound
    else:
        # interpolate between the bracketing pair only (avoid noise elsewhere)
        a_lo, a_hi = pts[lo], pts[hi]
        gp = metrics.goodput([lo, hi], [a_lo, a_hi], target) or lo
    return GoodputResult(goodput_rps=float(gp), points=points, n_sims=len(pts))


# ---------------------------------------------------------------------------- candidates

def candidate_deployments(chips: int, lm: LatencyModel, *, instance: InstanceConfig | None = None,
                          link: Link | None = None,
                          conditional_thresholds: Sequence[int] = (),
                          include_mono: bool = True,
                          include_disagg: bool = True) -> list[Deployment]:
    """Every deployment that uses all `chips` (instances of `lm.chips_per_instance` chips):
    mono with n instances, and xPyD for every P + D = n (optionally also conditional)."""
    inst = instance or InstanceConfig()
    per = max(1, lm.chips_per_instance)
    inst = replace(inst, chips=per)
    n = chips // per
    if n < 1:
        raise ValueError(f"{chips} chips cannot hold one instance of {per} chips")
    out = []
    if include_mono:
        out.append(Deployment("mono", num_instances=n, instance=inst))
    if include_disagg and n >= 2:
        for p in range(1, n):
            for thr in (0, *conditional_thresholds):
                out.append(Deployment("disagg", num_prefill=p, num_decode=n - p, instance=inst,
                                      link=link or Link(), conditional_threshold=int(thr)))
    return out


ProfileOptions = "LatencyModel | ProfileSet | Sequence[LatencyModel]"


def profile_options(profiles, role: str | None = None, engine: str | None = None
                    ) -> list[LatencyModel]:
    """The step-time fits usable for `role` ("prefill", "decode", None = mono): a ProfileSet's
    options for that role, a list as given, a single LatencyModel as a list of one; only those
    of `engine` when given."""
    if profiles is None:
        return []
    if isinstance(profiles, LatencyModel):
        out = [profiles]
    elif isinstance(profiles, ProfileSet):
        out = profiles.options(role)
    else:
        out = list(profiles)
    return [m for m in out if engine is None or m.engine == engine]


def _par(lm: LatencyModel) -> str:
    return f"TP{lm.tp}" + (f"PP{lm.pp}" if lm.pp > 1 else "")


def placement_name(dep: Deployment, lm: LatencyModel | None = None) -> str:
    """The deployment's label with each role's parallelism where any is above 1 (e.g.
    "mono x3", "mono x1 TP2", "1P1D P:TP2 D:TP1"), and the mono policy when not chunked."""
    if dep.mode == "mono":
        m = dep.instance.latency_model or lm
        s = f"mono x{dep.num_instances}"
        if m is not None and m.tp * m.pp > 1:
            s += f" {_par(m)}"
        if dep.instance.policy != "chunked":
            s += f" [{dep.instance.policy}]"
        return s
    pm, dm = dep.p_cfg.latency_model or lm, dep.d_cfg.latency_model or lm
    s = f"{dep.num_prefill}P{dep.num_decode}D"
    if dep.conditional_threshold:
        s += f" cond<{dep.conditional_threshold}"
    if pm is not None and dm is not None and (pm.tp * pm.pp > 1 or dm.tp * dm.pp > 1):
        s += f" P:{_par(pm)} D:{_par(dm)}"
    return s


def placement_candidates(chips: int, profiles, *, prefill_profiles=None, decode_profiles=None,
                         instance: InstanceConfig | None = None, link: Link | None = None,
                         policy: str = "chunked", conditional_thresholds: Sequence[int] = (),
                         include_mono: bool = True, include_disagg: bool = True,
                         mono_engine: str | None = None, disagg_engine: str | None = None
                         ) -> list[Deployment]:
    """DistServe-style placements of at most `chips` chips (see the module docstring):
    mono n x (TP, PP) for every fit of `profiles` (n = chips // (TP * PP)), under `policy`
    (or every policy for "search"); disagg p x prefill fit + d x decode fit for every pair of
    fits (prefill fits from `prefill_profiles`, default `profiles`; decode likewise), every
    (p, d) that leaves no room for another prefill or decode instance. Each instance gets its
    fit as `latency_model` and TP * PP chips. `mono_engine` / `disagg_engine`: only the fits
    of that engine for mono / for both disagg roles (a profile set with several engines)."""
    if policy not in PLAN_POLICIES:
        raise ValueError(f"policy must be one of {PLAN_POLICIES}, not {policy!r}")
    inst = instance or InstanceConfig()
    mono_opts = profile_options(profiles, None, mono_engine)
    pre_opts = profile_options(prefill_profiles if prefill_profiles is not None else profiles,
                               "prefill", disagg_engine)
    dec_opts = profile_options(decode_profiles if decode_profiles is not None else profiles,
                               "decode", disagg_engine)
    policies = SCHEDULING_POLICIES if policy == "search" else (policy,)
    out: list[Deployment] = []

    def cfg(lm: LatencyModel, **kw) -> InstanceConfig:
        return replace(inst, chips=lm.chips_per_instance, latency_model=lm,
                       block_size=lm.block_size, **kw)

    if include_mono:
        for lm in mono_opts:
            n = chips // lm.chips_per_instance
            if n < 1:
                continue
            for pol in policies:
                dep = Deployment("mono", num_instances=n, instance=cfg(lm, policy=pol))
                dep.name = placement_name(dep)
                out.append(dep)
    if include_disagg:
        for pm in pre_opts:
            for dm in dec_opts:
                cp, cd = pm.chips_per_instance, dm.chips_per_instance
                for p in range(1, chips // cp + 1):
                    left = chips - p * cp
                    if left < cd:
                        break
                    d = left // cd
                    if chips - p * cp - d * cd >= cp:    # room for another prefill instance
                        continue
                    for thr in (0, *conditional_thresholds):
                        dep = Deployment("disagg", num_prefill=p, num_decode=d,
                                         instance=cfg(pm), prefill_instance=cfg(pm),
                                         decode_instance=cfg(dm), link=link or Link(),
                                         conditional_threshold=int(thr))
                        dep.name = placement_name(dep)
                        out.append(dep)
    if not out:
        sizes = sorted({lm.chips_per_instance for lm in mono_opts + pre_opts + dec_opts})
        raise ValueError(f"{chips} chips cannot hold one instance (instances need {sizes} chips)")
    return out


def _models_of(dep: Deployment, lm: LatencyModel) -> tuple[LatencyModel, LatencyModel]:
    """(prefill-side, decode-side) step-time models of a deployment (mono: the same twice)."""
    if dep.mode == "mono":
        m = dep.instance.latency_model or lm
        return m, m
    return dep.p_cfg.latency_model or lm, dep.d_cfg.latency_model or lm


def heldout_error_of(dep: Deployment, lm: LatencyModel) -> float | None:
    """The held-out relative error of the fits a deployment uses (the largest; None: unknown)."""
    errs = [m.heldout_rel_err for m in _models_of(dep, lm) if m.heldout_rel_err is not None]
    return max(errs) if errs else None


def _min_decode_cost_per_seq(m: LatencyModel, max_seqs: int) -> float:
    """min over D in 1..max_seqs of (a + decode_cost(D)) / D: a decode token's least cost
    (context term excluded)."""
    dd = np.arange(1, max(1, int(max_seqs)) + 1, dtype=float)
    dec = (np.vectorize(m.decode_cost, otypes=[float])(dd) if m.decode_knots else m.d * dd)
    return float(((m.a + dec) / dd).min())


def rate_upper_bound(dep: Deployment, lm: LatencyModel, base: SimRequests) -> float:
    """An upper bound on the goodput (req/s) of `dep` for the request mix of `base`: the rate
    at which the instances of its busiest role would be busy all the time, counting for each
    request its prefill's per-token, quadratic and per-chunk work (the step's fixed cost `a`
    shared with others) and for each later token the least per-sequence decode cost plus the
    context it reads; co-location slowdown and KV limits ignored (they only lower goodput).
    The quadratic work is c*L^2 where prompts run whole, and its least value c*L (chunks of
    one token: sum l^2 >= sum l) where the prefill instance may chunk them. A pipeline-parallel
    instance of k stages counts k times (its micro-batches overlap, one per stage time)."""
    pm, dm = _models_of(dep, lm)
    n_in = np.asarray(base.n_input, float)
    n_out = np.asarray(base.n_output, float)
    pcfg = dep.instance if dep.mode == "mono" else dep.p_cfg
    whole = pcfg.policy != "chunked" or not pcfg.chunked_prefill
    w_pre = float(np.mean(pm.b * n_in + pm.c * (n_in * n_in if whole else n_in) / 1e3 + pm.f))
    dcfg = dep.instance if dep.mode == "mono" else dep.d_cfg
    tok = np.maximum(n_out - 1, 0.0)
    w_dec = float(np.mean(tok * _min_decode_cost_per_seq(dm, dcfg.max_num_seqs)
                          + dm.e * tok * (n_in + n_out / 2.0)))
    if dep.mode == "mono":
        w = w_pre + w_dec
        return math.inf if w <= 0 else dep.num_instances * pm.pp / w
    bounds = [dep.num_prefill * pm.pp / w_pre if w_pre > 0 else math.inf,
              dep.num_decode * dm.pp / w_dec if w_dec > 0 else math.inf]
    return min(bounds)


def band_error(heldout: float | None, seed_spread: float | None) -> float | None:
    """The band's relative half-width: the fit's held-out error plus the spread over workload
    seeds; either alone where the other is unknown; None when both are."""
    parts = [float(x) for x in (heldout, seed_spread) if x is not None and x == x]
    return sum(parts) if parts else None


def _eval(dep: Deployment, lm: LatencyModel, bases: Sequence[SimRequests], slo, rate: float,
          target: float, rel_tol: float, sweep: SweepSpec,
          rate_hint: float | None = None) -> dict[str, Any]:
    found = [find_goodput(dep, lm, b, slo, target=target, rate_hint=rate_hint or rate,
                          rel_tol=rel_tol, sweep=sweep) for b in bases]
    vals = [g.goodput_rps for g in found]
    gp = GoodputResult(goodput_rps=float(np.median(vals)), points=found[0].points,
                       n_sims=sum(g.n_sims for g in found))
    spread = None
    if len(vals) > 1 and gp.goodput_rps > 0:
        spread = (max(vals) - min(vals)) / 2.0 / gp.goodput_rps
    res = simulate(dep, lm, requests_at_rate(bases[0], rate, sweep), per_token=False)
    pct = res.percentiles()
    chips = dep.chips()
    held = heldout_error_of(dep, lm)
    err = band_error(held, spread)
    pm, dm = _models_of(dep, lm)
    return {"deployment": dep.name, "mode": dep.mode, "chips": chips,
            "num_prefill": dep.num_prefill if dep.mode == "disagg" else None,
            "num_decode": dep.num_decode if dep.mode == "disagg" else None,
            "conditional_threshold": dep.conditional_threshold or None,
            "policy": dep.instance.policy if dep.mode == "mono" else None,
            "prefill_tp": pm.tp, "prefill_pp": pm.pp, "decode_tp": dm.tp, "decode_pp": dm.pp,
            "prefill_engine": pm.engine or None, "decode_engine": dm.engine or None,
            "goodput_rps": gp.goodput_rps, "goodput_per_chip_rps": gp.goodput_rps / chips,
            "heldout_rel_err": held,
            "goodput_seed_min_rps": min(vals) if len(vals) > 1 else None,
            "goodput_seed_max_rps": max(vals) if len(vals) > 1 else None,
            "seed_rel_spread": spread, "band_rel_err": err,
            "goodput_per_chip_lo": None if err is None else gp.goodput_rps / chips * (1 - err),
            "goodput_per_chip_hi": None if err is None else gp.goodput_rps / chips * (1 + err),
            "pruned": False,
            "attainment_at_rate": res.attainment(slo), "meets_rate": gp.goodput_rps >= rate,
            "ttft_p90_s_at_rate": pct["ttft_p90_s"], "tpot_p90_s_at_rate": pct["tpot_p90_s"],
            "n_sims": gp.n_sims + 1,
            # the sweep simulated fewer requests than horizon_s of arrivals at the goodput rate
            "horizon_capped": gp.goodput_rps * sweep.horizon_s > sweep.max_requests}


def rank_deployments(candidates: Sequence[Deployment], lm: LatencyModel, workload: WorkloadSpec,
                     rate: float, slo, *, target: float = 0.9, sweep: SweepSpec | None = None,
                     rel_tol: float = 0.03, progress: Callable[[str], None] | None = None,
                     prune: bool = False, search_policy: bool = False, seeds: int = 1):
    """DataFrame of candidates sorted by goodput per chip (best first). The workload's length
    distributions and seed are used; its num_requests is replaced by the sweep's counts.
    Each search starts from min(rate, rate_upper_bound / 2). prune=True: candidates are tried
    in decreasing order of their bound per chip and one whose bound per chip is below the best
    goodput per chip found so far is not simulated (row `pruned`, goodput NaN).
    search_policy=True: of mono candidates that differ only in policy, the best is kept.
    Columns `call` (vs the best row: "best", TOO_CLOSE when the bands overlap, "worse"; "-"
    where either band is unknown and the rows differ) and `rate_bound_rps` are added.
    seeds > 1: every candidate's goodput is the median over that many workload seeds (see the
    module docstring), with `goodput_seed_min_rps` / `_max_rps` and `seed_rel_spread`."""
    import pandas as pd

    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1, not {seeds}")
    sweep = sweep or SweepSpec()
    bases = [base_requests(replace(workload, seed=workload.seed + i), sweep.max_requests)
             for i in range(int(seeds))]
    base = bases[0]
    bounds = [rate_upper_bound(dep, lm, base) for dep in candidates]
    order = list(range(len(candidates)))
    if prune:
        order.sort(key=lambda i: -bounds[i] / candidates[i].chips())
    rows: list[dict | None] = [None] * len(candidates)
    best = 0.0
    for i in order:
        dep = candidates[i]
        bound = bounds[i]
        if prune and bound / dep.chips() < best:
            pm, dm = _models_of(dep, lm)
            held = heldout_error_of(dep, lm)
            rows[i] = {"deployment": dep.name, "mode": dep.mode, "chips": dep.chips(),
                       "num_prefill": dep.num_prefill if dep.mode == "disagg" else None,
                       "num_decode": dep.num_decode if dep.mode == "disagg" else None,
                       "conditional_threshold": dep.conditional_threshold or None,
                       "policy": dep.instance.policy if dep.mode == "mono" else None,
                       "prefill_tp": pm.tp, "prefill_pp": pm.pp, "decode_tp": dm.tp,
                       "decode_pp": dm.pp, "prefill_engine": pm.engine or None,
                       "decode_engine": dm.engine or None, "goodput_rps": math.nan,
                       "goodput_per_chip_rps": math.nan,
                       "heldout_rel_err": held, "band_rel_err": held, "pruned": True,
                       "meets_rate": False, "n_sims": 0, "horizon_capped": False}
        else:
            if progress:
                progress(dep.name)
            hint = min(rate, bound / 2.0) if math.isfinite(bound) and bound > 0 else rate
            rows[i] = _eval(dep, lm, bases, slo, rate, target, rel_tol, sweep, rate_hint=hint)
            best = max(best, rows[i]["goodput_per_chip_rps"])
        rows[i]["rate_bound_rps"] = bound
    df = pd.DataFrame(rows)
    if search_policy and "policy" in df and (df["mode"] == "mono").any():
        mono = df[df["mode"] == "mono"].copy()
        mono["_key"] = mono["deployment"].str.replace(r" \[.*\]$", "", regex=True)
        mono = mono.sort_values("goodput_per_chip_rps", ascending=False, kind="stable",
                                na_position="last")
        keep = mono.drop_duplicates("_key").index
        df = df[(df["mode"] != "mono") | df.index.isin(keep)].copy()
        is_mono = df["mode"] == "mono"
        df.loc[is_mono, "deployment"] = (df.loc[is_mono, "deployment"].str.replace(
            r" \[.*\]$", "", regex=True) + " [best policy: " + df.loc[is_mono, "policy"] + "]")
    df = df.sort_values(["goodput_per_chip_rps", "chips"], ascending=[False, True],
                        kind="stable", na_position="last").reset_index(drop=True)
    return add_calls(df)


def row_band_error(row) -> float | None:
    """A ranking row's band (relative): `band_rel_err`, else its held-out error (rankings
    built before seed bands); None where unknown."""
    for key in ("band_rel_err", "heldout_rel_err"):
        v = row.get(key)
        if v is not None and v == v:
            return float(v)
    return None


def add_calls(df):
    """The ranking with a `call` column: each row against the best (row 0)."""
    if not len(df):
        return df
    top = df.iloc[0]
    calls = []
    for i, r in enumerate(df.to_dict("records")):
        g = r.get("goodput_per_chip_rps")
        if i == 0:
            calls.append("best")
        elif r.get("pruned") or g is None or g != g:
            calls.append("pruned (bound below best)" if r.get("pruned") else "-")
        else:
            ea, eb = row_band_error(top), row_band_error(r)
            if ea is None and eb is None:
                calls.append("same" if g >= top["goodput_per_chip_rps"] * (1 - SAME_BAND)
                             else "worse")
            else:
                calls.append(TOO_CLOSE if bands_overlap(top["goodput_per_chip_rps"], g, ea, eb)
                             else "worse")
    df = df.copy()
    df["call"] = calls
    return df


# ---------------------------------------------------------------------------- break-even map

def _best_disagg(n: int, evaluate: Callable[[int], float]) -> tuple[int, float]:
    """Hill-climb over prefill count p in [1, n-1] (goodput is close to unimodal in p): a coarse
    geometric scan, then +-1 steps from the best."""
    cache: dict[int, float] = {}

    def g(p: int) -> float:
        if p not in cache:
            cache[p] = evaluate(p)
        return cache[p]

    coarse = sorted({1, n - 1, max(1, n // 2)} | {p for p in (2, 4, 8, 16, 32) if p < n})
    best = max(coarse, key=lambda p: (g(p), -p))
    improved = True
    while improved:
        improved = False
        for q in (best - 1, best + 1):
            if 1 <= q <= n - 1 and g(q) > g(best):
                best, improved = q, True
    return best, g(best)


def bands_overlap(a: float, b: float, err_a: float | None, err_b: float | None) -> bool:
    """Whether the bands a x (1 -+ err_a) and b x (1 -+ err_b) overlap (an unknown error: 0)."""
    ea, eb = err_a or 0.0, err_b or 0.0
    lo_a, hi_a = a * (1 - ea), a * (1 + ea)
    lo_b, hi_b = b * (1 - eb), b * (1 + eb)
    return lo_a <= hi_b and lo_b <= hi_a


def verdict(mono: float, disagg: float, band: float = SAME_BAND, *,
            mono_err: float | None = None, disagg_err: float | None = None
            ) -> tuple[str, float | None]:
    """("disagg" | "mono" | "same" | TOO_CLOSE | "neither", diff = (disagg - mono) / max).
    With a held-out error for either side (relative, from the profiles): TOO_CLOSE when the
    two predictions' bands overlap, else the better one. With none: the fixed `band` on diff
    ("same" within it)."""
    top = max(mono, disagg)
    if top <= 0:
        return "neither", None
    diff = (disagg - mono) / top
    if mono_err is not None or disagg_err is not None:
        if bands_overlap(mono, disagg, mono_err, disagg_err):
            return TOO_CLOSE, diff
        return ("disagg" if disagg > mono else "mono"), diff
    if diff >= band:
        return "disagg", diff
    if diff <= -band:
        return "mono", diff
    return "same", diff


def break_even_map(lm: LatencyModel, slo, chips: int, *, input_lens: Sequence[int],
                   output_lens: Sequence[int], bandwidths_gbps: Sequence[float],
                   link: Link | None = None, instance: InstanceConfig | None = None,
                   rate_hint: float = 1.0, target: float = 0.9, sweep: SweepSpec | None = None,
                   rel_tol: float = 0.05, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per (input length, output length, link bandwidth): best mono vs best disagg goodput per
    chip for `chips` chips (fixed lengths, Poisson arrivals) and the verdict. JSON-able dict:
    {"chips", "slo", "band", "input_lens", "output_lens", "bandwidths_gbps",
     "cells": [{input_len, output_len, bandwidth_gbps, mono_per_chip, disagg_per_chip,
                best_split, diff, verdict}]}."""
    link = link or Link()
    inst = replace(instance or InstanceConfig(), chips=max(1, lm.chips_per_instance))
    n = chips // inst.chips
    sweep = sweep or SweepSpec(horizon_s=30.0, max_requests=5000)
    cells = []
    for li in input_lens:
        for lo in output_lens:
            wl = WorkloadSpec(input_len=LengthDist.fixed(int(li)),
                              output_len=LengthDist.fixed(int(lo)), num_requests=1,
                              seed=seed)
            base = base_requests(wl, sweep.max_requests)
            mono = Deployment("mono", num_instances=n, instance=inst)
            hint = rate_hint
            gm = find_goodput(mono, lm, base, slo, target=target, rate_hint=hint,
                              rel_tol=rel_tol, sweep=sweep).goodput_rps
            hint = gm if gm > 0 else hint
            for bw in bandwidths_gbps:
                if progress:
                    progress(f"in={li} out={lo} bw={bw:g}")
                lk = replace(link, bandwidth_gbps=float(bw))
                if n >= 2:
                    def ev(p: int) -> float:
                        dep = Deployment("disagg", num_prefill=p, num_decode=n - p, instance=inst,
                                         link=lk)
                        return find_goodput(dep, lm, base, slo, target=target, rate_hint=hint,
                                            rel_tol=rel_tol, sweep=sweep).goodput_rps
                    p_best, gd = _best_disagg(n, ev)
                else:
                    p_best, gd = None, 0.0
                v, diff = verdict(gm / chips, gd / chips)
                cells.append({"input_len": int(li), "output_len": int(lo),
                              "bandwidth_gbps": float(bw), "mono_per_chip": gm / chips,
                              "disagg_per_chip": gd / chips,
                              "best_split": f"{p_best}P{n - p_best}D" if p_best else None,
                              "diff": diff, "verdict": v})
    return {"chips": chips, "slo": _slo_dict(slo), "band": SAME_BAND, "target": target,
            "input_lens": [int(x) for x in input_lens], "output_lens": [int(x) for x in output_lens],
            "bandwidths_gbps": [float(b) for b in bandwidths_gbps], "layerwise": link.layerwise,
            "link_latency_s": link.latency_s, "cells": cells}


def break_even_figure(bmap: dict[str, Any]):
    """A plotly figure: one heatmap per link bandwidth, colour = diff (disagg - mono)/max, text =
    verdict."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    bws = bmap["bandwidths_gbps"]
    ins, outs = bmap["input_lens"], bmap["output_lens"]
    fig = make_subplots(rows=1, cols=len(bws), subplot_titles=[f"{b:g} Gb/s" for b in bws],
                        shared_yaxes=True)
    for j, bw in enumerate(bws):
        z = [[None] * len(ins) for _ in outs]
        text = [[""] * len(ins) for _ in outs]
        for c in bmap["cells"]:
            if c["bandwidth_gbps"] != bw:
                continue
            yi, xi = outs.index(c["output_len"]), ins.index(c["input_len"])
            z[yi][xi] = None if c["diff"] is None else 100.0 * c["diff"]
            text[yi][xi] = c["verdict"] + (f"<br>{c['best_split']}" if c["verdict"] == "disagg"
                                           else "")
        fig.add_trace(go.Heatmap(
            z=z, x=[str(i) for i in ins], y=[str(o) for o in outs], text=text,
            texttemplate="%{text}", zmid=0, zmin=-50, zmax=50, colorscale="RdBu",
            colorbar={"title": "disagg vs mono %"}, showscale=(j == 0),
            hovertemplate="input %{x}, output %{y}<br>diff %{z:.1f}%<br>%{text}<extra></extra>"),
            row=1, col=j + 1)
        fig.update_xaxes(title_text="input tokens", type="category", row=1, col=j + 1)
    fig.update_yaxes(title_text="output tokens", type="category", row=1, col=1)
    slo = bmap.get("slo") or {}
    fig.update_layout(title=f"Where disaggregation wins ({bmap['chips']} chips, SLO TTFT "
                            f"{slo.get('ttft_s')} s, TPOT {slo.get('tpot_s')} s; "
                            f"|diff| < {100 * bmap['band']:.0f}% = same)", height=420)
    return fig


# ---------------------------------------------------------------------------- plan

@dataclass
class Plan:
    ranking: Any                      # pandas.DataFrame, best first
    break_even: dict | None
    inputs: dict = field(default_factory=dict)

    @property
    def best(self) -> dict:
        return self.ranking.iloc[0].to_dict()

    def to_dict(self) -> dict[str, Any]:
        rows = json.loads(self.ranking.to_json(orient="records"))
        return {"inputs": self.inputs, "ranking": rows, "break_even": self.break_even}


def _slo_dict(slo) -> dict:
    if slo is None:
        return {}
    if isinstance(slo, dict):
        return dict(slo)
    return {"ttft_s": getattr(slo, "ttft_s", None), "tpot_s": getattr(slo, "tpot_s", None)}


def plan(workload: WorkloadSpec, rate: float, slo, chips: int, latency_model,
         link: Link | None = None, *, instance: InstanceConfig | None = None,
         conditional_thresholds: Sequence[int] = (), target: float = 0.9,
         sweep: SweepSpec | None = None, rel_tol: float = 0.03,
         map_input_lens: Sequence[int] | None = (256, 1024, 4096),
         map_output_lens: Sequence[int] | None = (64, 256, 1024),
         map_bandwidths_gbps: Sequence[float] | None = None, map_sweep: SweepSpec | None = None,
         progress: Callable[[str], None] | None = None, prefill_profiles=None,
         decode_profiles=None, policy: str = "chunked", prune: bool = False,
         mono_engine: str | None = None, disagg_engine: str | None = None,
         seeds: int = 1) -> Plan:
    """Rank mono vs disagg placements of at most `chips` chips by goodput per chip for
    `workload` under `slo` (placement_candidates: every (TP, PP) fit of `latency_model`, a
    LatencyModel or ProfileSet, per role; `prefill_profiles` / `decode_profiles` give the
    disagg roles other fits; `policy` for mono instances, "search" for the best of each;
    optional conditional thresholds), and build the break-even map with the first mono fit
    (skip it with map_input_lens=None). `rate` is the offered rate to check ("meets_rate")
    and the search's starting point."""
    link = link or Link()
    cands = placement_candidates(chips, latency_model, prefill_profiles=prefill_profiles,
                                 decode_profiles=decode_profiles, instance=instance, link=link,
                                 policy=policy, conditional_thresholds=conditional_thresholds,
                                 mono_engine=mono_engine, disagg_engine=disagg_engine)
    opts = (profile_options(latency_model, None, mono_engine)
            or profile_options(latency_model, None)
            or profile_options(prefill_profiles, "prefill"))
    lm = opts[0]
    ranking = rank_deployments(cands, lm, workload, rate, slo, target=target,
                               sweep=sweep, rel_tol=rel_tol, progress=progress, prune=prune,
                               search_policy=(policy == "search"), seeds=seeds)
    bmap = None
    if map_input_lens and map_output_lens:
        bws = map_bandwidths_gbps or sorted({25.0, float(link.bandwidth_gbps), 400.0})
        bmap = break_even_map(lm, slo, chips, input_lens=map_input_lens,
                              output_lens=map_output_lens, bandwidths_gbps=bws, link=link,
                              instance=instance, rate_hint=rate, target=target,
                              sweep=map_sweep, seed=workload.seed, progress=progress)
    profs = {"profiles": _profiles_json(latency_model)}
    if prefill_profiles is not None:
        profs["prefill_profiles"] = _profiles_json(prefill_profiles)
    if decode_profiles is not None:
        profs["decode_profiles"] = _profiles_json(decode_profiles)
    inputs = {"workload": workload.to_dict(), "rate_rps": rate, "slo": _slo_dict(slo),
              "chips": chips, "target": target, "link": link.__dict__.copy(), "policy": policy,
              "latency_model": lm.to_dict(), **profs, "seeds": int(seeds),
              "sweep": (sweep or SweepSpec()).__dict__.copy()}
    return Plan(ranking=ranking, break_even=bmap, inputs=inputs)


def _profiles_json(p) -> Any:
    if isinstance(p, (LatencyModel, ProfileSet)):
        return p.to_dict()
    return [m.to_dict() for m in p]


# ---------------------------------------------------------------------------- validation

# The reference engine served over loopback HTTP on this kind of host (measured: client TTFT -
# server TTFT ~5 ms; requests sent ~1 ms apart to an idle engine share a step, ~20 ms apart do not)
ENGINE_INTAKE_S = 0.005
ENGINE_WAKE_S = 0.005


def deployment_from_spec(d: dict, *, link: Link | None = None,
                         lm: LatencyModel | None = None, wake_s: float | None = None,
                         intake_s: float | None = None) -> Deployment:
    """A simulator Deployment from a spec.json deployment entry (EngineDeploymentSpec.to_dict();
    external deployments: mono with `chips` instances). `wake_s` (InstanceConfig) and
    `intake_s` (Deployment) default to ENGINE_WAKE_S / ENGINE_INTAKE_S for the reference engine
    (kind "engine") and 0 otherwise (external servers, simulated runs)."""
    engine = d.get("kind") == "engine"
    wake_s = (ENGINE_WAKE_S if engine else 0.0) if wake_s is None else float(wake_s)
    intake_s = (ENGINE_INTAKE_S if engine else 0.0) if intake_s is None else float(intake_s)
    kw: dict[str, Any] = {"wake_s": wake_s}
    if d.get("max_num_batched_tokens"):
        kw["max_num_batched_tokens"] = int(d["max_num_batched_tokens"])
    if d.get("max_num_seqs"):
        kw["max_num_seqs"] = int(d["max_num_seqs"])
    if "enable_chunked_prefill" in d:
        kw["chunked_prefill"] = bool(d["enable_chunked_prefill"])
    if "max_num_batched_tokens" not in kw:
        kw["max_num_batched_tokens"] = 512            # the reference engine's defaults
    if "max_num_seqs" not in kw:
        kw["max_num_seqs"] = min(64, kw["max_num_batched_tokens"])
    kw["max_num_seqs"] = min(kw["max_num_seqs"], kw["max_num_batched_tokens"])
    inst = InstanceConfig(**kw)
    name = str(d.get("name", d.get("mode", "mono")))
    if d.get("mode") == "disagg":
        return Deployment("disagg", num_prefill=int(d.get("prefill_workers", 1)),
                          num_decode=int(d.get("decode_workers", 1)), instance=inst,
                          link=link or Link(), name=name, intake_s=intake_s)
    n = int(d.get("chips", 1) or 1) if d.get("kind") == "external" else 1
    return Deployment("mono", num_instances=n, instance=inst, name=name, intake_s=intake_s)


def validate(results_dir: str | Path, latency_model: "LatencyModel | dict[str, LatencyModel]", *,
             link: Link | None = None, slo=None, load_points: Sequence[str] | None = None,
             wake_s: float | None = None, intake_s: float | None = None) -> Any:
    """Predicted vs measured, one row per measured (deployment, load point) of a results dir.

    Each point is re-simulated with the measured requests (send times, n_input,
    n_output of requests.parquet; closed-loop load points: the spec's concurrency) on the
    deployment of spec.json. Columns: deployment, load_point, n_requests, and for each metric m in
    ttft_p50_s, ttft_p90_s, tpot_p50_s, tpot_p90_s, slo_attainment: `measured_<m>`,
    `predicted_<m>`, `error_<m>` (predicted - measured) and `rel_error_<m>` (error / measured).
    `latency_model` may map deployment name -> model (e.g. mono at 2 threads, disagg workers at 1);
    deployments missing from the map are skipped. `load_points`: only those (e.g. the held-out
    ones). `wake_s`, `intake_s`: see deployment_from_spec."""
    import pandas as pd

    from ..results import load_results

    res = load_results(results_dir)
    spec = res.spec or {}
    slo = slo if slo is not None else spec.get("slo")
    deps = {str(d.get("name")): d for d in spec.get("deployments") or []}
    lps = load_point_info(spec)
    summary = res.summary
    metrics_ = ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "slo_attainment")
    rows = []
    recs = res.records
    for (dep_name, lp_name), g in recs.groupby(["deployment", "load_point"], sort=False):
        if str(lp_name) == "warmup" or (load_points is not None
                                         and str(lp_name) not in load_points):
            continue
        lm = latency_model.get(str(dep_name)) if isinstance(latency_model, dict) else latency_model
        if lm is None:
            continue
        dspec = deps.get(str(dep_name), {"name": dep_name, "mode": "mono"})
        dep = deployment_from_spec(dspec, link=link, lm=lm, wake_s=wake_s, intake_s=intake_s)
        info = lps.get(str(lp_name)) or {}
        g = g.sort_values("intended_send_s", na_position="last")
        n_in = g["n_input"].fillna(g["n_input"].median()).clip(lower=1).astype(int).to_numpy()
        n_out = np.where(g["n_output"].fillna(0).to_numpy() > 0, g["n_output"].fillna(0),
                         g["max_tokens"].fillna(1)).astype(int)
        n_out = np.maximum(n_out, 1)
        t = g["intended_send_s"].to_numpy(float)
        if "send_s" in g:             # the actual send times, where measured
            sent = g["send_s"].to_numpy(float)
            t = np.where(np.isnan(sent), t, sent)
        conc = int(info["concurrency"]) if info.get("arrival_kind") == "concurrency" else None
        if conc is None:
            t = t - np.nanmin(t)
            t = np.nan_to_num(t, nan=float(np.nanmax(t)) if np.isfinite(t).any() else 0.0)
        else:
            t = np.zeros(len(g))
        sim = simulate(dep, lm, SimRequests(t, n_in, n_out, concurrency=conc),
                       per_token=False)
        pred = sim.percentiles()
        pred["slo_attainment"] = sim.attainment(slo) if slo else None
        meas_row = summary[(summary["deployment"] == dep_name) & (summary["load_point"] == lp_name)]
        if len(meas_row):
            meas = meas_row.iloc[0].to_dict()
        else:
            meas = metrics.summarize(g, slo)
        row = {"deployment": dep_name, "load_point": lp_name, "n_requests": len(g),
               "rate_rps": info.get("rate_rps"), "concurrency": info.get("concurrency")}
        for m in metrics_:
            mv, pv = meas.get(m), pred.get(m)
            mv = None if mv is None or (isinstance(mv, float) and math.isnan(mv)) else float(mv)
            row[f"measured_{m}"] = mv
            row[f"predicted_{m}"] = pv
            err = None if mv is None or pv is None else pv - mv
            row[f"error_{m}"] = err
            row[f"rel_error_{m}"] = (err / mv) if err is not None and mv else None
        rows.append(row)
    return pd.DataFrame(rows)
