"""A prefill or decode worker of a disaggregated deployment: one OS process, one engine.

Role in the data flow (see router.py for the whole picture):

    router --socketpair, JSON frames--> this process (main thread: reads control messages and
    hands them to the engine thread as jobs)
      prefill role: "prefill" -> `WorkerEngine.start_export()`: the request runs as a prefill-only
         sequence (max_tokens=1); the engine's forward pass calls the layer hook after each layer's
         K/V write, which queues "layer i, tokens [lo, hi)" for the sender thread (layer-wise), or
         all layers once the prompt is done (--no-layerwise); the sender moves the K/V with the
         transport (transport.py: copy into the decode worker's shared-memory pool, or
         torch.distributed send) paced by the link throttle, then sends "kv_done" with the first
         token and the prefill timing to the decode worker over the link socket, and the blocks
         (pinned meanwhile) are released.
      decode role: "reserve" -> allocate blocks for the prompt (prefix-cache hits shared and not
         re-sent: the reply says how many leading tokens the decode worker already holds), or,
         when fewer than --disagg-threshold tokens would be computed, prefill it locally;
         "kv_done" from the prefill worker -> `commit_import()`: the sequence joins the running
         batch with its first token, and decodes; outputs (tokens, text, final timing) go to the
         router.
    Step traces and engine stats are pushed to the router every 0.25 s (and when going idle).

Started by the router as `python -m infer_bench.backends.engine.disagg.worker --control-fd N`, or
on a Ray cluster as an actor (ray_placement.py) that connects back to the router over TCP; both
then call `run_worker` on the control connection, whose first message is the configuration. It exits when the router's socket closes, on
"shutdown" or on SIGTERM, unlinking the shared-memory segment it created.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..cpu_affinity import pin_from_env
from ..engine import EngineConfig, LLMEngine
from ..sequence import Sequence, SequenceStatus
from ..stats import DisaggWorkerStats, EngineStats
from .transport import (MAX_SLICE_RUNS, DistGroup, KVLayout, LinkThrottle, ShmPool, copy_runs,
                        gather_runs, run_indices,
                        scatter_runs, slot_runs)
from .wire import MsgSocket, PeerClosed, check_token, params_from_dict, recv_msg

log = logging.getLogger("infer_bench.engine.disagg.worker")

TRACE_PUSH_S = 0.25


# ---- the engine: export (prefill role) and import (decode role) --------------------------------

@dataclass(eq=False)
class Export:
    """A prefill-only request whose K/V goes to a decode worker."""
    rid: str
    dest: str
    prompt_len: int
    skip: int                         # leading tokens the decode worker already holds
    dst_table: list[int] | None       # decode worker's block table (shm: one-sided copy)
    layerwise: bool
    arrival: float
    seq: Sequence | None = None
    sent_upto: int = 0
    pinned: list[int] = field(default_factory=list)
    pending: list[tuple[int, int, list]] = field(default_factory=list)  # non-layerwise ranges
    cancelled: bool = False
    released: bool = False
    nbytes: int = 0
    busy_s: float = 0.0
    idx_cache: dict = field(default_factory=dict)   # (lo, hi) -> run_indices (fragmented runs)


class _LayerHookAttn:
    """Wraps the step's attention context: after layer i's attend (its K/V is written), hook(i)."""

    def __init__(self, attn, hook) -> None:
        self._attn = attn
        self._hook = hook

    def attend(self, layer_idx, q, k, v):
        out = self._attn.attend(layer_idx, q, k, v)
        self._hook(layer_idx)
        return out

    def __getattr__(self, name):
        return getattr(self._attn, name)


class _HookedModel:
    """The model as the runner sees it; wraps `attn` while the engine has a layer hook."""

    def __init__(self, model, engine: "WorkerEngine") -> None:
        self._model = model
        self._engine = engine

    def __call__(self, input_ids, positions, attn, *args, **kwargs):
        hook = self._engine.layer_hook
        if hook is not None:
            attn = _LayerHookAttn(attn, hook)
        return self._model(input_ids, positions, attn, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class WorkerEngine(LLMEngine):
    """LLMEngine plus prefill-only requests that export their K/V and requests that start from
    imported K/V. Everything here runs on the engine thread (the block manager is not locked)."""

    def __init__(self, config: EngineConfig, loaded, name: str = "worker", role: str = "decode",
                 kv_tensor: torch.Tensor | None = None) -> None:
        super().__init__(config, loaded)
        self.name = name
        self.role = role
        if kv_tensor is not None:  # e.g. a shared-memory pool the prefill workers write into
            assert kv_tensor.shape == self.cache.kv.shape and kv_tensor.dtype == self.cache.kv.dtype
            self.cache.kv = kv_tensor
        self.layout = KVLayout.of_cache(self.cache)
        self.exports: dict[str, Export] = {}
        self.imports: dict[str, Sequence] = {}
        self.pending_reserves: deque[Sequence] = deque()
        self.layer_hook = None
        self.on_layer = None          # callable(export, layer, lo, hi, runs) (sender queue)
        self.on_export_ranges = None  # callable(export, [(lo, hi, runs)]) all layers at once
        self._step_ranges: list = []
        self.runner.model = _HookedModel(self.runner.model, self)
        self._orig_run = self.runner.run
        self.runner.run = self._run_with_exports

    # ---- common ----------------------------------------------------------------------------
    def make_sequence(self, rid: str, prompt: list[int], params, arrival: float | None) -> Sequence:
        """What add_request does, without queueing the sequence (raises ValueError)."""
        if rid in self.seqs or rid in self.imports or rid in self.exports:
            raise ValueError(f"request id {rid!r} is already in use")
        self.validate_request(rid, prompt, params)
        seq = Sequence.create(rid, prompt, params)
        if arrival is not None:
            seq.arrival_time = arrival
        if self.tokenizer is not None:
            from ..tokenizer import IncrementalDetokenizer
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt)
        seq.disagg = None
        return seq

    def _timing(self, seq: Sequence) -> dict:  # overrides the base staticmethod
        t = LLMEngine._timing(seq)
        info = getattr(seq, "disagg", None) or {}
        steps = list(seq.token_steps)
        workers = [self.name] * len(steps)
        batches = {f"{self.name}:{s}": {"prefill_tokens": a, "decode_batch": b}
                   for s, (a, b) in seq.step_batches.items() if s >= 0}
        p = info.get("prefill")
        t.update(transfer_s=0.0, transfer_bytes=0, admission_s=0.0,
                 cached_tokens=t.get("num_cached_tokens", 0),
                 disagg={"prefill_worker": None, "decode_worker": self.name,
                         "local_prefill": True})
        if p is not None and steps:
            steps[0] = p["step"]
            workers[0] = p["worker"]
            batches[f"{p['worker']}:{p['step']}"] = {"prefill_tokens": p["prefill_tokens"],
                                                     "decode_batch": p["decode_batch"]}
            arrival, reserved, rx = info["arrival"], info["reserved"], info["kv_rx"]
            first, fin = seq.first_token_time, seq.finished_time

            def d(a, b):
                return None if a is None or b is None else max(b - a, 0.0)
            t.update(
                arrival=arrival, first_scheduled=p["first_scheduled"], first_token=first,
                queue_s=d(reserved, p["first_scheduled"]),
                prefill_s=d(p["first_scheduled"], p["first_token"]),
                transfer_s=d(p["first_token"], rx),
                transfer_busy_s=p["busy_s"],
                transfer_bytes=p["nbytes"],
                admission_s=(d(arrival, reserved) or 0.0) + (d(rx, first) or 0.0),
                decode_s=d(first, fin), e2e_s=d(arrival, fin),
                cached_tokens=p["cached_tokens"], decode_cached_tokens=info["skip"],
                num_cached_tokens=p["cached_tokens"],
                preemptions=p["preemptions"] + seq.num_preemptions,
                disagg={"prefill_worker": p["worker"], "decode_worker": self.name,
                        "local_prefill": False, "layerwise": p.get("layerwise")},
            )
        elif info.get("local_reason"):
            t["disagg"]["local_reason"] = info["local_reason"]
        t["token_steps"] = steps
        t["token_workers"] = workers
        t["steps"] = batches
        return t

    # ---- prefill role: export --------------------------------------------------------------
    def start_export(self, ex: Export, prompt: list[int], params) -> None:
        p1 = dataclasses.replace(params, max_tokens=1, stop=[], stop_token_ids=[])
        seq = self.make_sequence(ex.rid, prompt, p1, ex.arrival)
        ex.seq = seq
        ex.sent_upto = ex.skip
        self.exports[ex.rid] = ex
        self.seqs[ex.rid] = seq
        self.num_prompt_tokens += seq.num_prompt_tokens
        self.scheduler.add(seq)

    def _run_with_exports(self, scheduled):
        self._step_ranges = []
        if self.exports:
            bs = self.cache.block_size
            for seq, n in scheduled:
                ex = self.exports.get(seq.request_id)
                if ex is None or ex.seq is not seq or ex.cancelled:
                    continue
                have = set(ex.pinned)
                for b in seq.block_table:   # keep them until the sender has read them
                    if b not in have:
                        self.block_manager._ref(b)
                        ex.pinned.append(b)
                lo = max(ex.sent_upto, ex.skip)
                hi = min(seq.num_computed_tokens + n, ex.prompt_len)
                if hi <= lo:
                    continue
                runs = slot_runs(seq.block_table, ex.dst_table, lo, hi, bs)
                ex.sent_upto = hi
                if ex.layerwise:
                    self._step_ranges.append((ex, lo, hi, runs))
                else:
                    ex.pending.append((lo, hi, runs))
        self.layer_hook = self._on_layer if self._step_ranges else None
        try:
            return self._orig_run(scheduled)
        finally:
            self.layer_hook = None
            for ex in list(self.exports.values()):
                if not ex.layerwise and ex.pending and ex.sent_upto >= ex.prompt_len:
                    ranges, ex.pending = ex.pending, []
                    if self.on_export_ranges is not None:
                        self.on_export_ranges(ex, ranges)

    def _on_layer(self, layer: int) -> None:
        if self.on_layer is not None:
            for ex, lo, hi, runs in self._step_ranges:
                self.on_layer(ex, layer, lo, hi, runs)

    def release_export(self, ex: Export) -> None:
        """Drop the pins (engine thread, after the sender is done with the blocks)."""
        if ex.released:
            return
        ex.released = True
        for b in ex.pinned:
            self.block_manager._unref(b)
        ex.pinned = []
        if self.exports.get(ex.rid) is ex:
            del self.exports[ex.rid]

    # ---- decode role: import ---------------------------------------------------------------
    def request_reserve(self, seq: Sequence, threshold: int | None, force_local: bool) -> str | None:
        """Queue a reservation; or run locally: returns the reason, the sequence then is a
        normal request of this engine."""
        reason = None
        if force_local:
            reason = "no prefill worker"
        elif threshold:
            uncached = seq.num_tokens - self.block_manager.num_prefix_hit_tokens(seq)
            if uncached < threshold:
                reason = f"{uncached} uncached tokens < threshold {threshold}"
        if reason is not None:
            seq.disagg = {"local_reason": reason}
            self.seqs[seq.request_id] = seq
            self.num_prompt_tokens += seq.num_prompt_tokens
            self.scheduler.add(seq)
            return reason
        self.pending_reserves.append(seq)
        return None

    def try_reserves(self) -> list[Sequence]:
        """Allocate blocks for queued reservations (FIFO) while room allows; the reserved ones."""
        done = []
        while self.pending_reserves:
            seq = self.pending_reserves[0]
            if len(self.scheduler.running) + len(self.imports) >= self.config.max_num_seqs:
                break
            if not self.block_manager.allocate(seq):
                break
            self.pending_reserves.popleft()
            seq.disagg["reserved"] = time.perf_counter()
            seq.disagg["skip"] = seq.num_computed_tokens
            self.imports[seq.request_id] = seq
            done.append(seq)
        return done

    def commit_import(self, rid: str, token: int, pinfo: dict):
        """The K/V of `rid`'s prompt is in the pool: join the running batch with its first token.
        Returns the first RequestOutput (None if the import was aborted meanwhile)."""
        seq = self.imports.pop(rid, None)
        if seq is None:
            return None
        if seq.disagg.get("aborted"):
            self.block_manager.free(seq)
            return None
        seq.disagg["kv_rx"] = time.perf_counter()
        seq.disagg["prefill"] = pinfo
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.status = SequenceStatus.RUNNING
        seq.first_scheduled_time = time.perf_counter()
        self.scheduler.running.append(seq)
        self.seqs[rid] = seq
        self.num_prompt_tokens += seq.num_prompt_tokens
        self.block_manager.cache_full_blocks(seq)
        if seq.generator is not None and not seq.params.greedy:
            # the prefill worker drew the first token: advance this generator by that one draw
            torch.empty(self.model_config.vocab_size).exponential_(generator=seq.generator)
        out = self._append_token(seq, token, -1, pinfo["prefill_tokens"], pinfo["decode_batch"])
        seq.step_batches.pop(-1, None)
        return out

    def drop_import(self, rid: str) -> bool:
        seq = self.imports.pop(rid, None)
        if seq is None:
            return False
        self.block_manager.free(seq)
        return True

    def abort_import(self, rid: str, immediate: bool) -> bool:
        for seq in list(self.pending_reserves):
            if seq.request_id == rid:
                self.pending_reserves.remove(seq)
                return True
        seq = self.imports.get(rid)
        if seq is None:
            return False
        if immediate:
            self.drop_import(rid)
        else:  # the prefill worker may still be writing: free on its kv_done / kv_cancel
            seq.disagg["aborted"] = True
        return True

    def drop_imports_from(self, prefill_worker: str) -> list[str]:
        rids = [r for r, s in self.imports.items() if s.disagg.get("prefill_worker") == prefill_worker]
        for r in rids:
            self.drop_import(r)
        return rids

    def stats(self) -> EngineStats:
        s = super().stats()
        s.disagg = DisaggWorkerStats(imports=len(self.imports),
                                     pending_reserves=len(self.pending_reserves),
                                     exports=len(self.exports))
        return s

    def dump_cached_kv(self, token_ids: list[int]) -> torch.Tensor:
        """K/V [L, 2, Hkv, n_full_blocks * bs, D] of the longest cached full-block prefix."""
        ids, _ = self.block_manager._lookup(list(token_ids) + [0])
        bs = self.cache.block_size
        slots = torch.tensor([b * bs + o for b in ids for o in range(bs)], dtype=torch.long)
        return self.cache.kv.index_select(3, slots).cpu().clone()


# ---- links to decode workers (prefill side) ----------------------------------------------------

class Link:
    """This prefill worker's connection to one decode worker: a control socket plus a data path."""

    def __init__(self, info: dict, token: str, me: str, src_kv: torch.Tensor, transport: str,
                 group: DistGroup | None) -> None:
        self.name = info["name"]
        self.alive = True
        self.transport = transport
        self.src_kv = src_kv
        self.group = group
        self.rank = info.get("rank")
        sock = socket.create_connection((info["host"], info["port"]), timeout=30)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = MsgSocket(sock)
        self.sock.send({"type": "hello", "token": token, "name": me})
        self.pool = None
        if transport == "shm":
            layout = KVLayout(**info["layout"])
            self.pool = ShmPool(info["shm"], layout, create=False)
            self.pool.prefault()

    def send_layer(self, ex: Export, layer: int, lo: int, hi: int, runs) -> int:
        src = self.src_kv[layer]
        if self.pool is not None:
            idx = None
            if len(runs) > MAX_SLICE_RUNS:
                idx = ex.idx_cache.get((lo, hi))
                if idx is None:
                    idx = ex.idx_cache[(lo, hi)] = run_indices(runs)
            copy_runs(self.pool.kv[layer], src, runs, idx)
            n = hi - lo
            return n * src.shape[0] * src.shape[1] * src.shape[3] * src.element_size()
        buf = gather_runs(src, runs)
        self.sock.send({"type": "kv_layer", "rid": ex.rid, "layer": layer, "lo": lo, "hi": hi})
        self.group.send(buf, dst=self.rank, tag=self.group.rank)
        return buf.numel() * buf.element_size()

    def send_ctrl(self, msg: dict) -> None:
        self.sock.send(msg)

    def close(self) -> None:
        self.alive = False
        self.sock.close()


