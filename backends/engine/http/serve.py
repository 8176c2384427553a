"""Server process entry point: one reference-engine worker behind the OpenAI HTTP API.

Role in the data flow:

    backends/deployment.py (or a person, or `infer-bench serve`)
      -> `python -m infer_bench.backends.engine.http.serve --model SOURCE --port N ...`
      -> run_server(ServerConfig): torch threads -> loader.load_model() -> AsyncEngine
         -> server.build_app() -> listen -> prints "infer-bench engine ready: http://HOST:PORT"
      -> GET /health answers 200 from then on; SIGTERM/SIGINT: stop accepting, abort in-flight
         requests, shut the engine down, exit 0.

Exit codes: 0 clean shutdown; 2 the model could not be loaded (one line on stderr) or the port
could not be bound. Argparse only: the engine must not import the project's cli/ package.

Security: binds 127.0.0.1 unless --host says otherwise. `--api-key KEY` (or the environment
variable INFER_BENCH_API_KEY, preferred: a command line is visible to every local user) makes
every endpoint but /health require `Authorization: Bearer KEY`; the key is never printed or
logged (ServerConfig hides it from repr). Overload and faults: --max-waiting-requests (429 past
it), --request-timeout-s (abort), --body-timeout-s (408); see server.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("infer_bench.engine.serve")

READY_PREFIX = "infer-bench engine ready:"
API_KEY_ENV = "INFER_BENCH_API_KEY"
DEFAULT_MAX_WAITING_REQUESTS = 256   # = server.DEFAULT_MAX_WAITING_REQUESTS (no aiohttp here)
DEFAULT_BODY_TIMEOUT_S = 30.0


@dataclass
class ServerConfig:
    """Everything `run_server` needs. None means "the engine's default"."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    dtype: str = "auto"                      # auto | float32 | float16 | bfloat16
    num_threads: int | None = None           # torch.set_num_threads before loading
    kv_cache_gb: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    served_model_name: str | None = None     # default: the --model string
    seed: int | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    log_level: str = "warning"
    mode: str = "mono"                       # only "mono" is served by this module
    prefill_workers: int = 1
    decode_workers: int = 1
    disagg: dict = field(default_factory=dict)  # --mode disagg options (disagg/serve.py)
    # None: read INFER_BENCH_API_KEY; "" or unset: no auth. Hidden from repr (never logged).
    api_key: str | None = field(default=None, repr=False)
    max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS  # None/0: unbounded
    request_timeout_s: float | None = None   # None/0: no server-side request timeout
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
    access_log: bool = False                 # one line per request (never headers)
    spec: str | None = None                  # speculative decoding: "ngram" | "draft:<model>"
    spec_k: int | None = None                # proposals per step (engine default 4)


def resolve_api_key(cfg: ServerConfig) -> str | None:
    """The key to enforce: cfg.api_key, else $INFER_BENCH_API_KEY; empty means none."""
    key = cfg.api_key if cfg.api_key is not None else os.environ.get(API_KEY_ENV)
    key = (key or "").strip()
    return key or None


# ServerConfig field -> candidate EngineConfig field names (first one that exists wins).
_ENGINE_FIELDS = {
    "device": ("device",),
    "kv_cache_gb": ("kv_cache_gb", "kv_cache_memory_gb", "kv_cache_size_gb"),
    "max_num_batched_tokens": ("max_num_batched_tokens",),
    "max_num_seqs": ("max_num_seqs",),
    "max_model_len": ("max_model_len",),
    "block_size": ("block_size",),
    "enable_prefix_caching": ("enable_prefix_caching", "prefix_caching"),
    "enable_chunked_prefill": ("enable_chunked_prefill", "chunked_prefill"),
    "seed": ("seed",),
    "num_threads": ("num_threads",),
    "spec_k": ("spec_k",),
}


def parse_dtype(name: str | None):
    """"auto"/None -> None (the loader's default for the device); else a torch dtype."""
    import torch

    if name is None or name == "auto":
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(table)}") from None


