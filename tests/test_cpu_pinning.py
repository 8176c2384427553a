"""Fair cores: the core plan (pure), the engine's CPU-list variables, pinning applied to real
launched deployments (every thread of every process read back), client telemetry, and the CPU
that idle deployments and the client take during another deployment's load, measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from infer_bench.backends.cpu_pinning import (
    ENV_DECODE, ENV_PREFILL, ENV_SELF, CoreNeed, CorePlan, format_cpu_list, order_cpus,
    pin_client, pin_threads, plan_cores, split_workers, thread_affinities,
)
from infer_bench.backends.engine.cpu_affinity import parse_cpu_list, parse_cpu_sets, worker_cpus
from infer_bench.backends.launch import (
    EngineDeployment, EngineDeploymentSpec, ExternalDeploymentSpec,
)
from infer_bench.workloads.bystander_cpu import (
    bystander_cpu, bystander_summary, windows_from_records,
)
from infer_bench.workloads.telemetry import client_pids, client_sampler

MONO = EngineDeploymentSpec(name="mono", num_threads=2)
PD = EngineDeploymentSpec(name="1p1d", mode="disagg", num_threads=2)


def needs(*specs):
    return [CoreNeed.from_spec(s) for s in specs]


# ---------------------------------------------------------------------------- the plan (pure)

def test_two_cores_mono_and_1p1d_share_and_the_client_shares():
    plan = plan_cores(needs(MONO, PD), [0, 1])
    mono, pd_ = plan.for_deployment("mono"), plan.for_deployment("1p1d")
    assert mono.cpus == [0, 1] and mono.roles == {"server": [0, 1]} and mono.workers == {}
    assert pd_.cpus == [0, 1]
    assert pd_.workers == {"prefill-0": [0], "decode-0": [1]}
    assert pd_.roles == {"router": [0, 1], "prefill": [0], "decode": [1]}
    assert plan.client == [0, 1] and plan.client_shares_cores is True
    assert plan.deployments_share_cores is True
    assert not mono.oversubscribed and not pd_.oversubscribed
    assert any("client" in n and "shares" in n for n in plan.notes)
    assert mono.env() == {ENV_SELF: "0-1"}
    assert pd_.env() == {ENV_SELF: "0-1", ENV_PREFILL: "0", ENV_DECODE: "1"}


def test_eight_cores_isolate_deployments_and_give_the_client_its_own():
    plan = plan_cores(needs(MONO, PD), range(8))
    mono, pd_ = plan.for_deployment("mono"), plan.for_deployment("1p1d")
    assert mono.cpus == [0, 1]
    assert pd_.workers == {"prefill-0": [2], "decode-0": [3]} and pd_.roles["router"] == [2, 3]
    assert plan.client == [4] and plan.client_shares_cores is False
    assert plan.deployments_share_cores is False and plan.notes == []


def test_eight_cores_without_spare_cores_for_the_client():
    big_mono = EngineDeploymentSpec(name="mono", num_threads=8)
    big_pd = EngineDeploymentSpec(name="2p2d", mode="disagg", num_threads=8, prefill_workers=2,
                                  decode_workers=2)
    plan = plan_cores(needs(big_mono, big_pd), range(8))
    assert plan.for_deployment("mono").cpus == list(range(8))
    assert plan.for_deployment("2p2d").workers == {
        "prefill-0": [0, 1], "prefill-1": [2, 3], "decode-0": [4, 5], "decode-1": [6, 7]}
    assert plan.for_deployment("2p2d").env()[ENV_PREFILL] == "0-1;2-3"
    assert plan.client == list(range(8)) and plan.client_shares_cores is True


def test_deployments_overlap_when_only_the_client_fits_beside_them():
    plan = plan_cores(needs(MONO, PD), [0, 1, 2])
    assert plan.for_deployment("mono").cpus == [0, 1] == plan.for_deployment("1p1d").cpus
    assert plan.client == [2] and plan.client_shares_cores is False
    assert plan.deployments_share_cores is True
    # a sharded client (run --workers 2) gets what is spare and says it is short
    plan = plan_cores(needs(MONO, PD), [0, 1, 2], client_processes=2)
    assert plan.client == [2] and any("1 core(s) of its own for 2" in n for n in plan.notes)


def test_smt_siblings_come_last():
    topo = {c: (0, c // 2) for c in range(8)}  # 0-1, 2-3, ... are SMT siblings
    assert order_cpus(range(8), topo) == [0, 2, 4, 6, 1, 3, 5, 7]
    plan = plan_cores(needs(MONO, PD), range(8), topology=topo)
    assert plan.for_deployment("mono").cpus == [0, 2]
    assert plan.for_deployment("1p1d").workers == {"prefill-0": [4], "decode-0": [6]}
    assert plan.client == [1]
    assert any("SMT siblings of mono" in n for n in plan.notes)


def test_more_threads_than_cores_is_oversubscribed_and_workers_still_split():
    plan = plan_cores(needs(EngineDeploymentSpec(name="m4", num_threads=4),
                            EngineDeploymentSpec(name="pd4", mode="disagg", num_threads=4)),
                      [0, 1])
    assert plan.for_deployment("m4").oversubscribed and plan.for_deployment("m4").cpus == [0, 1]
    pd4 = plan.for_deployment("pd4")
    assert pd4.oversubscribed and pd4.workers == {"prefill-0": [0], "decode-0": [1]}
    assert split_workers([0, 1], 3, 1) == [[0], [1], [0]]
    assert split_workers([0, 1, 2], 2, 2) == [[0, 1], [2]]


def test_external_and_gpu_deployments_are_not_pinned():
    gpu = EngineDeploymentSpec(name="gpu", device="cuda", num_threads=2)
    url = ExternalDeploymentSpec(name="vllm", url="http://x:8000")
    plan = plan_cores(needs(MONO, url), range(4))
    ext = plan.for_deployment("vllm")
    assert not ext.pinned and ext.cpus == [] and ext.env() == {} and "external" in ext.note
    assert plan.client == [2] and plan.client_shares_cores is False  # a URL runs elsewhere
    plan = plan_cores(needs(MONO, gpu), range(4))
    assert not plan.for_deployment("gpu").pinned and "GPU" in plan.for_deployment("gpu").note
    assert plan.client_shares_cores is True  # a local unpinned engine may run anywhere


def test_platform_without_affinity_records_not_pinned():
    plan = plan_cores(needs(MONO, PD), range(8), pinning=False, reason="no sched_setaffinity")
    assert plan.pinning is False and plan.reason == "no sched_setaffinity"
    assert all(not d.pinned and d.env() == {} for d in plan.deployments)
    assert plan.client_shares_cores is True
    rec = pin_client(plan)
    assert rec["pinned"] is False and rec["reason"] == "no sched_setaffinity"


def test_plan_round_trips_through_json():
    plan = plan_cores(needs(MONO, PD, ExternalDeploymentSpec(name="u", url="http://x")), [0, 1])
    back = CorePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.for_deployment("1p1d").env() == plan.for_deployment("1p1d").env()


def test_cpu_list_syntax_is_shared_by_launcher_and_engine():
    for cpus in ([0], [0, 1], [0, 1, 2, 5], [3, 7, 8, 9, 12]):
        assert parse_cpu_list(format_cpu_list(cpus)) == cpus
    assert format_cpu_list([5, 0, 1, 2]) == "0-2,5"
    assert parse_cpu_sets("0-1;2-3") == [[0, 1], [2, 3]]
    env = {ENV_PREFILL: "0;1", ENV_DECODE: "2-3"}
    assert worker_cpus("prefill", 0, env) == [0] and worker_cpus("prefill", 3, env) == [1]
    assert worker_cpus("decode", 1, env) == [2, 3] and worker_cpus("decode", 0, {}) is None
    for bad in ("", "a", "3-1", "1-"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


# ---------------------------------------------------------------------------- bystander CPU (pure)

def _proc(dep, t, v):
    return {"deployment": dep, "t_s": t, "source": "process", "metric": "proc_cpu_pct",
            "entity": "total", "value": v, "unit": "%"}


def test_bystander_cpu_attributes_each_window():
    rows = [_proc("A", t, 90.0) for t in (1.0, 1.1, 1.2)] + [_proc("B", t, v) for t, v in
                                                              ((1.0, 0.0), (1.1, 3.0), (5.0, 80.0))]
    rows += [{"deployment": "", "t_s": t, "source": "client", "metric": "proc_cpu_pct",
              "entity": "total", "value": 20.0, "unit": "%"} for t in (1.05, 1.15, 5.1)]
    rows += [{"deployment": "A", "t_s": t, "source": "system", "metric": "sys_cpu_pct",
              "entity": "system", "value": 60.0, "unit": "%"} for t in (1.0, 1.1)]
    rows += [_proc("A", 1.1, 1.0) | {"entity": "123"}]  # per-pid rows are not double counted
    table = bystander_cpu(rows, {("A", "lp1"): (0.9, 1.25)}, n_cpus=2)
    by = {r["owner"]: r for r in table}
    assert by["A"]["kind"] == "under load" and by["A"]["cpu_pct_mean"] == pytest.approx(90.0)
    assert by["B"]["kind"] == "idle deployment" and by["B"]["n_samples"] == 2
    assert by["B"]["cpu_pct_mean"] == pytest.approx(1.5) and by["B"]["cpu_pct_max"] == 3.0
    assert by["client"]["cpu_pct_mean"] == pytest.approx(20.0) and by["client"]["n_samples"] == 2
    assert by["other"]["cpu_pct_mean"] == pytest.approx(120.0 - 90.0 - 1.5 - 20.0)
    summary = {s["owner"]: s for s in bystander_summary(table)}
    assert summary["B"]["text"] == ("idle deployment B used 1.5% of a core (peak 3%) during A's "
                                    "load points")
    assert summary["client"]["text"].startswith("the client used 20.0% of a core")
    # a window nobody sampled
    empty = bystander_cpu(rows, {("B", "lp2", 1): (3.0, 4.0)})
    assert {r["owner"]: r["n_samples"] for r in empty} == {"B": 0, "A": 0, "client": 0}
    assert all(r["repeat"] == 1 for r in empty)
    assert "not sampled" in bystander_summary(empty)[0]["text"]


def test_bystander_summary_weights_by_samples():
    table = [{"deployment": "A", "load_point": "x", "owner": "B", "kind": "idle deployment",
              "cpu_pct_mean": 1.0, "cpu_pct_max": 2.0, "n_samples": 30},
             {"deployment": "A", "load_point": "y", "owner": "B", "kind": "idle deployment",
              "cpu_pct_mean": 5.0, "cpu_pct_max": 9.0, "n_samples": 10}]
    (s,) = bystander_summary(table)
    assert s["cpu_pct_mean"] == pytest.approx(2.0) and s["cpu_pct_max"] == 9.0
    assert s["n_samples"] == 40 and s["load_points"] == 2


def test_windows_from_records():
    recs = [{"deployment": "A", "load_point": "1rps", "send_s": 2.0, "end_s": 3.0},
            {"deployment": "A", "load_point": "1rps", "send_s": 1.5, "end_s": None},
            {"deployment": "B", "load_point": "1rps", "send_s": 9.0, "end_s": 12.5}]
    assert windows_from_records(recs) == {("A", "1rps"): (1.5, 3.0), ("B", "1rps"): (9.0, 12.5)}


# ---------------------------------------------------------------------------- the host

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs os.sched_setaffinity and at least 2 CPUs")


def test_client_sampler_rows_and_pids(tmp_path):
    same = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                           start_new_session=True)  # like a launched deployment
    try:
        pids = client_pids()
        assert os.getpid() in pids and same.pid in pids and own.pid not in pids
        path = tmp_path / "telemetry.jsonl"
        with client_sampler(path, interval_s=0.05, flush_s=0.1):
            # busy for 0.6 s, and on until the sampler has flushed rows (its thread competes
            # with this loop for the GIL, and its first pass lists every process of the host)
            end, deadline = time.perf_counter() + 0.6, time.perf_counter() + 15
            while time.perf_counter() < end or (path.stat().st_size == 0
                                                and time.perf_counter() < deadline):
                sum(range(1000))
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows and {r["source"] for r in rows} == {"client"}
        assert {r["deployment"] for r in rows} == {""}
        totals = [r for r in rows if r["entity"] == "total" and r["metric"] == "proc_cpu_pct"]
        assert totals and max(r["value"] for r in totals) > 10  # this process was busy
    finally:
        for p in (same, own):
            p.kill()
            p.wait()


@needs_affinity
def test_pin_client_pins_every_thread_of_this_process():
    import threading

    orig = sorted(os.sched_getaffinity(0))
    stop = threading.Event()
    th = threading.Thread(target=stop.wait, daemon=True)
    th.start()  # a thread that exists before pinning must be pinned too
    plan = CorePlan(allowed=orig, pinning=True, deployments=[], client=orig[:1])
    try:
        rec = pin_client(plan)
        assert rec["pinned"] is True and rec["cpus"] == orig[:1]
        tids = thread_affinities(os.getpid())
        assert len(tids) >= 2 and all(c == orig[:1] for c in tids.values())
    finally:
        pin_threads(orig)
        stop.set()
    assert sorted(os.sched_getaffinity(0)) == orig


def _complete(url: str, model: str, n_tokens: int = 24) -> None:
    body = json.dumps({"model": model, "prompt": "the quick brown fox " * 10,
                       "max_tokens": n_tokens, "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
        resp.read()


@pytest.fixture(scope="module")
def two_deployments(tiny_model_dir, tmp_path_factory):
    """A mono and a 1P1D deployment of the tiny model, alive at once, pinned by the plan for the
    first two allowed CPUs (mono on both; prefill on the first, decode on the second)."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs os.sched_setaffinity and at least 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    specs = [EngineDeploymentSpec(name="mono", model=str(tiny_model_dir), num_threads=2,
                                  kv_cache_gb=0.01),
             EngineDeploymentSpec(name="1p1d", model=str(tiny_model_dir), mode="disagg",
                                  num_threads=2, kv_cache_gb=0.01)]
    plan = plan_cores(needs(*specs), cpus)
    logs = tmp_path_factory.mktemp("pin-logs")
    deps = []
    try:
        for s in specs:
            dep = EngineDeployment(s, logs, cores=plan.for_deployment(s.name))
            deps.append(dep)
            dep.start()
        yield {"plan": plan, "cpus": cpus, "deps": {d.spec.name: d for d in deps}}
    finally:
        for d in deps:
            d.stop()


