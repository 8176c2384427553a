"""The engine's weight products (`model.project`, `model.small_mm`): same results as `x @ w`,
on every path (oneDNN packed weights, the 2-thread K split, plain), and the thread count of a
small step comes back as it was."""

from __future__ import annotations

import pytest
import torch

from infer_bench.backends.engine import model as M


class _Runner:
    device = torch.device("cpu")

    @M.single_thread_small_steps
    def run(self, scheduled, fn):
        inside = torch.get_num_threads()
        return fn(), inside, torch.get_num_threads()


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("T", [1, 3, 4, 5, 37])
@pytest.mark.parametrize("bias", [False, True])
def test_project_matches_matmul(monkeypatch, two_threads, onednn, T, bias):
    if onednn and not M._onednn_linear_available():
        pytest.skip("torch without oneDNN")
    monkeypatch.setattr(M, "ONEDNN_LINEAR", onednn)
    g = torch.Generator().manual_seed(T)
    w = torch.randn(96, 40, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    x = torch.randn(T, 96, generator=g)
    ref = x.double() @ w.double() + (b.double() if bias else 0)
    packed: dict = {}
    out = M.project(x, w, packed, "w", b)
    assert out.shape == (T, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert ("w" in packed) == (onednn and T > 1)
    # inside a lowered small step too, and the thread counts around it are right
    res, inside, _ = _Runner().run([(None, min(T, 4))], lambda: M.project(x, w, packed, "w", b))
    torch.testing.assert_close(res.double(), ref, rtol=1e-5, atol=1e-5)
    assert inside == 1 and torch.get_num_threads() == 2


def test_packed_cache_dropped_on_reload(tmp_path, two_threads):
    """Reloading weights must not leave project()'s oneDNN copies of the old ones in use."""
    from safetensors.torch import load_file

    from infer_bench.backends.engine.loader import load_hf_dir
    from tiny_model import make_tiny_model_dir

    a = load_hf_dir(make_tiny_model_dir(tmp_path / "a", seed=1)).model
    sd_b = load_file(str(make_tiny_model_dir(tmp_path / "b", seed=2) / "model.safetensors"))
    b = load_hf_dir(tmp_path / "b").model

    def hidden(m):
        attn = _DenseAttention()
        ids = torch.tensor([5, 9, 11])
        with torch.inference_mode():
            return m.compute_logits(m(ids, torch.arange(3), attn))

    before = hidden(a)
    if M.ONEDNN_LINEAR:
        assert a.layers[0]._packed and a._packed
    a.load_hf_state_dict(sd_b)
    assert not a.layers[0]._packed
    after = hidden(a)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, hidden(b))


class _DenseAttention:
    """Causal attention over the batch's own rows (one sequence), for a bare model call."""

    def attend(self, layer_idx, q, k, v):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
        return o.transpose(0, 1)


def test_small_mm_k_split_is_exact_enough(two_threads):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(576, 960, generator=g)
    for T in (1, 2, 4):
        x = torch.randn(T, 576, generator=g)
        torch.testing.assert_close(M.small_mm(x, w), x @ w, rtol=1e-5, atol=1e-4)
    x = torch.randn(1, 575, generator=g)  # odd K: plain product
    torch.testing.assert_close(M.small_mm(x, torch.randn(575, 8, generator=g)).shape, torch.Size([1, 8]))


def test_keep_rows_gives_the_same_rows_as_a_full_forward(tmp_path):
    """forward(keep_rows=...) runs the last layer's MLP on those rows only: same values."""
    from infer_bench.backends.engine.loader import load_hf_dir
    from tiny_model import make_tiny_model_dir

    m = load_hf_dir(make_tiny_model_dir(tmp_path / "m", seed=3, num_layers=3)).model
    ids = torch.tensor([5, 9, 11, 40, 2, 7])
    with torch.inference_mode():
        full = m(ids, torch.arange(6), _DenseAttention())
        some = m(ids, torch.arange(6), _DenseAttention(), keep_rows=torch.tensor([1, 5]))
        none = m(ids, torch.arange(6), _DenseAttention(), keep_rows=torch.tensor([], dtype=torch.long))
    assert some.shape == (2, full.shape[1]) and none.shape == (0, full.shape[1])
    torch.testing.assert_close(some, full[[1, 5]], rtol=1e-5, atol=1e-6)
