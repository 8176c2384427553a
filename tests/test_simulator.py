"""Simulator and latency model: closed-form cases (M/D/1, fixed decode batch, KV transfer), KV
admission, closed loop, records that the metrics code accepts, profile JSON, and fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infer_bench.workloads.planning.latency_model import (LatencyModel, ProfileError, example_profile_path,
                                                 fit_step_rows, nnls)
from infer_bench.workloads.results import compute_summary
from infer_bench.workloads.planning.simulator import (Deployment, InstanceConfig, Link, SimRequests,
                                             poisson_requests, requests_from_spec, simulate,
                                             spec_lengths)
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
    inst = InstanceConfig(block_size=16, kv_capacity_tokens=64)   # 4 blocks
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
