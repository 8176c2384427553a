"""SLO attainment figure: joint attainment against the offered rate, goodput marked.

  slo_attainment      per deployment, with the goodput (summary.goodput) at the target
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..summary import goodput
from .style import colors_for, empty_figure, esc, house_style, lp_label, sorted_summary


def slo_attainment(summary: pd.DataFrame, colors: dict | None = None, target: float = 0.9,
                   lp_labels: dict | None = None, title: str | None = None) -> go.Figure:
    """Joint SLO attainment against offered rate per deployment; goodput marked."""
    if (summary is None or summary.empty or "slo_attainment" not in summary
            or pd.to_numeric(summary["slo_attainment"], errors="coerce").notna().sum() == 0):
        return empty_figure(title, "no data (no SLO attainment in the summary)")
    s = sorted_summary(summary)
    use_offered = s["_rate"].notna().any()
    xcol = "_rate" if use_offered else "request_throughput_rps"
    xtitle = "offered rate (req/s)" if use_offered else "achieved throughput (req/s)"
    deps = list(dict.fromkeys(s["deployment"]))
    colors = colors_for(deps, colors)
    fig = go.Figure()
    marks = []
    for dep in deps:
        d = s[s["deployment"] == dep]
        x = pd.to_numeric(d[xcol], errors="coerce").to_numpy(dtype=float)
        y = pd.to_numeric(d["slo_attainment"], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        if not keep.any():
            continue
        order = np.argsort(x[keep], kind="stable")
        xs, ys = x[keep][order], y[keep][order]
        labels = [esc(lp_label(lp, lp_labels)) for lp in d["load_point"].to_numpy()[keep][order]]
        fig.add_trace(go.Scatter(
            x=xs, y=ys * 100, mode="lines+markers", name=esc(dep),
            line=dict(color=colors[dep], width=2), marker=dict(size=8), customdata=labels,
            hovertemplate=f"{esc(dep)} · load point %{{customdata}}<br>rate %{{x:.3g}} req/s"
                          "<br>attainment %{y:.1f}%<extra></extra>"))
        g = goodput(xs, ys, target)
        if use_offered and g.rate:
            marks.append((dep, g))
    if not fig.data:
        return empty_figure(title, "no data (no rate or attainment values)")
    fig.add_hline(y=target * 100, line=dict(color="#9aa5b1", dash="dash", width=1),
                  annotation_text=f"target {target:.0%}", annotation_position="bottom left",
                  annotation_font_color="#7b8794")
    for i, (dep, g) in enumerate(marks):
        fig.add_trace(go.Scatter(
            x=[g.rate], y=[target * 100], mode="markers", name=f"goodput {esc(dep)}",
            legendgroup=esc(dep), showlegend=False,
            marker=dict(symbol="star", size=16, color=colors[dep], line=dict(color="#1f2933", width=1)),
            hovertemplate=f"goodput {esc(dep)}: {'≥ ' if g.lower_bound else ''}{g.rate:.3g} req/s"
                          "<extra></extra>"))
        fig.add_vline(x=g.rate, line=dict(color=colors[dep], dash="dot", width=1.5))
        fig.add_annotation(x=g.rate, y=1.0 - 0.07 * i, yref="paper", showarrow=False, xanchor="left",
                           text=f" goodput {esc(dep)}: {'≥ ' if g.lower_bound else ''}{g.rate:.3g} req/s",
                           font=dict(color=colors[dep], size=11), bgcolor="rgba(255,255,255,0.8)")
    fig.update_xaxes(title_text=xtitle, rangemode="tozero")
    fig.update_yaxes(title_text="joint SLO attainment (%)", range=[0, 103])
    return house_style(fig, title, height=420)
