"""Simulator and latency model: closed-form cases (M/D/1, fixed decode batch, KV transfer), KV
admission, closed loop, records that the metrics code accepts, profile JSON, and fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infer_bench.workloads.planning.latency_model import (LatencyModel, ProfileError, example_profile_path,
                                                 fit_step_rows, nnls)
from infer_bench.workloads.results import compute_summary
from infer_bench.workloads.planning.sim_model import (Deployment, InstanceConfig, Link, SimRequests,
                                                      poisson_requests, requests_from_spec,
                                                      spec_lengths)
from infer_bench.workloads.planning.simulator import simulate
from infer_bench.workloads.spec import ArrivalSpec, WorkloadSpec


def test_md1_queueing_wait_matches_pollaczek_khinchine():
    D, rho, n = 0.01, 0.5, 50_000
    lm = LatencyModel(a=D)
    dep = Deployment("mono", instance=InstanceConfig(max_num_batched_tokens=16, max_num_seqs=1))
    reqs = poisson_requests(np.ones(n, int), np.ones(n, int), rate=rho / D, seed=0)
    res = simulate(dep, lm, reqs, per_token=False)
    expected = rho * D / (2 * (1 - rho))
    assert np.nanmean(res.queue_s) == pytest.approx(expected, rel=0.02)
    assert np.allclose(res.ttft_s - res.queue_s, D)


def test_fixed_decode_batch_tpot_is_step_time():
    a, d, B, n_out = 0.01, 0.002, 8, 33
    lm = LatencyModel(a=a, d=d)
    reqs = SimRequests(np.zeros(B), np.full(B, 16), np.full(B, n_out))
    res = simulate(Deployment("mono"), lm, reqs, per_token=True)
    assert np.allclose(res.tpot_s, a + d * B, rtol=1e-9)
    assert np.allclose(res.ttft_s, a)            # one prefill step of all B prompts
    for times in res.token_times:
        assert len(times) == n_out
        assert np.allclose(np.diff(times), a + d * B)


def test_disagg_transfer_whole_and_layerwise():
    n_in, kvb, L = 1000, 1e5, 10
    lm = LatencyModel(b=1e-4, kv_bytes_per_token=kvb, num_layers=L)   # prefill 0.1 s
    link = Link(bandwidth_gbps=100.0, latency_s=0.001)
    full = n_in * kvb / (100e9 / 8)
    reqs = SimRequests(np.zeros(1), np.array([n_in]), np.array([4]))
    res = simulate(Deployment("disagg", link=link), lm, reqs)
    assert res.transfer_s[0] == pytest.approx(full + 0.001, rel=1e-9)
    assert res.transfer_bytes[0] == pytest.approx(n_in * kvb)
    assert res.ttft_s[0] == pytest.approx(0.1 + full + 0.001, rel=1e-9)
    lw = simulate(Deployment("disagg", link=Link(100.0, 0.001, layerwise=True)), lm, reqs)
    assert lw.transfer_s[0] == pytest.approx(full / L + 0.001, rel=1e-9)
    assert link.transfer_time(n_in * kvb) == pytest.approx(full + 0.001)


def test_conditional_disagg_prefills_short_prompts_on_decode():
    lm = LatencyModel(a=0.001, b=1e-5, kv_bytes_per_token=1000, num_layers=4)
    reqs = SimRequests(np.array([0.0, 0.5]), np.array([50, 2000]), np.array([8, 8]))
    res = simulate(Deployment("disagg", conditional_threshold=100), lm, reqs)
    assert np.isnan(res.transfer_s[0]) and res.transfer_s[1] > 0
    assert not res.failed.any()


def test_kv_admission_and_rejection():
    lm = LatencyModel(a=0.01)
    inst = InstanceConfig(block_size=16, kv_capacity_tokens=64, kv_alloc="reserve")   # 4 blocks
    # each request needs 2 blocks (16 + 16 tokens): at most 2 run at once
    reqs = SimRequests(np.zeros(5), np.array([16, 16, 16, 16, 200]), np.array([16, 16, 16, 16, 1]))
    res = simulate(Deployment("mono", instance=inst), lm, reqs, per_token=False)
    assert res.failed.tolist() == [False, False, False, False, True]
    firsts = np.sort(res.first_token_s[:4])
    assert firsts[0] == firsts[1] and firsts[2] > res.last_token_s[:2].min() - 1e-12


def test_closed_loop_concurrency_one_is_sequential():
    lm = LatencyModel(a=0.01)
    reqs = requests_from_spec(WorkloadSpec(input_len=8, output_len=4, num_requests=5),
                              ArrivalSpec(kind="concurrency", concurrency=1))
    res = simulate(Deployment("mono"), lm, reqs, per_token=False)
    assert np.allclose(res.send_s[1:], res.last_token_s[:-1])
    assert np.allclose(res.e2e_s, 4 * 0.01)


def test_spec_lengths_match_synthetic_generator():
    from infer_bench.workloads.datasets import build_requests

    wl = WorkloadSpec(input_len="uniform:10,50", output_len="normal:20,5", num_requests=20, seed=3)
    n_in, n_out = spec_lengths(wl)
    reqs = build_requests(wl)
    assert n_in.tolist() == [r.n_input for r in reqs]
    assert n_out.tolist() == [r.max_tokens for r in reqs]


@pytest.mark.parametrize("per_token", [True, False])
def test_records_feed_compute_summary(per_token):
    lm = LatencyModel.load(example_profile_path())
    wl = WorkloadSpec(input_len="uniform:100,800", output_len="uniform:2,64", num_requests=200)
    reqs = requests_from_spec(wl, ArrivalSpec(kind="poisson", rate=20.0))
    slo = {"ttft_s": 0.1, "tpot_s": 0.009}
    for dep in (Deployment("mono", num_instances=2), Deployment("disagg")):
        res = simulate(dep, lm, reqs, per_token=per_token)
        recs = res.to_records(load_point="r20")
        s = compute_summary(recs, slo=slo).iloc[0]
        assert s["n_requests"] == 200 and s["n_failed"] == 0
        assert s["slo_attainment"] == pytest.approx(res.attainment(slo))
        assert s["ttft_p90_s"] == pytest.approx(np.percentile(res.ttft_s, 90))
        assert s["tpot_p50_s"] == pytest.approx(np.nanpercentile(res.tpot_s, 50))
        assert s["n_output_tokens"] == int(reqs.n_output.sum())


def test_profile_json_roundtrip_and_example(tmp_path):
    lm = LatencyModel.load(example_profile_path())
    assert lm.num_layers == 32 and lm.kv_bytes_per_token == 131072
    assert "ILLUSTRATIVE" in lm.notes and "ILLUSTRATIVE" in lm.hardware["name"]
    p = lm.save(tmp_path / "p.json")
    again = LatencyModel.load(p)
    assert again.to_dict() == lm.to_dict()
    assert lm.layer_fraction == pytest.approx(1 / 32)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "x"}))
    with pytest.raises(ProfileError):
        LatencyModel.load(bad)
    with pytest.raises(ProfileError):
        LatencyModel(a=-1.0)


def test_nnls_matches_lstsq_when_unconstrained_and_clips_negative():
    rng = np.random.default_rng(0)
    A = rng.random((50, 3))
    x = np.array([1.0, 2.0, 0.5])
    assert np.allclose(nnls(A, A @ x), x)
    y = A @ np.array([1.0, -2.0, 0.5])
    sol = nnls(A, y)
    assert (sol >= 0).all() and sol[1] == 0


def _synthetic_rows(coef, n=400, noise=0.01, context=True, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c, d, e = coef
    rows = []
    for i in range(n):
        kind = rng.integers(3)
        P = int(rng.integers(16, 2048)) if kind != 1 else 0
        D = int(rng.integers(1, 64)) if kind != 0 else 0
        C = int(D * rng.integers(16, 1024))
        t = a + b * P + c * P * P / 1e3 + d * D + e * C
        row = {"step": i, "t_start": float(i), "wall_s": t * (1 + noise * rng.standard_normal()),
               "n_prefill_tokens": P, "n_decode_seqs": D, "n_seqs": D + (P > 0),
               "blocks_used": 0}
        if context:
            row["n_context_tokens"] = C
        rows.append(row)
    return rows


def test_fit_recovers_coefficients():
    coef = (0.004, 2e-5, 3e-6, 1e-4, 2e-8)
    lm = fit_step_rows(_synthetic_rows(coef, noise=0.0), kv_bytes_per_token=1000, num_layers=4)
    assert np.allclose([lm.a, lm.b, lm.c, lm.d, lm.e], coef, rtol=1e-6)
    noisy = fit_step_rows(_synthetic_rows(coef, noise=0.01, seed=1))
    assert np.allclose([noisy.a, noisy.b, noisy.d], [coef[0], coef[1], coef[3]], rtol=0.1)
    assert noisy.fit["median_rel_err"] < 0.02
    # no context column: e is 0 and the rest still fit rows made without a context term
    coef0 = (0.004, 2e-5, 3e-6, 1e-4, 0.0)
    lm0 = fit_step_rows(_synthetic_rows(coef0, noise=0.0, context=False))
    assert lm0.e == 0 and np.allclose([lm0.a, lm0.b, lm0.c, lm0.d], coef0[:4], rtol=1e-6)
    assert lm0.fit["context_term"] is False
    with pytest.raises(ProfileError):
        fit_step_rows([])


def test_profile_engine_over_http_with_a_fake_engine():
    """profile_engine drives /v1/completions and fits the rows of /debug/steps."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from infer_bench.workloads.planning.profiler import ProfileGrid, profile_engine

    coef = (0.002, 1e-5, 0.0, 5e-4)
    steps: list[dict] = []
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _json(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                self._json({"data": [{"id": "fake"}]})
            elif self.path == "/debug/steps":
                with lock:
                    self._json({"steps": list(steps)})
            else:
                self._json({"status": "ok"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            P, T = len(body["prompt"]), body["max_tokens"]
            with lock:   # one prefill step, then T-1 decode steps of a batch of D = 1..3
                for i in range(T):
                    p = P if i == 0 else 0
                    d = 0 if i == 0 else 1 + len(steps) % 3
                    steps.append({"step": len(steps), "t_start": 0.0, "n_prefill_tokens": p,
                                  "n_decode_seqs": d, "n_seqs": 1, "blocks_used": 0,
                                  "wall_s": coef[0] + coef[1] * p + coef[3] * d})
            self._json({"choices": [{"text": "x"}]})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        lm = profile_engine(f"http://127.0.0.1:{srv.server_port}", grid=ProfileGrid.quick(),
                            kv_bytes_per_token=1234, num_layers=3)
    finally:
        srv.shutdown()
    assert np.allclose([lm.a, lm.b, lm.d], [coef[0], coef[1], coef[3]], rtol=1e-6)
    assert lm.kv_bytes_per_token == 1234 and lm.model["name"] == "fake"
    assert lm.fit["n_rows"] > 10


def test_fit_results_dir(tmp_path):
    from infer_bench.workloads.planning.profiler import fit_results_dir

    coef = (0.004, 2e-5, 3e-6, 1e-4, 2e-8)
    rows = _synthetic_rows(coef, noise=0.0)
    (tmp_path / "spec.json").write_text(json.dumps({"deployments": [{"name": "m", "mode": "mono"}]}))
    with open(tmp_path / "steps.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"deployment": "m", **r}) + "\n")
        f.write(json.dumps({"deployment": "other", "wall_s": 9.0, "n_prefill_tokens": 1,
                            "n_decode_seqs": 0}) + "\n")
    lm = fit_results_dir(tmp_path, kv_bytes_per_token=10.0)
    assert np.allclose([lm.a, lm.b, lm.c, lm.d, lm.e], coef, rtol=1e-6)


# ---------------------------------------------------------------------------- scheduling policies

def _itl_gaps(times):
    return np.diff(np.asarray(times))


def test_prefill_priority_step_stalls_decodes_by_the_prefill_time():
    # A decodes alone; B's 1000-token prompt arrives mid-way. Under prefill_priority the next
    # step is B's whole prefill (decodes stall), so one of A's inter-token gaps is exactly
    # its own decode step + B's prefill step, both from the latency model by hand.
    a, b, d = 0.01, 1e-4, 0.001
    lm = LatencyModel(a=a, b=b, d=d)
    decode_step = a + d * 1                 # A alone: 0.011 s
    prefill_b = a + b * 1000                # B alone, no decodes: 0.11 s
    # B asks for 1 token: it ends with its prefill, so A decodes alone before and after
    reqs = SimRequests(np.array([0.0, 0.05]), np.array([100, 1000]), np.array([10, 1]))
    inst = InstanceConfig(max_num_batched_tokens=2048, max_num_seqs=8, policy="prefill_priority")
    res = simulate(Deployment("mono", instance=inst), lm, reqs)
    gaps = _itl_gaps(res.token_times[0])
    assert res.first_token_s[0] == pytest.approx(a + b * 100)
    assert gaps.max() == pytest.approx(decode_step + prefill_b, rel=1e-12)
    assert np.sum(np.isclose(gaps, decode_step, rtol=1e-12)) == len(gaps) - 1
    # B's prefill starts at the end of the decode step running when it arrived
    t_a = res.first_token_s[0]
    k = int(np.ceil((0.05 - t_a) / decode_step - 1e-9))
    assert res.first_token_s[1] == pytest.approx(t_a + k * decode_step + prefill_b, rel=1e-9)


def test_prompts_batched_in_one_prefill_step_cost_their_own_attention():
    """Two prompts prefilled together (prefill_priority batches whole prompts; chunked admits
    both into one step's budget): the step costs c*(L1^2 + L2^2)/1e3 -- causal attention is
    within each sequence -- not c*(L1 + L2)^2/1e3."""
    a, b, c, f = 0.01, 1e-4, 5e-4, 0.002
    lm = LatencyModel(a=a, b=b, c=c, f=f)
    L1, L2 = 600, 200
    want = a + b * (L1 + L2) + c * (L1 ** 2 + L2 ** 2) / 1e3 + 2 * f
    reqs = SimRequests(np.zeros(2), np.array([L1, L2]), np.array([1, 1]))
    for pol in ("prefill_priority", "chunked"):
        inst = InstanceConfig(max_num_batched_tokens=1024, max_num_seqs=8, policy=pol)
        res = simulate(Deployment("mono", instance=inst), lm, reqs)
        assert np.allclose(res.ttft_s, want, rtol=1e-12)
        assert not np.allclose(res.ttft_s, want + c * 2 * L1 * L2 / 1e3)
    # a prompt chunked over two steps: each chunk's own square (the prefix is the C term)
    inst = InstanceConfig(max_num_batched_tokens=400, max_num_seqs=8, policy="chunked")
    one = SimRequests(np.zeros(1), np.array([L1]), np.array([1]))
    res = simulate(Deployment("mono", instance=inst), lm, one)
    step1 = a + b * 400 + c * 400 ** 2 / 1e3 + f
    step2 = a + b * 200 + c * 200 ** 2 / 1e3 + f   # e = 0: the 400-token prefix costs nothing
    assert res.ttft_s[0] == pytest.approx(step1 + step2, rel=1e-12)


def test_pipeline_parallel_latency_is_stages_times_stage_time_throughput_one_per_stage():
    """pp=2 (vLLM's virtual engines): two requests land on the two virtual engines; each
    micro-batch takes T = 0.02 s through both stages (stage time 0.01 s), and the second
    virtual engine's micro-batches follow the first's by one stage time. Tokens of each
    request every T (latency), the instance a token every T/2 (throughput)."""
    T = 0.02
    lm = LatencyModel(a=T, pp=2)
    reqs = SimRequests(np.zeros(2), np.array([8, 8]), np.array([5, 5]))
    res = simulate(Deployment("mono"), lm, reqs, per_token=True)
    assert np.allclose(res.token_times[0], T * np.arange(1, 6), rtol=1e-12)
    assert np.allclose(res.token_times[1], T / 2 + T * np.arange(1, 6), rtol=1e-12)
    # the same fit with pp=1 batches both in one step: one token of each every T
    one = simulate(Deployment("mono"), LatencyModel(a=T), reqs, per_token=True)
    assert np.allclose(one.token_times[1], T * np.arange(1, 6), rtol=1e-12)
    # uneven micro-batches: a long prefill on one virtual engine holds each stage for half its
    # time; the other engine's micro-batch waits for the stage, not for the whole pipeline
    lm = LatencyModel(a=0.02, b=1e-4, pp=2)
    reqs = SimRequests(np.array([0.0, 0.001]), np.array([1000, 8]), np.array([1, 1]))
    inst = InstanceConfig(max_num_batched_tokens=2048, max_num_seqs=8)
    res = simulate(Deployment("mono", instance=inst), lm, reqs, per_token=True)
    big, small = 0.02 + 0.1, 0.02 + 8e-4
    assert res.first_token_s[0] == pytest.approx(big, rel=1e-12)
    # stage 0 free at big/2; then stage 1 free at big: small's stages end at big/2 + small/2
    # and then max(that, big) + small/2
    assert res.first_token_s[1] == pytest.approx(big + small / 2, rel=1e-12)


def test_pipeline_parallel_virtual_engines_split_the_kv():
    # 2 virtual engines, 64 tokens of KV -> 32 each (blocks of 16): a request needing 48
    # tokens fits the instance but not a virtual engine (vLLM v0 gives each scheduler 1/pp of
    # the blocks), so it fails; at pp=1 it runs
    reqs = SimRequests(np.zeros(1), np.array([40]), np.array([9]))
    for pp, failed in ((1, False), (2, True)):
        lm = LatencyModel(a=0.01, pp=pp, kv_capacity_tokens=64)
        res = simulate(Deployment("mono"), lm, reqs)
        assert bool(np.isnan(res.first_token_s[0])) == failed


def test_chunked_budget_bounds_the_stall():
    # the same arrival under chunked prefill: B's prompt is cut into chunks that ride with A's
    # decode, so every gap of A is one mixed step, at most step_time(budget - 1 prefill
    # tokens, 1 decode), far below the prefill-priority stall
    a, b, d = 0.01, 1e-4, 0.001
    lm = LatencyModel(a=a, b=b, d=d)
    budget = 256
    reqs = SimRequests(np.array([0.0, 0.05]), np.array([100, 1000]), np.array([10, 2]))
    inst = InstanceConfig(max_num_batched_tokens=budget, max_num_seqs=8, policy="chunked")
    res = simulate(Deployment("mono", instance=inst), lm, reqs)
    gaps = _itl_gaps(res.token_times[0])
    bound = lm.step_time(budget - 1, 1, 0, 1)
    assert gaps.max() <= bound + 1e-12
    assert gaps.max() == pytest.approx(bound, rel=1e-12)      # a full chunk did ride along
    assert gaps.max() < (a + d) + (a + b * 1000)
    assert gaps.min() == pytest.approx(a + d, rel=1e-12)      # before B arrives: decode alone


def test_prefill_priority_batches_whole_prompts_up_to_the_budget():
    lm = LatencyModel(a=0.01, b=1e-4)
    # 4 prompts of 300 arrive together; budget 700 -> steps of 2 whole prompts (no chunking)
    reqs = SimRequests(np.zeros(4), np.full(4, 300), np.full(4, 3))
    inst = InstanceConfig(max_num_batched_tokens=700, max_num_seqs=8, policy="prefill_priority")
    res = simulate(Deployment("mono", instance=inst), lm, reqs)
    p2 = 0.01 + 1e-4 * 600
    assert np.allclose(np.sort(res.first_token_s), [p2, p2, 2 * p2, 2 * p2])
    # the first two decode only after the second prefill step: their gap holds it
    assert res.token_times[0][1] - res.token_times[0][0] == pytest.approx(p2 + 0.01)


def test_decode_priority_defers_prompts_until_enough_wait():
    from infer_bench.workloads.planning.simulator import (DECODE_PRIORITY_MAX_WAITING_STEPS,
                                                          DECODE_PRIORITY_WAITING_SERVED_RATIO)
    assert DECODE_PRIORITY_WAITING_SERVED_RATIO == 1.2 and DECODE_PRIORITY_MAX_WAITING_STEPS == 20
    a = 0.01
    lm = LatencyModel(a=a)
    # 5 requests decode (long outputs); 1 new prompt arrives: 1 < floor(5 * 1.2) = 6, so it
    # waits for TGI's max_waiting_tokens = 20 decode rounds since the last prefill, while
    # prefill_priority takes it at the next step
    n_in = np.full(6, 10)
    n_out = np.array([100] * 5 + [5])
    send = np.array([0.0] * 5 + [0.0305])
    reqs = SimRequests(send, n_in, n_out)
    pp = simulate(Deployment("mono", instance=InstanceConfig(policy="prefill_priority")), lm, reqs)
    dp = simulate(Deployment("mono", instance=InstanceConfig(policy="decode_priority")), lm, reqs)
    # all steps take a: the first prefill ends at a, then decode rounds
    assert pp.first_token_s[5] == pytest.approx(5 * a)        # rounds end at 2a, 3a, 4a; then prefill
    # decode_priority: waiting_tokens = 1 after the first prefill, +1 per decode round; the
    # prompt joins once it reaches 20, i.e. after 19 rounds (ending at a + 19a = 20a)
    assert dp.first_token_s[5] == pytest.approx(21 * a)
    assert dp.ttft_s[5] > pp.ttft_s[5]
    # and the running decodes were stalled exactly once after the first prefill in both
    g = _itl_gaps(dp.token_times[0])
    assert np.sum(~np.isclose(g, a)) == 1 and g.max() == pytest.approx(2 * a)
    # enough waiting prompts (>= floor(1.2 x running)) join at the next round
    send2 = np.array([0.0] * 5 + [0.0305] * 6)
    reqs2 = SimRequests(send2, np.full(11, 10), np.array([100] * 5 + [5] * 6))
    dp2 = simulate(Deployment("mono", instance=InstanceConfig(policy="decode_priority")), lm, reqs2)
    assert np.allclose(dp2.first_token_s[5:], 5 * a)


@pytest.mark.parametrize("policy", ["chunked", "prefill_priority", "decode_priority"])
def test_policies_agree_without_contention(policy):
    # one request at a time: every policy runs prefill then decodes back to back
    lm = LatencyModel(a=0.01, b=1e-5, d=1e-3)
    reqs = SimRequests(np.array([0.0, 10.0]), np.array([100, 200]), np.array([5, 5]))
    res = simulate(Deployment("mono", instance=InstanceConfig(policy=policy)), lm, reqs)
    assert res.ttft_s == pytest.approx([0.01 + 1e-3, 0.01 + 2e-3])
    assert np.allclose(res.tpot_s, 0.011)


def test_instance_config_rejects_unknown_policy_and_kv_alloc():
    with pytest.raises(ValueError, match="policy"):
        InstanceConfig(policy="fifo")
    with pytest.raises(ValueError, match="kv_alloc"):
        InstanceConfig(kv_alloc="lazy")


def test_per_role_latency_model():
    # the decode instances' own model sets the decode step; the prefill's sets the prefill
    lm_p = LatencyModel(a=0.02, b=1e-4)
    lm_d = LatencyModel(a=0.005, d=1e-3)
    reqs = SimRequests(np.zeros(1), np.array([1000]), np.array([5]))
    dep = Deployment("disagg", prefill_instance=InstanceConfig(latency_model=lm_p),
                     decode_instance=InstanceConfig(latency_model=lm_d))
    res = simulate(dep, LatencyModel(a=1.0), reqs)            # the fallback is never used
    assert res.prefill_s[0] == pytest.approx(0.02 + 0.1)
    assert res.tpot_s[0] == pytest.approx(0.006)
    assert dep.to_dict()["decode_instance"]["latency_model"]["step_time"]["a_s"] == 0.005


# ---------------------------------------------------------------------------- first token

def test_disagg_first_token_at_decode_admission_or_from_prefill():
    n_in, kvb = 1000, 1e5
    lm = LatencyModel(a=0.0, b=1e-4, d=1e-3, kv_bytes_per_token=kvb, num_layers=10)
    link = Link(bandwidth_gbps=10.0, latency_s=0.002)
    xfer = n_in * kvb / (10e9 / 8) + 0.002
    reqs = SimRequests(np.zeros(1), np.array([n_in]), np.array([4]))
    # the bundled engine: the decode worker emits the first token when it commits the import
    # (disagg/worker.py commit_import), so that is the default
    assert Deployment("disagg").first_token_from_prefill is False
    at_dec = simulate(Deployment("disagg", link=link), lm, reqs)
    from_p = simulate(Deployment("disagg", link=link, first_token_from_prefill=True), lm, reqs)
    assert at_dec.ttft_s[0] == pytest.approx(0.1 + xfer, rel=1e-9)
    assert from_p.ttft_s[0] == pytest.approx(0.1, rel=1e-9)
    # the later tokens are the same; TPOT of the streamed variant carries the transfer
    assert at_dec.token_times[0][1:] == from_p.token_times[0][1:]
    assert at_dec.last_token_s[0] == pytest.approx(0.1 + xfer + 3 * 1e-3)
    assert from_p.tpot_s[0] == pytest.approx((xfer + 3e-3) / 3)


# ---------------------------------------------------------------------------- KV allocation

def test_on_demand_preempts_by_hand_computed_blocks():
    # block_size 2, 3 blocks; two prompts of 2 tokens, 3 output tokens each; every step 1 s.
    # step 0: both admitted (1 block each, 1 free), prefilled: token 1 each; 3 tokens each.
    # step 1: r0's decode needs block 2 (takes the free one); r1's needs one, none is free:
    #         r1 (the latest admitted) preempts itself -> waiting front, its block freed (1 free).
    # step 2: r0 decodes in its 2 blocks (token 3: done, 3 free); r1 needs 2 blocks for its
    #         3 tokens but only 1 was free at the step's start: waits.
    # step 3: r1 recomputes its 3 tokens (2 blocks): token 2. step 4: token 3.
    lm = LatencyModel(a=1.0)
    reqs = SimRequests(np.zeros(2), np.array([2, 2]), np.array([3, 3]))
    od = InstanceConfig(block_size=2, kv_capacity_tokens=6, kv_alloc="on_demand")
    res = simulate(Deployment("mono", instance=od), lm, reqs)
    assert res.token_times == [[1.0, 2.0, 3.0], [1.0, 4.0, 5.0]]
    assert res.preemptions.tolist() == [0, 1]
    # reserve: 3 blocks each (2 + 3 tokens), one at a time, never preempts
    rs = InstanceConfig(block_size=2, kv_capacity_tokens=6, kv_alloc="reserve")
    res = simulate(Deployment("mono", instance=rs), lm, reqs)
    assert res.token_times == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert res.preemptions.tolist() == [0, 0]


def _engine_token_steps(n_in, n_out, num_blocks, block_size, budget, max_seqs):
    """The bundled engine's scheduler and block manager (prefix caching off) on a trace that
    arrives at once, with a stand-in model: the step index of every output token, and each
    request's preemption count."""
    from infer_bench.backends.engine.block_manager import BlockManager
    from infer_bench.backends.engine.sampling import SamplingParams
    from infer_bench.backends.engine.scheduler import Scheduler
    from infer_bench.backends.engine.sequence import Sequence

    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    sch = Scheduler(bm, budget, max_seqs, enable_chunked_prefill=True)
    seqs = [Sequence.create(f"r{i}", list(range(1000 * i, 1000 * i + a)),
                            SamplingParams(max_tokens=int(b), ignore_eos=True))
            for i, (a, b) in enumerate(zip(n_in, n_out))]
    for sq in seqs:
        sch.add(sq)
    steps: dict[int, list[int]] = {id(sq): [] for sq in seqs}
    step = 0
    while sch.has_unfinished():
        out = sch.schedule()
        assert not out.finished
        for sq, n in out.scheduled:
            sq.num_computed_tokens += n
            if sq.num_computed_tokens == sq.num_tokens:     # the last token ran: sample one
                sq.token_ids.append(7)
                steps[id(sq)].append(step)
                if sq.num_output_tokens >= sq.params.max_tokens:
                    sch.finish(sq, "length")
        step += 1
    return [steps[id(sq)] for sq in seqs], [sq.num_preemptions for sq in seqs]


@pytest.mark.parametrize("seed", range(6))
def test_on_demand_matches_the_engine_block_accounting(seed):
    rng = np.random.default_rng(seed)
    n = 8
    n_in = rng.integers(1, 40, n)
    n_out = rng.integers(1, 30, n)
    bs, budget, max_seqs = 4, 32, 6
    num_blocks = int(max(-(-(a + b - 1) // bs) for a, b in zip(n_in, n_out))) + 3
    eng_steps, eng_pre = _engine_token_steps(n_in, n_out, num_blocks, bs, budget, max_seqs)
    inst = InstanceConfig(block_size=bs, kv_capacity_tokens=num_blocks * bs, kv_alloc="on_demand",
                          max_num_batched_tokens=budget, max_num_seqs=max_seqs)
    res = simulate(Deployment("mono", instance=inst), LatencyModel(a=1.0),
                   SimRequests(np.zeros(n), n_in, n_out))
    assert res.preemptions.tolist() == eng_pre
    assert [[round(t) - 1 for t in tt] for tt in res.token_times] == eng_steps
    if seed == 0:
        assert sum(eng_pre) > 0          # the trace is tight enough to preempt


def test_on_demand_without_pressure_equals_reserve():
    # no pool pressure -> the same steps (validate()'s fitted models have no capacity at all)
    lm = LatencyModel.load(example_profile_path())
    wl = WorkloadSpec(input_len="uniform:100,800", output_len="uniform:2,64", num_requests=300)
    reqs = requests_from_spec(wl, ArrivalSpec(kind="poisson", rate=20.0))
    out = {}
    for kv in ("reserve", "on_demand"):
        inst = InstanceConfig(kv_alloc=kv, kv_capacity_tokens=10**7)
        out[kv] = simulate(Deployment("mono", instance=inst), lm, reqs)
    assert np.array_equal(out["reserve"].last_token_s, out["on_demand"].last_token_s)
    assert out["on_demand"].preemptions.sum() == 0
    default = simulate(Deployment("mono"), lm, reqs)   # on_demand, the profile's 400k tokens
    assert np.array_equal(default.last_token_s, out["reserve"].last_token_s)


# ---------------------------------------------------------------------------- workloads from data

def test_empirical_lengths_from_a_file_match_the_synthetic_generator(tmp_path):
    from infer_bench.workloads.datasets import build_requests
    from infer_bench.workloads.spec import LengthDist

    f = tmp_path / "pairs.csv"
    f.write_text("input_len,output_len\n100,5\n200,7\n300,9\n")
    wl = WorkloadSpec(input_len=f"file:{f}", output_len=f"file:{f}", num_requests=40, seed=2)
    n_in, n_out = spec_lengths(wl)
    # pairs stay joint: each input comes with its own row's output
    assert {(int(a), int(b)) for a, b in zip(n_in, n_out)} <= {(100, 5), (200, 7), (300, 9)}
    assert len(set(n_in.tolist())) == 3
    reqs = build_requests(wl)                     # what a real run would send
    assert n_in.tolist() == [r.n_input for r in reqs]
    assert n_out.tolist() == [r.max_tokens for r in reqs]
    # one number per line (a bare path works too), for either side
    g = tmp_path / "out.txt"
    g.write_text("# output lengths\n4\n8\n")
    wl2 = WorkloadSpec(input_len=f"file:{f}#input", output_len=str(g), num_requests=30)
    a, b = spec_lengths(wl2)
    assert set(a.tolist()) <= {100, 200, 300} and set(b.tolist()) == {4, 8}
    assert LengthDist.parse(f"file:{f}#output").values().tolist() == [5, 7, 9]
    # the spec round-trips through spec.json
    assert WorkloadSpec.from_dict(wl.to_dict()).input_len == wl.input_len
    with pytest.raises(ValueError, match="does not exist"):
        LengthDist.parse(f"file:{tmp_path / 'missing.csv'}")


def test_multi_turn_file_prompts_grow_with_the_history(tmp_path):
    from infer_bench.workloads.length_data import read_lengths

    f = tmp_path / "chat.jsonl"
    f.write_text('{"conversation_id": "a", "input_len": 10, "output_len": 5}\n'
                 '{"conversation_id": "b", "input_len": 7, "output_len": 2}\n'
                 '{"conversation_id": "a", "input_len": 3, "output_len": 4}\n'
                 '{"conversation_id": "a", "input_len": 1, "output_len": 6}\n')
    cols = read_lengths(f)
    # turn k's prompt = earlier inputs + outputs of its conversation + its new user text
    assert cols["input"].tolist() == [10, 7, 10 + 5 + 3, 10 + 5 + 3 + 4 + 1]
    assert cols["output"].tolist() == [5, 2, 4, 6]
    wl = WorkloadSpec(input_len=f"file:{f}", output_len=f"file:{f}", num_requests=50)
    n_in, n_out = spec_lengths(wl)
    assert {(int(a), int(b)) for a, b in zip(n_in, n_out)} == {(10, 5), (7, 2), (18, 4), (23, 6)}


def test_sharegpt_file_gives_paired_growing_lengths(tmp_path):
    from infer_bench.workloads.length_data import read_lengths

    f = tmp_path / "sg.jsonl"
    conv = {"conversations": [{"from": "human", "value": "one two three"},
                              {"from": "gpt", "value": "a b"},
                              {"from": "human", "value": "four"},
                              {"from": "gpt", "value": "c d e f"}]}
    f.write_text(json.dumps(conv) + "\n")
    cols = read_lengths(f)
    assert cols["input"].tolist() == [3, 3 + 2 + 1]
    assert cols["output"].tolist() == [2, 4]
