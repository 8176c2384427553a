"""Client shards on Ray (workloads/ray_shards.py): the NTP-style clock offset and its bound, the
one-line message without Ray, and, where Ray is installed, a local two-node Ray cluster (two
`ray start` nodes of one CPU each, stopped by the test) driving the mock server: every request
recorded once, the results schema of a run without Ray, a shard on each node, and a shard whose
actor dies keeping its records while the run is marked incomplete."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed "
                               "(pip install 'infer-bench[ray]' to run the Ray cluster tests)")


# ---------------------------------------------------------------------------- no cluster needed

def test_clock_offset_within_half_the_smallest_rtt():
    """A remote clock `true` ns ahead, read after a random first leg and before a random second
    leg: the estimate is within its stated uncertainty, which is half the smallest round trip;
    with equal legs it is exact."""
    from infer_bench.workloads.ray_shards import measure_clock_offset

    rng = random.Random(3)
    for true in (0, 123_456_789, -987_654_321):
        now = [10**12]
        legs: list[tuple[int, int]] = []

        def local() -> int:
            return now[0]

        def remote() -> int:
            a, b = rng.randint(10_000, 3_000_000), rng.randint(10_000, 3_000_000)
            legs.append((a, b))
            now[0] += a
            t = now[0] + true
            now[0] += b
            return t

        est = measure_clock_offset(remote, round_trips=16, local_ns=local)
        assert est.round_trips == 16
        assert est.rtt_ns == min(a + b for a, b in legs)
        assert est.uncertainty_ns * 2 >= est.rtt_ns
        assert abs(est.offset_ns - true) <= est.uncertainty_ns
        # the kept round trip's asymmetry is the whole error: (first leg - second leg) / 2
        a, b = min(legs, key=lambda ab: ab[0] + ab[1])
        assert abs(est.offset_ns - true - (a - b) / 2) <= 1

    now = [0]

    def sym() -> int:
        now[0] += 500
        t = now[0] + 42
        now[0] += 500
        return t

    exact = measure_clock_offset(sym, round_trips=3, local_ns=lambda: now[0])
    assert exact.offset_ns == 42 and exact.rtt_ns == 1000 and exact.uncertainty_ns == 500


def test_without_ray_one_line_names_the_extra(monkeypatch, capsys, tmp_path):
    """Ray not importable: import_ray raises RayUnavailable naming the extra, and `run --ray`
    fails with that one line (no traceback) before anything starts."""
    from infer_bench.cli.main import main
    from infer_bench.workloads import ray_shards

    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    with pytest.raises(ray_shards.RayUnavailable, match=r"pip install 'infer-bench\[ray\]'"):
        ray_shards.import_ray()
    out = tmp_path / "x"
    rc = main(["run", "--url", "http://127.0.0.1:9", "--rates", "1", "--ray", "auto",
               "--workers", "2", "--warmup", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.strip() == ("error: --ray needs Ray, which is not installed: "
                           "pip install 'infer-bench[ray]'")


def test_nothing_but_ray_shards_imports_ray():
    """Ray stays optional: no module of the package imports it at the top level, and only
    workloads/ray_shards.py (client shards) and backends/engine/disagg/ray_placement.py (engine
    workers) import it at all."""
    root = Path(__file__).resolve().parents[1]
    hits = []
    for sub in ("cli", "workloads", "backends", "reports"):
        for p in (root / sub).rglob("*.py"):
            for line in p.read_text().splitlines():
                s = line.strip()
                if s.startswith(("import ray", "from ray")):
                    hits.append((p.relative_to(root).as_posix(), line.startswith((" ", "\t"))))
    assert hits, "ray_shards.py should import ray lazily"
    assert {f for f, _ in hits} == {"workloads/ray_shards.py",
                                    "backends/engine/disagg/ray_placement.py"}
    assert all(indented for _, indented in hits)          # inside functions only


# ---------------------------------------------------------------------------- a local cluster

@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this host (head + one more, one CPU each, their own temp dirs, each
    `ray start` in a process group of its own); yields the head's address; stops both and
    checks that none of their processes is left."""
    from infer_bench.workloads.ray_shards import LocalRayCluster

    t0 = time.monotonic()
    cluster = LocalRayCluster(nodes=2, cpus=1)
    try:
        cluster.start()
        print(f"two-node Ray cluster up in {time.monotonic() - t0:.1f} s")
        yield cluster.address
    finally:
        cluster.stop()
        assert not cluster.left_behind(), f"Ray processes left behind: {cluster.left_behind()}"


def _cli_run(out: Path, url: str, *extra: str):
    from typer.testing import CliRunner

    from infer_bench.cli.main import app

    return CliRunner().invoke(app, ["run", "--url", url, "--rates", "40", "--arrival", "constant",
                                    "--num-requests", "40", "--output-len", "4",
                                    "--warmup", "0", "--no-pin-cores", "--out", str(out),
                                    *extra], catch_exceptions=False)


