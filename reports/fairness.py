"""The report's "Fair measurement" section: what the verdict's trust rests on, as tables.

Role in the data flow: `figures/sections.report_figures` adds this section when the results dir
has what it needs. It reads only the results dir (run.json's load windows, spec.json's core plan,
telemetry.jsonl, the records) and shows:
- cores: where each deployment, worker and the client ran, and whether the client shared cores;
- CPU by owner during every load point (workloads/bystander_cpu.py): the deployment under load,
  the idle deployments (they must be near 0), the client, the rest of the host;
- sample size per deployment x load point: attainment with its Wilson interval (effective n),
  its half-width and the requests that ±5 points would take (workloads/comparisons.py);
- drift, with repeats: the same load point measured early and late.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from infer_bench.workloads import comparisons as C
from infer_bench.workloads.bystander_cpu import bystander_cpu
from infer_bench.workloads.results import compute_summary, ramp_fraction

from .data import RunData
from .summary import Cell, Table, format_ms, format_pct

CAPTION = ("What the comparison's fairness and precision rest on. Cores: the plan each deployment "
           "was pinned to. CPU by owner, in % of one core, averaged over each load point's window "
           "(telemetry at 10 Hz): an idle deployment should use next to nothing while another is "
           "measured; the client's share is what it took from the cores it shares. Sample size: "
           "the attainment interval (95%, effective n: queued requests are correlated) and the "
           "requests ±5 points would take. Drift: each repeat of a load point, in the order run.")


def _pct1(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if f != f else f"{f:.1f}"


def cores_table(run: RunData) -> Table | None:
    plan = run.spec.get("cpu_plan") or {}
    if not plan or not plan.get("deployments"):
        return None
    rows = []
    for d in plan["deployments"]:
        roles = d.get("roles") or {}
        where = "; ".join(f"{r}: {','.join(map(str, c))}" for r, c in roles.items())
        rows.append([Cell(str(d.get("name")), numeric=False),
                     Cell(where or ("not pinned: " + str(d.get("note") or "")), numeric=False)])
    client = plan.get("client") or []
    rows.append([Cell("client", numeric=False),
                 Cell(f"{','.join(map(str, client))}"
                      + (" (shares the deployments' cores)" if plan.get("client_shares_cores")
                         else " (cores of its own)"), numeric=False,
                      warn=bool(plan.get("client_shares_cores")))])
    return Table(headers=["Process", "CPUs"], rows=rows, text_cols=2,
                 caption="; ".join(plan.get("notes") or []))


def cpu_table(run: RunData) -> Table | None:
    windows = {(w["deployment"], w["load_point"], w.get("repeat", 0)): (w["start_s"], w["end_s"])
               for w in run.run.get("load_windows") or [] if isinstance(w, dict)}
    if not windows or run.telemetry is None or run.telemetry.empty:
        return None
    n_cpus = run.env.get("cpu_count_available") or run.env.get("cpu_count")
    rows_in = bystander_cpu(run.telemetry.to_dict("records"), windows, n_cpus=n_cpus)
    if not rows_in:
        return None
    df = pd.DataFrame(rows_in)
    keys = ["deployment", "load_point"] + (["repeat"] if "repeat" in df else [])
    many = "repeat" in df and df["repeat"].nunique() > 1
    rows = []
    for key, g in df.groupby(keys, sort=False):
        by = {k: g[g["kind"] == k] for k in ("under load", "idle deployment", "client", "other")}
        idle = by["idle deployment"]
        idle_txt = ", ".join(f"{o} {_pct1(v)}" for o, v in zip(idle["owner"], idle["cpu_pct_mean"]))
        idle_max = pd.to_numeric(idle["cpu_pct_mean"], errors="coerce").max() if len(idle) else 0
        rows.append([Cell(str(key[0]), numeric=False),
                     Cell(str(key[1]) + (f" #{int(key[2]) + 1}" if len(key) > 2 and many
                                         else ""), numeric=False),
                     Cell(_pct1(by["under load"]["cpu_pct_mean"].iloc[0])
                          if len(by["under load"]) else "–"),
                     Cell(idle_txt or "–", numeric=False,
                          warn=bool(idle_max == idle_max and idle_max > 5)),
                     Cell(_pct1(by["client"]["cpu_pct_mean"].iloc[0]) if len(by["client"]) else "–"),
                     Cell(_pct1(by["other"]["cpu_pct_mean"].iloc[0]) if len(by["other"]) else "–")])
    return Table(headers=["Under load", "Load point", "Its CPU %", "Idle deployments' CPU %",
                          "Client CPU %", "Rest of host %"], rows=rows, text_cols=2,
                 caption="An idle deployment above 5% of a core is marked: it took CPU from the "
                         "one being measured.")


def sample_size_table(run: RunData) -> Table | None:
    if run.records.empty:
        return None
    ramp = ramp_fraction(run.spec)
    rows = []
    for lp in run.load_points:
        for dep in run.deployments:
            ev = C.attainment_evidence(run.records, dep, lp, slo=run.slo or None,
                                       ramp_fraction=ramp)
            if not ev.get("n"):
                continue
            rows.append([Cell(run.load_point_label(lp), numeric=False),
                         Cell(dep, numeric=False), Cell(str(ev["n"])), Cell(f"{ev['n_eff']:.0f}"),
                         Cell(f"{format_pct(ev['attainment'])}",
                              sub=f"{format_pct(ev['lo'])}–{format_pct(ev['hi'])}"),
                         Cell(f"±{ev['halfwidth'] * 100:.0f} pt", warn=ev["halfwidth"] > 0.05),
                         Cell(str(ev["requests_for_5pt"]))])
    if not rows:
        return None
    return Table(headers=["Load point", "Deployment", "Requests measured", "Effective n",
                          "SLO attainment (95% CI)", "Interval ±", "Requests for ±5 pt"],
                 rows=rows, text_cols=2)


def drift_table(run: RunData) -> Table | None:
    rec = run.records
    if rec.empty or "repeat" not in rec or rec["repeat"].nunique() < 2:
        return None
    s = compute_summary(rec, run.spec, by_repeat=True)
    start = rec.groupby(["deployment", "load_point", "repeat"])["send_s"].min()
    rows = []
    for r in s.to_dict("records"):
        t0 = start.get((r["deployment"], r["load_point"], r["repeat"]))
        rows.append([Cell(run.load_point_label(r["load_point"]), numeric=False),
                     Cell(str(r["deployment"]), numeric=False), Cell(str(int(r["repeat"]) + 1)),
                     Cell(f"{t0:.0f}" if t0 == t0 and t0 is not None else "–"),
                     Cell(format_ms(r.get("ttft_p50_s"))), Cell(format_ms(r.get("ttft_p90_s"))),
                     Cell(format_ms(r.get("tpot_p50_s"))), Cell(format_pct(r.get("slo_attainment")))])
    return Table(headers=["Load point", "Deployment", "Repeat", "Started at (s)", "TTFT p50 (ms)",
                          "TTFT p90 (ms)", "TPOT p50 (ms)", "SLO"], rows=rows, text_cols=2,
                 caption="The same load point measured early and late: a trend across repeats "
                         "of every deployment is drift of the machine, not a difference between "
                         "deployments (the ABBA order cancels a linear one in the comparison).")


def fairness_tables(run: RunData) -> list[Table]:
    return [t for t in (cores_table(run), cpu_table(run), sample_size_table(run), drift_table(run))
            if t is not None]
