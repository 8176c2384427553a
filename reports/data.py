"""Read a results dir for the report: tolerant of missing optional files and in-progress runs.

The report reads only a results dir (never `backends/`). When `workloads.results.load_results`
exists it is used; otherwise (or if it fails) a small reader here follows the schema of
docs/design.md (schema_version 1). Everything returned is normalised so figures and tables can
assume the columns exist: missing columns become NaN/None, list columns become Python lists,
deployments and load points have a stable order.

Also here: the per-request metric helpers the figures need (per-token ITL samples and per-chunk
gaps, exactly as defined in docs/design.md) and a fallback summariser used only when the results
dir has no summary and `workloads.metrics.summarize` is unavailable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

RECORD_COLUMNS = [
    "deployment", "load_point", "request_id", "intended_send_s", "send_s", "first_token_s",
    "last_token_s", "n_input", "n_output", "n_output_source", "chunk_times_s", "chunk_tokens",
    "ttft_s", "tpot_s", "e2e_s", "error", "error_type", "server_queue_s", "server_prefill_s",
    "server_timing_json",
]
FLOAT_RECORD_COLUMNS = [
    "intended_send_s", "send_s", "first_token_s", "last_token_s", "n_input", "n_output",
    "ttft_s", "tpot_s", "e2e_s", "server_queue_s", "server_prefill_s",
]
LATENCY_METRICS = ("ttft", "itl", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99")


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

    def deployment_spec(self, name: str) -> dict:
        for d in self.spec.get("deployments") or []:
            if isinstance(d, dict) and str(d.get("name")) == name:
                return d
        return {}


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
    data.run = _read_json(path / "run.json", data.notes) or {}

    loaded = False
    try:
        from infer_bench.workloads.results import load_results  # type: ignore
    except ImportError:
        load_results = None
    if load_results is not None:
        try:
            _adopt(data, load_results(path))
            loaded = True
        except Exception as exc:  # keep the report working; say why the fallback was used
            data.notes.append(f"load_results failed ({type(exc).__name__}: {exc}); "
                              "read the files directly")
    if not loaded:
        data.spec = _read_json(path / "spec.json", data.notes) or {}
        data.env = _read_json(path / "env.json", data.notes) or {}
        data.records = _read_records(path, data.notes)
        data.summary = _read_summary(path, data.notes)
        data.steps = _read_jsonl(path / "steps.jsonl", data.notes)
    if data.telemetry is None:
        data.telemetry = _read_jsonl(path / "telemetry.jsonl", data.notes)

    data.records = normalize_records(data.records)
    data.summary = _normalize_summary(data.summary)
    if data.summary.empty and not data.records.empty:
        data.summary = recompute_summary(data.records, data.slo, data.spec)
        data.summary_recomputed = True
    if data.steps is not None and data.steps.empty:
        data.steps = None
    if data.telemetry is not None and data.telemetry.empty:
        data.telemetry = None
    return data


def _adopt(data: RunData, res: Any) -> None:
    """Take spec/env/records/summary/steps from whatever load_results returned."""
    if isinstance(res, (tuple, list)):
        keys = ["spec", "env", "records", "summary", "steps"]
        got = dict(zip(keys, res))
    elif isinstance(res, dict):
        got = dict(res)
    else:
        got = {k: getattr(res, k, None) for k in
               ("spec", "env", "records", "requests", "summary", "steps", "telemetry", "run")}
    if got.get("records") is None and got.get("requests") is not None:
        got["records"] = got["requests"]
    for key in ("spec", "env", "run"):
        val = got.get(key)
        if val is not None and not isinstance(val, dict):
            val = _as_dict(val)
        if isinstance(val, dict) and val:
            setattr(data, key, val)
    if not data.spec:
        data.spec = _read_json(data.path / "spec.json", data.notes) or {}
    if not data.env:
        data.env = _read_json(data.path / "env.json", data.notes) or {}
    for key in ("records", "summary", "steps", "telemetry"):
        val = got.get(key)
        if isinstance(val, pd.DataFrame):
            setattr(data, key, val)
        elif isinstance(val, list):
            setattr(data, key, pd.DataFrame(val))
    if data.steps is None:
        data.steps = _read_jsonl(data.path / "steps.jsonl", data.notes)


def _as_dict(obj: Any) -> dict:
    for attr in ("to_dict", "model_dump", "as_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            try:
                out = fn()
                if isinstance(out, dict):
                    return out
            except Exception:
                pass
    try:
        import dataclasses
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
    except Exception:
        pass
    return {}


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


def _read_records(path: Path, notes: list[str]) -> pd.DataFrame:
    pq = path / "requests.parquet"
    if pq.exists():
        try:
            return pd.read_parquet(pq)
        except Exception as exc:
            notes.append(f"requests.parquet unreadable ({exc}); trying requests.jsonl")
    df = _read_jsonl(path / "requests.jsonl", notes)
    return df if df is not None else pd.DataFrame()


def _read_summary(path: Path, notes: list[str]) -> pd.DataFrame:
    js = _read_json(path / "summary.json", notes)
    if isinstance(js, dict):
        for key in ("rows", "summary", "load_points"):
            if isinstance(js.get(key), list):
                js = js[key]
                break
    if isinstance(js, list) and js:
        return pd.DataFrame(js)
    csv = path / "summary.csv"
    if csv.exists():
        try:
            return pd.read_csv(csv)
        except Exception as exc:
            notes.append(f"summary.csv unreadable: {exc}")
    return pd.DataFrame()


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
    """Copy with every schema column present and typed; derived latencies filled if missing."""
    df = pd.DataFrame(df).copy() if df is not None else pd.DataFrame()
    for col in RECORD_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["deployment"] = df["deployment"].map(lambda v: "" if v is None else str(v))
    extra = [c for c in ("end_s", "server_transfer_s", "server_admission_s", "server_decode_s")
             if c in df.columns]
    for col in FLOAT_RECORD_COLUMNS + extra:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["chunk_times_s"] = [[float(x) for x in _to_list(v)] for v in df["chunk_times_s"]]
    df["chunk_tokens"] = [[int(x) for x in _to_list(v)] for v in df["chunk_tokens"]]
    for col in ("error", "error_type", "n_output_source", "server_timing_json"):
        vals = [None if _is_missing(e) or e == "" else str(e) for e in df[col]]
        df[col] = pd.Series(vals, index=df.index, dtype=object)
    # Derive latencies from raw times where the writer left them out.
    ttft = df["first_token_s"] - df["send_s"]
    df["ttft_s"] = df["ttft_s"].fillna(ttft)
    e2e = df["last_token_s"] - df["send_s"]
    df["e2e_s"] = df["e2e_s"].fillna(e2e)
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
        off = pd.to_numeric(df["offered_rate_rps"], errors="coerce")
        df["rate_rps"] = (pd.to_numeric(df["rate_rps"], errors="coerce").fillna(off)
                          if "rate_rps" in df else off)
    for col in df.columns:
        if col in ("deployment", "load_point"):
            continue
        if df[col].dtype == object:
            conv = pd.to_numeric(df[col], errors="coerce")
            if conv.notna().sum() == df[col].notna().sum():
                df[col] = conv
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- metrics helpers

def token_chunks(times: list[float], tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Chunks that carry >= 1 output token (times, token counts). Missing counts mean 1."""
    t = np.asarray(times, dtype=float)
    if len(tokens) == len(t):
        k = np.asarray(tokens, dtype=float)
    else:
        k = np.ones_like(t)
    keep = k >= 1
    return t[keep], k[keep]


