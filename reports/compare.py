"""Differences between runs: deltas of the headline metrics with 95% confidence intervals.

    compare_deltas(runs, groups=None) -> DataFrame       # one row per (run group, deployment,
                                                         # load point, metric) vs the baseline
    group_labels(runs, groups=None), run_names(runs)     # repeat groups; unique run names
    deltas_table(deltas) -> summary.Table                # the same, formatted for the report

Runs are grouped by label (`groups`, default: each run's name); runs sharing a label are repeats
of one configuration. The first group is the baseline; every other group is compared with it on
each (deployment, load point) that both measured (matched by name / label).

Confidence interval of a delta (95%): `workloads.comparisons.compare_groups`, the one
implementation the verdict and the gates use too. Each run contributes its measured requests
(steady state, per repeat) in send order; with >= 3 runs or repeats on each side, Welch's interval
over the per-run statistics ("repeats-welch"); otherwise the block bootstrap of the per-request
series, which respects the correlation of queued requests ("block-bootstrap"; ITL per token);
attainment by Newcombe's interval on effective sample sizes ("newcombe-neff"). The headline
figures of one deployment x load point form one 95% family (Bonferroni: each interval at
1 - 0.05/7), so a run compared with an identical one shows a significant change on any of them
at most 5% of the time.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from infer_bench.workloads.comparisons import BY_KEY, compare_groups, measured_groups
from infer_bench.workloads.results import ramp_fraction

from .data import RunData, order_load_points
from .summary import Cell, Table, format_ms, format_pct, format_value

# key, label, unit, better ("lower"/"higher"), per-request sample kind, percentile
HEADLINE: list[tuple[str, str, str, str, str | None, float | None]] = [
    ("ttft_p50_s", "TTFT p50", "ms", "lower", "ttft", 50),
    ("ttft_p90_s", "TTFT p90", "ms", "lower", "ttft", 90),
    ("tpot_p50_s", "TPOT p50", "ms", "lower", "tpot", 50),
    ("tpot_p90_s", "TPOT p90", "ms", "lower", "tpot", 90),
    ("itl_p99_s", "ITL p99", "ms", "lower", "itl", 99),
    ("request_throughput_rps", "Throughput", "req/s", "higher", None, None),
    ("slo_attainment", "SLO attained", "%", "higher", "met", None),
]
# The headline figures of one deployment x load point are one family at 95% (Bonferroni), as in
# the verdict: comparing a run with an identical one flags a change on any of them <= 5% of the time.
EACH = 1.0 - 0.05 / len(HEADLINE)
DELTA_COLUMNS = ["baseline", "group", "deployment", "load_point", "metric", "baseline_value",
                 "value", "delta", "delta_rel", "ci_low", "ci_high", "ci_method",
                 "n_runs_baseline", "n_runs", "significant", "better"]
def _groups(runs: Sequence[RunData], dep: str, lp: Any) -> list:
    """Measured requests of one deployment x load point in every run of a group (one entry per
    run and repeat), steady state as each run's spec says."""
    out = []
    for r in runs:
        if not r.records.empty:
            out += [grp for grp in measured_groups(r.records, dep, lp, ramp_fraction(r.spec))
                    if grp[0]]
    return out


def _value(run: RunData, dep: str, lp: Any, key: str) -> float:
    s = run.summary
    if s.empty or key not in s:
        return float("nan")
    row = s[(s["deployment"] == dep) & (s["load_point"].astype(str) == str(lp))]
    if row.empty:
        return float("nan")
    v = pd.to_numeric(row[key], errors="coerce").iloc[0]
    return float(v) if pd.notna(v) else float("nan")


def group_labels(runs: Sequence[RunData], groups: Sequence[Any] | None = None) -> list[str]:
    """One repeat-group label per run: `groups` as text, default each run's name (so repeats of
    one named spec group together). ValueError when the count does not match."""
    labels = [str(g) for g in groups] if groups is not None else [r.name for r in runs]
    if len(labels) != len(runs):
        raise ValueError("groups must give one label per results dir")
    return labels


def run_names(runs: Sequence[RunData]) -> list[str]:
    """Each run's display name, made unique ("name (2)") when several runs share one."""
    names: list[str] = []
    for r in runs:
        n = r.name
        while n in names:
            n = f"{n} ({len(names) + 1})"
        names.append(n)
    return names


