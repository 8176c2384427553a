"""The results dir: written during a run, read by reports (public, schema_version 1).

Role in the data flow: `workloads/runner.py` opens a `ResultsWriter`, writes spec.json and env.json,
appends each `RequestRecord` to requests.jsonl as it completes (so a run that fails part-way keeps
what it measured), appends engine step traces to steps.jsonl, and calls `finalize()`, which writes
requests.parquet, summary.csv and summary.json (metrics from `workloads/metrics.py`) and marks
run.json complete. `reports/` calls `load_results(dir)`; it reads only these files.

Layout:
    run.json         {"schema_version": 1, "status": "incomplete"|"complete", "started": ...,
                      "finished": ..., "tool": "infer-bench", "tool_version": ...}
    spec.json        the run spec as run (deployments, workload, load points, slo)
    env.json         collect_env(): versions, hardware, command line
    requests.jsonl   one RequestRecord per line, appended as requests complete
    requests.parquet the same rows (written by finalize; columns: records.RECORD_COLUMNS)
    summary.csv      one row per deployment x load point (metrics.summarize names: ttfat_* only
                     where a request reasoned or called tools; plus
    summary.json     deployment, load_point, arrival_kind, rate_rps, concurrency, offered_rate_rps);
                     summary.json also has "goodput_rps" per deployment when a rate sweep exists
    steps.jsonl      optional engine step traces (dicts), one per line
    energy.jsonl     one row per deployment x load point x repeat: the measuring host's energy
                     and the load point's wall time (workloads/energy.py `energy_row`); summary
                     columns load_wall_s, load_output_tokens, load_slo_met, energy_j,
                     j_per_output_token, energy_source, and with spec.json's price_per_chip_hour
                     chips, usd_per_m_output_tokens, usd_per_slo_request (workloads/cost.py)
    predictions.json optional predicted vs measured (written by workloads/planning/predict.py after
                     the run; `save_predictions` / `load_predictions` here): {"schema_version",
                     "note", "seconds", "rows": [one row per deployment x load point] | null}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import metrics
from .cost import add_cost_columns
from .records import RECORD_COLUMNS, RequestRecord, arrow_schema
from .spec import load_point_info

SCHEMA_VERSION = 1
PREDICTIONS_FILE = "predictions.json"
ENERGY_FILE = "energy.jsonl"


class ResultsError(Exception):
    """A results dir that is missing or invalid (the message is one line)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(obj)
    return str(obj)


def _dump(obj: Any) -> str:
    return json.dumps(obj, default=_jsonable, indent=2, allow_nan=False)


def _clean(v: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _pkg_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no GPU
        return []
    out = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_total_bytes": int(mem.total),
                        "driver": driver.decode() if isinstance(driver, bytes) else driver})
    except Exception as e:  # noqa: BLE001
        out.append({"error": f"{type(e).__name__}: {e}"})
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return out


