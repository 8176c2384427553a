"""Workload builders (workloads/datasets.py) and schedules: trace replay, rate sweeps, ShareGPT
parsing, shared-prefix groups, multi-turn prompts. Pure computation, no network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infer_bench.workloads.arrivals import rate_sweep, send_times, trace_send_times
from infer_bench.workloads.datasets import (
    DatasetError, build_requests, read_sharegpt, read_trace, request_count_note,
    sample_dataset_path, shared_prefix_groups,
)
from infer_bench.workloads.spec import ArrivalSpec, WorkloadSpec
from infer_bench.workloads.prompt_text import load_tokenizer_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer_for(tiny_model_dir)


def _write_trace(path, stamps, **extra):
    with open(path, "w") as f:
        f.write("# a comment line\n")
        for i, t in enumerate(stamps):
            e = {"timestamp": t, "output_len": 3 + i}
            e.update({"prompt": "hello there"} if i % 2 else {"input_len": 5 + i})
            f.write(json.dumps(e) + "\n")


def test_trace_replay_is_exact(tmp_path):
    stamps = [100.0, 100.25, 100.25, 101.125, 103.0]
    p = tmp_path / "trace.jsonl"
    _write_trace(p, stamps)
    spec = WorkloadSpec(kind="trace", dataset_path=str(p), output_len=7)
    reqs = build_requests(spec)                     # the runner's entry point, every kind
    assert [r.send_at_s for r in reqs] == stamps
    assert [r.max_tokens for r in reqs] == [3, 4, 5, 6, 7]
    assert reqs[1].prompt == "hello there" and reqs[0].n_input == 5
    want = np.asarray(stamps) - 100.0
    assert trace_send_times(reqs).tolist() == want.tolist()          # exact, no jitter
    arr = send_times(ArrivalSpec("trace", trace_path=str(p), speedup=2.0), 5)
    assert arr.tolist() == (want / 2.0).tolist()
    # the load generator uses the requests' own times for a trace arrival
    from infer_bench.workloads.loadgen import LoadGenerator
    lg = LoadGenerator("http://x", "completions", reqs, ArrivalSpec("trace", speedup=0.5))
    assert lg.times.tolist() == (want / 0.5).tolist()
    # bad traces name the line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 1, "input_len": 3}\n{"timestamp": 0.5, "input_len": 3}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: timestamp"):
        read_trace(bad)
    bad.write_text('{"timestamp": 1}\n')
    with pytest.raises(DatasetError, match=r":1: needs 'input_len'"):
        read_trace(bad)


def test_rate_sweep():
    pts = rate_sweep(start=1, stop=8, num=4, geometric=True, seed=3)
    assert [p.arrival.rate for p in pts] == pytest.approx([1, 2, 4, 8])
    assert [p.name for p in pts] == ["1rps", "2rps", "4rps", "8rps"]
    assert all(p.arrival.kind == "poisson" and p.arrival.seed == 3 for p in pts)
    lin = rate_sweep(start=2, stop=6, num=3, kind="gamma", burstiness=0.5)
    assert [p.arrival.rate for p in lin] == [2.0, 4.0, 6.0]
    assert lin[0].arrival.burstiness == 0.5
    assert [p.arrival.rate for p in rate_sweep([5, 1, 2.5])] == [1.0, 2.5, 5.0]
    # each point's schedule is reproducible bit for bit
    a = send_times(pts[2].arrival, 50)
    assert a.tobytes() == send_times(rate_sweep(start=1, stop=8, num=4, geometric=True,
                                                seed=3)[2].arrival, 50).tobytes()
    with pytest.raises(ValueError):
        rate_sweep(start=0, stop=1, num=2)


def test_sharegpt_parsing(tmp_path, tok):
    convs = read_sharegpt(sample_dataset_path())
    assert 150 <= len(convs) <= 300
    assert sum(len(c) > 2 for c in convs) > 50          # multi-exchange conversations too
    spec = WorkloadSpec(kind="sharegpt", num_requests=30, seed=1, max_output_len=20)
    a = build_requests(spec, tok)
    assert a == build_requests(spec, tok)                # deterministic
    assert len(a) == 30 and all(1 <= r.max_tokens <= 20 for r in a)
    for r in a:
        assert r.n_input == len(tok.tokenize(r.prompt))
    # prompt = first human turn, output = the gpt reply's token count
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "one two three"},
        {"from": "gpt", "value": "four five six seven"},
        {"from": "human", "value": "again"}, {"from": "gpt", "value": "x"}]}) + "\n\n" +
        json.dumps({"conversations": [{"from": "gpt", "value": "no human first"}]}) + "\n")
    r = build_requests(WorkloadSpec(kind="sharegpt", dataset_path=str(p), num_requests=3))
    assert [x.prompt for x in r] == ["one two three"] * 3
    assert [x.max_tokens for x in r] == [4] * 3 and r[0].n_input == 3
    # JSON list format
    j = tmp_path / "d.json"
    j.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"},
                                                {"from": "gpt", "value": "a b"}]}]))
    assert build_requests(WorkloadSpec(kind="sharegpt", dataset_path=str(j),
                                       num_requests=1))[0].max_tokens == 2
    # malformed lines: a clear error naming the file and line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(p.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        read_sharegpt(bad)
    bad.write_text('{"conversations": [{"from": "human"}]}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: turn 0 needs"):
        read_sharegpt(bad)
    bad.write_text('{"conversations": [{"from": "alien", "value": "x"}]}\n')
    with pytest.raises(DatasetError, match=r":1: .*unknown role"):
        read_sharegpt(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        read_sharegpt(tmp_path / "missing.jsonl")


def test_shared_prefix_groups_share_first_k_tokens(tok):
    spec = WorkloadSpec(kind="shared_prefix", num_prefixes=3, prompts_per_prefix=4,
                        shared_prefix_len=16, input_len="uniform:2,12", output_len=5, seed=2)
    reqs = build_requests(spec, tok)
    assert len(reqs) == 12 == spec.num_requests
    assert [r.prompt for r in reqs] == [r.prompt for r in build_requests(spec, tok)]
    groups: dict[tuple, list] = {}
    for r in reqs:
        ids = tok.tokenize(r.prompt)
        assert len(ids) == r.n_input and 18 <= r.n_input <= 28
        groups.setdefault(tuple(ids[:16]), []).append(ids)
    assert len(groups) == 3 and all(len(g) == 4 for g in groups.values())
    # the suffixes really differ (first token after the prefix, or the length)
    for g in groups.values():
        assert len({tuple(x[16:]) for x in g}) == 4
    # without a tokenizer: word-level prefixes
    plain = build_requests(spec)
    assert len({" ".join(r.prompt.split()[:16]) for r in plain}) == 3


def test_shared_prefix_sends_num_requests():
    """Without prompts_per_prefix the groups hold exactly num_requests prompts (sizes differ by
    at most one); with it, num_prefixes x prompts_per_prefix as before."""
    for n, sizes in ((40, [10, 10, 10, 10]), (42, [11, 11, 10, 10]), (3, [1, 1, 1])):
        spec = WorkloadSpec(kind="shared_prefix", num_requests=n, shared_prefix_len=6,
                            input_len=3, output_len=2, seed=1)
        assert spec.num_requests == n and shared_prefix_groups(spec) == sizes
        reqs = build_requests(spec)
        assert len(reqs) == n and len({r.request_id for r in reqs}) == n
        by_prefix: dict[str, int] = {}
        for r in reqs:
            key = " ".join(r.prompt.split()[:6])
            by_prefix[key] = by_prefix.get(key, 0) + 1
        assert sorted(by_prefix.values(), reverse=True) == sizes
        assert request_count_note(spec, len(reqs)) is None
    fixed = WorkloadSpec(kind="shared_prefix", num_requests=40, num_prefixes=3,
                         prompts_per_prefix=5, shared_prefix_len=6)
    assert fixed.num_requests == 15 and len(build_requests(fixed)) == 15
    with pytest.raises(ValueError, match="prompts_per_prefix"):
        WorkloadSpec(kind="shared_prefix", prompts_per_prefix=0, shared_prefix_len=6)


def test_request_count_note_says_why(tmp_path):
    mt = WorkloadSpec(kind="multi_turn", num_requests=2, num_turns=3, input_len=4, output_len=2)
    n = len(build_requests(mt))
    assert n == 6
    note = request_count_note(mt, n)
    assert note.startswith("warning: sending 6 requests per load point, not 2")
    assert "2 conversations of up to 3 turns" in note and "\n" not in note
    p = tmp_path / "short.jsonl"
    _write_trace(p, [0.0, 0.5])
    tr = WorkloadSpec(kind="trace", dataset_path=str(p), num_requests=10)
    assert len(build_requests(tr)) == 2
    assert "has only 2 entries" in request_count_note(tr, 2)
    assert request_count_note(WorkloadSpec(num_requests=5), 5) is None


def test_runner_says_once_when_it_sends_other_than_asked(tmp_path):
    from infer_bench.workloads.runner import RunObserver, RunSession, RunSpec, default_load_points

    class Notes(RunObserver):
        def __init__(self):
            self.lines: list[str] = []

        def message(self, text):
            self.lines.append(text)

    mt = WorkloadSpec(kind="multi_turn", num_requests=2, num_turns=2, input_len=4, output_len=2)
    lps = default_load_points([1.0, 2.0], None, seed=0)
    obs = Notes()
    session = RunSession(RunSpec(deployments=[], workload=mt, load_points=lps,
                                 out_dir=tmp_path / "run", warmup_requests=0), obs)
    assert [len(session.requests_for(lp)) for lp in lps] == [4, 4]
    assert len(obs.lines) == 1 and "sending 4 requests per load point, not 2" in obs.lines[0]
    obs.lines.clear()
    session = RunSession(RunSpec(deployments=[], workload=WorkloadSpec(num_requests=3),
                                 load_points=lps, out_dir=tmp_path / "run2",
                                 warmup_requests=0), obs)
    assert len(session.requests_for(lps[0])) == 3 and obs.lines == []


def test_multi_turn_prompts_grow(tok):
    spec = WorkloadSpec(kind="multi_turn", num_requests=2, num_turns=3, input_len=6,
                        output_len=4, think_time_s=0.05, endpoint="chat", seed=4)
    reqs = build_requests(spec, tok)
    assert len(reqs) == 6
    conv = [r for r in reqs if r.conversation_id == reqs[0].conversation_id]
    assert [r.turn for r in conv] == [0, 1, 2]
    assert [len(r.prompt) for r in conv] == [1, 3, 5]                 # messages grow
    for a, b in zip(conv, conv[1:]):
        assert b.prompt[:len(a.prompt)] == a.prompt                  # history is a prefix
        assert b.n_input > a.n_input
        assert b.think_time_s == 0.05
    assert conv[1].prompt[1]["role"] == "assistant"
    assert len(tok.tokenize(conv[1].prompt[1]["content"])) == 4       # stand-in answer length
    # completions endpoint: a text transcript; ShareGPT conversations as the source
    txt = build_requests(WorkloadSpec(kind="multi_turn", num_requests=3, num_turns=3,
                                         dataset_path=str(sample_dataset_path())), tok)
    by: dict[str, list] = {}
    for r in txt:
        by.setdefault(r.conversation_id, []).append(r)
    for turns in by.values():
        for a, b in zip(turns, turns[1:]):
            assert b.prompt.startswith(a.prompt[:-len("Assistant:")])
            assert b.n_input > a.n_input


def test_workload_spec_kinds_round_trip():
    for kind in ("synthetic", "sharegpt", "shared_prefix", "multi_turn"):
        spec = WorkloadSpec(kind=kind, shared_prefix_len=4 if kind == "shared_prefix" else 0)
        assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="workload kind"):
        WorkloadSpec(kind="nope")
    with pytest.raises(ValueError, match="dataset_path"):
        WorkloadSpec(kind="trace")
    a = ArrivalSpec("trace", trace_path="t.jsonl", speedup=2)
    assert ArrivalSpec.from_dict(a.to_dict()) == a and a.label() == "trace-x2"
