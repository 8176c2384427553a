"""The engine options are one definition (cli/engine_options.py) that reaches every engine:
`infer-bench serve` and `infer-bench run` take the same flags, backends/launch.py writes them back
as `infer-bench serve` flags that parse to the same values, serve maps them to EngineConfig by
name, and a run's engines report the values they were given (GET /v1/engine/config)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from infer_bench.backends import launch
from infer_bench.backends.engine.http import serve as serve_mod
from infer_bench.cli import main as cli_main
from infer_bench.cli import run_cmd
from infer_bench.cli.engine_options import EngineOptions

# A value other than the default for every engine option, and the flags that say so.
NON_DEFAULT = {
    "device": "cuda:1", "dtype": "bfloat16", "num_threads": 3, "kv_cache_gb": 1.5,
    "max_num_batched_tokens": 256, "max_num_seqs": 7, "max_model_len": 999, "block_size": 8,
    "enable_prefix_caching": False, "enable_chunked_prefill": False, "speculation": "ngram",
    "spec_k": 3, "prefill_workers": 2, "decode_workers": 3, "kv_transport": "dist",
    "layerwise": False, "kv_link_gbps": 25.0, "disagg_threshold": 64,
}
ARGV = ["--device", "cuda:1", "--dtype", "bfloat16", "--threads", "3", "--kv-cache-gb", "1.5",
        "--max-num-batched-tokens", "256", "--max-num-seqs", "7", "--max-model-len", "999",
        "--block-size", "8", "--no-prefix-caching", "--no-chunked-prefill", "--spec", "ngram",
        "--spec-k", "3", "--prefill-workers", "2", "--decode-workers", "3", "--kv-transport",
        "dist", "--no-layerwise", "--kv-link-gbps", "25", "--disagg-threshold", "64"]


def invoke(*argv: str):
    return CliRunner().invoke(cli_main.app, list(argv))


def serve_settings(monkeypatch, *argv: str) -> serve_mod.ServeSettings:
    """The ServeSettings `infer-bench serve ARGV` hands to the engine (nothing is served)."""
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda settings: seen.append(settings) or 0)
    res = invoke("serve", *argv)
    assert res.exit_code == 0, res.output
    (settings,) = seen
    return settings


def test_every_option_has_a_non_default_value_here():
    fields = {f.name: f.default for f in dataclasses.fields(EngineOptions)}
    assert set(NON_DEFAULT) == set(fields)  # a new engine option needs a line here
    assert all(NON_DEFAULT[k] != fields[k] for k in fields)


def test_serve_and_run_read_the_same_flags_into_the_same_options(monkeypatch):
    settings = serve_settings(monkeypatch, "--model", "m", *ARGV)
    assert {k: getattr(settings, k) for k in NON_DEFAULT} == NON_DEFAULT

    seen = {}
    monkeypatch.setattr(run_cmd, "run", lambda **kw: seen.update(kw))
    res = invoke("run", "--model", "m", *ARGV)
    assert res.exit_code == 0, res.output
    assert seen["engine"] == EngineOptions(**NON_DEFAULT)


def test_defaults_are_the_engines(monkeypatch):
    settings = serve_settings(monkeypatch)
    assert settings.model == "smollm2-135m" and settings.mode == "mono"
    assert {k: getattr(settings, k) for k in NON_DEFAULT} == EngineOptions().as_dict()
    assert serve_mod.engine_config(settings) == serve_mod.engine_config(
        serve_mod.ServeSettings(model="m"))


def test_every_option_survives_the_launch_command(monkeypatch, tmp_path):
    """What a run launches parses back to what the run was given (the launch flags cannot
    drift from serve's)."""
    spec = launch.EngineDeploymentSpec(name="d", model="m", model_path="/models/m", mode="disagg",
                                       **NON_DEFAULT)
    cmd = launch.EngineDeployment(spec, tmp_path).command()
    assert cmd[:4] == [sys.executable, "-m", "infer_bench.cli", "serve"]
    settings = serve_settings(monkeypatch, *cmd[4:])
    assert {k: getattr(settings, k) for k in NON_DEFAULT} == NON_DEFAULT
    assert (settings.model, settings.served_model_name, settings.mode) == ("/models/m", "m", "disagg")
    # mono: the defaults come back as the defaults (disagg flags are left out)
    mono = launch.EngineDeploymentSpec(name="mono", model="m")
    settings = serve_settings(monkeypatch, *launch.EngineDeployment(mono, tmp_path).command()[4:])
    assert settings.mode == "mono" and settings.num_threads == mono.num_threads == 2
    assert {k: getattr(settings, k) for k in NON_DEFAULT if k != "num_threads"} == \
        {k: v for k, v in EngineOptions().as_dict().items() if k != "num_threads"}


def test_run_gives_every_deployment_every_option(tmp_path):
    specs = run_cmd.engine_deployments("m", tmp_path, ["mono", "disagg"],
                                       EngineOptions(**NON_DEFAULT))
    assert [(s.name, s.mode) for s in specs] == [("mono", "mono"), ("disagg-2p3d", "disagg")]
    for s in specs:
        assert {k: getattr(s, k) for k in NON_DEFAULT} == NON_DEFAULT
        assert (s.model, s.model_path) == ("m", str(tmp_path))
    (mono,) = run_cmd.engine_deployments("m", tmp_path, ["mono"], EngineOptions())
    assert mono.num_threads == run_cmd.DEFAULT_THREADS


def test_serve_maps_settings_to_engine_config_by_name():
    s = serve_mod.ServeSettings(model="m", kv_cache_gb=1.5, max_num_batched_tokens=256,
                                max_num_seqs=7, max_model_len=999, block_size=8,
                                enable_prefix_caching=False, enable_chunked_prefill=False,
                                speculation="draft:tiny", spec_k=3, seed=5, num_threads=3)
    c = serve_mod.engine_config(s)
    assert (c.kv_cache_gb, c.max_num_batched_tokens, c.max_num_seqs, c.max_model_len,
            c.block_size, c.enable_prefix_caching, c.enable_chunked_prefill, c.spec_method,
            c.spec_draft_model, c.spec_k, c.seed, c.num_threads) == \
        (1.5, 256, 7, 999, 8, False, False, "draft", "tiny", 3, 5, 3)
    o = serve_mod.disagg_options(dataclasses.replace(
        s, mode="disagg", prefill_workers=2, decode_workers=3, kv_transport="dist",
        layerwise=False, kv_link_gbps=25.0, disagg_threshold=64, dtype="bfloat16"))
    assert (o.prefill_workers, o.decode_workers, o.num_threads, o.transport, o.layerwise,
            o.kv_link_gbps, o.disagg_threshold, o.dtype) == (2, 3, 3, "dist", False, 25.0, 64,
                                                             "bfloat16")
    assert o.engine["kv_cache_gb"] == 1.5 and o.engine["max_num_batched_tokens"] == 256
    assert "num_threads" not in o.engine and "dtype" not in o.engine  # split / loaded by workers


def test_num_threads_is_a_hidden_deprecated_alias_of_threads(monkeypatch):
    seen = []
    monkeypatch.setattr(serve_mod, "serve", lambda settings: seen.append(settings) or 0)
    res = invoke("serve", "--num-threads", "3")
    assert res.exit_code == 0, res.output
    assert seen[-1].num_threads == 3 and "deprecated" in res.output
    assert invoke("serve", "--threads", "3", "--num-threads", "3").exit_code == 0
    assert seen[-1].num_threads == 3
    res = invoke("serve", "--threads", "2", "--num-threads", "3")
    assert res.exit_code != 0 and "--num-threads" in str(res.exception)
    assert "--num-threads" not in invoke("serve", "--help").output


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infer_bench.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,fragment", [
    (["--kv-cache-gb", "0"], "--kv-cache-gb"),
    (["--spec", "bogus"], "--spec"),
    (["--kv-transport", "pigeon"], "--kv-transport"),
    (["--mode", "weird"], "--mode"),
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--threads", "2", "--num-threads", "3"], "--num-threads"),
])
def test_bad_engine_options_are_one_line(args, fragment):
    proc = cli("serve", "--model", "m", *args)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


