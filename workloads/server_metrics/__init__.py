"""The engines' own Prometheus metrics, as per-load-point figures (issue 16, part 2).

Data flow:

    runner (_measure_load_point): recorder.before(dep, url) ... load ... recorder.after(...)
      recorder.py   scrape (workloads.telemetry.scrape_prometheus) -> snapshot.parse_snapshot
      mappings.py   detect_engines: which engine's metric names the endpoint exports
      figures.py    counter / histogram deltas -> FigureRows (queue, prefill, decode, KV
                    transfer, TTFT; KV-cache usage, prefix-cache hit rate, preemptions,
                    running / waiting)
      files.py      server_metrics.csv (appended), server_metrics.json (endpoints, warnings)
    reports/ read them with files.load_server_metrics.
"""

from .figures import FigureRow, LoadPointFigures, load_point_figures
from .files import (
    CSV_COLUMNS, SERVER_METRICS_CSV, SERVER_METRICS_JSON, load_server_metrics,
)
from .mappings import MAPPINGS, EngineMapping, detect_engines, gauge_names
from .recorder import ServerMetricsRecorder, deployment_metrics_url
from .snapshot import (
    Snapshot, counter_delta, histogram_delta, histogram_quantile, parse_snapshot,
)

__all__ = [
    "CSV_COLUMNS", "EngineMapping", "FigureRow", "LoadPointFigures", "MAPPINGS",
    "SERVER_METRICS_CSV", "SERVER_METRICS_JSON", "ServerMetricsRecorder", "Snapshot",
    "counter_delta", "deployment_metrics_url", "detect_engines", "gauge_names",
    "histogram_delta", "histogram_quantile", "load_point_figures", "load_server_metrics",
    "parse_snapshot",
]
