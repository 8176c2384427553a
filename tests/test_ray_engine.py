"""`serve --mode disagg --ray ADDRESS` (backends/engine/disagg/ray_placement.py): the one-line
refusals without Ray or without --mode disagg, and, where Ray is installed, a local two-node Ray
cluster (two `ray start` nodes of one CPU each, stopped by the test) on which a 1P1D deployment
of the tiny model puts its prefill and decode workers on different nodes (each asks for one
CPU), moves the KV between them over torch.distributed (gloo), answers greedy requests with the
monolithic engine's very tokens, fails a stream within 5 s when the decode worker's actor is
killed (health: no decode worker left), and leaves no worker process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed "
                               "(pip install 'infer-bench[ray]' to run the Ray cluster tests)")

BS = 4


# ---------------------------------------------------------------------------- no cluster needed

def test_serve_ray_without_ray_or_disagg_is_one_line(monkeypatch, capsys, tiny_model_dir):
    """`serve --ray` refuses, in one line and before loading anything: without --mode disagg,
    and with Ray not importable (naming the extra to install)."""
    from infer_bench.cli.main import main

    rc = main(["serve", "--model", str(tiny_model_dir), "--ray", "auto", "--port", "0"])
    assert rc == 1
    assert capsys.readouterr().err.strip() == ("error: --ray places the prefill and decode "
                                               "workers of --mode disagg")
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    rc = main(["serve", "--model", str(tiny_model_dir), "--mode", "disagg", "--ray", "auto",
               "--port", "0"])
    assert rc == 1
    assert capsys.readouterr().err.strip() == ("error: --ray needs Ray, which is not installed: "
                                               "pip install 'infer-bench[ray]'")


def test_ray_placement_needs_the_dist_transport():
    """Workers on a Ray cluster may be on different hosts: shared memory is refused."""
    from infer_bench.backends.engine.disagg.router import DisaggOptions

    with pytest.raises(ValueError, match="must be dist"):
        DisaggOptions(model="m", ray_address="auto", transport="shm")
    assert DisaggOptions(model="m", ray_address="auto", transport="dist").ray_address == "auto"


def test_worker_resources():
    """Each worker asks for its threads in CPUs, and one GPU on a GPU device (which it then
    sees as its own "cuda")."""
    from infer_bench.backends.engine.disagg.ray_placement import actor_device, worker_resources

    assert worker_resources("cpu", 3) == {"CPU": 3.0}
    assert worker_resources("cpu", 0) == {"CPU": 1.0}
    assert worker_resources("cuda:2", 4) == {"CPU": 4.0, "GPU": 1.0}
    assert actor_device("cuda:2") == "cuda" and actor_device("cpu") == "cpu"


def test_interface_of_loopback():
    from infer_bench.backends.engine.disagg.ray_placement import interface_of

    assert interface_of("127.0.0.1") is not None
    assert interface_of("203.0.113.254") is None


# ---------------------------------------------------------------------------- a local cluster

def _get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _stream(base, prompt_ids, max_tokens, on_chunk=None, timeout=60):
    body = json.dumps({"model": "tiny", "prompt": prompt_ids, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "ignore_eos": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            events.append(ev)
            if on_chunk:
                on_chunk(ev, len(events))
    return events


def _tokens(events):
    return [t for e in events if e.get("choices") for t in e["choices"][0].get("token_ids") or []]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this host (one CPU each); stopped, and none of their processes left."""
    from infer_bench.workloads.ray_shards import LocalRayCluster

    cluster = LocalRayCluster(nodes=2, cpus=1)
    try:
        cluster.start()
        yield cluster.address
    finally:
        cluster.stop()
        assert not cluster.left_behind(), f"Ray processes left behind: {cluster.left_behind()}"