def make_engine_config(cfg: ServerConfig):
    """ServerConfig -> EngineConfig, passing only what was set and what EngineConfig has."""
    from ..engine import EngineConfig

    if dataclasses.is_dataclass(EngineConfig):
        known = {f.name for f in dataclasses.fields(EngineConfig)}
    else:
        known = set(inspect.signature(EngineConfig).parameters)
    kwargs = {}
    for ours, candidates in _ENGINE_FIELDS.items():
        value = getattr(cfg, ours)
        if value is None:
            continue
        name = next((c for c in candidates if c in known), None)
        if name is None:
            default = ServerConfig.__dataclass_fields__[ours].default
            if value != default:
                log.warning("engine has no setting for %s; ignoring %s=%r", ours, ours, value)
            continue
        kwargs[name] = value
    if cfg.spec:
        from ..spec_decode import parse_spec_flag
        kwargs.update(parse_spec_flag(cfg.spec))
    return EngineConfig(**kwargs)


def default_model_names(cfg: ServerConfig) -> tuple[str, list[str]]:
    """(served name, extra accepted names): the --model string, also its file/dir name."""
    name = cfg.served_model_name or cfg.model
    extra = []
    if not cfg.served_model_name:
        base = Path(cfg.model).name
        if base and base != name:
            extra.append(base)
    return name, extra


async def _serve(cfg: ServerConfig, loaded) -> int:
    from ..engine import AsyncEngine
    from .app import build_app, start_site, stop_site

    engine = AsyncEngine(make_engine_config(cfg), loaded)
    name, extra = default_model_names(cfg)
    api_key = resolve_api_key(cfg)
    app = build_app(engine, loaded.tokenizer, name, extra_model_names=extra, model_root=loaded.source_description,
                    max_body_bytes=cfg.max_body_bytes, api_key=api_key,
                    max_waiting_requests=cfg.max_waiting_requests or None,
                    request_timeout_s=cfg.request_timeout_s or None,
                    body_timeout_s=cfg.body_timeout_s or None)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def _on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:  # second signal: do not wait any longer
            os._exit(130 if signum == signal.SIGINT else 143)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)

    try:
        try:
            runner, url = await start_site(app, cfg.host, cfg.port,
                                           access_log=cfg.access_log)
        except OSError as e:
            print(f"infer-bench serve: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}",
                  file=sys.stderr, flush=True)
            await _shutdown_engine(engine)
            return 2
        print(f"{READY_PREFIX} {url} (model '{name}': {loaded.source_description})", flush=True)
        if api_key:
            print("infer-bench serve: API key required (Authorization: Bearer ...) on every "
                  "endpoint but /health", file=sys.stderr, flush=True)
        elif cfg.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"infer-bench serve: warning: listening on {cfg.host} without an API key",
                  file=sys.stderr, flush=True)
        await stop.wait()
        print("infer-bench serve: shutting down", file=sys.stderr, flush=True)
        aborted = await stop_site(app, runner)
        if aborted:
            print(f"infer-bench serve: aborted {len(aborted)} in-flight request(s)",
                  file=sys.stderr, flush=True)
        await _shutdown_engine(engine)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _shutdown_engine(engine) -> None:
    shutdown = getattr(engine, "shutdown", None)
    if shutdown is None:
        return
    res = shutdown()
    if inspect.isawaitable(res):
        await res