def _tree_affinities(dep) -> dict[int, set]:
    """{pid: the distinct CPU sets of its threads} for every process of the deployment."""
    out = {}
    for pid in dep.pids():
        out[pid] = {tuple(c) for c in thread_affinities(pid).values()}
    return out


def test_mono_deployment_is_pinned_to_its_cores(two_deployments):
    dep = two_deployments["deps"]["mono"]
    cpus = tuple(two_deployments["cpus"])
    tree = _tree_affinities(dep)
    assert dep.proc.pid in tree
    assert all(sets == {cpus} for sets in tree.values()), tree  # every thread of every process
    assert len(thread_affinities(dep.proc.pid)) >= 2  # torch's threads were checked too
    obs = {o["pid"]: o for o in dep.affinity["observed"]}
    assert obs[dep.proc.pid]["role"] == "server" and obs[dep.proc.pid]["cpus"] == list(cpus)
    assert dep.describe()["cpus"]["planned"]["cpus"] == list(cpus)


def test_disagg_workers_are_pinned_to_their_own_cores(two_deployments):
    dep = two_deployments["deps"]["1p1d"]
    first, second = two_deployments["cpus"]
    with urllib.request.urlopen(dep.base_url + "/health", timeout=10) as resp:
        health = json.loads(resp.read())
    pid_of = {w["name"]: w["pid"] for w in health["workers"]}
    assert {w["name"]: w["cpus"] for w in health["workers"]} == {"prefill-0": [first],
                                                                "decode-0": [second]}
    tree = _tree_affinities(dep)
    assert set(pid_of.values()) <= set(tree)
    assert tree[pid_of["prefill-0"]] == {(first,)}, tree   # every thread, torch's included
    assert tree[pid_of["decode-0"]] == {(second,)}, tree
    assert tree[dep.proc.pid] == {(first, second)}         # the router: the deployment's cores
    for pid, sets in tree.items():                         # nothing of it outside them
        assert all(set(s) <= {first, second} for s in sets), (pid, sets)
    roles = {o["role"]: o["cpus"] for o in dep.affinity["observed"]}
    assert roles == {"router": [first, second], "prefill-0": [first], "decode-0": [second]}