def compare_deltas(runs: Sequence[RunData], groups: Sequence[str] | None = None,
                   n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Deltas of the headline metrics of every group against the first group (see module doc).
    `delta` = value - baseline_value (values: mean over the group's runs); `delta_rel` =
    delta / baseline_value; `significant`: the interval excludes 0; `better`: the change is an
    improvement (lower latency, higher throughput / attainment), None when not significant."""
    groups = group_labels(runs, groups)
    order = list(dict.fromkeys(groups))
    rows: list[dict] = []
    if len(order) < 2:
        return pd.DataFrame(columns=DELTA_COLUMNS)
    members = {g: [r for r, gg in zip(runs, groups) if gg == g] for g in order}

    def keys(rs: list[RunData]) -> list[tuple[str, Any]]:
        out: list = []
        for r in rs:
            s = r.summary
            if s.empty:
                continue
            for d, lp in zip(s["deployment"], s["load_point"]):
                if (d, str(lp)) not in [(x, str(y)) for x, y in out]:
                    out.append((d, lp))
        return out

    base = order[0]
    base_keys = keys(members[base])
    for g in order[1:]:
        for dep, lp in keys(members[g]):
            if (dep, str(lp)) not in [(d, str(l)) for d, l in base_keys]:
                continue
            ga = _groups(members[base], dep, lp)
            gb = _groups(members[g], dep, lp)
            for key, _, _, better, _, _ in HEADLINE:
                va = [_value(r, dep, lp, key) for r in members[base]]
                vb = [_value(r, dep, lp, key) for r in members[g]]
                va = [v for v in va if math.isfinite(v)]
                vb = [v for v in vb if math.isfinite(v)]
                if not va or not vb:
                    continue
                a_mean, b_mean = float(np.mean(va)), float(np.mean(vb))
                delta = b_mean - a_mean
                lo = hi = float("nan")
                method = "none"
                if key in BY_KEY and ga and gb:
                    c = compare_groups(ga, gb, BY_KEY[key], name_a=base, name_b=g,
                                       slo=members[base][0].slo or None, seed=seed,
                                       confidence=EACH)
                    lo, hi, method = c.diff_lo, c.diff_hi, c.method
                sig = bool(math.isfinite(lo) and (lo > 0 or hi < 0))
                improved = None
                if sig:
                    improved = (delta < 0) if better == "lower" else (delta > 0)
                rows.append(dict(
                    baseline=base, group=g, deployment=dep, load_point=lp, metric=key,
                    baseline_value=a_mean, value=b_mean, delta=delta,
                    delta_rel=delta / a_mean if a_mean else float("nan"),
                    ci_low=lo, ci_high=hi, ci_method=method, n_runs_baseline=len(va),
                    n_runs=len(vb), significant=sig, better=improved))
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def _fmt_delta(key: str, unit: str, v: float) -> str:
    if not math.isfinite(v):
        return "–"
    if unit == "ms":
        return ("+" if v >= 0 else "−") + format_ms(abs(v))
    if unit == "%":
        return f"{v * 100:+.1f} pp".replace("-", "−")
    return ("+" if v >= 0 else "−") + format_value(abs(v))


def deltas_table(deltas: pd.DataFrame, lp_labels: dict | None = None) -> Table:
    """One row per compared group x load point x deployment; one column per headline metric:
    baseline → value, the delta (relative for latency and throughput) and its 95% CI."""
    metrics = [h for h in HEADLINE if h[0] in set(deltas.get("metric", []))]
    t = Table(headers=["Load point", "Deployment"] + [f"{h[1]} ({h[2] if h[2] != '%' else 'pp'})"
                                                      for h in metrics],
              caption="Each cell: the difference (this run − baseline, relative in brackets), "
                      "then baseline → this run (means over repeats) and the 95% confidence "
                      "interval of the difference. Green / red: a significant improvement / "
                      "regression (the interval excludes 0).")
    if deltas is None or deltas.empty:
        return t
    lps = order_load_points(deltas["load_point"])
    multi = deltas["group"].nunique() > 1
    if multi:
        t.headers[0] = "Run · load point"
    prev = object()
    for g in dict.fromkeys(deltas["group"]):
        for lp in lps:
            d_lp = deltas[(deltas["group"] == g) & (deltas["load_point"] == lp)]
            for dep in dict.fromkeys(d_lp["deployment"]):
                d = d_lp[d_lp["deployment"] == dep]
                if (g, lp) != prev:
                    t.group_starts.append(len(t.rows))
                    prev = (g, lp)
                lp_text = str((lp_labels or {}).get(lp, lp))
                row = [Cell(f"{g} · {lp_text}" if multi else lp_text, numeric=False),
                       Cell(f"{dep}", numeric=False)]
                for key, _, unit, _, _, _ in metrics:
                    r = d[d["metric"] == key]
                    if r.empty:
                        row.append(Cell("–", cls="muted"))
                        continue
                    r = r.iloc[0]
                    fmt = {"ms": format_ms, "%": format_pct}.get(unit, format_value)
                    rel = r["delta_rel"]
                    text = _fmt_delta(key, unit, r["delta"])
                    if unit != "%" and math.isfinite(rel):
                        text += f" ({rel * 100:+.0f}%)".replace("-", "−")
                    sub = f"{fmt(r['baseline_value'])} → {fmt(r['value'])}"
                    if math.isfinite(r["ci_low"]):
                        sub2 = (f"CI [{_fmt_delta(key, unit, r['ci_low'])}, "
                                f"{_fmt_delta(key, unit, r['ci_high'])}]")
                    else:
                        sub2 = "no CI (one value per run)"
                    cls = "" if r["better"] is None or r["better"] != r["better"] else (
                        "good" if r["better"] else "bad")
                    row.append(Cell(text, sub=sub, sub2=sub2, cls=cls))
                t.rows.append(row)
    return t


def regressions(deltas: pd.DataFrame) -> pd.DataFrame:
    """The rows of `compare_deltas` that are significant changes for the worse (what
    `infer-bench compare --fail-if-worse` fails on); insignificant changes never count."""
    if deltas is None or deltas.empty:
        return pd.DataFrame(columns=DELTA_COLUMNS)
    return deltas[deltas["significant"].astype(bool) & (deltas["better"] == False)]  # noqa: E712
