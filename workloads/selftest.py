"""Client self-test: how precise is our load generator, and at what rate does it become the
bottleneck? Drives the calibrated mock server at rising load and compares what the client
measured with what the mock logged.

Role in the data flow: `infer-bench selftest` (cli/extra_cmds.py) and bench/client_overhead.py
call `run_selftest(...) -> list[dict]` (one row per rate); tests call it with tiny counts.

Method: the mock runs in its own process (`python -m infer_bench.backends.mock.server`, on
loopback; or at `url` if given) so the client's event loop measures only itself. For each rate,
`n = clamp(rate * duration_s, min_requests, max_requests)` requests go out with Poisson
arrivals (seeded) through `LoadGenerator` (or `multiproc.run_sharded` with workers > 1, or
`ray_shards.run_ray_sharded` with `ray_address`: shards on a Ray cluster's nodes of this host). The
mock logs, per request, when the request arrived (the kernel's receive time on Linux, else
when its read returned) and when each chunk left (perf_counter = CLOCK_MONOTONIC, the same clock
as the client's run clock in any process on the host). Then per request:
- TTFT error = measured TTFT - true TTFT, true TTFT = mock first chunk sent - mock received
  (what a perfect client with zero overhead would report). It splits into send overhead (mock
  received - client send timestamp: the write and loopback, plus the server's read and parse
  without kernel timestamps) and receive delay (client's first-chunk time - mock's send time;
  slightly negative with kernel timestamps, taken while the mock's send call runs);
- ITL error, per token: for each chunk after the first, measured gap / the client's token count
  of the chunk - true gap / the mock's token count (a client that miscounts tokens shows here).
Row columns (ms unless named otherwise): rate_rps, n, n_ok, achieved_rps, ttft_err_p50_ms,
ttft_err_p99_ms, itl_err_p50_ms, itl_err_p99_ms, itl_p50_ms and itl_true_p50_ms (median
per-token ITL as measured, and as the mock's log says), send_overhead_p50_ms, recv_delay_p50_ms,
recv_delay_p99_ms, send_lateness_p99_ms, loop_lag_p99_ms, mock_lateness_p99_ms,
client_cpu_share, client_bound (the load generator's own flag), client_timestamps and
mock_timestamps (where the chunk read times and the mock's received times came from: "kernel"
receive timestamps, "user" clock reads, or e.g. "mixed (98% kernel)"; see
backends/rawsock.py), bottleneck ("" | "client" | "mock"). "client" when client_bound is set
or the p50 TTFT error exceeds `err_threshold_s`; "mock" when the mock itself sent chunks later
than scheduled (p99 > err_threshold_s) and the client was not flagged. `bottleneck_rate(rows)`
is the first rate flagged "client".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from typing import Any, Sequence

import numpy as np

from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import PreparedRequest, RunClock

from .spec import ArrivalSpec

DEFAULT_RATES = (10, 50, 100, 200, 400)


class MockProcess:
    """The mock server in a child process (loopback, free port); a context manager. `cpus`: pin
    it to these CPU cores (Linux)."""

    def __init__(self, **cfg: Any):
        args = [sys.executable, "-m", "infer_bench.backends.mock.server", "--port", "0",
                "--ttft-ms", str(cfg.get("ttft_s", 0.02) * 1e3),
                "--token-delay-ms", str(cfg.get("token_delay_s", 0.005) * 1e3),
                "--tokens-per-chunk", str(cfg.get("tokens_per_chunk", 1))]
        if cfg.get("usage_delta"):
            args += ["--usage-delta", str(cfg["usage_delta"])]
        if cfg.get("include_token_ids"):
            args += ["--include-token-ids"]
        cpus = cfg.get("cpus")
        pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=pin)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise RuntimeError(f"mock server did not start: {line.strip()} {err.strip()[-300:]}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> "MockProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _http(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _pct(a, q) -> float | None:
    a = np.asarray([x for x in a if x is not None], dtype=float)
    return float(np.percentile(a, q)) if a.size else None


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def compare_with_log(records, log: list[dict], clock: RunClock) -> dict[str, list[float]]:
    """Per-request error samples (seconds) of client records against the mock's log."""
    by_id = {e["request_id"]: e for e in log}        # the mock logs the X-Request-Id it got
    off = clock.t0_ns / 1e9
    out: dict[str, list[float]] = {k: [] for k in (
        "ttft_err", "itl_err", "itl_meas", "itl_true", "send_overhead", "recv_delay",
        "mock_lateness")}
    for r in records:
        e = by_id.get(r.wire_request_id or r.request_id)
        if e is None or not r.ok or not e["chunk_s"] or not r.chunk_times_s:
            continue
        mock_chunks = np.asarray(e["chunk_s"], dtype=float) - off
        recv = e["received_s"] - off
        true_ttft = mock_chunks[0] - recv
        out["ttft_err"].append(r.ttft_s - true_ttft)
        out["send_overhead"].append(recv - r.send_s)
        out["recv_delay"].append(r.chunk_times_s[0] - mock_chunks[0])
        m = min(len(mock_chunks), len(r.chunk_times_s))
        cg = np.diff(np.asarray(r.chunk_times_s[:m], dtype=float))
        tg = np.diff(mock_chunks[:m])
        true_k = e.get("chunk_tokens") or []
        for j, (c, t) in enumerate(zip(cg, tg), start=1):
            k = max(1, int(r.chunk_tokens[j]))             # what the client counted
            kt = max(1, int(true_k[j])) if j < len(true_k) else k   # what the mock sent
            out["itl_err"].extend([c / k - t / kt] * kt)
            out["itl_meas"].extend([c / k] * k)
            out["itl_true"].extend([t / kt] * kt)
        if e.get("chunk_target_s"):
            out["mock_lateness"].extend(
                (np.asarray(e["chunk_s"]) - np.asarray(e["chunk_target_s"])).tolist())
    return out


