"""Speculative decoding figure.

  spec_decoding       draft acceptance-rate histogram and mean accepted tokens per verify step
                      (from frames.spec_frame)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import order_load_points
from .style import colors_for, empty_figure, esc, f32, house_style


def spec_decoding(spec: pd.DataFrame, colors: dict | None = None,
                  title: str | None = None) -> go.Figure:
    """Histogram of per-request draft acceptance rate per deployment, and mean accepted tokens
    per verification step (sum accepted / sum verify steps) per deployment and load point."""
    if spec is None or spec.empty:
        return empty_figure(title, "no data (no speculative decoding counters)")
    deps = list(dict.fromkeys(spec["deployment"]))
    colors = colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["acceptance rate per request (accepted / proposed)",
                                        "mean accepted tokens per verify step"])
    for dep in deps:
        d = spec[spec["deployment"] == dep]
        fig.add_trace(go.Histogram(
            x=f32(d["acceptance"] * 100), name=esc(dep), legendgroup=esc(dep),
            xbins=dict(start=0, end=100.001, size=5), histnorm="percent",
            marker=dict(color=colors[dep], line=dict(color="#ffffff", width=0.5)), opacity=0.7,
            hovertemplate=f"{esc(dep)}<br>acceptance %{{x}}%<br>%{{y:.1f}}% of requests"
                          "<extra></extra>"), row=1, col=1)
    lps = order_load_points(spec["load_point"])
    for dep in deps:
        xs, ys, cd = [], [], []
        for lp in lps:
            d = spec[(spec["deployment"] == dep) & (spec["load_point"] == lp)]
            if d.empty:
                continue
            steps = d["verify_steps"].sum() if d["verify_steps"].notna().all() else float("nan")
            mal = float(d["accepted"].sum() / steps) if steps and steps == steps else float("nan")
            rate = float(d["accepted"].sum() / d["proposed"].sum())
            xs.append(esc(str(lp)))
            ys.append(mal)
            cd.append([rate * 100, len(d)])
        if not xs:
            continue
        fig.add_trace(go.Bar(
            x=xs, y=f32(ys), name=esc(dep), legendgroup=esc(dep), showlegend=False,
            marker=dict(color=colors[dep]), customdata=cd,
            hovertemplate=f"{esc(dep)} · %{{x}}<br>mean accepted length %{{y:.3g}} tokens/step"
                          "<br>acceptance %{customdata[0]:.1f}% (%{customdata[1]} requests)"
                          "<extra></extra>"), row=1, col=2)
    fig.update_layout(barmode="group", bargap=0.15)
    fig.update_xaxes(title_text="acceptance rate (%)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="% of requests", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="tokens accepted per verify step", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="load point", row=1, col=2)
    return house_style(fig, title, height=420, top=100)
