"""Telemetry figure: hardware and process metrics sampled during the run.

  telemetry_figure    one panel per metric, one line per (deployment, entity)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import PALETTE, as_text, colors_for, empty_figure, esc, f32, house_style


def telemetry_figure(telemetry: pd.DataFrame | None, colors: dict | None = None,
                     max_metrics: int = 8, max_points: int = 2000,
                     title: str | None = None) -> go.Figure:
    """One panel per telemetry metric (nvml, system, process, then prometheus; at most
    `max_metrics`), one line per (deployment, entity); per-pid process rows are dropped where a
    "total" row exists. Rows: deployment, t_s, source, metric, entity, value, unit."""
    need = {"t_s", "metric", "value"}
    if telemetry is None or telemetry.empty or not need <= set(telemetry.columns):
        return empty_figure(title)
    tel = telemetry.copy()
    tel["value"] = pd.to_numeric(tel["value"], errors="coerce")
    tel["t_s"] = pd.to_numeric(tel["t_s"], errors="coerce")
    tel = tel.dropna(subset=["value", "t_s"])
    if tel.empty:
        return empty_figure(title)
    for col in ("deployment", "source", "entity", "unit"):
        if col not in tel:
            tel[col] = ""
        tel[col] = tel[col].map(as_text)
    tel["metric"] = tel["metric"].map(as_text)
    totals = set(tel.loc[(tel["source"] == "process") & (tel["entity"] == "total"), "metric"])
    tel = tel[~((tel["source"] == "process") & tel["metric"].isin(totals) & (tel["entity"] != "total"))]
    prio = {"nvml": 0, "system": 1, "process": 2, "prometheus": 3}
    firsts = tel.drop_duplicates("metric")
    metrics = sorted(firsts["metric"], key=lambda m: (
        prio.get(firsts.loc[firsts["metric"] == m, "source"].iloc[0], 4), list(firsts["metric"]).index(m)))
    metrics = metrics[:max_metrics]
    units = {m: firsts.loc[firsts["metric"] == m, "unit"].iloc[0] for m in metrics}
    deps = list(dict.fromkeys(tel["deployment"]))
    colors = colors_for(deps, colors)
    ncols = 2 if len(metrics) > 1 else 1
    nrows = math.ceil(len(metrics) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols,
                        subplot_titles=[esc(f"{m} ({units[m]})" if units[m] else m) for m in metrics],
                        vertical_spacing=min(0.16, 0.6 / max(nrows, 1)))
    dashes = ["solid", "dot", "dash", "dashdot", "longdash"]
    seen = set()
    for i, m in enumerate(metrics):
        dm = tel[tel["metric"] == m]
        ents = list(dict.fromkeys(dm["entity"]))
        for (dep, ent), g in dm.groupby(["deployment", "entity"], sort=False):
            g = g.sort_values("t_s")
            if len(g) > max_points:
                g = g.iloc[np.linspace(0, len(g) - 1, max_points).astype(int)]
            label = "" if ent in ("total", "system") else (f"GPU {ent}" if g["source"].iloc[0] == "nvml" else ent)
            name = esc(f"{dep} {label}".strip()) or "value"
            fig.add_trace(go.Scatter(
                x=f32(g["t_s"]), y=f32(g["value"]), mode="lines", name=name, legendgroup=name,
                showlegend=name not in seen,
                line=dict(color=colors.get(dep, PALETTE[0]), dash=dashes[ents.index(ent) % 5], width=1.5),
                hovertemplate=f"{name}<br>t=%{{x:.2f}} s<br>%{{y:.4g}} {esc(units[m])}<extra></extra>",
            ), row=i // ncols + 1, col=i % ncols + 1)
            seen.add(name)
    for i in range(len(metrics)):
        if i + ncols >= len(metrics):  # nothing below this panel: label its x axis
            fig.update_xaxes(title_text="run time (s)", row=i // ncols + 1, col=i % ncols + 1)
    return house_style(fig, title, height=max(340, 250 * nrows + 80))
