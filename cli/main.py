"""The `infer-bench` command line: parse flags, call library code, print with rich.

Commands: `run` (deployments x load points -> results dir -> report.html), `serve` (the reference
engine's OpenAI-compatible server), `report` (re-render a results dir), `models` (the model
cache). Heavy imports happen inside the commands so `--help` is instant. Every expected failure
(unknown model, unreachable URL, bad flag, missing results dir) prints one line and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from . import errors
from .parsing import positive_floats, positive_ints
from .parsing import price_per_chip_hour as parse_price
from .engine_options import EngineOptions, engine_options

app = typer.Typer(
    name="infer-bench",
    help="Measure how to serve an LLM: monolithic vs disaggregated prefill/decode, one HTML report.\n\n"
         "\b\nExample: infer-bench run",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Wide enough for the summary table when output goes to a file or CI log (rich assumes 80).
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _read_run_file(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """--config (eager): the run file's values become the defaults of run's other options."""
    if value is not None:
        from .run_file import load_run_file

        rf = load_run_file(value)
        ctx.default_map = {**(ctx.default_map or {}), **rf.options}
        ctx.meta["run_file"] = rf
    return value


@app.command()
@engine_options
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", metavar="RUN.TOML", is_eager=True, callback=_read_run_file, help="Run file (TOML; see examples/run.toml): targets, workload, load, SLOs, repeats, out dir, engine options. Flags given on the command line override the file; --target or --url replace its targets."),
    target: Optional[list[str]] = typer.Option(None, "--target", metavar="NAME=URL[,KEY=VALUE...]", help="A deployment to measure, repeatable: NAME=URL[,chips=N][,metrics=URL][,api_key_env=VAR][,model=SERVED_MODEL] for a running OpenAI-compatible server (chips default 1, metrics default URL/metrics, the API key read from $VAR), or NAME=engine:mono / NAME=engine:disagg for the bundled engine with this run's engine options. Every target gets the same requests in the same order."),
    model: str = typer.Option("smollm2-135m", help="Engine model: registry name, HF dir, .gguf file or hub id."),
    url: Optional[str] = typer.Option(None, help="Benchmark one external OpenAI-compatible server instead of the engine (the target named 'external')."),
    served_model: Optional[str] = typer.Option(None, help="Model name to send to --url (default: first of /v1/models)."),
    api_key: Optional[str] = typer.Option(None, envvar="INFER_BENCH_API_KEY", help="Bearer token for --url."),
    deployments: str = typer.Option("mono,disagg", help="Engine deployments to compare, comma-separated: mono, disagg (--prefill-workers x --decode-workers, default 1P1D; same total --threads)."),
    rates: Optional[str] = typer.Option(None, help="Poisson request rates (req/s), comma-separated, one load point each."),
    concurrency: Optional[str] = typer.Option(None, help="Closed-loop concurrency levels instead of rates, comma-separated."),
    num_requests: int = typer.Option(16, min=1, help="Requests per load point (multi_turn: conversations; a warning says how many requests that makes)."),
    input_len: str = typer.Option("128", help="Prompt tokens: N, uniform:LO,HI, normal:MEAN,STD or lognormal:MEDIAN,SIGMA."),
    output_len: str = typer.Option("32", help="Output tokens (same forms; ignore_eos is sent)."),
    workload: str = typer.Option("synthetic", help="synthetic, sharegpt, shared_prefix, multi_turn or trace."),
    dataset: Optional[Path] = typer.Option(None, help="ShareGPT JSON/JSONL (sharegpt, multi_turn; default: bundled sample) or JSONL trace."),
    shared_prefix_len: int = typer.Option(0, min=0, help="Tokens of a prefix shared by prompts (synthetic, shared_prefix)."),
    arrival: str = typer.Option("poisson", help="Arrival process for --rates: poisson, gamma or constant."),
    burstiness: float = typer.Option(1.0, help="Gamma shape for --arrival gamma (<1 burstier)."),
    endpoint: str = typer.Option("completions", help="completions or chat."),
    seed: int = typer.Option(0, help="Seed for the workload and arrivals."),
    slo_ttft: float = typer.Option(2.0, help="TTFT SLO in seconds."),
    slo_tpot: float = typer.Option(0.2, help="TPOT SLO in seconds."),
    warmup: int = typer.Option(2, min=0, help="Warm-up requests per deployment (not measured)."),
    timeout: float = typer.Option(300.0, help="Per-request timeout in seconds."),
    out: Optional[Path] = typer.Option(None, help="Results dir (default: results/run-<time>)."),
    tokenizer: Optional[str] = typer.Option(None, help="Local tokenizer/model dir for exact prompt lengths (default: the engine model's)."),
    bisect: Optional[str] = typer.Option(None, help="Goodput search instead of --rates: LO:HI[:ITERATIONS] req/s (see `sweep`)."),
    workers: int = typer.Option(1, min=1, help="Client processes: shard each load point's client over N processes (send times precomputed) for rates one process cannot drive precisely (see `selftest`)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run the --workers client shards as Ray actors spread over this Ray cluster's nodes: auto (the cluster started on this host) or its head's HOST:PORT; a disagg deployment's workers are placed there too (serve --ray). Needs pip install 'infer-bench[ray]'."),
    repeats: int = typer.Option(1, min=1, help="Measure every load point this many times (fresh prompts each); 3+ gives intervals over repeats."),
    interleave: bool = typer.Option(True, "--interleave/--sequential", help="Interleave load points across deployments (A B, B A, ...; all alive at once) or run one deployment after another."),
    steady_state: float = typer.Option(0.1, min=0.0, max=0.5, help="Share of each load point's send span left out of percentiles and attainment as ramp-up (0: keep every request)."),
    pin_cores: bool = typer.Option(True, "--pin-cores/--no-pin-cores", help="Pin each engine deployment to the cores its chips count, the client to spare cores."),
    check: Optional[list[str]] = typer.Option(None, "--check", help="Pass/fail gate, repeatable: [DEP:]METRIC OP VALUE[UNIT], e.g. 'ttft_p90<2s', 'attainment>=0.9'. Exit code 3 when one fails."),
    price_per_chip_hour: Optional[str] = typer.Option(None, "--price-per-chip-hour", help="US dollars per chip-hour: the verdict adds $ per million output tokens and $ per request that met the SLO for each deployment (its chips x each load point's wall time)."),
    engine: EngineOptions = None,
):
    """Run the same workload against each deployment and write a results dir with report.html.

    With no workload flags (and no --url) it runs the default scenarios, short chat prompts and
    long prompts with a tight TPOT SLO, where mono and disaggregated serving are expected to win
    different figures; each scenario gets its own results dir and an index report.html.
    Exit codes: 0 ok, 1 run incomplete, 2 bad flags, 3 a --check failed, 130 interrupted.

    \b
    Example: infer-bench run
    Example: infer-bench run --rates 0.5,1 --num-requests 16 --repeats 3
    Example: infer-bench run --target mono=http://h1:8000,chips=2 --target pd=http://h2:8000,chips=2
    Example: infer-bench run --target local=engine:mono --target vllm=http://h1:8000 --rates 1
    Example: infer-bench run --config examples/run.toml --repeats 3
    Example: infer-bench run --url http://127.0.0.1:8000 --rates 2,4 --check 'ttft_p90<2s'
    Example: infer-bench run --url http://10.0.0.5:8000 --rates 500 --ray auto --workers 8
    """
    from . import run_cmd

    if endpoint not in ("completions", "chat"):
        raise errors.UserError(f"--endpoint must be 'completions' or 'chat', got {endpoint!r}")
    if sum(bool(x) for x in (rates, concurrency, bisect)) > 1:
        raise errors.UserError("give one of --rates, --concurrency or --bisect")
    bisect_spec = None
    if bisect:
        parts = bisect.split(":")
        try:
            lo, hi = float(parts[0]), float(parts[1])
            iters = int(parts[2]) if len(parts) > 2 else 3
        except (ValueError, IndexError):
            raise errors.UserError(f"--bisect takes LO:HI[:ITERATIONS], got {bisect!r}") from None
        if not 0 < lo < hi or iters < 0:
            raise errors.UserError(f"--bisect needs 0 < LO < HI and ITERATIONS >= 0, got {bisect!r}")
        from infer_bench.workloads.runner import BisectSpec
        bisect_spec = BisectSpec(rate_lo=lo, rate_hi=hi, iterations=iters, kind=arrival,
                                 burstiness=burstiness, seed=seed)
    price = parse_price(price_per_chip_hour)
    rate_list = positive_floats(rates, "--rates") if rates else None
    conc_list = positive_ints(concurrency, "--concurrency") if concurrency else None
    if arrival not in ("poisson", "gamma", "constant"):
        raise errors.UserError(f"--arrival must be poisson, gamma or constant, got {arrival!r}")
    if dataset is not None and not dataset.exists():
        raise errors.UserError(f"--dataset {dataset} does not exist")
    targets = run_targets(ctx, target, url, served_model)
    modes = [d.strip() for d in deployments.split(",") if d.strip()]
    for m in modes:
        if m not in ("mono", "disagg"):
            raise errors.UserError(f"unknown deployment {m!r}: use mono or disagg")
    shaping = ("rates", "concurrency", "num_requests", "input_len", "output_len", "workload",
               "dataset", "shared_prefix_len", "slo_ttft", "slo_tpot", "bisect", "url", "arrival",
               "burstiness", "endpoint", "target")
    # (compared by name: typer ships its own copy of click's ParameterSource; DEFAULT_MAP: the
    # run file's value)
    scenarios = not targets and all(_source(ctx, p) == "DEFAULT" for p in shaping)
    run_cmd.run(
        targets=targets,
        scenarios=scenarios, repeats=repeats, interleave=interleave, steady_state=steady_state,
        pin_cores=pin_cores, checks=check or [],
        console=console, model=model, url=url, served_model=served_model, api_key=api_key,
        modes=modes, engine=engine, rates=rate_list, concurrency=conc_list,
        num_requests=num_requests, input_len=input_len, output_len=output_len, endpoint=endpoint,
        seed=seed, workload=workload, dataset=dataset, shared_prefix_len=shared_prefix_len,
        arrival=arrival, burstiness=burstiness, slo_ttft=slo_ttft, slo_tpot=slo_tpot, warmup=warmup, timeout=timeout, out=out, tokenizer=tokenizer, bisect=bisect_spec,
        workers=workers, price_per_chip_hour=price, ray_address=ray,
    )


def _source(ctx: typer.Context, name: str) -> str:
    """Where a parameter's value came from: COMMANDLINE, ENVIRONMENT, DEFAULT_MAP (the run
    file) or DEFAULT."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT")


