"""Read a results dir for the report: `workloads.results.load_results`, normalised for the figures.

The report reads only a results dir (never `backends/`), through the one reader of its schema
(`workloads/results.py`, docs/design.md schema_version 1); a dir that reader refuses (e.g. a run
stopped before its first request) still gives a RunData, with what it could read and a note why.
Everything returned is normalised so figures and tables can assume the columns exist: list
columns become Python lists, deployments and load points have a stable order; telemetry.jsonl
and predictions.json (written after the run by `workloads/planning/predict.py`) are read here too,
and server_metrics.csv/json (the engines' own /metrics per load point) through their one reader,
`workloads.server_metrics.files.load_server_metrics`.

Metrics come from `workloads/metrics.py` (the one definition); this module adds only what the
report derives from server timing: which engine step produced each output token
(`token_prefill_flags`), ITL samples labelled by it (`itl_split`), speculative-decoding counters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from infer_bench.workloads import metrics
from infer_bench.workloads.records import RECORD_COLUMNS
from infer_bench.workloads.server_metrics.files import load_server_metrics
from infer_bench.workloads.results import (ResultsError, load_predictions, load_results,
                                           summary_rates)

FLOAT_RECORD_COLUMNS = [
    "intended_send_s", "send_s", "first_token_s", "last_token_s", "end_s", "n_input", "n_output",
    "ttft_s", "tpot_s", "e2e_s", "server_queue_s", "server_prefill_s", "server_transfer_s",
    "server_admission_s", "server_decode_s", "first_answer_token_s", "ttfat_s",
]


@dataclass
class Predictions:
    """predictions.json of a run: predicted vs measured per deployment x load point."""

    rows: pd.DataFrame | None = None    # None: nothing predicted (the note says why)
    note: str = ""                      # how the model was fitted, or why there are no rows
    seconds: float = 0.0                # time the fit and re-simulation took

    @property
    def ok(self) -> bool:
        return self.rows is not None and not self.rows.empty


@dataclass
class RunData:
    """Everything the report needs from one results dir."""

    path: Path
    run: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame | None = None
    telemetry: pd.DataFrame | None = None
    predictions: Predictions | None = None   # None: the results dir has no predictions.json
    server_metrics: pd.DataFrame | None = None   # server_metrics.csv (the engines' own /metrics)
    server_metrics_info: dict = field(default_factory=dict)   # server_metrics.json
    notes: list[str] = field(default_factory=list)   # problems met while reading
    summary_recomputed: bool = False

    @property
    def name(self) -> str:
        for src in (self.run, self.spec):
            for key in ("name", "run_name"):
                if isinstance(src.get(key), str) and src[key]:
                    return src[key]
        return self.path.resolve().name

    @property
    def status(self) -> str:
        return str(self.run.get("status") or "unknown")

    @property
    def slo(self) -> dict:
        slo = self.spec.get("slo") or {}
        return slo if isinstance(slo, dict) else {}

    @property
    def deployments(self) -> list[str]:
        names: list[str] = []
        for d in self.spec.get("deployments") or []:
            n = d.get("name") if isinstance(d, dict) else d
            if n is not None and str(n) not in names:
                names.append(str(n))
        present = _ordered_unique(
            list(self.summary.get("deployment", [])) + list(self.records.get("deployment", [])))
        extra = [str(n) for n in present if str(n) not in names]
        # spec deployments with no data at all are still listed (they may have failed to start)
        return names + extra

    @property
    def load_points(self) -> list[Any]:
        vals = list(self.summary.get("load_point", [])) + list(self.records.get("load_point", []))
        found = order_load_points(vals)
        # the spec's order (a rate sweep, low to high) wins for the load points it names
        named = [lp.get("name") for lp in (self.spec.get("load_points") or [])
                 if isinstance(lp, dict) and lp.get("name") is not None]
        by_str = {str(v): v for v in found}
        first = [by_str[str(n)] for n in named if str(n) in by_str]
        return first + [v for v in found if v not in first]

    def load_point_label(self, lp: Any) -> str:
        text = str(lp)
        rate = self.offered_rate(lp)
        if rate is not None and f"{rate:g}" not in text:
            return f"{text} · {rate:g} req/s"
        return text

    def offered_rate(self, lp: Any) -> float | None:
        if "rate_rps" in self.summary:
            s = self.summary[self.summary["load_point"] == lp]["rate_rps"]
            s = pd.to_numeric(s, errors="coerce").dropna()
            if len(s):
                return float(s.iloc[0])
        return None


def as_float(v: Any) -> float:
    """float(v), NaN where v is None or not a number (cells of a summary / predictions row)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def order_load_points(values: Iterable[Any]) -> list[Any]:
    """Unique load points; numeric ones sorted, otherwise in order of first appearance."""
    uniq = [v for v in _ordered_unique(values) if not _is_missing(v)]
    try:
        if all(isinstance(v, (int, float, np.integer, np.floating)) for v in uniq):
            return sorted(uniq)
    except TypeError:
        pass
    return uniq


