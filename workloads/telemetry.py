"""Hardware telemetry sampled alongside a run: GPUs (NVML), engine processes, the host, /metrics.

Role in the data flow: `workloads/runner.py` starts one `TelemetrySampler` per deployment once the
deployment is healthy and stops it after the deployment's last load point (before `dep.stop()`).
The sampler runs in daemon threads, off the load generator's event loop, and appends rows to
`telemetry.jsonl` in the results dir, on the run clock the request records use; `sampler.status`
(what was sampled, why a source was missing, the sampler's own CPU cost) goes into run.json.
`reports/` reads telemetry.jsonl as a table and plots it against run time.

Row schema (telemetry.jsonl, one JSON object per line, appended; several deployments share the
file and are told apart by `deployment`):

    {"deployment": str, "t_s": float (run clock), "source": "nvml"|"process"|"system"|"prometheus",
     "metric": str, "entity": str, "value": float, "unit": str}

    source      metric              entity              unit
    nvml        gpu_util_pct        GPU index ("0")     %      (SM busy share of the last period)
    nvml        gpu_mem_util_pct    GPU index           %      (memory-controller busy share)
    nvml        gpu_mem_used_mib    GPU index           MiB
    nvml        gpu_mem_total_mib   GPU index           MiB
    nvml        gpu_power_w         GPU index           W
    nvml        gpu_sm_clock_mhz    GPU index           MHz
    nvml        gpu_mem_clock_mhz   GPU index           MHz
    nvml        gpu_temp_c          GPU index           C
    process     proc_cpu_pct        pid ("12345")       %      (of one core; > 100 for several)
    process     proc_rss_mib        pid                 MiB
    process     proc_cpu_pct        "total"             %      (sum over the deployment's pids)
    process     proc_rss_mib        "total"             MiB
    client      proc_cpu_pct        pid / "total"       %      (the load generator's own
    client      proc_rss_mib        pid / "total"       MiB     processes; deployment "")
    system      sys_cpu_pct         "system"            %      (all cores, 0-100)
    system      sys_mem_available_mib "system"          MiB
    prometheus  <metric name>       labels "k=v,k=v"    "s" / "B" from a _seconds/_bytes name, else ""

Client rows come from `client_sampler()`: this process (the runner, which is the client) and its
children (`run --workers N` shards), sampled for the whole run so that the CPU the client took
can be set against each load point (workloads/bystander_cpu.py); they belong to no deployment.

NVML rows appear when `pynvml` (nvidia-ml-py) initialises and sees at least one GPU; otherwise
(and always when `process=True`) the process and system rows do. Values are finite floats (NaN
and infinities from /metrics are dropped), so every line is strict JSON.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

MIB = 1024 * 1024

__all__ = ["TelemetrySampler", "client_sampler", "client_pids", "metrics_url",
           "parse_prometheus_text", "prometheus_rows", "scrape_prometheus"]


# ----------------------------------------------------------------------------- Prometheus text

def parse_prometheus_text(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Parse the Prometheus text exposition format into (name, labels, value) samples, with
    prometheus_client's parser (`text_string_to_metric_families`).

    Histogram `_bucket` samples are left out (their `_sum` and `_count` are kept); a trailing
    timestamp is ignored; values may be NaN or +/-Inf (as the format allows). Text that does
    not parse raises ValueError. The parser names a counter's samples `<name>_total` even
    where the server wrote the bare name."""
    from prometheus_client.parser import text_string_to_metric_families
    out: list[tuple[str, dict[str, str], float]] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def _prom_unit(name: str) -> str:
    if name.endswith(("_seconds", "_seconds_total", "_seconds_sum")):
        return "s"
    if name.endswith(("_bytes", "_bytes_total", "_bytes_sum")):
        return "B"
    return ""  # (a `_total` suffix does not make a count: infer_bench_kv_blocks_total is blocks)


