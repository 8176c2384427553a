"""`run --target` and `run --config run.toml` through the real CLI entry point (in process):
bad input is one line and a non-zero exit before any load is sent (a live server beside the bad
target sees nothing but GET /v1/models, no results dir is made); a run file's values reach the
run unless a flag overrides them; a target's API key comes from its env var and only the var's
name is recorded; --url is the target named "external"."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port
from infer_bench.cli import main as cli_main
from infer_bench.cli import run_cmd
from infer_bench.cli.errors import UserError
from infer_bench.cli.run_file import load_run_file
from infer_bench.cli.targets import parse_target

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "run.toml"


@pytest.fixture
def models_server():
    """An OpenAI-compatible stand-in that answers /v1/models and counts every request it gets."""
    seen: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            if self.path == "/v1/models":
                body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.seen = seen
    yield srv
    srv.shutdown()
    srv.server_close()


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """(exit code, non-empty stderr lines) of `infer-bench ARGS`."""
    code = cli_main.main(list(args))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, err


def assert_one_line(code, err, *fragments):
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    for f in fragments:
        assert f in err[0], err[0]


def assert_nothing_sent(server, out: Path):
    assert all(path == "/v1/models" for _, path, _ in server.seen), server.seen
    assert not out.exists()


# ------------------------------------------------------------------ bad input, one line each

def test_unreachable_target(capsys, tmp_path, models_server):
    out = tmp_path / "r"
    dead = f"http://127.0.0.1:{free_port()}"
    code, err = run_cli(capsys, "run", "--target", f"ok={models_server.url},chips=2",
                        "--target", f"gone={dead}", "--rates", "1", "--out", str(out))
    assert_one_line(code, err, "target 'gone'", f"cannot reach {dead}")
    assert "'ok'" not in err[0]                      # only the target that is unreachable
    assert ("GET", "/v1/models", None) in models_server.seen   # all were checked first
    assert_nothing_sent(models_server, out)


def test_duplicate_target_name(capsys, tmp_path, models_server):
    out = tmp_path / "r"
    code, err = run_cli(capsys, "run", "--target", f"a={models_server.url}",
                        "--target", f"a={models_server.url}", "--out", str(out))
    assert_one_line(code, err, "target name 'a' is given twice")
    assert not models_server.seen and not out.exists()


@pytest.mark.parametrize("chips", ["0", "-1", "two", "1.5", ""])
def test_bad_chips(capsys, tmp_path, models_server, chips):
    out = tmp_path / "r"
    code, err = run_cli(capsys, "run", "--target", f"a={models_server.url},chips={chips}",
                        "--out", str(out))
    assert_one_line(code, err, "chips must be an integer >= 1", f"got {chips!r}")
    assert not models_server.seen and not out.exists()


@pytest.mark.parametrize("target, fragment", [
    ("a=URL,gpus=2", "unknown key 'gpus' (known: chips, metrics, api_key_env, model)"),
    ("a=URL,chips", "expected key=value after the URL, got 'chips'"),
    ("a=URL,chips=1,chips=2", "chips given twice"),
    ("noequals", "expected NAME=URL"),
    ("a b=URL", "the name 'a b' must be"),
    ("a=ftp://x", "is not an http(s):// URL or engine:mono|disagg"),
    ("a=engine:weird", "engine:weird is not a bundled deployment"),
    ("a=engine:mono,chips=2", "an engine target takes no chips"),
    ("a=URL,api_key_env=1BAD", "api_key_env='1BAD' is not an environment variable name"),
    ("a=URL,metrics=localhost:9", "metrics='localhost:9' is not an http(s):// URL"),
])
def test_bad_target_is_one_line(capsys, tmp_path, models_server, target, fragment):
    out = tmp_path / "r"
    code, err = run_cli(capsys, "run", "--target", target.replace("URL", models_server.url),
                        "--out", str(out))
    assert_one_line(code, err, fragment)
    assert not models_server.seen and not out.exists()


def test_missing_api_key_variable(capsys, tmp_path, models_server, monkeypatch):
    monkeypatch.delenv("IB_TEST_NO_SUCH_KEY", raising=False)
    out = tmp_path / "r"
    code, err = run_cli(capsys, "run", "--target",
                        f"a={models_server.url},api_key_env=IB_TEST_NO_SUCH_KEY", "--out", str(out))
    assert_one_line(code, err, "target 'a': environment variable IB_TEST_NO_SUCH_KEY")
    assert not models_server.seen and not out.exists()


@pytest.mark.parametrize("text, fragment", [
    ("repeats = \n", "TOML syntax error: Invalid value (at line 1, column 11)"),
    ("out = 'x'\n[workload\nseed = 1\n", "TOML syntax error:"),
    ("[workload]\nnum_requests = \"many\"\n", "[workload] num_requests must be an integer, got 'many'"),
    ("[workload]\nnum_requests = true\n", "[workload] num_requests must be an integer, got True"),
    ("[load]\nrates = \"1,2\"\n", "[load] rates must be a list of positive numbers"),
    ("[load]\nconcurrency = [1.5]\n", "[load] concurrency must be a list of positive integers"),
    ("[slo]\nttft = \"2s\"\n", "[slo] ttft must be a number, got '2s'"),
    ("interleave = 1\n", "interleave must be true or false, got 1"),
    ("[engine]\nthreads = 2.5\n", "[engine] threads must be an integer, got 2.5"),
    ("[workload]\nsed = 1\n", "unknown key 'sed' in [workload]"),
    ("colour = 'red'\n", "unknown key 'colour'"),
    ("workload = 3\n", "workload must be a [workload] table"),
    ("[[target]]\nname = 'a'\nurl = 'http://h:1'\ngpus = 2\n", "[[target]]: unknown key 'gpus'"),
    ("[[target]]\nname = 'a'\nurl = 'http://h:1'\nchips = 0\n",
     "[[target]] 'a': chips must be an integer >= 1, got 0"),
    ("[[target]]\nname = 'a'\nurl = 'http://h:1'\nchips = '2'\n",
     "[[target]] 'a': chips must be an integer >= 1, got '2'"),
    ("[[target]]\nname = 'a'\n", "give one of url"),
    ("[[target]]\nname = 'a'\nurl = 'http://h:1'\n[[target]]\nname = 'a'\nengine = 'mono'\n",
     "target name 'a' is given twice"),
])
def test_malformed_run_file(capsys, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "r"
    code, err = run_cli(capsys, "run", "--config", str(path), "--out", str(out))
    assert_one_line(code, err, f"{path}: ", fragment)
    assert not out.exists()


def test_missing_run_file(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--config", str(tmp_path / "nope.toml"))
    assert_one_line(code, err, "nope.toml does not exist")


def test_url_and_target_together(capsys, models_server):
    code, err = run_cli(capsys, "run", "--url", models_server.url, "--target",
                        f"a={models_server.url}")
    assert_one_line(code, err, "give --url or --target, not both")
    code, err = run_cli(capsys, "run", "--target", f"a={models_server.url}", "--deployments", "mono")
    assert_one_line(code, err, "--deployments picks the built-in engine deployments")
    code, err = run_cli(capsys, "run", "--target", f"a={models_server.url}", "--served-model", "m")
    assert_one_line(code, err, "--served-model applies to --url")
    code, err = run_cli(capsys, "run", "--target", f"a={models_server.url}", "--api-key", "k")
    assert_one_line(code, err, "--api-key applies to --url")
    assert not models_server.seen


# ------------------------------------------------------------------ what reaches the run

@pytest.fixture
def seen_run(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(run_cmd, "run", lambda **kw: seen.update(kw))
    return seen


def test_example_run_file_reaches_the_run_and_flags_override_it(capsys, seen_run):
    assert run_cli(capsys, "run", "--config", str(EXAMPLE))[0] == 0
    s = dict(seen_run)
    assert [(t.name, t.url, t.chips, t.metrics) for t in s["targets"]] == [
        ("mono", "http://127.0.0.1:8001", 2, None),
        ("pd", "http://127.0.0.1:8002", 2, "http://127.0.0.1:8002/metrics")]
    assert (s["rates"], s["repeats"], s["num_requests"], s["input_len"], s["output_len"]) == \
        ([0.5, 1.0], 3, 24, "uniform:64,256", "32")
    assert (s["slo_ttft"], s["slo_tpot"], str(s["out"]), s["interleave"]) == \
        (2.0, 0.2, "results/mono-vs-pd", True)
    assert s["engine"].num_threads == 2 and s["model"] == "smollm2-135m"
    assert s["scenarios"] is False

    seen_run.clear()
    assert run_cli(capsys, "run", "--config", str(EXAMPLE), "--repeats", "5", "--rates", "2",
                   "--sequential", "--threads", "4", "--out", "elsewhere")[0] == 0
    assert (seen_run["repeats"], seen_run["rates"], seen_run["interleave"],
            seen_run["engine"].num_threads, str(seen_run["out"])) == (5, [2.0], False, 4, "elsewhere")
    assert seen_run["num_requests"] == 24                   # not overridden: the file's

    seen_run.clear()                                       # --target replaces the file's targets
    assert run_cli(capsys, "run", "--config", str(EXAMPLE), "--target", "x=engine:disagg")[0] == 0
    assert [(t.name, t.engine) for t in seen_run["targets"]] == [("x", "disagg")]
    seen_run.clear()                                       # so does --url
    assert run_cli(capsys, "run", "--config", str(EXAMPLE), "--url", "http://h:1")[0] == 0
    assert seen_run["targets"] == [] and seen_run["url"] == "http://h:1"


def test_run_file_engine_section_and_checks(capsys, tmp_path, seen_run):
    path = tmp_path / "r.toml"
    path.write_text("checks = ['ttft_p90<2s']\n[engine]\nmodel = 'm'\nthreads = 3\n"
                    "prefix_caching = false\nprefill_workers = 2\n[load]\nconcurrency = [1, 4]\n")
    assert run_cli(capsys, "run", "--config", str(path))[0] == 0
    e = seen_run["engine"]
    assert (e.num_threads, e.enable_prefix_caching, e.prefill_workers) == (3, False, 2)
    assert seen_run["model"] == "m" and seen_run["concurrency"] == [1, 4]
    assert seen_run["checks"] == ["ttft_p90<2s"] and seen_run["targets"] == []
    assert seen_run["scenarios"] is False          # the file shaped the workload


def test_run_file_without_workload_keys_keeps_the_default_scenarios(capsys, tmp_path, seen_run):
    path = tmp_path / "r.toml"
    path.write_text("repeats = 2\n[engine]\nthreads = 2\n")
    assert run_cli(capsys, "run", "--config", str(path))[0] == 0
    assert seen_run["scenarios"] is True and seen_run["repeats"] == 2


def test_targets_become_deployment_specs(tmp_path, models_server, monkeypatch):
    """External targets keep their chips / metrics / model; the key is read from the env var
    and spec.json's form names only the variable; engine targets are the run's engine."""
    from rich.console import Console

    from infer_bench.cli.engine_options import EngineOptions

    monkeypatch.setenv("IB_TEST_KEY", "sekrit")
    monkeypatch.setattr(run_cmd, "resolve_model", lambda model, console: tmp_path)
    targets = [parse_target(f"a={models_server.url},chips=4,metrics={models_server.url}/m,"
                            "api_key_env=IB_TEST_KEY,model=big"),
               parse_target("local=engine:disagg")]
    specs, model_path = run_cmd.target_deployments(targets, "tiny", EngineOptions(), Console())
    a, local = specs
    assert (a.name, a.url, a.chips, a.metrics_url, a.model, a.api_key, a.api_key_env) == \
        ("a", models_server.url, 4, models_server.url + "/m", "big", "sekrit", "IB_TEST_KEY")
    assert ("GET", "/v1/models", "Bearer sekrit") in models_server.seen
    d = a.to_dict()
    assert "sekrit" not in json.dumps(d) and d["api_key_env"] == "IB_TEST_KEY" and d["chips"] == 4
    assert (local.name, local.kind, local.mode, local.model_path, local.chips()) == \
        ("local", "engine", "disagg", str(tmp_path), run_cmd.DEFAULT_THREADS)
    assert model_path == tmp_path


def test_url_is_the_external_target(capsys, tmp_path, models_server):
    """A plain --url still runs (as the target 'external'); unreachable, it fails before load."""
    code, err = run_cli(capsys, "run", "--url", f"http://127.0.0.1:{free_port()}", "--rates", "1",
                        "--out", str(tmp_path / "r"))
    assert_one_line(code, err, "target 'external': cannot reach")
    assert not (tmp_path / "r").exists()


def test_parse_target_forms():
    t = parse_target("pd=http://h2:8000/v1,chips=8,model=meta/llama-3")
    assert (t.name, t.url, t.chips, t.model, t.engine) == ("pd", "http://h2:8000/v1", 8,
                                                           "meta/llama-3", None)
    assert parse_target("local=engine:mono").engine == "mono"
    with pytest.raises(UserError):
        parse_target("x=http://h:1,chips=0")
    assert load_run_file(EXAMPLE).options["rates"] == "0.5,1"


def test_goodput_per_chip_uses_each_deployments_chips(tmp_path):
    """Each deployment's own chips from spec.json (here 2 and 4), in a run's verdict and in
    `verdict(...)` given only the spec (as the compare page calls it), never one chip each."""
    from report_fixtures import make_results_dir

    from infer_bench.reports.data import load_run
    from infer_bench.reports.verdict import verdict, verdict_for_run

    d = make_results_dir(tmp_path / "a", n_deployments=2, n_load_points=3, n_requests=20)
    spec = json.loads((d / "spec.json").read_text())
    for dep, chips in zip(spec["deployments"], (2, 4)):
        dep["chips"] = chips
    (d / "spec.json").write_text(json.dumps(spec))
    run = load_run(d)
    for findings in (verdict_for_run(run),
                     verdict(run.records, run.summary, slo=run.slo, deployments=run.deployments,
                             spec=run.spec, load_points=run.load_points)):
        goodput = next(f.text for f in findings if f.metric == "goodput")
        assert "per chip on 2" in goodput and "per chip on 4" in goodput, goodput
        assert "per chip on 1" not in goodput
