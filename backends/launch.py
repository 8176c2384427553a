"""Deployments: where a run's requests go, launched and torn down around each measurement.

A deployment is either the reference engine started as real server processes on loopback
(`EngineDeployment`: `python -m infer_bench.cli serve ...` with the spec's engine options as its
flags, one process per disagg worker besides, or, with `ray_address`, the disagg workers as
actors on a Ray cluster: `serve --ray`),
or an external OpenAI-compatible server given by URL (`ExternalDeployment`: vLLM, SGLang, Dynamo,
llama.cpp...). Both expose the same small interface to the runner: `start()` (returns once the
server answers its health check, or raises `DeploymentError` with a one-line reason), `base_url`,
`describe()` for the results dir, `fetch_steps()` (engine step traces, empty for external
servers), `pids()` (for telemetry), and `stop()`.

CPU pinning: an engine deployment given its share of a `cpu_pinning.CorePlan` (`cores=`) passes
the share to the server in the environment (INFER_BENCH_CPUS, _PREFILL, _DECODE: the engine pins
itself and its workers), pins the server's pid as soon as it is spawned, and once healthy reads
back the affinity of every process it started (`affinity`, also in `describe()["cpus"]`).

This module launches the engine as a subprocess and talks to it over HTTP only: it does not import
`backends.engine` (the engine is measured like any other server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cpu_pinning import DeploymentCores, observed_affinity, pin_threads


class DeploymentError(RuntimeError):
    """A deployment could not be started or reached; the message is one clear line."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_get_json(url: str, timeout: float = 5.0, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback / user URL)
        return json.loads(resp.read().decode("utf-8"))


@dataclass
class EngineDeploymentSpec:
    """How to launch the reference engine for one deployment of a run. The engine options have
    the names of the CLI's EngineOptions (cli/engine_options.py) and of `infer-bench serve`'s
    ServeSettings; None means the engine's default. `command()` writes them as serve's flags."""

    name: str = "mono"
    model: str = "smollm2-135m"      # as given: the model name clients send, and spec.json's
    model_path: str | None = None    # where the engine loads it from (resolved once); None: model
    mode: str = "mono"  # "mono" or "disagg"
    num_threads: int = 2             # the deployment's total (disagg: split across workers)
    prefill_workers: int = 1
    decode_workers: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    kv_cache_gb: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    speculation: str | None = None   # --spec: ngram | draft:MODEL
    spec_k: int | None = None
    kv_transport: str = "shm"
    layerwise: bool = True
    kv_link_gbps: float | None = None
    disagg_threshold: int | None = None
    ray_address: str | None = None   # disagg: its workers as actors on this Ray cluster (serve --ray)
    extra_args: list[str] = field(default_factory=list)

    kind: str = "engine"

    def chips(self) -> int:
        """Chips this deployment occupies, for per-chip goodput: GPUs = one per worker (prefill and
        decode together); on CPU, the cores it is given (its total threads), so mono with 2 threads
        and 1P1D with 1 thread per worker both count 2 — the same hardware."""
        workers = self.prefill_workers + self.decode_workers if self.mode == "disagg" else 1
        if self.device == "cpu":
            return max(self.num_threads, workers)
        return workers

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chips"] = self.chips()
        return d


@dataclass
class ExternalDeploymentSpec:
    """An OpenAI-compatible server that is already running somewhere (`run --url`, or a named
    `--target NAME=URL,...`). `chips`: the GPUs (or cores) it occupies, for goodput per chip."""

    name: str
    url: str
    model: str | None = None  # model name to send; discovered from /v1/models when None
    api_key: str | None = None
    chips: int = 1
    kind: str = "url"
    # the server's Prometheus endpoint; None: <base url>/metrics, tried, a warning when absent
    metrics_url: str | None = None
    # the environment variable the API key was read from (recorded instead of the key)
    api_key_env: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d.get("api_key"):   # never the key: the var it came from, or that one was given
            d["api_key"] = None if self.api_key_env else "***"
        return d


