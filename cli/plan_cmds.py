"""`infer-bench profile`, `simulate` and `plan`: latency profiles, simulated runs, deployment plans.

Thin glue over workloads/planning/ (profiler.py, sim_model.py, simulator.py, planner.py): parse
flags, call the library, print rich tables. One top-level function per command (`profile_command`,
`simulate_command`, `plan_command`); `register(app)` adds them to the Typer app by name
(cli/main.py calls it). Heavy imports happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import sys

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import UserError
from .parsing import positive_floats, positive_ints

console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in logs


def _load_profile_set(path: Optional[Path]):
    """A ProfileSet from a profile file (either format), or the illustrative example."""
    from infer_bench.workloads.planning.latency_model import ProfileSet, example_profile_path

    if path is None:
        console.print("[yellow]no --profile: using the ILLUSTRATIVE example profile "
                      f"({example_profile_path().name}); numbers are not a measurement[/yellow]")
        return ProfileSet.load(example_profile_path())
    return ProfileSet.load(path)


def _load_profile(path: Optional[Path], tp: int = 1, pp: int = 1, engine: Optional[str] = None):
    """The step-time fit at (tp, pp) (of `engine`) of a profile file."""
    from infer_bench.workloads.planning.latency_model import ProfileError

    ps = _load_profile_set(path)
    try:
        return ps.select(tp, pp, engine=engine)
    except ProfileError as e:
        raise UserError(str(e)) from None


def _workload(input_len: str, output_len: str, num_requests: int, seed: int):
    from infer_bench.workloads.spec import LengthDist, WorkloadSpec

    try:
        return WorkloadSpec(input_len=LengthDist.parse(input_len),
                            output_len=LengthDist.parse(output_len),
                            num_requests=num_requests, seed=seed)
    except ValueError as e:
        raise UserError(f"workload: {e}") from None


def _fmt(v, scale: float = 1.0, digits: int = 3) -> str:
    if v is None:
        return "-"
    try:
        import math
        if isinstance(v, float) and math.isnan(v):
            return "-"
    except TypeError:
        pass
    return f"{v * scale:.{digits}g}"


def _profile_table(lm) -> "object":
    from rich.table import Table

    t = Table(title=f"latency model: {lm.model.get('name', '?')} on {lm.hardware.get('name', '?')}")
    t.add_column("term")
    t.add_column("coefficient", justify="right")
    t.add_column("meaning")
    t.add_row("a", f"{lm.a * 1e3:.4g} ms", "fixed cost per step")
    t.add_row("b", f"{lm.b * 1e6:.4g} us", "per prefill token")
    t.add_row("c", f"{lm.c * 1e6:.4g} us", "per sum(chunk_len^2)/1e3 (attention)")
    t.add_row("d", f"{lm.d * 1e6:.4g} us", "per decode sequence"
              + (f" (up to {lm.decode_knots[0]:g})" if lm.decode_knots else ""))
    for k, v in zip(lm.decode_knots, lm.decode_slopes):
        t.add_row("", f"{v * 1e6:.4g} us", f"per decode sequence beyond {k:g}")
    t.add_row("e", f"{lm.e * 1e9:.4g} ns", "per attended context token")
    t.add_row("f", f"{lm.f * 1e3:.4g} ms", "per prefill chunk")
    if lm.colocated_slowdown:
        t.add_row("g", f"x{1 + lm.colocated_slowdown:.3g}",
                  "step time while another co-located instance steps")
    t.add_row("KV", f"{lm.kv_bytes_per_token:.0f} B/token", f"{lm.num_layers} layers")
    if lm.fit:
        f = lm.fit
        t.caption = (f"fit: {f.get('n_rows')} steps, r2 {_fmt(f.get('r2'))}, median rel err "
                     f"{_fmt(f.get('median_rel_err'), 100)}%, p90 rel err "
                     f"{_fmt(f.get('p90_rel_err'), 100)}%; held-out error of the mean step "
                     f"time " + (f"{lm.heldout_rel_err:.1%}" if lm.heldout_rel_err is not None
                                 else "unknown (too few steps)"))
    return t


def profile_command(
    url: Optional[str] = typer.Option(None, help="A running reference-engine server (infer-bench serve) to measure."),
    from_results: Optional[Path] = typer.Option(None, help="Fit the step traces (steps.jsonl) of a results dir instead."),
    deployment: Optional[str] = typer.Option(None, help="With --from-results: the deployment whose steps to fit (default: first mono)."),
    out: Path = typer.Option(Path("profile.json"), help="Where to write the profile JSON."),
    kv_bytes_per_token: Optional[float] = typer.Option(None, help="KV bytes per token, all layers (default: from the server if it reports it)."),
    num_layers: Optional[int] = typer.Option(None, help="Model layers (for layer-wise transfer)."),
    kv_capacity_tokens: Optional[int] = typer.Option(None, help="KV tokens that fit one instance (default: unlimited)."),
    quick: bool = typer.Option(False, help="A smaller grid (a few seconds on a laptop)."),
    tp: int = typer.Option(1, min=1, help="Tensor-parallel degree of the instance measured (its chips = tp * pp)."),
    pp: int = typer.Option(1, min=1, help="Pipeline stages of the instance measured."),
    role: Optional[str] = typer.Option(None, help="prefill or decode: the fit describes only that role (default: either)."),
    engine: str = typer.Option("reference", help="Name of the engine measured (a profile set may hold several)."),
    append: bool = typer.Option(False, "--append/--replace", help="Add the fit to the profile set already at --out (replacing one with the same engine, tp, pp and role) instead of writing a new file."),
):
    """Measure step times and fit the latency model (t = a + b*P + c*Q/1e3 + d*D + e*C + f*N; Q = sum of squared prefill chunk lengths).

    Writes a profile set (fits per engine, TP, PP, role) with the fit's held-out error.

    \b
    Example: infer-bench profile --url http://127.0.0.1:8000 --out profile.json
    Example: infer-bench profile --from-results results/run-1 --out profile.json
    Example: infer-bench profile --url http://gpu-box:8000 --tp 2 --append --out profile.json
    """
    from infer_bench.workloads.planning import profiler
    from infer_bench.workloads.planning.latency_model import ROLES, ProfileSet

    if bool(url) == bool(from_results):
        raise UserError("give exactly one of --url or --from-results")
    if role is not None and role not in ROLES:
        raise UserError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    existing = None
    if append and out.exists():
        existing = ProfileSet.load(out)
    if from_results:
        lm = profiler.fit_results_dir(
            from_results, deployment, kv_bytes_per_token=kv_bytes_per_token or 0.0,
            num_layers=num_layers or 1, kv_capacity_tokens=kv_capacity_tokens)
    else:
        grid = profiler.ProfileGrid.quick() if quick else profiler.ProfileGrid()
        with console.status("profiling") as status:
            lm = profiler.profile_engine(
                url, grid=grid, kv_bytes_per_token=kv_bytes_per_token, num_layers=num_layers,
                kv_capacity_tokens=kv_capacity_tokens,
                progress=lambda m: status.update(f"profiling: {m}"))
    ps = profiler.as_profile_set(lm, tp=tp, pp=pp, role=role, engine=engine)
    if existing is not None:
        keep = [(m, r) for m, r in zip(existing.fits, existing.roles)
                if (m.engine, m.tp, m.pp, r) != (lm.engine, tp, pp, role)]
        ps = ProfileSet(fits=[m for m, _ in keep] + [lm], roles=[r for _, r in keep] + [role],
                        engine=existing.engine or engine, model=existing.model or dict(lm.model),
                        hardware=existing.hardware or dict(lm.hardware), notes=existing.notes)
    ps.save(out)
    console.print(_profile_table(lm))
    console.print(f"profile set: [bold]{out}[/bold] ({ps.describe()})")


def simulate_command(
    profile: Optional[Path] = typer.Option(None, help="Latency profile JSON (default: the illustrative H100 example)."),
    mode: str = typer.Option("mono", help="mono or disagg."),
    instances: int = typer.Option(1, min=1, help="mono: number of instances."),
    prefill: int = typer.Option(1, min=1, help="disagg: prefill instances."),
    decode: int = typer.Option(1, min=1, help="disagg: decode instances."),
    conditional_threshold: int = typer.Option(0, min=0, help="disagg: prompts shorter than this are prefilled on a decode instance."),
    link_gbps: float = typer.Option(100.0, help="KV link bandwidth, Gb/s."),
    link_latency_us: float = typer.Option(10.0, help="KV link latency, microseconds."),
    layerwise: bool = typer.Option(False, help="Layer-wise KV transfer overlapped with prefill."),
    rates: str = typer.Option("1", help="Poisson request rates (req/s), comma-separated."),
    num_requests: int = typer.Option(1000, min=1, help="Requests per rate."),
    input_len: str = typer.Option("1024", help="Prompt length: 128, uniform:64,256, normal:128,32, lognormal:1024,0.8, file:lengths.csv (a dataset's lengths)."),
    output_len: str = typer.Option("128", help="Output length (same forms)."),
    seed: int = typer.Option(0),
    slo_ttft: float = typer.Option(2.0, help="TTFT SLO, s."),
    slo_tpot: float = typer.Option(0.1, help="TPOT SLO, s."),
    max_num_batched_tokens: int = typer.Option(8192, min=1, help="Per-step token budget."),
    max_num_seqs: int = typer.Option(256, min=1, help="Max running sequences per instance."),
    tp: int = typer.Option(1, min=1, help="Use the profile's fit at this tensor-parallel degree."),
    pp: int = typer.Option(1, min=1, help="Use the profile's fit at this many pipeline stages."),
    per_token: bool = typer.Option(False, help="Record every token's time (heavier)."),
    out: Optional[Path] = typer.Option(None, help="Write a results dir (render with infer-bench report)."),
):
    """Simulate a deployment on a workload with a latency profile (no engine needed).

    \b
    Example: infer-bench simulate --mode disagg --prefill 1 --decode 3 --rates 2,4,8 --input-len lognormal:2048,0.5
    """
    import time

    from infer_bench.workloads.planning import sim_model
    from infer_bench.workloads.planning.simulator import simulate_spec
    from infer_bench.workloads.spec import SLO, ArrivalSpec

    if mode not in sim_model.MODES:
        raise UserError(f"--mode must be mono or disagg, got {mode!r}")
    rate_list = positive_floats(rates, "--rates")
    lm = _load_profile(profile, tp, pp)
    wl = _workload(input_len, output_len, num_requests, seed)
    try:
        inst = sim_model.InstanceConfig(max_num_batched_tokens=max_num_batched_tokens,
                                        max_num_seqs=max_num_seqs, chips=lm.chips_per_instance,
                                        block_size=lm.block_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    dep = sim_model.Deployment(mode, num_instances=instances, num_prefill=prefill,
                               num_decode=decode, instance=inst,
                               conditional_threshold=conditional_threshold,
                               link=sim_model.Link(link_gbps, link_latency_us * 1e-6, layerwise))
    slo = SLO(slo_ttft, slo_tpot)
    table = _simulate_table(f"simulated {dep.name} ({dep.chips()} chips), {lm.describe()}")
    writer = _simulated_results_writer(out, dep, wl, rate_list, seed, slo, lm) if out else None
    for r in rate_list:
        t0 = time.perf_counter()
        res = simulate_spec(dep, lm, wl, ArrivalSpec(kind="poisson", rate=r, seed=seed),
                            per_token=per_token)
        wall = time.perf_counter() - t0
        p = res.percentiles()
        att = res.attainment(slo)
        table.add_row(f"{r:g}", _fmt(p["ttft_p50_s"]), _fmt(p["ttft_p90_s"]),
                      _fmt(p["tpot_p50_s"]), _fmt(p["tpot_p90_s"]), f"{att:.3f}",
                      "yes" if att >= 0.9 else "no", str(int(res.failed.sum())),
                      f"{wall:.2f} s")
        if writer:
            writer.append_records(res.to_records(deployment=dep.name, load_point=f"{r:g}rps"))
    if writer:
        writer.finalize()
    console.print(table)
    if out:
        console.print(f"results dir: [bold]{out}[/bold] (render: infer-bench report {out})")


def _simulate_table(title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("rate", "TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90", "attainment",
                "goodput/chip ok", "failed", "sim time"):
        table.add_column(col, justify="right")
    return table


def _simulated_results_writer(out: Path, dep, wl, rate_list: list[float], seed: int, slo, lm):
    """A results dir for `simulate --out`: spec.json (marked simulated) and env.json now, the
    records of each rate as they are simulated."""
    from infer_bench.workloads.results import ResultsWriter
    from infer_bench.workloads.spec import ArrivalSpec, LoadPoint

    writer = ResultsWriter(out, overwrite=True)
    writer.write_spec({"name": out.name, "simulated": True,
                       "deployments": [{**dep.to_dict(), "name": dep.name}],
                       "workload": wl.to_dict(),
                       "load_points": [LoadPoint(f"{r:g}rps", ArrivalSpec(rate=r, seed=seed)).to_dict()
                                       for r in rate_list],
                       "slo": slo.to_dict(), "latency_model": lm.to_dict()})
    writer.write_env()
    return writer


def plan_command(
    rate: float = typer.Option(..., help="Offered request rate (req/s) to check and start the search from."),
    slo_ttft: float = typer.Option(..., help="TTFT SLO, s."),
    slo_tpot: float = typer.Option(..., help="TPOT SLO, s."),
    chips: int = typer.Option(..., min=1, help="Total chips to deploy on."),
    profile: Optional[Path] = typer.Option(None, help="Latency profile JSON (default: the illustrative H100 example)."),
    input_len: str = typer.Option("1024", help="Prompt length: 128, uniform:64,256, normal:128,32, lognormal:1024,0.8, file:lengths.csv (a dataset's lengths)."),
    output_len: str = typer.Option("128", help="Output length (same forms)."),
    seed: int = typer.Option(0),
    link_gbps: float = typer.Option(100.0, help="KV link bandwidth, Gb/s."),
    link_latency_us: float = typer.Option(10.0, help="KV link latency, microseconds."),
    layerwise: bool = typer.Option(False, help="Layer-wise KV transfer overlapped with prefill."),
    conditional: Optional[str] = typer.Option(None, help="Also try conditional disagg with these prompt-length thresholds, comma-separated."),
    max_num_batched_tokens: int = typer.Option(8192, min=1),
    max_num_seqs: int = typer.Option(256, min=1),
    target: float = typer.Option(0.9, help="Joint SLO attainment that counts as good."),
    horizon: float = typer.Option(60.0, help="Seconds of arrivals simulated per rate."),
    max_requests: int = typer.Option(20000, min=10, help="Cap on requests per simulated rate."),
    map_inputs: str = typer.Option("256,1024,4096", help="Break-even map: prompt lengths."),
    map_outputs: str = typer.Option("64,256,1024", help="Break-even map: output lengths."),
    map_bandwidths: str = typer.Option("25,100,400", help="Break-even map: link bandwidths, Gb/s."),
    draw_map: bool = typer.Option(True, "--map/--no-map", help="Draw the break-even map of mono vs disagg over --map-inputs x --map-outputs x --map-bandwidths."),
    out: Path = typer.Option(Path("plan"), help="Output dir: plan.json, break_even.json, break_even.html."),
    prefill_profile: Optional[Path] = typer.Option(None, help="Profile (set) of the disagg prefill instances (default: --profile)."),
    decode_profile: Optional[Path] = typer.Option(None, help="Profile (set) of the disagg decode instances (default: --profile)."),
    mono_engine: Optional[str] = typer.Option(None, help="Mono uses only the fits of this engine (a profile set with several)."),
    disagg_engine: Optional[str] = typer.Option(None, help="Disagg roles use only the fits of this engine."),
    policy: str = typer.Option("chunked", help="Mono scheduling policy: chunked, prefill_priority, decode_priority, or search (the best of the three per placement)."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Skip simulating placements whose goodput upper bound per chip is below the best found."),
    seeds: int = typer.Option(1, min=1, help="Workload seeds per placement (--seed, --seed+1, ...): goodput is their median and the band adds their spread (N times the time)."),
):
    """Rank mono vs disaggregated placements of N chips by simulated goodput per chip.

    Searches every (TP, PP) fit of the profile per role (instances of TP * PP chips) and shows
    each goodput with a band from the fits' held-out error, plus the spread over workload
    seeds with --seeds N ("too close to call" when the bands of two placements overlap).

    \b
    Example: infer-bench plan --rate 4 --slo-ttft 1 --slo-tpot 0.05 --chips 8 --profile profile.json
    Example: infer-bench plan --rate 4 --slo-ttft 1 --slo-tpot 0.05 --chips 8 --seeds 5
    Example: infer-bench plan --rate 2 --slo-ttft 0.25 --slo-tpot 0.1 --chips 3 --profile set.json --mono-engine vllm --disagg-engine distserve --policy prefill_priority
    """
    from infer_bench.workloads.planning import planner as pl
    from infer_bench.workloads.planning.latency_model import ProfileError
    from infer_bench.workloads.planning.sim_model import InstanceConfig, Link
    from infer_bench.workloads.spec import SLO

    if not 0 < target <= 1:
        raise UserError(f"--target must be in (0, 1], got {target}")
    if policy not in pl.PLAN_POLICIES:
        raise UserError(f"--policy must be one of {', '.join(pl.PLAN_POLICIES)}, got {policy!r}")
    thresholds = positive_ints(conditional, "--conditional") if conditional else ()
    grid = None                     # the break-even map's axes
    if draw_map:
        grid = dict(input_lens=positive_ints(map_inputs, "--map-inputs"),
                    output_lens=positive_ints(map_outputs, "--map-outputs"),
                    bandwidths_gbps=positive_floats(map_bandwidths, "--map-bandwidths"))
    ps = _load_profile_set(profile)
    pre = _load_profile_set(prefill_profile) if prefill_profile else None
    dec = _load_profile_set(decode_profile) if decode_profile else None
    wl = _workload(input_len, output_len, 1, seed)
    link = Link(link_gbps, link_latency_us * 1e-6, layerwise)
    try:
        lm = (pl.profile_options(ps, None, mono_engine) or pl.profile_options(ps, None))[0]
        inst = InstanceConfig(max_num_batched_tokens=max_num_batched_tokens,
                              max_num_seqs=max_num_seqs, block_size=lm.block_size)
        cands = pl.placement_candidates(chips, ps, prefill_profiles=pre, decode_profiles=dec,
                                        instance=inst, link=link, policy=policy,
                                        conditional_thresholds=thresholds,
                                        mono_engine=mono_engine, disagg_engine=disagg_engine)
    except (ValueError, ProfileError, IndexError) as e:
        raise UserError(str(e) or "no step-time fit matches --mono-engine") from None
    slo = SLO(slo_ttft, slo_tpot)
    sweep = pl.SweepSpec(horizon_s=horizon, max_requests=max_requests)
    with console.status("planning") as status:
        prog = lambda m: status.update(f"planning: {m}")  # noqa: E731
        ranking = pl.rank_deployments(cands, lm, wl, rate, slo, target=target, sweep=sweep,
                                      progress=prog, prune=prune,
                                      search_policy=(policy == "search"), seeds=seeds)
        bmap = None if grid is None else pl.break_even_map(
            lm, slo, chips, **grid, link=link, instance=inst, rate_hint=rate, target=target,
            seed=seed, progress=prog)
    result = pl.Plan(ranking=ranking, break_even=bmap, inputs={
        "workload": wl.to_dict(), "rate_rps": rate, "slo": slo.to_dict(), "chips": chips,
        "target": target, "link": link.__dict__.copy(), "policy": policy,
        "latency_model": lm.to_dict(), "profiles": ps.to_dict(),
        "prefill_profiles": pre.to_dict() if pre else None,
        "decode_profiles": dec.to_dict() if dec else None, "sweep": sweep.__dict__.copy(),
        "seeds": seeds})
    console.print(_ranking_table(ranking, chips, slo, target, rate))
    _write_plan(out, result, bmap)
    if bmap is not None:
        console.print(_break_even_table(bmap))
    best = ranking.iloc[0]
    close = ranking[ranking["call"] == pl.TOO_CLOSE]["deployment"].tolist()
    from rich.markup import escape

    console.print(f"best: [bold]{escape(best['deployment'])}[/bold] "
                  f"({best['goodput_per_chip_rps']:.3g} req/s per chip"
                  + (f", band {_band(best)}" if pl.row_band_error(best) is not None else "")
                  + f"); wrote {out}/")
    if close:
        console.print(f"[yellow]{pl.TOO_CLOSE}[/yellow]: {escape(best['deployment'])} vs "
                      f"{escape(', '.join(close))} (their bands overlap)")


def _band(row) -> str:
    """'lo-hi' per chip from the row's band (held-out error + seed spread); '?' when unknown."""
    from infer_bench.workloads.planning.planner import row_band_error

    e = row_band_error(row)
    g = row.get("goodput_per_chip_rps")
    if e is None or g is None or g != g:
        return "?"
    return f"{_fmt(g * (1 - e))}-{_fmt(g * (1 + e))} (+-{e:.0%})"


