"""Plotly figures for the report: pure functions, DataFrame(s) in, `go.Figure` out.

Every function accepts empty or partial data and then returns a figure carrying a "no data"
annotation instead of raising. Colors are consistent per deployment (`deployment_colors`).
User strings (deployment names, load-point labels, request ids) are HTML-escaped before they
reach plotly, whose text renderer understands a subset of HTML.

Figures:
  latency_cdfs        TTFT, per-token ITL, TPOT, E2E CDFs overlaid by deployment (per load point)
  throughput_latency  p50/p90 TTFT and TPOT against achieved request throughput
  slo_attainment      joint SLO attainment against offered rate, goodput marked
  request_timeline    Gantt-like per-request phases (queue, prefill, KV transfer, admission, decode)
  itl_over_time       per-chunk gaps against time, engine steps with co-batched prefill marked
  telemetry_figure    telemetry metrics against time
  ttft_breakdown      stacked mean (or slowest-10%) TTFT: queue / prefill / KV transfer / decode
                      admission / rest; 'unattributed' where the server reports no phases
  itl_interference    per-token ITL split by engine step kind (decode-only vs co-batched
                      prefill, from server_timing_json token_steps/steps), CDFs + p50/p99 bars;
                      itl_interference_table: the same as numbers
  spec_decoding       draft acceptance-rate histogram and mean accepted tokens per verify step
  report_figures      all of the above that apply to one RunData, with titles and captions
                      (predicted vs measured: predict.py, from the run's predictions.json)
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from infer_bench.workloads import metrics

from .data import (RunData, itl_split, order_load_points, server_timings, spec_counters,
                   token_prefill_flags)
from .summary import goodput

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac"]
SERVER_PHASES = [("server_queue_s", "queue"), ("server_prefill_s", "prefill"),
                 ("server_transfer_s", "transfer"), ("server_admission_s", "admission")]
PHASE_COLORS = {
    "queue": "#bab0ac", "prefill": "#f28e2b", "transfer": "#b07aa1", "admission": "#76b7b2", "wait": "#edc948", "ttft": "#edc948",
    "decode": "#4e79a7", "failed": "#e15759",
}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CDF_POINTS = 400


def esc(s: Any) -> str:
    """Escape a user string for plotly's pseudo-HTML text (names, labels, hover)."""
    return html.escape(str(s), quote=False)


