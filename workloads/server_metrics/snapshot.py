"""One scrape of a server's Prometheus endpoint, and the deltas between two of them.

Role in the data flow: `recorder.py` scrapes a target before and after each load point
(`scrape_snapshot`); `figures.py` turns the two `Snapshot`s into per-load-point figures with the
pure functions here (`counter_delta`, `histogram_delta`, `histogram_quantile`, `gauge_value`).

Parsing is prometheus_client's text parser (`text_string_to_metric_families`). It names a
counter's samples `<name>_total` even where the server wrote the bare name (TGI's
`tgi_request_success`), so lookups try the name as asked, with `_total` and without it.

Counter resets: a series whose value went down between the scrapes, or whose `<name>_created`
changed (the server restarted the counter), counts its after value as the delta, and the delta is
flagged `reset`. Several series of one name (labels such as model_name, engine, tp_rank) are
summed after each series' own delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

LabelKey = tuple[tuple[str, str], ...]


def label_key(labels: dict[str, str], drop: Iterable[str] = ()) -> LabelKey:
    skip = set(drop)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in skip))


@dataclass
class Snapshot:
    """The samples of one scrape: sample name -> {labels: value}; `t_s` when it was taken."""

    samples: dict[str, dict[LabelKey, float]] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)   # family name -> type
    t_s: float | None = None

    def names(self) -> list[str]:
        """Every sample and family name (a labelled family with no series yet has only the
        latter: its HELP/TYPE lines)."""
        return sorted(set(self.samples) | set(self.families))

    def resolve(self, name: str) -> str | None:
        """The sample name under which `name` was stored (see the module note on `_total`)."""
        for cand in (name, name + "_total", name[:-6] if name.endswith("_total") else None):
            if cand and cand in self.samples:
                return cand
        return None

    def series(self, name: str, match: dict[str, str] | None = None) -> dict[LabelKey, float]:
        """Every series of `name` whose labels include `match` (empty when absent)."""
        real = self.resolve(name)
        if real is None:
            return {}
        out = self.samples[real]
        if match:
            out = {k: v for k, v in out.items() if all((mk, mv) in k for mk, mv in match.items())}
        return out

    def has(self, name: str) -> bool:
        return self.resolve(name) is not None


def parse_snapshot(text: str, t_s: float | None = None) -> Snapshot:
    """Prometheus text exposition -> Snapshot; raises ValueError on text that does not parse."""
    snap = Snapshot(t_s=t_s)
    for fam in text_string_to_metric_families(text):
        snap.families[fam.name] = fam.type
        for s in fam.samples:
            snap.samples.setdefault(s.name, {})[label_key(s.labels)] = float(s.value)
    return snap


# ----------------------------------------------------------------------------- deltas

@dataclass
class Delta:
    value: float
    reset: bool = False          # at least one series was reset between the scrapes
    series: int = 0              # series that contributed


def _created_changed(before: Snapshot, after: Snapshot, base: str, key: LabelKey) -> bool:
    b = before.series(base + "_created").get(key)
    a = after.series(base + "_created").get(key)
    return a is not None and b is not None and a != b


def _base(name: str) -> str:
    for suf in ("_total", "_count", "_sum", "_bucket"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def counter_delta(before: Snapshot, after: Snapshot, name: str,
                  match: dict[str, str] | None = None) -> Delta | None:
    """Sum over series of (after - before) of a counter (or a histogram's _sum/_count/_bucket);
    None when the after scrape lacks it. A series new in the after scrape counts from 0."""
    a_series = after.series(name, match)
    if not a_series:
        return None
    b_series = before.series(name, match)
    base = _base(after.resolve(name) or name)
    total, reset = 0.0, False
    for key, a in a_series.items():
        b = b_series.get(key)
        ckey = tuple(kv for kv in key if kv[0] != "le")
        if b is None:
            d = a
        elif a < b or _created_changed(before, after, base, ckey):
            d, reset = a, True
        else:
            d = a - b
        if math.isfinite(d):
            total += d
    return Delta(total, reset, len(a_series))


@dataclass
class HistogramDelta:
    buckets: list[tuple[float, float]]   # (upper bound, cumulative count delta), +Inf last
    sum: float
    count: float
    reset: bool = False

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def histogram_delta(before: Snapshot, after: Snapshot, name: str,
                    match: dict[str, str] | None = None) -> HistogramDelta | None:
    """A histogram's bucket, sum and count deltas, summed over its series (per `le`).

    A series counts as reset when its count went down or its _created changed; then all its
    samples use their after values."""
    a_count = after.series(name + "_count", match)
    if not a_count:
        return None
    b_count = before.series(name + "_count", match)
    reset_keys = set()
    for key, a in a_count.items():
        b = b_count.get(key)
        if b is not None and (a < b or _created_changed(before, after, name, key)):
            reset_keys.add(key)

    def d(sample: str, key: LabelKey, series_key: LabelKey) -> float:
        a = after.series(sample, match).get(key, 0.0)
        if series_key in reset_keys:
            return a
        b = before.series(sample, match).get(key)
        return a - b if b is not None else a

    count = sum(d(name + "_count", k, k) for k in a_count)
    total = sum(d(name + "_sum", k, k) for k in after.series(name + "_sum", match))
    by_le: dict[float, float] = {}
    for key in after.series(name + "_bucket", match):
        labels = dict(key)
        le = float(labels.pop("le", "inf"))
        skey = label_key(labels)
        by_le[le] = by_le.get(le, 0.0) + d(name + "_bucket", key, skey)
    buckets = sorted(by_le.items())
    if not buckets or not math.isinf(buckets[-1][0]):
        buckets.append((math.inf, count))
    return HistogramDelta(buckets, total, count, bool(reset_keys))


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Estimate the q-quantile from cumulative bucket counts, as Prometheus' histogram_quantile
    does: linear within the bucket holding rank q*total (the first bucket's lower bound is 0, or
    its upper bound when that is <= 0); a rank in the +Inf bucket gives the largest finite
    bound. None without observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for i, (le, c) in enumerate(buckets):
        if c >= rank:
            if math.isinf(le):
                finite = [b for b, _ in buckets if not math.isinf(b)]
                return finite[-1] if finite else None
            if i == 0 and le <= 0:
                return le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return None


def gauge_value(snap: Snapshot, name: str, match: dict[str, str] | None = None,
                how: Callable[[list[float]], float] = sum) -> float | None:
    """A gauge's value, its series combined by `how` (sum for counts, max for usage ratios)."""
    vals = [v for v in snap.series(name, match).values() if math.isfinite(v)]
    return how(vals) if vals else None