def _ranking_table(ranking, chips: int, slo, target: float, rate: float):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"placements of up to {chips} chips by goodput per chip "
                        f"(SLO TTFT {slo.ttft_s:g} s, TPOT {slo.tpot_s:g} s, {target:.0%})")
    for col in ("rank", "deployment", "chips", "goodput req/s", "per chip", "band per chip",
                "call", f"attainment @ {rate:g}", f"TTFT p90 @ {rate:g}", f"TPOT p90 @ {rate:g}",
                "meets rate"):
        table.add_column(col, justify="right")
    for i, row in enumerate(ranking.to_dict("records")):
        if row.get("pruned"):
            table.add_row(str(i + 1), escape(row["deployment"]), str(row["chips"]), "-", "-", "-",
                          row.get("call", ""), "-", "-", "-", "-")
            continue
        table.add_row(str(i + 1), escape(row["deployment"]), str(row["chips"]),
                      _fmt(row["goodput_rps"]), _fmt(row["goodput_per_chip_rps"]), _band(row),
                      row.get("call", ""), f"{row['attainment_at_rate']:.3f}",
                      _fmt(row["ttft_p90_s_at_rate"]), _fmt(row["tpot_p90_s_at_rate"]),
                      ("yes" if row["meets_rate"] else "no")
                      + (" *" if row.get("horizon_capped") else ""))
    notes = []
    if ranking["horizon_capped"].fillna(False).astype(bool).any():
        notes.append("* fewer requests than --horizon at that rate (raise --max-requests)")
    band = ranking["band_rel_err"][~ranking["pruned"].fillna(False).astype(bool)]
    if band.isna().any():
        notes.append("band ?: the profile has no held-out error (hand-written or converted); "
                     "--seeds N adds the spread over workload seeds")
    elif "seed_rel_spread" in ranking and ranking["seed_rel_spread"].notna().any():
        notes.append("band: held-out error of the fits + spread over the workload seeds"
                     if ranking["heldout_rel_err"].notna().any() else
                     "band: spread over the workload seeds (the profile has no held-out error)")
    table.caption = "; ".join(notes) or None
    return table


