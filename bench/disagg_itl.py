"""Prefill-decode interference: p99 inter-token latency of mono vs disagg 1P1D, same threads.

Command (from the repo root):

    .venv/bin/python bench/disagg_itl.py --model smollm2-135m --input-len 1024 --output-len 64 \
        --rate 0.25 --n 10 --threads 2

A prefill-heavy workload (fresh random prompts of --input-len tokens, --output-len output tokens,
ignore_eos, Poisson arrivals at --rate req/s, the same arrival times and prompts for both) is
served in this process by (a) a mono AsyncEngine with --threads threads, then (b) a DisaggEngine
with one prefill and one decode worker (--threads split evenly, shared-memory KV transfer).
Per token the client-side ITL (gap between consecutive outputs) is recorded; printed side by
side: ITL p50/p90/p99/max, TTFT p50/p99, and the share of decode steps in mono that carried
prefill tokens (the interference that disaggregation removes).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np


async def drive(engine, prompts, arrivals, max_tokens):
    from infer_bench.backends.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    itl, ttft = [], []
    t_start = time.perf_counter()

    async def one(i):
        await asyncio.sleep(max(0.0, t_start + arrivals[i] - time.perf_counter()))
        t0 = time.perf_counter()
        last = None
        async for out in engine.generate(f"itl-{i}-{id(engine)}", prompts[i], params):
            if not out.new_token_ids:
                continue
            now = time.perf_counter()
            if last is None:
                ttft.append(now - t0)
            else:
                gap = now - last
                itl.extend([gap / len(out.new_token_ids)] * len(out.new_token_ids))
            last = now

    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return np.array(itl), np.array(ttft), time.perf_counter() - t_start


def pct(a, q):
    return float(np.percentile(a, q)) if len(a) else float("nan")


async def main_async(args):
    import torch

    from infer_bench.backends.engine.disagg.router import DisaggEngine, DisaggOptions
    from infer_bench.backends.engine.engine import AsyncEngine, EngineConfig
    from infer_bench.backends.engine.loader import load_model

    rng = np.random.default_rng(args.seed)
    arrivals = np.cumsum(rng.exponential(1 / args.rate, args.n))
    arrivals -= arrivals[0]
    results = {}

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    vocab = loaded.config.vocab_size
    prompts = [[int(x) for x in rng.integers(100, vocab - 1, args.input_len)] for _ in range(args.n)]
    mono = AsyncEngine(EngineConfig(num_threads=args.threads, kv_cache_gb=args.kv_cache_gb,
                                    enable_prefix_caching=False), loaded)
    results["mono"] = await drive(mono, prompts, arrivals, args.output_len)
    trace = mono.step_trace()
    mixed = sum(1 for r in trace if r["n_decode_seqs"] and r["n_prefill_tokens"])
    dec = sum(1 for r in trace if r["n_decode_seqs"])
    mono.shutdown()
    del mono, loaded

    eng = DisaggEngine(DisaggOptions(model=args.model, num_threads=args.threads,
                                     engine={"kv_cache_gb": args.kv_cache_gb,
                                             "enable_prefix_caching": False}))
    await eng.start()
    results["disagg 1P1D"] = await drive(eng, prompts, arrivals, args.output_len)
    await eng.shutdown()

    print(f"\n== ITL, input {args.input_len}, output {args.output_len}, Poisson {args.rate:g} req/s, "
          f"{args.n} requests, {args.threads} threads in total ==")
    print(f"{'deployment':<14}{'ITL p50 ms':>11}{'p90':>9}{'p99':>9}{'max':>9}{'TTFT p50 s':>12}"
          f"{'p99':>8}{'wall s':>8}")
    for name, (itl, ttft, wall) in results.items():
        print(f"{name:<14}{pct(itl, 50) * 1e3:>11.1f}{pct(itl, 90) * 1e3:>9.1f}"
              f"{pct(itl, 99) * 1e3:>9.1f}{itl.max() * 1e3:>9.1f}{pct(ttft, 50):>12.2f}"
              f"{pct(ttft, 99):>8.2f}{wall:>8.1f}")
    m, d = results["mono"][0], results["disagg 1P1D"][0]
    print(f"p99 ITL mono / disagg = {pct(m, 99) / pct(d, 99):.1f}x; mono decode steps co-batched "
          f"with prefill: {mixed}/{dec}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.25)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache-gb", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