class EngineDeployment:
    """The reference engine as a real server process on 127.0.0.1 (a free port)."""

    def __init__(self, spec: EngineDeploymentSpec, log_dir: Path, startup_timeout_s: float = 300.0,
                 cores: DeploymentCores | None = None):
        self.spec = spec
        self.cores = cores
        self.affinity: dict = {}  # planned and observed CPUs (see read_affinity)
        self.log_dir = Path(log_dir)
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.log_dir / f"server-{spec.name}.log"
        self.model_name: str = spec.model
        self.api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            sys.executable, "-m", "infer_bench.cli", "serve",
            "--model", s.model_path or s.model, "--served-model-name", s.model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--device", s.device, "--dtype", s.dtype, "--threads", str(s.num_threads),
        ]
        if s.mode != "mono":
            cmd += ["--mode", s.mode, "--prefill-workers", str(s.prefill_workers),
                    "--decode-workers", str(s.decode_workers), "--kv-transport", s.kv_transport]
            if not s.layerwise:
                cmd.append("--no-layerwise")
            if s.kv_link_gbps is not None:
                cmd += ["--kv-link-gbps", str(s.kv_link_gbps)]
            if s.disagg_threshold is not None:
                cmd += ["--disagg-threshold", str(s.disagg_threshold)]
            if s.ray_address:
                cmd += ["--ray", s.ray_address]
        for flag, value in (("--kv-cache-gb", s.kv_cache_gb),
                            ("--max-num-batched-tokens", s.max_num_batched_tokens),
                            ("--max-num-seqs", s.max_num_seqs), ("--max-model-len", s.max_model_len),
                            ("--block-size", s.block_size), ("--spec", s.speculation),
                            ("--spec-k", s.spec_k)):
            if value is not None:
                cmd += [flag, str(value)]
        if not s.enable_prefix_caching:
            cmd.append("--no-prefix-caching")
        if not s.enable_chunked_prefill:
            cmd.append("--no-chunked-prefill")
        return cmd + list(s.extra_args)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        threads = str(self.spec.num_threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
        env.pop("INFER_BENCH_API_KEY", None)  # the key of --url runs must not lock our own engine
        for var in ("INFER_BENCH_CPUS", "INFER_BENCH_CPUS_PREFILL", "INFER_BENCH_CPUS_DECODE"):
            env.pop(var, None)  # only this deployment's share, never one inherited
        if self.cores is not None:
            env.update(self.cores.env())
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._log = log
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # our own process group: stop() reaps every worker
        )
        pin_error = None
        if self.cores is not None and self.cores.pinned:
            try:  # before its interpreter starts any thread (the server also pins itself)
                pin_threads(self.cores.server_cpus(), self.proc.pid)
            except OSError as e:
                pin_error = f"sched_setaffinity refused: {e}"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DeploymentError(
                    f"engine '{self.spec.name}' exited with code {self.proc.returncode} during "
                    f"start-up: {self._last_log_line()}")
            try:
                health = http_get_json(self.base_url + "/health", timeout=2.0)
                self.affinity = self.read_affinity(health)
                if pin_error:
                    self.affinity["error"] = pin_error
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.25)
        self.stop()
        raise DeploymentError(
            f"engine '{self.spec.name}' not healthy after {self.startup_timeout_s:.0f} s "
            f"(log: {self.log_path})")

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1].strip() if lines else "(empty log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The server process and its children (workers), for telemetry."""
        if not self.alive():
            return []
        pids = [self.proc.pid]
        try:
            import psutil
            pids += [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:  # noqa: BLE001 (telemetry is best effort)
            pass
        return pids

    def read_affinity(self, health: dict | None = None) -> dict:
        """{"planned": the share (None without a plan), "observed": [{pid, role, cpus}] for the
        server and every child}; disagg workers are named from /health's worker list."""
        roles: dict[int, str] = {}
        if self.proc is not None:
            roles[self.proc.pid] = "router" if self.spec.mode == "disagg" else "server"
        for w in (health or {}).get("workers") or []:
            if isinstance(w, dict) and w.get("pid"):
                roles[int(w["pid"])] = str(w.get("name") or w.get("role") or "worker")
        seen = observed_affinity(self.pids())
        return {"planned": self.cores.to_dict() if self.cores is not None else None,
                "observed": [{"pid": pid, "role": roles.get(pid, "child"), "cpus": cpus}
                             for pid, cpus in seen.items()]}

    def fetch_steps(self) -> list[dict]:
        try:
            data = http_get_json(self.base_url + "/debug/steps", timeout=10.0)
        except (urllib.error.URLError, OSError, ValueError):
            return []
        return data.get("steps", data) if isinstance(data, dict) else data

    def describe(self) -> dict:
        d = self.spec.to_dict()
        d["url"] = self.base_url
        d["command"] = self.command()
        if self.affinity:
            d["cpus"] = self.affinity
        return d

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        # Reap anything left in the group (workers of a disaggregated deployment).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


class ExternalDeployment:
    """An already-running OpenAI-compatible server; start() only checks it is reachable."""

    def __init__(self, spec: ExternalDeploymentSpec):
        self.spec = spec
        self.api_key = spec.api_key
        self.model_name: str | None = spec.model

    @property
    def base_url(self) -> str:
        url = self.spec.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def start(self, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            data = http_get_json(self.base_url + "/v1/models", timeout=timeout_s, headers=headers)
        except urllib.error.HTTPError as e:
            raise DeploymentError(f"server at {self.spec.url} answered HTTP {e.code} on /v1/models") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeploymentError(f"cannot reach {self.spec.url}: {reason or type(reason).__name__}") from None
        except ValueError:
            raise DeploymentError(f"{self.spec.url}/v1/models did not return JSON; is it an "
                                  "OpenAI-compatible server?") from None
        if self.model_name is None:
            models = [m.get("id") for m in (data.get("data") or []) if isinstance(m, dict)]
            if not models:
                raise DeploymentError(f"{self.spec.url} lists no models; pass --served-model")
            self.model_name = models[0]

    def alive(self) -> bool:
        return True

    def pids(self) -> list[int]:
        return []

    def fetch_steps(self) -> list[dict]:
        return []

    def describe(self) -> dict:
        d = self.spec.to_dict()
        d["model"] = self.model_name
        return d

    def stop(self) -> None:
        return None


def probe_external(specs, timeout_s: float = 5.0) -> dict[str, str]:
    """GET /v1/models of every external spec at once (threads), before any load is sent:
    {name: one-line reason} for those that cannot be used (unreachable, HTTP error, not JSON, no
    model). Engine specs are skipped (they are started by the run)."""
    from concurrent.futures import ThreadPoolExecutor

    ext = [s for s in specs if isinstance(s, ExternalDeploymentSpec)]

    def probe(spec: ExternalDeploymentSpec) -> str | None:
        try:
            ExternalDeployment(spec).start(timeout_s=timeout_s)
        except DeploymentError as e:
            return str(e)
        return None

    if not ext:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(ext))) as pool:
        found = dict(zip((s.name for s in ext), pool.map(probe, ext)))
    return {name: why for name, why in found.items() if why is not None}


def make_deployment(spec, log_dir: Path, cores: DeploymentCores | None = None):
    """`cores`: the deployment's share of a cpu_pinning.CorePlan (engines only; None: unpinned)."""
    if isinstance(spec, ExternalDeploymentSpec):
        return ExternalDeployment(spec)
    return EngineDeployment(spec, log_dir, cores=cores)