@needs_ray
@pytest.mark.timeout(240)
def test_disagg_on_two_ray_nodes(ray_cluster, tiny_model_dir, tmp_path):
    """1P1D on the two-node cluster: one worker per node, greedy tokens equal to the monolithic
    engine's, the decode worker's actor killed mid-stream fails the stream within 5 s, and
    after SIGTERM no worker process is left."""
    import ray as ray_mod

    from infer_bench.backends.engine.engine import EngineConfig, LLMEngine
    from infer_bench.backends.engine.loader import load_model
    from infer_bench.backends.engine.sampling import SamplingParams

    t_start = time.monotonic()
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "infer_bench.cli", "serve", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny", "--port", str(port), "--mode", "disagg",
           "--ray", ray_cluster, "--threads", "2", "--kv-cache-gb", "0.01",
           "--block-size", str(BS), "--no-prefix-caching"]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if _get(base + "/health", 1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("the Ray disagg server did not become healthy:\n" + log.read_text())
        print(f"server healthy after {time.monotonic() - t_start:.1f} s")

        # placement: one worker per node, as /health and /v1/engine/config say
        code, h = _get(base + "/health")
        assert code == 200 and h["status"] == "ok", h
        workers = {w["name"]: w for w in h["workers"]}
        assert set(workers) == {"prefill-0", "decode-0"}
        assert all(w["node_id"] and w["node_ip"] and w["pid"] for w in workers.values())
        assert workers["prefill-0"]["node_id"] != workers["decode-0"]["node_id"]
        code, cfg = _get(base + "/v1/engine/config")
        assert code == 200 and cfg["ray_address"] == ray_cluster and cfg["transport"] == "dist"
        assert {n: p["node_id"] for n, p in cfg["placement"].items()} == \
            {n: w["node_id"] for n, w in workers.items()}

        # greedy output identical to the monolithic engine's, KV moved between the nodes
        prompts = [[(i * 37 + j * 11) % 400 + 3 for j in range(n)]
                   for i, n in enumerate([5, 17, 40, 3])]
        loaded = load_model(str(tiny_model_dir))
        mono = LLMEngine(EngineConfig(num_kv_blocks=256, block_size=BS,
                                      enable_prefix_caching=False), loaded)
        params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        for p in prompts:
            events = _stream(base, p, 8)
            ext = events[-1]["infer_bench"]
            assert _tokens(events) == mono.generate([p], params)[0], p
            assert ext["disagg"]["prefill_worker"] == "prefill-0"
            assert ext["disagg"]["decode_worker"] == "decode-0"
            assert ext["disagg"]["local_prefill"] is False and ext["transfer_bytes"] > 0

        # kill the decode worker's actor mid-stream: the stream fails within 5 s
        ray_mod.init(address=ray_cluster, namespace="infer-bench", log_to_driver=False,
                     logging_level="ERROR")
        try:
            names = [n for n in ray_mod.util.list_named_actors()
                     if n.startswith("infer-bench-disagg-") and n.endswith("-decode-0")]
            assert len(names) == 1, names
            actor = ray_mod.get_actor(names[0])
            killed: list[float] = []

            def on_chunk(ev, n):
                if n == 3 and not killed:
                    ray_mod.kill(actor, no_restart=True)
                    killed.append(time.monotonic())

            events = _stream(base, list(range(5, 30)), 1500, on_chunk)
            assert killed, "the stream ended before the kill"
            assert time.monotonic() - killed[0] < 5
        finally:
            ray_mod.shutdown()
        assert "error" in events[-1], events[-1]
        assert "decode-0" in events[-1]["error"]["message"]
        code, h = _get(base + "/health")
        assert code == 503 and h["status"] == "unavailable", h
        assert h["roles"] == {"prefill": {"alive": 1, "total": 1},
                              "decode": {"alive": 0, "total": 1}}
        dead = next(w for w in h["workers"] if w["name"] == "decode-0")
        assert dead["alive"] is False and dead["error"]
        deadline = time.monotonic() + 10
        while _alive(workers["decode-0"]["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers["decode-0"]["pid"]), "the killed decode worker is still running"

        # SIGTERM: the router stops the remaining worker; nothing is left running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while _alive(workers["prefill-0"]["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers["prefill-0"]["pid"]), "the prefill worker was left running"
        print(f"test body: {time.monotonic() - t_start:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        fh.close()


def test_run_ray_places_disagg_deployments(tiny_model_dir):
    """`run --ray`: the disagg deployment's serve command places its workers there (KV over
    dist), the mono deployment stays a local process; their CPUs are counted."""
    from infer_bench.cli.engine_options import EngineOptions
    from infer_bench.cli.run_cmd import engine_deployments, ray_engine_cpus

    engine = EngineOptions(num_threads=4, prefill_workers=1, decode_workers=2)
    mono, disagg = engine_deployments("tiny", tiny_model_dir, ["mono", "disagg"], engine,
                                      ray_address="10.0.0.5:6379")
    assert mono.ray_address is None and disagg.ray_address == "10.0.0.5:6379"
    assert disagg.kv_transport == "dist" and disagg.to_dict()["ray_address"] == "10.0.0.5:6379"
    from infer_bench.backends.launch import EngineDeployment

    cmd = EngineDeployment(disagg, Path("/tmp")).command()
    assert cmd[cmd.index("--ray") + 1] == "10.0.0.5:6379"
    assert cmd[cmd.index("--kv-transport") + 1] == "dist"
    assert "--ray" not in EngineDeployment(mono, Path("/tmp")).command()
    assert all(s.ray_address is None for s in engine_deployments("tiny", tiny_model_dir,
                                                                  ["mono", "disagg"], engine))
    assert ray_engine_cpus(["mono", "disagg"], engine) == 3      # 3 workers x 1 thread
    assert ray_engine_cpus(["mono"], engine) == 0
    assert ray_engine_cpus(["disagg"], EngineOptions(prefill_workers=1, decode_workers=1)) == 2


@needs_ray
def test_run_ray_too_small_for_shards_and_workers_is_one_line(ray_cluster, tiny_model_dir,
                                                              tmp_path, capsys):
    """One client shard plus a 1P1D deployment's two worker CPUs do not fit the two-CPU
    cluster: refused in one line before anything starts."""
    from infer_bench.cli.main import main

    out = tmp_path / "x"
    rc = main(["run", "--model", str(tiny_model_dir), "--deployments", "disagg", "--rates", "1",
               "--ray", ray_cluster, "--threads", "2", "--warmup", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.strip() == (f"error: --workers 1 client shards and the disagg workers' 2 CPUs "
                           f"need 3 CPUs, but the Ray cluster at {ray_cluster} has 2")


def test_serve_ray_reaches_the_settings(monkeypatch, tmp_path):
    """What `run --ray` launches parses back into serve's settings: the address, and the KV
    transport dist even where shm was asked for."""
    from typer.testing import CliRunner

    from infer_bench.backends import launch
    from infer_bench.backends.engine.disagg import ray_placement
    from infer_bench.backends.engine.http import serve as serve_mod
    from infer_bench.cli.main import app

    monkeypatch.setattr(ray_placement, "import_ray", lambda: None)   # Ray or not
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda settings: seen.append(settings) or 0)
    spec = launch.EngineDeploymentSpec(name="d", model="m", mode="disagg", ray_address="auto",
                                       kv_transport="shm")
    cmd = launch.EngineDeployment(spec, tmp_path).command()
    res = CliRunner().invoke(app, cmd[3:], catch_exceptions=False)   # serve ...
    assert res.exit_code == 0, res.output
    (settings,) = seen
    assert settings.ray_address == "auto" and settings.kv_transport == "dist"
    opts = serve_mod.disagg_options(settings)
    assert opts.ray_address == "auto" and opts.transport == "dist"


@needs_ray
@pytest.mark.timeout(120)
def test_unplaceable_deployment_fails_in_one_line(ray_cluster):
    """Workers asking for GPUs the cluster does not have: the start fails within its timeout,
    in one line naming what could not be placed, and leaves no placement group behind."""
    import asyncio

    import ray as ray_mod

    from infer_bench.backends.engine.disagg.router import DisaggEngine, DisaggOptions

    eng = DisaggEngine(DisaggOptions(model="unused", device="cuda:0", num_threads=2,
                                     transport="dist", ray_address=ray_cluster,
                                     startup_timeout_s=3))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as ei:
        asyncio.run(eng.start())
    assert time.monotonic() - t0 < 60
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("disaggregated deployment failed to start: ")
    assert "could not place the workers" in msg and "'GPU': 1.0" in msg, msg
    assert not ray_mod.is_initialized()          # the engine disconnected what it connected
    ray_mod.init(address=ray_cluster, log_to_driver=False, logging_level="ERROR")
    try:
        from ray.util import placement_group_table
        states = [p["state"] for p in placement_group_table().values()]
        assert all(s == "REMOVED" for s in states), states
    finally:
        ray_mod.shutdown()
