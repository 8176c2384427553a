"""Summary table and verdict: summary DataFrame (one row per deployment x load point) -> text.

  format_ms / format_value   number formatting with sensible precision (ms for latencies)
  summary_table(summary)     SummaryTable: header + formatted rows, best value per load point flagged
  goodput(rates, att)        workloads.metrics.goodput, flagged when it is a lower bound (all passed)
  verdict(summary)           short findings: best goodput, lowest p90 TTFT / TPOT per load point,
                             with the margin over the runner-up in %
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from infer_bench.workloads import metrics

from .data import as_float, order_load_points


def format_ms(seconds: Any) -> str:
    """Seconds -> milliseconds text: 3 significant digits below 100 ms, whole ms above."""
    v = as_float(seconds)
    if not math.isfinite(v):
        return "–"
    ms = v * 1e3
    a = abs(ms)
    if a == 0:
        return "0"
    if a < 1:
        return f"{ms:.3f}"
    if a < 10:
        return f"{ms:.2f}"
    if a < 100:
        return f"{ms:.1f}"
    return f"{ms:,.0f}"


def format_value(v: Any, digits: int = 3) -> str:
    """A plain number with `digits` significant digits (thousands separated), '–' if missing."""
    f = as_float(v)
    if not math.isfinite(f):
        return "–"
    if f == 0:
        return "0"
    if abs(f) >= 10 ** digits or (f == int(f) and abs(f) >= 1 and digits > 3):
        return f"{f:,.0f}"
    mag = int(math.floor(math.log10(abs(f))))
    dec = max(0, digits - 1 - mag)
    return f"{f:,.{dec}f}"


def format_pct(frac: Any) -> str:
    f = as_float(frac)
    return "–" if not math.isfinite(f) else f"{f * 100:.1f}%"


# column key, header, formatter, "lower"/"higher" is better (None: not ranked)
COLUMNS: list[tuple[str, str, Any, str | None]] = [
    ("rate_rps", "Offered (req/s)", format_value, None),
    ("n_requests", "Requests", lambda v: format_value(v, 9), None),
    ("n_failed", "Failed", lambda v: format_value(v, 9), None),
    ("request_throughput_rps", "Throughput (req/s)", format_value, None),
    ("output_throughput_tps", "Output (tok/s)", format_value, None),
    ("ttft_p50_s", "TTFT p50 (ms)", format_ms, "lower"),
    ("ttft_p90_s", "TTFT p90 (ms)", format_ms, "lower"),
    ("ttft_p99_s", "TTFT p99 (ms)", format_ms, "lower"),
    ("tpot_p50_s", "TPOT p50 (ms)", format_ms, "lower"),
    ("tpot_p90_s", "TPOT p90 (ms)", format_ms, "lower"),
    ("itl_p50_s", "ITL p50 (ms)", format_ms, "lower"),
    ("e2e_p90_s", "E2E p90 (ms)", format_ms, "lower"),
    ("slo_attainment", "SLO attained", format_pct, "higher"),
]


@dataclass
class Cell:
    text: str
    best: bool = False
    numeric: bool = True
    warn: bool = False
    cls: str = ""        # extra CSS classes ("good", "bad", "muted", "sub" ...)
    sub: str = ""        # a second, smaller line (e.g. a confidence interval)
    sub2: str = ""       # a third, smaller line


@dataclass
class Table:
    """A small formatted table for a report section (headers, rows of Cells, caption)."""
    headers: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""
    text_cols: int = 2   # leading columns that are text (left aligned)
    group_starts: list[int] = field(default_factory=list)


@dataclass
class SummaryTable:
    headers: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    group_starts: list[int] = field(default_factory=list)  # row indexes where a load point begins


def _order(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary.copy()
    lp_order = {lp: i for i, lp in enumerate(order_load_points(s["load_point"]))}
    dep_order = {d: i for i, d in enumerate(dict.fromkeys(s["deployment"]))}
    s["_lp"] = s["load_point"].map(lambda v: lp_order.get(v, len(lp_order)))
    s["_dep"] = s["deployment"].map(dep_order)
    return s.sort_values(["_lp", "_dep"], kind="stable").reset_index(drop=True)


def summary_table(summary: pd.DataFrame, lp_labels: dict | None = None) -> SummaryTable:
    """Formatted rows grouped by load point; the best deployment per ranked column is flagged."""
    table = SummaryTable()
    if summary is None or summary.empty or "deployment" not in summary:
        return table
    s = _order(summary)
    cols = [c for c in COLUMNS if c[0] in s.columns and
            (c[0] != "rate_rps" or pd.to_numeric(s[c[0]], errors="coerce").notna().any())]
    table.headers = ["Load point", "Deployment"] + [c[1] for c in cols]
    n_deps = s["deployment"].nunique()
    prev = object()
    for _, grp in s.groupby("_lp", sort=True):
        best: dict[str, float] = {}
        for key, _, _, better in cols:
            if better is None or n_deps < 2:
                continue
            vals = pd.to_numeric(grp[key], errors="coerce")
            if key != "slo_attainment" and "n_failed" in grp and "n_requests" in grp:
                # a deployment that failed everything must not "win" on latency
                nf = pd.to_numeric(grp["n_failed"], errors="coerce").fillna(0)
                nr = pd.to_numeric(grp["n_requests"], errors="coerce").fillna(0)
                vals = vals.where(nr > nf)
            if vals.notna().sum() >= 2 and vals.dropna().nunique() > 1:
                best[key] = vals.min() if better == "lower" else vals.max()
        for _, r in grp.iterrows():
            lp = r["load_point"]
            if lp != prev:
                table.group_starts.append(len(table.rows))
                prev = lp
            row = [Cell(str((lp_labels or {}).get(lp, lp)), numeric=False),
                   Cell(str(r["deployment"]), numeric=False)]
            for key, _, fmt, _ in cols:
                v = as_float(r[key])
                c = Cell(fmt(r[key]))
                c.best = key in best and math.isfinite(v) and v == best[key]
                if key == "n_failed" and math.isfinite(v) and v > 0:
                    c.warn = True
                row.append(c)
            table.rows.append(row)
    return table


# ----------------------------------------------------------------------------- goodput

@dataclass
class Goodput:
    rate: float | None          # None: target missed even at the lowest rate measured
    lower_bound: bool = False   # True: target met at every rate measured (goodput >= rate)


def goodput(rates: Sequence[float], attainment: Sequence[float], target: float = 0.9) -> Goodput:
    """`workloads.metrics.goodput` (the one definition: highest rate with joint attainment >=
    target, interpolated) over the finite points, with `lower_bound` set when every rate
    measured met the target (goodput >= the highest rate)."""
    r = np.asarray(rates, dtype=float)
    a = np.asarray(attainment, dtype=float)
    keep = np.isfinite(r) & np.isfinite(a)
    r, a = r[keep], a[keep]
    if not len(r):
        return Goodput(None)
    g = metrics.goodput(r.tolist(), a.tolist(), target)
    return Goodput(None if g is None else float(g), lower_bound=bool((a >= target).all()))


def goodputs(summary: pd.DataFrame, target: float = 0.9) -> dict[str, Goodput]:
    """Goodput per deployment (offered rate if known, else achieved throughput)."""
    out: dict[str, Goodput] = {}
    if summary is None or summary.empty or "slo_attainment" not in summary:
        return out
    if "rate_rps" not in summary or pd.to_numeric(summary["rate_rps"], errors="coerce").isna().all():
        return out  # no offered rates: not a rate sweep, goodput undefined
    for dep, g in summary.groupby("deployment", sort=False):
        out[str(dep)] = goodput(pd.to_numeric(g["rate_rps"], errors="coerce"),
                                pd.to_numeric(g["slo_attainment"], errors="coerce"), target)
    return out


# ----------------------------------------------------------------------------- verdict

@dataclass
class Finding:
    text: str
    metric: str = ""     # "goodput" or "p90" (per load point); "" for a remark


def _margin(best: float, other: float, lower_better: bool) -> float | None:
    if not (math.isfinite(best) and math.isfinite(other)) or other == best:
        return 0.0 if other == best else None
    if lower_better:
        return (other - best) / other * 100 if other else None
    return (best - other) / other * 100 if other else None


def verdict(summary: pd.DataFrame, target: float = 0.9, lp_labels: dict | None = None,
            chips: dict | None = None) -> list[Finding]:
    """Who wins on goodput and on p90 TTFT / TPOT at each load point, with the margin in %.
    With `chips` (deployment -> chips or CPU workers it occupies, prefill and decode together),
    goodput is ranked per chip, as DistServe compares deployments."""
    out: list[Finding] = []
    if summary is None or summary.empty or "deployment" not in summary:
        return out
    s = _order(summary)
    deps = list(dict.fromkeys(s["deployment"]))
    if len(deps) < 2:
        out.append(Finding(f"One deployment measured ({deps[0]}); nothing to compare."
                           if deps else "No deployments measured."))
    # goodput across load points
    gps = goodputs(s, target)
    n_lps = s["load_point"].nunique()
    if len(deps) >= 2 and n_lps > 1 and gps:
        known = {d: g for d, g in gps.items() if g.rate}
        if not known:
            out.append(Finding(f"Goodput: no deployment reached {target:.0%} SLO attainment at any "
                               "measured rate.", metric="goodput"))
        else:
            per = {d: max(1, int((chips or {}).get(d) or 1)) for d in known}
            ranked = sorted(known.items(), key=lambda kv: kv[1].rate / per[kv[0]], reverse=True)
            (w, gw) = ranked[0]
            listing = ", ".join(
                f"{d} {'≥ ' if g.lower_bound else ''}{format_value(g.rate)}"
                + (f" ({format_value(g.rate / per[d])} per chip on {per[d]})" if chips else "")
                for d, g in ranked)
            txt = (f"Goodput at {target:.0%} joint SLO attainment (req/s): {listing}. "
                   f"Best{' per chip' if chips else ''}: {w}")
            m = None
            if len(ranked) > 1:
                (r2, g2) = ranked[1]
                m = _margin(gw.rate / per[w], g2.rate / per[r2], lower_better=False)
                tie = gw.lower_bound and g2.lower_bound
                if tie:
                    txt += (f"; {r2} also met the target at every rate measured, so the sweep does "
                            "not separate them")
                elif m is not None:
                    txt += f", {m:.0f}% above {r2} ({'≥ ' if g2.lower_bound else ''}{format_value(g2.rate)} req/s)"
            missing = [d for d, g in gps.items() if not g.rate]
            if missing:
                txt += f"; {', '.join(missing)} missed {target:.0%} even at the lowest rate"
            out.append(Finding(txt + ".", metric="goodput"))
    if len(deps) < 2:
        return out
    for lp, grp in s.groupby("_lp", sort=True):
        lpv = grp["load_point"].iloc[0]
        label = str((lp_labels or {}).get(lpv, lpv))
        parts = []
        for key, name in (("ttft_p90_s", "p90 TTFT"), ("tpot_p90_s", "p90 TPOT")):
            if key not in grp:
                continue
            vals = pd.to_numeric(grp[key], errors="coerce")
            if "n_failed" in grp and "n_requests" in grp:
                vals = vals.where(pd.to_numeric(grp["n_requests"], errors="coerce")
                                  > pd.to_numeric(grp["n_failed"], errors="coerce").fillna(0))
            d = pd.DataFrame({"dep": grp["deployment"].to_numpy(), "v": vals.to_numpy()}).dropna()
            if len(d) < 2:
                continue
            d = d.sort_values("v", kind="stable")
            (w, vw), (r2, v2) = d.iloc[0].tolist(), d.iloc[1].tolist()
            m = _margin(vw, v2, lower_better=True)
            how = f"{m:.0f}% below" if m is not None else "vs"
            parts.append(f"lowest {name} {w} ({format_ms(vw)} ms, {how} {r2} at {format_ms(v2)} ms)")
        if "slo_attainment" in grp:
            att = pd.to_numeric(grp["slo_attainment"], errors="coerce")
            d = pd.DataFrame({"dep": grp["deployment"].to_numpy(), "v": att.to_numpy()}).dropna()
            if len(d) >= 2:
                d = d.sort_values("v", ascending=False, kind="stable")
                (w, vw), (r2, v2) = d.iloc[0].tolist(), d.iloc[1].tolist()
                if vw != v2:
                    parts.append(f"highest SLO attainment {w} ({format_pct(vw)} vs {format_pct(v2)})")
                else:
                    parts.append(f"SLO attainment tied at {format_pct(vw)}")
        if parts:
            out.append(Finding(f"Load point {label}: " + "; ".join(parts) + ".", metric="p90"))
    return out