def run_targets(ctx: typer.Context, target, url, served_model) -> list:
    """The run's named targets (cli/targets.py): --target flags, else the run file's (unless
    --url is given); [] for the built-in engine deployments or a plain --url run."""
    from .targets import check_targets, parse_target

    if target and url:
        raise errors.UserError("give --url or --target, not both (--url is --target external=URL)")
    rf = ctx.meta.get("run_file")
    targets = check_targets(parse_target(t) for t in target) if target else \
        (list(rf.targets) if rf is not None and not url else [])
    if targets and served_model:
        raise errors.UserError("--served-model applies to --url; give each --target its model=")
    if targets and _source(ctx, "api_key") == "COMMANDLINE":
        raise errors.UserError("--api-key applies to --url; give each --target its api_key_env=")
    if targets and _source(ctx, "deployments") != "DEFAULT":
        raise errors.UserError("--deployments picks the built-in engine deployments; with "
                               "targets, name them as targets (NAME=engine:mono, NAME=engine:disagg)")
    return targets


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    rate_min: float = typer.Option(0.25, help="Lowest request rate (req/s)."),
    rate_max: float = typer.Option(4.0, help="Highest request rate (req/s)."),
    iterations: int = typer.Option(3, min=0, help="Bisection steps after measuring both ends."),
):
    """Find each deployment's goodput: the highest rate with >= 90% joint SLO attainment.

    Measures --rate-min and --rate-max, then bisects (geometric midpoints) for every deployment;
    goodput, and goodput per chip, are interpolated and shown in the report. Every other option
    is `infer-bench run`'s (--deployments, --slo-ttft, --slo-tpot, --num-requests, ...).

    \b
    Example: infer-bench sweep --rate-min 0.25 --rate-max 2 --slo-ttft 2 --slo-tpot 0.3
    """
    rv = app(args=["run", *ctx.args, "--bisect", f"{rate_min}:{rate_max}:{iterations}"],
             standalone_mode=False)
    if isinstance(rv, int) and rv:
        raise typer.Exit(rv)


