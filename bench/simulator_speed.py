"""Simulator speed: 100k requests through mono and 4P4D deployments (illustrative H100 profile).

Run:  .venv/bin/python bench/simulator_speed.py [--requests 100000] [--per-token]

Prints, per deployment and recording mode, the wall time of `workloads.simulator.simulate`, the
number of engine steps simulated, and the simulated TTFT/TPOT p50. Target: 100k requests in
under 30 s (per_token=False). per_token=True also stores every token's time (heavier: lists of
n_output floats per request).
"""

from __future__ import annotations

import argparse
import time

from infer_bench.workloads.planning.latency_model import LatencyModel, example_profile_path
from infer_bench.workloads.planning.sim_model import (Deployment, InstanceConfig, Link,
                                                      requests_from_spec)
from infer_bench.workloads.planning.simulator import simulate
from infer_bench.workloads.spec import ArrivalSpec, LengthDist, WorkloadSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=60.0, help="Poisson rate (req/s), 8 chips")
    ap.add_argument("--per-token", action="store_true", help="also time per_token=True")
    args = ap.parse_args()
    lm = LatencyModel.load(example_profile_path())
    wl = WorkloadSpec(input_len=LengthDist("lognormal", mean=1024, sigma=0.8, max=8192),
                      output_len=LengthDist("lognormal", mean=256, sigma=0.8, max=2048),
                      num_requests=args.requests, seed=0)
    reqs = requests_from_spec(wl, ArrivalSpec(kind="poisson", rate=args.rate, seed=0))
    tokens = int(reqs.n_output.sum())
    print(f"{args.requests} requests, {tokens} output tokens, Poisson {args.rate:g} req/s")
    inst = InstanceConfig(max_num_batched_tokens=8192, max_num_seqs=256)
    deps = [Deployment("mono", num_instances=8, instance=inst),
            Deployment("disagg", num_prefill=4, num_decode=4, instance=inst,
                       link=Link(100.0, 1e-5, layerwise=True))]
    modes = [False, True] if args.per_token else [False]
    for dep in deps:
        for per_token in modes:
            t0 = time.perf_counter()
            res = simulate(dep, lm, reqs, per_token=per_token)
            wall = time.perf_counter() - t0
            p = res.percentiles()
            print(f"{dep.name:10s} per_token={per_token!s:5s} wall {wall:6.2f} s  "
                  f"steps {res.n_steps:8d}  ({res.n_steps / wall / 1e3:.0f}k steps/s)  "
                  f"ttft_p50 {p['ttft_p50_s']:.3f} s  tpot_p50 {p['tpot_p50_s'] * 1e3:.1f} ms  "
                  f"failed {int(res.failed.sum())}")


if __name__ == "__main__":
    main()
