"""The fused row-wise ops (csrc/fused_ops.c) vs the PyTorch ops they replace, side by side.

    .venv/bin/python bench/fused_ops.py                 # SmolLM2-135M shapes, 512 rows, 2 threads
    .venv/bin/python bench/fused_ops.py --rows 64 --threads 1

Per op: the best of 5 batches of 200 calls, each side in turn, and the ratio; then the per-layer
sum (two add + RMSNorm, one SiLU * up, one RoPE on the q and k heads). Outputs are compared too.
"""

from __future__ import annotations

import argparse
import time

import torch

from infer_bench.backends.engine import fused_ops, native


def best_ms(fn, reps: int = 200) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if native.fused_ops_library() is None:
        raise SystemExit("the native fused ops did not build (no C compiler?)")
    g = torch.Generator().manual_seed(0)
    T, h, d = args.rows, args.hidden, args.head_dim
    x, res, w = torch.randn(T, h, generator=g), torch.randn(T, h, generator=g), torch.randn(h, generator=g)
    gu = torch.randn(T, 2 * args.intermediate, generator=g)
    n_rot = args.heads + args.kv_heads
    qkv = torch.randn(T, n_rot + args.kv_heads, d, generator=g)
    cos, sin = torch.randn(T, 1, d, generator=g), torch.randn(T, 1, d, generator=g)

    def torch_norm():
        hh = x + res
        return torch.nn.functional.rms_norm(hh, (h,), w, 1e-5), hh

    def torch_silu():
        a, b = gu.chunk(2, dim=-1)
        return torch.nn.functional.silu(a) * b

    def torch_rope():
        return fused_ops.apply_rope(qkv[:, :n_rot], cos, sin)

    buf = qkv.clone()
    cases = [("add + RMSNorm", torch_norm, lambda: fused_ops.add_rms_norm(x, res, w, 1e-5), 2),
             ("SiLU * up", torch_silu, lambda: fused_ops.silu_mul(gu), 1),
             ("RoPE (q, k heads)", torch_rope, lambda: fused_ops.rope_(buf, n_rot, cos, sin), 1)]
    # same results (RoPE on a fresh copy: the timed calls rotate `buf` again and again)
    torch.testing.assert_close(fused_ops.add_rms_norm(x, res, w, 1e-5), torch_norm(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_ops.silu_mul(gu), torch_silu(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_ops.rope_(qkv.clone(), n_rot, cos, sin)[:, :n_rot], torch_rope(),
                               rtol=1e-5, atol=1e-5)
    print(f"{T} rows, hidden {h}, intermediate {args.intermediate}, {n_rot} rotated heads of {d}, "
          f"{torch.get_num_threads()} threads")
    tot_t = tot_f = 0.0
    for name, a, b, per_layer in cases:
        ta, tb = best_ms(a), best_ms(b)
        tot_t += per_layer * ta
        tot_f += per_layer * tb
        print(f"  {name:18s} torch {ta:6.3f} ms   fused {tb:6.3f} ms   {ta / tb:4.2f}x")
    print(f"per layer: torch {tot_t:.3f} ms   fused {tot_f:.3f} ms   {tot_t / tot_f:.2f}x")


if __name__ == "__main__":
    main()
