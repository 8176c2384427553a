"""`infer-bench run` never loses data: Ctrl-C, a crashed engine and a failing server all end the run
with what was measured saved, a report rendered, the run marked incomplete, and no child left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest



def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infer_bench.cli.main", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, INFER_BENCH_DEBUG=""))


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    path = out / "requests.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} records after {timeout} s")


def check_kept(out: Path) -> dict:
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "incomplete"
    assert (out / "report.html").stat().st_size > 10_000
    import pandas as pd
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) >= 3
    assert len(df) == len((out / "requests.jsonl").read_text().splitlines())
    return run


@pytest.fixture
def mock_server(mock_process):
    url = mock_process("--ttft-ms", "20", "--token-delay-ms", "20")
    return url, mock_process.procs[-1]


def test_ctrl_c_keeps_results_and_renders_report(tmp_path, mock_server):
    url, _ = mock_server
    out = tmp_path / "run"
    cli = start_cli("--url", url, "--rates", "10", "--num-requests", "400", "--output-len", "20",
                    "--out", str(out))
    wait_for_records(out, 5, cli)
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, err
    assert "Traceback" not in err
    check_kept(out)


def test_failing_server_trips_error_rate_stop(tmp_path, mock_server):
    url, server = mock_server
    out = tmp_path / "run"
    cli = start_cli("--url", url, "--rates", "20", "--num-requests", "300", "--output-len", "5",
                    "--out", str(out))
    wait_for_records(out, 5, cli)
    server.kill()  # every later request fails to connect
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run incomplete" in lines[0] and "error rate" in lines[0], err
    assert "last error: " in lines[0], err       # the guard's line says what the failures were
    run = check_kept(out)
    assert "external" in run["deployment_failures"]
    import pandas as pd
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) < 300  # stopped early instead of hammering a dead server
    failed = df[df["error"].notna()]
    assert len(failed) >= 6 and set(failed["error_type"]) <= {"connect", "disconnect"}
    assert (failed["error_type"] == "connect").any()


def test_engine_killed_mid_run_cleans_up(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    cli = start_cli("--model", str(tiny_model_dir), "--deployments", "mono", "--rates", "20",
                    "--num-requests", "400", "--output-len", "16", "--input-len", "16",
                    "--warmup", "0", "--out", str(out))
    wait_for_records(out, 5, cli)
    children = psutil.Process(cli.pid).children(recursive=True)
    engine = [c for c in children if c.cmdline()[2:4] == ["infer_bench.cli", "serve"]]
    assert engine, [c.cmdline() for c in children]
    engine[0].kill()
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == 1, err
    assert "run incomplete" in err and "Traceback" not in err
    check_kept(out)
    time.sleep(0.5)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [c.cmdline() for c in alive]