@needs_ray
@pytest.mark.timeout(300)
def test_ray_shards_on_two_nodes(ray_cluster, tmp_path):
    """`run --ray ADDRESS --workers 2` against the mock: 40 requests each recorded once, on the
    schedule of a run without Ray, one shard on each node (records say which), both shards'
    clock offsets within their bounds (one host: the true offset is 0), and the results dir
    in the very schema of a run without Ray."""
    import pandas as pd
    import pyarrow.parquet as pq

    from infer_bench.workloads.selftest import MockProcess

    with MockProcess(ttft_s=0.02, token_delay_s=0.002) as m:
        t = time.monotonic()
        res = _cli_run(tmp_path / "ray", m.url, "--ray", ray_cluster, "--workers", "2")
        print(f"ray run: {time.monotonic() - t:.1f} s")
        assert res.exit_code == 0, res.output
        res = _cli_run(tmp_path / "plain", m.url)
        assert res.exit_code == 0, res.output
    ray_df = pd.read_parquet(tmp_path / "ray" / "requests.parquet")
    plain = pd.read_parquet(tmp_path / "plain" / "requests.parquet")
    # every request exactly once, all served
    assert len(ray_df) == 40 and ray_df["request_id"].is_unique
    assert set(ray_df["request_id"]) == set(plain["request_id"])
    assert ray_df["error"].isna().all() and (ray_df["n_output"] == 4).all()
    # the same schema, columns and summary as a run without Ray
    assert (pq.read_schema(tmp_path / "ray" / "requests.parquet")
            == pq.read_schema(tmp_path / "plain" / "requests.parquet"))
    assert (list(pd.read_csv(tmp_path / "ray" / "summary.csv").columns)
            == list(pd.read_csv(tmp_path / "plain" / "summary.csv").columns))
    assert plain["client_shard"].isna().all() and plain["client_node"].isna().all()

    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    spec = json.loads((tmp_path / "ray" / "spec.json").read_text())
    assert run["status"] == "complete" and not run["client_shard_failures"]
    assert spec["client_ray_address"] == ray_cluster and spec["client_workers"] == 2
    shards = run["client_shards"]["external/40rps"]
    assert [s["shard"] for s in shards] == [0, 1]
    assert len({s["node_id"] for s in shards}) == 2                   # SPREAD: one per node
    for s in shards:
        assert s["status"] == "ok" and s["n_records"] == s["n_requests"] == 20
        assert 0 < s["clock_uncertainty_s"] < 0.5 and s["clock_rtt_s"] > 0
        assert abs(s["clock_offset_s"]) <= s["clock_uncertainty_s"] + 1e-9
        assert abs(s["clock_offset_after_s"]) <= s["clock_uncertainty_after_s"] + 1e-9
        mine = ray_df[ray_df["client_shard"] == s["shard"]]
        assert len(mine) == 20 and set(mine["client_node"]) == {s["client_node"]}
    assert set(ray_df["client_node"]) == {s["client_node"] for s in shards}
    # one agreed start: intended send times are the constant schedule from it, as without Ray
    win = {w["deployment"] + w["load_point"]: w["start_s"] for w in run["load_windows"]}
    off_ray = sorted(ray_df["intended_send_s"] - win["external40rps"])
    assert off_ray == pytest.approx([i / 40 for i in range(40)], abs=1e-6)
    plain_run = json.loads((tmp_path / "plain" / "run.json").read_text())
    pwin = plain_run["load_windows"][0]["start_s"]
    assert sorted(plain["intended_send_s"] - pwin) == pytest.approx(off_ray, abs=1e-6)
    assert (ray_df["ttft_s"] > 0.015).all() and (ray_df["ttft_s"] < 1.0).all()



@needs_ray
def test_more_shards_than_cluster_cpus_is_one_line(ray_cluster, tmp_path, capsys):
    """--workers 3 on the two-CPU cluster: refused in one line before anything starts."""
    from infer_bench.cli.main import main

    out = tmp_path / "x"
    rc = main(["run", "--url", "http://127.0.0.1:9", "--rates", "1", "--ray", ray_cluster,
               "--workers", "3", "--warmup", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.strip() == (f"error: --workers 3 puts each client shard on a CPU of its own, "
                           f"but the Ray cluster at {ray_cluster} has 2 CPUs")


@needs_ray
@pytest.mark.timeout(300)
def test_shard_death_keeps_its_records(ray_cluster, tmp_path):
    """The actor of shard 1 is killed once it has streamed two records: those are kept, shard 0
    finishes all of its requests, run.json says incomplete and names the dead shard."""
    import ray as ray_mod

    import pandas as pd

    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.workloads import runner
    from infer_bench.workloads.selftest import MockProcess
    from infer_bench.workloads.spec import ArrivalSpec, LoadPoint, WorkloadSpec

    killed = threading.Event()

    class Killer(runner.RunObserver):
        seen = 0

        def record(self, rec):
            if rec.client_shard == 1:
                self.seen += 1
                if self.seen == 2 and not killed.is_set():
                    name = next(n for n in ray_mod.util.list_named_actors()
                                if n.startswith("infer-bench-shard-") and n.endswith("-1"))
                    ray_mod.kill(ray_mod.get_actor(name))
                    killed.set()

    with MockProcess(ttft_s=0.02, token_delay_s=0.002) as m:
        spec = runner.RunSpec(
            deployments=[ExternalDeploymentSpec(name="ext", url=m.url)],
            workload=WorkloadSpec(input_len=4, output_len=4, num_requests=20, seed=1),
            load_points=[LoadPoint("c8", ArrivalSpec(kind="constant", rate=8.0))],
            out_dir=tmp_path / "run", warmup_requests=0, pin_cores=False,
            client_workers=2, ray_address=ray_cluster)
        runner.run(spec, Killer())
    assert killed.is_set()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "incomplete"
    fails = run["client_shard_failures"]["ext/c8"]
    assert list(fails) == ["1"] and "shard 1 died" in fails["1"]
    df = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert df["request_id"].is_unique
    by = df.groupby("client_shard").size().to_dict()
    assert by[0] == 10                                  # the live shard finished its share
    assert 2 <= by[1] < 10                              # the dead one's records so far
    shards = {s["shard"]: s for s in run["client_shards"]["ext/c8"]}
    assert shards[0]["status"] == "ok" and shards[1]["status"] == "failed"
    assert shards[1]["n_records"] == by[1]
