"""Speculative decoding: proposers (n-gram prompt lookup, draft model) and lossless verification.

Data flow, one engine step with `EngineConfig(spec_method="ngram"|"draft")`:

    engine.step()
      -> SpecDecoder.propose(scheduler.running): every running decode sequence that speculates
         gets `seq.spec_tokens` (up to spec_k proposed next tokens; n-gram: the tokens that
         followed the latest earlier occurrence of the longest matching suffix; draft: k greedy
         or sampled steps of the draft model, whose q-distributions go to `seq.spec_probs`)
      -> Scheduler.schedule(): such a decode is scheduled with 1 + k query rows (its last token and
         the k proposals), KV slots for all of them (`BlockManager.append_slot(seq, lookahead=k)`);
         proposals are trimmed to what the token budget and the free blocks allow
      -> ModelRunner.run(): one forward pass; the k + 1 rows of a speculating sequence attend
         through the paged KV cache like a prefill chunk with context; their logits go to
         `verify()` -> [accepted proposals..., one target token]
      -> engine: appends the tokens one by one (stop conditions per token, the rest discarded),
         num_computed_tokens advances by 1 + accepted (the rejected proposals' K/V is garbage and
         will be overwritten), `BlockManager.trim_slots` frees blocks that only held rejected
         proposals, prefix-cache registration sees only final tokens.

Verification (exact, Leviathan et al. 2023 / Chen et al. 2023): greedy rows accept the longest
prefix of proposals equal to the target's argmax, then the target's argmax (the "bonus" token when
all k match): token-identical to decoding without speculation. Sampled rows accept proposal i with
probability min(1, p_i(d_i) / q_i(d_i)) and at the first rejection draw from
normalize(max(p_i - q_i, 0)); if all k are accepted the bonus token is drawn from p_{k+1}. p is the
target distribution after temperature / top-k / top-p exactly as `sampling.Sampler` computes it, so
the output distribution equals the non-speculative one. n-gram proposals are deterministic
(q one-hot): accept with probability p_i(d_i), on rejection draw from p_i with d_i removed.

Draft model: any model the engine can load with the same tokenizer (vocabularies of equal size).
It has its own paged KV pool (`KVCache` + a `BlockManager` without prefix caching; as many blocks
as the target's pool, in the draft's layer/head shape, so a draft as big as the target doubles the
KV memory) and one block table per target sequence; when that pool is full a sequence simply does
not speculate; its cache catches up lazily (first proposal: the whole context,
also for a sequence whose target KV came from elsewhere, e.g. a disaggregated prefill), and after
verification it keeps only the positions whose tokens were accepted.

When to turn it off (bench/spec_decode.py, smollm2-135m on this shared 2-core CPU, n-gram k=4,
greedy, two runs, load average 2-7): extractive prompts (repeat a passage) 1.80-1.86x decode
tokens/s at batch 1 (97% accepted, 3.6 accepted per step), 1.50-1.62x at batch 8 (79%), 1.26x at
batch 32; free-form prompts ("write a story") 0.73x at batch 1 and 0.56x at batch 32 (6%). A verification step with k + 1 rows costs
~2.5x a one-row decode step here (CPU fp32 GEMM is not free per row), so speculation pays only
when ~1.5+ proposals per step are accepted (acceptance above ~40% at k=4), and less so as the
batch grows (the step becomes compute-bound). Turn it off for free-form chat and for
large-batch throughput runs; keep it for extraction, quoting, code editing and RAG answers at
small batches, or lower spec_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .block_manager import BlockManager
from .paged_attention import KVCache, PagedAttention, SeqSlice
from .sampling import SamplingParams, apply_top_k_top_p
from .sequence import Sequence, SequenceStatus
from .stats import SpecStats


def parse_spec_flag(value: str | None) -> dict:
    """`--spec` value -> EngineConfig kwargs: "ngram" | "draft:<model source>" | "" / "none"."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        return {}
    v = value.strip()
    if v.lower() == "ngram":
        return {"spec_method": "ngram"}
    if v.lower().startswith("draft:") and v[6:].strip():
        return {"spec_method": "draft", "spec_draft_model": v[6:].strip()}
    raise ValueError(f"--spec must be 'ngram' or 'draft:<model>', got {value!r}")


