"""The report's figure sections for one run: which apply, in display order, with their captions.

  FigureSpec          one section: key, title, caption, figure, tables, note
  report_figures      every section that applies to one RunData (TTFT split, ITL interference,
                      speculative decoding, predicted vs measured and client shards only with
                      their data)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go

from ..client_shards import CAPTION as SHARDS_CAPTION
from ..client_shards import client_shards_table, shard_status
from ..data import RunData, server_timings
from ..fairness import CAPTION as FAIRNESS_CAPTION
from ..fairness import fairness_tables
from ..frames import itl_kinds, spec_frame, ttft_parts
from .interference import itl_interference, itl_interference_table, itl_over_time
from .latency import latency_cdfs, throughput_latency
from .prediction import prediction_figure, prediction_table
from .server_side import server_metrics_table, server_phase_breakdown
from .slo import slo_attainment
from .spec_decoding import spec_decoding
from .style import deployment_colors
from .telemetry import telemetry_figure
from .timeline import request_timeline
from .ttft import ttft_breakdown


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
               "server), so its TTFT is one unattributed bar"
               + ("; its engine's own metrics are in the server-side aggregates below."
                  if run.server_metrics is not None else ".") if unattributed else ""),
            ttft_breakdown(run.records, lps, labels, run.deployments)))
    sm_table = server_metrics_table(run.server_metrics, labels, run.deployments)
    if sm_table is not None:
        engines = run.server_metrics_info.get("endpoints") or {}
        out.append(FigureSpec(
            "server_phases", "Where the time goes: server-side aggregates (from /metrics)",
            "Each target's own Prometheus metrics, scraped before and after every load point: "
            "the deltas of its per-request histograms give the mean time per request in queue, "
            "prefill, KV transfer (disaggregated stacks that export it) and decode, as the "
            "server measures them (◆: the server's own mean TTFT). These are aggregates over a "
            "load point, not per-request splits; they work for external servers (engines: "
            + ", ".join(f"{d}: {e.get('engine') or 'none'}" for d, e in engines.items())
            + "). The client-side view above adds network and client time.",
            server_phase_breakdown(run.server_metrics, labels, run.deployments),
            tables=[sm_table]))
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
    tables = fairness_tables(run)
    if tables:
        out.append(FigureSpec("fairness", "Fair measurement and sample size", FAIRNESS_CAPTION,
                              None, tables=tables))
    shards = client_shards_table(run)
    if shards is not None:
        bad = [f"shard {sh.get('shard')} of {key}: {shard_status(sh)[0]}"
               for key, lines in (run.run.get("client_shards") or {}).items()
               for sh in lines or [] if isinstance(sh, dict) and shard_status(sh)[1]]
        out.append(FigureSpec("client_shards", "Client shards", SHARDS_CAPTION, None,
                              tables=[shards], note="; ".join(bad)))
    return out
