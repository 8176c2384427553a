"""infer-bench reports: results dir -> summary tables, plotly figures, one self-contained HTML file.

Public API (imported lazily so `import infer_bench.reports` stays cheap):
    render_report(results_dir, out_path=None, target=0.9) -> Path
    render_compare(dirs, out_path, target=0.9, groups=None) -> Path
    export_summary(results_dir_or_dirs, out_dir, formats=("csv", "json"), groups=None,
                   target=0.9) -> list[Path]
Modules: data (read a results dir, predictions.json included), frames (per-request frames the
figures and exports share), figures/ (one module per report section, `report_figures` assembles
them), summary (table + verdict), compare (deltas with confidence intervals), export (CSV /
JSON), html (rendering). Nothing here imports `backends/` or `workloads.planning`: predicted vs
measured is computed by workloads/planning/predict.py and read from the results dir.
"""

from __future__ import annotations

__all__ = ["render_report", "render_compare", "export_summary"]


def __getattr__(name: str):
    if name in ("render_report", "render_compare"):
        from . import html
        return getattr(html, name)
    if name == "export_summary":
        from . import export
        return export.export_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
