"""Speculative decoding (n-gram prompt lookup) vs plain decoding, side by side, on CPU.

    .venv/bin/python bench/spec_decode.py --max-tokens 64 --threads 1
        [--model smollm2-135m] [--batches 1,8,32] [--free-batches 1,32] [--spec-k 4] [--rounds 2]

Workload (extractive): a chat prompt holding a passage of ~250 tokens and the instruction to
repeat it word for word; greedy decoding. Two engines on the same loaded model (same KV pool
size, prefix caching on), one with `EngineConfig(spec_method="ngram", spec_k=K)`. For each batch
size B (B requests submitted at once; B=1 is one request at a time) the two engines run
alternately, `--rounds` times each (so load from other processes hits both alike), and the script
prints per engine: decode tokens/s = output tokens produced in pure-decode steps / wall time of
those steps (the engine's step trace; prefill steps excluded), the acceptance rate (accepted /
proposed), mean accepted length (accepted proposals per verification), tokens per decode step,
and the speedup (spec / plain decode tokens/s, medians over rounds). Greedy outputs are also
compared: they must be identical, except where two logits tie to float precision, since a
verification pass (k + 1 rows) rounds differently from a decode step; plain decoding at batch 32
vs batch 1 flips the same near-ties (seen here: one request of 32 in the free-form run, top-2
logits equal to 4 decimals, and the batch-1 plain output matched the speculative one). A
second, free-form workload ("write a short story about X") shows the other side: little to
copy, so proposals are mostly rejected. The load average is printed before and after: the
machine is shared.

When to turn speculation off: at batch 1 the target's decode step is memory-bound (the weights
stream once per step whatever the number of query rows), so verifying k + 1 rows costs about one
decode step and every accepted proposal is a free token. At larger batches the step becomes
compute-bound and the k extra rows per sequence (and the per-sequence attention of verification
chunks) cost real time: the gain shrinks and can turn into a loss; on non-extractive text the
acceptance rate is low and the extra rows are pure cost. See the printed table for this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from infer_bench.backends.engine.engine import EngineConfig, LLMEngine
from infer_bench.backends.engine.loader import load_model
from infer_bench.backends.engine.sampling import SamplingParams

PASSAGES = [
    "The lighthouse stood on a narrow spit of granite at the mouth of the harbour, and for "
    "nearly two hundred years its keepers had recorded the weather in a series of leather-bound "
    "logbooks. Each entry followed the same pattern: the hour, the direction and strength of the "
    "wind, the state of the sea, the visibility, and a short remark about any vessel that had "
    "passed. When the light was automated in 1987, the logbooks were moved to the county archive, "
    "where a team of volunteers spent six winters transcribing them. Their work revealed that "
    "autumn storms had become both more frequent and more violent over the period, that the fog "
    "season had shifted by almost three weeks, and that the fishing fleet had shrunk from more than "
    "eighty boats to fewer than a dozen. The volunteers also found the personal notes of the "
    "keepers: a birth, a wedding, a winter when the supply boat could not land for forty days, "
    "and a long description of the night in 1923 when the lens cracked and the keeper kept a "
    "paraffin lamp burning by hand until dawn.",
    "A modern inference server separates two phases of work. During prefill it reads the whole "
    "prompt at once, computing keys and values for every token and storing them in a cache; this "
    "phase is limited by arithmetic throughput because many tokens are processed together. During "
    "decode it produces one token at a time for each request, reading the cached keys and values "
    "and all of the model weights for every step; this phase is limited by memory bandwidth "
    "because very little arithmetic is done per byte that is read. Continuous batching keeps the "
    "accelerator busy by adding new requests to the running batch as soon as others finish, and "
    "chunked prefill splits long prompts so that they do not stall the decoding requests for too "
    "long. Paged attention stores the cache in fixed-size blocks, like pages of virtual memory, so "
    "that memory is not wasted on padding and blocks holding a shared prefix can be reused by many "
    "requests at once. Disaggregated serving goes one step further and runs the two phases on "
    "different machines, moving the cache between them over a fast network link.",
    "To make a simple loaf of bread, mix five hundred grams of strong white flour with ten grams "
    "of salt and seven grams of dried yeast in a large bowl. Make a well in the centre and pour in "
    "three hundred and twenty millilitres of warm water and two tablespoons of olive oil. Stir "
    "with a wooden spoon until the dough comes together, then tip it onto a lightly floured "
    "surface and knead for ten minutes, until it is smooth and springs back when pressed. Put the "
    "dough back in the bowl, cover it with a damp cloth and leave it somewhere warm for about an "
    "hour, until it has doubled in size. Knock it back, shape it into a round, and place it on a "
    "baking tray dusted with flour. Cover it again and leave it to rise for another forty minutes. "
    "Heat the oven to two hundred and twenty degrees, slash the top of the loaf with a sharp "
    "knife, and bake for thirty to thirty-five minutes, until the crust is golden and the loaf "
    "sounds hollow when tapped underneath. Let it cool on a wire rack before slicing.",
    "The committee met on Tuesday to review the proposal for the new cycle path along the river. "
    "The engineer explained that the path would be three metres wide, surfaced with permeable "
    "asphalt, and lit by low-level lamps that would not disturb the bats nesting under the old "
    "railway bridge. Two residents objected that the path would bring more traffic past their "
    "gardens, and one asked whether the trees along the embankment would be cut down. The "
    "engineer replied that only four trees would be removed, all of them diseased, and that "
    "twenty new trees would be planted along the northern bank. The treasurer reported that the "
    "regional transport fund would cover seventy per cent of the cost, and that the remainder "
    "could be met from the reserve without raising the local charge. After a long discussion the "
    "committee voted seven to two in favour of the proposal, subject to a further survey of the "
    "bat population and a public consultation on the design of the lighting.",
]


TOPICS = ["a lighthouse keeper", "a lost umbrella", "the first day of school", "a robot gardener",
          "a storm at sea", "a village bakery", "a chess tournament", "a broken clock"]


def make_prompts(tok, n: int, workload: str = "extract") -> list[list[int]]:
    prompts = []
    for i in range(n):
        if workload == "free":   # free-form text: little to copy, n-gram proposals mostly wrong
            msg = f"Write a short story about {TOPICS[i % len(TOPICS)]} (story {i})."
            prompts.append(tok.encode(tok.apply_chat_template([{"role": "user", "content": msg}])))
            continue
        passage = PASSAGES[i % len(PASSAGES)]
        msg = ("Repeat the following passage exactly, word for word, without any comment.\n\n"
               f"Passage {i}:\n{passage}")
        text = tok.apply_chat_template([{"role": "user", "content": msg}])
        prompts.append(tok.encode(text))
    return prompts


def run_once(engine: LLMEngine, prompts, max_tokens: int, batch: int):
    """Run all prompts, `batch` at a time; returns (decode tok/s, outputs, stats delta, steps)."""
    s0 = engine.stats()
    trace0 = engine.step_id
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    outs, per_step_tokens = [], {}
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        ids = [f"b{batch}-{engine.step_id}-{j}" for j in range(len(group))]
        for rid, p in zip(ids, group):
            engine.add_request(rid, p, params)
        res = {rid: [] for rid in ids}
        while engine.has_unfinished():
            for o in engine.step():
                res[o.request_id].extend(o.new_token_ids)
                if o.finished:
                    for s in o.timing["token_steps"]:
                        per_step_tokens[s] = per_step_tokens.get(s, 0) + 1
        outs.extend(res[r] for r in ids)
    steps = [t for t in engine.step_trace() if t["step"] >= trace0 and t["n_prefill_tokens"] == 0]
    tokens = sum(per_step_tokens.get(t["step"], 0) for t in steps)
    wall = sum(t["wall_s"] for t in steps)
    s1 = engine.stats()
    delta = {"spec_proposed_total": s1.spec.proposed_total - s0.spec.proposed_total,
             "spec_accepted_total": s1.spec.accepted_total - s0.spec.accepted_total,
             "verify_steps": s1.spec.verify_steps_total - s0.spec.verify_steps_total}
    return tokens / wall, outs, delta, tokens / max(1, len(steps)) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--free-batches", default="1,32",
                    help="batch sizes for the free-form (non-extractive) workload ('' to skip)")
    ap.add_argument("--spec-k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  torch threads: "
          f"{torch.get_num_threads()}")
    loaded = load_model(a.model, "cpu", torch.float32)
    common = dict(kv_cache_gb=0.5, max_num_seqs=64, max_num_batched_tokens=2048)
    plain = LLMEngine(EngineConfig(**common), loaded)
    spec = LLMEngine(EngineConfig(spec_method="ngram", spec_k=a.spec_k, **common), loaded)
    tok = loaded.tokenizer
    print(f"model {a.model}, greedy, max_tokens {a.max_tokens}, n-gram k={a.spec_k}; prompt tokens "
          f"{[len(p) for p in make_prompts(tok, len(PASSAGES))]}")
    # warm-up (allocations, rope tables, the prefix cache for the passages)
    for e in (plain, spec):
        run_once(e, make_prompts(tok, 2), 8, 2)
    rows = []
    cases = [("extract", int(b)) for b in a.batches.split(",") if b] + \
        [("free", int(b)) for b in a.free_batches.split(",") if b]
    for workload, batch in cases:
        n_req = max(batch, 2) if batch == 1 else batch
        prompts = make_prompts(tok, n_req, workload)
        rounds = a.rounds if batch <= 8 and workload == "extract" else 1
        tps = {"plain": [], "ngram": []}
        agg = {"spec_proposed_total": 0, "spec_accepted_total": 0, "verify_steps": 0}
        tok_per_step = {"plain": [], "ngram": []}
        identical = True
        for _ in range(rounds):
            t_p, out_p, _, tps_p = run_once(plain, prompts, a.max_tokens, batch)
            t_s, out_s, d, tps_s = run_once(spec, prompts, a.max_tokens, batch)
            tps["plain"].append(t_p)
            tps["ngram"].append(t_s)
            tok_per_step["plain"].append(tps_p)
            tok_per_step["ngram"].append(tps_s)
            identical &= out_p == out_s
            for k in agg:
                agg[k] += d[k]
        p, s = statistics.median(tps["plain"]), statistics.median(tps["ngram"])
        acc = agg["spec_accepted_total"] / max(1, agg["spec_proposed_total"])
        mal = agg["spec_accepted_total"] / max(1, agg["verify_steps"])
        rows.append((workload, batch, p, s, s / p, acc, mal))
        print(f"{workload:>7} batch {batch:>3}: plain {p:7.1f} tok/s | ngram {s:7.1f} tok/s | "
              f"speedup {s / p:5.2f}x | "
              f"acceptance {acc:5.1%} | mean accepted len {mal:4.2f} | tokens/seq/step "
              f"{statistics.median(tok_per_step['ngram']):4.2f} | outputs identical: {identical} "
              f"(rounds {rounds}: plain {[round(x, 1) for x in tps['plain']]}, "
              f"ngram {[round(x, 1) for x in tps['ngram']]})", flush=True)
    sample = run_once(spec, make_prompts(tok, 1), 48, 1)[1][0]
    print(f"sample output: {tok.decode(sample)!r}")
    print(f"load average after: {os.getloadavg()}")
    print("\nworkload  batch  plain tok/s  ngram tok/s  speedup  acceptance  mean accepted len")
    for w, b, p, s, r, acc, mal in rows:
        print(f"{w:>8}  {b:>5}  {p:11.1f}  {s:11.1f}  {r:6.2f}x  {acc:10.1%}  {mal:17.2f}")


if __name__ == "__main__":
    main()
