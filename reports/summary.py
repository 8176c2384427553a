"""Summary table and verdict: summary DataFrame (one row per deployment x load point) -> text.

  format_ms / format_value   number formatting with sensible precision (ms for latencies)
  summary_table(summary)     SummaryTable: header + formatted rows, best value per load point flagged
  goodput(rates, att)        workloads.metrics.goodput, flagged when it is a lower bound (all passed)
  (the verdict itself is reports/verdict.py: intervals from workloads.stats)
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
    # time to first answer token: only in runs where some request reasoned or called tools
    ("ttfat_p50_s", "TTFAT p50 (ms)", format_ms, "lower"),
    ("ttfat_p90_s", "TTFAT p90 (ms)", format_ms, "lower"),
    ("tpot_p50_s", "TPOT p50 (ms)", format_ms, "lower"),
    ("tpot_p90_s", "TPOT p90 (ms)", format_ms, "lower"),
    ("itl_p50_s", "ITL p50 (ms)", format_ms, "lower"),
    ("e2e_p90_s", "E2E p90 (ms)", format_ms, "lower"),
    ("slo_attainment", "SLO attained", format_pct, "higher"),
    ("j_per_output_token", "J / output token", format_value, None),
    ("usd_per_m_output_tokens", "$ / M output tokens", format_value, None),
    ("usd_per_slo_request", "$ / request in SLO", format_value, None),
]
# shown only where some row has a value (a rate sweep; energy measured; a price given)
OPTIONAL_COLUMNS = {"rate_rps", "j_per_output_token", "usd_per_m_output_tokens",
                    "usd_per_slo_request"}


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
            (c[0] not in OPTIONAL_COLUMNS or pd.to_numeric(s[c[0]], errors="coerce").notna().any())]
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
    metric: str = ""     # goodput, load_point, sample_size, omission; "" for a remark
    winners: tuple = ()  # (figure, deployment) pairs named as significantly better