@app.command()
@engine_options
def serve(
    model: str = typer.Option("smollm2-135m", help="Model: registry name, HF dir, .gguf file or hub id."),
    host: str = typer.Option("127.0.0.1", help="Bind address (beyond loopback, set an API key)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: a free one)."),
    mode: str = typer.Option("mono", help="mono: one engine does prefill and decode; disagg: prefill and decode worker processes (the options marked Disagg:)."),
    served_model_name: Optional[str] = typer.Option(None, help="Name clients send as 'model' (default: the --model string)."),
    seed: Optional[int] = typer.Option(None, help="Sampler seed of requests that bring none."),
    api_key: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer KEY' on every endpoint but /health (default: $INFER_BENCH_API_KEY, preferred: a command line is visible to every local user)."),
    max_waiting_requests: int = typer.Option(256, min=0, help="Requests allowed to wait for the running batch; more get 429 (0: unbounded)."),
    request_timeout_s: Optional[float] = typer.Option(None, min=0, help="Abort a request still running after this many seconds (default: never)."),
    body_timeout_s: float = typer.Option(30.0, min=0, help="408 when a request body is not received within this many seconds (0: no limit)."),
    max_body_bytes: int = typer.Option(16 * 1024 * 1024, min=1, help="413 for larger request bodies."),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request (address, request line, status; no headers)."),
    log_level: str = typer.Option("warning", help="debug, info, warning or error."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Disagg: place the prefill and decode workers as Ray actors on this Ray cluster's nodes (auto or the head's HOST:PORT), each on a node with its CPUs (and a GPU with --device cuda); KV moves over torch.distributed (--kv-transport dist). Needs pip install 'infer-bench[ray]'."),
    old_num_threads: Optional[int] = typer.Option(None, "--num-threads", min=1, hidden=True, help="Deprecated: --threads."),
    engine: EngineOptions = None,
):
    """Serve the reference engine over an OpenAI-compatible HTTP API (/v1/completions,
    /v1/chat/completions, /v1/models, /health, /metrics, /debug/steps) until SIGTERM or Ctrl-C.

    \b
    Example: infer-bench serve --model smollm2-135m --port 8000
    Example: infer-bench serve --mode disagg --prefill-workers 1 --decode-workers 1 --threads 2
    Example: infer-bench serve --mode disagg --ray 10.0.0.5:6379 --device cuda --host 0.0.0.0
    Example: infer-bench serve --kv-cache-gb 1 --max-num-batched-tokens 256 --no-prefix-caching
    """
    import dataclasses

    from infer_bench.backends.engine.http import serve as engine_serve

    if mode not in engine_serve.MODES:
        raise errors.UserError(f"--mode must be {' or '.join(engine_serve.MODES)}, got {mode!r}")
    if old_num_threads is not None:
        if engine.num_threads is not None and engine.num_threads != old_num_threads:
            raise errors.UserError("--num-threads is the old name of --threads: give one of them")
        err_console.print("warning: --num-threads is deprecated; use --threads", highlight=False)
        engine = dataclasses.replace(engine, num_threads=old_num_threads)
    if ray is not None:
        engine = dataclasses.replace(engine, kv_transport=check_serve_ray(ray, mode))
    settings = engine_serve.ServeSettings(
        model=model, host=host, port=port, mode=mode, served_model_name=served_model_name,
        seed=seed, api_key=api_key, max_waiting_requests=max_waiting_requests,
        request_timeout_s=request_timeout_s, body_timeout_s=body_timeout_s,
        max_body_bytes=max_body_bytes, access_log=access_log, log_level=log_level,
        ray_address=ray, **engine.as_dict())
    raise typer.Exit(engine_serve.serve(settings) or 0)


