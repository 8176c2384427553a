"""Synthetic results dirs for the report tests (a helper module, not a test).

`make_results_dir(path, ...)` writes a realistic results dir following docs/design.md
(schema_version 1): run.json, spec.json, env.json, requests.parquet, summary.csv/json,
steps.jsonl and, as `infer-bench run` writes it at the end, predictions.json
(workloads/planning/predict.py). It includes failed requests, multi-token chunks (as speculative decoding produces),
server-side queue/prefill timing for engine deployments, engine step traces with co-batched
prefill, and a deployment named `<script>alert(1)</script>` (an external-URL deployment, so it
has no server timing) to prove that names are escaped.

Engine deployments also carry what the reference engine reports per request in
`server_timing_json`: `token_steps` (the step id of each output token) and `steps` ({step id:
{prefill_tokens, decode_batch}}; disagg deployments key them "worker:step" with a parallel
`token_workers` list, as the disagg decode worker does); chunks slowed by a co-batched prefill
come from steps with prefill_tokens > 0. Disagg deployments add `server_transfer_s` and
`server_admission_s`; the deployments in `spec_deployments` add speculative-decoding counters
(`spec_proposed`, `spec_accepted`, `spec_verify_steps`). One request id and one error message
contain `<script>` markup (`MALICIOUS_ID`, `MALICIOUS_ERROR`) to prove that record strings are
escaped wherever they appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

MALICIOUS = "<script>alert(1)</script>"
MALICIOUS_ID = "req-<script>alert('id')</script>"
MALICIOUS_ERROR = "stream_error: <script>alert('err')</script> <img src=x onerror=alert(2)>"
DEPLOYMENT_NAMES = ["mono-2w", MALICIOUS, "disagg-1p1d", "disagg-2p1d", "vllm-url"]
SLO = {"ttft_s": 0.5, "tpot_s": 0.06}


def _deployment_spec(name: str) -> dict:
    if name == MALICIOUS or name.endswith("url"):
        return {"name": name, "kind": "url", "mode": "external", "model": "smollm2-135m",
                "url": "http://127.0.0.1:8000/v1"}
    mode = "disagg" if name.startswith("disagg") else "mono"
    d = {"name": name, "kind": "engine", "mode": mode, "model": "smollm2-135m", "threads": 2}
    if mode == "disagg":
        d.update(prefill_workers=int(name[7]), decode_workers=1, transport="shm")
    return d


def make_results_dir(path, n_deployments: int = 2, n_load_points: int = 2,
                     n_requests: int = 50, seed: int = 0, status: str = "complete",
                     with_steps: bool = True, with_summary: bool = True,
                     with_env: bool = True, with_telemetry: bool = False,
                     spec_deployments: tuple = ("mono-2w", "disagg-1p1d"),
                     with_token_steps: bool = True, name: str | None = None,
                     with_predictions: bool = True) -> Path:
    """Write a synthetic results dir into `path` (created) and return it.

    n_requests is per deployment and load point. Load points are offered Poisson rates
    1, 2, 4, ... req/s, run one after another on the run clock.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = DEPLOYMENT_NAMES[:n_deployments]
    rates = [float(2 ** i) for i in range(n_load_points)]
    lp_names = [f"poisson-{r:g}rps" for r in rates]
    rows, steps = [], []
    t_clock = 1.0
    for lp, rate in enumerate(rates):
        for di, dep in enumerate(names):
            spec_d = _deployment_spec(dep)
            engine = spec_d["kind"] == "engine"
            # per-deployment speed: each saturates at its own rate (`cap`); TTFT blows up past it
            cap = 2.5 + 1.5 * di
            base_ttft = 0.10 * (1 + 0.15 * di) * (1 + (rate / cap) ** 3)
            base_tpot = 0.022 * (1 + 0.15 * di) * (1 + 0.3 * rate / cap)
            disagg = spec_d.get("mode") == "disagg"
            step_id = 0
            arrivals = t_clock + np.cumsum(rng.exponential(1.0 / rate, n_requests))
            for i, t in enumerate(arrivals):
                rid = f"{dep[:12]}-{lp}-{i:04d}"
                if lp == 0 and i == 1:
                    rid = MALICIOUS_ID
                lag = abs(rng.normal(0.0005, 0.0003))
                send = float(t + lag)
                n_in = int(rng.integers(64, 512))
                n_out = int(rng.integers(8, 64))
                row = dict(deployment=dep, load_point=lp_names[lp], request_id=rid, intended_send_s=float(t),
                           send_s=send, n_input=n_in, n_output_source="usage",
                           error=None, error_type=None, server_queue_s=None, server_prefill_s=None,
                           server_transfer_s=None, server_admission_s=None,
                           server_timing_json=None)
                if rng.random() < 0.04 or (lp == 0 and i == 2):   # failure
                    kind = rng.choice(["timeout", "http_503"])
                    end = send + (5.0 if kind == "timeout" else 0.02)
                    err = f"{kind}: <b>server</b> said no"
                    if lp == 0 and i == 2:
                        kind, err = "stream_error", MALICIOUS_ERROR
                    row.update(first_token_s=None, last_token_s=None, n_output=0,
                               chunk_times_s=[], chunk_tokens=[], ttft_s=None, tpot_s=None,
                               e2e_s=None, error=err, error_type=str(kind))
                    rows.append(row)
                    continue
                ttft = float(base_ttft * rng.lognormal(0, 0.35))
                first = send + ttft
                # chunks: mostly 1 token, some 2-4 (speculative decoding / coalesced SSE)
                toks, times, t_cur, left = [1], [first], first, n_out - 1
                # engine view: the step of each token and each step's batch composition
                step_id += 1 + int(rng.integers(0, 20))
                tok_steps = [step_id]
                batches = {step_id: (n_in, int(rng.integers(0, 8)))}
                while left > 0:
                    k = int(min(left, rng.choice([1, 1, 1, 2, 3, 4])))
                    t_cur += float(base_tpot * k * rng.lognormal(0, 0.25))
                    step_id += 1 + int(rng.integers(0, 3))
                    prefill = 0
                    if rng.random() < 0.08:  # decode step stalled by a co-batched prefill
                        stall = float(rng.uniform(0.03, 0.12))
                        t_cur += stall * (1 if not disagg else 0.15)  # disagg: far less of it
                        prefill = int(rng.integers(64, 512))
                    elif rng.random() < 0.03:  # a small prefill chunk that barely shows
                        prefill = int(rng.integers(8, 32))
                    if disagg and prefill > 32:
                        prefill = 0 if rng.random() < 0.8 else prefill
                    toks.append(k)
                    times.append(t_cur)
                    tok_steps += [step_id] * k
                    batches[step_id] = (prefill, int(rng.integers(1, 8)))
                    left -= k
                last = times[-1]
                tpot = (last - first) / (n_out - 1) if n_out > 1 else None
                row.update(first_token_s=first, last_token_s=last, n_output=n_out,
                           chunk_times_s=[float(x) for x in times], chunk_tokens=toks,
                           ttft_s=ttft, tpot_s=tpot, e2e_s=last - send)
                if engine:
                    q = ttft * float(rng.uniform(0.05, 0.4))
                    pf = ttft * float(rng.uniform(0.3, 0.5))
                    timing = {"queue_s": q, "prefill_s": pf, "note": MALICIOUS}
                    row.update(server_queue_s=q, server_prefill_s=pf)
                    if disagg:
                        xfer = ttft * float(rng.uniform(0.05, 0.15))
                        adm = ttft * float(rng.uniform(0.02, 0.1))
                        row.update(server_transfer_s=xfer, server_admission_s=adm)
                        timing.update(transfer_s=xfer, admission_s=adm,
                                      transfer_bytes=int(n_in * 36864))
                    if with_token_steps:
                        if disagg:   # first token from the prefill worker, the rest from decode
                            workers = ["prefill-0"] + ["decode-0"] * (len(tok_steps) - 1)
                            timing["token_workers"] = workers
                            timing["token_steps"] = tok_steps
                            timing["steps"] = {f"{w}:{s}": {"prefill_tokens": batches[s][0],
                                                            "decode_batch": batches[s][1]}
                                               for w, s in zip(workers, tok_steps)}
                        else:
                            timing["token_steps"] = tok_steps
                            timing["steps"] = {str(s): {"prefill_tokens": a, "decode_batch": b}
                                               for s, (a, b) in batches.items()}
                    if dep in spec_deployments:
                        n_verify = len(toks) - 1
                        k_spec = 3 if dep.startswith("mono") else 4
                        accepted = sum(k - 1 for k in toks[1:])
                        timing.update(spec_proposed=n_verify * k_spec, spec_accepted=accepted,
                                      spec_verify_steps=n_verify)
                    row["server_timing_json"] = json.dumps(timing)
                    steps.append(dict(deployment=dep, step=len(steps), t_start=send + q,
                                      wall_s=pf, n_prefill_tokens=n_in, n_decode_seqs=int(rng.integers(0, 8)),
                                      blocks_used=int(rng.integers(10, 200))))
                rows.append(row)
            if engine:
                t_end = max(r["last_token_s"] or r["send_s"] for r in rows if r["deployment"] == dep)
                for ts in np.arange(t_clock, t_end, 0.05):
                    steps.append(dict(deployment=dep, step=len(steps), t_start=float(ts), wall_s=0.02,
                                      n_prefill_tokens=0, n_decode_seqs=int(rng.integers(1, 8)),
                                      blocks_used=int(rng.integers(10, 200))))
            t_clock = max(r["last_token_s"] or r["send_s"] for r in rows) + 0.5
    records = pd.DataFrame(rows)
    records.to_parquet(path / "requests.parquet", index=False)

    spec = {
        "schema_version": 1, "name": name or path.name,
        "deployments": [_deployment_spec(n) for n in names],
        "workload": {"name": "synthetic-chat", "prompt": "Say <script>alert('p')</script> & more",
                     "n_requests": n_requests, "seed": seed},
        "load_points": [{"name": n, "arrival": {"kind": "poisson", "rate": r}, "n_requests": n_requests}
                        for n, r in zip(lp_names, rates)],
        "slo": SLO,
    }
    (path / "spec.json").write_text(json.dumps(spec, indent=2))
    if with_env:
        env = {"versions": {"infer-bench": "0.1.0", "python": "3.11.2", "torch": "2.13.0"},
               "hardware": {"cpu": "AMD EPYC 7B13 <x>", "cores": 2, "memory": "8 GiB", "gpus": []},
               "command_line": ["infer-bench", "run", "--deployment", MALICIOUS]}
        (path / "env.json").write_text(json.dumps(env, indent=2))
    run = {"schema_version": 1, "tool": "infer-bench", "status": status,
           "started": "2025-01-01T12:00:00+00:00",
           "finished": "2025-01-01T12:03:10+00:00" if status == "complete" else None}
    (path / "run.json").write_text(json.dumps(run, indent=2))
    if with_summary:
        from infer_bench.workloads.results import compute_summary
        summary = compute_summary(records, spec, slo=SLO)
        summary.to_csv(path / "summary.csv", index=False)
        rows_json = json.loads(summary.to_json(orient="records"))
        (path / "summary.json").write_text(json.dumps(
            {"schema_version": 1, "slo": SLO, "goodput_target": 0.9, "rows": rows_json}, indent=1))
    if with_telemetry:
        t_end = float(records["send_s"].max()) + 2
        with (path / "telemetry.jsonl").open("w") as fh:
            for dep in names:
                for t in np.arange(0.0, t_end, 0.5):
                    for src, metric, ent, unit, val in (
                            ("system", "sys_cpu_pct", "system", "%", rng.uniform(20, 90)),
                            ("process", "proc_cpu_pct", "total", "%", rng.uniform(50, 190)),
                            ("process", "proc_cpu_pct", "4242", "%", rng.uniform(0, 100)),
                            ("process", "proc_rss_mib", "total", "MiB", 900 + t)):
                        fh.write(json.dumps({"deployment": dep, "t_s": float(t), "source": src,
                                             "metric": metric, "entity": ent, "value": float(val),
                                             "unit": unit}) + "\n")
    if with_steps and steps:
        with (path / "steps.jsonl").open("w") as fh:
            for s in sorted(steps, key=lambda s: (s["deployment"], s["t_start"])):
                fh.write(json.dumps(s) + "\n")
    if with_predictions:
        from infer_bench.workloads.planning.predict import write_predictions
        write_predictions(path)
    return path