def _label_entity(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def prometheus_rows(text: str, allow: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Samples of a /metrics text as partial telemetry rows (metric, entity, value, unit).

    `allow`: names or fnmatch patterns (`vllm:*`) to keep; None keeps every non-bucket sample.
    Non-finite values are dropped."""
    pats = list(allow) if allow is not None else None
    rows = []
    for name, labels, value in parse_prometheus_text(text):
        if not math.isfinite(value):
            continue
        if pats is not None and not any(p == name or fnmatch.fnmatchcase(name, p) for p in pats):
            continue
        rows.append({"metric": name, "entity": _label_entity(labels), "value": value,
                     "unit": _prom_unit(name)})
    return rows


def metrics_url(url: str) -> str:
    """A server base URL (`http://h:p`, `http://h:p/v1`) or a full metrics URL -> metrics URL."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if path in ("", "/v1"):
        path = "/metrics"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def scrape_prometheus(url: str, timeout_s: float = 1.0, headers: dict | None = None) -> str:
    """GET a /metrics page (`headers`: e.g. a bearer token); raises urllib.error.URLError /
    OSError on failure."""
    req = urllib.request.Request(metrics_url(url), headers={"Accept": "text/plain",
                                                            **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (user-given URL)
        return resp.read().decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- NVML

class _Nvml:
    """One initialised NVML session: handles and per-GPU reads; unsupported metrics are dropped
    after their first failure (e.g. power on some boards)."""

    METRICS = ("gpu_util_pct", "gpu_mem_util_pct", "gpu_mem_used_mib", "gpu_mem_total_mib",
               "gpu_power_w", "gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_temp_c")

    def __init__(self, nv, indices: list[int] | None):
        self.nv = nv
        nv.nvmlInit()
        try:
            count = int(nv.nvmlDeviceGetCount())
            use = range(count) if indices is None else [i for i in indices if 0 <= i < count]
            self.handles = [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in use]
            self.gpus: list[dict[str, Any]] = []
            for i, h in self.handles:
                info: dict[str, Any] = {"index": i}
                try:
                    name = nv.nvmlDeviceGetName(h)
                    info["name"] = name.decode() if isinstance(name, bytes) else str(name)
                except Exception:  # noqa: BLE001 (a name is nice to have)
                    pass
                try:
                    info["memory_total_mib"] = round(nv.nvmlDeviceGetMemoryInfo(h).total / MIB, 1)
                except Exception:  # noqa: BLE001
                    pass
                self.gpus.append(info)
        except Exception:
            self.shutdown()
            raise
        self.unsupported: dict[str, str] = {}  # "idx:group" -> reason

    def _try(self, key: str, fn):
        if key in self.unsupported:
            return None
        try:
            return fn()
        except self.nv.NVMLError as e:  # e.g. NotSupported; GPU lost
            self.unsupported[key] = str(e)
            return None

    def sample(self) -> list[tuple[str, str, float, str]]:
        nv = self.nv
        out: list[tuple[str, str, float, str]] = []
        for i, h in self.handles:
            e = str(i)
            u = self._try(f"{i}:utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
            if u is not None:
                out.append(("gpu_util_pct", e, float(u.gpu), "%"))
                out.append(("gpu_mem_util_pct", e, float(u.memory), "%"))
            m = self._try(f"{i}:memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
            if m is not None:
                out.append(("gpu_mem_used_mib", e, m.used / MIB, "MiB"))
                out.append(("gpu_mem_total_mib", e, m.total / MIB, "MiB"))
            p = self._try(f"{i}:power", lambda: nv.nvmlDeviceGetPowerUsage(h))
            if p is not None:
                out.append(("gpu_power_w", e, p / 1000.0, "W"))
            c = self._try(f"{i}:sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            if c is not None:
                out.append(("gpu_sm_clock_mhz", e, float(c), "MHz"))
            c = self._try(f"{i}:mem_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
            if c is not None:
                out.append(("gpu_mem_clock_mhz", e, float(c), "MHz"))
            t = self._try(f"{i}:temperature",
                          lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            if t is not None:
                out.append(("gpu_temp_c", e, float(t), "C"))
        return out

    def shutdown(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _open_nvml(indices: list[int] | None) -> tuple[_Nvml | None, str]:
    """(session or None, status line)."""
    try:
        import pynvml as nv  # nvidia-ml-py
    except ImportError:
        return None, "NVML unavailable: nvidia-ml-py (pynvml) not installed"
    try:
        s = _Nvml(nv, indices)
    except nv.NVMLError as e:
        return None, f"NVML unavailable: {e}"
    except Exception as e:  # noqa: BLE001 (a broken binding must not break the run)
        return None, f"NVML unavailable: {type(e).__name__}: {e}"
    if not s.handles:
        s.shutdown()
        return None, "NVML: no GPU found"
    names = sorted({g.get("name", "GPU") for g in s.gpus})
    return s, f"NVML ok: {len(s.handles)} GPU(s) ({', '.join(names)})"


# ----------------------------------------------------------------------------- sampler

class TelemetrySampler:
    """Samples GPUs / processes / host (and optionally a /metrics page) into telemetry.jsonl.

        sampler = TelemetrySampler(out_dir / "telemetry.jsonl", dep.pids, clock_fn=clock.now,
                                   deployment="mono", prometheus_url=dep.base_url)
        with sampler:            # start() ... stop()
            ...drive load...
        run_info["telemetry"][name] = sampler.status

    Arguments:
      out_path      telemetry.jsonl path (appended to; the parent dir is created).
      pids_fn       () -> list of pids to watch (server + workers); re-evaluated every
                    `pid_refresh_s`; dead pids are dropped quietly. None: no process rows.
      interval_s    sampling period of NVML / process / system (default 0.1 s = 10 Hz).
      clock_fn      () -> run-clock seconds (the runner passes `RunClock.now`); default: seconds
                    since this sampler was created.
      deployment    name written into every row.
      prometheus_url  server base URL or full metrics URL; scraped every
                    `prometheus_interval_s` in its own thread with `prometheus_timeout_s`.
      prometheus_allow  metric names / fnmatch patterns to keep (None: all but `_bucket`).
      prometheus_headers  sent with every scrape (e.g. the target's bearer key).
      nvml          False skips NVML (forces the CPU path).
      process       "auto" (process + system rows only when NVML gives no GPU), True, False.
      gpu_indices   NVML indices to sample (default: all).
      process_source  the `source` of process rows ("process"; the client's sampler: "client").
      system        False: no system rows (the client's sampler leaves them to the others).
      flush_s       write the buffered rows at least this often (and on stop).

    `status` (a JSON-able dict) says what was sampled, why a source is absent, errors, and the
    sampler's own cost (`sampler_cpu_s`, `sampler_cpu_pct` of one core, tick times)."""

    def __init__(self, out_path: str | Path, pids_fn: Callable[[], Iterable[int]] | None = None,
                 interval_s: float = 0.1, clock_fn: Callable[[], float] | None = None,
                 deployment: str = "", prometheus_url: str | None = None, *,
                 prometheus_interval_s: float = 1.0, prometheus_timeout_s: float = 1.0,
                 prometheus_allow: Iterable[str] | None = None,
                 prometheus_headers: dict[str, str] | None = None, nvml: bool = True,
                 process: bool | str = "auto", gpu_indices: list[int] | None = None,
                 pid_refresh_s: float = 1.0, flush_s: float = 1.0,
                 process_source: str = "process", system: bool = True):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.out_path = Path(out_path)
        self.pids_fn = pids_fn
        self.interval_s = float(interval_s)
        if clock_fn is None:
            t0 = time.perf_counter()
            clock_fn = lambda: time.perf_counter() - t0  # noqa: E731
        self.clock_fn = clock_fn
        self.deployment = deployment
        self.prometheus_url = prometheus_url
        self.prometheus_interval_s = float(prometheus_interval_s)
        self.prometheus_timeout_s = float(prometheus_timeout_s)
        self.prometheus_allow = list(prometheus_allow) if prometheus_allow is not None else None
        self.prometheus_headers = dict(prometheus_headers or {})
        self.use_nvml = nvml
        self.process_mode = process
        self.gpu_indices = gpu_indices
        self.pid_refresh_s = float(pid_refresh_s)
        self.flush_s = float(flush_s)
        self.process_source = process_source
        self.system = system

        self.status: dict[str, Any] = {"deployment": deployment, "state": "created",
                                       "interval_s": self.interval_s}
        self._lock = threading.Lock()       # guards _buf and the file
        self._buf: list[str] = []
        self._f = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._nvml: _Nvml | None = None
        self._procs: dict[int, Any] = {}    # pid -> psutil.Process (primed)
        self._fresh: set[int] = set()       # primed this tick: first reading next tick
        self._psutil = None
        self._rows = 0
        self._started = False
        self._stopped = False

    # -- lifecycle
    def start(self) -> "TelemetrySampler":
        if self._started:
            return self
        self._started = True
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.out_path, "a", encoding="utf-8")
        sources: list[str] = []
        if self.use_nvml:
            self._nvml, line = _open_nvml(self.gpu_indices)
            self.status["nvml"] = line
            if self._nvml is not None:
                sources.append("nvml")
                self.status["gpus"] = self._nvml.gpus
        else:
            self.status["nvml"] = "NVML disabled"
        want_proc = (self.process_mode is True
                     or (self.process_mode == "auto" and self._nvml is None))
        if want_proc:
            try:
                import psutil
                self._psutil = psutil
                psutil.cpu_percent(None)  # prime the system-wide counter
                if self.system:
                    sources.append("system")
                if self.pids_fn is not None:
                    sources.append(self.process_source)
            except ImportError:
                self.status["process"] = "psutil not installed"
        if self.prometheus_url:
            sources.append("prometheus")
            self.status["prometheus"] = {"url": metrics_url(self.prometheus_url), "scrapes": 0,
                                         "errors": 0, "last_error": None}
        self.status["sources"] = sources
        self.status["state"] = "running"
        self._wall0 = time.perf_counter()
        t = threading.Thread(target=self._sample_loop, name=f"telemetry-{self.deployment}",
                             daemon=True)
        self._threads.append(t)
        if self.prometheus_url:
            self._threads.append(threading.Thread(
                target=self._prom_loop, name=f"telemetry-prom-{self.deployment}", daemon=True))
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop the threads, write what is buffered, close the file; returns `status`.
        Safe to call more than once (and without start())."""
        if self._stopped or not self._started:
            self._stopped = True
            return self.status
        self._stopped = True
        self._stop.set()
        for th in self._threads:
            th.join(timeout=max(5.0, self.prometheus_timeout_s + 2.0))
        self._flush()
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
        if self._nvml is not None:
            self._nvml.shutdown()
        wall = time.perf_counter() - self._wall0
        self.status["state"] = "stopped"
        self.status["duration_s"] = round(wall, 3)
        self.status["rows"] = self._rows
        cpu = self.status.get("sampler_cpu_s", 0.0) + self.status.get("prometheus_cpu_s", 0.0)
        self.status["total_cpu_pct"] = round(100.0 * cpu / wall, 3) if wall > 0 else None
        return self.status

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- output
    def _emit(self, t: float, source: str, items: list[tuple[str, str, float, str]]) -> None:
        lines = []
        for metric, entity, value, unit in items:
            if value is None or not math.isfinite(value):
                continue
            lines.append(json.dumps(
                {"deployment": self.deployment, "t_s": round(t, 6), "source": source,
                 "metric": metric, "entity": entity, "value": round(float(value), 6),
                 "unit": unit}, separators=(",", ":"), allow_nan=False))
        if lines:
            with self._lock:
                self._buf.extend(lines)
                self._rows += len(lines)

    def _flush(self) -> None:
        with self._lock:
            if self._f is None or not self._buf:
                return
            self._f.write("\n".join(self._buf) + "\n")
            self._f.flush()
            self._buf.clear()

    # -- the 10 Hz loop
    def _refresh_pids(self) -> None:
        try:
            pids = set(int(p) for p in (self.pids_fn() or []))
        except Exception as e:  # noqa: BLE001 (a deployment going away must not kill telemetry)
            self.status["pids_error"] = f"{type(e).__name__}: {e}"
            return
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
                self._fresh.discard(pid)
        ps = self._psutil
        for pid in pids - set(self._procs):
            try:
                p = ps.Process(pid)
                p.cpu_percent(None)  # prime; the next call measures since now
                self._procs[pid] = p
                self._fresh.add(pid)
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                pass
        self.status["pids_seen"] = sorted(set(self.status.get("pids_seen", [])) | set(self._procs))

    def _sample_processes(self) -> list[tuple[str, str, float, str]]:
        ps = self._psutil
        out: list[tuple[str, str, float, str]] = []
        cpu_total = rss_total = 0.0
        for pid, p in list(self._procs.items()):
            if pid in self._fresh:  # primed a moment ago: its cpu % would be over ~0 s
                self._fresh.discard(pid)
                continue
            try:
                with p.oneshot():
                    cpu = p.cpu_percent(None)
                    rss = p.memory_info().rss / MIB
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                del self._procs[pid]
                continue
            out.append(("proc_cpu_pct", str(pid), cpu, "%"))
            out.append(("proc_rss_mib", str(pid), rss, "MiB"))
            cpu_total += cpu
            rss_total += rss
        if out:
            out.append(("proc_cpu_pct", "total", cpu_total, "%"))
            out.append(("proc_rss_mib", "total", rss_total, "MiB"))
        return out

    def _sample_loop(self) -> None:
        cpu0 = time.thread_time()
        ticks = late = 0
        tick_sum = tick_max = 0.0
        next_t = time.perf_counter()
        next_pids = next_t
        next_flush = next_t + self.flush_s
        errors = 0
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    if self._psutil is not None and self.pids_fn is not None and start >= next_pids:
                        self._refresh_pids()
                        next_pids = start + self.pid_refresh_s
                    t = self.clock_fn()
                    if self._nvml is not None:
                        self._emit(t, "nvml", self._nvml.sample())
                    if self._psutil is not None:
                        if self._procs:
                            self._emit(t, self.process_source, self._sample_processes())
                        if self.system:
                            vm = self._psutil.virtual_memory()
                            self._emit(t, "system", [
                                ("sys_cpu_pct", "system", self._psutil.cpu_percent(None), "%"),
                                ("sys_mem_available_mib", "system", vm.available / MIB, "MiB")])
                except Exception as e:  # noqa: BLE001 (keep sampling; say what went wrong)
                    errors += 1
                    self.status["sample_errors"] = errors
                    self.status["last_sample_error"] = f"{type(e).__name__}: {e}"
                now = time.perf_counter()
                if now >= next_flush:
                    self._flush()
                    next_flush = now + self.flush_s
                dt = time.perf_counter() - start
                ticks += 1
                tick_sum += dt
                tick_max = max(tick_max, dt)
                next_t += self.interval_s
                wait = next_t - time.perf_counter()
                if wait < 0:  # fell behind: do not burst to catch up
                    late += 1
                    next_t = time.perf_counter()
                    wait = 0.0
                if wait:
                    self._stop.wait(wait)
        finally:
            cpu = time.thread_time() - cpu0
            wall = time.perf_counter() - self._wall0
            self.status.update({
                "ticks": ticks, "late_ticks": late,
                "tick_mean_ms": round(1e3 * tick_sum / ticks, 3) if ticks else None,
                "tick_max_ms": round(1e3 * tick_max, 3),
                "sampler_cpu_s": round(cpu, 4),
                "sampler_cpu_pct": round(100.0 * cpu / wall, 3) if wall > 0 else None,
            })
            if self._nvml is not None and self._nvml.unsupported:
                self.status["nvml_unsupported"] = dict(self._nvml.unsupported)

    # -- the /metrics loop
    def _prom_loop(self) -> None:
        cpu0 = time.thread_time()
        st = self.status["prometheus"]
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    text = scrape_prometheus(self.prometheus_url, self.prometheus_timeout_s,
                                            headers=self.prometheus_headers)
                    t = self.clock_fn()
                    rows = prometheus_rows(text, self.prometheus_allow)
                    self._emit(t, "prometheus",
                               [(r["metric"], r["entity"], r["value"], r["unit"]) for r in rows])
                    st["scrapes"] += 1
                except (urllib.error.URLError, OSError, ValueError) as e:
                    st["errors"] += 1
                    st["last_error"] = str(getattr(e, "reason", e))
                except Exception as e:  # noqa: BLE001
                    st["errors"] += 1
                    st["last_error"] = f"{type(e).__name__}: {e}"
                wait = self.prometheus_interval_s - (time.perf_counter() - start)
                self._stop.wait(max(wait, 0.0))
        finally:
            self.status["prometheus_cpu_s"] = round(time.thread_time() - cpu0, 4)


def client_pids() -> list[int]:
    """This process and its live children in its own process group (the client's shards);
    launched deployments are left out: they run in sessions of their own (backends/launch.py)."""
    pids = [os.getpid()]
    try:
        import psutil
        group = os.getpgid(0)
        for c in psutil.Process().children(recursive=True):
            try:
                if os.getpgid(c.pid) == group:
                    pids.append(c.pid)
            except OSError:  # gone meanwhile
                continue
    except Exception:  # noqa: BLE001 (telemetry is best effort)
        pass
    return pids


def client_sampler(out_path: str | Path, clock_fn: Callable[[], float] | None = None,
                   interval_s: float = 0.1, pids_fn: Callable[[], Iterable[int]] | None = None,
                   flush_s: float = 1.0) -> TelemetrySampler:
    """A sampler of the load generator's own processes (`client` rows, deployment ""), to run
    for the whole run beside the deployments' samplers. `pids_fn` defaults to `client_pids`."""
    return TelemetrySampler(out_path, pids_fn or client_pids, interval_s=interval_s,
                            clock_fn=clock_fn, deployment="", nvml=False, process=True,
                            process_source="client", system=False, flush_s=flush_s)


def sampler_overhead(seconds: float = 5.0, interval_s: float = 0.1,
                     out_path: str | Path | None = None) -> dict[str, Any]:
    """Measure the sampler's own CPU cost: sample this process for `seconds` at `interval_s`
    and return its status (sampler_cpu_pct is % of one core)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(out_path) if out_path else Path(d) / "telemetry.jsonl"
        s = TelemetrySampler(path, lambda: [os.getpid()], interval_s=interval_s)
        s.start()
        time.sleep(seconds)
        return s.stop()


if __name__ == "__main__":  # python -m infer_bench.workloads.telemetry [seconds]
    import sys
    print(json.dumps(sampler_overhead(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0), indent=1))