def check_serve_ray(address: str, mode: str) -> str:
    """`serve --ray`: a disagg deployment, Ray importable; the KV transport it needs (dist)."""
    from infer_bench.backends.engine.disagg.ray_placement import RayUnavailable, import_ray

    if mode != "disagg":
        raise errors.UserError("--ray places the prefill and decode workers of --mode disagg")
    if not address.strip():
        raise errors.UserError("--ray needs auto or the Ray head's HOST:PORT")
    try:
        import_ray()
    except RayUnavailable as e:
        raise errors.UserError(str(e)) from None
    return "dist"


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="A results dir written by `infer-bench run`."),
    out: Optional[Path] = typer.Option(None, help="Where to write the HTML (default: DIR/report.html)."),
    format: Optional[str] = typer.Option(None, "--format", help="Also export the summary: csv, json or csv,json (into DIR)."),
    check: Optional[list[str]] = typer.Option(None, "--check", help="Pass/fail gate on the results, repeatable (see `run --check`); exit code 3 when one fails."),
    price_per_chip_hour: Optional[str] = typer.Option(None, "--price-per-chip-hour", help="US dollars per chip-hour for the cost figures (default: the run's, if `run` was given one)."),
):
    """Re-render report.html from a results dir (predicting its load points first when it has no
    predictions.json yet).

    \b
    Example: infer-bench report results/run-20261129-120000 --format csv,json
    """
    from infer_bench.reports import export_summary, render_report
    from infer_bench.workloads.planning.predict import write_predictions

    price = parse_price(price_per_chip_hour)
    if not results_dir.is_dir():
        raise errors.UserError(f"no results dir at {results_dir}")
    write_predictions(results_dir, overwrite=False)
    path = render_report(results_dir, out, price=price)
    console.print(f"report: [bold]{path}[/bold]")
    if format:
        for p in export_summary(results_dir, results_dir, formats=format, price=price):
            console.print(f"export: {p}")
    if check:
        from . import run_cmd
        run_cmd.apply_checks(console, [results_dir], check)


