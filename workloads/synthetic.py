"""Synthetic prompts: a WorkloadSpec -> a list of PreparedRequests, deterministic from the seed.

Role in the data flow: the runner calls `generate_requests(spec, tokenizer)` once per run (the same
prompts for every deployment and load point), then hands them to `workloads/loadgen.py`, which
fills in the URL, model and headers.

Lengths are drawn from spec.input_len / spec.output_len with `numpy.random.default_rng(seed)`.
With a tokenizer (`TokenizerFns(tokenize, detokenize)`, e.g. from `load_tokenizer_for(model_dir)`)
each prompt has EXACTLY n_input tokens as counted by `tokenize(prompt)` (no special tokens: a server
that adds BOS or a chat template adds its own on top; `usage.prompt_tokens` records what the server
counted): the prompt is built from random words, cut to the target in token space, decoded, and
re-encoded, and the cut adjusted until the count matches. Without a tokenizer, prompts are
`n_input` common English words (about one token each: approximate). With shared_prefix_len > 0
every prompt starts with the same prefix text (about that many tokens; exact with a tokenizer);
useful to exercise prefix caching.

`generate_requests(spec, tokenizer)` accepts every WorkloadSpec kind (the other kinds are built
by `workloads/datasets.py`); `_fit_exact` and `_words` are shared with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from infer_bench.backends.client.openai import PreparedRequest

from .spec import WorkloadSpec

_WORDS = (
    "the of and to in is was for on that with as by at from his her an be this which or are had "
    "not but were they have one all their there been has more when who will would no out so up "
    "said what its about than into them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how "
    "too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three light water house river green blue stone paper music "
    "table window garden market letter number system model engine token batch cache server memory"
).split()


@dataclass
class TokenizerFns:
    tokenize: Callable[[str], list[int]]
    detokenize: Callable[[list[int]], str]
    name: str = ""


def load_tokenizer_for(path: str | Path | None) -> TokenizerFns | None:
    """A tokenizer for exact prompt lengths from a local model directory (transformers
    AutoTokenizer), or None when `path` is None. Encodes without special tokens."""
    if path is None:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))

    def tokenize(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    def detokenize(ids: list[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=True,
                          clean_up_tokenization_spaces=False)

    return TokenizerFns(tokenize, detokenize, name=str(path))


def _words(rng: np.random.Generator, n: int) -> list[str]:
    idx = rng.integers(0, len(_WORDS), size=max(n, 0))
    return [_WORDS[i] for i in idx]


def _fit_exact(head: str, rng: np.random.Generator, target: int, tok: TokenizerFns) -> str:
    """Text that starts with `head` and encodes to exactly `target` tokens (target >= count of
    head); random words fill the rest."""
    enc, dec = tok.tokenize, tok.detokenize
    n_head = len(enc(head)) if head else 0
    if target <= n_head:
        target = n_head if target < n_head else target
    extra = max(8, (target - n_head) * 2 + 8)
    text = head + (" " if head else "") + " ".join(_words(rng, extra))
    ids = enc(text)
    while len(ids) < target:            # words shorter than expected: add more
        text += " " + " ".join(_words(rng, target))
        ids = enc(text)
    cut = target
    best = None
    for _ in range(64):
        cand = dec(ids[:cut])
        m = len(enc(cand))
        if m == target and (not head or cand.startswith(head)):
            return cand
        if best is None or abs(m - target) < abs(best[1] - target):
            best = (cand, m)
        cut += target - m if m != target else 1
        cut = min(max(cut, 1), len(ids))
    # last resort: append or drop single characters until the count matches
    cand = best[0]
    for _ in range(4 * target + 16):
        m = len(enc(cand))
        if m == target:
            return cand
        cand = cand + " a" if m < target else cand[:-1]
    raise RuntimeError(f"could not build a prompt of exactly {target} tokens")


def generate_requests(spec: WorkloadSpec, tokenizer: TokenizerFns | None = None,
                      id_prefix: str = "req") -> list[PreparedRequest]:
    """PreparedRequests for any WorkloadSpec kind (url empty: the load generator fills it);
    the same as `workloads.datasets.build_requests`. Synthetic: `spec.num_requests` requests."""
    if spec.kind != "synthetic":
        from .datasets import build_requests

        return build_requests(spec, tokenizer, id_prefix=id_prefix)
    return generate_synthetic(spec, tokenizer, id_prefix)


def generate_synthetic(spec: WorkloadSpec, tokenizer: TokenizerFns | None = None,
                       id_prefix: str = "req") -> list[PreparedRequest]:
    """The synthetic kind: lengths from spec.input_len / output_len, optional shared prefix."""
    rng = np.random.default_rng(spec.seed)
    n = spec.num_requests
    in_lens = spec.input_len.sample(rng, n)
    out_lens = spec.output_len.sample(rng, n)
    prefix_len = int(spec.shared_prefix_len)
    word_rng = np.random.default_rng([spec.seed, 1])
    prefix = ""
    if prefix_len > 0:
        if tokenizer is not None:
            prefix = _fit_exact("", np.random.default_rng([spec.seed, 2]), prefix_len, tokenizer)
        else:
            prefix = " ".join(_words(np.random.default_rng([spec.seed, 2]), prefix_len))
    out = []
    for i in range(n):
        target = max(int(in_lens[i]), prefix_len, 1)
        if tokenizer is not None:
            prompt = _fit_exact(prefix, word_rng, target, tokenizer)
            n_input = len(tokenizer.tokenize(prompt))
        else:
            words = _words(word_rng, target - prefix_len)
            prompt = (prefix + " " if prefix and words else prefix) + " ".join(words)
            n_input = target
        out.append(PreparedRequest(
            request_id=f"{id_prefix}-{i:05d}", prompt=prompt, max_tokens=int(out_lens[i]),
            n_input=n_input, endpoint=spec.endpoint, ignore_eos=spec.ignore_eos,
            temperature=spec.temperature))
    return out
