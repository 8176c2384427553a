"""KV handoff cost of disaggregated serving: shared-memory copy speed and what it adds to TTFT.

Command (from the repo root):

    .venv/bin/python bench/disagg_kv_transfer.py --model smollm2-135m --prompt-len 2048

Part 1 (in process, single thread): the K/V of a `--prompt-len`-token prompt (the model's shape:
layers x 2 x kv heads x head_dim, fp32) is copied from a private KV pool into a decode worker's
shared-memory pool with the code the prefill worker's sender uses (`copy_runs`), for contiguous
and for scattered block tables, side by side with a plain single-thread memcpy of the same
number of bytes (numpy copy between two preallocated contiguous buffers). Prints GB/s and the
ratio (target >= 50%).

Part 2 (processes): a 1P1D deployment (shared memory, emulated `--link-gbps` link) serves
`--n` fresh prompts of `--prompt-len` tokens with layer-wise transfer on and off, and a mono
engine with the prefill worker's thread count serves the same prompts ("prefill alone"). Prints
TTFT of each, transfer time and bytes, and TTFT(disagg) - TTFT(prefill alone) as a share of the
prefill time (target <= 10% with layer-wise transfer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
import torch


def bench_copy(layout, prompt_len: int, reps: int) -> None:
    from infer_bench.backends.engine.disagg.transport import KVLayout, ShmPool, copy_runs, run_indices, slot_runs

    torch.set_num_threads(1)
    bs = layout.block_size
    nblk = -(-prompt_len // bs)
    lay = KVLayout(layout.num_layers, layout.n_kv_heads, layout.head_dim, bs, nblk * 2, "float32")
    src = torch.randn(lay.shape)
    name = f"/ib-kv-bench-{time.monotonic_ns()}"
    dst = ShmPool(name, lay, create=True)
    try:
        dst.kv.zero_()  # fault the pages in (a decode worker's pool is warm too)
        nbytes = prompt_len * lay.token_bytes_per_layer() * lay.num_layers
        a = np.random.rand(nbytes // 8)
        b = np.empty_like(a)
        rows = []
        tables = {"contiguous blocks": (list(range(nblk)), list(range(nblk, 2 * nblk))),
                  "scattered blocks": (list(np.random.permutation(2 * nblk)[:nblk]),
                                       list(np.random.permutation(2 * nblk)[:nblk]))}
        t_mem = []
        for _ in range(reps):
            t0 = time.perf_counter()
            np.copyto(b, a)
            t_mem.append(time.perf_counter() - t0)
        mem = min(t_mem)
        for label, (st, dt) in tables.items():
            runs = slot_runs([int(x) for x in st], [int(x) for x in dt], 0, prompt_len, bs)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                idx = run_indices(runs) if len(runs) > 16 else None
                for layer in range(lay.num_layers):
                    copy_runs(dst.kv[layer], src[layer], runs, idx)
                ts.append(time.perf_counter() - t0)
            rows.append((label, min(ts), len(runs)))
        # check the bytes arrived
        s0, d0, n0 = runs[0]
        assert torch.equal(dst.kv[3][:, :, d0:d0 + n0], src[3][:, :, s0:s0 + n0])
        print(f"\n== shared-memory KV handoff, {prompt_len} tokens, {nbytes / 1e6:.1f} MB, 1 thread ==")
        print(f"{'path':<34}{'time ms':>10}{'GB/s':>8}{'vs memcpy':>11}")
        print(f"{'plain memcpy (numpy, 1 thread)':<34}{mem * 1e3:>10.2f}{nbytes / mem / 1e9:>8.2f}{'100%':>11}")
        for label, t, nr in rows:
            print(f"{'shm copy_runs, ' + label + f' ({nr} runs/layer)':<34}"[:60].ljust(34)
                  + f"{t * 1e3:>10.2f}{nbytes / t / 1e9:>8.2f}{mem / t:>10.0%}")
        return nbytes, rows[0][1]
    finally:
        dst.unlink()


async def bench_e2e(args, layout_holder) -> None:
    from infer_bench.backends.engine.disagg.router import DisaggEngine, DisaggOptions
    from infer_bench.backends.engine.engine import EngineConfig, LLMEngine
    from infer_bench.backends.engine.loader import load_model
    from infer_bench.backends.engine.sampling import SamplingParams

    threads_per_worker = max(1, args.threads // 2)
    engine_kw = {"kv_cache_gb": args.kv_cache_gb, "max_num_batched_tokens": args.max_batched}
    eng = DisaggEngine(DisaggOptions(model=args.model, num_threads=args.threads, engine=engine_kw,
                                     kv_link_gbps=args.link_gbps))
    await eng.start()
    rng = np.random.default_rng(0)
    vocab = eng.vocab_size
    layout = eng.workers[-1].ready["layout"]
    layout_holder.append(layout)

    def fresh():
        return [int(x) for x in rng.integers(100, vocab - 1, args.prompt_len)]

    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    results = {}
    for layerwise in (True, False):
        eng.layerwise = layerwise
        rows = []
        for i in range(args.n):
            t0 = time.perf_counter()
            ttft = None
            async for out in eng.generate(f"kv-{layerwise}-{i}", fresh(), params):
                if ttft is None and out.new_token_ids:
                    ttft = time.perf_counter() - t0
                if out.finished:
                    rows.append((ttft, out.timing))
        results[layerwise] = rows
    await eng.shutdown()

    torch.set_num_threads(threads_per_worker)
    loaded = load_model(args.model)
    mono = LLMEngine(EngineConfig(enable_prefix_caching=False, kv_cache_gb=args.kv_cache_gb,
                                  max_num_batched_tokens=args.max_batched,
                                  num_threads=threads_per_worker), loaded)
    mono_ttft = []
    for i in range(args.n):
        p = fresh()
        t0 = time.perf_counter()
        mono.generate([p], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
        mono_ttft.append(time.perf_counter() - t0)
    m = statistics.median(mono_ttft)
    print(f"\n== TTFT, {args.prompt_len}-token prompts, 1P1D shm, link {args.link_gbps:g} Gb/s, "
          f"{threads_per_worker} thread(s)/worker, median of {args.n} ==")
    print(f"{'deployment':<28}{'TTFT s':>9}{'prefill s':>11}{'transfer s':>12}{'xfer busy s':>13}"
          f"{'MB':>8}{'overhead vs prefill':>21}")
    print(f"{'prefill alone (mono engine)':<28}{m:>9.3f}{m:>11.3f}{'':>12}{'':>13}{'':>8}{'':>21}")
    for layerwise, rows in results.items():
        ttft = statistics.median(r[0] for r in rows)
        pre = statistics.median(r[1]["prefill_s"] for r in rows)
        xfer = statistics.median(r[1]["transfer_s"] for r in rows)
        busy = statistics.median(r[1]["transfer_busy_s"] for r in rows)
        mb = rows[0][1]["transfer_bytes"] / 1e6
        label = "disagg, layer-wise" if layerwise else "disagg, after prefill"
        print(f"{label:<28}{ttft:>9.3f}{pre:>11.3f}{xfer:>12.4f}{busy:>13.4f}{mb:>8.1f}"
              f"{(ttft - m) / m:>20.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="total for the 1P1D deployment")
    ap.add_argument("--link-gbps", type=float, default=100.0)
    ap.add_argument("--kv-cache-gb", type=float, default=0.5)
    ap.add_argument("--max-batched", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    layout_holder: list = []
    if not args.skip_e2e:
        asyncio.run(bench_e2e(args, layout_holder))
    from infer_bench.backends.engine.disagg.transport import KVLayout
    if layout_holder:
        lay = KVLayout(**layout_holder[0])
    else:  # SmolLM2-135M's shape
        lay = KVLayout(30, 3, 64, 16, 1, "float32")
    bench_copy(lay, args.prompt_len, args.reps)


if __name__ == "__main__":
    main()