# ---- proposers ----------------------------------------------------------------------------------
def ngram_propose(tokens, k: int, min_n: int = 1, max_n: int = 4) -> list[int]:
    """Prompt lookup: for n = max_n .. min_n, find the latest earlier occurrence of the last n
    tokens; propose the (up to) k tokens that followed it. [] when nothing matches."""
    if k < 1:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    L = arr.shape[0]
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        suffix = arr[L - n:]
        # candidate starts p in [0, L - n - 1]: the window arr[p:p+n] ends before the suffix's end
        windows = np.lib.stride_tricks.sliding_window_view(arr[:L - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            p = int(hits[-1])
            return arr[p + n:p + n + k].tolist()
    return []


def _probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The sampling distribution of `sampling.Sampler` for rows of one request: [R, V] float32."""
    x = logits.float() / params.temperature
    if params.top_k > 0 or params.top_p < 1:
        r = x.shape[0]
        x = apply_top_k_top_p(x, torch.full((r,), params.top_k, dtype=torch.long),
                              torch.full((r,), float(params.top_p), dtype=torch.float32))
    return x.softmax(dim=-1)


@dataclass(eq=False)
class _DraftSeq:
    """The draft model's view of one target sequence (duck-types what BlockManager needs)."""
    seq: Sequence
    token_ids: list[int] = field(default_factory=list)   # what the draft KV holds / will hold
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    base: int = 0                 # len(seq.token_ids) when the last proposals were made
    reserve: int = 0              # tokens the block table must cover

    @property
    def num_tokens(self) -> int:
        return self.reserve


class DraftProposer:
    """k autoregressive steps of a small draft model, batched over the speculating sequences."""

    def __init__(self, loaded, num_blocks: int, block_size: int, device, dtype: torch.dtype) -> None:
        self.model = loaded.model
        mc = loaded.config
        self.vocab_size = mc.vocab_size
        self.cache = KVCache(mc.num_layers, num_blocks, block_size, mc.num_kv_heads, mc.head_dim,
                             dtype=dtype, device=device)
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        self.device = torch.device(device)
        self.states: dict[int, _DraftSeq] = {}

    def release_finished(self) -> None:
        for key in [k for k, d in self.states.items() if d.seq.status is SequenceStatus.FINISHED]:
            self.bm.free(self.states.pop(key))

    def _release_waiting(self) -> None:
        """Draft pool full: drop the draft caches of preempted (waiting) sequences."""
        for key in [k for k, d in self.states.items() if d.seq.status is not SequenceStatus.RUNNING]:
            self.bm.free(self.states.pop(key))

    def _sync(self, d: _DraftSeq) -> None:
        """Keep the draft KV only for positions whose tokens are still the target's, and leave at
        least the last token to feed (its logits give the first proposal; a sequence proposed for
        but not scheduled has it computed already)."""
        tokens = d.seq.token_ids
        n = min(d.num_computed_tokens, len(tokens) - 1)
        i = min(d.base, n)
        while i < n and d.token_ids[i] == tokens[i]:
            i += 1
        d.num_computed_tokens = i
        d.token_ids = list(tokens)

    @torch.inference_mode()
    def _forward(self, rows: list[tuple[_DraftSeq, int]]) -> torch.Tensor:
        """Feed each draft seq its next `n` uncomputed tokens; logits of each one's last row."""
        ids, pos, slices, last = [], [], [], []
        r = 0
        for d, n in rows:
            s = d.num_computed_tokens
            ids.extend(d.token_ids[s:s + n])
            pos.extend(range(s, s + n))
            slices.append(SeqSlice(n, s + n, d.block_table))
            r += n
            last.append(r - 1)
            d.num_computed_tokens = s + n
        hidden = self.model(torch.tensor(ids, dtype=torch.long, device=self.device),
                            torch.tensor(pos, dtype=torch.long, device=self.device),
                            PagedAttention(self.cache, slices))
        return self.model.compute_logits(hidden[torch.tensor(last, device=hidden.device)]).float().cpu()

    def propose(self, seqs: list[Sequence], ks: list[int], shared_gen: torch.Generator) -> None:
        active: list[tuple[_DraftSeq, int]] = []
        for seq, k in zip(seqs, ks):
            d = self.states.get(id(seq))
            if d is None:
                d = self.states[id(seq)] = _DraftSeq(seq)
            self._sync(d)
            d.base = len(seq.token_ids)
            d.reserve = d.base + k - 1     # fed: everything up to proposal k-1
            if k >= 1 and not self.bm.can_append(d):
                self._release_waiting()
            if k < 1 or not self.bm.can_append(d):
                d.reserve = len(d.block_table) * self.bm.block_size
                continue
            self.bm.append_slot(d)
            active.append((d, k))
        if not active:
            return
        proposals: dict[int, list[int]] = {id(d): [] for d, _ in active}
        qs: dict[int, list[torch.Tensor]] = {id(d): [] for d, _ in active}
        step_rows = [(d, len(d.token_ids) - d.num_computed_tokens) for d, _ in active]
        j = 0
        while step_rows:
            logits = self._forward(step_rows)
            nxt = []
            for (d, _), row in zip(step_rows, logits):
                p = d.seq.params
                if p.greedy:
                    tok = int(row.argmax())
                else:
                    q = _probs(row.unsqueeze(0), p)[0]
                    tok = draw(q, d.seq.generator or shared_gen)
                    qs[id(d)].append(q)
                proposals[id(d)].append(tok)
                d.token_ids.append(tok)
            j += 1
            for d, k in active:
                if len(proposals[id(d)]) == j and j < k:
                    nxt.append((d, 1))
            step_rows = nxt
        for d, _ in active:
            seq = d.seq
            seq.spec_tokens = proposals[id(d)]
            seq.spec_probs = torch.stack(qs[id(d)]) if qs[id(d)] else None


# ---- verification -------------------------------------------------------------------------------
def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One draw from an (unnormalised) probability vector by inverse CDF with one uniform from
    `generator` (numpy for the arithmetic: torch.multinomial costs ~70 us a call on small CPU
    tensors here, this ~15)."""
    p = probs.detach().cpu().numpy()
    c = np.cumsum(p, dtype=np.float64)
    x = float(torch.rand((), generator=generator, dtype=torch.float64)) * c[-1]
    i = int(np.searchsorted(c, x, side="right"))
    if i >= p.shape[0]:   # rounding at the very top: the last token with mass
        i = int(np.flatnonzero(p > 0)[-1])
    return i


def rejection_sample(target_probs: torch.Tensor, draft_tokens: list[int], draft_probs: torch.Tensor | None,
                     generator: torch.Generator | None = None) -> list[int]:
    """target_probs [k+1, V] (p_1..p_{k+1}), draft_tokens d_1..d_k, draft_probs [k, V] (q_i) or
    None (deterministic proposals: q_i one-hot at d_i). Returns accepted d's + one token drawn so
    that the result is distributed exactly as k+1 ancestral draws from p would be (up to the first
    rejection)."""
    out: list[int] = []
    k = len(draft_tokens)
    if k:
        rows = np.arange(k)
        pds = target_probs.detach().cpu().numpy()[rows, draft_tokens].tolist()
        qds = [1.0] * k if draft_probs is None else \
            draft_probs.detach().cpu().numpy()[rows, draft_tokens].tolist()
        us = torch.rand(k, generator=generator, dtype=torch.float64).tolist()
    for i, d in enumerate(draft_tokens):
        if qds[i] > 0 and us[i] * qds[i] < pds[i]:   # u < p/q: accept
            out.append(d)
            continue
        p = target_probs[i]
        if draft_probs is None:
            residual = p.clone()
            residual[d] = 0.0
        else:
            residual = (p - draft_probs[i]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:
            residual = p
        out.append(draw(residual, generator))
        return out
    out.append(draw(target_probs[len(draft_tokens)], generator))
    return out


def greedy_accept(argmax: list[int], draft_tokens: list[int]) -> list[int]:
    """Longest prefix of proposals equal to the target's argmax, then the target's token."""
    a = 0
    while a < len(draft_tokens) and draft_tokens[a] == argmax[a]:
        a += 1
    return list(draft_tokens[:a]) + [argmax[a]]


def verify(logits: torch.Tensor, seqs: list[Sequence], shared_gen: torch.Generator) -> dict[int, list[int]]:
    """logits: the target's rows of the speculating sequences, k_s + 1 consecutive rows each, in
    `seqs` order. Returns {id(seq): accepted proposals + one target token}. Does not change seqs."""
    logits = logits.float().cpu()
    argmax = logits.argmax(dim=-1).tolist()
    out: dict[int, list[int]] = {}
    r = 0
    for seq in seqs:
        k = len(seq.spec_tokens)
        if seq.params.greedy:
            out[id(seq)] = greedy_accept(argmax[r:r + k + 1], seq.spec_tokens)
        else:
            p = _probs(logits[r:r + k + 1], seq.params)
            out[id(seq)] = rejection_sample(p, seq.spec_tokens, seq.spec_probs,
                                            seq.generator or shared_gen)
        r += k + 1
    return out


# ---- the engine's handle ------------------------------------------------------------------------
class SpecDecoder:
    """Built by LLMEngine when config.spec_method is set; see the module docstring."""

    def __init__(self, config, engine) -> None:
        self.method = config.spec_method
        self.k = config.spec_k
        self.ngram_min, self.ngram_max = config.spec_ngram_min, config.spec_ngram_max
        self.engine = engine
        self.draft: DraftProposer | None = None
        self.proposed_total = 0
        self.accepted_total = 0
        self.verify_steps_total = 0
        if self.method == "draft":
            src = config.spec_draft_model
            if isinstance(src, str):
                from .loader import load_model
                loaded = load_model(src, engine.device, engine.cache.kv.dtype)
            else:
                loaded = src   # a LoadedModel (tests; or the target itself)
            if loaded.config.vocab_size != engine.model_config.vocab_size:
                raise ValueError(f"draft model vocab size {loaded.config.vocab_size} != target's "
                                 f"{engine.model_config.vocab_size} (they must share a tokenizer)")
            self.draft = DraftProposer(loaded, engine.block_manager.num_blocks, engine.config.block_size,
                                       engine.device, engine.cache.kv.dtype)

    def _budget(self, seq: Sequence) -> int:
        """How many proposals make sense for seq now (0: do not speculate)."""
        if not seq.spec_enabled or seq.status is not SequenceStatus.RUNNING or seq.is_prefill:
            return 0
        left = seq.params.max_tokens - seq.num_output_tokens - 1   # the target adds one token anyway
        room = self.engine.max_model_len - seq.num_tokens - 1
        return max(0, min(self.k, left, room))

    def propose(self, running: list[Sequence]) -> None:
        """Set seq.spec_tokens (and spec_probs) on every running sequence (empty: no speculation)."""
        if self.draft is not None:
            self.draft.release_finished()
        draft_seqs, draft_ks = [], []
        for seq in running:
            seq.spec_tokens, seq.spec_probs = [], None
            k = self._budget(seq)
            if k < 1:
                continue
            if self.method == "ngram":
                seq.spec_tokens = ngram_propose(seq.token_ids, k, self.ngram_min, self.ngram_max)
            else:
                draft_seqs.append(seq)
                draft_ks.append(k)
        if draft_seqs:
            self.draft.propose(draft_seqs, draft_ks, self.engine.runner.sampler.generator)

    def record(self, seq: Sequence, num_proposed: int, num_accepted: int) -> None:
        seq.spec_proposed += num_proposed
        seq.spec_accepted += num_accepted
        seq.spec_steps += 1
        self.proposed_total += num_proposed
        self.accepted_total += num_accepted
        self.verify_steps_total += 1

    def release_finished(self) -> None:
        if self.draft is not None:
            self.draft.release_finished()

    def stats(self) -> SpecStats:
        return SpecStats(
            enabled=True,
            proposed_total=self.proposed_total,
            accepted_total=self.accepted_total,
            verify_steps_total=self.verify_steps_total,
            acceptance_rate=self.accepted_total / self.proposed_total if self.proposed_total else 0.0,
            draft_kv_blocks_used=self.draft.bm.num_used_blocks if self.draft else 0,
        )


def timing_fields(seq: Sequence) -> dict:
    """Per-request speculation counters for the final output's timing dict."""
    return {
        "spec_proposed": seq.spec_proposed,
        "spec_accepted": seq.spec_accepted,
        "spec_verify_steps": seq.spec_steps,
        "spec_acceptance_rate": seq.spec_accepted / seq.spec_proposed if seq.spec_proposed else None,
        "spec_mean_accepted_len": seq.spec_accepted / seq.spec_steps if seq.spec_steps else None,
    }
