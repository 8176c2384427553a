"""infer-bench reports: results dir -> summary tables, plotly figures, one self-contained HTML file.

Public API (imported lazily so `import infer_bench.reports` stays cheap):
    render_report(results_dir, out_path=None) -> Path
    render_compare(dirs, out_path) -> Path
Modules: data (read a results dir), figures, summary (table + verdict), html (rendering).
"""

from __future__ import annotations

__all__ = ["render_report", "render_compare"]


def __getattr__(name: str):
    if name in __all__:
        from . import html
        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
