"""The server process of a reference-engine deployment, mono or disaggregated: `serve(settings)`.

Role in the data flow:

    `infer-bench serve ...` (cli/main.py: Typer parses the flags, the engine options are
    cli/engine_options.py's) -> ServeSettings -> serve(settings):
      mono:   torch threads -> loader.load_model() -> AsyncEngine(engine_config(settings))
      disagg: loader.load_tokenizer() (the router runs no model) -> DisaggEngine(disagg_options())
              whose start() spawns the prefill/decode workers (or, with `ray_address`, places
              them as actors on a Ray cluster) and waits until they are linked
      -> app.build_app(engine, ...) -> listen -> prints "infer-bench engine ready: http://HOST:PORT"
      -> GET /health answers 200 from then on (disagg: DisaggEngine.health(): ok / degraded /
         unavailable); SIGTERM/SIGINT: stop accepting, abort in-flight requests, shut the engine
         down (disagg: every worker stopped, every shared-memory segment unlinked), exit 0.
    backends/launch.py starts deployments as `python -m infer_bench.cli serve ...` subprocesses;
    serve() first pins itself to $INFER_BENCH_CPUS when the launcher set it (cpu_affinity.py).

One lifecycle for both modes: the same signal handling (a second signal exits at once), one
build_app call, the engine shut down once. No argv parsing here: the CLI owns the flags, and the
engine does not import cli/.

Exit codes: 0 clean shutdown (also a signal during the disagg start-up); 2 the model could not be
loaded, the settings do not make an engine, the workers did not start, or the port could not be
bound (one line on stderr each).

Security: binds 127.0.0.1 unless settings.host says otherwise. `api_key` (or the environment
variable INFER_BENCH_API_KEY, preferred: a command line is visible to every local user) makes
every endpoint but /health require `Authorization: Bearer KEY`; the key is never printed or
logged (ServeSettings hides it from repr). Overload and faults: max_waiting_requests (429 past
it), request_timeout_s (abort), body_timeout_s (408); see app.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("infer_bench.engine.serve")

READY_PREFIX = "infer-bench engine ready:"
API_KEY_ENV = "INFER_BENCH_API_KEY"
DEFAULT_MAX_WAITING_REQUESTS = 256   # = app.DEFAULT_MAX_WAITING_REQUESTS (no aiohttp import here)
DEFAULT_BODY_TIMEOUT_S = 30.0
MODES = ("mono", "disagg")


@dataclass
class ServeSettings:
    """Everything `serve` needs. For the engine options, None means "the engine's default"."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None     # default: the model string
    seed: int | None = None                  # sampler seed of requests without their own
    max_body_bytes: int = 16 * 1024 * 1024
    log_level: str = "warning"
    # None: read INFER_BENCH_API_KEY; "" or unset: no auth. Hidden from repr (never logged).
    api_key: str | None = field(default=None, repr=False)
    max_waiting_requests: int | None = DEFAULT_MAX_WAITING_REQUESTS  # None/0: unbounded
    request_timeout_s: float | None = None   # None/0: no server-side request timeout
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
    access_log: bool = False                 # one line per request (never headers)
    mode: str = "mono"                       # mono | disagg
    # Engine options (the CLI's EngineOptions fields, same names).
    device: str = "cpu"
    dtype: str = "auto"                      # auto | float32 | float16 | bfloat16 (loader.parse_dtype)
    num_threads: int | None = None           # the deployment's total torch threads (disagg: split)
    kv_cache_gb: float | None = None         # per engine (disagg: per worker)
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    speculation: str | None = None           # "ngram" | "draft:<model>" (spec_decode.parse_spec_flag)
    spec_k: int | None = None                # proposals per step
    prefill_workers: int = 1                 # disagg only, like the four below
    decode_workers: int = 1
    kv_transport: str = "shm"                # shm | dist
    layerwise: bool = True
    kv_link_gbps: float | None = None
    disagg_threshold: int | None = None
    ray_address: str | None = None           # disagg: place the workers on this Ray cluster