def _ordered_unique(values: Iterable[Any]) -> list[Any]:
    out, seen = [], set()
    for v in values:
        key = v if isinstance(v, (str, int, float, np.integer, np.floating)) else repr(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _is_missing(v: Any) -> bool:
    """None, NaN, pd.NA, NaT (scalars only; a list is never missing)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple, dict, np.ndarray)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- reading

def load_run(results_dir: str | Path) -> RunData:
    """Read a results dir into a RunData; never raises for missing optional files."""
    path = Path(results_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"results dir not found: {path}")
    data = RunData(path=path)
    try:
        res = load_results(path)
    except ResultsError as exc:  # not (yet) a readable results dir: say why, show what there is
        data.notes.append(str(exc))
        data.run = _read_json(path / "run.json", data.notes) or {}
        data.spec = _read_json(path / "spec.json", data.notes) or {}
        data.env = _read_json(path / "env.json", data.notes) or {}
    else:
        data.run, data.spec, data.env = res.run, res.spec, res.env
        data.records, data.summary, data.steps = res.records, res.summary, res.steps
        data.summary_recomputed = bool(res.summary_meta.get("recomputed"))
    data.telemetry = _read_jsonl(path / "telemetry.jsonl", data.notes)
    data.predictions = _read_predictions(path, data.notes)
    data.server_metrics, data.server_metrics_info = load_server_metrics(path)
    data.records = normalize_records(data.records)
    data.summary = _normalize_summary(data.summary)
    if data.steps is not None and data.steps.empty:
        data.steps = None
    if data.telemetry is not None and data.telemetry.empty:
        data.telemetry = None
    return data


def _read_predictions(path: Path, notes: list[str]) -> Predictions | None:
    try:
        body = load_predictions(path)
    except ResultsError as exc:
        notes.append(str(exc))
        return None
    if body is None:
        return None
    rows = body.get("rows")
    return Predictions(rows=None if rows is None else pd.DataFrame(rows),
                       note=str(body.get("note") or ""), seconds=float(body.get("seconds") or 0.0))


def _read_json(p: Path, notes: list[str]) -> Any:
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{p.name} unreadable: {exc}")
        return None


def _read_jsonl(p: Path, notes: list[str]) -> pd.DataFrame | None:
    if not p.exists():
        return None
    rows, bad = [], 0
    try:
        with p.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    bad += 1  # typically a half-written last line of a running benchmark
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError as exc:
        notes.append(f"{p.name} unreadable: {exc}")
        return None
    if bad:
        notes.append(f"{p.name}: skipped {bad} malformed line(s)")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- normalising

def _to_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, float) and math.isnan(v):
        return []
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    try:
        return [x for x in list(v)]
    except TypeError:
        return []


def normalize_records(df: pd.DataFrame) -> pd.DataFrame:
    """Copy with every schema column present and typed (floats, lists, text or None)."""
    df = pd.DataFrame(df).copy() if df is not None else pd.DataFrame()
    for col in RECORD_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["deployment"] = df["deployment"].map(lambda v: "" if v is None else str(v))
    for col in FLOAT_RECORD_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["chunk_times_s"] = [[float(x) for x in _to_list(v)] for v in df["chunk_times_s"]]
    df["chunk_tokens"] = [[int(x) for x in _to_list(v)] for v in df["chunk_tokens"]]
    for col in ("error", "error_type", "n_output_source", "server_timing_json"):
        vals = [None if _is_missing(e) or e == "" else str(e) for e in df[col]]
        df[col] = pd.Series(vals, index=df.index, dtype=object)
    return df.reset_index(drop=True)


def _normalize_summary(df: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(df).copy() if df is not None else pd.DataFrame()
    if df.empty:
        return df
    if "deployment" not in df:
        df["deployment"] = ""
    df["deployment"] = df["deployment"].map(lambda v: "" if v is None else str(v))
    if "load_point" not in df:
        df["load_point"] = 0
    if "offered_rate_rps" in df:
        df["rate_rps"] = summary_rates(df)
    for col in df.columns:
        if col in ("deployment", "load_point"):
            continue
        if df[col].dtype == object:
            conv = pd.to_numeric(df[col], errors="coerce")
            if conv.notna().sum() == df[col].notna().sum():
                df[col] = conv
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- server timing

def parse_timing(v: Any) -> dict | None:
    """The `server_timing_json` object of one record as a dict (None if absent or unreadable)."""
    if isinstance(v, dict):
        return v
    if v is None or _is_missing(v):
        return None
    try:
        out = json.loads(str(v))
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def server_timings(records: pd.DataFrame) -> list[dict | None]:
    """`parse_timing` of every record, in row order."""
    if records is None or records.empty or "server_timing_json" not in records:
        return [None] * (0 if records is None else len(records))
    return [parse_timing(v) for v in records["server_timing_json"]]


def token_prefill_flags(timing: dict | None) -> np.ndarray | None:
    """For each output token (engine order): True if the engine step that produced it also
    carried prefill tokens (co-batched prefill), False for a decode-only step.

    Reads `token_steps` (step id per token) and `steps` ({step id: {prefill_tokens, ...}}); the
    disaggregated decode worker keys steps "worker:step" with a parallel `token_workers` list.
    None when the server did not report them; a token whose step is not described counts as
    decode-only."""
    if not timing:
        return None
    ts = timing.get("token_steps")
    steps = timing.get("steps")
    if not isinstance(ts, list) or not isinstance(steps, dict) or not ts:
        return None
    workers = timing.get("token_workers")
    if not isinstance(workers, list) or len(workers) != len(ts):
        workers = None
    out = np.zeros(len(ts), dtype=bool)
    for i, s in enumerate(ts):
        info = None
        if workers is not None:
            info = steps.get(f"{workers[i]}:{s}")
        if info is None:
            info = steps.get(str(s))
        if isinstance(info, dict):
            try:
                out[i] = float(info.get("prefill_tokens") or 0) > 0
            except (TypeError, ValueError):
                pass
    return out


def itl_split(times: list[float], tokens: list[int], flags: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-token ITL samples and per-chunk gaps labelled by the kind of engine step.

    Returns (itl, itl_prefill, chunk_t, chunk_gap, chunk_prefill): per-token ITL samples (as
    `metrics.itl_per_token`) with a bool per sample (its token came from a step that co-batched
    prefill), and per chunk after the first its arrival time, gap and a bool (any of its tokens
    came from such a step). Tokens beyond the server's `token_steps` count as decode-only."""
    chunks = metrics.token_chunks(times, tokens)
    if len(chunks) < 2:
        e = np.empty(0)
        return e, e.astype(bool), e, e, e.astype(bool)
    t = np.array([c[0] for c in chunks], dtype=float)
    kk = np.array([c[1] for c in chunks], dtype=int)
    gaps = np.asarray(metrics.chunk_gaps(t), dtype=float)
    itl = np.asarray(metrics.itl_per_token(times, tokens), dtype=float)
    idx = np.arange(int(kk[0]), int(kk.sum()))          # token index of each ITL sample
    f = np.zeros(len(idx), dtype=bool)
    if flags is not None:
        inside = idx < len(flags)
        f[inside] = flags[idx[inside]]
    chunk_of = np.repeat(np.arange(len(kk) - 1), kk[1:])
    cf = np.zeros(len(kk) - 1, dtype=bool)
    np.logical_or.at(cf, chunk_of, f)
    return itl, f, t[1:], gaps, cf


def spec_counters(timing: dict | None) -> tuple[float, float, float] | None:
    """(proposed, accepted, verify steps) of speculative decoding for one request, or None.
    Verify steps: `spec_verify_steps` when reported, else NaN."""
    if not timing or timing.get("spec_proposed") is None or timing.get("spec_accepted") is None:
        return None
    try:
        prop = float(timing["spec_proposed"])
        acc = float(timing["spec_accepted"])
    except (TypeError, ValueError):
        return None
    try:
        steps = float(timing.get("spec_verify_steps"))
    except (TypeError, ValueError):
        steps = float("nan")
    return prop, acc, steps
