"""Predicted vs measured: fit the latency model to the run's own engine steps and replay it.

    predicted_vs_measured(run) -> Prediction

The step-time model is fitted to `steps.jsonl` per deployment (`workloads.profiler.
fit_results_dir(dir, deployment=...)`: each deployment's own steps; deployments without steps get
the first mono deployment's model) and `workloads.planner.validate(results_dir, models)`
re-simulates every measured (deployment, load point) with the measured requests. Nothing here
may break a report: every failure becomes `Prediction.note` and the section shows that note.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .data import RunData
from .figures import _colors_for, _f32, _style, empty_figure, esc
from .summary import Cell, Table, format_ms, format_pct

LATENCY_METRICS = [("ttft_p50_s", "TTFT p50", "circle"), ("ttft_p90_s", "TTFT p90", "diamond"),
                   ("tpot_p50_s", "TPOT p50", "square"), ("tpot_p90_s", "TPOT p90", "triangle-up")]


@dataclass
class Prediction:
    rows: pd.DataFrame | None = None     # planner.validate's frame (None: not computed)
    note: str = ""                      # why not, or how the model was fitted
    seconds: float = 0.0
    fit: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rows is not None and not self.rows.empty


def predicted_vs_measured(run: RunData) -> Prediction:
    """Fit + validate; never raises. Skipped (rows None, note set) when the run has no steps."""
    if run.steps is None or run.steps.empty:
        return Prediction(note="No engine step traces (steps.jsonl) in this run: nothing to fit "
                               "a latency model to.")
    t0 = time.perf_counter()
    try:
        from infer_bench.workloads.planning.planner import validate
        from infer_bench.workloads.planning.profiler import fit_results_dir
        lm = fit_results_dir(run.path)
        models = {}
        deps = run.steps["deployment"].astype(str).unique() if "deployment" in run.steps else []
        for dep in deps:        # each deployment's own steps (disagg workers run 1 thread each)
            try:
                models[dep] = fit_results_dir(run.path, deployment=dep)
            except Exception:  # noqa: BLE001 - too few steps: the default model below
                pass
        names = {str(n) for n in run.records["deployment"].unique()} \
            if getattr(run, "records", None) is not None and "deployment" in run.records else set()
        for name in names:
            models.setdefault(name, lm)
        rows = validate(run.path, models if models else lm)
    except Exception as exc:  # the report must render whatever happens here
        return Prediction(note=f"Predicted vs measured could not be computed "
                               f"({type(exc).__name__}: {str(exc)[:300]}).",
                          seconds=time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    fit = dict(lm.fit or {})
    per = []
    for dep, m in models.items():
        f = m.fit or {}
        if m is lm and dep not in deps:
            continue
        per.append(f"{dep}: {f.get('n_rows', '?')} steps, median relative step error "
                   f"{f.get('median_rel_err', float('nan')):.1%}"
                   + (f", x{1 + m.colocated_slowdown:.2f} while another worker steps"
                      if m.colocated_slowdown else ""))
    note = ("Step-time model fitted per deployment to this run's own engine steps ("
            + "; ".join(per) + ")" if per else "Step-time model fitted to this run's steps")
    note += (f"; re-simulated every load point in {dt:.1f} s (in-sample: the held-out "
             f"validation is bench/planner_validation.py).")
    if rows is None or len(rows) == 0:
        return Prediction(note="The latency model predicted no load points.", seconds=dt, fit=fit)
    return Prediction(rows=pd.DataFrame(rows), note=note, seconds=dt, fit=fit)


def _f(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def prediction_figure(pred: Prediction, colors: dict | None = None,
                      lp_labels: dict | None = None, title: str | None = None) -> go.Figure:
    """Predicted (y) against measured (x): p50/p90 TTFT and TPOT (ms, log axes) and joint SLO
    attainment (%), one marker per deployment x load point, with the y = x line."""
    if not pred.ok:
        return empty_figure(title, "no data (no prediction)")
    rows = pred.rows
    deps = list(dict.fromkeys(rows["deployment"].astype(str)))
    colors = _colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["latency: predicted vs measured (ms)",
                                        "SLO attainment: predicted vs measured (%)"])
    lo, hi = math.inf, 0.0
    for dep in deps:
        d = rows[rows["deployment"].astype(str) == dep]
        labels = [esc(str((lp_labels or {}).get(lp, lp))) for lp in d["load_point"]]
        for m, name, sym in LATENCY_METRICS:
            x = np.array([_f(v) for v in d.get(f"measured_{m}", [])]) * 1e3
            y = np.array([_f(v) for v in d.get(f"predicted_{m}", [])]) * 1e3
            keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
            if not keep.any():
                continue
            lo = min(lo, x[keep].min(), y[keep].min())
            hi = max(hi, x[keep].max(), y[keep].max())
            err = (y[keep] - x[keep]) / x[keep] * 100
            fig.add_trace(go.Scatter(
                x=_f32(x[keep]), y=_f32(y[keep]), mode="markers", name=esc(f"{dep} · {name}"),
                legendgroup=esc(dep),
                marker=dict(color=colors[dep], symbol=sym, size=9, line=dict(color="#1f2933", width=0.5)),
                customdata=[[lb, e] for lb, e in zip(np.array(labels)[keep], err)],
                hovertemplate=f"{esc(dep)} · %{{customdata[0]}}<br>{name}: measured %{{x:.4g}} ms, "
                              "predicted %{y:.4g} ms<br>error %{customdata[1]:+.1f}%<extra></extra>"),
                row=1, col=1)
        x = np.array([_f(v) for v in d.get("measured_slo_attainment", [])]) * 100
        y = np.array([_f(v) for v in d.get("predicted_slo_attainment", [])]) * 100
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.any():
            fig.add_trace(go.Scatter(
                x=_f32(x[keep]), y=_f32(y[keep]), mode="markers", name=esc(f"{dep} · attainment"),
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
    return _style(fig, title, height=500, top=130)


def prediction_table(pred: Prediction, lp_labels: dict | None = None) -> Table:
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
            mv, pv = _f(r.get(f"measured_{m}")), _f(r.get(f"predicted_{m}"))
            rel = (pv - mv) / mv if mv and math.isfinite(mv) and math.isfinite(pv) else float("nan")
            cells.append(Cell(f"{format_ms(mv)} → {format_ms(pv)}",
                              sub="–" if not math.isfinite(rel) else f"{rel * 100:+.1f}%",
                              cls="bad" if math.isfinite(rel) and abs(rel) > 0.25 else ""))
        mv, pv = _f(r.get("measured_slo_attainment")), _f(r.get("predicted_slo_attainment"))
        d = (pv - mv) * 100 if math.isfinite(mv) and math.isfinite(pv) else float("nan")
        cells.append(Cell(f"{format_pct(mv)} → {format_pct(pv)}",
                          sub="–" if not math.isfinite(d) else f"{d:+.1f} pp",
                          cls="bad" if math.isfinite(d) and abs(d) > 10 else ""))
        t.rows.append(cells)
    return t