def resolve_api_key(settings: ServeSettings) -> str | None:
    """The key to enforce: settings.api_key, else $INFER_BENCH_API_KEY; empty means none."""
    key = settings.api_key if settings.api_key is not None else os.environ.get(API_KEY_ENV)
    key = (key or "").strip()
    return key or None


def _given(**kwargs: Any) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


def engine_config(s: ServeSettings):
    """The EngineConfig of the settings (one engine; disagg: each worker's, less its threads).
    Raises ValueError on values the engine refuses."""
    from ..engine import EngineConfig
    from ..spec_decode import parse_spec_flag

    return EngineConfig(
        device=s.device, num_threads=s.num_threads,
        enable_prefix_caching=s.enable_prefix_caching,
        enable_chunked_prefill=s.enable_chunked_prefill,
        **_given(kv_cache_gb=s.kv_cache_gb, max_num_batched_tokens=s.max_num_batched_tokens,
                 max_num_seqs=s.max_num_seqs, max_model_len=s.max_model_len,
                 block_size=s.block_size, seed=s.seed, spec_k=s.spec_k),
        **parse_spec_flag(s.speculation))


def disagg_options(s: ServeSettings):
    """The DisaggOptions of the settings: per-worker EngineConfig fields (threads are the
    deployment's total, split by the router; the workers load the model in `dtype`)."""
    import dataclasses

    from ..disagg.router import DisaggOptions

    engine = dataclasses.asdict(engine_config(s))
    del engine["num_threads"], engine["dtype"]
    return DisaggOptions(model=s.model, prefill_workers=s.prefill_workers,
                         decode_workers=s.decode_workers, num_threads=s.num_threads,
                         device=s.device, dtype=s.dtype, engine=engine, transport=s.kv_transport,
                         layerwise=s.layerwise, kv_link_gbps=s.kv_link_gbps,
                         disagg_threshold=s.disagg_threshold, ray_address=s.ray_address)


def default_model_names(s: ServeSettings) -> tuple[str, list[str]]:
    """(served name, extra accepted names): the model string, also its file/dir name."""
    name = s.served_model_name or s.model
    extra = []
    if not s.served_model_name:
        base = Path(s.model).name
        if base and base != name:
            extra.append(base)
    return name, extra


@dataclass
class Served:
    """An engine ready to be served, and what differs between mono and disagg around it."""

    engine: Any                                   # AsyncEngine or DisaggEngine
    tokenizer: Any
    model_root: str                               # the model's description (/v1/models, ready line)
    shutdown: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[Any]] | None = None    # disagg: spawn and link the workers
    health: Callable[[], tuple[int, dict]] | None = None
    on_signal: Callable[[], None] | None = None          # called at once on SIGTERM/SIGINT
    ready_detail: str = ""                        # appended to the ready line


def load_mono(s: ServeSettings) -> Served:
    """Load the model and start one AsyncEngine. Raises ModelLoadError / ValueError."""
    import torch

    from ..engine import AsyncEngine
    from ..loader import load_model, parse_dtype

    if s.num_threads:
        torch.set_num_threads(s.num_threads)
    config = engine_config(s)   # bad settings fail before the model is loaded
    loaded = load_model(s.model, s.device, parse_dtype(s.dtype))
    engine = AsyncEngine(config, loaded)
    return Served(engine, loaded.tokenizer, loaded.source_description,
                  shutdown=lambda: asyncio.to_thread(engine.shutdown))


