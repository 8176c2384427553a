"""Batch-1 decode speed of our LlamaForCausalLM vs Hugging Face transformers, side by side.

    .venv/bin/python bench/model_decode.py [--model smollm2-135m] [--steps 32] [--rounds 5]

Both models hold the same fp32 weights (HF loads the cached HF directory of the default model).
For 1 and 2 torch threads it times, alternating the two implementations round by round (so load
from other processes hits both alike), one decode step = forward of one token with a KV cache of
~64 tokens + LM head logits: ours through a simple cached dense attention, HF through its
DynamicCache. Also times the weight-layout choice on one layer's matrices: `x @ W` with W stored
(in, out) vs `F.linear(x, W)` with the nn.Linear (out, in) layout. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from infer_bench.backends.engine.loader import load_model


class CachedAttention:
    def __init__(self):
        self.k, self.v = {}, {}

    def attend(self, i, q, k, v):
        if i in self.k:
            k = self.k[i] = torch.cat([self.k[i], k])
            v = self.v[i] = torch.cat([self.v[i], v])
        else:
            self.k[i], self.v[i] = k, v
        rep = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1),
                                             v.repeat_interleave(rep, 1).transpose(0, 1),
                                             is_causal=q.shape[0] > 1)
        return out.transpose(0, 1)


def ours_step_s(model, prompt: list[int], steps: int) -> float:
    attn = CachedAttention()
    with torch.inference_mode():
        h = model(torch.tensor(prompt), torch.arange(len(prompt)), attn)
        tok = int(model.compute_logits(h[-1:]).argmax())
        t0 = time.perf_counter()
        for i in range(steps):
            h = model(torch.tensor([tok]), torch.tensor([len(prompt) + i]), attn)
            tok = int(model.compute_logits(h).argmax())
        return (time.perf_counter() - t0) / steps


def hf_step_s(hf, prompt: list[int], steps: int) -> float:
    with torch.inference_mode():
        out = hf(torch.tensor([prompt]), use_cache=True)
        past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        t0 = time.perf_counter()
        for _ in range(steps):
            out = hf(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        return (time.perf_counter() - t0) / steps


def layout_ms(model, reps: int = 50) -> tuple[float, float]:
    """One layer's four matmuls for one token: (in,out) `x @ W` vs nn.Linear layout, in ms."""
    layer = model.layers[0]
    ws = [layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w]
    ws_t = [w.t().contiguous() for w in ws]
    xs = [torch.randn(1, w.shape[0]) for w in ws]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(reps):
            for x, w in zip(xs, ws):
                x @ w
        t1 = time.perf_counter()
        for _ in range(reps):
            for x, w in zip(xs, ws_t):
                F.linear(x, w)
        t2 = time.perf_counter()
    return (t1 - t0) / reps * 1e3, (t2 - t1) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    lm = load_model(args.model)
    hf = AutoModelForCausalLM.from_pretrained(str(lm.path), dtype=torch.float32).eval()
    prompt = lm.tokenizer.encode(lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a long story about a robot who learns to paint."}]))
    print(f"model {args.model}: {lm.source_description}; prompt {len(prompt)} tokens, {args.steps} decode steps")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ours_step_s(lm.model, prompt, 2), hf_step_s(hf, prompt, 2)  # warm-up
        ours, ref, lay_in_out, lay_linear = [], [], [], []
        for _ in range(args.rounds):
            ours.append(ours_step_s(lm.model, prompt, args.steps))
            ref.append(hf_step_s(hf, prompt, args.steps))
            a, b = layout_ms(lm.model)
            lay_in_out.append(a)
            lay_linear.append(b)
        o, r = statistics.median(ours), statistics.median(ref)
        a, b = statistics.median(lay_in_out), statistics.median(lay_linear)
        print(f"threads={threads}: ours {o * 1e3:6.1f} ms/step ({1 / o:5.1f} tok/s)   "
              f"HF {r * 1e3:6.1f} ms/step ({1 / r:5.1f} tok/s)   speedup {r / o:4.2f}x")
        print(f"           layer-0 matmuls: (in,out) x@W {a:.2f} ms  vs  nn.Linear layout {b:.2f} ms  "
              f"-> {b / a:4.2f}x")


if __name__ == "__main__":
    main()