def collect_env(extra: dict | None = None) -> dict[str, Any]:
    """Versions, hardware and command line. Cheap: does not import torch."""
    try:
        cores_avail = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores_avail = os.cpu_count()
    mem = None
    try:
        import psutil
        mem = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
        except OSError:
            pass
    env = {
        "collected_at": _now(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_available": cores_avail,
        "memory_total_bytes": mem,
        "gpus": _gpus(),
        "packages": {p: _pkg_version(p) for p in (
            "infer-bench", "torch", "transformers", "tokenizers", "aiohttp", "numpy", "pandas",
            "pyarrow", "plotly", "nvidia-ml-py", "safetensors", "gguf", "uvloop", "orjson")},
        "command_line": list(sys.argv),
        "cwd": os.getcwd(),
    }
    env["torch"] = env["packages"].get("torch")
    if extra:
        env.update(extra)
    return env


class ResultsWriter:
    """Writes one results dir. Safe to use as a context manager: an exception marks the run
    incomplete but still writes what was measured."""

    def __init__(self, path: str | Path, *, overwrite: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not overwrite and (self.path / "requests.jsonl").exists():
            raise ResultsError(f"{self.path} already holds results (pass overwrite=True)")
        for name in ("requests.jsonl", "steps.jsonl", "requests.parquet", "summary.csv",
                     "summary.json", PREDICTIONS_FILE, ENERGY_FILE):
            (self.path / name).unlink(missing_ok=True)
        self.records: list[RequestRecord] = []
        self.energy_rows: list[dict] = []
        self._spec: dict | None = None
        self._run = {"schema_version": SCHEMA_VERSION, "tool": "infer-bench",
                     "tool_version": _pkg_version("infer-bench"), "status": "incomplete",
                     "started": _now(), "finished": None}
        self._write_run()
        self._req_f = open(self.path / "requests.jsonl", "a", encoding="utf-8")
        self._steps_f = None
        self.finalized = False

    # -- metadata
    def _write_run(self) -> None:
        tmp = self.path / "run.json.tmp"
        tmp.write_text(_dump(self._run))
        tmp.replace(self.path / "run.json")

    def write_spec(self, spec: Any) -> None:
        d = spec.to_dict() if hasattr(spec, "to_dict") else spec
        self._spec = json.loads(_dump(d))
        (self.path / "spec.json").write_text(_dump(self._spec))

    def write_env(self, env: dict | None = None) -> None:
        (self.path / "env.json").write_text(_dump(env if env is not None else collect_env()))

    def set_run_info(self, **info: Any) -> None:
        """Extra fields for run.json (e.g. errors of a deployment that failed to start)."""
        self._run.update(info)
        self._write_run()

    # -- data
    def append_record(self, record: RequestRecord) -> None:
        self.records.append(record)
        self._req_f.write(json.dumps(_clean(record.to_dict()), separators=(",", ":")) + "\n")
        self._req_f.flush()

    def append_records(self, records: Iterable[RequestRecord]) -> None:
        for r in records:
            self.append_record(r)

    def append_energy(self, row: dict) -> None:
        """One load point's energy and wall time (workloads/energy.py `energy_row`)."""
        self.energy_rows.append(row)
        with open(self.path / ENERGY_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(row), default=_jsonable, separators=(",", ":")) + "\n")

    def append_steps(self, steps: Iterable[dict], **tags: Any) -> None:
        """Engine step traces (dicts); `tags` (e.g. deployment="mono") are added to each."""
        if self._steps_f is None:
            self._steps_f = open(self.path / "steps.jsonl", "a", encoding="utf-8")
        for s in steps:
            row = {**tags, **s}
            self._steps_f.write(json.dumps(_clean(row), default=_jsonable,
                                           separators=(",", ":")) + "\n")
        self._steps_f.flush()

    # -- end
    def finalize(self, *, status: str = "complete", slo: Any = None,
                 windows: dict[tuple, tuple[float, float]] | None = None,
                 goodput_target: float = 0.9) -> None:
        """Write requests.parquet, summary.csv/json, close files, mark run.json with `status`.
        `slo` defaults to spec["slo"]; `windows` maps (deployment, load_point, repeat) -> (start, end)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        for f in (self._req_f, self._steps_f):
            if f is not None and not f.closed:
                f.close()
        rows = [_clean(r.to_dict()) for r in self.records]
        table = pa.Table.from_pylist(rows, schema=arrow_schema())
        pq.write_table(table, self.path / "requests.parquet")
        if slo is None and self._spec:
            slo = self._spec.get("slo")
        df = pd.DataFrame(rows, columns=RECORD_COLUMNS)
        summary = compute_summary(df, self._spec, slo=slo, windows=windows,
                                  energy=self.energy_rows)
        summary.to_csv(self.path / "summary.csv", index=False)
        if "repeat" in df and df["repeat"].nunique() > 1:
            compute_summary(df, self._spec, slo=slo, windows=windows, by_repeat=True,
                            energy=self.energy_rows).to_csv(
                self.path / "summary_repeats.csv", index=False)
        gp = compute_goodput(summary, goodput_target)
        (self.path / "summary.json").write_text(_dump({
            "schema_version": SCHEMA_VERSION, "slo": _jsonable_slo(slo),
            "goodput_target": goodput_target, "goodput_rps": gp,
            "rows": _clean(summary.to_dict("records"))}))
        self._run["status"] = status
        self._run["finished"] = _now()
        self._run["n_records"] = len(self.records)
        self._write_run()
        self.finalized = True

    def close(self) -> None:
        if not self.finalized:
            self.finalize(status="incomplete")

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.finalized:
            self.finalize(status="complete" if exc_type is None else "incomplete")


def _jsonable_slo(slo: Any) -> dict | None:
    if slo is None:
        return None
    if isinstance(slo, dict):
        return slo
    return {"ttft_s": getattr(slo, "ttft_s", None), "tpot_s": getattr(slo, "tpot_s", None)}


def ramp_fraction(spec: dict | None) -> float:
    """The share of each load point's send span that spec.json's `steady_state` leaves out as
    ramp-up (0 when the spec has none)."""
    return float(((spec or {}).get("steady_state") or {}).get("ramp_fraction") or 0.0)


def compute_summary(records, spec: dict | None = None, *, slo: Any = None,
                    windows: dict | None = None, by_repeat: bool = False,
                    energy: Iterable[dict] | None = None):
    """One row per deployment x load point (in order of first appearance), pooled over repeats;
    with `by_repeat`, one row per deployment x load point x repeat (drift, per-repeat intervals).

    `windows` maps (deployment, load_point, repeat) -- or (deployment, load_point) -- to the
    load generator's (start, end). With spec["steady_state"], each repeat's ramp-up is left out of
    the latency percentiles and attainment, and throughput is counted until its last intended
    send (metrics.steady_state). Pooled over repeats: latencies and attainment over every
    measured request; throughput = tokens (requests) in the repeats' windows / their total length;
    n_requests and n_failed count every request sent.

    `energy`: energy.jsonl rows (`load_energy`); with them, or with `windows`, the whole load
    point's totals (`load_totals`: wall time, successful requests' output tokens, requests that
    met the SLO, energy and J per output token) and, when spec.json has a price per chip-hour,
    the cost columns (workloads/cost.py)."""
    import pandas as pd

    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(
        [r.to_dict() if hasattr(r, "to_dict") else r for r in records], columns=RECORD_COLUMNS)
    if "repeat" not in df:
        df = df.assign(repeat=0)
    df = df.assign(repeat=pd.to_numeric(df["repeat"], errors="coerce").fillna(0).astype(int))
    if slo is None and spec:
        slo = spec.get("slo")
    ramp = ramp_fraction(spec)
    info = load_point_info(spec)
    keys = ["deployment", "load_point"] + (["repeat"] if by_repeat else [])
    by_key: dict[tuple, dict] = {}
    for e in energy or []:
        by_key[(str(e.get("deployment")), str(e.get("load_point")), int(e.get("repeat") or 0))] = e
    rows = []
    for key, g in (df.groupby(keys, sort=False) if len(df) else []):
        dep, lp = key[0], key[1]
        row: dict[str, Any] = {"deployment": dep, "load_point": lp}
        if by_repeat:
            row["repeat"] = int(key[2])
        row.update({"arrival_kind": None, "rate_rps": None, "concurrency": None})
        row.update(info.get(str(lp), {}))
        parts = []        # per repeat: (measured records, window)
        for r, gr in g.groupby("repeat", sort=True):
            win = (windows or {}).get((dep, lp, r)) or (windows or {}).get((dep, lp))
            if ramp > 0:
                kept, win = metrics.steady_state(gr, ramp)
            else:
                kept = gr.to_dict("records")
            parts.append((kept, win))
        row["offered_rate_rps"] = _offered_rate(g)
        measured = [rec for kept, _ in parts for rec in kept]
        row.update(metrics.summarize(measured, slo, parts[0][1] if len(parts) == 1 else None))
        if len(parts) > 1:        # throughput over the repeats' own windows, not the gaps between
            per = [metrics.summarize(kept, None, win) for kept, win in parts]
            dur = sum(p["duration_s"] or 0.0 for p in per)
            row["duration_s"] = dur
            for col in ("request_throughput_rps", "output_throughput_tps"):
                row[col] = (sum((p[col] or 0.0) * (p["duration_s"] or 0.0) for p in per) / dur
                            if dur > 0 else None)
        row["n_requests"] = int(len(g))
        row["n_failed"] = int(sum(metrics.is_failed(r) for r in g.to_dict("records")))
        row["n_measured"] = len(measured)
        row["n_repeats"] = len(parts)
        row.update(load_totals(g, slo, [(by_key.get((str(dep), str(lp), int(r))),
                                          (windows or {}).get((dep, lp, r)))
                                         for r in sorted(set(g["repeat"]))]))
        rows.append(row)
    return add_cost_columns(pd.DataFrame(rows), spec)


def load_totals(group, slo: Any, per_repeat: list[tuple[dict | None, tuple | None]]
                ) -> dict[str, Any]:
    """Whole-load-point totals of one deployment x load point (every request, ramp-up included,
    every repeat in `per_repeat`: (energy.jsonl row or None, load window or None)):
    load_wall_s (the rows' duration_s, else the window's length), load_output_tokens (output
    tokens of the successful requests), load_slo_met (requests meeting the joint SLO from the
    intended send time; None without an SLO), energy_j (None unless every repeat has it),
    j_per_output_token, energy_source ("nvml", "rapl", "unavailable"; None without rows)."""
    recs = group.to_dict("records") if hasattr(group, "to_dict") else list(group)
    ok = [r for r in recs if not metrics.is_failed(r)]
    tokens = int(sum(int(r.get("n_output") or 0) for r in ok
                     if not (isinstance(r.get("n_output"), float) and math.isnan(r["n_output"]))))
    s_ttft, s_tpot = (slo.get("ttft_s"), slo.get("tpot_s")) if isinstance(slo, dict) else (
        getattr(slo, "ttft_s", None), getattr(slo, "tpot_s", None))
    met = (None if slo is None or (s_ttft is None and s_tpot is None)
           else sum(a and b for a, b in (metrics.slo_checks(r, slo) for r in recs)))
    wall: float | None = 0.0
    joules: float | None = 0.0
    sources = set()
    for row, win in per_repeat:
        d = (row or {}).get("duration_s")
        if d is None and win is not None:
            d = float(win[1]) - float(win[0])
        wall = None if wall is None or d is None else wall + float(d)
        e = (row or {}).get("energy_j")
        joules = None if joules is None or e is None else joules + float(e)
        if row is not None:
            sources.add(str(row.get("source") or "unavailable"))
    source = (None if not sources else
              "+".join(sorted(sources)) if joules is not None else "unavailable")
    return {"load_wall_s": wall, "load_output_tokens": tokens, "load_slo_met": met,
            "energy_j": joules, "energy_source": source,
            "j_per_output_token": joules / tokens if joules is not None and tokens > 0 else None}


def _offered_rate(g) -> float | None:
    """Requests per second of intended sends, per repeat, pooled (sends / summed spans)."""
    import numpy as np

    n, span = 0, 0.0
    for _, gr in g.groupby("repeat", sort=False):
        intended = np.sort(gr["intended_send_s"].dropna().to_numpy(float))
        if len(intended) > 1 and intended[-1] > intended[0]:
            n += len(intended) - 1
            span += float(intended[-1] - intended[0])
    return n / span if span > 0 else None


def summary_rates(summary):
    """The request rate of each summary row: `rate_rps` (the spec's offered rate) where set,
    else `offered_rate_rps` (measured from the intended send times); NaN where neither is."""
    import pandas as pd

    nan = pd.Series(float("nan"), index=summary.index)
    rate = pd.to_numeric(summary["rate_rps"], errors="coerce") if "rate_rps" in summary else nan
    off = (pd.to_numeric(summary["offered_rate_rps"], errors="coerce")
           if "offered_rate_rps" in summary else nan)
    return rate.fillna(off).astype(float)


def compute_goodput(summary, target: float = 0.9) -> dict[str, float | None]:
    """Goodput per deployment over its load points with a rate (`summary_rates`)."""
    out: dict[str, float | None] = {}
    if summary is None or not len(summary) or "slo_attainment" not in summary:
        return out
    for dep, g in summary.groupby("deployment", sort=False):
        rate = summary_rates(g)
        pts = [(float(r), float(a)) for r, a in zip(rate, g["slo_attainment"])
               if r is not None and a is not None and not (isinstance(r, float) and math.isnan(r))
               and not (isinstance(a, float) and math.isnan(a))]
        if len(pts) >= 1:
            out[str(dep)] = metrics.goodput([p[0] for p in pts], [p[1] for p in pts], target)
    return out


def _json_scalar(v: Any) -> Any:
    """A numpy scalar as its Python value; NaN -> None."""
    if hasattr(v, "item"):        # numpy scalar
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def save_predictions(path: str | Path, rows: Iterable[dict] | None, *, note: str,
                     seconds: float) -> Path:
    """Write predictions.json into a results dir (atomically) and return its path. `rows`: one
    dict per deployment x load point (`planning.planner.validate`'s columns: deployment,
    load_point, n_requests, rate_rps, concurrency, and measured_/predicted_/error_/rel_error_ of
    ttft_p50_s, ttft_p90_s, tpot_p50_s, tpot_p90_s, slo_attainment), None when nothing was
    predicted; `note` says how the model was fitted, or why there are no rows."""
    out = Path(path) / PREDICTIONS_FILE
    body = {"schema_version": SCHEMA_VERSION, "note": note, "seconds": float(seconds),
            "rows": None if rows is None else [{str(k): _json_scalar(v) for k, v in r.items()}
                                               for r in rows]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(_dump(body))
    tmp.replace(out)
    return out


def load_predictions(path: str | Path) -> dict | None:
    """predictions.json of a results dir as written by `save_predictions`; None when the run
    has none. Raises ResultsError when the file is unreadable."""
    p = Path(path) / PREDICTIONS_FILE
    if not p.exists():
        return None
    body = _read_json(p, PREDICTIONS_FILE)
    if not isinstance(body, dict) or not isinstance(body.get("rows"), (list, type(None))):
        raise ResultsError(f"{p}: invalid {PREDICTIONS_FILE} (not an object with a rows list)")
    return body


def load_energy(path: str | Path) -> list[dict]:
    """energy.jsonl of a results dir (one row per deployment x load point x repeat); [] when
    the run has none. A truncated last line (a killed run) is skipped."""
    p = Path(path) / ENERGY_FILE
    rows = []
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


@dataclass
class Results:
    path: Path
    run: dict
    spec: dict
    env: dict
    records: Any           # pandas.DataFrame, columns records.RECORD_COLUMNS
    summary: Any           # pandas.DataFrame
    summary_meta: dict     # summary.json without "rows" (slo, goodput_rps, ...)
    steps: Any | None      # pandas.DataFrame or None

    @property
    def complete(self) -> bool:
        return self.run.get("status") == "complete"


def _read_json(p: Path, what: str) -> dict:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ResultsError(f"{p}: invalid {what} ({e})") from None


def load_results(path: str | Path) -> Results:
    """Read a results dir. Falls back to requests.jsonl (and recomputes the summary) when a run
    was not finalized. Raises ResultsError with a one-line message when it is not a results dir."""
    import pandas as pd

    p = Path(path)
    if not p.is_dir():
        raise ResultsError(f"{p}: no such results directory")
    run = _read_json(p / "run.json", "run.json")
    if not run:
        raise ResultsError(f"{p}: not an infer-bench results directory (no run.json)")
    sv = run.get("schema_version")
    if sv != SCHEMA_VERSION:
        raise ResultsError(f"{p}: unsupported schema_version {sv!r} (this reader: "
                           f"{SCHEMA_VERSION})")
    spec = _read_json(p / "spec.json", "spec.json")
    env = _read_json(p / "env.json", "env.json")
    pq_path, jl_path = p / "requests.parquet", p / "requests.jsonl"
    if pq_path.exists():
        try:
            records = pd.read_parquet(pq_path)
        except Exception as e:  # noqa: BLE001
            raise ResultsError(f"{pq_path}: unreadable parquet ({type(e).__name__}: {e})") from None
    elif jl_path.exists():
        rows = []
        with open(jl_path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    # a run killed mid-write may leave a truncated last line
                    continue
        records = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    else:
        raise ResultsError(f"{p}: no requests.parquet or requests.jsonl")
    for c in RECORD_COLUMNS:
        if c not in records.columns:
            records[c] = None
    for c, conv in (("chunk_times_s", float), ("chunk_tokens", int)):
        records[c] = [[conv(x) for x in v] if v is not None and not (
            isinstance(v, float) and math.isnan(v)) else [] for v in records[c]]
    summary_meta: dict = {}
    if (p / "summary.csv").exists():
        summary = pd.read_csv(p / "summary.csv")
        summary_meta = _read_json(p / "summary.json", "summary.json")
        summary_meta.pop("rows", None)
    else:
        summary = compute_summary(records, spec, energy=load_energy(p))
        summary_meta = {"goodput_rps": compute_goodput(summary), "recomputed": True}
    steps = None
    if (p / "steps.jsonl").exists():
        rows = []
        with open(p / "steps.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        steps = pd.DataFrame(rows)
    return Results(path=p, run=run, spec=spec, env=env, records=records, summary=summary,
                   summary_meta=summary_meta, steps=steps)
