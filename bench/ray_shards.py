"""Benchmark: one client process vs client shards on Ray, against the mock server at rising rates
(issue 17's check): achieved request rate and TTFT error (median, p99) per rate, in one run.

Run (from the repo root, with the ray extra installed, ~3-5 min, loopback only; on a shared
host take the bench lock):

    flock /tmp/bench.lock .venv/bin/python bench/ray_shards.py --rates 100,300,600,1000

Without --ray the script starts a local Ray cluster of --nodes nodes (one CPU each, a small
object store, no dashboard; `ray_shards.LocalRayCluster`, stopped at the end, its processes
only) and puts --shards shards on it; with --ray HOST:PORT it uses that cluster (which must be
able to reach the mock: it listens on 127.0.0.1, so the cluster must be on this host). The mock
(`python -m infer_bench.backends.mock.server`; TTFT 50 ms, 10 ms per token, 16 output tokens,
one token per chunk) runs once for the whole script; per rate, Poisson arrivals (seeded) send
`rate x --duration` requests (at most --max-requests) through `workloads/selftest.run_selftest`,
first with one process (LoadGenerator), then with the Ray shards. TTFT error = measured TTFT -
(mock first chunk sent - mock received): both are differences on one clock each, so the Ray
shards' clock offsets do not enter it; what does is the shards' send/receive precision.

Printed: one row per rate and client ("1 proc" / "ray xN"): target and achieved rate (from the
send timestamps), ok/sent, TTFT error p50 / p99 (ms), send lateness p99 and loop lag p99 (ms,
pooled over shards), and whether the client flagged itself client-bound. On a 2-core host the
shards, the raylets and the mock share two cores, so Ray cannot beat one process there; the
script is for hosts (or clusters) with a core per shard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import infer_bench  # noqa: F401
except ImportError:  # pragma: no cover - run from a checkout without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infer_bench.workloads.selftest import MockProcess, run_selftest

TTFT_MS, TOKEN_MS, OUT_TOKENS = 50.0, 10.0, 16


def _f(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100,300,600,1000", help="req/s, comma-separated")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of sends per rate")
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--shards", type=int, default=2, help="Ray client shards")
    ap.add_argument("--nodes", type=int, default=2, help="nodes of the local cluster (no --ray)")
    ap.add_argument("--ray", default=None, help="an existing cluster's HOST:PORT (default: "
                                                "start a local one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    from infer_bench.workloads.ray_shards import LocalRayCluster

    cluster = None
    address = args.ray
    try:
        if address is None:
            cluster = LocalRayCluster(nodes=args.nodes, cpus=1).start()
            address = cluster.address
        print(f"ray cluster {address}; mock: TTFT {TTFT_MS:g} ms, {TOKEN_MS:g} ms/token, "
              f"{OUT_TOKENS} tokens")
        print(f"{'rate':>6} {'client':>8} {'achieved':>9} {'ok/sent':>10} {'ttft_err_p50':>12} "
              f"{'ttft_err_p99':>12} {'late_p99':>8} {'lag_p99':>8} {'bound':>5}")
        with MockProcess(ttft_s=TTFT_MS / 1e3, token_delay_s=TOKEN_MS / 1e3) as mock:
            common = dict(duration_s=args.duration, min_requests=20,
                          max_requests=args.max_requests, output_tokens=OUT_TOKENS,
                          url=mock.url, seed=args.seed)
            for rate in rates:
                for label, kw in (("1 proc", {}),
                                  (f"ray x{args.shards}", {"ray_address": address,
                                                           "workers": args.shards})):
                    row = run_selftest([rate], **common, **kw)[0]
                    print(f"{rate:>6g} {label:>8} {_f(row['achieved_rps'], 1):>9} "
                          f"{row['n_ok']:>5}/{row['n']:<4} {_f(row['ttft_err_p50_ms']):>12} "
                          f"{_f(row['ttft_err_p99_ms']):>12} "
                          f"{_f(row['send_lateness_p99_ms']):>8} "
                          f"{_f(row['loop_lag_p99_ms']):>8} "
                          f"{'yes' if row['client_bound'] else 'no':>5}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
