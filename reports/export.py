"""Summary exports of one or several results dirs as CSV / JSON, with stable column names.

    export_summary(results_dir_or_dirs, out_dir, formats=("csv", "json"), groups=None,
                   target=0.9, name=None) -> list[Path]

Files are named `<name>-summary.csv` / `.json` (the rows of every run) and, for several dirs,
`<name>-deltas.*` (`compare.compare_deltas` against the first run / group). `name` defaults to
"report" for one dir and "compare" for several; `infer-bench compare --out X.html` passes X, so
two comparisons written into one folder keep their own exports. The default names never clash
with the results dir's own summary.csv / summary.json, so out_dir may be a results dir.

Summary columns (in this order; every column is always present, empty / null when unknown;
times in seconds, rates per second, shares as fractions 0..1):

    run                       run name (spec / run.json name, else the dir name)
    group                     repeat group label (compare; = run for one dir)
    results_dir               the results dir path as given
    deployment, load_point    the row's key
    rate_rps                  offered rate of the load point (open loop), else empty
    n_requests, n_failed      requests sent / failed (failed count as SLO misses)
    duration_s                measured window
    request_throughput_rps    successful requests per second
    output_throughput_tps     output tokens per second
    {ttft,tpot,itl,e2e}_{mean,p50,p90,p95,p99}_s   latency statistics (itl: per token)
    slo_attainment            joint (TTFT and TPOT) SLO attainment
    goodput_rps               the deployment's goodput at `target` attainment over the rate
                              sweep (same value on each of its rows); empty if undefined
    goodput_lower_bound       true when the target held at every rate (goodput >= value)
    ttft_{queue,prefill,transfer,admission,rest,unattributed}_mean_s
                              mean TTFT split (server-reported phases, the rest = network +
                              client, unattributed = TTFT of requests without server phases)
    itl_prefill_step_share    share of output tokens produced in an engine step that also ran
                              prefill (needs the server's token_steps); empty otherwise
    itl_p50_decode_only_s, itl_p50_prefill_step_s, itl_p99_decode_only_s, itl_p99_prefill_step_s
                              per-token ITL of tokens from decode-only steps / steps with prefill
    spec_acceptance_rate      speculative decoding: accepted / proposed draft tokens
    spec_mean_accepted_len    accepted draft tokens per verification step
    ttfat_{mean,p50,p90,p95,p99}_s
                              time to the first answer token (reasoning / tool-call streams
                              only; empty otherwise)
    n_reasoning_tokens, n_tool_tokens
                              output tokens of those kinds (empty without such streams)
    chips, goodput_per_chip_rps
                              chips the deployment occupies (spec.json; 1 where not recorded)
                              and goodput_rps / chips
    usd_per_m_output_tokens, usd_per_slo_request
                              cost at the price per chip-hour (the run's or `price`); empty
                              without a price (workloads/cost.py)
    energy_j, j_per_output_token, energy_source
                              the measuring host's energy over the load point (workloads/
                              energy.py); empty when unavailable

Delta columns: compare.DELTA_COLUMNS = baseline, group, deployment, load_point, metric,
baseline_value, value, delta, delta_rel, ci_low, ci_high, ci_method, n_runs_baseline, n_runs,
significant, better (see reports/compare.py).

JSON files: {"format": "infer-bench-summary-export" | "infer-bench-deltas-export",
"version": 1, "columns": [...], "rows": [{column: value}, ...]} with NaN written as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .compare import DELTA_COLUMNS, compare_deltas, group_labels, run_names
from .data import RunData, load_run
from .frames import itl_kinds, spec_frame, ttft_parts
from .summary import goodputs
from infer_bench.workloads.cost import add_cost_columns, chips_by_deployment, price_of

EXPORT_VERSION = 1
LAT = [f"{m}_{s}_s" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p90", "p95", "p99")]
TTFAT = [f"ttfat_{s}_s" for s in ("mean", "p50", "p90", "p95", "p99")]
SUMMARY_COLUMNS = (
    ["run", "group", "results_dir", "deployment", "load_point", "rate_rps", "n_requests",
     "n_failed", "duration_s", "request_throughput_rps", "output_throughput_tps"]
    + LAT
    + ["slo_attainment", "goodput_rps", "goodput_lower_bound"]
    + [f"ttft_{p}_mean_s" for p in ("queue", "prefill", "transfer", "admission", "rest",
                                     "unattributed")]
    + ["itl_prefill_step_share", "itl_p50_decode_only_s", "itl_p50_prefill_step_s",
       "itl_p99_decode_only_s", "itl_p99_prefill_step_s", "spec_acceptance_rate",
       "spec_mean_accepted_len"]
    + TTFAT
    + ["n_reasoning_tokens", "n_tool_tokens", "chips", "goodput_per_chip_rps",
       "usd_per_m_output_tokens", "usd_per_slo_request", "energy_j", "j_per_output_token",
       "energy_source"])
# columns copied from the summary as they are (the cost columns once add_cost_columns added them)
_COPIED = (SUMMARY_COLUMNS[5:11] + LAT + ["slo_attainment"] + TTFAT
           + ["n_reasoning_tokens", "n_tool_tokens", "usd_per_m_output_tokens",
              "usd_per_slo_request", "energy_j", "j_per_output_token", "energy_source"])
FORMATS = ("csv", "json")


def _clean(v: Any) -> Any:
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def summary_rows(run: RunData, run_name: str | None = None, group: str | None = None,
                 target: float = 0.9, price: float | None = None) -> pd.DataFrame:
    """The export rows of one run (SUMMARY_COLUMNS, in order); `price` per chip-hour: the
    run's (spec.json) unless given."""
    name = run_name or run.name
    s = add_cost_columns(run.summary, run.spec, price if price is not None else price_of(run.spec))
    parts = ttft_parts(run.records)
    kinds = itl_kinds(run.records)
    spec = spec_frame(run.records)
    gps = goodputs(s, target)
    chips = chips_by_deployment(run.spec)
    rows = []
    for _, r in (s.iterrows() if not s.empty else iter(())):
        dep, lp = r["deployment"], r["load_point"]
        row: dict[str, Any] = {c: None for c in SUMMARY_COLUMNS}
        row.update(run=name, group=group or name, results_dir=str(run.path), deployment=dep,
                   load_point=lp)
        for c in _COPIED:
            if c in r.index:
                row[c] = r[c]
        row["chips"] = chips.get(str(dep), 1)
        g = gps.get(str(dep))
        if g is not None and g.rate is not None:
            row["goodput_rps"] = g.rate
            row["goodput_lower_bound"] = bool(g.lower_bound)
            row["goodput_per_chip_rps"] = g.rate / max(1, row["chips"])
        p = parts[(parts["deployment"] == dep) & (parts["load_point"].astype(str) == str(lp))]
        if not p.empty:
            for ph in ("queue", "prefill", "transfer", "admission", "rest", "unattributed"):
                row[f"ttft_{ph}_mean_s"] = float(p[ph].mean())
        kd = next((v for (d, l), v in kinds.items() if d == dep and str(l) == str(lp)), None)
        if kd is not None and kd.n_with_steps and len(kd.itl):
            dec, pre = kd.itl[~kd.itl_prefill], kd.itl[kd.itl_prefill]
            row["itl_prefill_step_share"] = float(kd.itl_prefill.mean())
            for q in (50, 99):
                row[f"itl_p{q}_decode_only_s"] = float(np.percentile(dec, q)) if len(dec) else None
                row[f"itl_p{q}_prefill_step_s"] = float(np.percentile(pre, q)) if len(pre) else None
        sp = spec[(spec["deployment"] == dep) & (spec["load_point"].astype(str) == str(lp))]
        if not sp.empty:
            row["spec_acceptance_rate"] = float(sp["accepted"].sum() / sp["proposed"].sum())
            if sp["verify_steps"].notna().all() and sp["verify_steps"].sum() > 0:
                row["spec_mean_accepted_len"] = float(sp["accepted"].sum() / sp["verify_steps"].sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _write(df: pd.DataFrame, columns: list[str], stem: Path, fmt: str, kind: str) -> Path:
    out = stem.with_name(f"{stem.name}.{fmt}")     # (with_suffix would cut a dotted name)
    df = df.reindex(columns=columns)
    if fmt == "csv":
        df.to_csv(out, index=False)
    else:
        rows = [{c: _clean(v) for c, v in zip(columns, rec)} for rec in df.itertuples(index=False)]
        out.write_text(json.dumps({"format": f"infer-bench-{kind}-export",
                                   "version": EXPORT_VERSION, "columns": columns, "rows": rows},
                                  indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return out


def export_summary(results_dir_or_dirs: str | Path | Sequence[str | Path], out_dir: str | Path,
                   formats: Sequence[str] = FORMATS, groups: Sequence[str] | None = None,
                   target: float = 0.9, name: str | None = None,
                   price: float | None = None) -> list[Path]:
    """Write the summary (and, for several dirs, the deltas) as CSV and/or JSON into out_dir
    (created) as `<name>-summary.*` / `<name>-deltas.*`; returns the paths written. `formats`:
    any of "csv", "json" (a comma-separated string is accepted too). `groups`: repeat labels as
    in render_compare. `name`: default "report" (one dir) / "compare" (several). Raises
    ValueError for an unknown format. `price` per chip-hour for the cost columns: each run's own
    (spec.json) unless given."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    formats = [f.strip().lower() for f in formats if f and f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown export format(s) {bad or formats!r}; use csv and/or json")
    single = isinstance(results_dir_or_dirs, (str, Path))
    dirs = [results_dir_or_dirs] if single else list(results_dir_or_dirs)
    if not dirs:
        raise ValueError("export_summary needs at least one results dir")
    runs = [load_run(d) for d in dirs]
    names = run_names(runs)
    groups = group_labels(runs, groups)
    summary = pd.concat([summary_rows(r, n, g, target, price)
                         for r, n, g in zip(runs, names, groups)],
                        ignore_index=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    name = name or ("report" if len(runs) == 1 else "compare")
    for fmt in formats:
        written.append(_write(summary, SUMMARY_COLUMNS, out / f"{name}-summary", fmt, "summary"))
    if len(runs) > 1:
        deltas = compare_deltas(runs, groups)
        for fmt in formats:
            written.append(_write(deltas, DELTA_COLUMNS, out / f"{name}-deltas", fmt, "deltas"))
    return written
