"""House style and helpers shared by the report's figure modules (no figure of its own).

Colours are consistent per deployment (`deployment_colors`, `colors_for`); `house_style` is the
layout every figure shares; `esc` HTML-escapes user strings (deployment names, load-point labels,
request ids) before they reach plotly, whose text renderer understands a subset of HTML;
`empty_figure` is what a figure returns when there is nothing to draw; `add_lp_menu` is the
load-point dropdown; `cdf_points`, `f32`, `finite`, `lp_list`, `lp_label`, `as_text` and
`sorted_summary` shape data for plotting.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..data import order_load_points


PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac"]
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CDF_POINTS = 400


def esc(s: Any) -> str:
    """Escape a user string for plotly's pseudo-HTML text (names, labels, hover)."""
    return html.escape(str(s), quote=False)


def deployment_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per deployment, in order (the same deployment gets the same colour in every figure)."""
    return {str(n): PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def colors_for(names: Sequence[str], colors: dict | None) -> dict[str, str]:
    """`colors` completed with a palette colour for every name it lacks."""
    base = dict(colors or {})
    for n in names:
        if n not in base:
            base[n] = PALETTE[len(base) % len(PALETTE)]
    return base


def house_style(fig: go.Figure, title: str | None = None, height: int = 420,
                top: int | None = None) -> go.Figure:
    """House style. The legend sits at the top of the figure (container coordinates), above any
    subplot titles; `top` is the top margin in px that leaves room for it."""
    fig.update_layout(
        template="plotly_white", height=height,
        font=dict(family=FONT, size=12, color="#1f2933"),
        margin=dict(l=60, r=30, t=top or (90 if title else 70), b=50),
        legend=dict(orientation="h", yref="container", y=0.995 if not title else 0.93,
                    yanchor="top", xanchor="left", x=0),
        hoverlabel=dict(font_family=FONT),
    )
    if title:
        fig.update_layout(title=dict(text=esc(title), x=0, xanchor="left", font_size=15))
    return fig


def empty_figure(title: str | None = None, message: str = "no data") -> go.Figure:
    """A figure with a centred annotation (used whenever there is nothing to draw)."""
    fig = go.Figure()
    # one invisible, data-carrying trace keeps the figure well-formed for viewers
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", marker=dict(opacity=0),
                             hoverinfo="skip", showlegend=False))
    fig.add_annotation(text=esc(message), x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=16, color="#7b8794"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return house_style(fig, title, height=260)


def f32(values) -> np.ndarray:
    """Compact array for embedding (plotly serialises numpy arrays as typed base64)."""
    return np.asarray(values, dtype=np.float32)


def finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def cdf_points(values: np.ndarray, n: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF, reduced to at most ~n points by quantiles."""
    v = np.sort(finite(values))
    if not len(v):
        return v, v
    if len(v) <= n:
        return v, np.arange(1, len(v) + 1) / len(v)
    p = np.linspace(0.0, 1.0, n)
    return np.quantile(v, p), np.clip(p, 1.0 / len(v), 1.0)


def lp_list(records: pd.DataFrame, load_points: Sequence | None) -> list:
    if load_points is not None:
        return list(load_points)
    if records is None or records.empty or "load_point" not in records:
        return []
    return order_load_points(records["load_point"])


def lp_label(lp: Any, labels: dict | None) -> str:
    return str((labels or {}).get(lp, lp))


def add_lp_menu(fig: go.Figure, trace_lps: list, lps: list, labels: dict | None,
                active: int, relayouts: list[dict] | None = None) -> None:
    """Dropdown switching which load point's traces are visible (None = always visible).

    Legend: within each load point the first trace of each legend entry (legendgroup, else
    name) shows it, so whichever load point is selected has a complete legend, once."""
    shown: set = set()
    for tr, lp in zip(fig.data, trace_lps):
        tr.visible = True if lp is None or lp == lps[active] else False
        key = (repr(lp), tr.legendgroup or tr.name)
        tr.showlegend = key not in shown
        shown.add(key)
    if len(lps) <= 1:
        if relayouts:
            fig.update_layout(relayouts[0])
        return
    buttons = []
    for i, lp in enumerate(lps):
        vis = [True if t is None or t == lp else False for t in trace_lps]
        args: list = [{"visible": vis}]
        if relayouts:
            args.append(relayouts[i])
        buttons.append(dict(label=esc(f"load point {lp_label(lp, labels)}"),
                            method="update" if relayouts else "restyle", args=args))
    fig.update_layout(updatemenus=[dict(
        buttons=buttons, active=active, direction="down", showactive=True,
        x=1.0, xanchor="right", y=1.0, yanchor="bottom", pad=dict(b=24), bgcolor="#ffffff",
        bordercolor="#cbd2d9", font=dict(size=11))])
    if relayouts:
        fig.update_layout(relayouts[active])


def as_text(v: Any) -> str:
    """A string cell as text; None/NaN/pd.NA -> ''."""
    try:
        if v is None or pd.isna(v):
            return ""
    except (TypeError, ValueError):
        pass
    return str(v)


def sorted_summary(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary.copy()
    if "rate_rps" in s:
        s["_rate"] = pd.to_numeric(s["rate_rps"], errors="coerce")
    else:
        s["_rate"] = np.nan
    order = {lp: i for i, lp in enumerate(order_load_points(s["load_point"]))}
    s["_lp_order"] = s["load_point"].map(lambda v: order.get(v, 0))
    return s.sort_values(["_lp_order"]).reset_index(drop=True)
