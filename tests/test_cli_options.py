"""The CLI's option surface, in process (typer.testing.CliRunner): shared flag parsers, help
layout (each example on its own line), boolean flags that read naturally."""

from __future__ import annotations

import pytest

from infer_bench.cli.errors import UserError
from infer_bench.cli.parsing import positive_floats, positive_ints


def test_positive_floats_and_ints():
    assert positive_floats("0.5, 1,,2", "--rates") == [0.5, 1.0, 2.0]
    assert positive_ints("256,1024", "--map-inputs") == [256, 1024]
    assert positive_ints("2.7", "--x") == [2]
    with pytest.raises(UserError, match=r"--rates takes comma-separated numbers, got 'fast'"):
        positive_floats("fast", "--rates")
    for bad in ("0", "1,-2", " , "):
        with pytest.raises(UserError, match=r"--rates needs positive numbers"):
            positive_floats(bad, "--rates")
    with pytest.raises(UserError, match=r"--concurrency needs positive numbers"):
        positive_ints("0.5", "--concurrency")        # truncates to 0: not a concurrency


def _app():
    from infer_bench.cli.main import app

    return app


def _commands():
    import typer

    return typer.main.get_command(_app()).commands


def _help(*args: str) -> str:
    from typer.testing import CliRunner

    r = CliRunner().invoke(_app(), [*args, "--help"], terminal_width=80)
    assert r.exit_code == 0, r.output
    return r.output


def test_every_example_is_a_line_of_its_own():
    """Typer rewraps docstrings: without a `\\b` block the examples run together into one
    paragraph and long ones break mid-command. Every `Example:` line of a command's docstring
    must come out of `--help` as one whole line, also at 80 columns."""
    commands = _commands()
    assert {"run", "plan", "simulate", "profile", "selftest"} <= set(commands)
    for name, cmd in commands.items():
        doc = cmd.callback.__doc__ or ""
        examples = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith("Example:")]
        assert examples, f"{name}: no example in its docstring"
        lines = [ln.strip() for ln in _help(name).splitlines()]
        for ex in examples:
            assert ex in lines, f"{name} --help does not show {ex!r} as a line"
        assert not any(ln.count("Example:") > 1 for ln in lines), name
    top = [ln.strip() for ln in _help().splitlines()]
    assert "Example: infer-bench run" in top


def test_boolean_options_read_naturally():
    seen = []
    for name, cmd in _commands().items():
        for p in cmd.params:
            if getattr(p, "is_flag", False):
                names = p.opts + p.secondary_opts
                seen.append(names)
                assert not any(o.startswith("--no-no-") for o in names), (name, names)
                assert not (p.opts[0].startswith("--no-") and p.secondary_opts), (name, names)
    assert ["--map", "--no-map"] in seen
    assert "--map / --no-map" in _help("plan")


def test_plan_no_map_skips_the_break_even_map(tmp_path):
    from typer.testing import CliRunner

    from infer_bench.workloads.planning.latency_model import example_profile_path

    common = ["plan", "--profile", str(example_profile_path()), "--rate", "1", "--slo-ttft", "1",
              "--slo-tpot", "0.1", "--chips", "2", "--horizon", "5", "--max-requests", "50"]
    r = CliRunner().invoke(_app(), [*common, "--no-map", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "plan.json").exists()
    assert not (tmp_path / "a" / "break_even.json").exists()
    r = CliRunner().invoke(_app(), [*common, "--map", "--map-inputs", "256", "--map-outputs",
                                    "64", "--map-bandwidths", "100", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "break_even.json").exists()


def test_run_sends_the_requests_asked_for(tmp_path, monkeypatch):
    """`run --workload shared_prefix --num-requests 40` sends 40 (it used to send 4 x 8 = 32,
    silently): the RunSpec handed to the runner builds exactly 40 requests."""
    from typer.testing import CliRunner

    from infer_bench.workloads import runner
    from infer_bench.workloads.datasets import build_requests

    from infer_bench.cli import run_cmd

    specs = []
    monkeypatch.setattr(runner, "run", lambda spec, observer=None: specs.append(spec))
    monkeypatch.setattr(run_cmd, "check_reachable", lambda deployments: None)  # no server here
    for n in (40, 42, 3):
        r = CliRunner().invoke(_app(), ["run", "--url", "http://127.0.0.1:9", "--workload",
                                        "shared_prefix", "--num-requests", str(n), "--out",
                                        str(tmp_path / f"r{n}")])
        assert r.exit_code == 0, r.output
        wl = specs[-1].workload
        assert wl.kind == "shared_prefix" and wl.num_requests == n
        assert len(build_requests(wl)) == n


def test_trace_run_says_rates_are_ignored(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from infer_bench.workloads import runner

    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_len": 4}\n{"timestamp": 1, "input_len": 4}\n')
    from infer_bench.cli import run_cmd

    specs = []
    monkeypatch.setattr(runner, "run", lambda spec, observer=None: specs.append(spec))
    monkeypatch.setattr(run_cmd, "check_reachable", lambda deployments: None)  # no server here
    r = CliRunner().invoke(_app(), ["run", "--url", "http://127.0.0.1:9", "--workload", "trace",
                                    "--dataset", str(trace), "--rates", "3", "--out",
                                    str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert [lp.arrival.kind for lp in specs[-1].load_points] == ["trace"]
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "--rates / --concurrency are ignored" in warnings[0]


def test_plan_seeds_recorded_and_banded(tmp_path):
    import json

    from typer.testing import CliRunner

    from infer_bench.workloads.planning.latency_model import example_profile_path

    r = CliRunner().invoke(_app(), ["plan", "--profile", str(example_profile_path()), "--rate",
                                    "1", "--slo-ttft", "1", "--slo-tpot", "0.1", "--chips", "2",
                                    "--horizon", "5", "--max-requests", "50", "--no-map",
                                    "--input-len", "lognormal:1024,0.8", "--seeds", "2",
                                    "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["inputs"]["seeds"] == 2
    rows = [x for x in plan["ranking"] if not x.get("pruned")]
    assert rows and all(x["goodput_seed_min_rps"] <= x["goodput_rps"] <= x["goodput_seed_max_rps"]
                        for x in rows)
    r = CliRunner().invoke(_app(), ["plan", "--profile", str(example_profile_path()), "--rate",
                                    "1", "--slo-ttft", "1", "--slo-tpot", "0.1", "--chips", "2",
                                    "--seeds", "0", "--no-map", "--out", str(tmp_path / "q")])
    assert r.exit_code != 0 and "Traceback" not in r.output
