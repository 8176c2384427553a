"""One request as the engine sees it: its tokens, its KV blocks, its progress, its clocks.

Data flow: `engine.add_request` makes a `Sequence` (WAITING); the scheduler admits it (RUNNING,
`block_manager` fills `block_table`), the model runner computes `num_new_tokens` of it per step
(`num_computed_tokens` grows; a finished prompt gets a sampled token appended), and the engine
finishes it (FINISHED) or the scheduler preempts it (back to WAITING, blocks freed, recomputed
later from its prompt + output tokens).

`num_computed_tokens` counts tokens whose K/V is in the cache; the tokens still to be computed are
`token_ids[num_computed_tokens:]` (after the prompt, exactly one: the last sampled token).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity: `seq in running` must not compare fields
class Sequence:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0          # prefix-cache hits at first admission
    num_preemptions: int = 0
    finish_reason: str | None = None    # None | "stop" | "length" | "abort"
    generator: torch.Generator | None = None
    # clocks (time.perf_counter())
    arrival_time: float = field(default_factory=time.perf_counter)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    token_steps: list[int] = field(default_factory=list)  # step id that produced each output token
    step_batches: dict[int, tuple[int, int]] = field(default_factory=dict)  # step -> (prefill toks, decodes)
    # detokenization / stop strings
    output_text: str = ""
    num_text_emitted: int = 0
    detokenizer: object | None = None
    # speculative decoding (spec_decode.py): this step's proposals, not in token_ids
    spec_enabled: bool = True
    spec_tokens: list[int] = field(default_factory=list)
    spec_probs: torch.Tensor | None = None   # draft q rows [len(spec_tokens), vocab]; None: one-hot
    spec_proposed: int = 0
    spec_accepted: int = 0
    spec_steps: int = 0

    def trim_spec(self, k: int) -> None:
        """Keep only the first k proposals (the scheduler's budget / free blocks allow no more)."""
        if len(self.spec_tokens) > k:
            self.spec_tokens = self.spec_tokens[:k]
            if self.spec_probs is not None:
                self.spec_probs = self.spec_probs[:k] if k else None

    @classmethod
    def create(cls, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> "Sequence":
        return cls(request_id=request_id, token_ids=list(prompt_token_ids),
                   num_prompt_tokens=len(prompt_token_ids), params=params,
                   generator=params.make_generator())

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """True while more than the last sampled token is still to be computed."""
        return self.num_uncomputed_tokens > 1 or self.num_output_tokens == 0

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
