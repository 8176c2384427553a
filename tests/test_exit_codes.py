"""Pipeline gates through the real CLI: `run --check` (exit 3 on a failed threshold),
`report --check`, `compare --fail-if-worse` (exit 4 only on a significant regression), and a bad
check expression (one line, exit 2 before anything runs)."""

from __future__ import annotations

import json

from test_cli import cli


def _run(tmp_path, url, name, *extra):
    out = tmp_path / name
    proc = cli("run", "--url", url, "--rates", "40", "--num-requests", "30", "--input-len", "16",
               "--output-len", "4", "--warmup", "2", "--out", str(out), *extra, timeout=180)
    return out, proc


def test_run_check_sets_the_exit_code(tmp_path, mock_process):
    url = mock_process("--ttft-ms", "20", "--token-delay-ms", "2")
    out, proc = _run(tmp_path, url, "ok", "--check", "ttft_p90<500ms", "--check", "attainment>=0.9")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pass ttft_p90<500ms" in proc.stdout
    # the same results fail a tighter gate: exit 3, a FAIL line naming the value
    proc = cli("report", str(out), "--check", "ttft_p90<5ms")
    assert proc.returncode == 3 and "FAIL ttft_p90<5ms" in proc.stdout
    spec = json.loads((out / "spec.json").read_text())
    assert spec["steady_state"] == {"ramp_fraction": 0.1}


def test_bad_check_is_a_one_line_usage_error(tmp_path):
    proc = cli("run", "--url", "http://127.0.0.1:9", "--rates", "1", "--check", "ttft_p90 fast",
               "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "expected [DEPLOYMENT:]METRIC OP VALUE" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_compare_fails_only_on_a_significant_regression(tmp_path, mock_process):
    fast = mock_process("--ttft-ms", "10", "--token-delay-ms", "2")
    slow = mock_process("--ttft-ms", "40", "--token-delay-ms", "2")
    base, _ = _run(tmp_path, fast, "base")
    same, _ = _run(tmp_path, fast, "same")
    worse, _ = _run(tmp_path, slow, "worse")
    proc = cli("compare", str(base), str(same), "--out", str(tmp_path / "c1.html"),
               "--fail-if-worse")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no significant regression" in proc.stdout
    proc = cli("compare", str(base), str(worse), "--out", str(tmp_path / "c2.html"),
               "--fail-if-worse")
    assert proc.returncode == 4 and "regression" in proc.stdout and "ttft_p50_s" in proc.stdout