def run_server(cfg: ServerConfig) -> int:
    """Load the model, serve until SIGTERM/SIGINT, return 0. On a model that cannot be loaded
    (or a port that cannot be bound) print one line to stderr and raise SystemExit(2)."""
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.access_log:
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    if cfg.mode == "disagg":  # router + prefill/decode worker processes
        from ..disagg.serve import run_disagg_server
        return run_disagg_server(cfg)
    if cfg.mode != "mono":
        print(f"infer-bench serve: --mode {cfg.mode} is not available: this server runs one "
              f"monolithic engine (--mode mono)", file=sys.stderr, flush=True)
        raise SystemExit(2)
    import torch

    from ..loader import ModelLoadError, load_model

    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    try:
        dtype = parse_dtype(cfg.dtype)
    except ValueError as e:
        print(f"infer-bench serve: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:
        loaded = load_model(cfg.model, cfg.device, dtype)
    except ModelLoadError as e:
        print(f"infer-bench serve: cannot load model: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    rc = asyncio.run(_serve(cfg, loaded))
    if rc:
        raise SystemExit(rc)
    return 0


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infer_bench.backends.engine.http.serve",
        description="Serve a model with the infer-bench reference engine (OpenAI-compatible "
                    "HTTP API: /v1/completions, /v1/chat/completions, /v1/models, /health, "
                    "/metrics, /debug/steps).")
    p.add_argument("--model", required=True,
                   help="HF directory, .gguf file, hub id, or registry name (smollm2-135m)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads")
    p.add_argument("--kv-cache-gb", type=float, default=None, help="KV-cache pool size (GB)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None, help="context window")
    p.add_argument("--block-size", type=int, default=None, help="tokens per KV block")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-chunked-prefill", action="store_true")
    p.add_argument("--served-model-name", default=None,
                   help="name clients send as 'model' (default: the --model string)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--mode", default="mono", choices=["mono", "disagg"],
                   help="mono: one engine does prefill and decode; disagg: prefill and decode workers")
    p.add_argument("--prefill-workers", type=int, default=1, help="(disagg only)")
    p.add_argument("--decode-workers", type=int, default=1, help="(disagg only)")
    from ..disagg.serve import add_disagg_arguments
    add_disagg_arguments(p)
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /health "
                        f"(default: ${API_KEY_ENV}, which is preferred: argv is visible to all)")
    p.add_argument("--max-waiting-requests", type=int, default=DEFAULT_MAX_WAITING_REQUESTS,
                   help="requests allowed to wait for the running batch; more get 429 "
                        "(0: unbounded)")
    p.add_argument("--request-timeout-s", type=float, default=None,
                   help="abort a request still running after this many seconds (default: none)")
    p.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                   help="408 if the request body is not received within this (0: no limit)")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per request (address, request line, status; no headers)")
    p.add_argument("--spec", default=None, metavar="ngram|draft:MODEL",
                   help="speculative decoding: n-gram prompt lookup, or a draft model (same tokenizer)")
    p.add_argument("--spec-k", type=int, default=None, help="speculative tokens per step (default 4)")
    return p


def config_from_args(argv: list[str] | None = None) -> ServerConfig:
    a = build_arg_parser().parse_args(argv)
    return ServerConfig(
        model=a.model, host=a.host, port=a.port, device=a.device, dtype=a.dtype,
        num_threads=a.num_threads, kv_cache_gb=a.kv_cache_gb,
        max_num_batched_tokens=a.max_num_batched_tokens, max_num_seqs=a.max_num_seqs,
        max_model_len=a.max_model_len, block_size=a.block_size,
        enable_prefix_caching=not a.no_prefix_caching,
        enable_chunked_prefill=not a.no_chunked_prefill,
        served_model_name=a.served_model_name, seed=a.seed, max_body_bytes=a.max_body_bytes,
        log_level=a.log_level, mode=a.mode, prefill_workers=a.prefill_workers,
        decode_workers=a.decode_workers, api_key=a.api_key,
        max_waiting_requests=a.max_waiting_requests, request_timeout_s=a.request_timeout_s,
        body_timeout_s=a.body_timeout_s, access_log=a.access_log, spec=a.spec, spec_k=a.spec_k)


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(argv)
    if cfg.mode == "disagg":
        from ..disagg.serve import disagg_options_from_args
        cfg.disagg = disagg_options_from_args(build_arg_parser().parse_args(argv))
    return run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
