"""Continuous-batching scheduler: which sequences, and how many of their tokens, run this step.

Data flow: `engine.step()` calls `schedule()` -> `SchedulerOutput` (an ordered list of
(sequence, num_new_tokens): decodes first, then prefill chunks) -> `model_runner` runs it -> the
engine updates the sequences and calls `finish()` for the ones that are done.

Policy (vLLM's, simplified):
  1. Running decodes first, FCFS, one token each (1 + k with k speculative proposals in
     seq.spec_tokens, trimmed to the budget and the free blocks: see spec_decode.py). A decode that needs a new KV block when none is
     free preempts the most recently admitted running sequence (possibly itself) by recompute:
     its blocks are freed (its computed full blocks stay in the prefix cache) and it goes back to
     the front of the waiting queue, to be re-prefilled from prompt + output tokens. A sequence
     that runs alone and still finds no free block has filled the whole pool: it finishes
     ("length").
  2. Running sequences part-way through a chunked prefill get the next chunk from what is left of
     the step's token budget (`max_num_batched_tokens`).
  3. Waiting sequences are admitted FCFS (no skipping) while the budget, `max_num_seqs` and free KV
     blocks (for all their tokens, prefix hits shared) allow; none are admitted in a step that
     preempted. With chunked prefill, an admitted prompt takes whatever budget is left (a chunk);
     without it, a prompt must fit the remaining budget whole (a recompute that exceeds the whole
     budget may run alone in a step, so it cannot starve).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)  # alone and out of KV blocks: "length"

    @property
    def num_prefill_tokens(self) -> int:
        return sum(n for s, n in self.scheduled if s.is_prefill)

    @property
    def prefill_sq_tokens(self) -> int:
        """Sum over the prefill chunks of (chunk length)^2: causal attention is within each
        sequence, so this (not num_prefill_tokens^2) scales the step's prefill attention."""
        return sum(n * n for s, n in self.scheduled if s.is_prefill)

    @property
    def num_decode_seqs(self) -> int:
        return sum(1 for s, n in self.scheduled if not s.is_prefill)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_batched_tokens: int = 512,
                 max_num_seqs: int = 128, enable_chunked_prefill: bool = True) -> None:
        if max_num_batched_tokens < 1 or max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        self.bm = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []   # admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove seq (running or waiting), free its blocks, mark it finished."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finished_time = time.perf_counter()

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.trim_spec(0)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_ids: set[int] = set()

        # 1. decodes
        for seq in list(self.running):
            if seq.is_prefill or seq.status is not SequenceStatus.RUNNING:
                continue
            if budget < 1:
                break
            k = len(seq.spec_tokens)   # speculative proposals: only what budget and blocks allow
            if k and (budget < 1 + k or not self.bm.can_append(seq, k)):
                k = min(k, budget - 1)
                while k and not self.bm.can_append(seq, k):
                    k -= 1
                seq.trim_spec(k)
            while not self.bm.can_append(seq):
                if len(self.running) == 1:  # alone, and the whole pool is not enough
                    self.finish(seq, "length")
                    out.finished.append(seq)
                    break
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.bm.append_slot(seq, k)
            out.scheduled.append((seq, 1 + k))
            scheduled_ids.add(id(seq))
            budget -= 1 + k

        # 2. running sequences part-way through a (chunked) prefill
        for seq in self.running:
            if budget < 1:
                break
            if id(seq) in scheduled_ids or not seq.is_prefill:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            out.scheduled.append((seq, n))
            budget -= n

        # 3. admit waiting sequences
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.bm.can_allocate(seq):
                break
            if not self.enable_chunked_prefill:
                n = seq.num_tokens - self.bm.num_prefix_hit_tokens(seq)
                if n > budget and budget < self.max_num_batched_tokens:
                    break  # must fit whole (a step of its own if it is bigger than the budget)
            self.bm.allocate(seq)
            n = seq.num_uncomputed_tokens
            if self.enable_chunked_prefill:
                n = min(n, budget)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.perf_counter()
                seq.num_cached_tokens = seq.num_computed_tokens
            self.running.append(seq)
            out.scheduled.append((seq, n))
            budget -= n
        return out
