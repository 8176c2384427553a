"""The results dir's server-metrics files: their names, columns, writing and reading.

    server_metrics.csv   one row per (deployment, load point, repeat, figure), appended after
                         each load point (a run that fails half-way keeps what it measured):
                         deployment, load_point, repeat, figure, value, unit, engine, source
                         (the metric names it came from), note (per transfer / per batch,
                         counter reset, ...)
    server_metrics.json  {"endpoints": {deployment: {"url", "engine", "exported"?, "error"?}},
                          "warnings": [one line each], "load_points": [{deployment,
                          load_point, repeat, engine, warnings}]}, rewritten after each one

Written by `recorder.ServerMetricsRecorder` (the runner), read by `reports/` through
`load_server_metrics` only.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

SERVER_METRICS_CSV = "server_metrics.csv"
SERVER_METRICS_JSON = "server_metrics.json"
CSV_COLUMNS = ["deployment", "load_point", "repeat", "figure", "value", "unit", "engine",
               "source", "note"]


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)
        f.flush()


def write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def load_server_metrics(results_dir: str | Path):
    """(figures DataFrame or None, the json dict or {}) of a results dir; never raises for a
    missing or unreadable file (a run without server metrics has neither)."""
    import pandas as pd
    path = Path(results_dir)
    frame = None
    p = path / SERVER_METRICS_CSV
    if p.exists():
        try:
            frame = pd.read_csv(p, dtype={"deployment": str, "load_point": str, "figure": str,
                                          "unit": str, "engine": str, "source": str,
                                          "note": str})
            frame["note"] = frame["note"].fillna("")
            frame["unit"] = frame["unit"].fillna("")
        except (OSError, ValueError, pd.errors.ParserError):
            frame = None
    info: dict[str, Any] = {}
    j = path / SERVER_METRICS_JSON
    if j.exists():
        try:
            info = json.loads(j.read_text())
        except (OSError, ValueError):
            info = {}
    return frame, info
