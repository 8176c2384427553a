"""Workloads beyond synthetic lengths: ShareGPT files, shared-prefix groups, multi-turn
conversations and timestamped traces; `build_requests(spec, tokenizer)` is the one entry point
for every `WorkloadSpec.kind`.

Role in the data flow: the runner calls `build_requests(spec, tokenizer)` once per load point;
the "synthetic" kind is built by `workloads/synthetic.py`, the others here, all from the prompt
text helpers of `workloads/prompt_text.py` (imports go one way: datasets -> synthetic ->
prompt_text); the PreparedRequests then go to `workloads/loadgen.py`. Everything is deterministic from the spec's
seed (numpy PCG64): the same spec, seed, files and tokenizer give the same requests, bit for bit.

Token counts: with a tokenizer (`prompt_text.TokenizerFns`, encoding without special tokens) every
count here is the tokenizer's; generated text (suffixes, user turns, stand-in answers, trace
prompts given by length) hits its target exactly. Without one, counts are whitespace words
(approximate; the server's `usage` records what it counted).

Formats:
- ShareGPT (read by `workloads/dataset_files.py`): a JSONL file, one `{"conversations": [{"from": "human"|"gpt", "value": str}, ...]}`
  per line, or a JSON file holding a list of such objects (the original ShareGPT dump). "user"
  and "assistant" are accepted as roles too; "system" turns are skipped. A request uses the
  first human turn as prompt and the gpt reply that follows it for the output length (its token
  count, capped by spec.max_output_len). Conversations without such a pair are skipped; a line
  that is not valid JSON or has the wrong shape raises DatasetError naming the file and line.
- Trace: JSONL, one `{"timestamp": seconds, "input_len": int | "prompt": str,
  "output_len": int}` per line (blank lines and lines starting with # are skipped); timestamps
  must not decrease. Each request carries `send_at_s` = its timestamp.

The bundled sample (`workloads/data/sample_sharegpt.jsonl`, ~200 short conversations written for
this project, no third-party text) is the default dataset of the "sharegpt" kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infer_bench.backends.client.openai import PreparedRequest

from .prompt_text import TokenizerFns, fit_exact, random_words, text_of
from .dataset_files import DatasetError, read_sharegpt, read_trace, sample_dataset_path  # noqa: F401
from .spec import WorkloadSpec
from .synthetic import generate_synthetic

# ---------------------------------------------------------------------------- helpers

def _count(text: str, tok: TokenizerFns | None) -> int:
    return len(tok.tokenize(text)) if tok is not None else len(text.split())


def _request(spec: WorkloadSpec, rid: str, prompt, max_tokens: int, n_input: int,
             **kw: Any) -> PreparedRequest:
    return PreparedRequest(request_id=rid, prompt=prompt, max_tokens=max(1, int(max_tokens)),
                           n_input=int(n_input), endpoint=spec.endpoint,
                           ignore_eos=spec.ignore_eos, temperature=spec.temperature, **kw)


def _cap(n: int, spec: WorkloadSpec) -> int:
    n = max(1, int(n))
    return min(n, spec.max_output_len) if spec.max_output_len is not None else n


# ---------------------------------------------------------------------------- kinds

def build_sharegpt(spec: WorkloadSpec, tok: TokenizerFns | None = None,
                   id_prefix: str = "req") -> list[PreparedRequest]:
    path = spec.dataset_path or sample_dataset_path()
    pairs = []
    for conv in read_sharegpt(path):
        for i, (role, text) in enumerate(conv):
            if role == "user":
                if i + 1 < len(conv) and conv[i + 1][0] == "assistant" and text.strip():
                    pairs.append((text, conv[i + 1][1]))
                break
    if not pairs:
        raise DatasetError(f"{path}: no conversation with a human turn followed by a gpt reply")
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(pairs))
    n = spec.num_requests
    out_lens = spec.output_len.sample(np.random.default_rng([spec.seed, 3]), n)
    reqs = []
    for i in range(n):
        prompt, reply = pairs[int(order[i % len(pairs)])]
        n_out = _count(reply, tok) if spec.output_len_from_dataset else int(out_lens[i])
        reqs.append(_request(spec, f"{id_prefix}-{i:05d}", prompt, _cap(n_out, spec),
                             _count(prompt, tok)))
    return reqs


def shared_prefix_groups(spec: WorkloadSpec) -> list[int]:
    """The size of each shared-prefix group: prompts_per_prefix each when set, else
    spec.num_requests spread over num_prefixes groups (the first ones one larger; no empty
    group). Sums to spec.num_requests."""
    if spec.prompts_per_prefix is not None:
        return [spec.prompts_per_prefix] * spec.num_prefixes
    n_groups = min(spec.num_prefixes, spec.num_requests)
    base, extra = divmod(spec.num_requests, n_groups)
    return [base + 1] * extra + [base] * (n_groups - extra)


def build_shared_prefix(spec: WorkloadSpec, tok: TokenizerFns | None = None,
                        id_prefix: str = "req") -> list[PreparedRequest]:
    """Groups (`shared_prefix_groups`) of prompts: each group's prefix of exactly
    shared_prefix_len tokens followed by suffixes of input_len tokens; with a tokenizer every
    prompt's first K token ids equal its prefix's ids."""
    sizes, k = shared_prefix_groups(spec), int(spec.shared_prefix_len)
    n = sum(sizes)
    rng = np.random.default_rng(spec.seed)
    suffix_lens = spec.input_len.sample(rng, n)
    out_lens = spec.output_len.sample(rng, n)
    word_rng = np.random.default_rng([spec.seed, 1])
    items = []
    for g, m in enumerate(sizes):
        prefix_rng = np.random.default_rng([spec.seed, 2, g])
        prefix = text_of(k, prefix_rng, tok)
        for _ in range(16):                  # a prefix that survives concatenation unchanged
            if tok is None or _prefix_stable(prefix, tok, word_rng):
                break
            prefix = text_of(k, prefix_rng, tok)
        prefix_ids = tok.tokenize(prefix) if tok is not None else None
        for j in range(m):
            i = len(items)                   # the prompt's index over all groups
            target = k + int(suffix_lens[i])
            if tok is None:
                prompt = prefix + " " + " ".join(random_words(word_rng, int(suffix_lens[i])))
                n_in = target
            else:
                for _ in range(16):
                    prompt = fit_exact(prefix, word_rng, target, tok)
                    ids = tok.tokenize(prompt)
                    if ids[:k] == prefix_ids:
                        break
                else:
                    raise RuntimeError(f"could not extend shared prefix {g} by "
                                       f"{int(suffix_lens[i])} tokens without changing it")
                n_in = len(ids)
            items.append((g, j, prompt, n_in, int(out_lens[i])))
    if spec.shuffle:
        perm = np.random.default_rng([spec.seed, 4]).permutation(len(items))
        items = [items[int(p)] for p in perm]
    return [_request(spec, f"{id_prefix}-g{g:03d}-{j:04d}", prompt, out, n_in)
            for g, j, prompt, n_in, out in items]


def _prefix_stable(prefix: str, tok: TokenizerFns, rng: np.random.Generator) -> bool:
    ids = tok.tokenize(prefix)
    probe_rng = np.random.default_rng(int(rng.integers(1 << 30)))
    probe = prefix + " " + " ".join(random_words(probe_rng, 4))
    return tok.tokenize(probe)[:len(ids)] == ids


def _render(history: list[tuple[str, str]], endpoint: str):
    """Chat messages (chat endpoint) or a plain-text transcript ending in 'Assistant:'."""
    if endpoint == "chat":
        return [{"role": r, "content": t} for r, t in history]
    lines = [f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in history]
    return "\n".join(lines) + "\nAssistant:"


def _prompt_tokens(prompt, tok: TokenizerFns | None) -> int:
    if isinstance(prompt, str):
        return _count(prompt, tok)
    return sum(_count(m["content"], tok) for m in prompt)


def build_multi_turn(spec: WorkloadSpec, tok: TokenizerFns | None = None,
                     id_prefix: str = "req") -> list[PreparedRequest]:
    """spec.num_requests conversations x spec.num_turns turns (fewer where a ShareGPT
    conversation is shorter). Turn t's prompt = all earlier (user, assistant) pairs + user t;
    the assistant text in the history is a fixed stand-in of that turn's output length (or the
    dataset's reply), so prompts are known up front and grow turn by turn."""
    n_conv, n_turns = spec.num_requests, spec.num_turns
    convs: list[list[tuple[str, str, int]]] = []     # (user text, assistant text, max_tokens)
    if spec.dataset_path:
        usable = []
        for conv in read_sharegpt(spec.dataset_path):
            pairs = [(conv[i][1], conv[i + 1][1]) for i in range(len(conv) - 1)
                     if conv[i][0] == "user" and conv[i + 1][0] == "assistant"]
            if pairs:
                usable.append(pairs[:n_turns])
        if not usable:
            raise DatasetError(f"{spec.dataset_path}: no conversation with a human/gpt pair")
        order = np.random.default_rng(spec.seed).permutation(len(usable))
        for c in range(n_conv):
            pairs = usable[int(order[c % len(usable)])]
            convs.append([(u, a, _cap(_count(a, tok), spec)) for u, a in pairs])
    else:
        rng = np.random.default_rng(spec.seed)
        in_lens = spec.input_len.sample(rng, n_conv * n_turns).reshape(n_conv, n_turns)
        out_lens = spec.output_len.sample(rng, n_conv * n_turns).reshape(n_conv, n_turns)
        word_rng = np.random.default_rng([spec.seed, 1])
        for c in range(n_conv):
            turns = []
            for t in range(n_turns):
                user = text_of(int(in_lens[c, t]), word_rng, tok)
                answer = text_of(int(out_lens[c, t]), word_rng, tok)
                turns.append((user, answer, int(out_lens[c, t])))
            convs.append(turns)
    reqs = []
    for c, turns in enumerate(convs):
        cid = f"{id_prefix}-c{c:04d}"
        history: list[tuple[str, str]] = []
        for t, (user, answer, max_tokens) in enumerate(turns):
            history.append(("user", user))
            prompt = _render(history, spec.endpoint)
            reqs.append(_request(spec, f"{cid}-t{t}", prompt, max_tokens,
                                 _prompt_tokens(prompt, tok), conversation_id=cid, turn=t,
                                 think_time_s=spec.think_time_s if t > 0 else 0.0))
            history.append(("assistant", answer))
    return reqs