def deployment_colors(names: Sequence[str]) -> dict[str, str]:
    return {str(n): PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _colors_for(names: Sequence[str], colors: dict | None) -> dict[str, str]:
    base = dict(colors or {})
    for n in names:
        if n not in base:
            base[n] = PALETTE[len(base) % len(PALETTE)]
    return base


def _style(fig: go.Figure, title: str | None = None, height: int = 420,
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
    return _style(fig, title, height=260)


def _f32(values) -> np.ndarray:
    """Compact array for embedding (plotly serialises numpy arrays as typed base64)."""
    return np.asarray(values, dtype=np.float32)


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def _cdf_points(values: np.ndarray, n: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF, reduced to at most ~n points by quantiles."""
    v = np.sort(_finite(values))
    if not len(v):
        return v, v
    if len(v) <= n:
        return v, np.arange(1, len(v) + 1) / len(v)
    p = np.linspace(0.0, 1.0, n)
    return np.quantile(v, p), np.clip(p, 1.0 / len(v), 1.0)


def _lp_list(records: pd.DataFrame, load_points: Sequence | None) -> list:
    if load_points is not None:
        return list(load_points)
    if records is None or records.empty or "load_point" not in records:
        return []
    return order_load_points(records["load_point"])


def _lp_label(lp: Any, labels: dict | None) -> str:
    return str((labels or {}).get(lp, lp))


def _add_lp_menu(fig: go.Figure, trace_lps: list, lps: list, labels: dict | None,
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
        buttons.append(dict(label=esc(f"load point {_lp_label(lp, labels)}"),
                            method="update" if relayouts else "restyle", args=args))
    fig.update_layout(updatemenus=[dict(
        buttons=buttons, active=active, direction="down", showactive=True,
        x=1.0, xanchor="right", y=1.0, yanchor="bottom", pad=dict(b=24), bgcolor="#ffffff",
        bordercolor="#cbd2d9", font=dict(size=11))])
    if relayouts:
        fig.update_layout(relayouts[active])


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _text(v: Any) -> str:
    """A string cell as text; None/NaN/pd.NA -> ''."""
    try:
        if v is None or pd.isna(v):
            return ""
    except (TypeError, ValueError):
        pass
    return str(v)


def _ok(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["error"].isna()] if "error" in records else records


# ----------------------------------------------------------------------------- latency CDFs

def latency_cdfs(records: pd.DataFrame, colors: dict | None = None,
                 load_points: Sequence | None = None, lp_labels: dict | None = None,
                 slo: dict | None = None, title: str | None = None) -> go.Figure:
    """CDFs of TTFT, per-token ITL, TPOT and E2E, one line per deployment, per load point."""
    if records is None or records.empty:
        return empty_figure(title)
    lps = _lp_list(records, load_points)
    deps = list(dict.fromkeys(records["deployment"]))
    colors = _colors_for(deps, colors)
    panels = [("TTFT", "ttft_s", 1e3, "ms"), ("ITL (per token)", "itl", 1e3, "ms"),
              ("TPOT", "tpot_s", 1e3, "ms"), ("E2E latency", "e2e_s", 1.0, "s")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.09, vertical_spacing=0.16)
    ok = _ok(records)
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
                x, y = _cdf_points(vals * scale)
                if not len(x):
                    continue
                fig.add_trace(go.Scatter(
                    x=_f32(x), y=_f32(y * 100), mode="lines", name=esc(dep),
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
    _add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return _style(fig, title, height=680, top=110)


# ----------------------------------------------------------------------------- throughput vs latency

def _sorted_summary(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary.copy()
    if "rate_rps" in s:
        s["_rate"] = pd.to_numeric(s["rate_rps"], errors="coerce")
    else:
        s["_rate"] = np.nan
    order = {lp: i for i, lp in enumerate(order_load_points(s["load_point"]))}
    s["_lp_order"] = s["load_point"].map(lambda v: order.get(v, 0))
    return s.sort_values(["_lp_order"]).reset_index(drop=True)


def throughput_latency(summary: pd.DataFrame, colors: dict | None = None,
                       lp_labels: dict | None = None, slo: dict | None = None,
                       title: str | None = None) -> go.Figure:
    """p50 (solid) and p90 (dashed) TTFT and TPOT against achieved request throughput."""
    need = {"deployment", "load_point", "request_throughput_rps"}
    if summary is None or summary.empty or not need <= set(summary.columns):
        return empty_figure(title)
    s = _sorted_summary(summary)
    deps = list(dict.fromkeys(s["deployment"]))
    colors = _colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT vs throughput", "TPOT vs throughput"],
                        horizontal_spacing=0.1)
    for c, metric in enumerate(("ttft", "tpot"), start=1):
        for dep in deps:
            d = s[s["deployment"] == dep]
            x = pd.to_numeric(d["request_throughput_rps"], errors="coerce").to_numpy(dtype=float)
            labels = [esc(_lp_label(lp, lp_labels)) for lp in d["load_point"]]
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
    return _style(fig, title, height=470, top=110)


# ----------------------------------------------------------------------------- SLO attainment

def slo_attainment(summary: pd.DataFrame, colors: dict | None = None, target: float = 0.9,
                   lp_labels: dict | None = None, title: str | None = None) -> go.Figure:
    """Joint SLO attainment against offered rate per deployment; goodput marked."""
    if (summary is None or summary.empty or "slo_attainment" not in summary
            or pd.to_numeric(summary["slo_attainment"], errors="coerce").notna().sum() == 0):
        return empty_figure(title, "no data (no SLO attainment in the summary)")
    s = _sorted_summary(summary)
    use_offered = s["_rate"].notna().any()
    xcol = "_rate" if use_offered else "request_throughput_rps"
    xtitle = "offered rate (req/s)" if use_offered else "achieved throughput (req/s)"
    deps = list(dict.fromkeys(s["deployment"]))
    colors = _colors_for(deps, colors)
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
        labels = [esc(_lp_label(lp, lp_labels)) for lp in d["load_point"].to_numpy()[keep][order]]
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
    return _style(fig, title, height=420)


# ----------------------------------------------------------------------------- per-request timeline

def request_timeline(records: pd.DataFrame, max_per_deployment: int = 30,
                     load_points: Sequence | None = None, lp_labels: dict | None = None,
                     title: str | None = None) -> go.Figure:
    """Gantt-like phases of a sample of requests: queue, prefill, wait for first token, decode."""
    if records is None or records.empty or records["send_s"].notna().sum() == 0:
        return empty_figure(title)
    lps = _lp_list(records, load_points)
    deps = list(dict.fromkeys(records["deployment"]))
    # server-reported phases, in the order they happen (columns absent or empty are skipped)
    server_cols = [(c, p) for c, p in SERVER_PHASES
                   if c in records and pd.to_numeric(records[c], errors="coerce").notna().any()]
    has_server = bool(server_cols)
    phases = ([p for _, p in server_cols] + ["wait", "decode", "failed"] if has_server
              else ["ttft", "decode", "failed"])
    phase_names = {"queue": "server queue", "prefill": "server prefill",
                   "transfer": "KV transfer", "admission": "decode admission",
                   "wait": "other (to first token)", "ttft": "send → first token",
                   "decode": "first → last token", "failed": "failed request"}
    fig = go.Figure()
    trace_lps: list = []
    relayouts: list[dict] = []
    max_rows = 1
    for lp in lps:
        sub = records[(records["load_point"] == lp) & records["send_s"].notna()]
        rows: list[pd.Series] = []
        ticks: list[str] = []
        for dep in deps:
            d = sub[sub["deployment"] == dep].sort_values("send_s")
            if d.empty:
                continue
            idx = np.unique(np.linspace(0, len(d) - 1, min(max_per_deployment, len(d))).astype(int))
            for _, r in d.iloc[idx].iterrows():
                rows.append(r)
                rid = _text(r["request_id"])
                ticks.append(esc(rid if rid.startswith(dep[:8]) else f"{dep} · {rid}"))
        max_rows = max(max_rows, len(rows))
        seg: dict[str, dict[str, list]] = {p: {"y": [], "base": [], "x": [], "cd": []} for p in phases}

        def put(p, y, start, length, r):
            if p in seg and np.isfinite(start) and np.isfinite(length) and length >= 0:
                seg[p]["y"].append(y)
                seg[p]["base"].append(start)
                seg[p]["x"].append(length)
                seg[p]["cd"].append([esc(r["deployment"]), esc(r["request_id"]),
                                     esc(_text(r["error"]))])

        for y, r in enumerate(rows):
            send, first, last = r["send_s"], r["first_token_s"], r["last_token_s"]
            if _text(r["error"]):
                cands = (r.get("end_s", np.nan), last, first, send + r["e2e_s"])
                end = next((float(v) for v in cands if _num(v) == _num(v)), send)
                put("failed", y, send, max(end - send, 0.0), r)
                continue
            if has_server:
                t = send
                for col, p in server_cols:
                    dur = _num(r.get(col))
                    if dur == dur and dur > 0:
                        put(p, y, t, dur, r)
                        t += dur
                if np.isfinite(first):
                    put("wait", y, t, max(first - t, 0.0), r)
            elif np.isfinite(first):
                put("ttft", y, send, first - send, r)
            if np.isfinite(first) and np.isfinite(last):
                put("decode", y, first, last - first, r)
        for p in phases:
            if not seg[p]["y"]:
                continue
            if p == "failed":
                fig.add_trace(go.Scatter(
                    x=_f32(seg[p]["base"]), y=seg[p]["y"], mode="markers", name=phase_names[p],
                    legendgroup=p, marker=dict(symbol="x", size=9, color=PHASE_COLORS[p]),
                    customdata=seg[p]["cd"],
                    hovertemplate="%{customdata[0]} · request %{customdata[1]}<br>failed, sent at "
                                  "%{x:.3f} s<br>%{customdata[2]}<extra></extra>"))
                trace_lps.append(lp)
            fig.add_trace(go.Bar(
                orientation="h", y=seg[p]["y"], x=_f32(seg[p]["x"]), base=_f32(seg[p]["base"]),
                name=phase_names[p], legendgroup=p, marker=dict(color=PHASE_COLORS[p]),
                width=0.72, customdata=seg[p]["cd"],
                hovertemplate="%{customdata[0]} · request %{customdata[1]}<br>"
                              + phase_names[p] + ": %{x:.4f} s from %{base:.3f} s"
                              + ("<br>%{customdata[2]}" if p == "failed" else "")
                              + "<extra></extra>"))
            trace_lps.append(lp)
        relayouts.append({"yaxis.tickvals": list(range(len(rows))), "yaxis.ticktext": ticks,
                          "yaxis.range": [len(rows) - 0.5, -0.5]})
    if not fig.data:
        return empty_figure(title)
    fig.update_layout(barmode="overlay", bargap=0.2)
    fig.update_xaxes(title_text="run time (s)")
    fig.update_yaxes(tickfont=dict(size=10), automargin=True)
    _add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1, relayouts=relayouts)
    return _style(fig, title, height=int(min(1400, max(360, 120 + 15 * max_rows))))


# ----------------------------------------------------------------------------- ITL over time

def itl_over_time(records: pd.DataFrame, steps: pd.DataFrame | None = None,
                  colors: dict | None = None, load_points: Sequence | None = None,
                  lp_labels: dict | None = None, max_points: int = 4000, seed: int = 0,
                  title: str | None = None, kinds: dict | None = None) -> go.Figure:
    """Per-chunk gaps (ms) against arrival time; engine steps that co-batched prefill marked.

    With `kinds` (from `itl_kinds`) a deployment whose server reports per-token engine steps
    gets two marker traces: chunks from decode-only steps (dots) and chunks whose tokens came
    from a step that also ran prefill (larger open markers) — the interference itself."""
    if records is None or records.empty:
        return empty_figure(title)
    lps = _lp_list(records, load_points)
    deps = list(dict.fromkeys(records["deployment"]))
    colors = _colors_for(deps, colors)
    ok = _ok(records)
    rng = np.random.default_rng(seed)
    has_steps = (steps is not None and not steps.empty
                 and {"t_start", "n_prefill_tokens"} <= set(steps.columns))
    fig = make_subplots(specs=[[{"secondary_y": True}]]) if has_steps else go.Figure()
    trace_lps: list = []
    for lp in lps:
        sub = ok[ok["load_point"] == lp]
        for dep in deps:
            d = sub[sub["deployment"] == dep]
            ts, gs = [], []
            for t, k in zip(d["chunk_times_s"], d["chunk_tokens"]):
                times = [c[0] for c in metrics.token_chunks(t, k)]
                ts.append(np.asarray(times[1:], dtype=float))
                gs.append(np.asarray(metrics.chunk_gaps(times), dtype=float))
            if not ts or not sum(len(a) for a in ts):
                continue
            t_all, g_all = np.concatenate(ts), np.concatenate(gs)
            kd = (kinds or {}).get((dep, lp))
            split = kd is not None and kd.n_with_steps > 0 and len(kd.chunk_t) == len(t_all)
            f_all = kd.chunk_prefill if split else np.zeros(len(t_all), dtype=bool)
            if split:
                t_all, g_all = kd.chunk_t, kd.chunk_gap
            if len(t_all) > max_points:
                # keep every chunk from a prefill step (rare, and the point of the figure)
                pf_idx = np.flatnonzero(f_all)
                rest = np.flatnonzero(~f_all)
                n_rest = max(0, max_points - len(pf_idx))
                if len(rest) > n_rest:
                    rest = rng.choice(rest, n_rest, replace=False)
                pick = np.sort(np.concatenate([pf_idx, rest]).astype(int))
                t_all, g_all, f_all = t_all[pick], g_all[pick], f_all[pick]
            kw = dict(secondary_y=False) if has_steps else {}
            groups = ([(~f_all, "decode-only step", dict(size=4, opacity=0.55)),
                       (f_all, "step had prefill", dict(size=8, opacity=0.95, symbol="circle-open",
                                                        line=dict(width=2)))]
                      if split else [(np.ones(len(t_all), dtype=bool), "chunk gap",
                                      dict(size=4, opacity=0.55))])
            for m, label, mk in groups:
                if not m.any():
                    continue
                fig.add_trace(go.Scatter(
                    x=_f32(t_all[m]), y=_f32(g_all[m] * 1e3), mode="markers",
                    name=f"{esc(dep)} · {label}" if split else f"{esc(dep)} chunk gap",
                    legendgroup=esc(f"{dep} {label}"), marker=dict(color=colors[dep], **mk),
                    hovertemplate=f"{esc(dep)}<br>t=%{{x:.3f}} s<br>gap %{{y:.3g}} ms"
                                  + (f"<br>{label}" if split else "") + "<extra></extra>",
                ), **kw)
                trace_lps.append(lp)
            if has_steps:
                st = steps
                if "deployment" in st:
                    st = st[st["deployment"].astype(str) == dep]
                t0 = np.nanmin(d["send_s"].to_numpy(dtype=float)) if d["send_s"].notna().any() else -np.inf
                t1 = float(np.nanmax(t_all))
                tcol = pd.to_numeric(st["t_start"], errors="coerce")
                npf = pd.to_numeric(st["n_prefill_tokens"], errors="coerce")
                m = (npf > 0) & (tcol >= t0) & (tcol <= t1)
                if m.any():
                    fig.add_trace(go.Scatter(
                        x=_f32(tcol[m]), y=_f32(npf[m]), mode="markers",
                        name=f"{esc(dep)} step with prefill", legendgroup=f"{esc(dep)} steps",
                        marker=dict(color=colors[dep], symbol="triangle-up", size=8, opacity=0.9,
                                    line=dict(color="#1f2933", width=0.5)),
                        hovertemplate=f"{esc(dep)} engine step<br>t=%{{x:.3f}} s<br>"
                                      "%{y} prefill tokens co-batched<extra></extra>",
                    ), secondary_y=True)
                    trace_lps.append(lp)
    if not fig.data:
        return empty_figure(title)
    fig.update_xaxes(title_text="run time (s)")
    if has_steps:
        fig.update_yaxes(title_text="per-chunk gap (ms)", secondary_y=False, rangemode="tozero")
        fig.update_yaxes(title_text="prefill tokens in step", secondary_y=True,
                         rangemode="tozero", showgrid=False)
    else:
        fig.update_yaxes(title_text="per-chunk gap (ms)", rangemode="tozero")
    _add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return _style(fig, title, height=440)


# ----------------------------------------------------------------------------- telemetry

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
        tel[col] = tel[col].map(_text)
    tel["metric"] = tel["metric"].map(_text)
    totals = set(tel.loc[(tel["source"] == "process") & (tel["entity"] == "total"), "metric"])
    tel = tel[~((tel["source"] == "process") & tel["metric"].isin(totals) & (tel["entity"] != "total"))]
    prio = {"nvml": 0, "system": 1, "process": 2, "prometheus": 3}
    firsts = tel.drop_duplicates("metric")
    metrics = sorted(firsts["metric"], key=lambda m: (
        prio.get(firsts.loc[firsts["metric"] == m, "source"].iloc[0], 4), list(firsts["metric"]).index(m)))
    metrics = metrics[:max_metrics]
    units = {m: firsts.loc[firsts["metric"] == m, "unit"].iloc[0] for m in metrics}
    deps = list(dict.fromkeys(tel["deployment"]))
    colors = _colors_for(deps, colors)
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
                x=_f32(g["t_s"]), y=_f32(g["value"]), mode="lines", name=name, legendgroup=name,
                showlegend=name not in seen,
                line=dict(color=colors.get(dep, PALETTE[0]), dash=dashes[ents.index(ent) % 5], width=1.5),
                hovertemplate=f"{name}<br>t=%{{x:.2f}} s<br>%{{y:.4g}} {esc(units[m])}<extra></extra>",
            ), row=i // ncols + 1, col=i % ncols + 1)
            seen.add(name)
    for i in range(len(metrics)):
        if i + ncols >= len(metrics):  # nothing below this panel: label its x axis
            fig.update_xaxes(title_text="run time (s)", row=i // ncols + 1, col=i % ncols + 1)
    return _style(fig, title, height=max(340, 250 * nrows + 80))


# ----------------------------------------------------------------------------- all figures of a run

@dataclass
class FigureSpec:
    key: str
    title: str
    caption: str
    figure: go.Figure | None          # None: a section with only tables / a note
    tables: list = field(default_factory=list)   # summary.Table objects shown under the figure
    note: str = ""                    # a short remark shown under the caption


def report_figures(run: RunData, colors: dict | None = None, target: float = 0.9
                   ) -> list[FigureSpec]:
    """The report's figures for one run, in display order (sections without data are left
    out: TTFT split, ITL interference, speculative decoding, predicted vs measured)."""
    colors = colors or deployment_colors(run.deployments)
    lps = run.load_points
    labels = {lp: run.load_point_label(lp) for lp in lps}
    out = [FigureSpec(
        "cdf", "Latency distributions",
        "Empirical CDFs of successful requests, one line per deployment; the menu picks the load "
        "point. ITL is per token: a chunk carrying k tokens after a gap g gives k samples of g/k. "
        "TPOT = (t_last − t_first) / (n_output − n_first). Failed requests are excluded here but "
        "count as SLO misses.",
        latency_cdfs(run.records, colors, lps, labels, slo=run.slo))]
    if len(run.summary) and len(lps) > 1:
        out.append(FigureSpec(
            "throughput", "Latency vs throughput",
            "p50 (solid) and p90 (dashed) TTFT and TPOT against achieved request throughput, one "
            "point per load point.",
            throughput_latency(run.summary, colors, labels, slo=run.slo)))
        out.append(FigureSpec(
            "slo", "SLO attainment and goodput",
            f"Share of requests meeting TTFT and TPOT SLOs jointly (failed requests count as misses) "
            f"against the offered rate. Goodput (★) is the highest rate with attainment ≥ "
            f"{target:.0%}, linearly interpolated; '≥' means the target held at every rate measured.",
            slo_attainment(run.summary, colors, target, labels)))
    parts = ttft_parts(run.records)
    if not parts.empty:
        unattributed = [d for d in dict.fromkeys(parts["deployment"])
                        if parts.loc[parts["deployment"] == d, "unattributed"].sum() > 0
                        and parts.loc[parts["deployment"] == d, ["queue", "prefill"]].sum().sum() == 0]
        out.append(FigureSpec(
            "ttft_parts", "Where the time to first token goes",
            "Mean TTFT of successful requests per load point and deployment, split into the "
            "phases the server reports: queue wait, prefill, KV transfer and decode admission "
            "(disaggregated deployments), and the rest (network, HTTP/SSE framing, client). The "
            "menu switches to the same split averaged over the slowest 10% of requests "
            "(TTFT ≥ p90)."
            + (f" {', '.join(unattributed)}: the server reports no phase timing (an external "
               "server), so its TTFT is one unattributed bar." if unattributed else ""),
            ttft_breakdown(run.records, lps, labels, run.deployments)))
    out.append(FigureSpec(
        "timeline", "Per-request timeline",
        "A sample of requests in send order. Server queue and prefill come from the engine's own "
        "timing where the server reports it; the rest of the time to first token is network, "
        "admission and transfer. Red bars are failed requests.",
        request_timeline(run.records, load_points=lps, lp_labels=labels)))
    timings = server_timings(run.records)
    kinds = itl_kinds(run.records, timings)
    has_kinds = any(k.n_with_steps and len(k.itl) for k in kinds.values())
    out.append(FigureSpec(
        "itl_time", "Inter-token gaps over time",
        "Per-chunk gaps (not per token) against arrival time"
        + ("; open circles are chunks whose tokens came from an engine step that also ran "
           "prefill work (the server's per-token step ids), dots are decode-only steps"
           if has_kinds else "")
        + ("; triangles (right axis) mark engine steps that co-batched prefill tokens, the "
           "interference that disaggregation removes." if run.steps is not None else "."),
        itl_over_time(run.records, run.steps, colors, lps, labels, kinds=kinds)))
    if has_kinds:
        out.append(FigureSpec(
            "itl_interference", "Decode interference from co-batched prefill",
            "Per-token ITL split by the engine step that produced the token: a decode-only step "
            "(solid) or a step that also carried prefill tokens of other requests (dashed, "
            "hatched). The gap between the two is the prefill-decode interference that a "
            "disaggregated deployment removes; the share of tokens affected grows with load.",
            itl_interference(kinds, colors, lps, labels),
            tables=[itl_interference_table(kinds, lps, labels)]))
    spec = spec_frame(run.records, timings)
    if not spec.empty:
        mal = spec.groupby("deployment", sort=False).apply(
            lambda d: d["accepted"].sum() / d["verify_steps"].sum()
            if d["verify_steps"].notna().all() and d["verify_steps"].sum() > 0 else float("nan"),
            include_groups=False)
        acc = spec.groupby("deployment", sort=False).apply(
            lambda d: d["accepted"].sum() / d["proposed"].sum(), include_groups=False)
        desc = "; ".join(f"{d}: {acc[d]:.0%} of draft tokens accepted"
                         + (f", {mal[d]:.2f} accepted per verify step" if mal[d] == mal[d] else "")
                         for d in acc.index)
        out.append(FigureSpec(
            "spec", "Speculative decoding",
            "Draft tokens accepted by the target model, from the server's per-request counters "
            "(spec_proposed, spec_accepted, spec_verify_steps). " + desc + ".",
            spec_decoding(spec, colors)))
    if run.predictions is not None:
        from .predict import prediction_figure, prediction_table
        pred = run.predictions
        out.append(FigureSpec(
            "predicted", "Predicted vs measured",
            "A step-time model fitted to this run's own engine steps, replayed on the measured "
            "requests (workloads.planning.predict, stored in predictions.json): predicted against "
            "measured p50/p90 TTFT and TPOT and joint SLO attainment for every deployment and "
            "load point. Points on the dashed y = x line are predicted exactly.",
            prediction_figure(pred, colors, labels) if pred.ok else None,
            tables=[prediction_table(pred, labels)] if pred.ok else [],
            note=pred.note))
    if run.telemetry is not None:
        out.append(FigureSpec("telemetry", "Telemetry", "Hardware and process telemetry sampled "
                              "during the run.", telemetry_figure(run.telemetry, colors)))
    return out


# ----------------------------------------------------------------------------- TTFT decomposition

TTFT_PARTS = [("server_queue_s", "queue", "server queue"),
              ("server_prefill_s", "prefill", "prefill"),
              ("server_transfer_s", "transfer", "KV transfer"),
              ("server_admission_s", "admission", "decode admission"),
              (None, "rest", "rest (network + client)"),
              (None, "unattributed", "unattributed (server reports no phases)")]
PART_COLORS = {"queue": "#bab0ac", "prefill": "#f28e2b", "transfer": "#b07aa1",
               "admission": "#76b7b2", "rest": "#9fb3c8", "unattributed": "#d9dde3"}


def ttft_parts(records: pd.DataFrame) -> pd.DataFrame:
    """Per successful request with a TTFT: its TTFT split into the server-reported phases and
    the rest. Columns: deployment, load_point, ttft_s, queue, prefill, transfer, admission,
    rest, unattributed (seconds). A request without any server phase column puts its whole TTFT
    in `unattributed` (external servers); a missing single phase counts 0; the rest (network,
    client, SSE framing) is TTFT minus the phases, floored at 0."""
    cols = ["deployment", "load_point", "ttft_s"] + [p for _, p, _ in TTFT_PARTS]
    if records is None or records.empty:
        return pd.DataFrame(columns=cols)
    ok = _ok(records)
    ok = ok[pd.to_numeric(ok["ttft_s"], errors="coerce").notna()]
    out = pd.DataFrame({"deployment": ok["deployment"].to_numpy(),
                        "load_point": ok["load_point"].to_numpy(),
                        "ttft_s": ok["ttft_s"].to_numpy(dtype=float)})
    phase = np.zeros((len(ok), 4))
    have = np.zeros(len(ok), dtype=bool)
    for j, (col, _, _) in enumerate(TTFT_PARTS[:4]):
        if col in ok:
            v = pd.to_numeric(ok[col], errors="coerce").to_numpy(dtype=float)
            have |= np.isfinite(v)
            phase[:, j] = np.nan_to_num(np.clip(v, 0, None), nan=0.0)
    ttft = out["ttft_s"].to_numpy()
    phase[~have] = 0.0
    for j, (_, p, _) in enumerate(TTFT_PARTS[:4]):
        out[p] = phase[:, j]
    out["rest"] = np.where(have, np.clip(ttft - phase.sum(axis=1), 0, None), 0.0)
    out["unattributed"] = np.where(have, 0.0, ttft)
    return out


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
    lps = _lp_list(records, load_points)
    deps = [d for d in (deployments or list(dict.fromkeys(parts["deployment"])))
            if d in set(parts["deployment"])]
    xs_lp, xs_dep, vals = [], [], {"mean": [], "tail": []}
    counts = {"mean": [], "tail": []}
    for lp in lps:
        for dep in deps:
            g = parts[(parts["load_point"] == lp) & (parts["deployment"] == dep)]
            if g.empty:
                continue
            xs_lp.append(esc(_lp_label(lp, lp_labels)))
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
                x=x, y=_f32(y), name=name, legendgroup=p, marker=dict(color=PART_COLORS[p]),
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
    return _style(fig, title, height=440, top=110)


# ----------------------------------------------------------------------------- ITL interference

@dataclass
class ItlKinds:
    """Per (deployment, load point): per-token ITL samples and per-chunk gaps, each flagged by
    whether the engine step that produced it co-batched prefill tokens."""
    itl: np.ndarray
    itl_prefill: np.ndarray
    chunk_t: np.ndarray
    chunk_gap: np.ndarray
    chunk_prefill: np.ndarray
    n_with_steps: int        # requests whose server reported token steps
    n_requests: int


def itl_kinds(records: pd.DataFrame, timings: list | None = None) -> dict[tuple, ItlKinds]:
    """ItlKinds for every (deployment, load point) of the successful records."""
    out: dict[tuple, ItlKinds] = {}
    if records is None or records.empty:
        return out
    if timings is None:
        timings = server_timings(records)
    ok_mask = records["error"].isna().to_numpy() if "error" in records else np.ones(len(records), bool)
    acc: dict[tuple, list] = {}
    for i, (dep, lp, t, k) in enumerate(zip(records["deployment"], records["load_point"],
                                            records["chunk_times_s"], records["chunk_tokens"])):
        if not ok_mask[i]:
            continue
        flags = token_prefill_flags(timings[i])
        key = (dep, lp)
        acc.setdefault(key, []).append((itl_split(t, k, flags), flags is not None))
    for key, items in acc.items():
        parts = [it[0] for it in items]
        cat = [np.concatenate([p[j] for p in parts]) if parts else np.empty(0) for j in range(5)]
        out[key] = ItlKinds(cat[0], cat[1].astype(bool), cat[2], cat[3], cat[4].astype(bool),
                            sum(1 for it in items if it[1]), len(items))
    return out


def _pct(v: np.ndarray, q: float) -> float:
    return float(np.percentile(v, q)) if len(v) else float("nan")


def itl_interference(kinds: dict[tuple, ItlKinds], colors: dict | None = None,
                     load_points: Sequence | None = None, lp_labels: dict | None = None,
                     title: str | None = None) -> go.Figure:
    """Per-token ITL split by the kind of engine step that produced the token: CDFs (solid:
    decode-only step, dashed: step that co-batched prefill) and p50 / p99 bars per deployment;
    the menu picks the load point. Only deployments whose server reports token steps."""
    kinds = {k: v for k, v in kinds.items() if v.n_with_steps and len(v.itl)}
    if not kinds:
        return empty_figure(title, "no data (the servers report no per-token engine steps)")
    lps = [lp for lp in (load_points if load_points is not None
                         else order_load_points([k[1] for k in kinds])) if any(k[1] == lp for k in kinds)]
    deps = list(dict.fromkeys(k[0] for k in kinds))
    colors = _colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        subplot_titles=["per-token ITL CDF", "per-token ITL p50 and p99"])
    trace_lps: list = []
    kinds_style = [(False, "decode-only step", "solid", 1.0),
                   (True, "step had prefill", "dash", 0.55)]
    for lp in lps:
        for dep in deps:
            kd = kinds.get((dep, lp))
            if kd is None:
                continue
            for flag, label, dash, _ in kinds_style:
                v = kd.itl[kd.itl_prefill == flag] * 1e3
                x, y = _cdf_points(v)
                if not len(x):
                    continue
                fig.add_trace(go.Scatter(
                    x=_f32(x), y=_f32(y * 100), mode="lines", name=esc(f"{dep} · {label}"),
                    legendgroup=esc(f"{dep} {label}"),
                    line=dict(color=colors[dep], width=2, dash=dash, shape="hv"),
                    hovertemplate=f"{esc(dep)} · {label}<br>ITL %{{x:.4g}} ms<br>%{{y:.1f}}% of "
                                  f"these tokens ({len(v):,})<extra></extra>"), row=1, col=1)
                trace_lps.append(lp)
        for flag, label, _, opacity in kinds_style:
            xs_dep, xs_q, ys, cd = [], [], [], []
            for dep in deps:
                kd = kinds.get((dep, lp))
                if kd is None:
                    continue
                v = kd.itl[kd.itl_prefill == flag] * 1e3
                share = float((kd.itl_prefill == flag).mean() * 100) if len(kd.itl) else 0.0
                for q in (50, 99):
                    xs_dep.append(esc(dep))
                    xs_q.append(f"p{q}")
                    ys.append(_pct(v, q))
                    cd.append([esc(dep), len(v), share])
            if not ys or not np.isfinite(ys).any():
                continue
            bar_colors = [colors[d] for d in deps for _ in (50, 99) if (d, lp) in kinds]
            fig.add_trace(go.Bar(
                x=[xs_dep, xs_q], y=_f32(ys), name=label, legendgroup=label,
                marker=dict(color=bar_colors, opacity=opacity,
                            pattern=dict(shape="/" if flag else "", fgcolor="#1f2933", size=6)),
                customdata=cd,
                hovertemplate="%{customdata[0]} · " + label + "<br>%{x}: %{y:.4g} ms<br>"
                              "%{customdata[1]:,} tokens (%{customdata[2]:.1f}%)<extra></extra>"),
                row=1, col=2)
            trace_lps.append(lp)
    if not fig.data:
        return empty_figure(title, "no data (the servers report no per-token engine steps)")
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(title_text="per-token ITL (ms)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="% ≤ x", range=[0, 101], row=1, col=1)
    fig.update_yaxes(title_text="per-token ITL (ms)", rangemode="tozero", row=1, col=2)
    _add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return _style(fig, title, height=480, top=120)


def itl_interference_table(kinds: dict[tuple, ItlKinds], load_points: Sequence,
                           lp_labels: dict | None = None) -> "Table":
    """Per deployment x load point: share of tokens from steps with co-batched prefill, and
    p50 / p99 per-token ITL of those tokens against decode-only tokens."""
    from .summary import Cell, Table, format_ms
    t = Table(headers=["Load point", "Deployment", "Tokens", "From steps with prefill",
                       "ITL p50 decode-only (ms)", "ITL p50 with prefill (ms)",
                       "ITL p99 decode-only (ms)", "ITL p99 with prefill (ms)",
                       "p50 slowdown"],
              caption="Tokens produced in an engine step that also ran prefill work wait for "
                      "it: this is the interference a disaggregated deployment removes.")
    kinds = {k: v for k, v in kinds.items() if v.n_with_steps and len(v.itl)}
    deps = list(dict.fromkeys(k[0] for k in kinds))
    for lp in load_points:
        first = True
        for dep in deps:
            kd = kinds.get((dep, lp))
            if kd is None:
                continue
            if first:
                t.group_starts.append(len(t.rows))
                first = False
            dec, pre = kd.itl[~kd.itl_prefill], kd.itl[kd.itl_prefill]
            slow = _pct(pre, 50) / _pct(dec, 50) if len(pre) and len(dec) and _pct(dec, 50) > 0 else float("nan")
            t.rows.append([
                Cell(str((lp_labels or {}).get(lp, lp)), numeric=False),
                Cell(str(dep), numeric=False),
                Cell(f"{len(kd.itl):,}"),
                Cell(f"{len(pre) / len(kd.itl) * 100:.1f}%"),
                Cell(format_ms(_pct(dec, 50))), Cell(format_ms(_pct(pre, 50))),
                Cell(format_ms(_pct(dec, 99))), Cell(format_ms(_pct(pre, 99))),
                Cell("–" if not math.isfinite(slow) else f"×{slow:.2f}",
                     cls="bad" if math.isfinite(slow) and slow >= 1.5 else ""),
            ])
    return t


# ----------------------------------------------------------------------------- speculative decoding

def spec_frame(records: pd.DataFrame, timings: list | None = None) -> pd.DataFrame:
    """Per successful request with speculative-decoding counters: deployment, load_point,
    proposed, accepted, verify_steps, acceptance (accepted / proposed)."""
    cols = ["deployment", "load_point", "proposed", "accepted", "verify_steps", "acceptance"]
    if records is None or records.empty:
        return pd.DataFrame(columns=cols)
    if timings is None:
        timings = server_timings(records)
    rows = []
    ok = records["error"].isna().to_numpy() if "error" in records else np.ones(len(records), bool)
    for i, (dep, lp) in enumerate(zip(records["deployment"], records["load_point"])):
        c = spec_counters(timings[i]) if ok[i] else None
        if c is None or c[0] <= 0:
            continue
        rows.append((dep, lp, c[0], c[1], c[2], c[1] / c[0]))
    return pd.DataFrame(rows, columns=cols)


def spec_decoding(spec: pd.DataFrame, colors: dict | None = None,
                  title: str | None = None) -> go.Figure:
    """Histogram of per-request draft acceptance rate per deployment, and mean accepted tokens
    per verification step (sum accepted / sum verify steps) per deployment and load point."""
    if spec is None or spec.empty:
        return empty_figure(title, "no data (no speculative decoding counters)")
    deps = list(dict.fromkeys(spec["deployment"]))
    colors = _colors_for(deps, colors)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["acceptance rate per request (accepted / proposed)",
                                        "mean accepted tokens per verify step"])
    for dep in deps:
        d = spec[spec["deployment"] == dep]
        fig.add_trace(go.Histogram(
            x=_f32(d["acceptance"] * 100), name=esc(dep), legendgroup=esc(dep),
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
            x=xs, y=_f32(ys), name=esc(dep), legendgroup=esc(dep), showlegend=False,
            marker=dict(color=colors[dep]), customdata=cd,
            hovertemplate=f"{esc(dep)} · %{{x}}<br>mean accepted length %{{y:.3g}} tokens/step"
                          "<br>acceptance %{customdata[0]:.1f}% (%{customdata[1]} requests)"
                          "<extra></extra>"), row=1, col=2)
    fig.update_layout(barmode="group", bargap=0.15)
    fig.update_xaxes(title_text="acceptance rate (%)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="% of requests", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="tokens accepted per verify step", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="load point", row=1, col=2)
    return _style(fig, title, height=420, top=100)
