"""Planner: goodput search, ranking in constructed cases, break-even map, validation round trip."""

from __future__ import annotations

import json

import numpy as np

from infer_bench.workloads.planning.latency_model import LatencyModel
from infer_bench.workloads.planning.planner import (SweepSpec, break_even_figure, break_even_map,
                                           candidate_deployments, find_goodput, plan, validate,
                                           verdict, _base_requests)
from infer_bench.workloads.results import ResultsWriter
from infer_bench.workloads.planning.simulator import (Deployment, InstanceConfig, Link, requests_from_spec,
                                             simulate)
from infer_bench.workloads.spec import SLO, ArrivalSpec, LoadPoint, WorkloadSpec

LM = LatencyModel(a=0.005, b=5e-5, c=1e-6, d=1e-4, kv_bytes_per_token=1e4, num_layers=8)
INST = InstanceConfig(max_num_batched_tokens=4096, max_num_seqs=64)
SWEEP = SweepSpec(horizon_s=10.0, min_requests=100, max_requests=2000)


def test_goodput_of_md1_server_is_near_capacity():
    # one prefill-only server, 10 ms per request; TTFT SLO 1 s: goodput just under 100 rps
    lm = LatencyModel(a=0.01)
    dep = Deployment("mono", instance=InstanceConfig(max_num_batched_tokens=16, max_num_seqs=1))
    base = _base_requests(WorkloadSpec(input_len=1, output_len=1), 4000)
    gp = find_goodput(dep, lm, base, SLO(ttft_s=1.0), rate_hint=10.0, rel_tol=0.02,
                      sweep=SweepSpec(horizon_s=30.0, max_requests=4000))
    assert 85.0 < gp.goodput_rps <= 105.0
    assert gp.points == sorted(gp.points)


def test_candidates_use_all_chips():
    cands = candidate_deployments(4, LM, conditional_thresholds=(256,))
    assert [c.name for c in cands] == ["mono x4", "1P3D", "1P3D cond<256", "2P2D",
                                       "2P2D cond<256", "3P1D", "3P1D cond<256"]
    assert all(c.chips() == 4 for c in cands)


def test_long_prompts_tight_tpot_pick_disagg():
    wl = WorkloadSpec(input_len=8000, output_len=32)
    p = plan(wl, 0.5, SLO(ttft_s=3.0, tpot_s=0.012), 2, LM, Link(100.0), instance=INST,
             sweep=SWEEP, rel_tol=0.1, map_input_lens=None)
    best = p.best
    assert best["mode"] == "disagg", p.ranking
    mono = p.ranking[p.ranking["mode"] == "mono"].iloc[0]
    assert best["goodput_per_chip_rps"] > 1.5 * mono["goodput_per_chip_rps"]
    json.dumps(p.to_dict())


def test_tiny_prompts_pick_mono_or_no_difference():
    wl = WorkloadSpec(input_len=16, output_len=64)
    p = plan(wl, 2.0, SLO(ttft_s=2.0, tpot_s=0.05), 2, LM, Link(100.0), instance=INST,
             sweep=SWEEP, rel_tol=0.1, map_input_lens=None)
    r = p.ranking.set_index("mode")["goodput_per_chip_rps"]
    v, _ = verdict(r["mono"], r["disagg"])
    assert v in ("mono", "same")


def test_verdict_band():
    assert verdict(1.0, 1.04)[0] == "same"
    assert verdict(1.0, 1.2)[0] == "disagg"
    assert verdict(1.2, 1.0)[0] == "mono"
    assert verdict(0.0, 0.0)[0] == "neither"


def test_break_even_map_and_figure(tmp_path):
    # tiny requests need many requests to reach a steady state: max_requests 5000
    bmap = break_even_map(LM, SLO(2.0, 0.02), 2, input_lens=[16, 8000], output_lens=[16],
                          bandwidths_gbps=[100.0], instance=INST,
                          sweep=SweepSpec(horizon_s=5.0, min_requests=50, max_requests=5000),
                          rel_tol=0.15, rate_hint=0.5)
    cells = {c["input_len"]: c for c in bmap["cells"]}
    assert cells[8000]["verdict"] == "disagg"
    assert cells[16]["verdict"] in ("mono", "same")
    json.dumps(bmap)
    import plotly.io as pio

    out = tmp_path / "map.html"
    pio.write_html(break_even_figure(bmap), str(out), include_plotlyjs=True)
    assert out.stat().st_size > 1_000_000


