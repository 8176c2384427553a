"""Named targets end to end: the bundled engine started twice with `infer-bench serve` (mono and
disaggregated 1P1D, as a user would start their own servers) and measured as two external
targets with 2 chips each. The results dir must hold both deployments with their chips, every
target must get the same requests in the same order, and the verdict must be the built-in
comparison's kind (goodput per chip on each target's chips, a finding per load point). And a
bundled-engine target (`NAME=engine:mono`, launched by the run) mixed with a URL target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from conftest import free_port
from test_cli import cli


def _start_server(model_dir, log_path, *extra: str):
    port = free_port()
    cmd = [sys.executable, "-m", "infer_bench.cli", "serve", "--model", str(model_dir),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
           "--kv-cache-gb", "0.01", "--block-size", "4", *extra]
    fh = open(log_path, "wb")  # noqa: SIM115 (closed by the fixture)
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, fh, f"http://127.0.0.1:{port}"


def _wait_healthy(proc, url, log_path, deadline):
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not healthy:\n" + log_path.read_text())


@pytest.fixture(scope="module")
def two_servers(tiny_model_dir, tmp_path_factory):
    """mono (2 threads) and disagg 1P1D (2 threads: 1 per worker), started at once."""
    logs = tmp_path_factory.mktemp("target-logs")
    started = [_start_server(tiny_model_dir, logs / "mono.log", "--threads", "2"),
               _start_server(tiny_model_dir, logs / "pd.log", "--threads", "2", "--mode", "disagg",
                             "--prefill-workers", "1", "--decode-workers", "1")]
    try:
        deadline = time.monotonic() + 90
        for (proc, _, url), name in zip(started, ("mono.log", "pd.log")):
            _wait_healthy(proc, url, logs / name, deadline)
        yield [url for _, _, url in started]
    finally:
        for proc, fh, _ in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            fh.close()


def test_two_served_targets_give_the_builtin_verdict(two_servers, tiny_model_dir, tmp_path):
    from infer_bench.reports.data import load_run
    from infer_bench.reports.verdict import verdict_for_run

    mono, pd_url = two_servers
    out = tmp_path / "run"
    proc = cli("run", "--target", f"mono={mono},chips=2", "--target", f"pd={pd_url},chips=2",
               "--rates", "4,8", "--num-requests", "8", "--input-len", "uniform:8,24",
               "--output-len", "4", "--warmup", "0", "--tokenizer", str(tiny_model_dir),
               "--slo-ttft", "5", "--slo-tpot", "1", "--out", str(out), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    spec = json.loads((out / "spec.json").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert list(deps) == ["mono", "pd"]
    assert {n: (d["kind"], d["chips"], d["url"]) for n, d in deps.items()} == \
        {"mono": ("url", 2, mono), "pd": ("url", 2, pd_url)}
    assert spec["order"] == "interleaved"

    recs = pd.read_parquet(out / "requests.parquet")
    assert set(recs["deployment"]) == {"mono", "pd"}
    assert recs["error"].isna().all(), recs["error"].dropna().tolist()[:3]
    # the same requests in the same order at the same offsets, on every target
    for (lp, rep), g in recs.groupby(["load_point", "repeat"]):
        seqs = {}
        for dep, d in g.groupby("deployment"):
            d = d.sort_values("intended_send_s")
            offsets = (d["intended_send_s"] - d["intended_send_s"].min()).round(6).tolist()
            seqs[dep] = (d["request_id"].tolist(), d["n_input"].tolist(),
                         d["max_tokens"].tolist(), offsets)
        assert seqs["mono"] == seqs["pd"], (lp, rep)
        assert len(set(seqs["mono"][0])) == 8 and len(set(seqs["mono"][1])) > 1

    findings = verdict_for_run(load_run(out))
    kinds = {f.metric for f in findings}
    assert {"goodput", "load_point", "method"} <= kinds, [f.text for f in findings]
    goodput = next(f.text for f in findings if f.metric == "goodput")
    assert "mono" in goodput and "pd" in goodput
    assert goodput.count("per chip on 2") == 2 and "per chip on 1" not in goodput
    assert sum(f.metric == "load_point" for f in findings) == 2
    assert (out / "report.html").exists()

    # per-target server-side phases from each engine's own /metrics (scraped around every load point)
    sm = pd.read_csv(out / "server_metrics.csv")
    for dep in ("mono", "pd"):
        mine = sm[sm["deployment"] == dep]
        assert set(mine["engine"]) == {"infer-bench"}, set(mine["engine"])
        for fig in ("queue_time_mean", "prefill_time_mean", "decode_time_mean"):
            vals = mine[mine["figure"] == fig]["value"]
            assert len(vals) == 2 and (vals >= 0).all() and vals.notna().all(), (dep, fig, vals.tolist())
    pd_transfer = sm[(sm["deployment"] == "pd") & (sm["figure"] == "kv_transfer_time_mean")]["value"]
    assert len(pd_transfer) == 2 and (pd_transfer > 0).all(), pd_transfer.tolist()
    assert sm[(sm["deployment"] == "mono") & (sm["figure"] == "kv_transfer_time_mean")]["value"].dropna().eq(0).all()


def test_engine_target_mixes_with_an_external_server(tiny_model_dir, mock_process, tmp_path):
    """`NAME=engine:mono` beside a URL target in one run: the engine is launched by the run
    with the run's engine options and named as its target; both get the same requests."""
    url = mock_process("--ttft-ms", "5", "--token-delay-ms", "1")
    out = tmp_path / "mixed"
    proc = cli("run", "--target", "local=engine:mono", "--target", f"ext={url},chips=3",
               "--model", str(tiny_model_dir), "--threads", "1", "--kv-cache-gb", "0.01",
               "--rates", "8", "--num-requests", "6", "--input-len", "16", "--output-len", "4",
               "--warmup", "0", "--no-pin-cores", "--out", str(out), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deps = {d["name"]: d for d in json.loads((out / "spec.json").read_text())["deployments"]}
    assert list(deps) == ["local", "ext"]
    assert (deps["local"]["kind"], deps["local"]["mode"], deps["local"]["num_threads"],
            deps["local"]["kv_cache_gb"], deps["local"]["chips"]) == ("engine", "mono", 1, 0.01, 1)
    assert (deps["ext"]["kind"], deps["ext"]["chips"], deps["ext"]["url"]) == ("url", 3, url)
    recs = pd.read_parquet(out / "requests.parquet")
    assert recs["error"].isna().all(), recs["error"].dropna().tolist()[:3]
    by_dep = {d: g.sort_values("intended_send_s")["request_id"].tolist()   # the workload's ids
              for d, g in recs.groupby("deployment")}
    assert by_dep["local"] == by_dep["ext"] and len(set(by_dep["local"])) == 6