@app.command()
def compare(
    results_dirs: list[Path] = typer.Argument(..., help="Two or more results dirs."),
    out: Path = typer.Option(Path("compare.html"), help="Where to write the comparison HTML."),
    format: Optional[str] = typer.Option(None, "--format", help="Also export summaries and deltas: csv, json or csv,json (next to --out, named after it: OUT-summary.csv, OUT-deltas.csv)."),
    fail_if_worse: bool = typer.Option(False, "--fail-if-worse", help="Exit 4 when a run is significantly worse than the first on any headline figure (an insignificant change never fails)."),
    price_per_chip_hour: Optional[str] = typer.Option(None, "--price-per-chip-hour", help="US dollars per chip-hour for every run's cost figures (default: the first run's, if any)."),
):
    """Put several runs side by side in one HTML file.

    Exit codes: 0 ok, 2 bad arguments, 4 --fail-if-worse found a significant regression.

    \b
    Example: infer-bench compare results/run-a results/run-b --out compare.html
    Example: infer-bench compare results/base results/new --fail-if-worse
    """
    from infer_bench.reports import export_summary, render_compare

    price = parse_price(price_per_chip_hour)
    missing = [str(d) for d in results_dirs if not d.is_dir()]
    if missing:
        raise errors.UserError(f"no results dir at {', '.join(missing)}")
    if len(results_dirs) < 2:
        raise errors.UserError("compare needs at least two results dirs")
    path = render_compare(results_dirs, out, price=price)
    console.print(f"comparison: [bold]{path}[/bold]")
    if format:
        for p in export_summary(results_dirs, out.parent, formats=format, name=out.stem,
                                price=price):
            console.print(f"export: {p}")
    if fail_if_worse:
        from infer_bench.reports.compare import compare_deltas, regressions
        from infer_bench.reports.data import load_run
        from infer_bench.workloads.gates import EXIT_REGRESSION

        worse = regressions(compare_deltas([load_run(d) for d in results_dirs]))
        for r in worse.to_dict("records"):
            console.print(f"[red]regression[/red] {r['group']} vs {r['baseline']}: "
                          f"{r['deployment']} @ {r['load_point']} {r['metric']} "
                          f"{r['baseline_value']:.4g} -> {r['value']:.4g} "
                          f"(interval of the change {r['ci_low']:.4g}..{r['ci_high']:.4g}, 95% over the figures together)",
                          highlight=False)
        if len(worse):
            raise typer.Exit(EXIT_REGRESSION)
        console.print("no significant regression")


