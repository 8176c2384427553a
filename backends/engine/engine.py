"""The engine: requests in, streamed tokens and text out.

Data flow:
    add_request(id, prompt ids, SamplingParams) -> Sequence -> Scheduler.waiting
    step():  Scheduler.schedule() -> ModelRunner.run() (one forward pass, PagedAttention over the
             KV pool, sampling) -> per sequence: advance num_computed_tokens, register full blocks
             in the prefix cache, append the sampled token, detokenize, check stop conditions,
             free finished sequences -> list[RequestOutput]
    With EngineConfig(spec_method="ngram"|"draft"), step() first asks spec_decode.SpecDecoder
    for proposals; a speculating decode runs 1 + k rows and gets back several verified tokens.
    AsyncEngine runs step() in a background thread and feeds each request's outputs to the
    asyncio generator that asked for it (`async for out in engine.generate(...)`).

Stop conditions, in order: EOS (unless ignore_eos) or a stop token id -> "stop" (the token is in
new_token_ids, its text is not); a stop string in the output text -> "stop" (text cut before the
stop string; while stop strings are set, the last len(longest stop) - 1 characters are held back
so a partial stop string is never streamed); max_tokens, the model's context, or a sequence
that alone fills the whole KV pool -> "length"; abort -> "abort".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import AsyncIterator

import torch

from . import native
from .block_manager import BlockManager
from .model_runner import ModelRunner
from .paged_attention import KVCache, default_kv_budget_bytes, kv_bytes_per_block, num_blocks_for_budget
from .sampling import Sampler, SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence, SequenceStatus
from .stats import EngineStats, SpecStats, StepTimeHistogram

log = logging.getLogger(__name__)

CPU_DEFAULT_KV_CAP_BYTES = 2 * 2**30


@dataclass
class EngineConfig:
    device: str = "cpu"
    dtype: str | torch.dtype | None = None   # None: the loaded model's dtype (KV cache matches it)
    block_size: int = 16
    kv_cache_gb: float | None = None         # None: kv_memory_fraction of free memory (CPU: <= 2 GiB)
    kv_memory_fraction: float = 0.8
    num_kv_blocks: int | None = None         # exact pool size (tests); overrides kv_cache_gb
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_model_len: int | None = None         # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_threads: int | None = None           # torch intra-op threads (CPU)
    seed: int | None = None                  # sampler seed for requests without their own seed
    # speculative decoding (spec_decode.py): None | "ngram" | "draft"
    spec_method: str | None = None
    spec_draft_model: object | None = None   # "draft": a model source (str) or a LoadedModel
    spec_k: int = 4                          # proposals per step
    spec_ngram_min: int = 1
    spec_ngram_max: int = 4

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.kv_cache_gb is not None and self.kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if not 0 < self.kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction}")
        if self.spec_method not in (None, "ngram", "draft"):
            raise ValueError(f"spec_method must be None, 'ngram' or 'draft', got {self.spec_method!r}")
        if self.spec_method == "draft" and self.spec_draft_model is None:
            raise ValueError("spec_method='draft' needs spec_draft_model")
        if self.spec_k < 1 or not 1 <= self.spec_ngram_min <= self.spec_ngram_max:
            raise ValueError("spec_k must be >= 1 and 1 <= spec_ngram_min <= spec_ngram_max")


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None          # None | "stop" | "length" | "abort"
    num_prompt_tokens: int
    num_output_tokens: int
    timing: dict | None = None         # on the final output only


class LLMEngine:
    """Synchronous engine: call `step()` until `has_unfinished()` is False."""

    def __init__(self, config: EngineConfig, loaded) -> None:
        """`loaded`: a loader.LoadedModel (model, tokenizer, config)."""
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_config = mc = loaded.config
        p = next(iter(self.model.parameters()), None)
        dtype = p.dtype if p is not None else torch.float32
        if isinstance(config.dtype, torch.dtype):
            dtype = config.dtype
        elif isinstance(config.dtype, str):
            dtype = getattr(torch, config.dtype)
        device = p.device if p is not None else torch.device(config.device)
        self.device = device
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            if config.kv_cache_gb is not None:
                budget = config.kv_cache_gb * 2**30
            else:
                budget = default_kv_budget_bytes(device, config.kv_memory_fraction)
                if device.type == "cpu":
                    budget = min(budget, CPU_DEFAULT_KV_CAP_BYTES)
            num_blocks = num_blocks_for_budget(budget, mc.num_layers, config.block_size,
                                               mc.num_kv_heads, mc.head_dim, dtype)
        if num_blocks < 1:
            per = kv_bytes_per_block(mc.num_layers, config.block_size, mc.num_kv_heads, mc.head_dim, dtype)
            raise ValueError(f"KV cache budget too small for one block ({per} bytes)")
        self.cache = KVCache(mc.num_layers, num_blocks, config.block_size, mc.num_kv_heads, mc.head_dim,
                             dtype=dtype, device=device)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_batched_tokens, config.max_num_seqs,
                                   config.enable_chunked_prefill)
        self.runner = ModelRunner(self.model, self.cache, device, Sampler(config.seed))
        if device.type == "cpu" and dtype == torch.float32:
            native.load_all()  # build/load the kernels now, not inside the first request's step
        self.spec = None
        if config.spec_method:
            from .spec_decode import SpecDecoder
            self.spec = SpecDecoder(config, self)
        eos = set(getattr(self.tokenizer, "eos_token_ids", set()) or set()) if self.tokenizer else set()
        self.eos_token_ids = eos | set(mc.eos_token_ids or [])
        self.seqs: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []   # abort outputs, returned by the next step()
        self.step_id = 0
        self.num_generated_tokens = 0
        self.num_prompt_tokens = 0
        self.num_finished = 0
        self.trace: deque[dict] = deque(maxlen=100_000)
        self.step_times = StepTimeHistogram()

    # ---- requests -------------------------------------------------------------------------
    def validate_request(self, request_id: str, prompt_token_ids, params: SamplingParams) -> None:
        """Raise ValueError (clear message) if the request can never run. No state change."""
        if not isinstance(params, SamplingParams):
            raise ValueError("params must be a SamplingParams")
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        vocab = self.model_config.vocab_size
        for t in prompt_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise ValueError(f"prompt token {t!r} is not an id in [0, {vocab})")
        n = len(prompt_token_ids)
        if n >= self.max_model_len:
            raise ValueError(f"the prompt has {n} tokens; the model's context is {self.max_model_len} "
                             f"tokens (prompt + at least 1 output must fit)")
        if not self.config.enable_chunked_prefill and n > self.config.max_num_batched_tokens:
            raise ValueError(f"the prompt has {n} tokens, more than max_num_batched_tokens="
                             f"{self.config.max_num_batched_tokens} (chunked prefill is off)")
        need = self.block_manager.blocks_needed(n + 1)
        if need > self.block_manager.num_blocks:
            raise ValueError(f"the prompt needs {need} KV blocks; the pool has "
                             f"{self.block_manager.num_blocks}")

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams | None = None, arrival_time: float | None = None,
                    speculate: bool = True) -> None:
        """`speculate=False`: no speculative decoding for this request (when the engine has it)."""
        params = params or SamplingParams()
        if request_id in self.seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate_request(request_id, prompt_token_ids, params)
        seq = Sequence.create(request_id, prompt_token_ids, params)
        seq.spec_enabled = speculate
        if arrival_time is not None:
            seq.arrival_time = arrival_time
        if self.tokenizer is not None:
            from .tokenizer import IncrementalDetokenizer
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_token_ids)
        self.seqs[request_id] = seq
        self.num_prompt_tokens += seq.num_prompt_tokens
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        """Finish a request now (its blocks are freed); the next step() returns its final output."""
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        self.num_finished += 1
        self._pending.append(self._output(seq, [], ""))
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending)

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        t0 = time.perf_counter()
        if self.spec is not None:   # proposals first: the scheduler sizes decodes by them
            self.spec.propose(self.scheduler.running)
        sched = self.scheduler.schedule()
        for seq in sched.finished:  # filled the whole KV pool
            self.seqs.pop(seq.request_id, None)
            self.num_finished += 1
            if seq.detokenizer is not None:
                seq.output_text += seq.detokenizer.flush()
            outputs.append(self._output(seq, [], seq.output_text[seq.num_text_emitted:]))
        if sched.is_empty:
            return outputs
        step_id = self.step_id
        self.step_id += 1
        n_prefill = sched.num_prefill_tokens
        n_decode = sched.num_decode_seqs
        prefill_sq = sched.prefill_sq_tokens   # before the run: is_prefill changes with it
        # KV tokens already in the cache that this step attends to (decodes' contexts and the
        # computed prefix of each prefill chunk): the latency model's context term
        n_context = sum(seq.num_computed_tokens for seq, _ in sched.scheduled)
        sampled = self.runner.run(sched.scheduled)
        for seq, n in sched.scheduled:
            token = sampled.get(id(seq))
            if isinstance(token, list):  # a verified speculative decode: several tokens
                outputs.append(self._append_spec_tokens(seq, token, step_id, n_prefill, n_decode))
                continue
            seq.num_computed_tokens += n
            self.block_manager.cache_full_blocks(seq)
            if token is not None:
                out = self._append_token(seq, token, step_id, n_prefill, n_decode)
                if out is not None:
                    outputs.append(out)
        if self.spec is not None:
            self.spec.release_finished()
        wall = time.perf_counter() - t0
        self._record_step(step_id, t0, wall, n_prefill, n_decode, len(sched.scheduled),
                          n_context=n_context, prefill_sq=prefill_sq)
        return outputs

    def _append_spec_tokens(self, seq: Sequence, tokens: list[int], step_id: int, n_prefill: int,
                            n_decode: int) -> RequestOutput:
        """A speculative decode ran 1 + k rows; tokens = accepted proposals + the target's token.
        The last token and the accepted proposals are now computed; the rejected proposals' K/V
        is dropped (blocks that held only them are freed). One output for all the tokens."""
        self.spec.record(seq, len(seq.spec_tokens), len(tokens) - 1)
        seq.trim_spec(0)
        seq.num_computed_tokens += 1
        self.block_manager.cache_full_blocks(seq)
        outs = []
        for i, t in enumerate(tokens):
            outs.append(self._append_token(seq, t, step_id, n_prefill, n_decode))
            if seq.is_finished:
                break   # a stop: the rest is discarded, as without speculation
            if i < len(tokens) - 1:   # an accepted proposal: its K/V is final
                seq.num_computed_tokens += 1
                self.block_manager.cache_full_blocks(seq)
        if not seq.is_finished:
            self.block_manager.trim_slots(seq)
        last = outs[-1]
        if len(outs) == 1:
            return last
        return RequestOutput(seq.request_id, [t for o in outs for t in o.new_token_ids],
                             "".join(o.text_delta for o in outs), last.finished, last.finish_reason,
                             last.num_prompt_tokens, last.num_output_tokens, last.timing)

    def _append_token(self, seq: Sequence, token: int, step_id: int, n_prefill: int,
                      n_decode: int) -> RequestOutput | None:
        now = time.perf_counter()
        p = seq.params
        seq.token_ids.append(token)
        seq.token_steps.append(step_id)
        seq.step_batches[step_id] = (n_prefill, n_decode)
        self.num_generated_tokens += 1
        if seq.first_token_time is None:
            seq.first_token_time = now
        reason = None
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            reason = "stop"
        else:
            if seq.detokenizer is not None:
                seq.output_text += seq.detokenizer.feed(token)
            if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
                reason = "length"
                if seq.detokenizer is not None:
                    seq.output_text += seq.detokenizer.flush()
            if p.stop and self._check_stop_strings(seq):
                reason = "stop"
        # text to stream now: hold back a possible partial stop string while running
        end = len(seq.output_text)
        if reason is None and p.stop:
            end = max(seq.num_text_emitted, end - (max(len(s) for s in p.stop) - 1))
        delta = seq.output_text[seq.num_text_emitted:end]
        seq.num_text_emitted = end
        if reason is not None:
            self.seqs.pop(seq.request_id, None)
            self.scheduler.finish(seq, reason)
            self.num_finished += 1
        return self._output(seq, [token], delta)

    @staticmethod
    def _check_stop_strings(seq: Sequence) -> str | None:
        text = seq.output_text
        longest = max(len(s) for s in seq.params.stop)
        # only the tail can hold a new match: everything before num_text_emitted was checked
        start = max(0, seq.num_text_emitted - longest + 1)
        hits = [i for i in (text.find(s, start) for s in seq.params.stop) if i >= 0]
        if not hits:
            return None
        seq.output_text = text[:min(hits)]
        return "stop"

    def _output(self, seq: Sequence, new_ids: list[int], delta: str) -> RequestOutput:
        finished = seq.status is SequenceStatus.FINISHED
        return RequestOutput(seq.request_id, new_ids, delta, finished, seq.finish_reason if finished else None,
                             seq.num_prompt_tokens, seq.num_output_tokens,
                             self._timing_with_spec(seq) if finished else None)

    def _timing_with_spec(self, seq: Sequence) -> dict:
        timing = self._timing(seq)
        if self.spec is not None:
            from .spec_decode import timing_fields
            timing.update(timing_fields(seq))
        return timing

    @staticmethod
    def _timing(seq: Sequence) -> dict:
        def diff(a, b):
            return None if a is None or b is None else b - a
        return {
            "arrival": seq.arrival_time,
            "first_scheduled": seq.first_scheduled_time,
            "first_token": seq.first_token_time,
            "finished": seq.finished_time,
            "queue_s": diff(seq.arrival_time, seq.first_scheduled_time),
            "prefill_s": diff(seq.first_scheduled_time, seq.first_token_time),
            "decode_s": diff(seq.first_token_time, seq.finished_time),
            "e2e_s": diff(seq.arrival_time, seq.finished_time),
            "num_cached_tokens": seq.num_cached_tokens,
            "preemptions": seq.num_preemptions,
            "token_steps": list(seq.token_steps),
            "steps": {str(s): {"prefill_tokens": a, "decode_batch": b} for s, (a, b) in seq.step_batches.items()},
        }

    def _record_step(self, step_id, t0, wall, n_prefill, n_decode, n_seqs, n_context=None,
                     prefill_sq=None) -> None:
        # prefill_sq_tokens: sum of squared prefill chunk lengths (the latency model's Q)
        self.trace.append({"step": step_id, "t_start": t0, "wall_s": wall, "n_prefill_tokens": n_prefill,
                           "n_decode_seqs": n_decode, "n_seqs": n_seqs,
                           "n_prefill_seqs": n_seqs - n_decode, "n_context_tokens": n_context,
                           "prefill_sq_tokens": prefill_sq,
                           "blocks_used": self.block_manager.num_used_blocks})
        self.step_times.observe(wall)

    # ---- conveniences ---------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[list[int]]:
        """Run prompts to completion (all added at once); the output token ids of each."""
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [f"generate-{self.step_id}-{i}" for i in range(len(prompts))]
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.add_request(rid, prompt, p)
        result: dict[str, list[int]] = {rid: [] for rid in ids}
        while self.has_unfinished():
            for out in self.step():
                if out.request_id in result:
                    result[out.request_id].extend(out.new_token_ids)
        return [result[rid] for rid in ids]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_total=bm.num_blocks,
            kv_blocks_used=bm.num_used_blocks,
            kv_blocks_free=bm.num_free_blocks,
            kv_blocks_cached=bm.num_cached_blocks,
            block_size=bm.block_size,
            prefix_hit_rate=bm.prefix_hit_rate,
            prefix_hit_tokens=bm.prefix_hit_tokens,
            prefix_queried_tokens=bm.prefix_queried_tokens,
            prompt_tokens_total=self.num_prompt_tokens,
            generation_tokens_total=self.num_generated_tokens,
            requests_finished_total=self.num_finished,
            preemptions_total=self.scheduler.num_preemptions,
            steps_total=self.step_id,
            step_time=self.step_times.copy(),
            spec=self.spec.stats() if self.spec is not None else SpecStats(),
        )

    def step_trace(self) -> list[dict]:
        return list(self.trace)

    def config_report(self) -> dict:
        """The configuration this engine runs with, JSON-ready: EngineConfig as given, and what
        it resolved to (served as GET /v1/engine/config)."""
        def plain(v):
            return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)

        kv = self.cache.kv
        return {"config": {f.name: plain(getattr(self.config, f.name)) for f in fields(self.config)},
                "resolved": {"device": str(kv.device), "dtype": str(kv.dtype).removeprefix("torch."),
                             "num_kv_blocks": self.block_manager.num_blocks,
                             "kv_cache_bytes": self.cache.nbytes,
                             "max_model_len": self.max_model_len}}


class AsyncEngine:
    """Runs `LLMEngine.step()` in a background thread; asyncio callers stream their outputs.

    The engine thread owns the LLMEngine; requests and aborts from the event loop are queued under
    a lock and applied at the start of the next step; the thread sleeps on a condition when idle.
    """

    def __init__(self, config: EngineConfig, loaded) -> None:
        self.engine = LLMEngine(config, loaded)
        self._cond = threading.Condition()
        self._new: list[tuple[str, list[int], SamplingParams, float]] = []
        self._aborts: list[str] = []
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._shutdown = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    # ---- engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        if self.engine.config.num_threads:
            torch.set_num_threads(self.engine.config.num_threads)
        while True:
            with self._cond:
                while not (self._shutdown or self._new or self._aborts or eng.has_unfinished()):
                    self._cond.wait()
                if self._shutdown:
                    return
                new, self._new = self._new, []
                aborts, self._aborts = self._aborts, []
            for rid, prompt, params, arrival in new:
                try:
                    eng.add_request(rid, prompt, params, arrival_time=arrival)
                except Exception as e:  # noqa: BLE001 - reported to that request's caller
                    self._deliver(rid, e)
            for rid in aborts:
                eng.abort(rid)
            try:
                outputs = eng.step()
            except Exception as e:  # noqa: BLE001 - fail the in-flight requests, keep serving
                log.exception("engine step failed")
                for rid in list(eng.seqs):
                    eng.abort(rid)
                    self._deliver(rid, RuntimeError(f"engine step failed: {type(e).__name__}: {e}"))
                eng._pending.clear()
                continue
            for out in outputs:
                self._deliver(out.request_id, out)
            if not outputs and eng.has_unfinished():
                with self._cond:   # nothing could run (should not happen): do not spin
                    self._cond.wait(0.005)

    def _deliver(self, request_id: str, item) -> None:
        entry = self._queues.get(request_id)
        if entry is None:
            return
        loop, queue = entry
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed
            pass

    # ---- event-loop API -------------------------------------------------------------------
    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams | None = None, *,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs; the last one has finished=True (and timing).
        `arrival_time` (perf_counter clock): when the request's bytes arrived (the HTTP side
        takes it from the kernel, http/arrival.py); default now. Queue time starts there.

        Raises ValueError before anything is queued if the request can never run. Cancelling or
        closing the generator before the end aborts the request (its KV blocks are freed).
        """
        params = params or SamplingParams()
        prompt_token_ids = list(prompt_token_ids)
        self.engine.validate_request(request_id, prompt_token_ids, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("the engine is shut down")
            if request_id in self._queues:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._queues[request_id] = (loop, queue)
            self._new.append((request_id, prompt_token_ids, params,
                              time.perf_counter() if arrival_time is None else arrival_time))
            self._cond.notify()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finished:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            with self._cond:
                self._queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.append(request_id)
            self._cond.notify()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def step_trace(self) -> list[dict]:
        return self.engine.step_trace()

    def config_report(self) -> dict:
        return self.engine.config_report()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            queues = list(self._queues.items())
        self._thread.join(timeout=30)
        for rid, _ in queues:
            self._deliver(rid, RuntimeError("the engine was shut down"))
