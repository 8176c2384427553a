"""The report's "Client shards" section (reports/client_shards.py): from run.json's
`client_shards`, written by the runner for process shards (`--workers N`, this host: no clock
offset) and for Ray shards (node, clock offset ± uncertainty); each shard's send lateness, and a
shard that could not keep up or failed is marked. A run without shards has no such section."""

from __future__ import annotations

import json

import pytest

from report_fixtures import make_results_dir


def _shard(shard, node, offset, unc, p99, mx, bound=False, status="ok", error=None, n=20):
    return {"shard": shard, "node_id": node * 4, "client_node": node, "n_requests": n,
            "n_records": n, "status": status, "error": error, "clock_offset_s": offset,
            "clock_uncertainty_s": unc, "clock_rtt_s": 2 * unc,
            "health": {"n_sent": n, "send_lateness_mean_s": p99 / 2, "send_lateness_p99_s": p99,
                       "send_lateness_max_s": mx, "loop_lag_mean_s": 0.0001,
                       "loop_lag_p99_s": 0.0002, "loop_lag_max_s": 0.0003, "cpu_share": 0.25,
                       "lateness_threshold_s": 0.01, "loop_lag_threshold_s": 0.01,
                       "client_bound": bound}}


def test_ray_shards_table_marks_the_shard_that_could_not_keep_up(tmp_path):
    from infer_bench.reports import render_report
    from infer_bench.reports.client_shards import client_shards_table
    from infer_bench.reports.data import load_run

    d = make_results_dir(tmp_path / "run")
    run_path = d / "run.json"
    info = json.loads(run_path.read_text())
    run0 = load_run(d)
    dep, lp = run0.deployments[0], run0.load_points[0]
    info["client_shards"] = {f"{dep}/{lp}": [
        _shard(0, "aaaaaaaaaaaa", 0.0005, 0.00075, 0.0008, 0.002),
        _shard(1, "bbbbbbbbbbbb", -0.0012, 0.0009, 0.045, 0.12, bound=True),
        _shard(2, "cccccccccccc", 0.0, 0.001, 0.001, 0.001, status="failed",
               error="shard 2 died: <script>alert(3)</script>", n=7)]}
    run_path.write_text(json.dumps(info))

    run = load_run(d)
    t = client_shards_table(run)
    assert t is not None and len(t.rows) == 3 and t.group_starts == [0]
    cols = {h: i for i, h in enumerate(t.headers)}
    text = [[c.text for c in r] for r in t.rows]
    assert [r[cols["Node"]] for r in text] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]
    assert text[0][cols["Clock offset (ms)"]] == "0.500 ± 0.750"
    assert text[1][cols["Clock offset (ms)"]] == "-1.20 ± 0.900"
    assert [r[cols["Send lateness p99 (ms)"]] for r in text] == ["0.800", "45.0", "1.00"]
    assert text[1][cols["max (ms)"]] == "120"
    assert [r[cols["Status"]] for r in text] == [
        "ok", "could not keep up", "failed: shard 2 died: <script>alert(3)</script>"]
    assert [t.rows[i][cols["Status"]].warn for i in range(3)] == [False, True, True]
    assert t.rows[1][cols["Send lateness p99 (ms)"]].warn
    assert text[2][cols["Records"]] == "7"
    assert all(r[0] == f"{dep} @ {run0.load_point_label(lp)}" for r in text)

    html = render_report(d).read_text()
    assert 'id="fig-client_shards"' in html
    assert "shard 1 of " in html and "could not keep up" in html
    assert "<script>alert(3)</script>" not in html and "&lt;script&gt;alert(3)" in html

    info.pop("client_shards")
    run_path.write_text(json.dumps(info))
    assert client_shards_table(load_run(d)) is None
    assert 'id="fig-client_shards"' not in render_report(d).read_text()


@pytest.mark.timeout(180)
def test_process_shards_reach_run_json_and_the_report(tmp_path):
    """`--workers 2` without Ray: run.json has a `client_shards` line per shard (this host, no
    clock offset, its records and health), and the report shows them."""
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.reports import render_report
    from infer_bench.workloads import runner
    from infer_bench.workloads.selftest import MockProcess
    from infer_bench.workloads.spec import ArrivalSpec, LoadPoint, WorkloadSpec

    with MockProcess(ttft_s=0.01, token_delay_s=0.001) as m:
        spec = runner.RunSpec(
            deployments=[ExternalDeploymentSpec(name="ext", url=m.url)],
            workload=WorkloadSpec(input_len=4, output_len=3, num_requests=12, seed=1),
            load_points=[LoadPoint("c20", ArrivalSpec(kind="constant", rate=20.0))],
            out_dir=tmp_path / "run", warmup_requests=0, pin_cores=False, client_workers=2)
        runner.run(spec, runner.RunObserver())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "complete"
    shards = run["client_shards"]["ext/c20"]
    assert [s["shard"] for s in shards] == [0, 1]
    assert sum(s["n_records"] for s in shards) == 12 and all(s["n_records"] == 6 for s in shards)
    for s in shards:
        assert s["status"] == "ok" and s["client_node"] is None and s["hostname"]
        assert s["clock_offset_s"] == 0.0 and s["clock_uncertainty_s"] == 0.0
        assert s["health"]["n_sent"] == 6 and s["health"]["send_lateness_p99_s"] is not None
    html = render_report(tmp_path / "run").read_text()
    assert 'id="fig-client_shards"' in html and "0 ± 0" in html
