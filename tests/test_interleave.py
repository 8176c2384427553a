"""Interleaved order, repeats, warm-up until stable (workloads/schedule.py, workloads/runner.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from infer_bench.workloads.schedule import WarmupTracker, interleaved_schedule, sequential_schedule


def test_interleaved_schedule_alternates_abba_and_balances_first_place():
    s = interleaved_schedule(["A", "B"], ["lo", "hi"], repeats=2)
    assert s == [("A", "lo", 0), ("B", "lo", 0), ("B", "hi", 0), ("A", "hi", 0),
                 ("A", "lo", 1), ("B", "lo", 1), ("B", "hi", 1), ("A", "hi", 1)]
    # every deployment is measured first as often as last, so a linear drift cancels
    firsts = [s[i][0] for i in range(0, len(s), 2)]
    assert firsts.count("A") == firsts.count("B")
    assert sorted(s) == sorted(sequential_schedule(["A", "B"], ["lo", "hi"], 2))


def test_warmup_tracker_waits_for_stable_latencies():
    w = WarmupTracker(min_requests=3, max_requests=8, window=3, tolerance=0.25)
    for v in (2.0, 0.9, 0.5, 0.45):              # cold start, settling
        w.add(v)
        assert not w.done
    w.add(0.48)                                   # last three 0.5, 0.45, 0.48: within 25%
    assert w.stable and w.done
    w2 = WarmupTracker(min_requests=3, max_requests=4)
    for v in (1.0, 0.5, None, 0.5):               # a failure is never stable; budget ends it
        w2.add(v)
    assert w2.done and not w2.stable and w2.to_dict()["n"] == 4


def test_run_interleaves_deployments_with_repeats(tmp_path, mock_process):
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.workloads.runner import RunSpec, run
    from infer_bench.workloads.spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec

    a = mock_process("--ttft-ms", "10", "--token-delay-ms", "2")
    b = mock_process("--ttft-ms", "30", "--token-delay-ms", "2")
    lps = [LoadPoint(name=f"{r}rps", arrival=ArrivalSpec(kind="constant", rate=r)) for r in (40, 80)]
    spec = RunSpec(deployments=[ExternalDeploymentSpec(name="A", url=a),
                                ExternalDeploymentSpec(name="B", url=b)],
                   workload=WorkloadSpec(input_len=LengthDist.fixed(16),
                                         output_len=LengthDist.fixed(4), num_requests=6),
                   load_points=lps, slo=SLO(ttft_s=1.0, tpot_s=0.5), out_dir=tmp_path / "run",
                   warmup_requests=2, warmup_max_requests=6, repeats=2)
    out = run(spec)
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == 2 * 2 * 2 * 6 and set(df["repeat"]) == {0, 1}
    first_send = (df.groupby(["deployment", "load_point", "repeat"])["send_s"].min()
                  .sort_values())
    order = [(d, lp, int(r)) for d, lp, r in first_send.index]
    assert order == interleaved_schedule(["A", "B"], ["40rps", "80rps"], 2)
    run_json = json.loads((out / "run.json").read_text())
    assert set(run_json["warmup"]) == {"A", "B"}
    assert all(2 <= w["n"] <= 6 for w in run_json["warmup"].values())
    assert len(run_json["load_windows"]) == 8
    spec_json = json.loads((out / "spec.json").read_text())
    assert spec_json["order"] == "interleaved" and spec_json["repeats"] == 2
    assert spec_json["steady_state"] == {"ramp_fraction": 0.1}
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary["n_repeats"]) == {2}
    assert set(summary["n_requests"]) == {12}
    per_repeat = pd.read_csv(out / "summary_repeats.csv")
    assert len(per_repeat) == 8 and set(per_repeat["repeat"]) == {0, 1}
    # B's TTFT is 20 ms longer than A's at every point
    ttft = summary.set_index(["deployment", "load_point"])["ttft_p50_s"]
    for lp in ("40rps", "80rps"):
        assert ttft[("B", lp)] - ttft[("A", lp)] == pytest.approx(0.02, abs=0.008)


def test_report_shows_cores_idle_cpu_sample_size_and_drift(tmp_path, mock_process):
    """The report's fairness section, from a real interleaved run with repeats."""
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.reports.data import load_run
    from infer_bench.reports.fairness import fairness_tables
    from infer_bench.workloads.runner import RunSpec, run
    from infer_bench.workloads.spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec

    a = mock_process("--ttft-ms", "10", "--token-delay-ms", "2")
    b = mock_process("--ttft-ms", "20", "--token-delay-ms", "2")
    spec = RunSpec(deployments=[ExternalDeploymentSpec(name="A", url=a),
                                ExternalDeploymentSpec(name="B", url=b)],
                   workload=WorkloadSpec(input_len=LengthDist.fixed(16),
                                         output_len=LengthDist.fixed(4), num_requests=12),
                   load_points=[LoadPoint(name="20rps",
                                          arrival=ArrivalSpec(kind="constant", rate=20))],
                   slo=SLO(ttft_s=1.0, tpot_s=0.5), out_dir=tmp_path / "run", repeats=2,
                   warmup_requests=2, warmup_max_requests=4)
    tables = fairness_tables(load_run(run(spec)))
    heads = [t.headers[0] for t in tables]
    assert heads == ["Process", "Under load", "Load point", "Load point"]   # cores, CPU, n, drift
    cpu = tables[1]
    assert len(cpu.rows) == 4 and {r[1].text for r in cpu.rows} == {"20rps #1", "20rps #2"}
    drift = tables[3]
    assert sorted(r[2].text for r in drift.rows) == ["1", "1", "2", "2"]