def test_idle_deployment_takes_almost_no_cpu_during_the_other_ones_load(two_deployments,
                                                                         tmp_path):
    """Both deployments alive at once (as when runs are interleaved): telemetry of both and of
    the client while each in turn serves requests; the idle one must stay near zero."""
    from infer_bench.workloads.telemetry import TelemetrySampler

    deps = two_deployments["deps"]
    path = tmp_path / "telemetry.jsonl"
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    samplers = [TelemetrySampler(path, d.pids, clock_fn=clock, deployment=name, nvml=False,
                                 process=True, flush_s=0.2).start() for name, d in deps.items()]
    samplers.append(client_sampler(path, clock, flush_s=0.2).start())
    windows = {}
    try:
        time.sleep(0.5)
        for name, d in deps.items():
            _complete(d.base_url, d.model_name, 2)  # warm
            start = clock()
            end_at = time.perf_counter() + 3.0
            while time.perf_counter() < end_at:
                _complete(d.base_url, d.model_name)
            windows[(name, "load")] = (start, clock())
    finally:
        for s in samplers:
            s.stop()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    table = bystander_cpu(rows, windows, n_cpus=len(two_deployments["cpus"]))
    by = {(r["deployment"], r["owner"]): r for r in table}
    for loaded, idle in (("mono", "1p1d"), ("1p1d", "mono")):
        busy, quiet = by[(loaded, loaded)], by[(loaded, idle)]
        assert busy["n_samples"] >= 10 and quiet["n_samples"] >= 10, table
        assert quiet["kind"] == "idle deployment"
        assert quiet["cpu_pct_mean"] < 10.0, table             # % of one core
        assert busy["cpu_pct_mean"] > 5 * max(quiet["cpu_pct_mean"], 1.0), table
        assert by[(loaded, "client")]["n_samples"] >= 10
    texts = {(s["deployment"], s["owner"]): s["text"] for s in bystander_summary(table)}
    assert texts[("mono", "1p1d")].startswith("idle deployment 1p1d used ")
    assert texts[("1p1d", "client")].startswith("the client used ")
