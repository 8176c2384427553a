"""The planner's latency model against engine step traces: the context-token and prefill-chunk
counts in the engine's step rows, the fit of the extended step-time form (per prefill chunk,
context, co-location slowdown), fitting on chosen load points of a results dir, and the
simulator mechanisms the reference engine has (wake-up window, reserve on the decode instance
between its steps, client intake)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infer_bench.workloads.planning.latency_model import LatencyModel, busy_overlap, fit_step_rows
from infer_bench.workloads.planning.sim_model import Deployment, InstanceConfig, SimRequests
from infer_bench.workloads.planning.simulator import simulate

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- engine step rows

def test_engine_step_rows_carry_context_and_prefill_chunks(tiny_model_dir):
    from infer_bench.backends.engine.engine import EngineConfig, LLMEngine
    from infer_bench.backends.engine.loader import load_model
    from infer_bench.backends.engine.sampling import SamplingParams

    loaded = load_model(str(tiny_model_dir))
    eng = LLMEngine(EngineConfig(block_size=4, max_num_batched_tokens=16, num_kv_blocks=256,
                                 enable_prefix_caching=False), loaded)
    greedy = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    eng.add_request("a", list(range(3, 23)), greedy)   # 20 tokens: chunks of 16 + 4
    eng.add_request("b", list(range(30, 36)), greedy)  # 6 tokens
    while eng.has_unfinished():
        eng.step()
    tr = eng.step_trace()
    for r in tr:
        assert r["n_prefill_seqs"] == r["n_seqs"] - r["n_decode_seqs"]
        assert r["n_context_tokens"] >= 0
    # step 0: only "a"'s first chunk (16 tokens, nothing cached yet) -> no context
    assert tr[0]["n_prefill_tokens"] == 16 and tr[0]["n_context_tokens"] == 0
    # step 1: the rest of "a" (4 tokens after its 16-token prefix) and all of "b" (6 tokens,
    # nothing before it): context = a's 16 computed tokens, two prefill chunks
    assert tr[1]["n_prefill_tokens"] == 10
    assert tr[1]["n_prefill_seqs"] == 2 and tr[1]["n_context_tokens"] == 16
    # then 4 pure decode steps of both: each decode attends its computed tokens (a: 20, 21, ...;
    # b: 6, 7, ...)
    dec = [r for r in tr if r["n_prefill_tokens"] == 0]
    assert [r["n_decode_seqs"] for r in dec] == [2, 2, 2, 2]
    assert [r["n_context_tokens"] for r in dec] == [26, 28, 30, 32]
    assert all(r["n_prefill_seqs"] == 0 for r in dec)
    # the sum of squared prefill chunk lengths (the latency model's Q): 16^2, then 4^2 + 6^2
    # (not (4 + 6)^2: attention is within each sequence); 0 in decode steps
    assert tr[0]["prefill_sq_tokens"] == 256 and tr[1]["prefill_sq_tokens"] == 52
    assert all(r["prefill_sq_tokens"] == 0 for r in dec)


# ---------------------------------------------------------------------------- fitting

def _rows(coef, n=600, seed=0, noise=0.0, skew=False, equal_chunks=False):
    """Step rows from t = a + b*P + c*Q/1e3 + d*D + e*C + f*N: chunks of unequal lengths, rows
    carry prefill_sq_tokens (Q); equal_chunks=True: the N chunks of a step are equal and the
    rows do not carry Q (older engine traces: the fit reads Q = P^2/N)."""
    a, b, c, d, e, f = coef
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = rng.integers(3)
        npf = int(rng.integers(1, 4)) if kind != 1 else 0
        if equal_chunks:
            chunks = [int(rng.integers(16, 1024))] * npf
        else:
            chunks = [int(x) for x in rng.integers(16, 1024, size=npf)]
        P, Q = sum(chunks), sum(x * x for x in chunks)
        D = int(rng.integers(1, 32)) if kind != 0 else 0
        C = int(D * rng.integers(16, 512) + (rng.integers(0, 256) if npf else 0))
        t = a + b * P + c * Q / 1e3 + d * D + e * C + f * npf
        if skew:   # right-skewed noise with mean 1.1 (occasional slow steps)
            t *= 1.0 + rng.exponential(0.1)
        elif noise:
            t *= 1.0 + noise * rng.standard_normal()
        row = {"step": i, "t_start": float(i), "wall_s": t, "n_prefill_tokens": P,
               "n_decode_seqs": D, "n_seqs": D + npf, "n_context_tokens": C, "blocks_used": 0}
        if not equal_chunks:
            row["prefill_sq_tokens"] = Q
        rows.append(row)
    return rows


def test_fit_recovers_all_six_coefficients():
    coef = (0.02, 2e-3, 1e-4, 2e-2, 3e-6, 0.1)
    lm = fit_step_rows(_rows(coef))
    assert np.allclose([lm.a, lm.b, lm.c, lm.d, lm.e, lm.f], coef, rtol=1e-6)
    assert lm.fit["context_term"] and lm.fit["prefill_seq_term"]
    # n_prefill_seqs, when the rows give it, is used instead of n_seqs - n_decode_seqs
    rows = _rows(coef, seed=3)
    for r in rows:
        r["n_prefill_seqs"] = r["n_seqs"] - r["n_decode_seqs"]
        r["n_seqs"] = 999
    lm2 = fit_step_rows(rows)
    assert np.isclose(lm2.f, coef[5], rtol=1e-6)
    # the model's step time matches the formula (default N: 1 prefill chunk when P > 0)
    assert np.isclose(lm.step_time(100, 3, 500), lm.a + lm.b * 100 + lm.c * 10 + 3 * lm.d
                      + 500 * lm.e + lm.f)
    assert np.isclose(lm.step_time(0, 3, 500, prefill_seqs=0), lm.a + 3 * lm.d + 500 * lm.e)


def test_prefill_attention_is_per_chunk_sum_of_squares():
    """Two prompts prefilled in one step cost c*(L1^2 + L2^2)/1e3, not c*(L1 + L2)^2/1e3:
    the model, the fit (rows with prefill_sq_tokens) and the old-row fallback (Q = P^2/N)."""
    lm = LatencyModel(a=0.01, b=1e-4, c=2e-3, f=0.005)
    L1, L2 = 300, 100
    want = 0.01 + 1e-4 * 400 + 2e-3 * (L1 ** 2 + L2 ** 2) / 1e3 + 2 * 0.005
    assert lm.step_time(400, 0, 0, 2, prefill_sq_tokens=L1 ** 2 + L2 ** 2) == pytest.approx(want)
    assert lm.step_time(400, 0, 0, 2, prefill_sq_tokens=L1 ** 2 + L2 ** 2) \
        < 0.01 + 1e-4 * 400 + 2e-3 * 400 ** 2 / 1e3 + 2 * 0.005
    # without Q: equal chunks (P^2/N); one chunk: P^2, as before Q existed
    assert lm.step_time(400, 0, 0, 2) == pytest.approx(0.05 + 2e-3 * 200 ** 2 * 2 / 1e3 + 0.01)
    assert lm.step_time(400, 0) == pytest.approx(0.05 + 2e-3 * 160.0 + 0.005)
    arr = lm.step_time_array([400, 400, 400], [0, 0, 0], [0, 0, 0], [2, 2, 1],
                             [L1 ** 2 + L2 ** 2, 2 * 200 ** 2, 400 ** 2])
    assert arr == pytest.approx([want, lm.step_time(400, 0, 0, 2), lm.step_time(400, 0)])
    # a fit of rows with unequal chunks recovers c only through prefill_sq_tokens
    coef = (0.02, 2e-3, 1e-4, 2e-2, 3e-6, 0.1)
    rows = _rows(coef, seed=7)
    assert any(r["prefill_sq_tokens"] != r["n_prefill_tokens"] ** 2 for r in rows)
    assert np.allclose(list(fit_step_rows(rows).coefficients.values()), coef, rtol=1e-6)
    # older rows (no prefill_sq_tokens) with equal chunks: the P^2/N fallback is exact
    old = _rows(coef, seed=8, equal_chunks=True)
    assert all("prefill_sq_tokens" not in r for r in old)
    assert any(r["n_seqs"] - r["n_decode_seqs"] > 1 for r in old)
    assert np.allclose(list(fit_step_rows(old).coefficients.values()), coef, rtol=1e-6)


def test_fit_targets_the_mean_under_skewed_noise_and_drops_outliers():
    coef = (0.02, 2e-3, 0.0, 2e-2, 0.0, 0.1)
    rows = _rows(coef, n=2000, skew=True, seed=5)
    rows[0]["wall_s"] *= 20          # a cold first step
    lm = fit_step_rows(rows)
    assert lm.fit["n_dropped"] >= 1
    # sum of step times predicted within 2% (weighting by 1/y alone under-predicts the mean)
    assert abs(lm.fit["mean_ratio"] - 1.0) < 0.02
    truth = np.array([r["wall_s"] for r in rows[1:]]).sum()
    pred = sum(lm.step_time(r["n_prefill_tokens"], r["n_decode_seqs"], r["n_context_tokens"],
                            r["n_seqs"] - r["n_decode_seqs"]) for r in rows[1:])
    assert abs(pred / truth - 1) < 0.02


def test_fit_finds_a_concave_decode_cost_and_the_simulator_uses_it():
    """Decode cost 30 ms/seq up to 8 sequences, 10 ms/seq beyond (as the CPU engine: concave):
    the fit puts knots at powers of two and recovers the curve; a linear truth keeps no knots."""
    rng = np.random.default_rng(4)

    def truth(D):
        return 0.02 + 0.03 * min(D, 8) + 0.01 * max(D - 8, 0)

    rows = []
    for i in range(600):
        D = int(rng.integers(1, 33))
        rows.append({"step": i, "wall_s": truth(D), "n_prefill_tokens": 0, "n_decode_seqs": D,
                     "n_seqs": D})
    for i in range(50):
        P = int(rng.integers(16, 512))
        rows.append({"step": 600 + i, "wall_s": 0.02 + 2e-3 * P + 0.1, "n_prefill_tokens": P,
                     "n_decode_seqs": 0, "n_seqs": 1})
    lm = fit_step_rows(rows)
    assert lm.decode_knots == (2.0, 4.0, 8.0, 16.0)
    for D in (1, 3, 8, 12, 32, 64):
        assert lm.step_time(0, D) == pytest.approx(truth(D), rel=1e-6)
    assert lm.step_time_array([0, 0], [5, 20]) == pytest.approx([truth(5), truth(20)], rel=1e-6)
    back = LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert back.decode_knots == lm.decode_knots and back.decode_slopes == lm.decode_slopes
    # the simulator's step time is the model's: a fixed batch of 20 decodes -> TPOT = step time
    reqs = SimRequests(np.zeros(20), np.full(20, 10), np.full(20, 50))
    res = simulate(Deployment("mono", instance=InstanceConfig(max_num_batched_tokens=512)), lm,
                   reqs)
    assert np.median(res.tpot_s) == pytest.approx(truth(20), rel=1e-6)
    # linear truth: no knots (they must lower the loss by 5%)
    lin = [dict(r, wall_s=0.02 + 0.03 * r["n_decode_seqs"] + (2e-3 * r["n_prefill_tokens"] + 0.1
                                                              if r["n_prefill_tokens"] else 0))
           for r in rows]
    lm_lin = fit_step_rows(lin)
    assert lm_lin.decode_knots == () and lm_lin.d == pytest.approx(0.03, rel=1e-6)
    with pytest.raises(Exception):
        LatencyModel(decode_knots=(4.0, 2.0), decode_slopes=(0.1, 0.1))


def test_busy_overlap_and_colocated_slowdown_fit():
    rows = [{"worker": "p", "t_start": 0.0, "wall_s": 1.0},
            {"worker": "d", "t_start": 0.5, "wall_s": 1.0},
            {"worker": "d", "t_start": 2.0, "wall_s": 0.5},
            {"worker": "p", "t_start": 2.25, "wall_s": 1.0}]
    assert np.allclose(busy_overlap(rows), [0.5, 0.5, 0.5, 0.25])
    assert np.allclose(busy_overlap([{"t_start": 0.0, "wall_s": 1.0}]), [0.0])
    # synthetic co-located workers: steps 30% slower for the part overlapping the other worker
    rng = np.random.default_rng(2)
    g = 0.3
    rows, t = [], {"p": 0.0, "d": 0.0}
    for i in range(400):
        w = "p" if i % 4 == 0 else "d"
        P, D = (int(rng.integers(50, 400)), 0) if w == "p" else (0, int(rng.integers(1, 6)))
        base = 0.02 + 2e-3 * P + 0.02 * D + (0.1 if P else 0.0)
        t[w] += float(rng.uniform(0, 0.3))
        rows.append({"worker": w, "step": i, "t_start": t[w], "wall_s": base,
                     "n_prefill_tokens": P, "n_decode_seqs": D, "n_seqs": D + (P > 0)})
        t[w] += base
    ov = busy_overlap(rows)
    for r, o in zip(rows, ov):
        r["wall_s"] *= 1 + g * o
    lm = fit_step_rows(rows)
    assert abs(lm.colocated_slowdown - g) <= 0.021
    assert np.allclose([lm.a, lm.b, lm.d, lm.f], [0.02, 2e-3, 0.02, 0.1], rtol=0.05)
    assert fit_step_rows(rows, fit_colocation=False).colocated_slowdown == 0.0
    # JSON round trip keeps it; old profiles without it read 0
    d = lm.to_dict()
    assert LatencyModel.from_dict(d).colocated_slowdown == lm.colocated_slowdown
    del d["step_time"]["colocated_slowdown"], d["step_time"]["f_s_per_prefill_seq"]
    old = LatencyModel.from_dict(d)
    assert old.colocated_slowdown == 0.0 and old.f == 0.0


def test_fit_on_chosen_load_points_of_a_results_dir(tmp_path):
    """Steps are split by the load points' time windows (engine clock = run clock + shift)."""
    from infer_bench.workloads.planning.profiler import fit_results_dir, load_point_windows

    shift = 1000.0
    recs, steps = [], []
    for k, (lp, t0, dstep) in enumerate((("slow", 0.0, 0.05), ("fast", 100.0, 0.01))):
        for i in range(5):
            send = t0 + i
            recs.append({"deployment": "mono", "load_point": lp, "request_id": f"{lp}{i}",
                         "send_s": send, "end_s": send + 2.0,
                         "server_timing_json": json.dumps({"arrival": send + shift + 0.002})})
        for j in range(40):
            D = 1 + j % 4
            steps.append({"deployment": "mono", "step": 100 * k + j,
                          "t_start": t0 + shift + 0.01 + 0.1 * j, "wall_s": dstep * D,
                          "n_prefill_tokens": 0, "n_decode_seqs": D, "n_seqs": D})
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    w = load_point_windows(tmp_path, "mono")
    assert np.allclose(w["slow"], (shift + 0.002, shift + 6.002))
    slow = fit_results_dir(tmp_path, deployment="mono", load_points=["slow"])
    fast = fit_results_dir(tmp_path, deployment="mono", load_points=["fast"])
    assert slow.fit["n_rows"] == fast.fit["n_rows"] == 40
    assert np.isclose(slow.d, 0.05, rtol=1e-6) and np.isclose(fast.d, 0.01, rtol=1e-6)