# ---- the worker process runtime ----------------------------------------------------------------

class WorkerRuntime:
    def __init__(self, ctrl: MsgSocket, cfg: dict) -> None:
        self.ctrl = ctrl
        self.cfg = cfg
        self.name = cfg["name"]
        self.role = cfg["role"]
        self.token = cfg["token"]
        self.transport = cfg.get("transport", "shm")
        self.layerwise = cfg.get("layerwise", True)
        self.throttle = LinkThrottle(cfg.get("kv_link_gbps"))
        self.cond = threading.Condition()
        self.inbox: list = []
        self.stopping = False
        self.links: dict[str, Link] = {}
        self.shm_pool: ShmPool | None = None
        self.group: DistGroup | None = None
        self.sendq: queue.Queue = queue.Queue()
        self.engine: WorkerEngine | None = None
        self._trace_sent = -1
        self._trace_t = 0.0

    # ---- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        threads = int(cfg.get("num_threads") or 1)
        torch.set_num_threads(threads)
        from ..loader import load_model, parse_dtype

        loaded = load_model(cfg["model"], cfg.get("device", "cpu"), parse_dtype(cfg.get("dtype")))
        econf = dict(cfg.get("engine") or {})
        econf["num_threads"] = threads
        config = EngineConfig(**econf)
        self.engine = WorkerEngine(config, loaded, self.name, self.role)
        eng = self.engine
        ready = {"type": "ready", "name": self.name, "role": self.role,
                 "layout": eng.layout.to_dict(), "num_blocks": eng.block_manager.num_blocks,
                 "max_model_len": eng.max_model_len, "vocab_size": eng.model_config.vocab_size,
                 "pid": os.getpid(), "stats": eng.stats().to_dict(), "config": eng.config_report()}
        if self.role == "decode":
            if self.transport == "shm":
                self.shm_pool = ShmPool(cfg["shm_name"], eng.layout, create=True)
                # fault the pages in now: else the first KV copied into each page pays for it
                self.shm_pool.kv.zero_()
                eng.cache.kv = self.shm_pool.kv
                ready["shm"] = self.shm_pool.name
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((cfg.get("link_host", "127.0.0.1"), 0))
            lsock.listen(64)
            self.lsock = lsock
            ready["host"], ready["port"] = lsock.getsockname()[:2]
            threading.Thread(target=self._accept_loop, name="link-accept", daemon=True).start()
        else:
            eng.on_layer = self._queue_layer
            eng.on_export_ranges = self._queue_ranges
            threading.Thread(target=self._sender_loop, name="kv-sender", daemon=True).start()
        if self.transport == "dist":
            d = cfg["dist"]
            self.group = DistGroup(d["init_method"], d["rank"], d["world_size"],
                                   cfg.get("device", "cpu"))
            ready["rank"] = d["rank"]
        threading.Thread(target=self._engine_loop, name="engine-loop", daemon=True).start()
        self.ctrl.send(ready)

    # ---- engine thread ---------------------------------------------------------------------
    def post(self, fn) -> None:
        with self.cond:
            self.inbox.append(fn)
            self.cond.notify()

    def _engine_loop(self) -> None:
        eng = self.engine
        torch.set_num_threads(eng.config.num_threads or 1)
        while True:
            with self.cond:
                while not (self.stopping or self.inbox or eng.has_unfinished()):
                    if eng.pending_reserves:
                        self.cond.wait(0.02)
                        break
                    if self._trace_pending():
                        break
                    self.cond.wait(1.0)
                if self.stopping:
                    return
                jobs, self.inbox = self.inbox, []
            for job in jobs:
                try:
                    job()
                except Exception:  # noqa: BLE001 - one bad job must not stop the worker
                    log.exception("%s: job failed", self.name)
            for seq in eng.try_reserves():
                self._send({"type": "reserved", "rid": seq.request_id, "local": False,
                            "skip": seq.disagg["skip"], "block_table": list(seq.block_table)})
            if eng.has_unfinished():
                try:
                    outs = eng.step()
                except Exception as e:  # noqa: BLE001 - fail the in-flight requests, keep serving
                    log.exception("%s: engine step failed", self.name)
                    for rid in list(eng.seqs):
                        eng.abort(rid)
                        self._error(rid, f"engine step failed on {self.name}: {type(e).__name__}: {e}")
                        ex = eng.exports.get(rid)
                        if ex is not None:
                            self.sendq.put(("cancel", ex))
                    eng._pending.clear()
                    continue
                self._handle_outputs(outs)
            self._push_trace()

    def _handle_outputs(self, outs) -> None:
        eng = self.engine
        items = []
        for out in outs:
            ex = eng.exports.get(out.request_id)
            if ex is not None:
                if not out.finished:
                    continue
                if out.new_token_ids and out.finish_reason in ("stop", "length") and not ex.cancelled:
                    self.sendq.put(("done", ex, out.new_token_ids[-1], out.timing))
                else:
                    if not ex.cancelled:
                        self._error(ex.rid, f"prefill on {self.name} ended without a token "
                                            f"({out.finish_reason})")
                    self.sendq.put(("cancel", ex))
                continue
            items.append({"rid": out.request_id, "ids": out.new_token_ids, "text": out.text_delta,
                          "finished": out.finished, "reason": out.finish_reason,
                          "n_prompt": out.num_prompt_tokens, "n_output": out.num_output_tokens,
                          "timing": out.timing})
        if items:
            self._send({"type": "outs", "items": items})

    def _trace_pending(self) -> bool:
        tr = self.engine.trace
        return bool(tr) and tr[-1]["step"] > self._trace_sent

    def _push_trace(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._trace_t < TRACE_PUSH_S and self.engine.has_unfinished():
            return
        self._trace_t = now
        rows = [r for r in list(self.engine.trace)[-4096:] if r["step"] > self._trace_sent]
        if rows:
            self._trace_sent = rows[-1]["step"]
        self._send({"type": "trace", "rows": rows, "stats": self.engine.stats().to_dict()})

    # ---- messages --------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        try:
            self.ctrl.send(msg)
        except OSError:
            self._exit(0)

    def _error(self, rid: str, message: str) -> None:
        self._send({"type": "error", "rid": rid, "message": message})

    def handle(self, msg: dict) -> None:
        t = msg.get("type")
        eng = self.engine
        if t == "prefill":
            def job(msg=msg):
                ex = Export(rid=msg["rid"], dest=msg["dest"], prompt_len=len(msg["prompt"]),
                            skip=int(msg["skip"]), dst_table=msg.get("dst_table"),
                            layerwise=bool(msg.get("layerwise", self.layerwise)),
                            arrival=time.perf_counter())
                link = self.links.get(ex.dest)
                if link is None or not link.alive:
                    self._error(ex.rid, f"{self.name} has no link to {ex.dest}")
                    return
                if self.transport != "shm":
                    ex.dst_table = None
                try:
                    eng.start_export(ex, msg["prompt"], params_from_dict(msg["params"]))
                except ValueError as e:
                    self._error(ex.rid, str(e))
                    self.sendq.put(("cancel", ex))
            self.post(job)
        elif t == "reserve":
            def job(msg=msg):
                try:
                    seq = eng.make_sequence(msg["rid"], msg["prompt"], params_from_dict(msg["params"]),
                                            msg.get("arrival"))
                except ValueError as e:
                    self._error(msg["rid"], str(e))
                    return
                reason = eng.request_reserve(seq, msg.get("threshold"), bool(msg.get("force_local")))
                if reason is None:
                    seq.disagg = {"arrival": msg.get("arrival") or time.perf_counter(),
                                  "prefill_worker": msg.get("prefill_worker")}
                else:
                    self._send({"type": "reserved", "rid": seq.request_id, "local": True,
                                "reason": reason})
            self.post(job)
        elif t == "abort":
            def job(msg=msg):
                rid = msg["rid"]
                ex = eng.exports.get(rid)
                if ex is not None:
                    if not ex.cancelled:
                        ex.cancelled = True
                        eng.abort(rid)
                        self.sendq.put(("cancel", ex))
                    return
                if not eng.abort_import(rid, bool(msg.get("immediate"))):
                    eng.abort(rid)
            self.post(job)
        elif t == "peers":
            for info in msg["decodes"]:
                try:
                    self.links[info["name"]] = Link(info, self.token, self.name, eng.cache.kv,
                                                    self.transport, self.group)
                except OSError as e:
                    log.warning("%s: cannot connect to %s: %s", self.name, info["name"], e)
            self._send({"type": "peers_ok"})
        elif t == "peer_dead":
            name = msg["name"]
            link = self.links.get(name)
            if link is not None:
                link.alive = False
            if self.role == "decode":
                self.post(lambda: eng.drop_imports_from(name))
            else:
                def job(name=name):
                    for ex in list(eng.exports.values()):
                        if ex.dest == name and not ex.cancelled:
                            ex.cancelled = True
                            eng.abort(ex.rid)
                            self.sendq.put(("cancel", ex))
                self.post(job)
        elif t == "debug_kv":
            def job(msg=msg):
                import numpy as np
                kv = eng.dump_cached_kv(msg["token_ids"])
                np.save(msg["path"], kv.float().numpy())
                self._send({"type": "debug_kv_ok", "path": msg["path"], "tokens": kv.shape[3]})
            self.post(job)
        elif t == "shutdown":
            self._exit(0)

    def serve_forever(self) -> None:
        while True:
            try:
                msg = self.ctrl.recv()
            except (PeerClosed, OSError):
                self._exit(0)
            self.handle(msg)

    def _exit(self, code: int) -> None:
        self.stopping = True
        if self.shm_pool is not None:
            self.shm_pool.unlink()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # ---- prefill side: the sender thread -----------------------------------------------------
    def _queue_layer(self, ex: Export, layer: int, lo: int, hi: int, runs) -> None:
        self.sendq.put(("layer", ex, layer, lo, hi, runs))

    def _queue_ranges(self, ex: Export, ranges) -> None:
        self.sendq.put(("ranges", ex, ranges))

    def _sender_loop(self) -> None:
        torch.set_num_threads(1)
        L = self.engine.cache.num_layers
        while True:
            job = self.sendq.get()
            kind, ex = job[0], job[1]
            link = self.links.get(ex.dest)
            try:
                if kind == "layer":
                    if not ex.cancelled and link is not None and link.alive:
                        self._send_layer(link, ex, *job[2:])
                elif kind == "ranges":
                    for layer in range(L):
                        for lo, hi, runs in job[2]:
                            if ex.cancelled or link is None or not link.alive:
                                break
                            self._send_layer(link, ex, layer, lo, hi, runs)
                elif kind == "done":
                    token, timing = job[2], job[3]
                    if link is not None and link.alive and not ex.cancelled:
                        steps = timing.get("token_steps") or [-1]
                        st = (timing.get("steps") or {}).get(f"{self.name}:{steps[-1]}", {})
                        pinfo = {"worker": self.name, "step": steps[-1],
                                 "prefill_tokens": st.get("prefill_tokens", 0),
                                 "decode_batch": st.get("decode_batch", 0),
                                 "first_scheduled": timing.get("first_scheduled"),
                                 "first_token": timing.get("first_token"),
                                 "cached_tokens": timing.get("num_cached_tokens", 0),
                                 "preemptions": timing.get("preemptions", 0),
                                 "nbytes": ex.nbytes, "busy_s": ex.busy_s,
                                 "layerwise": ex.layerwise}
                        link.send_ctrl({"type": "kv_done", "rid": ex.rid, "token": token,
                                        "prefill": pinfo})
                        self._send({"type": "prefill_done", "rid": ex.rid, "nbytes": ex.nbytes})
                    elif not ex.cancelled:
                        self._error(ex.rid, f"link {self.name} -> {ex.dest} is down")
                    self.post(lambda ex=ex: self.engine.release_export(ex))
                elif kind == "cancel":
                    if link is not None and link.alive:
                        link.send_ctrl({"type": "kv_cancel", "rid": ex.rid})
                    self.post(lambda ex=ex: self.engine.release_export(ex))
            except (OSError, RuntimeError) as e:
                log.warning("%s: link to %s failed: %s", self.name, ex.dest, e)
                if link is not None:
                    link.alive = False
                if kind in ("done", "cancel"):
                    if kind == "done" and not ex.cancelled:
                        self._error(ex.rid, f"KV transfer {self.name} -> {ex.dest} failed: {e}")
                    self.post(lambda ex=ex: self.engine.release_export(ex))

    def _send_layer(self, link: Link, ex: Export, layer: int, lo: int, hi: int, runs) -> None:
        t0 = time.monotonic()
        n = link.send_layer(ex, layer, lo, hi, runs)
        self.throttle.pace(n, t0)
        ex.nbytes += n
        ex.busy_s += time.monotonic() - t0

    # ---- decode side: links from prefill workers ----------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._link_loop, args=(conn,), daemon=True).start()

    def _link_loop(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        eng = self.engine
        conn.settimeout(10)
        try:
            hello = recv_msg(conn)
        except (PeerClosed, OSError, ValueError):
            conn.close()
            return
        if hello.get("type") != "hello" or not check_token(hello.get("token"), self.token):
            log.warning("%s: refused a link connection without the deployment token", self.name)
            conn.close()
            return
        conn.settimeout(None)
        peer = str(hello.get("name"))
        L = eng.layout
        try:
            while True:
                msg = recv_msg(conn)
                t = msg.get("type")
                if t == "kv_layer":
                    lo, hi, layer = int(msg["lo"]), int(msg["hi"]), int(msg["layer"])
                    buf = torch.empty(2, L.n_kv_heads, hi - lo, L.head_dim, dtype=L.torch_dtype,
                                      device=eng.cache.kv.device)
                    src = self._rank_of(peer)
                    self.group.recv(buf, src=src, tag=src)
                    seq = eng.imports.get(msg["rid"])
                    if seq is not None and not seq.disagg.get("aborted"):
                        runs = slot_runs(seq.block_table, None, lo, hi, L.block_size)
                        scatter_runs(eng.cache.kv[layer], buf, [(s, s, n) for s, _, n in runs])
                elif t == "kv_done":
                    self.post(lambda m=msg: self._commit(m))
                elif t == "kv_cancel":
                    self.post(lambda rid=msg["rid"]: eng.drop_import(rid))
        except (PeerClosed, OSError, ValueError, RuntimeError):
            conn.close()
            self.post(lambda: eng.drop_imports_from(peer))

    def _rank_of(self, peer: str) -> int:
        return int(self.cfg["ranks"][peer])

    def _commit(self, msg: dict) -> None:
        out = self.engine.commit_import(msg["rid"], int(msg["token"]), msg["prefill"])
        if out is not None:
            self._handle_outputs([out])


def run_worker(ctrl: MsgSocket, signals: bool = True) -> int:
    """Serve the router on `ctrl` (its first message is this worker's configuration) until the
    router says so or goes away; the process then exits (os._exit). `signals`: exit on SIGTERM
    and leave SIGINT to the router (a child process; not in a Ray actor, whose process Ray
    owns)."""
    try:
        cfg = ctrl.recv()
    except (PeerClosed, OSError):
        return 1
    rt = WorkerRuntime(ctrl, cfg)
    if signals:
        signal.signal(signal.SIGTERM, lambda *_: rt._exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the router decides (Ctrl-C reaches the group)
    try:
        rt.start()
    except Exception as e:  # noqa: BLE001 - report, then exit
        log.exception("worker %s failed to start", cfg.get("name"))
        try:
            ctrl.send({"type": "fatal", "message": f"{type(e).__name__}: {e}"})
        except OSError:
            pass
        rt._exit(2)
    rt.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer_bench.backends.engine.disagg.worker")
    ap.add_argument("--control-fd", type=int, required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_from_env()  # the CPUs the router gave this worker (every thread, torch's included)
    sock = socket.socket(fileno=a.control_fd)
    return run_worker(MsgSocket(sock))


if __name__ == "__main__":
    sys.exit(main())