def _break_even_table(bmap: dict):
    from rich.table import Table

    mt = Table(title="break-even map: best disagg vs mono goodput per chip (|diff| < 5% = same)")
    for col in ("input", "output", "link Gb/s", "mono/chip", "disagg/chip", "split", "diff",
                "verdict"):
        mt.add_column(col, justify="right")
    for c in bmap["cells"]:
        mt.add_row(str(c["input_len"]), str(c["output_len"]), f"{c['bandwidth_gbps']:g}",
                   _fmt(c["mono_per_chip"]), _fmt(c["disagg_per_chip"]),
                   c["best_split"] or "-", _fmt(c["diff"], 100, 2) + "%"
                   if c["diff"] is not None else "-", c["verdict"])
    return mt


def _write_plan(out: Path, result, bmap: dict | None) -> None:
    """plan.json, and with a break-even map break_even.json and break_even.html, into `out`."""
    import json

    import plotly.io as pio

    from infer_bench.workloads.planning import planner as pl

    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    if bmap is not None:
        (out / "break_even.json").write_text(json.dumps(bmap, indent=2))
        pio.write_html(pl.break_even_figure(bmap), str(out / "break_even.html"),
                       include_plotlyjs=True)


def register(app: typer.Typer) -> None:
    """Add `profile`, `simulate` and `plan` to `app`."""
    app.command("profile")(profile_command)
    app.command("simulate")(simulate_command)
    app.command("plan")(plan_command)
