"""Extra `infer-bench` commands: `mock-server` (the calibrated mock OpenAI server) and
`selftest` (how precise the client is, and where it becomes the bottleneck).

Wiring: `cli/main.py` calls `register(app)` once; the commands are thin (parse, call
`backends.mock.server` / `workloads.selftest`, print a rich table). Heavy imports happen inside
the commands so `--help` stays instant.
"""

from __future__ import annotations

import sys

from typing import Optional

import typer
from rich.console import Console

from .parsing import positive_floats

console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in logs


def mock_server(
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless told otherwise)."),
    port: int = typer.Option(8100, min=0, max=65535, help="Port (0: a free one)."),
    ttft_ms: float = typer.Option(50.0, min=0, help="Time to first chunk, ms."),
    token_delay_ms: float = typer.Option(10.0, min=0, help="Delay per output token, ms."),
    tokens_per_chunk: int = typer.Option(1, min=1, help="Tokens carried by each SSE chunk."),
    output_tokens: Optional[int] = typer.Option(None, min=1, help="Tokens per response (default: the request's max_tokens)."),
    include_token_ids: bool = typer.Option(False, help="Send token_ids in each chunk (as vLLM does)."),
    usage_delta: int = typer.Option(0, help="Report usage.completion_tokens this far off the truth (tests the client's cross-check)."),
    fail_every: int = typer.Option(0, min=0, help="Every N-th request gets HTTP 500 (0: never)."),
    reasoning_tokens: int = typer.Option(0, min=0, help="Chat: stream this many reasoning tokens (delta.reasoning_content) before the answer."),
    tool_call_tokens: int = typer.Option(0, min=0, help="Chat: stream a tool call of this many tokens after the reasoning."),
):
    """Serve a calibrated mock OpenAI-compatible API with known timing; GET /mock/log returns
    when each chunk really left.

    \b
    Example: infer-bench mock-server --port 8100 --ttft-ms 50
    """
    from infer_bench.backends.mock import server as ms

    argv = ["--host", host, "--port", str(port), "--ttft-ms", str(ttft_ms),
            "--token-delay-ms", str(token_delay_ms), "--tokens-per-chunk", str(tokens_per_chunk),
            "--usage-delta", str(usage_delta), "--fail-every", str(fail_every),
            "--reasoning-tokens", str(reasoning_tokens), "--tool-call-tokens", str(tool_call_tokens)]
    if output_tokens is not None:
        argv += ["--output-tokens", str(output_tokens)]
    if include_token_ids:
        argv.append("--include-token-ids")
    raise typer.Exit(ms.main(argv))


def _f(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def selftest(
    rates: str = typer.Option("10,50,100,200,400", help="Request rates (req/s), comma-separated."),
    duration: float = typer.Option(2.0, min=0.1, help="Seconds of load per rate (bounded by --max-requests)."),
    max_requests: int = typer.Option(400, min=1, help="At most this many requests per rate."),
    workers: int = typer.Option(1, min=1, help="Client processes (sharded client)."),
    ttft_ms: float = typer.Option(20.0, min=0, help="The mock's TTFT, ms."),
    token_delay_ms: float = typer.Option(5.0, min=0, help="The mock's delay per token, ms."),
    tokens_per_chunk: int = typer.Option(1, min=1, help="Tokens per SSE chunk."),
    output_tokens: int = typer.Option(8, min=1, help="Output tokens per request."),
    url: Optional[str] = typer.Option(None, help="An already running mock server (default: start one on loopback)."),
    err_threshold_ms: float = typer.Option(2.0, min=0, help="Median TTFT error above which the client counts as the bottleneck."),
):
    """Measure the client's own error against the mock server at rising load: median and p99
    of measured-minus-true TTFT and ITL (true = the mock's send log), and the rate where the
    client becomes the bottleneck.

    \b
    Example: infer-bench selftest --rates 10,50,100 --duration 2
    """
    from rich.table import Table

    from infer_bench.workloads.selftest import bottleneck_rate, run_selftest

    rate_list = positive_floats(rates, "--rates")
    from infer_bench.backends.client.aioloop import loop_name

    console.print(f"client self-test: mock TTFT {ttft_ms:g} ms, {token_delay_ms:g} ms/token, "
                  f"{tokens_per_chunk} token(s)/chunk, {workers} client process(es), "
                  f"event loop {loop_name()}")
    rows = run_selftest(rate_list, duration_s=duration, max_requests=max_requests,
                        workers=workers, ttft_s=ttft_ms / 1e3, token_delay_s=token_delay_ms / 1e3,
                        tokens_per_chunk=tokens_per_chunk, output_tokens=output_tokens, url=url,
                        err_threshold_s=err_threshold_ms / 1e3,
                        on_row=lambda r: console.print(
                            f"  {r['rate_rps']:g} req/s: {r['n_ok']}/{r['n']} ok"))
    table = Table(title="client measurement error (ms): measured - true (mock's send log)")
    cols = ("rate", "achieved", "n", "TTFT err p50", "TTFT err p99", "ITL err p50", "ITL err p99",
            "send ovh p50", "loop lag p99", "send late p99", "mock late p99", "client CPU",
            "bottleneck")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(f"{r['rate_rps']:g}", _f(r["achieved_rps"], 1), f"{r['n_ok']}/{r['n']}",
                      _f(r["ttft_err_p50_ms"]), _f(r["ttft_err_p99_ms"]), _f(r["itl_err_p50_ms"]),
                      _f(r["itl_err_p99_ms"]), _f(r["send_overhead_p50_ms"]),
                      _f(r["loop_lag_p99_ms"]), _f(r["send_lateness_p99_ms"]),
                      _f(r["mock_lateness_p99_ms"]),
                      "-" if r["client_cpu_share"] is None else f"{r['client_cpu_share']:.0%}",
                      r["bottleneck"] or "-")
    console.print(table, width=None if console.is_terminal else 170)
    client_ts = sorted({r["client_timestamps"] or "-" for r in rows})
    mock_ts = sorted({r["mock_timestamps"] or "-" for r in rows})
    console.print(f"read timestamps: client {', '.join(client_ts)}; mock {', '.join(mock_ts)} "
                  "(kernel: the kernel's receive times, which a stall of the reading process "
                  "does not delay)")
    b = bottleneck_rate(rows)
    if b is None:
        console.print("the client kept up at every rate tested")
    else:
        console.print(f"[yellow]the client becomes the bottleneck at {b:g} req/s[/yellow] "
                      f"(try --workers N)")


def register(app: typer.Typer) -> None:
    """Add `mock-server` and `selftest` to the `infer-bench` app."""
    app.command("mock-server")(mock_server)
    app.command("selftest")(selftest)
