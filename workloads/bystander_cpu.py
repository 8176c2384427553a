"""CPU used by bystanders during each load point: idle deployments, the client, the rest.

Role in the data flow: reads telemetry rows (telemetry.jsonl, workloads/telemetry.py) and the
load points' time windows (from the request records, `windows_from_records`, or the runner's
own) and returns plain tables for the report: for every load point of deployment Y, the mean
and peak CPU of Y itself, of every other deployment that was sampled meanwhile (an idle one, when
deployments are interleaved and several are alive), of the load generator's client, and, given
the host's CPU count, of everything else. So the report can say "idle deployment X used 0.3% of
a core during Y's load points" or "the client took 18% of a core" from measurements, not
assumptions. Pure functions: rows in, rows out; nothing here reads files.

Which rows count (telemetry.py's schema): a deployment's CPU is its `source == "process"`,
`metric == "proc_cpu_pct"`, `entity == "total"` rows (the sum over its processes, % of one
core); the client's are the `source == "client"` "total" rows; the host's are `sys_cpu_pct`
(% of all cores). A sample counts for a window when start <= t_s <= end.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Mapping

CLIENT = "client"
OTHER = "other"


def _rows(rows) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_dict"):  # a pandas DataFrame
        return rows.to_dict("records")
    return list(rows)


def windows_from_records(records) -> dict[tuple[str, str], tuple[float, float]]:
    """{(deployment, load point): (first send, last end)} from request records (dicts with
    deployment, load_point, send_s, end_s; or a DataFrame of requests.parquet)."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in _rows(records):
        s, e = r.get("send_s"), r.get("end_s")
        times = [float(x) for x in (s, e) if x is not None and x == x]
        if not times:
            continue
        key = (str(r.get("deployment")), str(r.get("load_point")))
        w = out.setdefault(key, [min(times), max(times)])
        w[0], w[1] = min(w[0], *times), max(w[1], *times)
    return {k: (v[0], v[1]) for k, v in out.items()}


def _series(rows) -> tuple[dict[str, tuple[list[float], list[float]]], tuple[list, list]]:
    """({owner: (times, cpu %)} for deployments and the client, (times, system cpu %))."""
    per: dict[str, list[tuple[float, float]]] = {}
    system: list[tuple[float, float]] = []
    for r in _rows(rows):
        metric, t, v = r.get("metric"), r.get("t_s"), r.get("value")
        if t is None or v is None:
            continue
        src = r.get("source")
        if metric == "proc_cpu_pct" and str(r.get("entity")) == "total":
            if src == "process":
                per.setdefault(str(r.get("deployment")), []).append((float(t), float(v)))
            elif src == "client":
                per.setdefault(CLIENT, []).append((float(t), float(v)))
        elif metric == "sys_cpu_pct" and src == "system":
            system.append((float(t), float(v)))
    out = {}
    for k, pts in per.items():
        pts.sort()
        out[k] = ([p[0] for p in pts], [p[1] for p in pts])
    system.sort()
    return out, ([p[0] for p in system], [p[1] for p in system])


def _window(times: list[float], values: list[float], start: float, end: float) -> list[float]:
    return values[bisect.bisect_left(times, start):bisect.bisect_right(times, end)]


def bystander_cpu(telemetry, windows: Mapping[tuple, tuple[float, float]],
                  n_cpus: int | None = None) -> list[dict[str, Any]]:
    """One row per window x process owner sampled in the run. `windows` maps (deployment, load
    point) -> (start, end), or (deployment, load point, repeat) when interleaving runs the same
    load point more than once (rows then carry `repeat`):

        deployment, load_point   the load point (its deployment is the one under load)
        start_s, end_s           its window
        owner                    a deployment name, "client", or "other"
        kind                     "under load" | "idle deployment" | "client" | "other"
        cpu_pct_mean, cpu_pct_max  % of one core (100 = one core busy); None when no sample
        n_samples

    "other" (only with `n_cpus`): the host's CPU minus the deployments' and the client's, in %
    of one core, clipped at 0 (means of different samples: an estimate); its max is None.
    Owners that have no sample in a window get a row with n_samples 0 (not alive, or not
    sampled: telemetry cannot tell which)."""
    series, (st, sv) = _series(telemetry)
    deps = [k for k in series if k != CLIENT]
    out: list[dict[str, Any]] = []
    for key, (start, end) in windows.items():
        dep, lp = str(key[0]), str(key[1])
        extra = {"repeat": key[2]} if len(key) > 2 else {}
        owners = [dep] + [d for d in deps if d != dep] + ([CLIENT] if CLIENT in series else [])
        attributed = 0.0
        for owner in owners:
            vals = _window(*series.get(owner, ([], [])), start, end)
            mean = sum(vals) / len(vals) if vals else None
            attributed += mean or 0.0
            kind = ("under load" if owner == dep else CLIENT if owner == CLIENT
                    else "idle deployment")
            out.append({"deployment": dep, "load_point": lp, **extra, "start_s": start,
                        "end_s": end, "owner": owner, "kind": kind, "cpu_pct_mean": mean,
                        "cpu_pct_max": max(vals) if vals else None, "n_samples": len(vals)})
        if n_cpus:
            vals = _window(st, sv, start, end)
            mean = (max(0.0, sum(vals) / len(vals) * n_cpus - attributed) if vals else None)
            out.append({"deployment": dep, "load_point": lp, **extra, "start_s": start,
                        "end_s": end, "owner": OTHER, "kind": OTHER, "cpu_pct_mean": mean,
                        "cpu_pct_max": None, "n_samples": len(vals)})
    return out


def bystander_summary(table: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (deployment under load, owner): the sample-weighted mean over that deployment's load
    points, the peak, the samples, and a sentence for the report (`text`)."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in table:
        a = acc.setdefault((r["deployment"], r["owner"]), {
            "deployment": r["deployment"], "owner": r["owner"], "kind": r["kind"], "sum": 0.0,
            "n_samples": 0, "cpu_pct_max": None, "load_points": 0})
        a["load_points"] += 1
        n = int(r.get("n_samples") or 0)
        if r.get("cpu_pct_mean") is not None and n:
            a["sum"] += float(r["cpu_pct_mean"]) * n
            a["n_samples"] += n
        if r.get("cpu_pct_max") is not None:
            a["cpu_pct_max"] = max(a["cpu_pct_max"] or 0.0, float(r["cpu_pct_max"]))
    out = []
    for a in acc.values():
        mean = a.pop("sum") / a["n_samples"] if a["n_samples"] else None
        a["cpu_pct_mean"] = mean
        a["text"] = _sentence(a, mean)
        out.append(a)
    return out


def _sentence(a: Mapping[str, Any], mean: float | None) -> str:
    who = {"under load": f"{a['owner']} (under load)", "idle deployment":
           f"idle deployment {a['owner']}", CLIENT: "the client", OTHER: "other processes"}[a["kind"]]
    if mean is None:
        return f"{who}: not sampled during {a['deployment']}'s load points"
    peak = f" (peak {a['cpu_pct_max']:.0f}%)" if a.get("cpu_pct_max") is not None else ""
    return (f"{who} used {mean:.1f}% of a core{peak} during {a['deployment']}'s load points")
