"""Per-load-point figures from two scrapes (pure): before/after Snapshots -> FigureRows.

Role in the data flow: `recorder.py` calls `load_point_figures` after each load point with the
scrapes taken before and after it, the number of requests it sent and the highest value the
telemetry sampler saw of each gauge during it; the rows go to server_metrics.csv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .mappings import (
    Count, EngineMapping, Gauge, Hist, Ratio, SecondsPerRequest, Spec, detect_engines,
)
from .snapshot import Snapshot, counter_delta, gauge_value, histogram_delta, histogram_quantile

RESET_NOTE = "counter reset between scrapes: the after value is used as the delta"


@dataclass
class FigureRow:
    figure: str
    value: float
    unit: str
    source: str            # the metric names the value came from
    note: str = ""


@dataclass
class LoadPointFigures:
    engine: str                               # "vllm", "dynamo+vllm", "unknown engine"
    rows: list[FigureRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exported: list[str] = field(default_factory=list)   # unknown engine: every name exported

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "rows": [r.__dict__ for r in self.rows],
                "warnings": self.warnings, "exported": self.exported}


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _eval(spec: Spec, before: Snapshot, after: Snapshot, n_requests: int | None,
          gauge_max: dict[str, float]) -> list[FigureRow]:
    if isinstance(spec, Hist):
        match = dict(spec.match) or None
        h = histogram_delta(before, after, spec.name, match)
        if h is None:
            return []
        src = spec.name + (("{" + ",".join(f'{k}="{v}"' for k, v in spec.match) + "}")
                           if spec.match else "")
        note = _join(spec.note, RESET_NOTE if h.reset else "")
        if h.count <= 0:
            return [FigureRow(spec.figure + "_count", 0.0, "observations", src, note)]
        rows = [FigureRow(spec.figure + "_mean", h.mean, "s", src + " _sum/_count", note),
                FigureRow(spec.figure + "_count", h.count, "observations", src + "_count", note)]
        for q, tag in ((0.5, "p50"), (0.9, "p90")):
            v = histogram_quantile(q, h.buckets)
            if v is not None:
                rows.append(FigureRow(f"{spec.figure}_{tag}", v, "s", src + "_bucket",
                                      _join(note, "estimated from bucket deltas")))
        return rows
    if isinstance(spec, SecondsPerRequest):
        d = counter_delta(before, after, spec.name)
        if d is None:
            return []
        note = _join(spec.note, RESET_NOTE if d.reset else "")
        rows = [FigureRow(spec.figure + "_total", d.value, "s", spec.name, note)]
        if n_requests:
            rows.append(FigureRow(spec.figure + "_mean", d.value / n_requests, "s",
                                  f"{spec.name} / {n_requests} requests sent", note))
        return rows
    if isinstance(spec, Gauge):
        how = max if spec.how == "max" else sum
        v = gauge_value(after, spec.name, how=how)
        if v is None:
            return []
        rows = [FigureRow(spec.figure + "_after", v * spec.scale, spec.unit, spec.name, spec.note)]
        if spec.name in gauge_max:
            rows.append(FigureRow(spec.figure + "_max", gauge_max[spec.name] * spec.scale,
                                  spec.unit, spec.name + " (telemetry samples)", spec.note))
        return rows
    if isinstance(spec, Ratio):
        num = counter_delta(before, after, spec.num)
        den = counter_delta(before, after, spec.den)
        if num is None or den is None:
            return []
        total = den.value + (num.value if spec.den_excludes_num else 0.0)
        note = _join(spec.note, RESET_NOTE if num.reset or den.reset else "")
        if total <= 0:
            return []
        src = (f"{spec.num} / ({spec.num} + {spec.den})" if spec.den_excludes_num
               else f"{spec.num} / {spec.den}")
        return [FigureRow(spec.figure, num.value / total, "fraction", src, note)]
    if isinstance(spec, Count):
        d = counter_delta(before, after, spec.name)
        if d is None:
            return []
        return [FigureRow(spec.figure, d.value, spec.unit,
                          spec.name, _join(spec.note, RESET_NOTE if d.reset else ""))]
    raise TypeError(f"unknown spec {spec!r}")


def load_point_figures(before: Snapshot, after: Snapshot, n_requests: int | None = None,
                       gauge_max: dict[str, float] | None = None,
                       engines: list[EngineMapping] | None = None) -> LoadPointFigures:
    """The figures of one load point. Per figure, the first spec (in the detected mappings'
    order) that the after scrape exports answers. Unknown engine: no figures, a warning and
    the list of exported names."""
    engines = detect_engines(after) if engines is None else engines
    if not engines:
        exported = sorted(after.samples) or sorted(after.families)
        shown = ", ".join(exported[:30]) + (f", ... ({len(exported)} in all)"
                                            if len(exported) > 30 else "")
        return LoadPointFigures(
            "unknown engine",
            warnings=[f"unknown engine: no mapping recognises its metrics, no figure derived; "
                      f"it exports {shown or 'nothing'}"],
            exported=exported)
    out = LoadPointFigures("+".join(m.engine for m in engines))
    done: set[str] = set()
    for m in engines:
        for spec in m.specs:
            if spec.figure in done:
                continue
            rows = _eval(spec, before, after, n_requests, gauge_max or {})
            if rows:
                done.add(spec.figure)
                out.rows += rows
    if any(RESET_NOTE in r.note for r in out.rows):
        out.warnings.append("a counter was reset between the scrapes (server restarted?): "
                            "its after value is used as the load point's delta")
    return out
