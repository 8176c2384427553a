"""The router of a disaggregated deployment: `DisaggEngine`, an AsyncEngine look-alike.

Role in the data flow:

    http/serve.py -> app.build_app(DisaggEngine)  (the same HTTP front end as mono: protocol.py, SSE)
      -> DisaggEngine.generate(request_id, prompt_token_ids, SamplingParams)
         1. pick a decode worker by load (fewest requests in flight, then most free KV blocks)
            and a prefill worker (fewest prompt tokens in flight);
         2. "reserve" -> decode worker: allocates the prompt's blocks (its prefix-cache hits are
            shared and not re-sent) and answers the block table and the number of leading tokens
            it already holds, or prefills locally when fewer than --disagg-threshold tokens are
            left to compute (or no prefill worker is alive);
         3. "prefill" -> prefill worker: computes the prompt's KV and first token, streams the KV
            layer by layer into the decode worker's blocks (transport.py), then "kv_done" to the
            decode worker, which continues generation;
         4. the decode worker's outputs (tokens, text, the final timing with every phase) come
            back over its control socket and are yielded as RequestOutputs.
      abort(), stats() (summed over workers), step_trace() (all workers' steps, tagged with
      worker and role), health() (ok / degraded / unavailable).

Workers are separate OS processes (`python -m infer_bench.backends.engine.disagg.worker`), each
with its own engine and torch threads (the deployment's --threads split evenly), pinned to the
CPUs that $INFER_BENCH_CPUS_PREFILL / _DECODE give its role when the launcher sets them
(cpu_affinity.py; `describe()` shows them); each is connected to the router by a socketpair it
inherits (JSON frames, wire.py). The router does no torch work. A worker that dies (its socket
closes) fails its in-flight requests at once (503
before the first token, an error event mid-stream), is no longer chosen, and is reported by
health(); its shared-memory segment is unlinked. shutdown() stops every worker and unlinks every
segment.

With `DisaggOptions.ray_address` the workers are Ray actors instead (ray_placement.py): placed
on nodes with the CPUs/GPUs they ask for, each connects back to the router's TCP listener with
the deployment token (the same frames as over a socketpair), the KV goes over torch.distributed,
and a worker is also dead when its actor's run call ends (a node gone without closing its TCP
connections). shutdown() kills the actors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

from ..cpu_affinity import ENV_SELF, pin_threads, worker_cpus
from ..engine import RequestOutput
from ..http.protocol import RequestError
from ..stats import EngineStats, combine
from .wire import PeerClosed, async_recv, check_token, encode, params_to_dict, unlink_shm

log = logging.getLogger("infer_bench.engine.disagg.router")


@dataclass
class DisaggOptions:
    model: str
    prefill_workers: int = 1
    decode_workers: int = 1
    num_threads: int | None = None          # TOTAL for the deployment; split evenly
    device: str = "cpu"
    dtype: str | None = "auto"
    engine: dict = field(default_factory=dict)   # EngineConfig keyword arguments (per worker)
    transport: str = "shm"                  # shm | dist
    layerwise: bool = True
    kv_link_gbps: float | None = None
    disagg_threshold: int | None = None
    startup_timeout_s: float = 300.0
    link_host: str = "127.0.0.1"
    ray_address: str | None = None          # place the workers on this Ray cluster (transport dist)

    def __post_init__(self) -> None:
        if self.prefill_workers < 1 or self.decode_workers < 1:
            raise ValueError("a disaggregated deployment needs >= 1 prefill and >= 1 decode worker")
        if self.transport not in ("shm", "dist"):
            raise ValueError(f"unknown KV transport {self.transport!r} (shm | dist)")
        if self.kv_link_gbps is not None and self.kv_link_gbps <= 0:
            raise ValueError("kv_link_gbps must be > 0")
        if self.ray_address and self.transport != "dist":
            raise ValueError("workers placed on a Ray cluster may be on different hosts: "
                             "their KV transport must be dist (torch.distributed), not shm")

    def threads_per_worker(self) -> int:
        total = self.num_threads or os.cpu_count() or 1
        return max(1, total // (self.prefill_workers + self.decode_workers))


class WorkerHandle:
    def __init__(self, name: str, role: str, rank: int) -> None:
        self.name = name
        self.role = role
        self.rank = rank
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.ray = None              # ray_placement.RayWorker when placed on a Ray cluster
        self.task_ray: asyncio.Task | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.alive = False
        self.ready: dict = {}
        self.stats = EngineStats()   # the worker's latest snapshot (sent with "ready" and "trace")
        self.trace: deque = deque(maxlen=100_000)
        self.inflight: set[str] = set()
        self.inflight_tokens = 0
        self.shm_name: str | None = None
        self.task: asyncio.Task | None = None
        self.death: str | None = None
        self.cpus: list[int] | None = None   # the CPUs it was pinned to (None: inherited)

    def send(self, msg: dict) -> bool:
        if not self.alive or self.writer is None:
            return False
        try:
            self.writer.write(encode(msg))
            return True
        except (OSError, RuntimeError):
            return False

    def describe(self) -> dict:
        d = {"name": self.name, "role": self.role, "alive": self.alive,
             "pid": self.proc.pid if self.proc else self.pid, "inflight": len(self.inflight)}
        if self.ray is not None:
            d.update(node_id=self.ray.info.get("node_id"), node_ip=self.ray.info.get("node_ip"),
                     hostname=self.ray.info.get("hostname"))
        if self.cpus is not None:
            d["cpus"] = self.cpus
        if self.shm_name:
            d["shm"] = self.shm_name.lstrip("/")
        if self.death:
            d["error"] = self.death
        return d


@dataclass(eq=False)
class _Req:
    rid: str
    prompt: list[int]
    params: object
    arrival: float
    decode: WorkerHandle
    prefill: WorkerHandle | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    prefill_sent: bool = False
    prefill_done: bool = False
    local: bool = False
    yielded: bool = False
    closed: bool = False
    n_output: int = 0


class DisaggEngine:
    """N prefill + M decode worker processes behind the AsyncEngine API (see module docstring)."""

    def __init__(self, opts: DisaggOptions, tokenizer=None) -> None:
        self.opts = opts
        self.tokenizer = tokenizer
        self.token = secrets.token_hex(16)
        self.layerwise = opts.layerwise
        self.disagg_threshold = opts.disagg_threshold
        tag = self.token[:10]
        self.workers: list[WorkerHandle] = []
        for i in range(opts.prefill_workers):
            self.workers.append(WorkerHandle(f"prefill-{i}", "prefill", len(self.workers)))
        for i in range(opts.decode_workers):
            w = WorkerHandle(f"decode-{i}", "decode", len(self.workers))
            if opts.transport == "shm":
                w.shm_name = f"/ib-kv-{tag}-{i}"
            self.workers.append(w)
        self.by_name = {w.name: w for w in self.workers}
        self.reqs: dict[str, _Req] = {}
        self.max_model_len: int | None = None
        self.vocab_size: int | None = None
        self.min_blocks: int | None = None
        self.block_size: int = int(opts.engine.get("block_size") or 16)
        self._shutdown = False
        self.stopping = False      # set by the server on SIGTERM: worker exits are expected
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, asyncio.Future] = {}
        self.placement = None      # ray_placement.RayPlacement with opts.ray_address
        self._server: asyncio.AbstractServer | None = None

    # ---- start-up / shutdown ---------------------------------------------------------------
    async def start(self) -> "DisaggEngine":
        """Start the workers (child processes, or Ray actors with `ray_address`) and wait until
        every one is ready and linked. Raises RuntimeError."""
        self._loop = asyncio.get_running_loop()
        o = self.opts
        threads = o.threads_per_worker()
        try:
            starting = self._start_ray(threads) if o.ray_address else self._spawn_local(threads)
            await asyncio.wait_for(starting, o.startup_timeout_s)
        except (asyncio.TimeoutError, RuntimeError) as e:
            msg = str(e) or f"workers not ready after {o.startup_timeout_s:g} s"
            if not str(e) and self.placement is not None and not self.placement.placed:
                msg = self.placement.unplaced_message()
            await self.shutdown()
            raise RuntimeError(f"disaggregated deployment failed to start: {msg}") from None
        decodes = [w for w in self.workers if w.role == "decode"]
        self.max_model_len = min(w.ready["max_model_len"] for w in self.workers)
        self.vocab_size = self.workers[0].ready["vocab_size"]
        self.min_blocks = min(w.ready["num_blocks"] for w in self.workers)
        self.block_size = self.workers[0].ready["layout"]["block_size"]
        peers = [{"name": w.name, "host": w.ready["host"], "port": w.ready["port"],
                  "shm": w.ready.get("shm"), "layout": w.ready["layout"], "rank": w.rank}
                 for w in decodes]
        futs = []
        for w in self.workers:
            if w.role == "prefill":
                fut = self._loop.create_future()
                self._waiters[w.name + ":peers"] = fut
                futs.append(fut)
                w.send({"type": "peers", "decodes": peers})
        await asyncio.wait_for(asyncio.gather(*futs), 60)
        return self

    def _config(self, w: WorkerHandle, threads: int, dist: dict | None, link_host: str,
                device: str) -> dict:
        o = self.opts
        cfg = {"type": "config", "name": w.name, "role": w.role, "token": self.token,
               "model": o.model, "device": device, "dtype": o.dtype, "engine": o.engine,
               "num_threads": threads, "transport": o.transport, "layerwise": o.layerwise,
               "kv_link_gbps": o.kv_link_gbps, "shm_name": w.shm_name,
               "ranks": {x.name: x.rank for x in self.workers}, "link_host": link_host}
        if dist is not None:
            cfg["dist"] = dict(dist, rank=w.rank)
        return cfg

    def _attach(self, w: WorkerHandle, reader, writer, cfg: dict) -> asyncio.Future:
        """Worker `w` is connected: send its configuration, read its messages; the future
        resolves with its "ready" (or fails when it dies first)."""
        w.reader, w.writer = reader, writer
        w.alive = True
        w.send(cfg)
        fut = self._loop.create_future()
        self._waiters[w.name] = fut
        w.task = asyncio.ensure_future(self._read_loop(w))
        return fut

    async def _spawn_local(self, threads: int) -> None:
        """One child process per worker on this host, each on a socketpair; until all are ready."""
        o = self.opts
        dist = None
        if o.transport == "dist":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist = {"init_method": f"tcp://127.0.0.1:{port}", "world_size": len(self.workers)}
        ready_futs = []
        for w in self.workers:
            a, b = socket.socketpair()
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       TOKENIZERS_PARALLELISM="false")
            w.cpus = worker_cpus(w.role, int(w.name.rsplit("-", 1)[1]))
            if w.cpus is not None:  # the worker pins itself from it; pinned here too, at once
                env[ENV_SELF] = ",".join(map(str, w.cpus))
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "infer_bench.backends.engine.disagg.worker",
                 "--control-fd", str(b.fileno())], pass_fds=[b.fileno()], env=env)
            b.close()
            if w.cpus is not None:
                try:
                    pin_threads(w.cpus, w.proc.pid)
                except OSError as e:
                    log.warning("worker %s not pinned to CPUs %s: %s", w.name, w.cpus, e)
            reader, writer = await asyncio.open_connection(sock=a)
            ready_futs.append(self._attach(w, reader, writer,
                                           self._config(w, threads, dist, o.link_host, o.device)))
        await asyncio.gather(*ready_futs)

    async def _start_ray(self, threads: int) -> None:
        """One Ray actor per worker on nodes with the resources (ray_placement.py); each
        connects back to this router over TCP with the deployment token; until all are ready."""
        from .ray_placement import RayPlacement, actor_device, worker_resources

        o = self.opts
        self.placement = RayPlacement(o.ray_address, o.startup_timeout_s)
        infos = await asyncio.to_thread(
            self.placement.place, [w.name for w in self.workers],
            [worker_resources(o.device, threads) for _ in self.workers])
        rank0 = infos[self.workers[0].name]
        dist = {"init_method": f"tcp://{rank0['node_ip']}:{rank0['free_port']}",
                "world_size": len(self.workers)}
        hellos = {w.name: self._loop.create_future() for w in self.workers}

        async def on_connect(reader, writer) -> None:
            try:
                msg = await asyncio.wait_for(async_recv(reader), 30)
            except (asyncio.TimeoutError, PeerClosed, ConnectionError, OSError, ValueError):
                msg = {}
            fut = hellos.get(str(msg.get("name")))
            if msg.get("type") != "hello" or not check_token(msg.get("token"), self.token) \
                    or fut is None or fut.done():
                log.warning("refused a worker connection without the deployment token")
                writer.close()
                return
            fut.set_result((reader, writer))

        self._server = await asyncio.start_server(on_connect, self.placement.router_ip, 0)
        port = self._server.sockets[0].getsockname()[1]
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "TOKENIZERS_PARALLELISM": "false"}

        async def bring_up(w: WorkerHandle) -> None:
            w.ray = self.placement.run(w.name, port, self.token, env, self._loop)
            w.pid = w.ray.info.get("pid")
            hello = hellos[w.name]
            await asyncio.wait([hello, w.ray.done], return_when=asyncio.FIRST_COMPLETED)
            if not hello.done():
                raise RuntimeError(f"worker {w.name} {w.ray.done.result()}")
            reader, writer = hello.result()
            ready = self._attach(w, reader, writer, self._config(
                w, threads, dist, w.ray.info["node_ip"], actor_device(o.device)))
            w.task_ray = asyncio.ensure_future(self._watch_ray(w))
            await ready

        tasks = [asyncio.ensure_future(bring_up(w)) for w in self.workers]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed (or the start was cancelled): stop waiting for the others
            for t in tasks:
                t.cancel()

    async def _watch_ray(self, w: WorkerHandle) -> None:
        """The actor's run call ended (or its node is gone): the worker is dead."""
        try:
            why = await w.ray.done
        except asyncio.CancelledError:
            return
        self._worker_died(w, why)

    async def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        for req in list(self.reqs.values()):
            self._fail(req, RuntimeError("the engine was shut down"))
        if self.placement is not None:  # Ray actors: killed (an exit Ray expects), not told
            await asyncio.to_thread(self.placement.kill)
        for w in self.workers:
            if w.ray is None:
                w.send({"type": "shutdown"})
            if w.writer is not None:
                try:
                    w.writer.close()
                except Exception:  # noqa: BLE001
                    pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if w.proc.poll() is None:
                w.proc.kill()
                await asyncio.to_thread(w.proc.wait, 5)
            w.alive = False
        ends = [w.ray.done for w in self.workers if w.ray is not None]
        if ends:
            await asyncio.wait(ends, timeout=max(0.1, deadline - time.monotonic()))
        for w in self.workers:
            if w.ray is not None:
                w.alive = False
        if self.placement is not None:
            await asyncio.to_thread(self.placement.stop)
        if self._server is not None:
            self._server.close()
        for w in self.workers:
            for task in (w.task, w.task_ray):
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
            if w.shm_name:
                unlink_shm(w.shm_name)

    # ---- worker messages -------------------------------------------------------------------
    async def _read_loop(self, w: WorkerHandle) -> None:
        try:
            while True:
                msg = await async_recv(w.reader)
                self._on_message(w, msg)
        except (PeerClosed, ConnectionError, OSError, ValueError) as e:
            reason = f"exited with code {w.proc.poll()}" if w.proc and w.proc.poll() is not None \
                else f"control connection lost ({e})"
            self._worker_died(w, reason)
        except asyncio.CancelledError:
            pass

    def _on_message(self, w: WorkerHandle, msg: dict) -> None:
        t = msg.get("type")
        if t == "outs":
            for it in msg["items"]:
                req = self.reqs.get(it["rid"])
                if req is None or req.decode is not w:
                    continue
                timing = it.get("timing")
                if timing is not None:
                    timing.setdefault("disagg", {})
                out = RequestOutput(it["rid"], it["ids"], it["text"], it["finished"], it["reason"],
                                    it["n_prompt"], it["n_output"], timing)
                req.yielded = True
                req.n_output = it["n_output"]
                req.queue.put_nowait(out)
                if it["finished"]:
                    self._release(req)
        elif t == "reserved":
            req = self.reqs.get(msg["rid"])
            if req is None or req.decode is not w:
                return
            if msg.get("local"):
                req.local = True
                if req.prefill is not None:
                    self._unload_prefill(req)
                    req.prefill = None
                return
            p = req.prefill
            if p is None or not p.alive:
                w.send({"type": "abort", "rid": req.rid, "immediate": True})
                self._fail(req, self._unavailable(f"prefill worker {p.name if p else '?'} is down"))
                return
            req.prefill_sent = True
            p.send({"type": "prefill", "rid": req.rid, "prompt": req.prompt,
                    "params": params_to_dict(req.params), "dest": w.name,
                    "skip": msg["skip"], "dst_table": msg.get("block_table"),
                    "layerwise": self.layerwise})
        elif t == "prefill_done":
            req = self.reqs.get(msg["rid"])
            if req is not None and req.prefill is w:
                req.prefill_done = True
                self._unload_prefill(req)
        elif t == "error":
            req = self.reqs.get(msg["rid"])
            if req is None:
                return
            err_msg = f"{w.name}: {msg.get('message')}"
            if w.role == "prefill" and req.decode.alive:
                req.decode.send({"type": "abort", "rid": req.rid, "immediate": False})
            elif w.role == "decode" and req.prefill is not None and req.prefill_sent \
                    and not req.prefill_done:
                req.prefill.send({"type": "abort", "rid": req.rid})
            if not req.yielded and "prompt" in str(msg.get("message")):
                self._fail(req, ValueError(msg.get("message")))
            else:
                self._fail(req, RuntimeError(err_msg) if req.yielded else
                           RequestError(500, err_msg, type="server_error"))
        elif t == "trace":
            for r in msg.get("rows", ()):
                r["worker"], r["role"] = w.name, w.role
                w.trace.append(r)
            if msg.get("stats"):
                w.stats = EngineStats.from_dict(msg["stats"])
        elif t == "ready":
            w.ready = msg
            w.stats = EngineStats.from_dict(msg["stats"])
            fut = self._waiters.pop(w.name, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif t == "peers_ok":
            fut = self._waiters.pop(w.name + ":peers", None)
            if fut is not None and not fut.done():
                fut.set_result(True)
        elif t == "fatal":
            w.death = msg.get("message")
        elif t == "debug_kv_ok":
            fut = self._waiters.pop("debug_kv:" + msg["path"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _worker_died(self, w: WorkerHandle, reason: str) -> None:
        if not w.alive:
            return
        w.alive = False
        w.death = w.death or reason
        if w.shm_name:
            unlink_shm(w.shm_name)
        for key in (w.name, w.name + ":peers"):
            fut = self._waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError(f"worker {w.name} {w.death}"))
        if self._shutdown or self.stopping:
            return
        log.error("worker %s died (%s); failing its in-flight requests", w.name, w.death)
        for other in self.workers:
            if other.alive:
                other.send({"type": "peer_dead", "name": w.name})
        for req in list(self.reqs.values()):
            if req.decode is w:
                if req.prefill is not None and req.prefill_sent and not req.prefill_done:
                    req.prefill.send({"type": "abort", "rid": req.rid})
                self._fail(req, self._dead_error(req, w))
            elif req.prefill is w and not req.prefill_done and not req.local:
                req.decode.send({"type": "abort", "rid": req.rid, "immediate": True})
                self._fail(req, self._dead_error(req, w))

    def _dead_error(self, req: _Req, w: WorkerHandle) -> BaseException:
        msg = f"{w.role} worker {w.name} died ({w.death}); request {req.rid} failed"
        return RuntimeError(msg) if req.yielded else self._unavailable(msg)

    @staticmethod
    def _unavailable(msg: str) -> RequestError:
        return RequestError(503, msg, type="server_error", code="worker_unavailable",
                            headers={"Retry-After": "1"})

    def _fail(self, req: _Req, exc: BaseException) -> None:
        if req.closed:
            return
        req.queue.put_nowait(exc)
        self._release(req)

    def _release(self, req: _Req) -> None:
        if req.closed:
            return
        req.closed = True
        req.decode.inflight.discard(req.rid)
        self._unload_prefill(req)

    def _unload_prefill(self, req: _Req) -> None:
        p = req.prefill
        if p is not None and req.rid in p.inflight:
            p.inflight.discard(req.rid)
            p.inflight_tokens -= len(req.prompt)

    # ---- scheduling ------------------------------------------------------------------------
    def _pick_decode(self) -> WorkerHandle | None:
        alive = [w for w in self.workers if w.role == "decode" and w.alive]
        if not alive:
            return None
        return min(alive, key=lambda w: (len(w.inflight), -w.stats.kv_blocks_free,
                                         w.rank))

    def _pick_prefill(self) -> WorkerHandle | None:
        alive = [w for w in self.workers if w.role == "prefill" and w.alive]
        if not alive:
            return None
        return min(alive, key=lambda w: (w.inflight_tokens, len(w.inflight), w.rank))

    def validate_request(self, request_id: str, prompt: list[int], params) -> None:
        from ..sampling import SamplingParams

        if not isinstance(params, SamplingParams):
            raise ValueError("params must be a SamplingParams")
        if not prompt:
            raise ValueError("the prompt is empty")
        vocab = self.vocab_size
        for t in prompt:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise ValueError(f"prompt token {t!r} is not an id in [0, {vocab})")
        n = len(prompt)
        if n >= self.max_model_len:
            raise ValueError(f"the prompt has {n} tokens; the model's context is "
                             f"{self.max_model_len} tokens (prompt + at least 1 output must fit)")
        eng = self.opts.engine
        if eng.get("enable_chunked_prefill") is False and n > int(eng.get("max_num_batched_tokens") or 512):
            raise ValueError(f"the prompt has {n} tokens, more than max_num_batched_tokens="
                             f"{eng.get('max_num_batched_tokens') or 512} (chunked prefill is off)")
        need = -(-(n + 1) // self.block_size)
        if need > self.min_blocks:
            raise ValueError(f"the prompt needs {need} KV blocks; the pool has {self.min_blocks}")

    # ---- the AsyncEngine API ---------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int], params=None,
                       *, prefill_worker: str | None = None, decode_worker: str | None = None,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs (the last has finished=True and the timing). Raises
        ValueError if it can never run, RequestError(503) if no worker of a role is alive or a
        worker dies before the first token, RuntimeError if one dies later.
        prefill_worker / decode_worker pin the choice (tests, benchmarks)."""
        from ..sampling import SamplingParams

        params = params or SamplingParams()
        prompt = list(prompt_token_ids)
        self.validate_request(request_id, prompt, params)
        if self._shutdown:
            raise RuntimeError("the engine is shut down")
        if request_id in self.reqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        d = self.by_name[decode_worker] if decode_worker else self._pick_decode()
        if d is None or not d.alive:
            raise self._unavailable("no decode worker is alive")
        p = self.by_name[prefill_worker] if prefill_worker else self._pick_prefill()
        if p is not None and not p.alive:
            p = None
        req = _Req(request_id, prompt, params,
                   time.perf_counter() if arrival_time is None else arrival_time, d, p)
        self.reqs[request_id] = req
        d.inflight.add(request_id)
        if p is not None:
            p.inflight.add(request_id)
            p.inflight_tokens += len(prompt)
        d.send({"type": "reserve", "rid": request_id, "prompt": prompt,
                "params": params_to_dict(params), "arrival": req.arrival,
                "threshold": self.disagg_threshold, "force_local": p is None,
                "prefill_worker": p.name if p else None})
        finished = False
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finished:
                    finished = True
                    if item.timing is not None:
                        dg = item.timing.setdefault("disagg", {})
                        dg.setdefault("decode_worker", d.name)
                        dg.setdefault("prefill_worker", None if req.local else (p.name if p else None))
                        dg.setdefault("local_prefill", req.local)
                yield item
                if finished:
                    return
        finally:
            self.reqs.pop(request_id, None)
            if not finished:
                self.abort(request_id, _req=req)
            self._release(req)

    def abort(self, request_id: str, _req: _Req | None = None) -> None:
        req = _req or self.reqs.get(request_id)
        if req is None:
            return
        if req.prefill is not None and req.prefill_sent and not req.prefill_done:
            req.prefill.send({"type": "abort", "rid": request_id})
        req.decode.send({"type": "abort", "rid": request_id, "immediate": not req.prefill_sent
                         or req.prefill_done or not (req.prefill and req.prefill.alive)})
        if _req is None and not req.closed:  # like AsyncEngine: a final "abort" output
            req.queue.put_nowait(RequestOutput(request_id, [], "", True, "abort", len(req.prompt),
                                               req.n_output, None))
            self._release(req)

    # ---- introspection ---------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        roles = {}
        for role in ("prefill", "decode"):
            ws = [w for w in self.workers if w.role == role]
            roles[role] = {"alive": sum(w.alive for w in ws), "total": len(ws)}
        if self._shutdown:
            status, code = "draining", 503
        elif roles["decode"]["alive"] == 0:
            status, code = "unavailable", 503
        elif roles["prefill"]["alive"] == 0:
            # decode workers prefill locally: still serving, but not disaggregated
            status, code = "degraded", 200
        elif any(r["alive"] < r["total"] for r in roles.values()):
            status, code = "degraded", 200
        else:
            status, code = "ok", 200
        return code, {"status": status, "mode": "disagg", "roles": roles,
                      "workers": [w.describe() for w in self.workers]}

    def stats(self) -> EngineStats:
        total = combine([w.stats for w in self.workers if w.alive])
        total.workers_alive_prefill = sum(1 for w in self.workers if w.role == "prefill" and w.alive)
        total.workers_alive_decode = sum(1 for w in self.workers if w.role == "decode" and w.alive)
        return total

    def config_report(self) -> dict:
        """The deployment's configuration: the router's options and each worker's own report."""
        o = self.opts
        return {"mode": "disagg", "prefill_workers": o.prefill_workers,
                "decode_workers": o.decode_workers, "num_threads": o.num_threads,
                "threads_per_worker": o.threads_per_worker(), "transport": o.transport,
                "layerwise": self.layerwise, "kv_link_gbps": o.kv_link_gbps,
                "disagg_threshold": self.disagg_threshold, "ray_address": o.ray_address,
                "placement": {w.name: {k: w.ray.info.get(k) for k in
                                       ("node_id", "node_ip", "hostname", "pid")}
                              for w in self.workers if w.ray is not None} or None,
                "workers": {w.name: w.ready.get("config") for w in self.workers}}

    def step_trace(self) -> list[dict]:
        rows = [r for w in self.workers for r in list(w.trace)]
        rows.sort(key=lambda r: r.get("t_start", 0.0))
        return rows

    async def debug_dump_kv(self, worker: str, token_ids: list[int], path: str) -> dict:
        """Ask a decode worker to np.save the K/V of its cached blocks for token_ids (tests)."""
        fut = self._loop.create_future()
        self._waiters["debug_kv:" + path] = fut
        self.by_name[worker].send({"type": "debug_kv", "token_ids": list(token_ids), "path": path})
        return await asyncio.wait_for(fut, 30)
