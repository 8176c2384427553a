"""Predicted vs measured: the figure and table of the run's predictions.json.

  prediction_figure   predicted (y) against measured (x) p50/p90 TTFT and TPOT and attainment
  prediction_table    one row per deployment x load point: measured -> predicted, error

The predictions are computed after the run by `workloads/planning/predict.py` (a step-time model
fitted to each deployment's own engine steps, every load point re-simulated with the measured
requests) and read from the results dir by `data.load_run` (`RunData.predictions`).
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data import Predictions, as_float
from ..summary import Cell, Table, format_ms, format_pct
from .style import colors_for, empty_figure, esc, f32, house_style


LATENCY_METRICS = [("ttft_p50_s", "TTFT p50", "circle"), ("ttft_p90_s", "TTFT p90", "diamond"),
                   ("tpot_p50_s", "TPOT p50", "square"), ("tpot_p90_s", "TPOT p90", "triangle-up")]


def prediction_figure(pred: Predictions, colors: dict | None = None,
                      lp_labels: dict | None = None, title: str | None = None) -> go.Figure:
    """Predicted (y) against measured (x): p50/p90 TTFT and TPOT (ms, log axes) and joint SLO
    attainment (%), one marker per deployment x load point, with the y = x line."""
    if not pred.ok:
        return empty_figure(title, "no data (no prediction)")
    rows = pred.rows
    deps = list(dict.fromkeys(rows["deployment"].astype(str)))
    colors = colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["latency: predicted vs measured (ms)",
                                        "SLO attainment: predicted vs measured (%)"])
    lo, hi = math.inf, 0.0
    for dep in deps:
        d = rows[rows["deployment"].astype(str) == dep]
        labels = [esc(str((lp_labels or {}).get(lp, lp))) for lp in d["load_point"]]
        for m, name, sym in LATENCY_METRICS:
            x = np.array([as_float(v) for v in d.get(f"measured_{m}", [])]) * 1e3
            y = np.array([as_float(v) for v in d.get(f"predicted_{m}", [])]) * 1e3
            keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
            if not keep.any():
                continue
            lo = min(lo, x[keep].min(), y[keep].min())
            hi = max(hi, x[keep].max(), y[keep].max())
            err = (y[keep] - x[keep]) / x[keep] * 100
            fig.add_trace(go.Scatter(
                x=f32(x[keep]), y=f32(y[keep]), mode="markers", name=esc(f"{dep} · {name}"),
                legendgroup=esc(dep),
                marker=dict(color=colors[dep], symbol=sym, size=9, line=dict(color="#1f2933", width=0.5)),
                customdata=[[lb, e] for lb, e in zip(np.array(labels)[keep], err)],
                hovertemplate=f"{esc(dep)} · %{{customdata[0]}}<br>{name}: measured %{{x:.4g}} ms, "
                              "predicted %{y:.4g} ms<br>error %{customdata[1]:+.1f}%<extra></extra>"),
                row=1, col=1)
        x = np.array([as_float(v) for v in d.get("measured_slo_attainment", [])]) * 100
        y = np.array([as_float(v) for v in d.get("predicted_slo_attainment", [])]) * 100
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.any():
            fig.add_trace(go.Scatter(
                x=f32(x[keep]), y=f32(y[keep]), mode="markers", name=esc(f"{dep} · attainment"),
                legendgroup=esc(dep), showlegend=False,
                marker=dict(color=colors[dep], symbol="star", size=11, line=dict(color="#1f2933", width=0.5)),
                customdata=np.array(labels)[keep].tolist(),
                hovertemplate=f"{esc(dep)} · %{{customdata}}<br>attainment: measured %{{x:.1f}}%, "
                              "predicted %{y:.1f}%<extra></extra>"), row=1, col=2)
    if not fig.data:
        return empty_figure(title, "no data (no prediction)")
    if hi > 0 and math.isfinite(lo):
        a, b = lo / 1.3, hi * 1.3
        fig.add_trace(go.Scatter(x=[a, b], y=[a, b], mode="lines", name="y = x (perfect)",
                                 line=dict(color="#9aa5b1", dash="dash", width=1),
                                 hoverinfo="skip"), row=1, col=1)
        fig.update_xaxes(type="log", range=[math.log10(a), math.log10(b)], row=1, col=1)
        fig.update_yaxes(type="log", range=[math.log10(a), math.log10(b)], row=1, col=1)
    fig.add_trace(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="y = x", showlegend=False,
                             line=dict(color="#9aa5b1", dash="dash", width=1), hoverinfo="skip"),
                  row=1, col=2)
    fig.update_xaxes(title_text="measured (ms)", row=1, col=1)
    fig.update_yaxes(title_text="predicted (ms)", row=1, col=1)
    fig.update_xaxes(title_text="measured (%)", range=[-2, 102], row=1, col=2)
    fig.update_yaxes(title_text="predicted (%)", range=[-2, 102], row=1, col=2)
    return house_style(fig, title, height=500, top=130)


def prediction_table(pred: Predictions, lp_labels: dict | None = None) -> Table:
    """One row per deployment x load point: measured, predicted and the error of each metric."""
    t = Table(headers=["Load point", "Deployment"]
                      + [f"{n} (ms)" for _, n, _ in LATENCY_METRICS] + ["SLO attained"],
              caption="Each cell: measured → predicted, and the prediction's error (relative for "
                      "latencies, percentage points for attainment). Errors beyond ±25% are marked.")
    if not pred.ok:
        return t
    rows = pred.rows
    prev = object()
    for _, r in rows.iterrows():
        lp = r["load_point"]
        if lp != prev:
            t.group_starts.append(len(t.rows))
            prev = lp
        cells = [Cell(str((lp_labels or {}).get(lp, lp)), numeric=False),
                 Cell(str(r["deployment"]), numeric=False)]
        for m, _, _ in LATENCY_METRICS:
            mv, pv = as_float(r.get(f"measured_{m}")), as_float(r.get(f"predicted_{m}"))
            rel = (pv - mv) / mv if mv and math.isfinite(mv) and math.isfinite(pv) else float("nan")
            cells.append(Cell(f"{format_ms(mv)} → {format_ms(pv)}",
                              sub="–" if not math.isfinite(rel) else f"{rel * 100:+.1f}%",
                              cls="bad" if math.isfinite(rel) and abs(rel) > 0.25 else ""))
        mv, pv = as_float(r.get("measured_slo_attainment")), as_float(r.get("predicted_slo_attainment"))
        d = (pv - mv) * 100 if math.isfinite(mv) and math.isfinite(pv) else float("nan")
        cells.append(Cell(f"{format_pct(mv)} → {format_pct(pv)}",
                          sub="–" if not math.isfinite(d) else f"{d:+.1f} pp",
                          cls="bad" if math.isfinite(d) and abs(d) > 10 else ""))
        t.rows.append(cells)
    return t
