"""The CLI's contract: every command has --help with an example; expected errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import free_port

COMMANDS = ["run", "sweep", "serve", "report", "compare", "models", "profile", "simulate", "plan", "mock-server", "selftest"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infer_bench.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_example(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Example: infer-bench " + command in proc.stdout


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for frag in fragments:
        assert frag in lines[0], lines[0]


def test_bad_flag_is_one_line():
    _assert_one_line_error(cli("run", "--no-such-flag"), "--no-such-flag")


def test_bad_flag_value_is_one_line():
    _assert_one_line_error(cli("run", "--rates", "fast"), "--rates")
    _assert_one_line_error(cli("run", "--endpoint", "embeddings"), "--endpoint")
    _assert_one_line_error(cli("run", "--deployments", "mono,weird"), "weird")


def test_unreachable_url_is_one_line(tmp_path):
    port = free_port()
    proc = cli("run", "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "r"))
    _assert_one_line_error(proc, "cannot reach")


def test_unknown_model_is_one_line(tmp_path):
    proc = cli("run", "--model", "no-such-model-xyz", "--out", str(tmp_path / "r"))
    _assert_one_line_error(proc, "no-such-model-xyz")


def test_missing_results_dir_is_one_line(tmp_path):
    _assert_one_line_error(cli("report", str(tmp_path / "nope")), "nope")
