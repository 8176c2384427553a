"""Weight products: torch's `x @ W` (MKL) vs oneDNN with the weight reordered once, side by side.

    .venv/bin/python bench/onednn_linear.py [--threads 2] [--rows 1,4,16,32,64,128,512]

What the engine's `model.project` chooses between, on the shapes of SmolLM2-135M (random fp32
weights, 30 layers x [qkv 576x960, o 576x576, gate_up 576x3072, down 1536x576] and the 576x49152
LM head). For each row count T it times, alternating the two ways round by round (the box is
shared), the best of N repetitions of all 120 layer products and of the head, and prints both
times, the ratio and the largest relative difference of the results (float rounding order only).
For T = 1 it also times the two 2-thread splits of the pure-torch fallback (`small_mm`'s K split
and compute_logits' N split of the head).

Measured 2026-11-30 on the 2-core AMD EPYC (AVX2) box, 2 threads, load ~1-2.4 (layers, ms):
T=1 25.9 -> 19.5, T=4 68.5 -> 23.4, T=16 77.5 -> 47.8, T=32 128 -> 73, T=64 201 -> 134,
T=512 970 -> 784; head: T=32 47.9 -> 15.3, T=1 5.3 -> 4.4 (N split 2.8, kept for T=1).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]


def best_ms(f, reps: int) -> float:
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


def pack(w_in_out: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w_in_out.t().contiguous(), None)


def onednn(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,4,16,32,64,128,512")
    ap.add_argument("--layers", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, load avg {os.getloadavg()[0]:.2f}")
    ws = [[torch.randn(k, n) for k, n in SHAPES] for _ in range(a.layers)]
    ps = [[pack(w) for w in layer] for layer in ws]
    head = torch.randn(576, 49152)
    head_p = pack(head)
    head_split = head.view(576, 2, -1).permute(1, 0, 2).contiguous()
    print(f"{'T':>5} {'layers mm':>10} {'oneDNN':>8} {'ratio':>6} {'relerr':>8} | {'head mm':>8} {'oneDNN':>8} {'ratio':>6}")
    for T in [int(r) for r in a.rows.split(",")]:
        xs = [torch.randn(T, k) for k, _ in SHAPES]
        xh = torch.randn(T, 576)
        reps = 15 if T < 128 else 5
        mm = lambda: [x @ w for layer in ws for x, w in zip(xs, layer)]  # noqa: E731
        dn = lambda: [onednn(x, p) for layer in ps for x, p in zip(xs, layer)]  # noqa: E731
        err = max(((u - v).abs().max() / u.abs().max()).item() for u, v in zip(mm(), dn()))
        t_mm, t_dn, h_mm, h_dn = [], [], [], []
        for _ in range(2):  # A/B/A/B
            t_mm.append(best_ms(mm, reps))
            t_dn.append(best_ms(dn, reps))
            h_mm.append(best_ms(lambda: xh @ head, reps))
            h_dn.append(best_ms(lambda: onednn(xh, head_p), reps))
        print(f"{T:5d} {min(t_mm):10.2f} {min(t_dn):8.2f} {min(t_mm) / min(t_dn):6.2f} {err:8.1e} | "
              f"{min(h_mm):8.2f} {min(h_dn):8.2f} {min(h_mm) / min(h_dn):6.2f}", flush=True)
        if T == 1 and a.threads >= 2:
            def ksplit():
                for layer in ws:
                    for x, w in zip(xs, layer):
                        k = w.shape[0]
                        torch.bmm(x.reshape(1, 2, k // 2).transpose(0, 1), w.view(2, k // 2, -1)).sum(0)
            nsplit = lambda: torch.bmm(xh.expand(2, 1, -1), head_split)  # noqa: E731
            print(f"      T=1 fallbacks: layers K-split bmm {best_ms(ksplit, reps):.2f} ms; "
                  f"head N-split bmm {best_ms(nsplit, reps):.2f} ms")


if __name__ == "__main__":
    main()
