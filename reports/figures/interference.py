"""Decode interference from co-batched prefill: inter-token gaps over time and ITL by step kind.

  itl_over_time           per-chunk gaps against time, engine steps with co-batched prefill marked
  itl_interference        per-token ITL split by engine step kind (decode-only vs co-batched
                          prefill, from frames.itl_kinds), CDFs + p50/p99 bars
  itl_interference_table  the same as numbers
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from infer_bench.workloads import metrics

from ..data import order_load_points
from ..frames import ItlKinds, successful
from ..summary import Cell, Table, format_ms
from .style import add_lp_menu, cdf_points, colors_for, empty_figure, esc, f32, house_style, lp_list


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
    lps = lp_list(records, load_points)
    deps = list(dict.fromkeys(records["deployment"]))
    colors = colors_for(deps, colors)
    ok = successful(records)
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
                    x=f32(t_all[m]), y=f32(g_all[m] * 1e3), mode="markers",
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
                        x=f32(tcol[m]), y=f32(npf[m]), mode="markers",
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
    add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return house_style(fig, title, height=440)


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
    colors = colors_for(deps, colors)
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
                x, y = cdf_points(v)
                if not len(x):
                    continue
                fig.add_trace(go.Scatter(
                    x=f32(x), y=f32(y * 100), mode="lines", name=esc(f"{dep} · {label}"),
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
                x=[xs_dep, xs_q], y=f32(ys), name=label, legendgroup=label,
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
    add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1)
    return house_style(fig, title, height=480, top=120)


def itl_interference_table(kinds: dict[tuple, ItlKinds], load_points: Sequence,
                           lp_labels: dict | None = None) -> Table:
    """Per deployment x load point: share of tokens from steps with co-batched prefill, and
    p50 / p99 per-token ITL of those tokens against decode-only tokens."""
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
