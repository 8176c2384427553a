"""Benchmark: the TTFT overhead our client adds, side by side with a naive aiohttp + json client.

Run (from the repo root, ~20 s, loopback only):

    .venv/bin/python bench/client_overhead.py --rates 10,50,100 --duration 2

Both clients send the same seeded Poisson schedule to the same calibrated mock server (its own
process, `python -m infer_bench.backends.mock.server`); per request, overhead = measured TTFT -
true TTFT, true = (mock's first chunk sent - mock received), from the mock's send log (same
CLOCK_MONOTONIC host clock). Printed: median and p99 overhead per client and rate, and the
ratio naive / ours (> 1: ours adds less). The naive baseline is what popular tools do: sleep
until the send time, `session.post(json=...)`, iterate `resp.content` line by line, parse each
event, take the timestamp after parsing. No other benchmark tool is installed or compared (by
policy); the baseline stands in for them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

try:
    import infer_bench  # noqa: F401
except ImportError:  # pragma: no cover - run from a checkout without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import PreparedRequest, RunClock
from infer_bench.workloads.arrivals import send_times
from infer_bench.workloads.loadgen import LoadGenerator
from infer_bench.workloads.selftest import MockProcess
from infer_bench.workloads.spec import ArrivalSpec


def _http(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


async def naive_client(url: str, ids: list[str], times, max_tokens: int) -> dict[str, float]:
    """request_id -> (send perf_counter s, first-token perf_counter s)."""
    import aiohttp

    out: dict[str, tuple[float, float]] = {}
    endpoint = url + "/v1/completions"

    async def one(rid):
        payload = {"prompt": "hello mock server", "max_tokens": max_tokens, "stream": True,
                   "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first = None
        async with session.post(endpoint, json=payload, headers={"X-Request-Id": rid}) as resp:
            async for line in resp.content:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                obj = json.loads(data)
                ch = obj.get("choices") or []
                if ch and ch[0].get("text") and first is None:
                    first = time.perf_counter()
        out[rid] = (t0, first)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        tasks = []
        for rid, t in zip(ids, times):
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(rid)))
        await asyncio.gather(*tasks)
    return out


def overheads_from(measured: dict[str, float], log: list[dict]) -> np.ndarray:
    """measured: request_id -> client TTFT (s); minus the mock's true TTFT."""
    by = {e["request_id"]: e for e in log}
    return np.asarray([m - (by[r]["chunk_s"][0] - by[r]["received_s"])
                       for r, m in measured.items() if r in by and m is not None])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10,50,100")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--max-requests", type=int, default=300)
    ap.add_argument("--output-tokens", type=int, default=8)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--token-delay-ms", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the clients this often")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    with MockProcess(ttft_s=args.ttft_ms / 1e3, token_delay_s=args.token_delay_ms / 1e3) as mock:
        for rate in rates:
            n = int(min(args.max_requests, max(10, round(rate * args.duration))))
            times = send_times(ArrivalSpec("poisson", rate=rate, seed=0), n)
            ours, naive = [], []
            for rep in range(args.repeats):
                tag = f"r{rate:g}-{rep}"
                _http(mock.url + "/mock/reset", "POST")
                reqs = [PreparedRequest(f"ours-{tag}-{i}", "hello mock server",
                                        max_tokens=args.output_tokens) for i in range(n)]
                res = run_loop(LoadGenerator(mock.url, "completions", reqs, list(times),
                                             clock=RunClock()).run())
                ours.append(overheads_from({r.wire_request_id: r.ttft_s for r in res.records},
                                           _http(mock.url + "/mock/log")))
                _http(mock.url + "/mock/reset", "POST")
                ids = [f"naive-{tag}-{i}" for i in range(n)]
                got = asyncio.run(naive_client(mock.url, ids, times, args.output_tokens))
                naive.append(overheads_from(
                    {r: (f - s if f is not None else None) for r, (s, f) in got.items()},
                    _http(mock.url + "/mock/log")))
            o, v = np.concatenate(ours), np.concatenate(naive)
            rows.append((rate, n, np.median(o), np.percentile(o, 99), np.median(v),
                         np.percentile(v, 99)))
    print(f"{'rate':>6} {'n':>5} | {'ours p50':>9} {'ours p99':>9} | {'naive p50':>9} "
          f"{'naive p99':>9} | {'ratio p50':>9} {'ratio p99':>9}   (ms; TTFT overhead)")
    for rate, n, op50, op99, np50, np99 in rows:
        print(f"{rate:>6g} {n:>5d} | {op50 * 1e3:9.3f} {op99 * 1e3:9.3f} | {np50 * 1e3:9.3f} "
              f"{np99 * 1e3:9.3f} | {np50 / op50:9.2f} {np99 / op99:9.2f}")
    print("ratio = naive / ours (> 1: our client adds less overhead). Baseline: naive "
          "aiohttp+json client; no third-party benchmark tool was installed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