def test_serve_help_looks_like_the_others():
    serve_help = cli("serve", "--help")
    run_help = cli("run", "--help")
    assert serve_help.returncode == run_help.returncode == 0
    assert serve_help.stdout.startswith("Usage: infer-bench serve [OPTIONS]")
    examples = [ln.strip() for ln in serve_help.stdout.splitlines() if "Example:" in ln]
    assert len(examples) >= 2 and all(ln.startswith("Example: infer-bench serve") for ln in examples)
    flags = re.compile(r"^\s+(--[a-z-]+(?: / --[a-z-]+)?)", re.M)
    engine_flags = {"--threads", "--kv-cache-gb", "--max-num-batched-tokens",
                    "--prefix-caching / --no-prefix-caching", "--spec", "--kv-transport",
                    "--layerwise / --no-layerwise", "--prefill-workers"}
    assert engine_flags <= set(flags.findall(serve_help.stdout))
    assert engine_flags <= set(flags.findall(run_help.stdout))


def test_run_passes_engine_options_to_every_engine(tmp_path, tiny_model_dir, monkeypatch):
    """Acceptance: `infer-bench run --kv-cache-gb 1 --max-num-batched-tokens 256` reaches the
    engine of both deployments it starts. Each engine's own report (GET /v1/engine/config, read
    as soon as it is ready) has the values, and its KV pool is 1 GiB; spec.json records them."""
    reports = {}
    real_start = launch.EngineDeployment.start

    def start(self):
        real_start(self)
        reports[self.spec.name] = launch.http_get_json(self.base_url + "/v1/engine/config")

    monkeypatch.setattr(launch.EngineDeployment, "start", start)
    out = tmp_path / "run"
    res = invoke("run", "--model", str(tiny_model_dir), "--deployments", "mono,disagg",
                 "--kv-cache-gb", "1", "--max-num-batched-tokens", "256", "--rates", "4",
                 "--num-requests", "3", "--input-len", "16", "--output-len", "4", "--warmup", "0",
                 "--out", str(out))
    assert res.exit_code == 0, res.output
    assert set(reports) == {"mono", "disagg-1p1d"}
    engines = {"mono": reports["mono"], **reports["disagg-1p1d"]["workers"]}
    assert set(engines) == {"mono", "prefill-0", "decode-0"}
    for name, rep in engines.items():
        assert rep["config"]["kv_cache_gb"] == 1 and rep["config"]["max_num_batched_tokens"] == 256, name
        assert 0.99 * 2**30 < rep["resolved"]["kv_cache_bytes"] <= 2**30, name
    spec = json.loads((out / "spec.json").read_text())
    for dep in spec["deployments"]:
        assert (dep["kv_cache_gb"], dep["max_num_batched_tokens"]) == (1, 256)
        assert dep["model_path"] == str(tiny_model_dir) and dep["model"] == str(tiny_model_dir)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
