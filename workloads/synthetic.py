"""The synthetic workload kind: a WorkloadSpec's length distributions -> a list of
PreparedRequests, deterministic from the seed.

Role in the data flow: `workloads/datasets.build_requests(spec, tokenizer)` (the one entry point
for every kind, which the runner calls once per load point) hands the "synthetic" kind to
`generate_synthetic` here; the PreparedRequests then go to `workloads/loadgen.py`, which fills in
the URL, model and headers.

Lengths are drawn from spec.input_len / spec.output_len with `numpy.random.default_rng(seed)`.
Prompts are random words from `workloads/prompt_text.py`: with a tokenizer each prompt has EXACTLY
n_input tokens as counted by `tokenize(prompt)` (no special tokens; `usage.prompt_tokens` records
what the server counted); without one, prompts are `n_input` common English words (about one
token each: approximate). With shared_prefix_len > 0 every prompt starts with the same prefix text
(about that many tokens; exact with a tokenizer); useful to exercise prefix caching.
"""

from __future__ import annotations

import numpy as np

from infer_bench.backends.client.openai import PreparedRequest

from .prompt_text import TokenizerFns, fit_exact, random_words, text_of
from .spec import WorkloadSpec


def generate_synthetic(spec: WorkloadSpec, tokenizer: TokenizerFns | None = None,
                       id_prefix: str = "req") -> list[PreparedRequest]:
    """The synthetic kind: lengths from spec.input_len / output_len, optional shared prefix."""
    rng = np.random.default_rng(spec.seed)
    n = spec.num_requests
    in_lens, out_lens = spec.sample_lengths(rng, n)
    prefix_len = int(spec.shared_prefix_len)
    word_rng = np.random.default_rng([spec.seed, 1])
    prefix = text_of(prefix_len, np.random.default_rng([spec.seed, 2]), tokenizer) \
        if prefix_len > 0 else ""
    out = []
    for i in range(n):
        target = max(int(in_lens[i]), prefix_len, 1)
        if tokenizer is not None:
            prompt = fit_exact(prefix, word_rng, target, tokenizer)
            n_input = len(tokenizer.tokenize(prompt))
        else:
            words = random_words(word_rng, target - prefix_len)
            prompt = (prefix + " " if prefix and words else prefix) + " ".join(words)
            n_input = target
        out.append(PreparedRequest(
            request_id=f"{id_prefix}-{i:05d}", prompt=prompt, max_tokens=int(out_lens[i]),
            n_input=n_input, endpoint=spec.endpoint, ignore_eos=spec.ignore_eos,
            temperature=spec.temperature))
    return out
