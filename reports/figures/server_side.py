"""Where the time goes, server-side aggregates (from /metrics): the engines' own phase figures.

  server_phase_breakdown   stacked mean queue / prefill / KV transfer / decode per request,
                           per load point x deployment, from the deltas of each target's own
                           Prometheus histograms (workloads/server_metrics); a diamond marks
                           the server's own mean TTFT where it exports one
  server_metrics_table     every figure per deployment x load point (means over repeats)

These are aggregates over a load point (histogram sums / counts, bucket-estimated p90), not
per-request values: they sit beside the client-side view, and work for external targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..data import order_load_points
from ..summary import Cell, Table, format_ms, format_pct, format_value
from .style import empty_figure, esc, f32, house_style, lp_label

PHASES = [("queue_time", "queue", "#bab0ac"), ("prefill_time", "prefill", "#f28e2b"),
          ("kv_transfer_time", "KV transfer", "#b07aa1"), ("decode_time", "decode", "#59a14f")]


def _means(frame: pd.DataFrame) -> pd.DataFrame:
    """figure values averaged over repeats: (deployment, load_point) x figure."""
    return (frame.groupby(["deployment", "load_point", "figure"], sort=False)["value"].mean()
            .unstack("figure"))


def _order(frame: pd.DataFrame, deployments: Sequence[str] | None) -> tuple[list, list]:
    deps = [d for d in (deployments or []) if d in set(frame["deployment"])]
    deps += [d for d in dict.fromkeys(frame["deployment"]) if d not in deps]
    return deps, order_load_points(frame["load_point"])


def server_phase_breakdown(frame: pd.DataFrame | None, lp_labels: dict | None = None,
                           deployments: Sequence[str] | None = None,
                           title: str | None = None) -> go.Figure:
    if frame is None or frame.empty:
        return empty_figure(title)
    m = _means(frame)
    cols = [f"{p}_mean" for p, _, _ in PHASES if f"{p}_mean" in m]
    if not cols:
        return empty_figure(title, "no phase timing in the servers' metrics")
    deps, lps = _order(frame, deployments)
    xs_lp, xs_dep, rows, ttft = [], [], [], []
    for lp in lps:
        for dep in deps:
            if (dep, lp) not in m.index:
                continue
            r = m.loc[(dep, lp)]
            xs_lp.append(esc(lp_label(lp, lp_labels)))
            xs_dep.append(esc(dep))
            rows.append([r.get(f"{p}_mean", np.nan) for p, _, _ in PHASES])
            ttft.append(r.get("ttft_mean", np.nan))
    if not rows:
        return empty_figure(title)
    arr = np.asarray(rows, dtype=float) * 1e3
    x = [xs_lp, xs_dep] if len(set(xs_lp)) > 1 else xs_dep
    fig = go.Figure()
    for j, (p, name, color) in enumerate(PHASES):
        y = arr[:, j]
        if not np.any(np.isfinite(y)):
            continue
        fig.add_trace(go.Bar(x=x, y=f32(np.nan_to_num(y)), name=name,
                             marker=dict(color=color),
                             hovertemplate=f"{name}: %{{y:.4g}} ms per request (mean)"
                                           "<extra></extra>"))
    t = np.asarray(ttft, dtype=float) * 1e3
    if np.any(np.isfinite(t)):
        fig.add_trace(go.Scatter(x=x, y=f32(t), mode="markers", name="server TTFT (mean)",
                                 marker=dict(symbol="diamond", size=10, color="#4e79a7"),
                                 hovertemplate="server-side TTFT: %{y:.4g} ms<extra></extra>"))
    fig.update_layout(barmode="stack", bargap=0.35)
    fig.update_yaxes(title_text="mean per request (ms), server-side", rangemode="tozero")
    fig.update_xaxes(tickfont=dict(size=11), tickangle=0, automargin=True)
    return house_style(fig, title, height=440, top=90)


TABLE_COLUMNS = [
    ("queue_time_mean", "Queue mean (ms)", format_ms), ("queue_time_p90", "Queue p90 (ms)", format_ms),
    ("prefill_time_mean", "Prefill mean (ms)", format_ms),
    ("prefill_time_p90", "Prefill p90 (ms)", format_ms),
    ("kv_transfer_time_mean", "KV transfer mean (ms)", format_ms),
    ("decode_time_mean", "Decode mean (ms)", format_ms),
    ("decode_time_p90", "Decode p90 (ms)", format_ms),
    ("ttft_mean", "Server TTFT mean (ms)", format_ms),
    ("kv_cache_usage_max", "KV usage max", format_pct),
    ("kv_cache_usage_after", "KV usage after", format_pct),
    ("prefix_cache_hit_rate", "Prefix hit rate", format_pct),
    ("preemptions", "Preemptions", lambda v: format_value(v, 9)),
    ("running_max", "Running max", lambda v: format_value(v, 9)),
    ("waiting_max", "Waiting max", lambda v: format_value(v, 9)),
]


def server_metrics_table(frame: pd.DataFrame | None, lp_labels: dict | None = None,
                         deployments: Sequence[str] | None = None) -> Table | None:
    if frame is None or frame.empty:
        return None
    m = _means(frame)
    cols = [c for c in TABLE_COLUMNS if c[0] in m]
    if not cols:
        return None
    engines = frame.groupby("deployment", sort=False)["engine"].last()
    deps, lps = _order(frame, deployments)
    notes = sorted({n for n in frame["note"] if n})
    table = Table(headers=["Load point", "Deployment", "Engine"] + [h for _, h, _ in cols],
                  caption="Server-side aggregates from each target's own /metrics (deltas "
                          "over each load point, means over repeats; p90 estimated from "
                          "histogram buckets). Notes: " + ("; ".join(notes) if notes else "none")
                          + ".", text_cols=3)
    for lp in lps:
        table.group_starts.append(len(table.rows))
        for dep in deps:
            if (dep, lp) not in m.index:
                continue
            r = m.loc[(dep, lp)]
            row = [Cell(lp_label(lp, lp_labels), numeric=False), Cell(dep, numeric=False),
                   Cell(str(engines.get(dep, "")), numeric=False)]
            for key, _, fmt in cols:
                v = r.get(key)
                row.append(Cell(fmt(v) if v is not None and v == v else "–", cls=""
                                if v is not None and v == v else "muted"))
            table.rows.append(row)
    return table
