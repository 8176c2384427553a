"""One self-contained HTML report from a results dir (and a side-by-side comparison of several).

    render_report(results_dir, out_path=None) -> Path   # writes <results_dir>/report.html by default
    render_compare(dirs, out_path) -> Path               # several runs side by side

The page is rendered with jinja2 (autoescape on) from templates/report.html.j2. plotly.js is
embedded once, inline (`<script id="plotly-js">`); each figure travels as JSON in a
`<script type="application/json">` block (with `<`, `>`, `&` and U+2028/9 escaped, so no string
from the results dir can close the block or start markup) and is drawn with `Plotly.newPlot`.
No external URL is referenced: no CDN, no web fonts, works offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup

from .data import RunData, load_run, order_load_points
from .compare import compare_deltas, deltas_table, group_labels, run_names
from .figures import (FigureSpec, deployment_colors, itl_interference, itl_interference_table,
                      latency_cdfs, report_figures, throughput_latency, ttft_breakdown)
from .frames import itl_kinds, ttft_parts
from .summary import format_ms, summary_table
from .verdict import verdict, verdict_for_run

TEMPLATE = "report.html.j2"
DEFAULT_TARGET = 0.9
# deployment spec keys shown as columns (others go to the spec JSON below)
DEPLOYMENT_KEYS = ["name", "kind", "mode", "model", "url", "threads", "prefill_workers",
                   "decode_workers", "transport", "chips"]
CLIENT_LAG_P90_S = 0.05  # p90 (send - intended send) above this: the client fell behind


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    js = get_plotlyjs()
    if "</script" in js.lower():  # never expected; would break the page
        js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return js


def safe_json_for_script(text: str) -> str:
    """JSON text made safe inside <script>: no `</`, `<!--`, `-->` or line separators survive."""
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def figure_json(fig: go.Figure) -> Markup:
    return Markup(safe_json_for_script(fig.to_json(validate=False, engine="json")))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _pretty(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default)


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2", "html.j2"),
                                            default=True, default_for_string=True),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("infer-bench")
    except Exception:
        return "dev"


# ----------------------------------------------------------------------------- per-run context

@dataclass
class RunView:
    name: str
    status: str
    status_class: str
    notes: list[str]
    deployment_headers: list[str]
    deployments: list[list[str]]
    spec_json: str
    env_json: str
    run_json: str
    env_items: list[tuple[str, str]]
    versions: list[tuple[str, str]]
    command: str
    prefix: str = ""


def _fmt_scalar(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    return str(v)


def _run_view(run: RunData, prefix: str = "") -> RunView:
    deps = [d for d in (run.spec.get("deployments") or []) if isinstance(d, dict)]
    keys = [k for k in DEPLOYMENT_KEYS if any(k in d for d in deps)]
    extra_keys: list[str] = []
    for d in deps:
        for k, v in d.items():
            if k not in keys and k not in extra_keys and isinstance(v, (str, int, float, bool)):
                extra_keys.append(k)
    keys += extra_keys[:4]
    rows = [[_fmt_scalar(d.get(k)) for k in keys] for d in deps]
    if not deps and run.deployments:
        keys, rows = ["name"], [[d] for d in run.deployments]
    env = run.env or {}
    hw = env.get("hardware") if isinstance(env.get("hardware"), dict) else {}
    items: list[tuple[str, str]] = []
    for k in ("cpu", "cores", "memory", "memory_gb", "gpus"):
        if k in hw:
            v = hw[k]
            if k == "gpus" and isinstance(v, list):
                v = ", ".join(g.get("name", str(g)) if isinstance(g, dict) else str(g) for g in v) or "none"
            items.append((k, _fmt_scalar(v)))
    for k, v in hw.items():
        if k not in ("cpu", "cores", "memory", "memory_gb", "gpus") and not isinstance(v, (dict, list)):
            items.append((k, _fmt_scalar(v)))
    for k in ("hostname", "platform", "os", "python"):
        if k in env and not isinstance(env[k], (dict, list)):
            items.append((k, _fmt_scalar(env[k])))
    vers = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    versions = [(k, _fmt_scalar(v)) for k, v in vers.items()]
    cmd = env.get("command_line") or env.get("command") or env.get("argv") or ""
    if isinstance(cmd, list):
        cmd = " ".join(str(c) for c in cmd)
    status = run.status
    return RunView(
        name=run.name, status=status,
        status_class=status if status in ("complete", "incomplete") else "unknown",
        notes=list(run.notes), deployment_headers=keys, deployments=rows,
        spec_json=_pretty(run.spec) if run.spec else "(spec.json missing)",
        env_json=_pretty(run.env) if run.env else "(env.json missing)",
        run_json=_pretty(run.run) if run.run else "(run.json missing)",
        env_items=items, versions=versions, command=str(cmd), prefix=prefix)


# ----------------------------------------------------------------------------- warnings

def _warnings(run: RunData, label: str = "") -> list[str]:
    pre = f"{label}: " if label else ""
    out: list[str] = []
    for w in run.run.get("warnings") or []:
        out.append(pre + (w if isinstance(w, str) else _fmt_scalar(w)))
    rec = run.records
    lp_label = run.load_point_label
    if not rec.empty:
        failed = rec[rec["error"].notna()]
        for (dep, lp), g in failed.groupby(["deployment", "load_point"], sort=False):
            n_all = int(((rec["deployment"] == dep) & (rec["load_point"] == lp)).sum())
            kinds = g["error_type"].fillna(g["error"].map(lambda e: str(e)[:80]))
            top = kinds.value_counts().head(3)
            what = ", ".join(f"{k} ×{n}" for k, n in top.items())
            out.append(f"{pre}{dep}, load point {lp_label(lp)}: {len(g)} of {n_all} requests "
                       f"failed ({what}); they count as SLO misses.")
        lag = rec["send_s"] - rec["intended_send_s"]
        for (dep, lp), g in rec.assign(_lag=lag).groupby(["deployment", "load_point"], sort=False):
            lg = g["_lag"].dropna()
            if len(lg) >= 5 and float(np.percentile(lg, 90)) > CLIENT_LAG_P90_S:
                out.append(f"{pre}{dep}, load point {lp_label(lp)}: requests left the client late "
                           f"(p90 {format_ms(np.percentile(lg, 90))} ms, max {format_ms(lg.max())} ms "
                           "after their intended send time); the load generator may be the "
                           "bottleneck (client-bound).")
        src = rec["n_output_source"].dropna().astype(str)
        odd = src[~src.isin(["usage"])]
        if len(odd):
            counts = ", ".join(f"{k} ×{n}" for k, n in odd.value_counts().items())
            out.append(f"{pre}output token counts not from the server's usage for {len(odd)} "
                       f"request(s) ({counts}).")
    s = run.summary
    if not s.empty and "client_bound" in s:
        for _, r in s.iterrows():
            if bool(r.get("client_bound")) and r.get("client_bound") == r.get("client_bound"):
                msg = (f"{pre}{r['deployment']}, load point {lp_label(r['load_point'])}: "
                       "flagged client-bound by the load generator.")
                if msg not in out:
                    out.append(msg)
    missing = [d for d in run.deployments if rec.empty or d not in set(rec["deployment"])]
    if missing and not s.empty:
        missing = [d for d in missing if d not in set(s["deployment"])]
    for d in missing:
        out.append(f"{pre}{d}: no requests recorded for this deployment.")
    return out


def _slo_text(slo: dict) -> str:
    parts = []
    if isinstance(slo.get("ttft_s"), (int, float)):
        parts.append(f"TTFT ≤ {format_ms(slo['ttft_s'])} ms")
    if isinstance(slo.get("tpot_s"), (int, float)):
        parts.append(f"TPOT ≤ {format_ms(slo['tpot_s'])} ms")
    return " and ".join(parts)


def _iso(v: Any) -> str:
    try:
        if isinstance(v, (int, float)) and math.isfinite(v) and v > 1e8:
            t = datetime.fromtimestamp(v, timezone.utc)
        else:
            t = datetime.fromisoformat(str(v))
    except (TypeError, ValueError, OverflowError):
        return str(v)
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S UTC")
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: dict) -> str | None:
    a = run.get("started_at", run.get("started"))
    b = run.get("finished_at", run.get("finished"))
    try:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            sec = float(b) - float(a)
        else:
            sec = (datetime.fromisoformat(str(b)) - datetime.fromisoformat(str(a))).total_seconds()
    except (TypeError, ValueError):
        return None
    if sec < 0:
        return None
    m, s = divmod(int(round(sec)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{sec:.1f} s")


def _render(ctx: dict) -> str:
    return _env().get_template(TEMPLATE).render(**ctx)


def _write(text: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def _figs_ctx(figs: Iterable[FigureSpec]) -> list[dict]:
    return [dict(key=f.key, title=f.title, caption=f.caption, note=f.note, tables=list(f.tables),
                 json=figure_json(f.figure) if f.figure is not None else None)
            for f in figs]


# ----------------------------------------------------------------------------- public API

def build_context(run: RunData, target: float = DEFAULT_TARGET) -> dict:
    """Everything the template needs for one run (exposed for tests and other front-ends)."""
    colors = deployment_colors(run.deployments)
    labels = {lp: run.load_point_label(lp) for lp in run.load_points}
    view = _run_view(run)
    meta: list[tuple[str, str]] = []
    started = run.run.get("started_at", run.run.get("started"))
    if started is not None:
        meta.append(("started", _iso(started)))
    dur = _duration(run.run)
    if dur:
        meta.append(("took", dur))
    meta.append(("deployments", str(len(run.deployments))))
    meta.append(("load points", str(len(run.load_points))))
    meta.append(("requests", f"{len(run.records):,}"))
    if not run.records.empty:
        nf = int(run.records["error"].notna().sum())
        meta.append(("failed", f"{nf:,}"))
    slo_text = _slo_text(run.slo)
    if slo_text:
        meta.append(("SLO", slo_text))
    return dict(
        title=run.name, compare=False, runs=[view], header_meta=meta,
        verdict=[f.text for f in verdict_for_run(run, target, labels)],
        table=summary_table(run.summary, labels), text_cols=2, dep_col=2, colors=colors,
        slo_text=slo_text,
        summary_note=("This summary was recomputed from requests (the results dir had none)."
                      if run.summary_recomputed else ""),
        figures=_figs_ctx(report_figures(run, colors, target)), sections=[],
        warnings=_warnings(run),
        plotly_js=Markup(_plotly_js()), version=_version(),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def render_report(results_dir: str | Path, out_path: str | Path | None = None,
                  target: float = DEFAULT_TARGET) -> Path:
    """Render `report.html` for one results dir (default: inside it); returns the path written."""
    run = load_run(results_dir)
    out = Path(out_path) if out_path is not None else Path(results_dir) / "report.html"
    return _write(_render(build_context(run, target)), out)


def render_compare(dirs: Sequence[str | Path], out_path: str | Path,
                   target: float = DEFAULT_TARGET, groups: Sequence[str] | None = None) -> Path:
    """Several runs side by side: summary rows of each (deployment shown as 'run / deployment'),
    latency CDFs / throughput-latency / TTFT split / ITL interference overlaid, and the deltas of
    the headline metrics against the first run (group) with 95% confidence intervals
    (`compare.compare_deltas`). `groups`: one label per dir; dirs sharing a label are repeats
    of one configuration (default: each run's name, so repeats of one named spec group
    together). Returns the path written."""
    if not dirs:
        raise ValueError("render_compare needs at least one results dir")
    runs = [load_run(d) for d in dirs]
    groups = group_labels(runs, groups)
    names = run_names(runs)
    recs, sums, views, warns, all_deps = [], [], [], [], []
    for run, name in zip(runs, names):
        prefix = f"{name} / "
        rec = run.records.copy()
        if not rec.empty:
            rec["deployment"] = prefix + rec["deployment"].astype(str)
            recs.append(rec)
        s = run.summary.copy()
        if not s.empty:
            s["deployment"] = prefix + s["deployment"].astype(str)
            s.insert(0, "run", name)
            sums.append(s)
        all_deps += [prefix + d for d in run.deployments]
        v = _run_view(run, prefix=prefix)
        v.name = name
        views.append(v)
        warns += _warnings(run, label=name)
    records = pd.concat(recs, ignore_index=True) if recs else pd.DataFrame()
    summary = pd.concat(sums, ignore_index=True) if sums else pd.DataFrame()
    colors = deployment_colors(all_deps)
    lps = order_load_points(list(summary.get("load_point", [])) + list(records.get("load_point", [])))
    slo = runs[0].slo
    figs = [FigureSpec("cdf", "Latency distributions",
                       "Empirical CDFs of successful requests of every run, one line per run and "
                       "deployment; the menu picks the load point (matched by its label across runs). "
                       "ITL is per token.",
                       latency_cdfs(records, colors, lps, slo=slo))]
    if not summary.empty and len(lps) > 1:
        figs.append(FigureSpec("throughput", "Latency vs throughput",
                               "p50 (solid) and p90 (dashed) TTFT and TPOT against achieved "
                               "request throughput.", throughput_latency(summary, colors, slo=slo)))
    if not records.empty and not ttft_parts(records).empty:
        figs.append(FigureSpec("ttft_parts", "Where the time to first token goes",
                               "Mean TTFT split into the phases each server reports (queue, "
                               "prefill, KV transfer, decode admission) and the rest; servers "
                               "that report none show one unattributed bar.",
                               ttft_breakdown(records, lps)))
    kinds = itl_kinds(records) if not records.empty else {}
    if any(k.n_with_steps and len(k.itl) for k in kinds.values()):
        figs.append(FigureSpec("itl_interference", "Decode interference from co-batched prefill",
                               "Per-token ITL split by the engine step that produced the token: "
                               "decode-only (solid) or co-batched with prefill (dashed, hatched).",
                               itl_interference(kinds, colors, lps),
                               tables=[itl_interference_table(kinds, lps)]))
    sections = []
    order = list(dict.fromkeys(groups))
    if len(order) > 1:
        try:
            deltas = compare_deltas(runs, groups)
            table = deltas_table(deltas)
            note = ("" if not deltas.empty else
                    "No deployment and load point was measured by both the baseline and another "
                    "run, so there is nothing to difference.")
        except Exception as exc:  # never lose the comparison page over the statistics
            table, note = None, f"Deltas could not be computed ({type(exc).__name__}: {exc})."
        reps = {g: groups.count(g) for g in order}
        sections.append(dict(
            key="deltas", title=f"Differences vs {order[0]}",
            caption=("Headline metrics of every run against the baseline "
                     f"“{order[0]}” for each deployment and load point both measured. "
                     + ("Repeats (runs with the same label): "
                        + ", ".join(f"{g} ×{n}" for g, n in reps.items()) + ". "
                        if any(n > 1 for n in reps.values()) else "")
                     + "With 3 or more repeats on both sides the 95% interval is a Welch "
                       "t-interval of the per-run values; otherwise a block bootstrap of the "
                       "per-request samples in send order (queued requests are correlated); "
                       "attainment by Newcombe's interval. The same statistics as the verdict."),
            note=note, tables=[table] if table is not None and table.rows else []))
    meta = [("runs", str(len(runs))), ("requests", f"{len(records):,}")]
    ctx = dict(
        title="Comparison: " + " vs ".join(names), compare=True, runs=views, header_meta=meta,
        verdict=[f.text for f in verdict(records, summary, slo=slo or None, deployments=all_deps,
                                          spec=runs[0].spec, target=target, load_points=lps)],
        table=summary_table(summary), text_cols=2, dep_col=2, colors=colors,
        slo_text=_slo_text(slo), summary_note="Deployments are named 'run / deployment'.",
        figures=_figs_ctx(figs), sections=sections, warnings=warns,
        plotly_js=Markup(_plotly_js()),
        version=_version(), generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return _write(_render(ctx), Path(out_path))
