"""The Llama-family decoder (Llama, Qwen2, Mistral, SmolLM) that the reference engine runs.

Data flow: `loader.load_model` builds `LlamaForCausalLM(cfg)` and fills it with
`load_hf_state_dict` (Hugging Face parameter names). The engine calls
`hidden = model(input_ids, positions, attn)` on a flattened batch (many sequences concatenated,
`attn` knows the boundaries and owns the KV cache) and `model.compute_logits(hidden[rows])` on the
rows it samples from.

Weight layout (measured, see bench/model_decode.py): a batch-1 decode step is a chain of
matrix-vector products, and on CPU a weight stored (in, out)-major and multiplied as `x @ W`
streams about twice as fast as the nn.Linear (out, in) layout. So every projection is stored
transposed and contiguous, q/k/v are fused into one matrix and gate/up into another (fewer, larger
matmuls), and the LM head keeps its own (hidden, vocab) copy even when tied to the embeddings.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_ops
from .attention import Attention
from .config import ModelConfig


SINGLE_THREAD_MAX_TOKENS = 4


def single_thread_small_steps(run):
    """Decorator for `ModelRunner.run(self, scheduled)`: on CPU, a step of at most
    SINGLE_THREAD_MAX_TOKENS tokens runs with one torch thread (the previous count is restored).

    Measured (bench/engine_vs_hf.py, 2-core box shared with other jobs): such a step is a chain
    of matrix-vector products that torch runs on one thread anyway, so on a quiet machine both
    settings give the same best step (40.6 vs 40.9 ms, SmolLM2-135M); but every small op that
    opens an OpenMP region (batched attention matmuls, large reductions) then waits at a barrier
    for a second thread the OS may not schedule for milliseconds, and the idle worker spins
    against our main thread: median step 723 ms with 2 threads vs 94 ms with 1 under load ~4.
    """
    @functools.wraps(run)
    def wrapper(self, scheduled, *args, **kwargs):
        global _outer_threads
        n = torch.get_num_threads()
        if (n == 1 or getattr(self, "device", torch.device("cpu")).type != "cpu"
                or sum(k for _, k in scheduled) > SINGLE_THREAD_MAX_TOKENS):
            return run(self, scheduled, *args, **kwargs)
        torch.set_num_threads(1)
        _outer_threads = n
        try:
            return run(self, scheduled, *args, **kwargs)
        finally:
            _outer_threads = None
            torch.set_num_threads(n)
    return wrapper


_outer_threads: int | None = None  # the thread count single_thread_small_steps lowered to 1


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


def _with_threads(n: int, fn, *args):
    """fn(*args) run with n torch threads; the count before is restored (untouched when equal)."""
    cur = torch.get_num_threads()
    if cur == n:
        return fn(*args)
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(cur)


def small_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [T, K] @ w [K, N] (w stored (in, out)); for the few-row products of small CPU steps, on
    2 threads by splitting K: bmm(x halves [2, T, K/2], w halves [2, K/2, N]).sum(0).

    The fallback of `project` where oneDNN is missing. torch runs a product with T <= 4 rows as
    matrix-vector work on one thread whatever the setting; a 2-batch bmm is split over its batch,
    one half of the weight streamed per thread, and `w.view(2, K/2, N)` is a free view of the
    stored weight. Same math as x @ w up to float rounding order. Measured (SmolLM2-135M, one
    decode step's 120 layer products, 2 cores): 20.0 ms vs 27.8 ms for x @ w.
    """
    T, k = x.shape
    if T > SINGLE_THREAD_MAX_TOKENS or k % 2 or x.device.type != "cpu" or \
            (_outer_threads or torch.get_num_threads()) < 2:
        return x @ w
    halves = x.reshape(T, 2, k // 2).transpose(0, 1)
    return _with_threads(2, _bmm_sum, halves, w.view(2, k // 2, w.shape[1]))


def _bmm_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, b).sum(0)


def project(x: torch.Tensor, w: torch.Tensor, packed: dict, key: str,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] @ w [in, out] (+ bias): the engine's one way to apply a weight matrix.

    On CPU in float32 through oneDNN with the weight reordered once into oneDNN's blocked layout
    (`packed[key]`, made on first use; the (in, out) parameter stays the source of truth and
    `LlamaForCausalLM.load_hf_state_dict` drops the cache). torch's `x @ w` goes to MKL, which
    re-packs the weight on every call and, on this AMD EPYC (AVX2), ran 1.2-3x slower for the
    decode-sized products: 30 layers of SmolLM2-135M products, 2 threads (bench/onednn_linear.py):
    T=1 25.9 -> 19.5 ms, T=4 68.5 -> 23.4, T=32 128 -> 73, T=512 970 -> 784 (same results to
    ~1.5e-6 relative: float rounding order). One row (batch-1 decode) goes to `small_mm`'s 2-thread
    K split instead: inside a real single-threaded small step (threads raised around each call)
    that measured 20.1 vs 23.8 ms per step's 120 products (oneDNN wins from 2 rows: 25.9 vs 39.3 ms
    at 4). Elsewhere (GPU, half precision, no oneDNN): `x @ w`.
    """
    if (ONEDNN_LINEAR and x.shape[0] > 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and w.dtype == torch.float32):
        p = packed.get(key)
        if p is None:
            p = packed[key] = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), None)
        # a small step lowered to one thread (single_thread_small_steps) gets all threads back here
        raised = x.shape[0] <= SINGLE_THREAD_MAX_TOKENS and (_outer_threads or 0) > 1
        n = _outer_threads if raised else torch.get_num_threads()
        return _with_threads(n, torch.ops.mkldnn._linear_pointwise, x.contiguous(), p, bias, "none", [], "")
    out = small_mm(x, w)
    return out if bias is None else out + bias


def rope_inv_freq(cfg: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] (float32), as transformers computes them per rope type."""
    dim, base = cfg.head_dim, cfg.rope_theta
    s = cfg.rope_scaling or {}
    kind = s.get("rope_type")
    if kind == "dynamic" and seq_len is not None:
        orig = s.get("original_max_position_embeddings") or cfg.max_position_embeddings
        if seq_len > orig:  # dynamic NTK: stretch the base for sequences beyond the trained length
            base = base * ((s["factor"] * seq_len / orig) - (s["factor"] - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if kind == "linear":
        inv_freq = inv_freq / s["factor"]
    elif kind == "llama3":
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        lo_wavelen, hi_wavelen = old_len / lo, old_len / hi
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > lo_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables [max_pos, head_dim] in float32, grown lazily (doubling) when needed.

    Full width for `fused_ops.rope_`: cos = [cos | cos], sin = [-sin | sin] (the rotate-half signs).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dynamic = (cfg.rope_scaling or {}).get("rope_type") == "dynamic"
        self._cos = self._sin = None
        self._len = 0

    def _build(self, n: int, device: torch.device, seq_len: int | None = None):
        inv_freq = rope_inv_freq(self.cfg, seq_len).to(device)
        freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, 1, head_dim] (full width, see the class) for the given positions, in `dtype`.

        The table covers max_position_embeddings from the start. On CPU it grows past that when a
        position needs it; on an accelerator positions are not inspected (no host sync), so the
        caller must keep them below max_position_embeddings there.
        """
        on_cpu = positions.device.type == "cpu"
        need = int(positions.max()) + 1 if (on_cpu or self.dynamic) and positions.numel() else 0
        if self.dynamic:
            s = self.cfg.rope_scaling
            orig = s.get("original_max_position_embeddings") or self.cfg.max_position_embeddings
            if need > orig:  # dynamic NTK: frequencies depend on the length, no shared table
                cos, sin = self._build(need, positions.device, seq_len=need)
                return cos[positions, None].to(dtype), sin[positions, None].to(dtype)
        if (self._cos is None or need > self._len or self._cos.device != positions.device
                or self._cos.dtype != dtype):
            n = max(self._len, self.cfg.max_position_embeddings, 64)
            while n < need:
                n *= 2
            cos, sin = self._build(n, positions.device)
            self._cos, self._sin, self._len = cos.to(dtype), sin.to(dtype), n
        return self._cos[positions, None], self._sin[positions, None]


class RMSNorm(nn.Module):
    """RMSNorm with an optional fused residual add: returns (normed, new_residual)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return fused_ops.add_rms_norm(x, residual, self.weight, self.eps)


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h, q, kv, i = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
        self.input_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.qkv_w = _empty(h, q + 2 * kv)          # (in, out): [q | k | v]
        self.qkv_b = _empty(q + 2 * kv) if cfg.attention_bias else None
        self.o_w = _empty(q, h)
        self.gate_up_w = _empty(h, 2 * i)           # (in, out): [gate | up]
        self.down_w = _empty(i, h)
        self._packed: dict[str, torch.Tensor] = {}  # project()'s oneDNN copies of the weights

    def forward(self, x, residual, cos, sin, attn: Attention, keep_rows: torch.Tensor | None = None):
        """keep_rows: only these rows go on past attention (the last layer: K/V are written for
        every row, but only rows that sample a token need the rest)."""
        x, residual = self.input_norm(x, residual)
        T = x.shape[0]
        pk = self._packed
        qkv = project(x, self.qkv_w, pk, "qkv", self.qkv_b)
        qkv = fused_ops.rope_(qkv.view(T, self.n_heads + 2 * self.n_kv, self.head_dim), self.n_heads + self.n_kv,
                              cos, sin)
        q, k, v = qkv.split([self.n_heads, self.n_kv, self.n_kv], dim=1)
        o = attn.attend(self.layer_idx, q, k, v).reshape(T, -1)
        if keep_rows is not None:
            o, residual = o[keep_rows], residual[keep_rows]
            if not o.shape[0]:
                return o, residual
        x = project(o, self.o_w, pk, "o")
        x, residual = self.post_attention_norm(x, residual)
        return project(fused_ops.silu_mul(project(x, self.gate_up_w, pk, "gate_up")), self.down_w, pk, "down"), residual


class LlamaForCausalLM(nn.Module):
    """forward(input_ids[T], positions[T], attn) -> final-normed hidden [T, hidden]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = _empty(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head_w = _empty(cfg.hidden_size, cfg.vocab_size)  # (in, out), also when tied
        self._packed: dict[str, torch.Tensor] = {}  # project()'s oneDNN copy of the head
        self.eval()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: Attention,
                keep_rows: torch.Tensor | None = None) -> torch.Tensor:
        """-> final-normed hidden [T, hidden], or [len(keep_rows), hidden] of just those rows.

        keep_rows (the rows that sample a token): the last layer's output projection and MLP run
        on those rows only — every other row's last-layer output is never read (its K/V, written
        inside attention, is all later steps need). A 512-token prompt skips ~3% of its FLOPs.
        """
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        residual = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, cos, sin, attn, keep_rows if i == last else None)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in float32.

        One row on CPU (batch-1 decode): the head's two column halves as one 2-batch bmm on
        2 threads (a copy of the head, [2, hidden, vocab/2], made on first use). torch runs a
        matrix-vector product on one thread whatever the setting (~25 GB/s for this 113 MB head);
        the bmm splits over its batch: 47.8 vs 25.2 GB/s measured (SmolLM2-135M head, M = 1).
        The thread count goes back to 1 right after when single_thread_small_steps lowered it.
        """
        w = self.lm_head_w
        if hidden.shape[0] == 1 and hidden.device.type == "cpu" and w.shape[1] % 2 == 0:
            outer = _outer_threads or torch.get_num_threads()
            if outer > 1:
                split = getattr(self, "_lm_head_split", None)
                if split is None or split.dtype != w.dtype:
                    k, n = w.shape
                    split = self._lm_head_split = w.view(k, 2, n // 2).permute(1, 0, 2).contiguous()
                return _with_threads(2, torch.bmm, hidden.expand(2, 1, -1), split).view(1, -1).float()
        return project(hidden, w, self._packed, "lm_head").float()

    @torch.no_grad()
    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Fill the weights from Hugging Face names (model.layers.N.self_attn.q_proj.weight, ...).

        Fuses q/k/v and gate/up and stores every projection transposed (in, out). Raises KeyError
        naming the first missing tensor.
        """
        cfg = self.config
        self._lm_head_split = None  # compute_logits' copies of the head, rebuilt on next use
        self._packed = {}
        for layer in self.layers:
            layer._packed = {}

        def get(name: str) -> torch.Tensor:
            if name not in sd:
                raise KeyError(f"missing tensor {name!r} in checkpoint")
            return torch.as_tensor(sd[name])

        def put(param: torch.Tensor, value: torch.Tensor) -> None:
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(f"shape mismatch: expected {tuple(param.shape)}, got {tuple(value.shape)}")
            param.copy_(value)

        put(self.embed, get("model.embed_tokens.weight"))
        head = get("model.embed_tokens.weight") if cfg.tie_word_embeddings or "lm_head.weight" not in sd \
            else get("lm_head.weight")
        put(self.lm_head_w, head.t())
        put(self.norm.weight, get("model.norm.weight"))
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = torch.cat([get(a + f"{n}_proj.weight") for n in "qkv"], dim=0)
            put(layer.qkv_w, qkv.t())
            if layer.qkv_b is not None:
                put(layer.qkv_b, torch.cat([get(a + f"{n}_proj.bias") for n in "qkv"]))
            put(layer.o_w, get(a + "o_proj.weight").t())
            m = p + "mlp."
            put(layer.gate_up_w, torch.cat([get(m + "gate_proj.weight"), get(m + "up_proj.weight")]).t())
            put(layer.down_w, get(m + "down_proj.weight").t())
            put(layer.input_norm.weight, get(p + "input_layernorm.weight"))
            put(layer.post_attention_norm.weight, get(p + "post_attention_layernorm.weight"))
