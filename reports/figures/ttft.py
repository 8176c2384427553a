"""Where the time to first token goes: the TTFT breakdown figure.

  ttft_breakdown      stacked mean (or slowest-10%) TTFT: queue / prefill / KV transfer / decode
                      admission / rest; 'unattributed' where the server reports no phases
                      (the split itself: frames.ttft_parts)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..frames import TTFT_PARTS, ttft_parts
from .style import empty_figure, esc, f32, house_style, lp_label, lp_list


PART_COLORS = {"queue": "#bab0ac", "prefill": "#f28e2b", "transfer": "#b07aa1",
               "admission": "#76b7b2", "rest": "#9fb3c8", "unattributed": "#d9dde3"}


def ttft_breakdown(records: pd.DataFrame, load_points: Sequence | None = None,
                   lp_labels: dict | None = None, deployments: Sequence[str] | None = None,
                   title: str | None = None) -> go.Figure:
    """Stacked bars per load point x deployment: mean TTFT split into server queue, prefill, KV
    transfer, decode admission and the rest (network + client); a menu switches to the same
    split averaged over the slowest 10% of requests (TTFT >= p90), which does add up to a tail
    TTFT. Deployments whose server reports no phases show one 'unattributed' bar."""
    parts = ttft_parts(records)
    if parts.empty:
        return empty_figure(title)
    lps = lp_list(records, load_points)
    deps = [d for d in (deployments or list(dict.fromkeys(parts["deployment"])))
            if d in set(parts["deployment"])]
    xs_lp, xs_dep, vals = [], [], {"mean": [], "tail": []}
    counts = {"mean": [], "tail": []}
    for lp in lps:
        for dep in deps:
            g = parts[(parts["load_point"] == lp) & (parts["deployment"] == dep)]
            if g.empty:
                continue
            xs_lp.append(esc(lp_label(lp, lp_labels)))
            xs_dep.append(esc(dep))
            p90 = float(np.percentile(g["ttft_s"], 90))
            tail = g[g["ttft_s"] >= p90]
            vals["mean"].append(g[[p for _, p, _ in TTFT_PARTS]].mean().to_numpy() * 1e3)
            vals["tail"].append(tail[[p for _, p, _ in TTFT_PARTS]].mean().to_numpy() * 1e3)
            counts["mean"].append((len(g), float(g["ttft_s"].mean() * 1e3)))
            counts["tail"].append((len(tail), float(tail["ttft_s"].mean() * 1e3)))
    if not xs_lp:
        return empty_figure(title)
    fig = go.Figure()
    x = [xs_lp, xs_dep] if len(set(xs_lp)) > 1 else xs_dep
    views = [("mean", "mean of all requests"), ("tail", "mean of the slowest 10% (TTFT ≥ p90)")]
    trace_view = []
    for vi, (view, vlabel) in enumerate(views):
        arr = np.asarray(vals[view])
        for j, (_, p, name) in enumerate(TTFT_PARTS):
            y = arr[:, j]
            if not np.any(y > 0):
                continue
            cd = [[xd, n, tot] for xd, (n, tot) in zip(xs_dep, counts[view])]
            fig.add_trace(go.Bar(
                x=x, y=f32(y), name=name, legendgroup=p, marker=dict(color=PART_COLORS[p]),
                visible=(vi == 0), showlegend=True, customdata=cd,
                hovertemplate=f"%{{customdata[0]}}<br>{name}: %{{y:.4g}} ms<br>TTFT {vlabel}: "
                              "%{customdata[2]:.4g} ms (%{customdata[1]} requests)<extra></extra>"))
            trace_view.append(vi)
    if len(views) > 1:
        buttons = [dict(label=esc(vlabel), method="restyle",
                        args=[{"visible": [tv == vi for tv in trace_view]}])
                   for vi, (_, vlabel) in enumerate(views)]
        fig.update_layout(updatemenus=[dict(
            buttons=buttons, active=0, direction="down", showactive=True, x=1.0, xanchor="right",
            y=1.0, yanchor="bottom", pad=dict(b=24), bgcolor="#ffffff", bordercolor="#cbd2d9",
            font=dict(size=11))])
    fig.update_layout(barmode="stack", bargap=0.35)
    fig.update_yaxes(title_text="time to first token (ms)", rangemode="tozero")
    fig.update_xaxes(tickfont=dict(size=11), tickangle=0, automargin=True)
    return house_style(fig, title, height=440, top=110)