@app.command()
def models(
    fetch: Optional[str] = typer.Option(None, help="Download and cache this registry model now."),
):
    """List known and cached models (and where the cache is).

    \b
    Example: infer-bench models --fetch smollm2-135m
    """
    from rich.table import Table

    from infer_bench.backends.engine import model_store

    if fetch:
        path = model_store.ensure_model(fetch, progress=True)
        console.print(f"cached {fetch} at {path}")
    table = Table(title=f"models (cache: {model_store.cache_root()})")
    for col in ("name", "cached", "size", "path", "description"):
        table.add_column(col)
    for m in model_store.list_models():
        size = m.get("size_bytes") or 0
        table.add_row(m["name"], "yes" if m.get("cached") else "no",
                      f"{size / 1e6:.0f} MB" if size else "-", str(m.get("path") or "-"),
                      m.get("description", ""))
    console.print(table)


def _register_extra_commands() -> None:
    from . import extra_cmds, plan_cmds

    extra_cmds.register(app)
    plan_cmds.register(app)


_register_extra_commands()


def _mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one clear line on expected errors, never a traceback."""
    try:
        rv = app(args=argv, prog_name="infer-bench", standalone_mode=False)
        # Non-standalone typer returns the exit code of typer.Exit (130 for Ctrl-C) as the value.
        if isinstance(rv, int) and not isinstance(rv, bool):
            if rv == 130:
                err_console.print("interrupted")
            return rv
        return 0
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001
        names = _mro_names(e)
        if "Exit" in names:  # typer.Exit / click Exit
            return int(getattr(e, "exit_code", 0) or 0)
        if "Abort" in names:
            err_console.print("aborted")
            return 130
        if "NoArgsIsHelpError" in names:  # bare `infer-bench`: show the help
            console.print(e.format_message(), highlight=False, markup=False)
            return 0
        if "UsageError" in names:  # bad flag, bad value, missing argument
            ctx = getattr(e, "ctx", None)
            cmd = ctx.command_path if ctx is not None else "infer-bench"
            err_console.print(f"error: {e.format_message()} (see: {cmd} --help)",
                              highlight=False, soft_wrap=True)
            return 2
        msg = errors.one_line(e)
        if msg is None:
            raise
        err_console.print(f"error: {msg}", highlight=False, markup=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
