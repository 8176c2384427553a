"""Latency figures: distributions and latency against throughput.

  latency_cdfs        TTFT, per-token ITL, TPOT, E2E CDFs overlaid by deployment (per load point)
  throughput_latency  p50/p90 TTFT and TPOT against achieved request throughput
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from infer_bench.workloads import metrics

from ..frames import successful
from .style import (add_lp_menu, cdf_points, colors_for, empty_figure, esc, f32, house_style,
                    lp_label, lp_list, sorted_summary)


def latency_cdfs(records: pd.DataFrame, colors: dict | None = None,
                 load_points: Sequence | None = None, lp_labels: dict | None = None,
                 slo: dict | None = None, title: str | None = None) -> go.Figure:
    """CDFs of TTFT, per-token ITL, TPOT and E2E, one line per deployment, per load point."""
    if records is None or records.empty:
        return empty_figure(title)
    lps = lp_list(records, load_points)
    deps = list(dict.fromkeys(records["deployment"]))
    colors = colors_for(deps, colors)
    panels = [("TTFT", "ttft_s", 1e3, "ms"), ("ITL (per token)", "itl", 1e3, "ms"),
              ("TPOT", "tpot_s", 1e3, "ms"), ("E2E latency", "e2e_s", 1.0, "s")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.09, vertical_spacing=0.16)
    ok = successful(records)
    trace_lps: list = []
    for lp in lps:
        sub = ok[ok["load_point"] == lp]
        for dep in deps:
            d = sub[sub["deployment"] == dep]
            for i, (name, col, scale, unit) in enumerate(panels):
                if col == "itl":
                    parts = [metrics.itl_per_token(t, k)
                             for t, k in zip(d["chunk_times_s"], d["chunk_tokens"])]
                    vals = np.concatenate(parts) if parts else np.empty(0)
                else:
                    vals = d[col].to_numpy(dtype=float)
                x, y = cdf_points(vals * scale)
                if not len(x):
                    continue
                fig.add_trace(go.Scatter(
                    x=f32(x), y=f32(y * 100), mode="lines", name=esc(dep),
                    legendgroup=esc(dep),
                    line=dict(color=colors[dep], width=2, shape="hv"),
                    hovertemplate=f"{esc(dep)}<br>{name}: %{{x:.4g}} {unit}"
                                  "<br>%{y:.1f}% of requests<extra></extra>"
                                  if col != "itl" else
                                  f"{esc(dep)}<br>ITL: %{{x:.4g}} {unit}<br>%{{y:.1f}}% of tokens"
                                  "<extra></extra>",
                ), row=i // 2 + 1, col=i % 2 + 1)
                trace_lps.append(lp)
    if not fig.data:
        return empty_figure(title)
    slo = slo or {}
    for key, (r, c) in (("ttft_s", (1, 1)), ("tpot_s", (2, 1))):
        if isinstance(slo.get(key), (int, float)):
            fig.add_vline(x=float(slo[key]) * 1e3, line=dict(color="#9aa5b1", dash="dash", width=1),
                          annotation_text="SLO", annotation_position="top right",
                          annotation_font_color="#7b8794", row=r, col=c)
    for i, (name, col, scale, unit) in enumerate(panels):
        xt = f"per-token ITL ({unit})" if col == "itl" else f"{name} ({unit})"
        fig.update_xaxes(title_text=xt, row=i // 2 + 1, col=i % 2 + 1, rangemode="tozero")
        fig.update_yaxes(title_text="% ≤ x", range=[0, 101], row=i // 2 + 1, col=i % 2 + 1)
    add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return house_style(fig, title, height=680, top=110)


def throughput_latency(summary: pd.DataFrame, colors: dict | None = None,
                       lp_labels: dict | None = None, slo: dict | None = None,
                       title: str | None = None) -> go.Figure:
    """p50 (solid) and p90 (dashed) TTFT and TPOT against achieved request throughput."""
    need = {"deployment", "load_point", "request_throughput_rps"}
    if summary is None or summary.empty or not need <= set(summary.columns):
        return empty_figure(title)
    s = sorted_summary(summary)
    deps = list(dict.fromkeys(s["deployment"]))
    colors = colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT vs throughput", "TPOT vs throughput"],
                        horizontal_spacing=0.1)
    for c, metric in enumerate(("ttft", "tpot"), start=1):
        for dep in deps:
            d = s[s["deployment"] == dep]
            x = pd.to_numeric(d["request_throughput_rps"], errors="coerce").to_numpy(dtype=float)
            labels = [esc(lp_label(lp, lp_labels)) for lp in d["load_point"]]
            for q, dash in (("p50", "solid"), ("p90", "dash")):
                col = f"{metric}_{q}_s"
                if col not in d:
                    continue
                y = pd.to_numeric(d[col], errors="coerce").to_numpy(dtype=float) * 1e3
                if not np.isfinite(y).any() or not np.isfinite(x).any():
                    continue
                fig.add_trace(go.Scatter(
                    x=x, y=y, mode="lines+markers", name=f"{esc(dep)} {q}",
                    legendgroup=esc(dep), showlegend=(c == 1),
                    line=dict(color=colors[dep], dash=dash, width=2),
                    marker=dict(size=7, symbol="circle" if q == "p50" else "diamond"),
                    customdata=labels,
                    hovertemplate=f"{esc(dep)} · load point %{{customdata}}<br>"
                                  f"{metric.upper()} {q}: %{{y:.4g}} ms<br>"
                                  "throughput: %{x:.3g} req/s<extra></extra>",
                ), row=1, col=c)
        fig.update_xaxes(title_text="request throughput (req/s)", row=1, col=c, rangemode="tozero")
        fig.update_yaxes(title_text=f"{metric.upper()} (ms)", row=1, col=c, rangemode="tozero")
        val = (slo or {}).get(f"{metric}_s")
        if isinstance(val, (int, float)):
            fig.add_hline(y=float(val) * 1e3, line=dict(color="#9aa5b1", dash="dot", width=1),
                          annotation_text="SLO", annotation_font_color="#7b8794", row=1, col=c)
    if not fig.data:
        return empty_figure(title)
    return house_style(fig, title, height=470, top=110)
