"""`infer-bench run`: turn flags into a RunSpec, run it with rich progress, render the report.

Thin glue: named targets (cli/targets.py) become deployment specs here, every external one
checked reachable before anything is sent; the engine model is resolved here, once (fetched
once, with pip's progress bar), and every engine deployment loads it from that local path with
the engine options given (cli/engine_options.py); everything else is library code
(workloads.runner, then workloads.planning.predict for predictions.json, then reports.html;
reports.scenarios for the default run's index page).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .engine_options import EngineOptions
from .errors import UserError


DEFAULT_THREADS = 2   # per deployment when --threads is not given (mono and 1P1D on 2 cores)


def resolve_model(model: str, console: Console) -> Path:
    """The engine model as a local path (a registry model or a hub id fetched once)."""
    from infer_bench.backends.engine import model_store
    from infer_bench.backends.engine.loader import resolve_source

    if model in model_store.REGISTRY and not Path(model).expanduser().exists() \
            and not model_store.is_cached(model):
        console.print(f"fetching default model [bold]{model}[/bold] (once; cached under {model_store.cache_root()})")
    return resolve_source(model, progress=True)


def tokenizer_dir(path: Path) -> str | None:
    """The model's directory when it holds a tokenizer (a .gguf file: None, the default)."""
    if path.is_dir() and ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
        return str(path)
    return None


def engine_deployments(model: str, model_path: Path, modes: list[str], engine: EngineOptions,
                       ray_address: str | None = None):
    """One EngineDeploymentSpec per mode, each with every engine option of the run; disagg is
    --prefill-workers x --decode-workers, sharing the deployment's --threads. `ray_address`:
    the disagg workers are placed on that Ray cluster (KV transport dist); mono stays local."""
    from infer_bench.backends.launch import EngineDeploymentSpec

    opts = engine.as_dict()
    opts["num_threads"] = engine.num_threads or DEFAULT_THREADS
    specs = []
    for mode in modes:
        name = "mono" if mode == "mono" else f"disagg-{engine.prefill_workers}p{engine.decode_workers}d"
        extra = {}
        if mode == "disagg" and ray_address:
            extra = {"ray_address": ray_address, "kv_transport": "dist"}
        specs.append(EngineDeploymentSpec(name=name, model=model, model_path=str(model_path),
                                          mode=mode, **{**opts, **extra}))
    return specs


def target_deployments(targets, model: str, engine: EngineOptions, console: Console,
                       ray_address: str | None = None):
    """The deployment specs of the run's named targets (cli/targets.py), in their order:
    external servers (API key read from the named env var; every one checked reachable first,
    at once) and the bundled engine's deployments named as their targets. Returns (specs, the
    engine model's local path or None when no target is an engine)."""
    from dataclasses import replace

    from infer_bench.backends.launch import ExternalDeploymentSpec

    specs: dict[str, object] = {}
    for t in targets:
        if t.engine is None:
            specs[t.name] = ExternalDeploymentSpec(
                name=t.name, url=t.url, model=t.model, chips=t.chips or 1,
                metrics_url=t.metrics, api_key_env=t.api_key_env, api_key=t.api_key())
    check_reachable(list(specs.values()))
    model_path = None
    if any(t.engine for t in targets):
        model_path = resolve_model(model, console)
        for t in targets:
            if t.engine is not None:
                (spec,) = engine_deployments(model, model_path, [t.engine], engine, ray_address)
                specs[t.name] = replace(spec, name=t.name)
    return [specs[t.name] for t in targets], model_path


def check_reachable(specs) -> None:
    """Every external server answers GET /v1/models (all asked at once), before any load is
    sent; else one line naming each one that does not."""
    from infer_bench.backends.launch import probe_external

    bad = probe_external(specs)
    if bad:
        raise UserError("; ".join(f"target {name!r}: {why}" for name, why in bad.items()))