def itl_per_token(times: list[float], tokens: list[int]) -> np.ndarray:
    """Per-token ITL samples: each chunk after the first gives k samples of gap/k."""
    t, k = token_chunks(times, tokens)
    if len(t) < 2:
        return np.empty(0)
    gaps = np.diff(t)
    kk = k[1:].astype(int)
    return np.repeat(gaps / kk, kk)


def chunk_gaps(times: list[float], tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(arrival time, gap since previous token-carrying chunk) for each chunk after the first."""
    t, _ = token_chunks(times, tokens)
    if len(t) < 2:
        return np.empty(0), np.empty(0)
    return t[1:], np.diff(t)


def failed_mask(records: pd.DataFrame) -> pd.Series:
    if records.empty:
        return pd.Series([], dtype=bool)
    return records["error"].notna()


def _stats(prefix: str, values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {f"{prefix}_{s}_s": float("nan") for s in STATS}
    out = {f"{prefix}_mean_s": float(v.mean())}
    for q in (50, 90, 95, 99):
        out[f"{prefix}_p{q}_s"] = float(np.percentile(v, q))
    return out


def spec_rates(spec: dict) -> dict:
    """Map load point (index and label) -> offered rate from the spec, where it says."""
    out: dict = {}
    lps = spec.get("load_points") or (spec.get("workload") or {}).get("load_points") or []
    for i, lp in enumerate(lps if isinstance(lps, list) else []):
        rate = None
        if isinstance(lp, (int, float)):
            rate = float(lp)
        elif isinstance(lp, dict):
            arr = lp.get("arrival") if isinstance(lp.get("arrival"), dict) else {}
            for src, key in ((lp, "rate_rps"), (lp, "rate"), (lp, "request_rate"), (arr, "rate")):
                if isinstance(src.get(key), (int, float)) and not isinstance(src.get(key), bool):
                    rate = float(src[key])
                    break
            if lp.get("name") is not None and rate is not None:
                out[lp["name"]] = rate
            if lp.get("label") is not None and rate is not None:
                out[lp["label"]] = rate
        if rate is not None:
            out.setdefault(i, rate)
    return out


def summarize_records(records: pd.DataFrame, slo: dict | None = None,
                      spec: dict | None = None) -> pd.DataFrame:
    """Summary rows (deployment x load point) recomputed from records (design.md definitions)."""
    records = normalize_records(records)
    slo = slo or {}
    s_ttft = slo.get("ttft_s")
    s_tpot = slo.get("tpot_s")
    rates = spec_rates(spec or {})
    rows = []
    for (dep, lp), g in records.groupby(["deployment", "load_point"], sort=False, dropna=False):
        ok = g[g["error"].isna()]
        starts = g["send_s"].dropna()
        ends = pd.concat([g["last_token_s"], g["send_s"] + g["e2e_s"]]).dropna()
        duration = float(ends.max() - starts.min()) if len(starts) and len(ends) else float("nan")
        row = {
            "deployment": dep, "load_point": lp, "n_requests": int(len(g)),
            "n_failed": int(len(g) - len(ok)), "duration_s": duration,
            "request_throughput_rps": len(ok) / duration if duration and duration > 0 else float("nan"),
            "output_throughput_tps": (float(ok["n_output"].fillna(0).sum()) / duration
                                      if duration and duration > 0 else float("nan")),
        }
        row.update(_stats("ttft", ok["ttft_s"]))
        itl = [itl_per_token(t, k) for t, k in zip(ok["chunk_times_s"], ok["chunk_tokens"])]
        row.update(_stats("itl", np.concatenate(itl) if itl else np.empty(0)))
        row.update(_stats("tpot", ok["tpot_s"]))
        row.update(_stats("e2e", ok["e2e_s"]))
        if s_ttft is not None or s_tpot is not None:
            met = ok["ttft_s"].notna()
            if s_ttft is not None:
                met &= ok["ttft_s"] <= float(s_ttft)
            if s_tpot is not None:
                met &= ok["tpot_s"].isna() | (ok["tpot_s"] <= float(s_tpot))
            row["slo_attainment"] = float(met.sum()) / len(g) if len(g) else float("nan")
        else:
            row["slo_attainment"] = float("nan")
        row["rate_rps"] = rates.get(lp, float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def recompute_summary(records: pd.DataFrame, slo: dict, spec: dict) -> pd.DataFrame:
    """Summary from records: workloads.results.compute_summary if it exists, else the fallback."""
    try:
        from infer_bench.workloads.results import compute_summary  # type: ignore
    except ImportError:
        compute_summary = None
    if compute_summary is not None:
        try:
            out = compute_summary(records, spec, slo=slo or None)
            if isinstance(out, pd.DataFrame) and not out.empty:
                return _normalize_summary(out)
        except Exception:
            pass
    return summarize_records(records, slo, spec)


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
    `itl_per_token`) with a bool per sample (its token came from a step that co-batched
    prefill), and per chunk after the first its arrival time, gap and a bool (any of its tokens
    came from such a step). Tokens beyond the server's `token_steps` count as decode-only."""
    t, k = token_chunks(times, tokens)
    if len(t) < 2:
        e = np.empty(0)
        return e, e.astype(bool), e, e, e.astype(bool)
    kk = k.astype(int)
    gaps = np.diff(t)
    itl = np.repeat(gaps / kk[1:], kk[1:])
    idx = np.arange(int(kk[0]), int(kk.sum()))          # token index of each ITL sample
    if flags is None:
        f = np.zeros(len(idx), dtype=bool)
    else:
        f = np.zeros(len(idx), dtype=bool)
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
