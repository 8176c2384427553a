"""Planner validation on this machine: fit on some rates, predict held-out rates, print the error.

1. `infer-bench run` (mono and disagg 1P1D, default model) at the fitting rates -> results dir A;
2. a latency model per deployment is fitted from A's engine step traces (steps.jsonl);
3. `infer-bench run` at held-out rates (never used for fitting) -> results dir B;
4. `workloads.planner.validate(B, models)` re-simulates every (deployment, load point) of B with
   B's measured send times and lengths, and this prints predicted vs measured p50/p90 TTFT and TPOT
   and SLO attainment, with the median absolute relative error per metric (targets: p50 <= 10%,
   p90 <= 20%).

Exact command:

    .venv/bin/python bench/planner_validation.py --fit-rates 0.3,1.5 --test-rates 0.6,1.0 --num-requests 24
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil


def run(rates: str, out: Path, a) -> None:
    cmd = [sys.executable, "-m", "infer_bench.cli.main", "run", "--model", a.model, "--rates", rates,
           "--num-requests", str(a.num_requests), "--input-len", a.input_len, "--output-len", a.output_len,
           "--deployments", a.deployments, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False, env=dict(os.environ))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fit-rates", default="0.3,1.5")
    ap.add_argument("--test-rates", default="0.6,1.0")
    ap.add_argument("--num-requests", type=int, default=24)
    ap.add_argument("--input-len", default="uniform:64,384")
    ap.add_argument("--output-len", default="uniform:16,48")
    ap.add_argument("--deployments", default="mono,disagg")
    ap.add_argument("--out", default="results/planner-validation")
    a = ap.parse_args()

    from infer_bench.workloads.planner import validate
    from infer_bench.workloads.profiler import fit_results_dir
    from infer_bench.workloads.results import load_results

    print(f"load average at start: {psutil.getloadavg()}")
    out = Path(a.out)
    fit_dir, test_dir = out / "fit", out / "test"
    run(a.fit_rates, fit_dir, a)
    names = [d["name"] for d in load_results(fit_dir).spec["deployments"]]
    models = {}
    for name in names:
        try:
            lm = fit_results_dir(fit_dir, deployment=name)
        except Exception as e:  # noqa: BLE001
            print(f"cannot fit {name}: {e}")
            continue
        models[name] = lm
        print(f"{name}: {lm.describe()}")
    run(a.test_rates, test_dir, a)
    df = validate(test_dir, models)
    metrics = ["ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "slo_attainment"]
    print("\npredicted vs measured on held-out rates (ms for latencies):")
    for _, r in df.iterrows():
        cells = []
        for m in metrics:
            mv, pv = r[f"measured_{m}"], r[f"predicted_{m}"]
            scale = 1 if m == "slo_attainment" else 1e3
            if mv is None or pv is None or mv != mv or pv != pv:
                cells.append(f"{m}: -")
            else:
                rel = r[f"rel_error_{m}"]
                cells.append(f"{m}: {mv * scale:.0f}->{pv * scale:.0f}"
                             + (f" ({rel:+.0%})" if rel is not None and rel == rel else ""))
        print(f"  {r['deployment']:>12} @ {r['load_point']:<8} " + "  ".join(cells))
    print("\nmedian |relative error| over held-out points:")
    for m in metrics[:4]:
        vals = [abs(v) for v in df[f"rel_error_{m}"] if v is not None and v == v]
        target = 0.10 if "p50" in m else 0.20
        med = float(np.median(vals)) if vals else float("nan")
        print(f"  {m}: {med:.1%} (target <= {target:.0%}) {'OK' if med <= target else 'MISSED'}")
    print(f"load average at end: {psutil.getloadavg()}")


if __name__ == "__main__":
    main()