def test_validate_round_trip_of_a_simulated_run(tmp_path):
    wl = WorkloadSpec(input_len="uniform:50,400", output_len="uniform:8,32", num_requests=120)
    lps = [LoadPoint("5rps", ArrivalSpec(kind="poisson", rate=5.0)),
           LoadPoint("c4", ArrivalSpec(kind="concurrency", concurrency=4))]
    deps = [{"name": "mono", "mode": "mono", "max_num_batched_tokens": 1024, "max_num_seqs": 32},
            {"name": "disagg", "mode": "disagg", "prefill_workers": 1, "decode_workers": 1,
             "max_num_batched_tokens": 1024, "max_num_seqs": 32}]
    spec = {"deployments": deps, "workload": wl.to_dict(),
            "load_points": [lp.to_dict() for lp in lps], "slo": {"ttft_s": 0.5, "tpot_s": 0.02}}
    inst = InstanceConfig(max_num_batched_tokens=1024, max_num_seqs=32)
    with ResultsWriter(tmp_path / "run") as w:
        w.write_spec(spec)
        for d in deps:
            dep = (Deployment("mono", instance=inst) if d["mode"] == "mono"
                   else Deployment("disagg", instance=inst))
            for lp in lps:
                res = simulate(dep, LM, requests_from_spec(wl, lp.arrival), per_token=True)
                w.append_records(res.to_records(deployment=d["name"], load_point=lp.name))
    df = validate(tmp_path / "run", LM)
    assert len(df) == 4
    for m in ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "slo_attainment"):
        assert np.allclose(df[f"error_{m}"].astype(float), 0.0, atol=1e-9), (m, df)
    # a slower model predicts worse latencies: errors positive
    slow = LatencyModel(**{k: 2 * v for k, v in LM.coefficients.items()},
                        kv_bytes_per_token=1e4, num_layers=8)
    df2 = validate(tmp_path / "run", slow)
    assert (df2["error_ttft_p50_s"] > 0).all()


def _cli_app():
    import typer

    from infer_bench.cli.plan_cmds import register

    app = typer.Typer(rich_markup_mode=None)

    @app.callback()
    def _cb():
        pass

    register(app)
    return app


def test_cli_help_has_examples():
    from typer.testing import CliRunner

    app = _cli_app()
    for cmd in ("profile", "simulate", "plan"):
        r = CliRunner().invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and f"Example: infer-bench {cmd}" in r.output


def test_cli_simulate_and_plan(tmp_path):
    from typer.testing import CliRunner

    from infer_bench.workloads.results import load_results

    app = _cli_app()
    prof = tmp_path / "p.json"
    LM.save(prof)
    r = CliRunner().invoke(app, ["simulate", "--profile", str(prof), "--mode", "disagg",
                                 "--rates", "2,4", "--num-requests", "50", "--input-len", "256",
                                 "--output-len", "8", "--max-num-batched-tokens", "2048",
                                 "--max-num-seqs", "32", "--out", str(tmp_path / "sim")])
    assert r.exit_code == 0, r.output
    res = load_results(tmp_path / "sim")
    assert len(res.records) == 100 and set(res.summary["load_point"]) == {"2rps", "4rps"}
    r = CliRunner().invoke(app, ["plan", "--profile", str(prof), "--rate", "0.5", "--slo-ttft",
                                 "3", "--slo-tpot", "0.012", "--chips", "2", "--input-len",
                                 "8000", "--output-len", "32", "--max-num-batched-tokens",
                                 "4096", "--max-num-seqs", "64", "--horizon", "10",
                                 "--max-requests", "1000", "--map-inputs", "8000",
                                 "--map-outputs", "32", "--map-bandwidths", "100",
                                 "--out", str(tmp_path / "plan")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert out["ranking"][0]["mode"] == "disagg"
    assert (tmp_path / "plan" / "break_even.html").stat().st_size > 1_000_000
    assert json.loads((tmp_path / "plan" / "break_even.json").read_text())["cells"]
