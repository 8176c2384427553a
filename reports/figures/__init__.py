"""Plotly figures for the report, one module per report section: pure functions, data in,
`go.Figure` out.

Every figure accepts empty or partial data and then returns a figure carrying a "no data"
annotation instead of raising. Colours are consistent per deployment; user strings are
HTML-escaped before they reach plotly (`style.esc`).

Modules:
  style          house layout, colours, escaping, empty figure, load-point menu (shared helpers)
  latency        latency_cdfs, throughput_latency
  slo            slo_attainment (goodput marked)
  timeline       request_timeline
  ttft           ttft_breakdown (the split: reports/frames.ttft_parts)
  interference   itl_over_time, itl_interference, itl_interference_table
  spec_decoding  spec_decoding
  telemetry      telemetry_figure
  prediction     prediction_figure, prediction_table (from the run's predictions.json)
  sections       FigureSpec and report_figures: every section that applies to one run

The names below are the package's public API (what reports/html.py and tests use).
"""

from __future__ import annotations

from .interference import itl_interference, itl_interference_table, itl_over_time
from .latency import latency_cdfs, throughput_latency
from .prediction import prediction_figure, prediction_table
from .sections import FigureSpec, report_figures
from .slo import slo_attainment
from .spec_decoding import spec_decoding
from .style import deployment_colors, empty_figure, esc
from .telemetry import telemetry_figure
from .timeline import request_timeline
from .ttft import ttft_breakdown

__all__ = [
    "FigureSpec", "deployment_colors", "empty_figure", "esc", "itl_interference",
    "itl_interference_table", "itl_over_time", "latency_cdfs", "prediction_figure",
    "prediction_table", "report_figures", "request_timeline", "slo_attainment", "spec_decoding",
    "telemetry_figure", "throughput_latency", "ttft_breakdown",
]
