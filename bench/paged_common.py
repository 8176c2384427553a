"""Shared by bench/paged_decode.py and bench/paged_prefill.py (not a benchmark itself): the
model-shape arguments, and the PyTorch-path `PagedAttention` a C kernel is compared against."""

from __future__ import annotations

import argparse

from infer_bench.backends.engine import paged_attention
from infer_bench.backends.engine.paged_attention import KVCache, PagedAttention, SeqSlice


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """SmolLM2-135M's attention shapes by default, plus threads and timing rounds."""
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)


def torch_path_attention(kernel: str, cache: KVCache, seqs: list[SeqSlice]) -> PagedAttention:
    """The step's PagedAttention built as if native.<kernel>() (paged_decode_kernel or
    paged_prefill_kernel) were unavailable: the PyTorch path."""
    real = getattr(paged_attention.native, kernel)
    setattr(paged_attention.native, kernel, lambda: None)
    try:
        return PagedAttention(cache, seqs)
    finally:
        setattr(paged_attention.native, kernel, real)
