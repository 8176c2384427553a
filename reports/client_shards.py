"""The report's "Client shards" section: where each client shard ran and whether it kept up.

Role in the data flow: `figures/sections.report_figures` adds this section when run.json has
`client_shards` (written by workloads/runner.py for a load point sharded over processes,
`--workers N`, or over Ray actors, `--ray`). It reads only that, and shows per load point and
shard: the node (Ray: the node id's first 12 hex digits; processes: this host), the shard's
clock offset to the driver ± its uncertainty (half the smallest round trip; 0 for processes of
one host, which share CLOCK_MONOTONIC), its send lateness (p99, max) and event-loop lag p99, its
CPU share, and its status: ok, "could not keep up" (the shard's own ClientHealth says it was
client-bound: late sends or a lagging loop beyond the thresholds) or "failed" (its actor or node
died: its records so far are kept).
"""

from __future__ import annotations

from typing import Any

from .data import RunData
from .summary import Cell, Table, format_ms

CAPTION = ("Each load point's client split over shards (--workers N processes, or Ray actors "
           "with --ray). Node: where the shard ran. Clock offset: the shard's clock minus the "
           "driver's, measured NTP-style before the load point, ± half the smallest round trip "
           "(the bound of the error on its send and receive times as the run clock sees them; "
           "latencies measured inside a shard carry none). Send lateness: how long after its "
           "intended send time each request left the shard. A shard that could not keep up "
           "(late sends or a lagging event loop) is marked; its latencies include client delay.")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _ms(v: Any) -> str:
    f = _num(v)
    return "–" if f is None else format_ms(f)


def shard_status(shard: dict) -> tuple[str, bool]:
    """(text, is a problem) of one `client_shards` line."""
    if shard.get("status") == "failed":
        return "failed" + (f": {shard['error']}" if shard.get("error") else ""), True
    health = shard.get("health") or {}
    if health.get("client_bound"):
        return "could not keep up", True
    return "ok", False


def client_shards_table(run: RunData) -> Table | None:
    """One row per load point and shard; None when run.json has no client shards."""
    shards = run.run.get("client_shards") or {}
    if not isinstance(shards, dict) or not any(shards.values()):
        return None
    rows: list[list[Cell]] = []
    starts: list[int] = []
    for key, lines in shards.items():
        if not isinstance(lines, list) or not lines:
            continue
        dep, _, rest = str(key).partition("/")
        lp, _, repeat = rest.partition("/")
        label = f"{dep} @ {run.load_point_label(lp) if lp else '?'}" + (f" (repeat {repeat})"
                                                                       if repeat else "")
        starts.append(len(rows))
        for sh in lines:
            if not isinstance(sh, dict):
                continue
            health = sh.get("health") or {}
            node = sh.get("client_node") or sh.get("hostname") or "this host"
            off, unc = _num(sh.get("clock_offset_s")), _num(sh.get("clock_uncertainty_s"))
            clock = "–" if off is None else f"{format_ms(off)} ± {format_ms(unc or 0.0)}"
            status, bad = shard_status(sh)
            cpu = _num(health.get("cpu_share"))
            rows.append([
                Cell(label, numeric=False), Cell(str(sh.get("shard", "?")), numeric=False),
                Cell(str(node), numeric=False),
                Cell(str(sh.get("n_records", "–"))),
                Cell(clock),
                Cell(_ms(health.get("send_lateness_p99_s")),
                     warn=bool(health.get("client_bound"))),
                Cell(_ms(health.get("send_lateness_max_s"))),
                Cell(_ms(health.get("loop_lag_p99_s"))),
                Cell("–" if cpu is None else f"{cpu:.0%}"),
                Cell(status, numeric=False, warn=bad),
            ])
    if not rows:
        return None
    return Table(headers=["Load point", "Shard", "Node", "Records", "Clock offset (ms)",
                          "Send lateness p99 (ms)", "max (ms)", "Loop lag p99 (ms)", "CPU",
                          "Status"],
                 rows=rows, text_cols=3, group_starts=starts)
