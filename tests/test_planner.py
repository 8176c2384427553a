"""Planner: goodput search, ranking in constructed cases, break-even map, validation round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infer_bench.workloads.planning.latency_model import LatencyModel
from infer_bench.workloads.planning.planner import (SweepSpec, break_even_figure, break_even_map,
                                           candidate_deployments, find_goodput, plan, validate,
                                           verdict, base_requests)
from infer_bench.workloads.results import ResultsWriter
from infer_bench.workloads.planning.sim_model import (Deployment, InstanceConfig, Link,
                                                      requests_from_spec)
from infer_bench.workloads.planning.simulator import simulate
from infer_bench.workloads.spec import SLO, ArrivalSpec, LoadPoint, WorkloadSpec

LM = LatencyModel(a=0.005, b=5e-5, c=1e-6, d=1e-4, kv_bytes_per_token=1e4, num_layers=8)
INST = InstanceConfig(max_num_batched_tokens=4096, max_num_seqs=64)
SWEEP = SweepSpec(horizon_s=10.0, min_requests=100, max_requests=2000)


def test_goodput_of_md1_server_is_near_capacity():
    # one prefill-only server, 10 ms per request; TTFT SLO 1 s: goodput just under 100 rps
    lm = LatencyModel(a=0.01)
    dep = Deployment("mono", instance=InstanceConfig(max_num_batched_tokens=16, max_num_seqs=1))
    base = base_requests(WorkloadSpec(input_len=1, output_len=1), 4000)
    gp = find_goodput(dep, lm, base, SLO(ttft_s=1.0), rate_hint=10.0, rel_tol=0.02,
                      sweep=SweepSpec(horizon_s=30.0, max_requests=4000))
    assert 85.0 < gp.goodput_rps <= 105.0
    assert gp.points == sorted(gp.points)


def test_pipeline_parallel_md1_goodput_doubles_and_stays_under_the_bound():
    """The M/D/1 server of the test above as a PP2 instance of the same step time: a request's
    latency is still 10 ms, but micro-batches overlap (one per 5 ms stage), so goodput about
    doubles; rate_upper_bound counts the 2 stages and stays a bound."""
    from dataclasses import replace

    from infer_bench.workloads.planning.planner import rate_upper_bound

    inst = InstanceConfig(max_num_batched_tokens=16, max_num_seqs=1)
    base = base_requests(WorkloadSpec(input_len=1, output_len=1), 8000)
    sweep = SweepSpec(horizon_s=30.0, max_requests=8000)
    gps, bounds = [], []
    for pp in (1, 2):
        lm = LatencyModel(a=0.01, pp=pp)
        dep = Deployment("mono", instance=replace(inst, latency_model=lm))
        gps.append(find_goodput(dep, lm, base, SLO(ttft_s=1.0), rate_hint=10.0,
                                rel_tol=0.02, sweep=sweep).goodput_rps)
        bounds.append(rate_upper_bound(dep, lm, base))
    assert 85.0 < gps[0] <= 105.0 and 170.0 < gps[1] <= 210.0
    assert gps[0] <= bounds[0] and gps[1] <= bounds[1] and bounds[1] == 2 * bounds[0]


def test_rate_bound_counts_prefill_attention_per_chunk():
    """Whole prompts (prefill_priority) are charged c*L^2 in the bound; prompts a chunked
    instance may cut only their least value c*L (sum of squared chunk lengths >= L)."""
    from dataclasses import replace

    from infer_bench.workloads.planning.planner import rate_upper_bound

    lm = LatencyModel(b=1e-4, c=1e-3)
    base = base_requests(WorkloadSpec(input_len=1000, output_len=1), 50)
    whole = rate_upper_bound(Deployment("mono", instance=replace(INST, policy="prefill_priority")),
                             lm, base)
    chunk = rate_upper_bound(Deployment("mono", instance=INST), lm, base)
    assert whole == pytest.approx(1.0 / (0.1 + 1e-3 * 1000.0))
    assert chunk == pytest.approx(1.0 / (0.1 + 1e-3))


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


# ---------------------------------------------------------------------------- issue 19: TP, bands

def _tp_set():
    from dataclasses import replace

    from infer_bench.workloads.planning.latency_model import ProfileSet

    tp1 = replace(LM, tp=1, kv_capacity_tokens=200_000)
    tp2 = replace(LM, a=LM.a * 0.8, b=LM.b / 1.8, c=LM.c / 1.8, d=LM.d / 1.5, tp=2,
                  kv_capacity_tokens=500_000)
    dec2 = replace(tp2, a=0.001)          # a decode-only TP2 fit
    return ProfileSet(fits=[tp1, tp2, dec2], roles=[None, None, "decode"], engine="eng")


def test_profile_set_selects_fit_by_tp_and_role(tmp_path):
    import pytest

    from infer_bench.workloads.planning.latency_model import ProfileError, ProfileSet

    ps = _tp_set()
    assert ps.select(tp=2).a == pytest.approx(LM.a * 0.8)          # generic TP2 fit
    assert ps.select(tp=2, role="prefill").a == pytest.approx(LM.a * 0.8)
    assert ps.select(tp=2, role="decode").a == pytest.approx(0.001)  # the role's own fit wins
    assert ps.select(tp=1).tp == 1 and ps.select(tp=2).chips_per_instance == 2
    with pytest.raises(ProfileError, match="TP4"):
        ps.select(tp=4)
    again = ProfileSet.load(ps.save(tmp_path / "set.json"))
    assert again.to_dict() == ps.to_dict()
    assert [(m.tp, r) for m, r in zip(again.fits, again.roles)] == [(1, None), (2, None),
                                                                    (2, "decode")]
    assert all(m.engine == "eng" for m in again.fits)


def test_old_single_fit_profile_loads_as_tp1_pp1(tmp_path):
    from infer_bench.workloads.planning.latency_model import (LatencyModel, ProfileSet,
                                                              example_profile_path)

    old = json.loads(example_profile_path().read_text())
    assert old["version"] == 1 and "parallel" not in old and "fits" not in old
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    ps = ProfileSet.load(p)
    assert len(ps.fits) == 1 and ps.roles == [None]
    lm = ps.select(tp=1, pp=1)
    assert (lm.tp, lm.pp, lm.chips_per_instance, lm.heldout_rel_err) == (1, 1, 1, None)
    assert lm.a == old["step_time"]["a_s"] and lm.kv_capacity_tokens == 400000
    # a new-format set of one fit still loads where a single model is expected
    single = LatencyModel.load(ps.save(tmp_path / "new.json"))
    assert single.a == lm.a and single.tp == 1


def test_placement_search_counts_chips_as_instances_x_tp_x_pp():
    from dataclasses import replace

    from infer_bench.workloads.planning.planner import placement_candidates

    ps = _tp_set()
    cands = placement_candidates(3, ps)
    names = sorted(c.name for c in cands)
    assert names == sorted(["mono x3", "mono x1 TP2", "1P2D", "2P1D", "1P1D P:TP1 D:TP2",
                            "1P1D P:TP2 D:TP1"])
    for c in cands:
        if c.mode == "mono":
            m = c.instance.latency_model
            assert c.chips() == c.num_instances * m.tp * m.pp
        else:
            pm, dm = c.p_cfg.latency_model, c.d_cfg.latency_model
            assert c.chips() == c.num_prefill * pm.tp * pm.pp + c.num_decode * dm.tp * dm.pp
            assert dm.a == (0.001 if dm.tp == 2 else LM.a)   # decode instances: decode fits
        assert c.chips() <= 3
    # a TP2 x PP2 fit is an instance of 4 chips: 8 chips hold two
    pp2 = replace(LM, tp=2, pp=2)
    c8 = placement_candidates(8, [pp2], include_disagg=False)
    assert [(c.num_instances, c.chips()) for c in c8] == [(2, 8)]
    assert c8[0].name == "mono x2 TP2PP2"
    # disagg: only maximal splits (no room left for another instance of either role)
    c5 = placement_candidates(5, ps, include_mono=False)
    for c in c5:
        pm, dm = c.p_cfg.latency_model, c.d_cfg.latency_model
        assert 5 - c.chips() < min(pm.chips_per_instance, dm.chips_per_instance)
    # search: every mono placement under every policy
    cs = placement_candidates(2, [LM], policy="search", include_disagg=False)
    assert sorted(c.instance.policy for c in cs) == ["chunked", "decode_priority",
                                                     "prefill_priority"]


def test_bands_come_from_the_stored_heldout_error():
    from dataclasses import replace

    from infer_bench.workloads.planning.planner import placement_candidates, rank_deployments

    lm = replace(LM, heldout_rel_err=0.1)
    wl = WorkloadSpec(input_len=512, output_len=16)
    cands = placement_candidates(2, [lm], instance=INST)
    df = rank_deployments(cands, lm, wl, 2.0, SLO(2.0, 0.05), sweep=SWEEP, rel_tol=0.1)
    for r in df.to_dict("records"):
        assert r["heldout_rel_err"] == 0.1
        assert r["goodput_per_chip_lo"] == np.float64(r["goodput_per_chip_rps"] * 0.9)
        assert r["goodput_per_chip_hi"] == np.float64(r["goodput_per_chip_rps"] * 1.1)
    # no stored error: no band
    df0 = rank_deployments(placement_candidates(2, [LM], instance=INST), LM, wl, 2.0,
                           SLO(2.0, 0.05), sweep=SWEEP, rel_tol=0.1)
    assert df0["heldout_rel_err"].isna().all() and df0["goodput_per_chip_lo"].isna().all()


def test_overlapping_bands_are_too_close_to_call():
    import pandas as pd

    from infer_bench.workloads.planning.planner import TOO_CLOSE, add_calls

    # 1.00 +- 10% and 1.15 +- 10% overlap (1.035 <= 1.10); 1.00 +- 2% and 1.15 +- 2% do not
    assert verdict(1.0, 1.15, mono_err=0.1, disagg_err=0.1)[0] == TOO_CLOSE
    assert verdict(1.0, 1.15, mono_err=0.02, disagg_err=0.02)[0] == "disagg"
    assert verdict(1.15, 1.0, mono_err=0.02, disagg_err=0.02)[0] == "mono"
    assert verdict(1.0, 1.15)[0] == "disagg"            # no stored error: the fixed 5% band
    df = pd.DataFrame({"deployment": ["a", "b", "c"], "goodput_per_chip_rps": [1.15, 1.0, 0.5],
                       "heldout_rel_err": [0.1, 0.1, 0.1], "pruned": [False] * 3})
    assert add_calls(df)["call"].tolist() == ["best", TOO_CLOSE, "worse"]


def test_heldout_error_of_a_profile():
    from infer_bench.workloads.planning.profiler import heldout_error, with_heldout_error
    from infer_bench.workloads.planning.latency_model import fit_step_rows

    rng = np.random.default_rng(1)
    true = LatencyModel(a=0.01, b=1e-4, d=2e-3)

    def rows(drift: float):
        out, t = [], 0.0
        for i in range(300):
            p = int(rng.integers(1, 500)) if i % 3 == 0 else 0
            dd = int(rng.integers(1, 30))
            w = true.step_time(p, dd) * (1 + drift * (i >= 150)) * (1 + 0.02 * rng.standard_normal())
            out.append({"t_start": t, "wall_s": w, "n_prefill_tokens": p, "n_decode_seqs": dd})
            t += w
        return out

    steady = rows(0.0)
    err, folds = heldout_error(steady)
    assert err < 0.02 and len(folds) == 5
    drifting = rows(0.3)                 # the second half 30% slower: folds cannot all fit
    assert heldout_error(drifting)[0] > 0.08
    lm = with_heldout_error(fit_step_rows(steady), steady)
    assert lm.heldout_rel_err == err and lm.to_dict()["heldout_error"]["rel_err"] == err
    assert heldout_error(steady[:20]) is None           # too few rows: unknown


def test_cli_plan_searches_tp_and_reports_bands(tmp_path):
    from typer.testing import CliRunner

    app = _cli_app()
    ps = _tp_set()
    for m in ps.fits:
        m.heldout_rel_err = 0.05
    prof = ps.save(tmp_path / "set.json")
    r = CliRunner().invoke(app, ["plan", "--profile", str(prof), "--rate", "1", "--slo-ttft",
                                 "2", "--slo-tpot", "0.05", "--chips", "3", "--input-len",
                                 "512", "--output-len", "16", "--max-num-batched-tokens",
                                 "4096", "--max-num-seqs", "64", "--horizon", "10",
                                 "--max-requests", "1000", "--no-map", "--policy", "search",
                                 "--out", str(tmp_path / "plan")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "plan" / "plan.json").read_text())
    names = {row["deployment"] for row in out["ranking"]}
    assert "1P1D P:TP2 D:TP1" in names and any("TP2" in n and n.startswith("mono") for n in names)
    assert all(row["chips"] <= 3 for row in out["ranking"])
    assert all("best policy" in row["deployment"] for row in out["ranking"]
               if row["mode"] == "mono")
    assert "+-5%" in r.output
    r = CliRunner().invoke(app, ["plan", "--profile", str(prof), "--rate", "1", "--slo-ttft",
                                 "2", "--slo-tpot", "0.05", "--chips", "3", "--policy", "fifo"])
    assert r.exit_code != 0 and "--policy must be one of" in f"{r.exception}{r.output}"


def test_seeds_give_the_median_goodput_and_a_band_from_their_spread():
    """rank_deployments(seeds=3): each candidate's goodput is the median of the goodputs found
    on workload seeds s, s+1, s+2 (checked against find_goodput run on each seed alone); the
    band adds (max - min) / 2 / median to the held-out error; seeds=1 keeps the old band."""
    from dataclasses import replace

    from infer_bench.workloads.planning.planner import (band_error, placement_candidates,
                                                        rank_deployments)

    lm = replace(LM, heldout_rel_err=0.05)
    wl = WorkloadSpec(input_len="lognormal:512,1.0", output_len="uniform:8,32", seed=7)
    slo = SLO(0.5, 0.05)
    cands = placement_candidates(2, [lm], instance=INST, include_disagg=False)
    df = rank_deployments(cands, lm, wl, 2.0, slo, sweep=SWEEP, rel_tol=0.05, seeds=3)
    row = df.iloc[0]
    alone = []
    for s in (7, 8, 9):
        base = base_requests(replace(wl, seed=s), SWEEP.max_requests)
        alone.append(find_goodput(cands[0], lm, base, slo, rate_hint=min(2.0, row["rate_bound_rps"] / 2),
                                  rel_tol=0.05, sweep=SWEEP).goodput_rps)
    assert row["goodput_rps"] == pytest.approx(float(np.median(alone)))
    assert (row["goodput_seed_min_rps"], row["goodput_seed_max_rps"]) == pytest.approx(
        (min(alone), max(alone)))
    assert len(set(np.round(alone, 6))) > 1        # the seeds do differ on this workload
    spread = (max(alone) - min(alone)) / 2 / np.median(alone)
    assert row["seed_rel_spread"] == pytest.approx(spread)
    assert row["band_rel_err"] == pytest.approx(0.05 + spread) == band_error(0.05, spread)
    assert row["goodput_per_chip_lo"] == pytest.approx(row["goodput_per_chip_rps"] * (1 - 0.05 - spread))
    one = rank_deployments(cands, lm, wl, 2.0, slo, sweep=SWEEP, rel_tol=0.05).iloc[0]
    assert one["seed_rel_spread"] is None or one["seed_rel_spread"] != one["seed_rel_spread"]
    assert one["band_rel_err"] == 0.05
    assert band_error(None, None) is None and band_error(None, 0.1) == 0.1
    with pytest.raises(ValueError):
        rank_deployments(cands, lm, wl, 2.0, slo, sweep=SWEEP, seeds=0)


def test_seed_bands_alone_can_make_a_call_too_close():
    import pandas as pd

    from infer_bench.workloads.planning.planner import TOO_CLOSE, add_calls

    # no held-out error, but seed spreads of 10%: 1.15 and 1.0 overlap, 0.5 does not
    df = pd.DataFrame({"deployment": ["a", "b", "c"], "goodput_per_chip_rps": [1.15, 1.0, 0.5],
                       "heldout_rel_err": [None] * 3, "band_rel_err": [0.1, 0.1, 0.1],
                       "pruned": [False] * 3})
    assert add_calls(df)["call"].tolist() == ["best", TOO_CLOSE, "worse"]