def ray_engine_cpus(modes: list[str], engine: EngineOptions) -> int:
    """CPUs a disagg deployment's workers ask a Ray cluster for (0 without one)."""
    if "disagg" not in modes:
        return 0
    n = engine.prefill_workers + engine.decode_workers
    return n * max(1, (engine.num_threads or DEFAULT_THREADS) // n)


class ProgressObserver:
    """Draws one progress bar per load point; prints deployment events."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.failed = 0

    def deployment_starting(self, name, description):
        self.console.print(f"[bold]{name}[/bold]: starting {description}")
        self._t = time.perf_counter()

    def deployment_ready(self, name, seconds):
        self.console.print(f"[bold]{name}[/bold]: ready in {seconds:.1f} s")

    def deployment_failed(self, name, message):
        self.console.print(f"[red]{name}: {message}[/red]")

    def load_point_starting(self, deployment, load_point, n):
        self.failed = 0
        self.progress = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(f"{deployment} @ {load_point}", total=n, status="")

    def record(self, rec):
        if rec.error:
            self.failed += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1,
                                 status=f"[red]{self.failed} failed[/red]" if self.failed else "")

    def load_point_done(self, deployment, load_point, health):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if health.get("client_bound"):
            self.console.print(f"  [yellow]warning: client-bound at {load_point} (send lateness p99 "
                               f"{(health.get('send_lateness_p99_s') or 0) * 1e3:.1f} ms)[/yellow]")

    def message(self, text):
        self.console.print(text)

    def close(self):
        if self.progress is not None:
            self.progress.stop()


def _ms(v) -> str:
    return "-" if v is None or v != v else f"{v * 1e3:.0f}"


def print_summary(console: Console, results_dir: Path) -> None:
    import pandas as pd

    from infer_bench.workloads.results import load_results

    res = load_results(results_dir)
    s = res.summary
    if s is None or not len(s):
        return
    table = Table(title="summary (ms)")
    # shown only when some row has them: reasoning streams, energy, a price per chip-hour
    extra = [(label, col, fmt) for label, col, fmt in (
        ("TTFAT p50", "ttfat_p50_s", _ms),
        ("J/tok", "j_per_output_token", lambda v: f"{v:.3g}"),
        ("$/M tok", "usd_per_m_output_tokens", lambda v: f"{v:.3g}"),
        ("$/req in SLO", "usd_per_slo_request", lambda v: f"{v:.3g}"),
    ) if col in s and pd.to_numeric(s[col], errors="coerce").notna().any()]
    for col in ("deployment", "load", "ok/total", "req/s", "tok/s", "TTFT p50", "TTFT p90",
                "TPOT p50", "TPOT p90", "ITL p99", "SLO", *(e[0] for e in extra)):
        table.add_column(col, justify="left" if col in ("deployment", "load") else "right")
    for _, r in s.iterrows():
        n, nf = int(r["n_requests"]), int(r["n_failed"])
        att = r.get("slo_attainment")
        more = []
        for _, col, fmt in extra:
            v = pd.to_numeric(r.get(col), errors="coerce")
            more.append("-" if v is None or v != v else fmt(float(v)))
        table.add_row(str(r["deployment"]), str(r["load_point"]), f"{n - nf}/{n}",
                      f"{r['request_throughput_rps']:.2f}", f"{r['output_throughput_tps']:.1f}",
                      _ms(r.get("ttft_p50_s")), _ms(r.get("ttft_p90_s")), _ms(r.get("tpot_p50_s")),
                      _ms(r.get("tpot_p90_s")), _ms(r.get("itl_p99_s")),
                      "-" if att is None or att != att else f"{att:.0%}", *more)
    console.print(table)


def run(*, scenarios: bool = False, repeats: int = 1, interleave: bool = True,
        steady_state: float = 0.1, pin_cores: bool = True, checks=(), targets=(), console: Console, model,
        url, served_model, api_key, modes, engine: EngineOptions, rates, concurrency,
        num_requests, input_len, output_len, endpoint, seed, slo_ttft,
        workload="synthetic", dataset=None, shared_prefix_len=0, arrival="poisson", burstiness=1.0, slo_tpot, warmup, timeout,
        out, tokenizer=None, bisect=None, workers: int = 1,
        price_per_chip_hour: float | None = None, ray_address: str | None = None) -> None:
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.workloads import runner
    from infer_bench.workloads.spec import SLO, WorkloadSpec

    parse_checks(checks)                       # bad --check: one line before anything runs
    if ray_address is not None:
        engine_modes = [t.engine for t in targets if t.engine] if targets else ([] if url else modes)
        connect_ray(console, ray_address, int(workers), ray_engine_cpus(engine_modes, engine))
    out = Path(out) if out else Path("results") / time.strftime("run-%Y%m%d-%H%M%S")
    if targets:
        deployments, model_path = target_deployments(targets, model, engine, console, ray_address)
        tok_path = tokenizer or (tokenizer_dir(model_path) if model_path else None)
    elif url:
        deployments = [ExternalDeploymentSpec(name="external", url=url, model=served_model, api_key=api_key)]
        check_reachable(deployments)
        tok_path = tokenizer
    else:
        model_path = resolve_model(model, console)
        tok_path = tokenizer or tokenizer_dir(model_path)
        deployments = engine_deployments(model, model_path, modes, engine, ray_address)
    if tok_path is not None and not Path(tok_path).exists():
        raise UserError(f"tokenizer path {tok_path} does not exist")
    if workload == "shared_prefix" and not shared_prefix_len:
        shared_prefix_len = 128
        console.print("shared_prefix workload: using --shared-prefix-len 128")
    try:
        wl = WorkloadSpec(kind=workload, input_len=input_len, output_len=output_len, num_requests=num_requests,
                          seed=seed, endpoint=endpoint, shared_prefix_len=shared_prefix_len,
                          dataset_path=str(dataset) if dataset else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    if workload == "trace":
        if rates or concurrency:
            console.print("warning: --workload trace sends at the trace's timestamps; "
                          "--rates / --concurrency are ignored", highlight=False)
        load_points = [runner.LoadPoint(name="trace", arrival=runner.ArrivalSpec(kind="trace", seed=seed))]
    else:
        load_points = runner.default_load_points(rates or ([0.5, 1.0] if not concurrency else None), concurrency,
                                                 seed, kind=arrival, burstiness=burstiness)
    common = dict(deployments=deployments, out_dir=out, warmup_requests=warmup,
                  timeout_s=timeout, tokenizer_path=tok_path, bisect=bisect,
                  client_workers=int(workers), ray_address=ray_address, repeats=int(repeats),
                  interleave=interleave, steady_state_ramp=float(steady_state), pin_cores=pin_cores,
                  price_per_chip_hour=price_per_chip_hour)
    if scenarios:
        dirs = run_scenarios(console, common, seed=seed, endpoint=endpoint)
    else:
        spec = runner.RunSpec(workload=wl, load_points=load_points,
                              slo=SLO(ttft_s=slo_ttft, tpot_s=slo_tpot), name=out.name, **common)
        execute(console, spec)
        dirs = [out]
    if checks:
        apply_checks(console, dirs, checks)
    for d in dirs:
        run_info = _read_run_info(d)
        if run_info.get("status") == "incomplete":
            why = "; ".join(f"{k}: {v}" for k, v in (run_info.get("deployment_failures") or {}).items())
            shards = "; ".join(f"{k}: {m}" for k, v in (run_info.get("client_shard_failures") or {}).items()
                               for m in v.values())
            why = "; ".join(x for x in (why, shards) if x)
            raise RunIncomplete(f"run incomplete ({why or 'see run.json'}); what was measured is in {d}")


def connect_ray(console: Console, address: str, workers: int, engine_cpus: int = 0) -> None:
    """Connect to the Ray cluster before anything starts: Ray missing or the cluster not there
    is one line (UserError), not a traceback mid-run. `engine_cpus`: what the disagg
    deployment's workers ask the cluster for besides the client shards."""
    from infer_bench.workloads.ray_shards import RayUnavailable, connect, disconnect

    if not address.strip():
        raise UserError("--ray needs auto or the Ray head's HOST:PORT")
    try:
        info = connect(address)
    except RayUnavailable as e:
        raise UserError(str(e)) from None
    if info["cpus"] < workers:
        disconnect()
        raise UserError(f"--workers {workers} puts each client shard on a CPU of its own, but the "
                        f"Ray cluster at {address} has {info['cpus']:g} CPUs")
    if info["cpus"] < workers + engine_cpus:
        disconnect()
        raise UserError(f"--workers {workers} client shards and the disagg workers' "
                        f"{engine_cpus} CPUs need {workers + engine_cpus} CPUs, but the Ray "
                        f"cluster at {address} has {info['cpus']:g}")
    engine = f"; the disagg workers ask for {engine_cpus} CPUs" if engine_cpus else ""
    console.print(f"Ray cluster {address}: {info['nodes']} node(s), {info['cpus']:g} CPUs; "
                  f"{workers} client shard(s) per load point{engine}")


def execute(console: Console, spec) -> Path:
    """Run one RunSpec with progress bars, then predict, print the summary and render the
    report (also after Ctrl-C, which is re-raised once the report is written)."""
    from infer_bench.reports.html import render_report
    from infer_bench.workloads import runner
    from infer_bench.workloads.planning.predict import write_predictions

    out = Path(spec.out_dir)
    obs = ProgressObserver(console)
    interrupted = False
    try:
        runner.run(spec, obs)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: keeping what was measured[/yellow]")
    finally:
        obs.close()
    if (out / "requests.parquet").exists():
        write_predictions(out)
        print_summary(console, out)
        path = render_report(out)
        console.print(f"results: {out}")
        console.print(f"report:  [bold]{path}[/bold]")
    if interrupted:
        raise KeyboardInterrupt
    return out


def run_scenarios(console: Console, common: dict, *, seed: int, endpoint: str) -> list[Path]:
    """The default run: every scenario of workloads/scenarios.py as its own results dir under
    `common["out_dir"]`, then the index report (reports/scenarios.py) beside them."""
    from dataclasses import replace

    from infer_bench.reports.scenarios import render_scenarios
    from infer_bench.workloads import runner
    from infer_bench.workloads.scenarios import default_scenarios, estimate_seconds

    out = Path(common["out_dir"])
    scs = default_scenarios(seed)
    est = estimate_seconds(scs, len(common["deployments"]), repeats=common["repeats"])
    console.print(f"default run: {len(scs)} scenarios ({', '.join(s.name for s in scs)}) x "
                  f"{len(common['deployments'])} deployments, about {est / 60:.0f} min "
                  "(give --rates or other workload flags for a single custom run)")
    dirs = []
    for sc in scs:
        console.rule(f"{sc.name}: {sc.title}")
        spec = runner.RunSpec(**{**common, "out_dir": out / sc.name},
                              workload=replace(sc.workload, endpoint=endpoint),
                              load_points=sc.load_points, slo=sc.slo, name=sc.name,
                              scenario=sc.to_dict())
        dirs.append(execute(console, spec))
    path = render_scenarios(out, dirs)
    console.print(f"index report: [bold]{path}[/bold]")
    return dirs


def parse_checks(checks) -> list:
    from infer_bench.workloads.gates import CheckError, parse_check

    try:
        return [parse_check(c) for c in checks or []]
    except CheckError as e:
        raise UserError(str(e)) from None


def apply_checks(console: Console, dirs, checks) -> None:
    """Evaluate the --check gates on the results dirs; print a line each; exit 3 if one fails."""
    import typer

    from infer_bench.workloads.gates import EXIT_CHECK_FAILED, check_results

    results = check_results(dirs, parse_checks(checks))
    for r in results:
        console.print(("[green]" if r.passed else "[red]") + r.line() + "[/]", highlight=False)
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_CHECK_FAILED)


class RunIncomplete(Exception):
    """The run ended early; results and report were kept."""


def _read_run_info(out: Path) -> dict:
    import json

    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return {}
