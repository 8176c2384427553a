"""Deployment against deployment (or run against run) on one load point: the per-request evidence
and the statistical comparison of every headline figure. One implementation for the report's
verdict, `compare` and the pipeline gates.

Role in the data flow: callers hand over request records (requests.parquet rows: one results dir,
or several runs' records tagged with `repeat`), the SLO and the steady-state ramp of spec.json;
this module picks each (deployment, load point, repeat)'s measured requests (metrics.steady_state),
turns them into per-request series IN SEND ORDER, and asks `workloads.stats` for the interval
(block bootstrap within a run, Welch over repeats when there are >= 3 a side, Wilson/Newcombe
for attainment). Pure: no files, no printing.

The figures (`HEADLINE`): TTFT p50/p90/p99 and E2E p90 counted from the INTENDED send time (open
loop: a late client cannot hide queueing; closed loop: the same as from the actual send), TPOT
p90 (per request), ITL p99 (per token: the tokens of the requests in send order form the series,
so a stall that hits the concurrent requests together stays inside one block), output throughput
and request throughput (the steady-state window cut into equal time bins, each bin's tokens or
completed requests per second: their mean is the throughput, their spread over time its noise),
joint SLO attainment (per-request hits; failed requests miss). `ANSWER_HEADLINE`: TTFAT p50/p90
(to the first answer token, from the intended send time), for runs with reasoning or tool-call
streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import metrics, stats


@dataclass(frozen=True)
class Headline:
    key: str            # summary-style name
    label: str          # for sentences
    kind: str           # ttft, ttfat, e2e, tpot, itl, throughput, requests, attainment
    stat: str           # p50 / p90 / p99 / mean (attainment: the share)
    lower_is_better: bool = True


HEADLINE: tuple[Headline, ...] = (
    Headline("ttft_p50_s", "TTFT p50", "ttft", "p50"),
    Headline("ttft_p90_s", "TTFT p90", "ttft", "p90"),
    Headline("ttft_p99_s", "TTFT p99", "ttft", "p99"),
    Headline("tpot_p50_s", "TPOT p50", "tpot", "p50"),
    Headline("tpot_p90_s", "TPOT p90", "tpot", "p90"),
    Headline("itl_p99_s", "ITL p99", "itl", "p99"),
    Headline("e2e_p90_s", "E2E p90", "e2e", "p90"),
    Headline("output_throughput_tps", "output throughput", "throughput", "mean", False),
    Headline("request_throughput_rps", "request throughput", "requests", "mean", False),
    Headline("slo_attainment", "SLO attainment", "attainment", "mean", False),
)
# Time to the first ANSWER token (reasoning / tool-call streams), from the intended send time;
# compared only where a run has such streams (elsewhere it equals TTFT and would only widen the
# family): see `has_answer_split`.
ANSWER_HEADLINE: tuple[Headline, ...] = (
    Headline("ttfat_p50_s", "TTFAT p50", "ttfat", "p50"),
    Headline("ttfat_p90_s", "TTFAT p90", "ttfat", "p90"),
)
BY_KEY = {h.key: h for h in HEADLINE + ANSWER_HEADLINE}


def has_answer_split(records) -> bool:
    """Whether any request streamed reasoning or tool-call tokens before its answer."""
    for r in _records(records):
        for col in ("n_output_reasoning", "n_output_tool"):
            v = _num(r.get(col))
            if math.isfinite(v) and v > 0:
                return True
    return False


def _records(records) -> list[dict]:
    if hasattr(records, "to_dict"):
        return records.to_dict("records")
    return [r if isinstance(r, Mapping) else r.to_dict() for r in records]


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _send_key(r: Mapping) -> float:
    v = _num(r.get("intended_send_s"))
    return v if math.isfinite(v) else _num(r.get("send_s"))


def measured_groups(records, deployment: str, load_point: Any,
                    ramp_fraction: float = 0.0) -> list[tuple[list[dict], tuple | None]]:
    """The measured requests of one deployment x load point, per repeat, in send order, each with
    its throughput window: (records, (start, end)) for every repeat present."""
    rows = [r for r in _records(records)
            if r.get("deployment") == deployment and str(r.get("load_point")) == str(load_point)]
    by_rep: dict[int, list[dict]] = {}
    for r in rows:
        rep = _num(r.get("repeat"))
        by_rep.setdefault(int(rep) if math.isfinite(rep) else 0, []).append(r)
    out = []
    for rep in sorted(by_rep):
        rs = sorted(by_rep[rep], key=_send_key)
        if ramp_fraction > 0:
            kept, win = metrics.steady_state(rs, ramp_fraction)
        else:
            kept, win = rs, metrics.default_window(rs)
        out.append((sorted(kept, key=_send_key), win))
    return out


def series(group: tuple[list[dict], tuple | None], kind: str, slo: Any = None) -> np.ndarray:
    """The per-request (ITL: per-token) values of one measured group in send order; NaN where a
    request failed or the value is undefined."""
    rows, win = group
    nan = float("nan")
    if kind == "itl":
        out: list[float] = []
        for r in rows:
            if not metrics.is_failed(r):
                out.extend(metrics.itl_per_token(list(r.get("chunk_times_s") or []),
                                                 list(r.get("chunk_tokens") or [])))
        return np.asarray(out, dtype=float)
    if kind == "attainment":
        return np.asarray([1.0 if all(metrics.slo_checks(r, slo)) else 0.0 for r in rows])
    if kind in ("throughput", "requests"):
        return _rate_bins(rows, win, tokens=kind == "throughput")
    if kind == "ttfat":
        vals = []
        for r in rows:
            t, t0 = _num(r.get("first_answer_token_s")), _send_key(r)
            vals.append(t - t0 if not metrics.is_failed(r) and math.isfinite(t) and
                        math.isfinite(t0) else nan)
        return np.asarray(vals, dtype=float)
    col = {"ttft": ("ttft_from_intended_s", "ttft_s"), "e2e": ("e2e_from_intended_s", "e2e_s"),
           "tpot": ("tpot_s",)}[kind]
    vals = []
    for r in rows:
        v = nan
        if not metrics.is_failed(r):
            for c in col:
                v = _num(r.get(c))
                if math.isfinite(v):
                    break
        vals.append(v)
    return np.asarray(vals, dtype=float)


def _rate_bins(rows: list[dict], win: tuple | None, tokens: bool) -> np.ndarray:
    """Throughput as a time series: the window cut into equal bins (5-20, ~4 requests each), each
    bin's output tokens (or completed requests) per second. Their mean is the window's
    throughput; their spread is how much it varies over the run (a per-request view would see
    none: with fixed output lengths every request carries the same tokens)."""
    if not win or win[1] <= win[0] or not rows:
        return np.asarray([], dtype=float)
    lo, hi = float(win[0]), float(win[1])
    k = int(min(20, max(5, len(rows) // 4)))
    edges = np.linspace(lo, hi, k + 1)
    counts = np.zeros(k)
    for r in rows:
        if metrics.is_failed(r):
            continue
        if tokens:
            times = np.asarray(list(r.get("chunk_times_s") or []), dtype=float)
            toks = np.asarray(list(r.get("chunk_tokens") or []), dtype=float)
            if not len(times):
                continue
            total, n_out = toks.sum(), _num(r.get("n_output"))
            if total > 0 and math.isfinite(n_out) and n_out > total:
                toks = toks * (n_out / total)
        else:
            last = _num(r.get("last_token_s"))
            if not math.isfinite(last):
                continue
            times, toks = np.asarray([last]), np.asarray([1.0])
        inside = (times >= lo) & (times <= hi)
        idx = np.clip(np.searchsorted(edges, times[inside], side="right") - 1, 0, k - 1)
        np.add.at(counts, idx, toks[inside])
    return counts / ((hi - lo) / k)


def compare_groups(groups_a, groups_b, headline: Headline, *, name_a: str, name_b: str,
                   slo: Any = None, seed: int = 0,
                   confidence: float = stats.CONFIDENCE) -> stats.Comparison:
    """B against A on one headline figure; groups: `measured_groups` of each side (one per
    repeat or run)."""
    if headline.kind == "attainment":
        ha = np.concatenate([series(g, "attainment", slo) for g in groups_a] or [np.empty(0)])
        hb = np.concatenate([series(g, "attainment", slo) for g in groups_b] or [np.empty(0)])
        if not len(ha) or not len(hb):
            nan = float("nan")
            return stats.Comparison(headline.key, name_a, name_b, nan, nan, nan, nan, nan, nan,
                                    nan, nan, "none", len(ha), len(hb), False, None, False,
                                    confidence=confidence, scale="points",
                                    note="no requests on a side")
        return stats.compare_attainment(ha, hb, metric=headline.key, name_a=name_a,
                                        name_b=name_b, confidence=confidence)
    ra = [series(g, headline.kind, slo) for g in groups_a]
    rb = [series(g, headline.kind, slo) for g in groups_b]
    return stats.compare_runs(ra, rb, headline.stat, metric=headline.key, name_a=name_a,
                              name_b=name_b, lower_is_better=headline.lower_is_better, seed=seed,
                              confidence=confidence)


def oriented(c: stats.Comparison, groups: Mapping[str, list], headline: Headline, slo: Any = None,
             seed: int = 0) -> stats.Comparison:
    """The comparison with the winner as side B (so `stats.describe` names it), recomputed with
    the sides swapped when A won."""
    if c.significant and c.better == c.a:
        return compare_groups(groups[c.b], groups[c.a], headline, name_a=c.b, name_b=c.a,
                              slo=slo, seed=seed, confidence=c.confidence)
    return c


def compare_load_point(records, deployments: Sequence[str], load_point: Any, *, slo: Any = None,
                       ramp_fraction: float = 0.0, keys: Iterable[str] | None = None,
                       seed: int = 0, family_confidence: float = stats.CONFIDENCE
                       ) -> list[stats.Comparison]:
    """Every headline figure at one load point, the second deployment against the first (the
    winner named as B where there is one). Deployments with no measured request are skipped.
    The figures form one family: each interval is at 1 - (1 - family_confidence) / m
    (Bonferroni over the m figures), so that two identical deployments get a winner on ANY of
    them at most 5% of the time, not ~5% per figure."""
    if len(deployments) < 2:
        return []
    a, b = deployments[0], deployments[1]
    groups = {d: measured_groups(records, d, load_point, ramp_fraction) for d in (a, b)}
    if not any(g for g, _ in groups[a]) or not any(g for g, _ in groups[b]):
        return []
    out = []
    keys = list(keys or [h.key for h in HEADLINE])
    each = 1.0 - (1.0 - family_confidence) / max(1, len(keys))
    for key in keys:
        h = BY_KEY[key]
        c = compare_groups(groups[a], groups[b], h, name_a=a, name_b=b, slo=slo, seed=seed,
                           confidence=each)
        out.append(oriented(c, groups, h, slo, seed))
    return out


def attainment_evidence(records, deployment: str, load_point: Any, *, slo: Any = None,
                        ramp_fraction: float = 0.0) -> dict[str, Any]:
    """Attainment of one deployment x load point with its Wilson interval (effective n), its
    half-width, and how many requests would make it +-5 points."""
    hits = np.concatenate([series(g, "attainment", slo)
                           for g in measured_groups(records, deployment, load_point,
                                                    ramp_fraction)] or [np.empty(0)])
    if not len(hits):
        return {"n": 0}
    iv = stats.attainment_interval(hits)
    p = float(hits.mean())
    design = len(hits) / iv.n if iv.n and iv.n > 0 else 1.0
    return {"n": int(len(hits)), "n_eff": float(iv.n), "attainment": p, "lo": iv.lo,
            "hi": iv.hi, "halfwidth": (iv.hi - iv.lo) / 2,
            "requests_for_5pt": stats.requests_for_halfwidth(min(max(p, 0.0), 1.0),
                                                             design_effect=design)}


def goodput_evidence(records, deployment: str, rates: Mapping[Any, float], *, slo: Any = None,
                     ramp_fraction: float = 0.0, target: float = 0.9,
                     seed: int = 0) -> stats.GoodputInterval | None:
    """Goodput of one deployment with its interval and monotonicity check, from the SLO hits of
    each load point that has a rate (`rates`: load point -> req/s)."""
    lps = [lp for lp, r in rates.items() if r is not None and math.isfinite(r)]
    mets, rs = [], []
    for lp in lps:
        hits = np.concatenate([series(g, "attainment", slo)
                               for g in measured_groups(records, deployment, lp, ramp_fraction)]
                              or [np.empty(0)])
        if len(hits):
            mets.append(hits)
            rs.append(float(rates[lp]))
    if not rs:
        return None
    return stats.goodput_interval(rs, mets, target=target, seed=seed)