def build_trace(spec: WorkloadSpec, tok: TokenizerFns | None = None,
                id_prefix: str = "req") -> list[PreparedRequest]:
    entries = read_trace(spec.dataset_path)[:spec.num_requests]
    out_lens = spec.output_len.sample(np.random.default_rng([spec.seed, 3]), len(entries))
    word_rng = np.random.default_rng([spec.seed, 1])
    reqs = []
    for i, e in enumerate(entries):
        if "prompt" in e:
            prompt = e["prompt"]
            n_in = _count(prompt, tok)
        else:
            prompt = text_of(e["input_len"], word_rng, tok)
            n_in = _count(prompt, tok) if tok is not None else e["input_len"]
        n_out = e.get("output_len", int(out_lens[i]))
        reqs.append(_request(spec, f"{id_prefix}-{i:05d}", prompt, n_out, n_in,
                             send_at_s=e["timestamp"]))
    return reqs


_BUILDERS = {
    "synthetic": generate_synthetic,
    "sharegpt": build_sharegpt,
    "shared_prefix": build_shared_prefix,
    "multi_turn": build_multi_turn,
    "trace": build_trace,
}


def request_count_note(spec: WorkloadSpec, n_built: int) -> str | None:
    """One line saying why `n_built` requests differ from the spec.num_requests asked for
    (None when they do not): multi_turn counts conversations, a trace may be shorter."""
    asked = spec.num_requests
    if n_built == asked:
        return None
    if spec.kind == "multi_turn":
        why = f"{asked} conversations of up to {spec.num_turns} turns each"
    elif spec.kind == "trace":
        why = f"the trace {spec.dataset_path} has only {n_built} entries"
    else:
        why = f"the {spec.kind} workload built {n_built}"
    return f"warning: sending {n_built} requests per load point, not {asked}: {why}"


def build_requests(spec: WorkloadSpec, tokenizer: TokenizerFns | None = None,
                   id_prefix: str = "req") -> list[PreparedRequest]:
    """The PreparedRequests of any WorkloadSpec kind (url empty: the load generator fills it)."""
    try:
        builder = _BUILDERS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown workload kind {spec.kind!r} "
                         f"(one of {', '.join(_BUILDERS)})") from None
    return builder(spec, tokenizer, id_prefix)
