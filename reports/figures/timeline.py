"""Per-request timeline figure.

  request_timeline    Gantt-like per-request phases (queue, prefill, KV transfer, admission,
                      decode) of a sample of requests; failed requests marked
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..data import as_float
from .style import add_lp_menu, as_text, empty_figure, esc, f32, house_style, lp_list


SERVER_PHASES = [("server_queue_s", "queue"), ("server_prefill_s", "prefill"),
                 ("server_transfer_s", "transfer"), ("server_admission_s", "admission")]
PHASE_COLORS = {
    "queue": "#bab0ac", "prefill": "#f28e2b", "transfer": "#b07aa1", "admission": "#76b7b2", "wait": "#edc948", "ttft": "#edc948",
    "decode": "#4e79a7", "failed": "#e15759",
}


def request_timeline(records: pd.DataFrame, max_per_deployment: int = 30,
                     load_points: Sequence | None = None, lp_labels: dict | None = None,
                     title: str | None = None) -> go.Figure:
    """Gantt-like phases of a sample of requests: queue, prefill, wait for first token, decode."""
    if records is None or records.empty or records["send_s"].notna().sum() == 0:
        return empty_figure(title)
    lps = lp_list(records, load_points)
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
                rid = as_text(r["request_id"])
                ticks.append(esc(rid if rid.startswith(dep[:8]) else f"{dep} · {rid}"))
        max_rows = max(max_rows, len(rows))
        seg: dict[str, dict[str, list]] = {p: {"y": [], "base": [], "x": [], "cd": []} for p in phases}

        def put(p, y, start, length, r):
            if p in seg and np.isfinite(start) and np.isfinite(length) and length >= 0:
                seg[p]["y"].append(y)
                seg[p]["base"].append(start)
                seg[p]["x"].append(length)
                seg[p]["cd"].append([esc(r["deployment"]), esc(r["request_id"]),
                                     esc(as_text(r["error"]))])

        for y, r in enumerate(rows):
            send, first, last = r["send_s"], r["first_token_s"], r["last_token_s"]
            if as_text(r["error"]):
                cands = (r.get("end_s", np.nan), last, first, send + r["e2e_s"])
                end = next((float(v) for v in cands if as_float(v) == as_float(v)), send)
                put("failed", y, send, max(end - send, 0.0), r)
                continue
            if has_server:
                t = send
                for col, p in server_cols:
                    dur = as_float(r.get(col))
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
                    x=f32(seg[p]["base"]), y=seg[p]["y"], mode="markers", name=phase_names[p],
                    legendgroup=p, marker=dict(symbol="x", size=9, color=PHASE_COLORS[p]),
                    customdata=seg[p]["cd"],
                    hovertemplate="%{customdata[0]} · request %{customdata[1]}<br>failed, sent at "
                                  "%{x:.3f} s<br>%{customdata[2]}<extra></extra>"))
                trace_lps.append(lp)
            fig.add_trace(go.Bar(
                orientation="h", y=seg[p]["y"], x=f32(seg[p]["x"]), base=f32(seg[p]["base"]),
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
    add_lp_menu(fig, trace_lps, lps, lp_labels, active=len(lps) - 1, relayouts=relayouts)
    return house_style(fig, title, height=int(min(1400, max(360, 120 + 15 * max_rows))))
