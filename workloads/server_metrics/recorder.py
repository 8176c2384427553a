"""Scrape each target's /metrics before and after each load point; write the figures.

Role in the data flow: `workloads/runner.py` (`RunSession._measure_load_point`) calls
`recorder.before(name, url, headers)` just before a load point and
`recorder.after(name, load_point, repeat, n_requests, window)` just after it. `after` turns the
two scrapes into figures (`figures.load_point_figures`), takes each gauge's highest value during
the load point from the telemetry sampler's /metrics rows (telemetry.jsonl, read from where it
was left), and appends to server_metrics.csv / rewrites server_metrics.json (files.py).

A missing or unreachable endpoint is a warning (once per deployment, in server_metrics.json and
so in the report), never an error: the run goes on.
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path
from typing import Any

from ..telemetry import metrics_url, scrape_prometheus
from .figures import LoadPointFigures, load_point_figures
from .files import SERVER_METRICS_CSV, SERVER_METRICS_JSON, append_rows, write_json
from .mappings import MAPPINGS, Gauge
from .snapshot import Snapshot, parse_snapshot

SCRAPE_TIMEOUT_S = 5.0


def deployment_metrics_url(spec: Any, base_url: str) -> str:
    """An external target's `metrics_url` when given, else <base url>/metrics."""
    return getattr(spec, "metrics_url", None) or metrics_url(base_url)


class _TelemetryTail:
    """The /metrics gauge rows of telemetry.jsonl, read incrementally (only new lines)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.offset = 0
        self.how = {s.name: s.how for m in MAPPINGS for s in m.specs if isinstance(s, Gauge)}
        self.rows: dict[tuple[str, str], dict[float, list[float]]] = {}  # (dep, metric) -> t -> vals

    def _read(self) -> None:
        if self.path is None or not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1          # leave a half-written last line for next time
        self.offset += end
        for line in data[:end].splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("source") != "prometheus" or r.get("metric") not in self.how:
                continue
            self.rows.setdefault((r.get("deployment", ""), r["metric"]), {}) \
                .setdefault(float(r["t_s"]), []).append(float(r["value"]))

    def max_in(self, deployment: str, window: tuple[float, float] | None) -> dict[str, float]:
        self._read()
        out: dict[str, float] = {}
        if window is None:
            return out
        lo, hi = window
        for (dep, metric), by_t in self.rows.items():
            if dep != deployment:
                continue
            combine = max if self.how[metric] == "max" else sum
            vals = [combine(v) for t, v in by_t.items() if lo <= t <= hi]
            if vals:
                out[metric] = max(vals)
        return out


class ServerMetricsRecorder:
    """Before/after scrapes of every target's metrics endpoint, for the runner."""

    def __init__(self, out_dir: str | Path, telemetry_path: str | Path | None = None,
                 timeout_s: float = SCRAPE_TIMEOUT_S):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SERVER_METRICS_CSV).unlink(missing_ok=True)
        (self.out / SERVER_METRICS_JSON).unlink(missing_ok=True)
        self.timeout_s = timeout_s
        self.tail = _TelemetryTail(Path(telemetry_path) if telemetry_path else None)
        self.state: dict[str, Any] = {"endpoints": {}, "warnings": [], "load_points": []}
        self._pending: dict[str, tuple[str, dict | None, Snapshot | str]] = {}

    @property
    def warnings(self) -> list[str]:
        return self.state["warnings"]

    def _warn_once(self, text: str) -> None:
        if text not in self.state["warnings"]:
            self.state["warnings"].append(text)

    def _scrape(self, url: str, headers: dict | None) -> Snapshot | str:
        try:
            text = scrape_prometheus(url, self.timeout_s, headers=headers)
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            return str(getattr(e, "reason", e))
        try:
            return parse_snapshot(text)
        except ValueError as e:
            return f"not Prometheus text ({e})"

    def before(self, deployment: str, url: str, headers: dict | None = None) -> None:
        # an endpoint that failed once is not asked again (each try may cost a timeout)
        failed = self.state["endpoints"].get(deployment, {}).get("error")
        self._pending[deployment] = (url, headers, failed or self._scrape(url, headers))

    def after(self, deployment: str, load_point: str, repeat: int = 0,
              n_requests: int | None = None,
              window: tuple[float, float] | None = None) -> LoadPointFigures | None:
        """Figures of the load point just measured (None when a scrape failed: warned)."""
        if deployment not in self._pending:
            return None
        url, headers, before = self._pending.pop(deployment)
        after = before if isinstance(before, str) else self._scrape(url, headers)
        ep = self.state["endpoints"].setdefault(deployment, {"url": url})
        lp_entry: dict[str, Any] = {"deployment": deployment, "load_point": load_point,
                                    "repeat": repeat, "engine": None, "warnings": []}
        self.state["load_points"].append(lp_entry)
        if isinstance(before, str) or isinstance(after, str):
            err = before if isinstance(before, str) else after
            ep["error"] = err
            msg = (f"{deployment}: no server-side metrics from {url} ({err}); the run went on "
                   "without them")
            lp_entry["warnings"].append(msg)
            self._warn_once(msg)
            self._save()
            return None
        try:
            figs = load_point_figures(before, after, n_requests,
                                      self.tail.max_in(deployment, window))
        except Exception as e:  # noqa: BLE001 (server-side figures must never stop a run)
            msg = f"{deployment}: server-side figures failed ({type(e).__name__}: {e})"
            lp_entry["warnings"].append(msg)
            self._warn_once(msg)
            self._save()
            return None
        ep["engine"] = figs.engine
        ep.pop("error", None)
        if figs.exported:
            ep["exported"] = figs.exported
        lp_entry["engine"] = figs.engine
        for w in figs.warnings:
            lp_entry["warnings"].append(w)
            self._warn_once(f"{deployment}: {w}")
        append_rows(self.out / SERVER_METRICS_CSV, (
            {"deployment": deployment, "load_point": load_point, "repeat": repeat,
             "figure": r.figure, "value": r.value, "unit": r.unit, "engine": figs.engine,
             "source": r.source, "note": r.note}
            for r in figs.rows if r.value is not None and math.isfinite(r.value)))
        self._save()
        return figs

    def _save(self) -> None:
        write_json(self.out / SERVER_METRICS_JSON, self.state)
