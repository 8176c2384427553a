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
  report_figures      all of the above that apply to one RunData, with titles and captions
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .data import RunData, chunk_gaps, itl_per_token, order_load_points
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
                    parts = [itl_per_token(t, k) for t, k in zip(d["chunk_times_s"], d["chunk_tokens"])]
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
                  title: str | None = None) -> go.Figure:
    """Per-chunk gaps (ms) against arrival time; engine steps that co-batched prefill marked."""
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
                a, g = chunk_gaps(t, k)
                ts.append(a)
                gs.append(g)
            if not ts or not sum(len(a) for a in ts):
                continue
            t_all, g_all = np.concatenate(ts), np.concatenate(gs)
            if len(t_all) > max_points:
                pick = np.sort(rng.choice(len(t_all), max_points, replace=False))
                t_all, g_all = t_all[pick], g_all[pick]
            kw = dict(secondary_y=False) if has_steps else {}
            fig.add_trace(go.Scatter(
                x=_f32(t_all), y=_f32(g_all * 1e3), mode="markers", name=f"{esc(dep)} chunk gap",
                legendgroup=esc(dep), marker=dict(color=colors[dep], size=4, opacity=0.55),
                hovertemplate=f"{esc(dep)}<br>t=%{{x:.3f}} s<br>gap %{{y:.3g}} ms<extra></extra>",
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
    figure: go.Figure


def report_figures(run: RunData, colors: dict | None = None, target: float = 0.9) -> list[FigureSpec]:
    """The report's figures for one run, in display order."""
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
    out.append(FigureSpec(
        "timeline", "Per-request timeline",
        "A sample of requests in send order. Server queue and prefill come from the engine's own "
        "timing where the server reports it; the rest of the time to first token is network, "
        "admission and transfer. Red bars are failed requests.",
        request_timeline(run.records, load_points=lps, lp_labels=labels)))
    out.append(FigureSpec(
        "itl_time", "Inter-token gaps over time",
        "Per-chunk gaps (not per token) against arrival time"
        + ("; triangles (right axis) mark engine steps that co-batched prefill tokens, the "
           "interference that disaggregation removes." if run.steps is not None else "."),
        itl_over_time(run.records, run.steps, colors, lps, labels)))
    if run.telemetry is not None:
        out.append(FigureSpec("telemetry", "Telemetry", "Hardware and process telemetry sampled "
                              "during the run.", telemetry_figure(run.telemetry, colors)))
    return out
