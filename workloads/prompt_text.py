"""Prompt text of a chosen token length: the tokenizer hooks and the random-word filler that every
workload kind builds its prompts from.

Role in the data flow: a leaf module. `workloads/synthetic.py` (the synthetic kind) and
`workloads/datasets.py` (every other kind) build prompts with `random_words`, `fit_exact` and
`text_of`; the runner and the sharded client load a tokenizer with `load_tokenizer_for`. It
imports nothing else from the package.

With a tokenizer (`TokenizerFns(tokenize, detokenize)`, encoding without special tokens: a server
that adds BOS or a chat template adds its own on top) `fit_exact` hits its target EXACTLY as
counted by `tokenize`: random words are appended, cut to the target in token space, decoded and
re-encoded, and the cut adjusted until the count matches. Without a tokenizer a length is a count
of common English words (about one token each: approximate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

WORDS = (
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


def random_words(rng: np.random.Generator, n: int) -> list[str]:
    """n words drawn from WORDS with `rng` (none for n <= 0)."""
    idx = rng.integers(0, len(WORDS), size=max(n, 0))
    return [WORDS[i] for i in idx]


def fit_exact(head: str, rng: np.random.Generator, target: int, tok: TokenizerFns) -> str:
    """Text that starts with `head` and encodes to exactly `target` tokens (target >= count of
    head); random words fill the rest."""
    enc, dec = tok.tokenize, tok.detokenize
    n_head = len(enc(head)) if head else 0
    if target <= n_head:
        target = n_head if target < n_head else target
    extra = max(8, (target - n_head) * 2 + 8)
    text = head + (" " if head else "") + " ".join(random_words(rng, extra))
    ids = enc(text)
    while len(ids) < target:            # words shorter than expected: add more
        text += " " + " ".join(random_words(rng, target))
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


def text_of(n: int, rng: np.random.Generator, tok: TokenizerFns | None) -> str:
    """Random-word text of exactly n tokens (n words without a tokenizer); at least one."""
    if tok is not None:
        return fit_exact("", rng, max(int(n), 1), tok)
    return " ".join(random_words(rng, max(int(n), 1)))