# ---------------------------------------------------------------------------- simulator

LM = LatencyModel(a=0.01, b=1e-3, d=0.01, f=0.05)


def test_wake_window_batches_near_simultaneous_arrivals():
    reqs = SimRequests(np.array([0.0, 0.001]), np.array([100, 100]), np.array([2, 2]))
    alone = simulate(Deployment("mono"), LM, reqs)
    # no window: the first prompt runs alone, the second waits for it
    assert alone.first_token_s[0] == pytest.approx(0.01 + 0.1 + 0.05)
    woke = simulate(Deployment("mono", instance=InstanceConfig(wake_s=0.005)), LM, reqs)
    # a 5 ms window: both prompts in one step that starts at 5 ms
    step = 0.01 + 0.2 + 2 * 0.05
    assert woke.first_token_s == pytest.approx([0.005 + step] * 2)
    # intake delay shifts everything but is counted in TTFT from the send
    shifted = simulate(Deployment("mono", intake_s=0.003), LM, reqs)
    assert shifted.ttft_s[0] == pytest.approx(alone.ttft_s[0] + 0.003)
    assert shifted.send_s == pytest.approx([0.0, 0.001])


def test_disagg_prompt_waits_for_the_decode_step_running_at_reservation():
    lm = LatencyModel(a=0.1, b=1e-3, d=0.0)
    # request 0 decodes 10 tokens on the decode instance (steps of 0.1 s); request 1 arrives in
    # the middle of one of those steps and reaches the prefill instance only when it ends
    reqs = SimRequests(np.array([0.0, 0.55]), np.array([100, 100]), np.array([10, 2]))
    res = simulate(Deployment("disagg"), lm, reqs)
    t_first0 = 0.1 + 0.1                       # prefill step of request 0 ends
    # decode steps of request 0 start at t_first0 and last 0.1 s each
    k = np.ceil((0.55 - t_first0) / 0.1)
    assert res.queue_s[1] == pytest.approx(t_first0 + k * 0.1 - 0.55)
    idle = simulate(Deployment("disagg"), lm, SimRequests(np.array([0.0]), np.array([100]),
                                                          np.array([2])))
    assert idle.queue_s[0] == pytest.approx(0.0)


def test_colocated_slowdown_applies_only_when_another_instance_steps():
    lm = LatencyModel(a=0.1, d=0.0, colocated_slowdown=0.5)
    one = SimRequests(np.array([0.0]), np.array([10]), np.array([3]))
    mono = simulate(Deployment("mono"), lm, one)
    assert mono.tpot_s[0] == pytest.approx(0.1)           # a single instance: never slowed
    two = simulate(Deployment("mono", num_instances=2), lm,
                   SimRequests(np.array([0.0, 0.0]), np.array([10, 10]), np.array([3, 3])))
    # two instances step at once: only the first step of the first one to start runs alone
    assert sorted(two.ttft_s) == pytest.approx([0.1, 0.15])
    assert two.tpot_s == pytest.approx([0.15, 0.15])


def test_describe_prints_every_coefficient():
    lm = LatencyModel(a=0.012, b=3e-4, c=2e-6, d=0.004, e=5e-8, f=0.0361)
    text = lm.describe()
    assert "{" not in text and "}" not in text, text
    assert "t = 12 ms + 300 us*P + 2 us*Q/1e3 + 4e+03 us*D" in text and "36.1 ms*N" in text, text