def timestamp_summary(counts: dict[str, int]) -> str | None:
    """{"kernel": n, "user": m, "mixed": k} -> "kernel" | "user" | "mixed (97% kernel)" (share of
    requests whose times all came from the kernel); None when empty."""
    total = sum(counts.values())
    if not total:
        return None
    for src in ("kernel", "user"):
        if counts.get(src, 0) == total:
            return src
    return f"mixed ({counts.get('kernel', 0) / total:.0%} kernel)"


def _requests(n: int, rate: float, output_tokens: int, endpoint: str) -> list[PreparedRequest]:
    tag = f"st{rate:g}"
    return [PreparedRequest(f"{tag}-{i:05d}", "hello mock server", max_tokens=output_tokens,
                            endpoint=endpoint) for i in range(n)]


def run_selftest(
    rates: Sequence[float] = DEFAULT_RATES,
    *,
    duration_s: float = 2.0,
    min_requests: int = 10,
    max_requests: int = 400,
    ttft_s: float = 0.02,
    token_delay_s: float = 0.005,
    tokens_per_chunk: int = 1,
    output_tokens: int = 8,
    workers: int = 1,
    endpoint: str = "completions",
    url: str | None = None,
    err_threshold_s: float = 0.002,
    seed: int = 0,
    on_row=None,
    ray_address: str | None = None,
) -> list[dict]:
    """One row per rate (see the module docstring). `url`: an already running mock (its log is
    reset before each rate); otherwise a mock subprocess is started with ttft_s, token_delay_s
    and tokens_per_chunk. Bounded: at most max_requests per rate, all on loopback."""
    from .loadgen import LoadGenerator
    from .multiproc import run_sharded

    mock = None if url else MockProcess(ttft_s=ttft_s, token_delay_s=token_delay_s,
                                        tokens_per_chunk=tokens_per_chunk)
    base = url or mock.url
    rows: list[dict] = []
    try:
        for rate in rates:
            rate = float(rate)
            n = int(min(max_requests, max(min_requests, round(rate * duration_s))))
            reqs = _requests(n, rate, output_tokens, endpoint)
            arrival = ArrivalSpec("poisson", rate=rate, seed=seed)
            _http(base + "/mock/reset", "POST")
            clock = RunClock()
            if ray_address:
                from .ray_shards import run_ray_sharded
                res = run_ray_sharded(ray_address, base, endpoint, reqs, arrival, workers,
                                      clock=clock, load_point=f"{rate:g}rps")
            elif workers > 1:
                res = run_sharded(base, endpoint, reqs, arrival, workers, clock=clock,
                                  load_point=f"{rate:g}rps")
            else:
                res = run_loop(LoadGenerator(base, endpoint, reqs, arrival, clock=clock,
                                                load_point=f"{rate:g}rps").run())
            log = _http(base + "/mock/log")
            err = compare_with_log(res.records, log, clock)
            h = res.health
            ok = [r for r in res.records if r.ok]
            sends = sorted(r.send_s for r in res.records if r.send_s is not None)
            mock_src = Counter(e.get("received_ts", "user") for e in log)
            row = {
                "rate_rps": rate, "n": n, "n_ok": len(ok),
                "achieved_rps": ((len(sends) - 1) / (sends[-1] - sends[0])
                                 if len(sends) > 1 and sends[-1] > sends[0] else None),
                "ttft_err_p50_ms": _ms(_pct(err["ttft_err"], 50)),
                "ttft_err_p99_ms": _ms(_pct(err["ttft_err"], 99)),
                "itl_err_p50_ms": _ms(_pct(err["itl_err"], 50)),
                "itl_err_p99_ms": _ms(_pct(err["itl_err"], 99)),
                "itl_p50_ms": _ms(_pct(err["itl_meas"], 50)),
                "itl_true_p50_ms": _ms(_pct(err["itl_true"], 50)),
                "send_overhead_p50_ms": _ms(_pct(err["send_overhead"], 50)),
                "recv_delay_p50_ms": _ms(_pct(err["recv_delay"], 50)),
                "recv_delay_p99_ms": _ms(_pct(err["recv_delay"], 99)),
                "send_lateness_p99_ms": _ms(h.send_lateness_p99_s),
                "loop_lag_p99_ms": _ms(h.loop_lag_p99_s),
                "mock_lateness_p99_ms": _ms(_pct(err["mock_lateness"], 99)),
                "client_cpu_share": h.cpu_share,
                "client_bound": bool(h.client_bound),
                "client_timestamps": timestamp_summary(res.extra.get("timestamps", {})),
                "mock_timestamps": timestamp_summary(mock_src),
                "workers": workers,
                "ray": bool(ray_address),
            }
            p50 = row["ttft_err_p50_ms"]
            mock_late = row["mock_lateness_p99_ms"]
            if h.client_bound or len(ok) < n or (p50 is not None and p50 > err_threshold_s * 1e3):
                row["bottleneck"] = "client"
            elif mock_late is not None and mock_late > err_threshold_s * 1e3:
                row["bottleneck"] = "mock"
            else:
                row["bottleneck"] = ""
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        if mock is not None:
            mock.close()
    return rows


def bottleneck_rate(rows: Sequence[dict]) -> float | None:
    """The lowest rate whose row is flagged client-bound (None: never)."""
    for r in sorted(rows, key=lambda r: r["rate_rps"]):
        if r.get("bottleneck") == "client":
            return r["rate_rps"]
    return None