def load_disagg(s: ServeSettings) -> Served:
    """The router's tokenizer and a DisaggEngine (workers start in `Served.start`)."""
    from ..disagg.router import DisaggEngine
    from ..loader import load_tokenizer, parse_dtype

    opts = disagg_options(s)
    parse_dtype(s.dtype)  # a bad dtype fails here, not in every worker
    tokenizer, desc = load_tokenizer(s.model)
    engine = DisaggEngine(opts, tokenizer)

    def on_signal() -> None:
        engine.stopping = True  # the workers get the signal too: their exits are expected

    link = f", link {opts.kv_link_gbps:g} Gb/s" if opts.kv_link_gbps else ""
    if opts.ray_address:
        link += f", workers on the Ray cluster at {opts.ray_address}"
    detail = (f"; disagg {opts.prefill_workers}P{opts.decode_workers}D, "
              f"{opts.threads_per_worker()} thread(s)/worker, kv transport {opts.transport}"
              f"{', layer-wise' if opts.layerwise else ''}{link}")
    return Served(engine, tokenizer, desc, shutdown=engine.shutdown, start=engine.start,
                  health=engine.health, on_signal=on_signal, ready_detail=detail)


def _say(message: str) -> None:
    print(f"infer-bench serve: {message}", file=sys.stderr, flush=True)


async def run_served(s: ServeSettings, served: Served) -> int:
    """Serve until SIGTERM/SIGINT; the exit code. The engine is shut down once, on every path."""
    from .app import build_app, start_site, stop_site

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def _on_signal(signum: int) -> None:
        received.append(signum)
        if served.on_signal is not None:
            served.on_signal()
        if len(received) > 1:  # second signal: do not wait any longer
            os._exit(130 if signum == signal.SIGINT else 143)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)
    try:
        if served.start is not None:
            start = asyncio.ensure_future(served.start())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([start, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not start.done():  # a signal during start-up
                start.cancel()
                return 0
            try:
                start.result()
            except Exception as e:  # noqa: BLE001 - workers that did not start: one line
                _say(str(e))
                return 2
        name, extra = default_model_names(s)
        api_key = resolve_api_key(s)
        app = build_app(served.engine, served.tokenizer, name, extra_model_names=extra,
                        model_root=served.model_root, max_body_bytes=s.max_body_bytes,
                        api_key=api_key, max_waiting_requests=s.max_waiting_requests or None,
                        request_timeout_s=s.request_timeout_s or None,
                        body_timeout_s=s.body_timeout_s or None, health=served.health)
        try:
            runner, url = await start_site(app, s.host, s.port, access_log=s.access_log)
        except OSError as e:
            _say(f"cannot listen on {s.host}:{s.port}: {e.strerror or e}")
            return 2
        print(f"{READY_PREFIX} {url} (model '{name}': {served.model_root}{served.ready_detail})",
              flush=True)
        if api_key:
            _say("API key required (Authorization: Bearer ...) on every endpoint but /health")
        elif s.host not in ("127.0.0.1", "localhost", "::1"):
            _say(f"warning: listening on {s.host} without an API key")
        await stop.wait()
        _say("shutting down")
        aborted = await stop_site(app, runner)
        if aborted:
            _say(f"aborted {len(aborted)} in-flight request(s)")
        return 0
    finally:
        await served.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def serve(s: ServeSettings) -> int:
    """Load, serve until SIGTERM/SIGINT, return 0. Any failure to start (see the module
    docstring) prints one line to stderr and raises SystemExit(2)."""
    from ..cpu_affinity import pin_from_env
    from ..errors import ModelLoadError

    pin_from_env()  # $INFER_BENCH_CPUS from the launcher, before the model loads (all threads)
    logging.basicConfig(level=getattr(logging, s.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if s.access_log:
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    if s.mode not in MODES:
        _say(f"unknown mode {s.mode!r} (use {' or '.join(MODES)})")
        raise SystemExit(2)
    try:
        served = load_disagg(s) if s.mode == "disagg" else load_mono(s)
    except ModelLoadError as e:
        _say(f"cannot load model: {e}")
        raise SystemExit(2)
    except (ValueError, TypeError) as e:
        _say(str(e))
        raise SystemExit(2)
    rc = asyncio.run(run_served(s, served))
    if rc:
        raise SystemExit(rc)
    return 0
