"""`serve --mode disagg`: the router process of a disaggregated deployment.

Role in the data flow:

    backends/deployment.py -> `python -m infer_bench.backends.engine.http.serve --mode disagg
        --prefill-workers N --decode-workers M --num-threads T [--kv-transport shm|dist]
        [--no-layerwise] [--kv-link-gbps G] [--disagg-threshold K] ...`
      -> serve.run_server() sees mode "disagg" and calls run_disagg_server(cfg) (here)
      -> tokenizer and config only (the router runs no model) -> DisaggEngine.start() spawns the
         N + M workers (T threads split evenly) and waits until they are ready and linked
      -> server.build_app(DisaggEngine) (same routes, parsing, SSE as mono) with /health answered
         by DisaggEngine.health() (200 ok / 200 degraded / 503 unavailable) -> listen -> prints
         "infer-bench engine ready: URL" -> SIGTERM/SIGINT: stop accepting, abort in-flight
         requests, stop every worker, unlink every shared-memory segment, exit 0.

`add_disagg_arguments` / `disagg_options_from_args` give serve.py's parser the disagg-only flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("infer_bench.engine.disagg.serve")


def add_disagg_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("disaggregated serving (--mode disagg)")
    g.add_argument("--kv-transport", choices=["shm", "dist"], default="shm",
                   help="KV handoff: shm = shared memory on one host (default); dist = "
                        "torch.distributed point-to-point (gloo on CPU, NCCL on GPU)")
    g.add_argument("--no-layerwise", action="store_true",
                   help="send the KV after the whole prefill instead of layer by layer")
    g.add_argument("--kv-link-gbps", type=float, default=None,
                   help="emulate a KV link of this many Gb/s (e.g. 25, 100, 400)")
    g.add_argument("--disagg-threshold", type=int, default=None,
                   help="prefill prompts with fewer uncached tokens than this on the decode "
                        "worker (conditional disaggregation)")


def disagg_options_from_args(a: argparse.Namespace) -> dict:
    return {"transport": getattr(a, "kv_transport", "shm"),
            "layerwise": not getattr(a, "no_layerwise", False),
            "kv_link_gbps": getattr(a, "kv_link_gbps", None),
            "disagg_threshold": getattr(a, "disagg_threshold", None)}


def load_frontend(source: str):
    """(tokenizer, description) without loading weights where the source allows it."""
    from .. import model_store
    from ..config import ModelConfig
    from ..loader import load_model
    from ..tokenizer import Tokenizer

    path = Path(source).expanduser()
    directory = None
    if path.is_dir():
        directory, desc = path, f"{path}"
    elif source in model_store.REGISTRY:
        directory, desc = Path(model_store.ensure_model(source)), model_store.describe(source)
    if directory is None or not (directory / "config.json").exists():
        loaded = load_model(source, "cpu")
        return loaded.tokenizer, loaded.source_description
    cfg = ModelConfig.from_hf_dict(json.loads((directory / "config.json").read_text()))
    return Tokenizer.from_pretrained(directory, extra_eos_ids=cfg.eos_token_ids), desc


def make_options(cfg):
    """ServerConfig -> DisaggOptions."""
    import dataclasses

    from ..http.serve import make_engine_config
    from .router import DisaggOptions

    econf = dataclasses.asdict(make_engine_config(cfg))
    econf.pop("num_threads", None)
    econf.pop("dtype", None)
    extra = dict(getattr(cfg, "disagg", None) or {})
    return DisaggOptions(model=cfg.model, prefill_workers=cfg.prefill_workers,
                         decode_workers=cfg.decode_workers, num_threads=cfg.num_threads,
                         device=cfg.device, dtype=cfg.dtype, engine=econf, **extra)


def install_health(app, engine) -> None:
    from aiohttp import web

    from ..http.app import get_state

    @web.middleware
    async def disagg_health(request, handler):
        if request.path == "/health" and request.method in ("GET", "HEAD") \
                and not get_state(request.app).draining:
            code, body = engine.health()
            return web.json_response(body, status=code)
        return await handler(request)

    app.middlewares.append(disagg_health)


async def _serve(cfg, opts, tokenizer, desc: str) -> int:
    from ..http.serve import READY_PREFIX, default_model_names, resolve_api_key
    from ..http.app import build_app, start_site, stop_site
    from .router import DisaggEngine

    engine = DisaggEngine(opts, tokenizer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def _on_signal(signum: int) -> None:
        received.append(signum)
        engine.stopping = True
        if len(received) > 1:
            os._exit(130 if signum == signal.SIGINT else 143)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)
    try:
        start = asyncio.ensure_future(engine.start())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([start, waiter], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            await engine.shutdown()
            return 0
        waiter.cancel()
        try:
            start.result()
        except Exception as e:  # noqa: BLE001
            print(f"infer-bench serve: {e}", file=sys.stderr, flush=True)
            return 2
        name, extra = default_model_names(cfg)
        api_key = resolve_api_key(cfg)
        app = build_app(engine, tokenizer, name, extra_model_names=extra, model_root=desc,
                        max_body_bytes=cfg.max_body_bytes, api_key=api_key,
                        max_waiting_requests=cfg.max_waiting_requests or None,
                        request_timeout_s=cfg.request_timeout_s or None,
                        body_timeout_s=cfg.body_timeout_s or None)
        install_health(app, engine)
        try:
            runner, url = await start_site(app, cfg.host, cfg.port, access_log=cfg.access_log)
        except OSError as e:
            print(f"infer-bench serve: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}",
                  file=sys.stderr, flush=True)
            await engine.shutdown()
            return 2
        o = opts
        print(f"{READY_PREFIX} {url} (model '{name}': {desc}; disagg {o.prefill_workers}P"
              f"{o.decode_workers}D, {o.threads_per_worker()} thread(s)/worker, kv transport "
              f"{o.transport}{', layer-wise' if o.layerwise else ''}"
              f"{f', link {o.kv_link_gbps:g} Gb/s' if o.kv_link_gbps else ''})", flush=True)
        await stop.wait()
        print("infer-bench serve: shutting down", file=sys.stderr, flush=True)
        aborted = await stop_site(app, runner)
        if aborted:
            print(f"infer-bench serve: aborted {len(aborted)} in-flight request(s)",
                  file=sys.stderr, flush=True)
        await engine.shutdown()
        return 0
    finally:
        await engine.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_disagg_server(cfg) -> int:
    """serve.run_server's disagg branch: raise SystemExit(2) on a model or port problem."""
    from ..loader import ModelLoadError

    try:
        opts = make_options(cfg)
    except (ValueError, TypeError) as e:
        print(f"infer-bench serve: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:
        tokenizer, desc = load_frontend(cfg.model)
    except ModelLoadError as e:
        print(f"infer-bench serve: cannot load model: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except Exception as e:  # noqa: BLE001
        print(f"infer-bench serve: cannot load model: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        raise SystemExit(2)
    rc = asyncio.run(_serve(cfg, opts, tokenizer, desc))
    if rc:
        raise SystemExit(rc)
    return 0
