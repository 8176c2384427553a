"""The verdict: who wins on what, only where the measurements can tell, in sentences.

Role in the data flow: `reports/html.py` calls `verdict_for_run(run)` (one results dir) and
`verdict(...)` (the compare page's pooled records); the figures and their intervals come from
`workloads.comparisons` / `workloads.stats` (the same implementation `compare` and the gates use).
A winner is named only where the 95% interval of the difference excludes no-difference; otherwise
the sentence says "no significant difference (±x%)", x being the largest relative difference the
data cannot rule out. Goodput per chip: each deployment's goodput interval (block bootstrap of its
SLO hits) divided by its chips; a winner only where the two intervals do not overlap (conservative:
non-overlap implies a significant difference, not the other way round). An attainment curve that
rises with the rate beyond its intervals is flagged and its goodput not read. With more than two
deployments (named targets), goodput ranks all of them and, at each load point, every deployment
is compared with the first one (the baseline), the confidence split over the pairs (Bonferroni), so
identical deployments still get a winner at most 5% of the time in all. TTFAT p50/p90 join the
compared figures where a run streams reasoning or tool calls. The verdict also
says how much each figure rests on: attainment intervals wider than ±5 points (and the requests
±5 would take), p99 figures with fewer than 5 samples beyond them, and where the client's lateness
changed attainment (it is counted from the intended send time).

Cost and energy (point estimates, no interval; every deployment measured):
with a price per chip-hour, $ per million output tokens and $ per request that met the SLO per
deployment and load point (workloads/cost.py: the summary's cost columns, which the caller adds
with `add_cost_columns`); with energy counters, J per output token (workloads/energy.py), which
is the measuring host's energy: for a URL target on another host it is not the target's.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from infer_bench.workloads import comparisons as C
from infer_bench.workloads import stats
from infer_bench.workloads.cost import add_cost_columns, price_of
from infer_bench.workloads.results import ramp_fraction, summary_rates

from .summary import Finding, format_value
from infer_bench.workloads.metrics import finite_or_none as _num

VERDICT_KEYS = ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p90_s", "itl_p99_s",
                "output_throughput_tps", "slo_attainment")


def _goodput_finding(records, deps: Sequence[str], rates: Mapping[Any, float], slo, ramp: float,
                     target: float, chips: Mapping[str, int] | None) -> list[Finding]:
    out: list[Finding] = []
    gps = {d: C.goodput_evidence(records, d, rates, slo=slo, ramp_fraction=ramp, target=target)
           for d in deps}
    gps = {d: g for d, g in gps.items() if g is not None}
    if len(gps) < 2:
        return out
    per = {d: max(1, int((chips or {}).get(d) or 1)) for d in gps}
    parts, readable = [], {}
    for d, g in gps.items():
        if not g.monotone:
            pairs = ", ".join(f"{a:g} → {b:g} req/s" for a, b in g.offending)
            out.append(Finding(f"{d}: SLO attainment rises with the rate beyond its intervals "
                               f"({pairs}); its goodput is not read from this curve (noise or "
                               "drift: measure more requests per point or add --repeats).",
                               metric="goodput"))
            continue
        k = per[d]
        ge = "≥ " if g.lower_bound else ""
        parts.append(f"{d} {ge}{format_value(g.rate / k)} (95% CI {format_value(g.lo / k)}–"
                     f"{format_value(g.hi / k)}{'+' if g.hi_censored else ''}) per chip on {k}")
        readable[d] = (g.rate / k, g.lo / k, g.hi / k, g)
    if not parts:
        return out
    txt = f"Goodput at {target:.0%} joint SLO attainment, req/s per chip: " + "; ".join(parts) + "."
    if len(readable) >= 2:
        ranked = sorted(readable.items(), key=lambda kv: kv[1][0], reverse=True)
        (w, (_, lw, _, gw)), (r2, (_, _, hr, g2)) = ranked[0], ranked[1]
        if gw.lower_bound and g2.lower_bound:
            who = "Both" if len(readable) == 2 else f"{w} and {r2} both"
            txt += (f" {who} met the target at every rate measured: the sweep does not separate "
                    "them (measure higher rates).")
        elif lw > hr:
            txt += f" Best per chip: {w} (the intervals do not overlap)."
        else:
            txt += f" No significant difference per chip between {w} and {r2} (the intervals overlap)."
    out.insert(0, Finding(txt, metric="goodput"))
    return out


def verdict(records: pd.DataFrame, summary: pd.DataFrame, *, slo: Any, deployments: Sequence[str],
            spec: Mapping | None = None, target: float = 0.9,
            lp_labels: Mapping | None = None, chips: Mapping[str, int] | None = None,
            load_points: Sequence[Any] | None = None, price: float | None = None,
            energy_note: str | None = None) -> list[Finding]:
    """Findings for the deployments measured: goodput per chip of all of them; at each load point
    every other deployment against the first (the baseline: one pair for two deployments, the
    Bonferroni family widened over the pairs for more); cost (`price` per chip-hour, read from
    the summary's cost columns) and energy findings for every deployment. `energy_note`: why
    energy is unavailable (run.json's "energy" note)."""
    out: list[Finding] = []
    if records is None or records.empty or "deployment" not in records:
        return [Finding("No requests measured.")]
    present = [d for d in deployments if (records["deployment"] == d).any()]
    costs = cost_energy_findings(summary, present, price=price, spec=spec, lp_labels=lp_labels,
                                 energy_note=energy_note)
    if len(present) < 2:
        return [Finding(f"One deployment measured ({present[0]}); nothing to compare."
                        if present else "No deployments measured.")] + costs
    a, others = present[0], present[1:]
    ramp = ramp_fraction(spec)
    chips = chips if chips is not None else chips_of(spec)   # each deployment's, from spec.json
    lps = list(load_points) if load_points is not None else list(
        dict.fromkeys(records["load_point"]))
    rates: dict[Any, float] = {}
    if summary is not None and not summary.empty and "load_point" in summary:
        s = summary[summary["deployment"] == a]
        for lp, r in zip(s["load_point"], summary_rates(s)):
            if r == r:
                rates[lp] = float(r)
    if len(rates) >= 1:
        out.extend(_goodput_finding(records, present, rates, slo, ramp, target, chips))
    keys = verdict_keys(records)
    family = 1.0 - (1.0 - stats.CONFIDENCE) / len(others)   # Bonferroni over the pairs too
    thin, tails = [], set()
    for lp in lps:
        label = str((lp_labels or {}).get(lp, lp))
        for b in others:
            cs = C.compare_load_point(records, [a, b], lp, slo=slo, ramp_fraction=ramp,
                                      keys=keys, family_confidence=family)
            if not cs:
                continue
            won = [c for c in cs if c.significant]
            tied = [c for c in cs if not c.significant]
            bits = [f"{C.BY_KEY[c.metric].label}: {stats.describe(c)}" for c in won]
            if tied:
                bits.append("no significant difference in " + ", ".join(
                    f"{C.BY_KEY[c.metric].label} ({_tie_width(c)})" for c in tied))
            where = f"At {label}" if len(others) == 1 else f"At {label}, {b} vs {a}"
            out.append(Finding(f"{where}: " + "; ".join(bits) + ".", metric="load_point",
                               winners=tuple((c.metric, c.better) for c in won)))
            for c in cs:
                h = C.BY_KEY[c.metric]
                if h.stat == "p99" and min(c.n_a, c.n_b) > 0 and \
                        stats.tail_count(int(min(c.n_a, c.n_b)), "p99") < 5:
                    tails.add(h.label)
        for d in present:
            ev = C.attainment_evidence(records, d, lp, slo=slo, ramp_fraction=ramp)
            if ev.get("n") and ev["halfwidth"] > 0.05:
                thin.append((label, d, ev))
    out.extend(costs)
    if thin:
        worst = max(thin, key=lambda t: t[2]["halfwidth"])
        label, d, ev = worst
        out.append(Finding(
            f"Sample size: attainment intervals are up to ±{ev['halfwidth'] * 100:.0f} points "
            f"({d} at {label}: {ev['n']} requests, {ev['n_eff']:.0f} effective); ±5 points would "
            f"take about {ev['requests_for_5pt']} requests per load point. A verdict on attainment "
            "or goodput from these points is tentative.", metric="sample_size"))
    if tails:
        out.append(Finding(f"{', '.join(sorted(tails))}: fewer than 5 samples lie beyond the 99th "
                           "percentile, so these figures rest on the few slowest requests.",
                           metric="sample_size"))
    out.extend(_omission_findings(summary, lp_labels))
    if any(f.metric == "load_point" for f in out):
        m = len(keys) * len(others)
        each = 1 - (1 - stats.CONFIDENCE) / m
        if len(others) == 1:
            fam = (f"at each load point the {len(keys)} figures are one family at 95% confidence "
                   f"(each interval at {each:.1%}, Bonferroni), so two identical deployments get a "
                   "winner on any of them at most 5% of the time")
        else:
            fam = (f"each of {', '.join(others)} is compared with the first deployment, {a}; at "
                   f"each load point the {len(keys)} figures of the {len(others)} pairs are one "
                   f"family at 95% confidence (each interval at {each:.2%}, Bonferroni), so "
                   "identical deployments get a winner on any of them at most 5% of the time")
        out.append(Finding(
            f"How to read this: {fam}; \"±x%\" is the largest difference the data cannot rule "
            "out. Latencies are counted from the intended send time.", metric="method"))
    return out


def verdict_keys(records) -> tuple[str, ...]:
    """The figures the verdict compares: `VERDICT_KEYS`, plus TTFAT p50/p90 where the run has
    reasoning or tool-call streams (there the first token is not the first answer token)."""
    if C.has_answer_split(records):
        return VERDICT_KEYS + tuple(h.key for h in C.ANSWER_HEADLINE)
    return VERDICT_KEYS


def _tie_width(c: stats.Comparison) -> str:
    """The "±x%" of an insignificant comparison; "±>100%" where the data cannot rule out a
    difference of any size (an overloaded point whose queue kept growing)."""
    text = stats.describe(c)
    inner = text[text.index("(") + 1:text.rindex(")")] if "(" in text else "no interval"
    if inner.startswith("±") and inner.endswith("%") and not inner.endswith("pp"):
        try:
            if float(inner[1:-1]) > 100:
                return "±>100%"
        except ValueError:
            pass
    return inner


def _omission_findings(summary: pd.DataFrame | None, lp_labels) -> list[Finding]:
    if summary is None or summary.empty or "slo_attainment_from_send" not in summary:
        return []
    out = []
    for _, r in summary.iterrows():
        a, s = r.get("slo_attainment"), r.get("slo_attainment_from_send")
        try:
            a, s = float(a), float(s)
        except (TypeError, ValueError):
            continue
        if math.isfinite(a) and math.isfinite(s) and abs(a - s) >= 0.01:
            label = (lp_labels or {}).get(r["load_point"], r["load_point"])
            out.append(Finding(
                f"{r['deployment']} at {label}: the client sent late, so attainment counted from "
                f"the intended send time ({a:.0%}, used here) differs from the actual send "
                f"({s:.0%}).", metric="omission"))
    return out


def _sig(v: float) -> str:
    """3 significant digits without an exponent for small values (0.05, 0.00123)."""
    return format_value(v) if abs(v) >= 1 else f"{v:.3g}"


ENERGY_SCOPE = {"nvml": "NVML, the GPUs of the measuring host",
                "rapl": "RAPL, the CPU packages of the measuring host"}


def cost_energy_findings(summary: pd.DataFrame | None, deployments: Sequence[str], *,
                         price: float | None, spec: Mapping | None = None,
                         lp_labels: Mapping | None = None,
                         energy_note: str | None = None) -> list[Finding]:
    """Per deployment and load point: $ per million output tokens and $ per request that met the
    SLO (when `price` is given and the summary has the cost columns), J per output token (when
    energy was measured), or one line saying energy was unavailable and why."""
    if summary is None or summary.empty or "deployment" not in summary:
        return []
    order = {str(d): i for i, d in enumerate(deployments)}
    s = summary[summary["deployment"].astype(str).isin(order)]
    s = s.assign(_order=s["deployment"].astype(str).map(order)).sort_values("_order", kind="stable")
    lps = list(dict.fromkeys(summary["load_point"]))
    out: list[Finding] = []
    if price is not None and "usd_per_m_output_tokens" in s:
        per_lp = []
        for lp in lps:
            parts = []
            for _, r in s[s["load_point"] == lp].iterrows():
                tok, req = _num(r.get("usd_per_m_output_tokens")), _num(r.get("usd_per_slo_request"))
                chips = int(_num(r.get("chips")) or 1)
                t_txt = (f"${_sig(tok)} per million output tokens" if tok is not None else
                         "no output token" if _num(r.get("load_output_tokens")) == 0 else
                         "$ per token unknown")
                r_txt = (f"${_sig(req)} per request that met the SLO" if req is not None else
                         "no request met the SLO" if _num(r.get("load_slo_met")) == 0 else
                         "$ per good request unknown")
                parts.append(f"{r['deployment']} ({chips} chip{'s' if chips != 1 else ''}) "
                             f"{t_txt}, {r_txt}")
            if parts:
                per_lp.append(f"at {(lp_labels or {}).get(lp, lp)}: " + "; ".join(parts))
        known = pd.to_numeric(s.get("load_wall_s", pd.Series(dtype=float)), errors="coerce")
        if not known.notna().any():
            out.append(Finding(f"Cost at ${price:g} per chip-hour: unknown (this results dir "
                               "records no wall time per load point).", metric="cost"))
        elif per_lp:
            out.append(Finding(
                f"Cost at ${price:g} per chip-hour (chips x each load point's wall time, "
                "point estimates): " + "; ".join(per_lp) + ".", metric="cost"))
    if "energy_source" in s and s["energy_source"].notna().any():
        per_lp, sources = [], set()
        for lp in lps:
            parts = []
            for _, r in s[s["load_point"] == lp].iterrows():
                j = _num(r.get("j_per_output_token"))
                if j is not None:
                    parts.append(f"{r['deployment']} {_sig(j)} J")
                    sources.add(str(r.get("energy_source")))
            if parts:
                per_lp.append(f"at {(lp_labels or {}).get(lp, lp)}: "
                              + ", ".join(parts) + " per output token")
        if per_lp:
            scope = "; ".join(ENERGY_SCOPE.get(x, x) for x in sorted(sources))
            txt = (f"Energy ({scope}, over each whole load point, idle deployments and the "
                   "client included; point estimates): " + "; ".join(per_lp) + ".")
            urls = [str(d.get("name")) for d in ((spec or {}).get("deployments") or [])
                    if isinstance(d, Mapping) and d.get("kind") == "url"
                    and str(d.get("name")) in set(map(str, deployments))]
            if urls:
                txt += (f" {', '.join(urls)} {'is a URL target' if len(urls) == 1 else 'are URL targets'}: "
                        "on another host, this is the measuring host's energy, not the target's.")
            out.append(Finding(txt, metric="energy"))
        elif energy_note:
            why = energy_note.removeprefix("energy unavailable: ")
            out.append(Finding(f"Energy per output token: unavailable ({why}).", metric="energy"))
    return out


def chips_of(spec: Mapping | None) -> dict[str, int] | None:
    """deployment -> chips (CPU cores / GPUs) it occupies, from spec.json, for goodput per chip."""
    deps = [d for d in ((spec or {}).get("deployments") or []) if isinstance(d, dict) and d.get("name")]
    out = {str(d["name"]): int(d.get("chips") or 1) for d in deps}
    return out or None


def verdict_for_run(run, target: float = 0.9, lp_labels: Mapping | None = None,
                    chips: Mapping[str, int] | None = None,
                    price: float | None = None) -> list[Finding]:
    """The verdict of one results dir (`reports.data.RunData`); chips from its spec.json unless
    given; `price` per chip-hour: spec.json's unless given."""
    price = price if price is not None else price_of(run.spec)
    energy = run.run.get("energy") or {}
    return verdict(run.records, add_cost_columns(run.summary, run.spec, price),
                   slo=run.slo or None, deployments=run.deployments,
                   spec=run.spec, target=target, lp_labels=lp_labels,
                   chips=chips if chips is not None else chips_of(run.spec),
                   load_points=run.load_points, price=price,
                   energy_note=energy.get("note") if energy.get("source") == "unavailable" else None)
