"""Sampling parameters and the batched sampler.

Data flow: a request's `SamplingParams` ride on its `Sequence`; after each forward pass
`model_runner` hands the float32 logits of the rows that need a next token ([N, vocab]) together
with the N sequences' params and generators to `Sampler`, which returns N token ids.

Greedy (temperature == 0) is an argmax. Otherwise logits are divided by the temperature, cut to the
top-k and to the top-p nucleus, and one token is drawn per row. A seeded request draws from its own
`torch.Generator` (one draw per token), so its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0): no top-k cut
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k not in (-1, 0)):
            raise ValueError(f"top_k must be -1 (disabled) or an integer >= 1, got {self.top_k!r}")
        if self.top_k == 0:
            self.top_k = -1
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise ValueError(f"stop_token_ids must be non-negative integers, got {t!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a boolean, got {self.ignore_eos!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self) -> torch.Generator | None:
        """A CPU generator for a seeded request (None: draw from the sampler's shared one)."""
        if self.seed is None:
            return None
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed)
        return g


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) the logits outside each row's top-k and top-p nucleus.

    logits: [N, V] float32 (already temperature-scaled); top_k: [N] long (<= 0 or >= V: no cut);
    top_p: [N] float (1.0: no cut). The most likely token always survives.
    """
    n, vocab = logits.shape
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
    ranks = torch.arange(vocab, device=logits.device).expand(n, vocab)
    drop = ranks >= k.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep a token if the probability mass strictly before it is < top_p.
    mass_before = probs.cumsum(dim=-1) - probs
    drop = mass_before >= top_p.unsqueeze(1)
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, sorted_idx, sorted_logits)


class Sampler:
    """Batched sampler: one token id per logits row."""

    def __init__(self, seed: int | None = None) -> None:
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> list[int]:
        logits = logits.float().cpu()
        out = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if rows:
            idx = torch.tensor(rows)
            sub = logits[idx] / torch.tensor([params[i].temperature for i in rows]).unsqueeze(1)
            top_k = torch.tensor([params[i].top_k for i in rows])
            top_p = torch.tensor([params[i].top_p for i in rows], dtype=torch.float32)
            if (top_k > 0).any() or (top_p < 1).any():
                sub = apply_top_k_top_p(sub, top_k, top_p)
            probs = sub.softmax(dim=-1)
            # Exponential race: argmax(p / E), E ~ Exp(1), is a draw from p. One vector per row,
            # from the row's own generator when seeded.
            noise = torch.empty_like(probs)
            for j, i in enumerate(rows):
                noise[j].exponential_(generator=generators[i] or self.generator)
            out[idx] = (probs / noise).argmax(dim=-1)
        return out.tolist()
