"""The fused row-wise ops (csrc/fused_ops.c) against float64 references, and their PyTorch fallback."""

from __future__ import annotations

import shutil

import pytest
import torch

from infer_bench.backends.engine import fused_ops


@pytest.fixture(params=["native", "torch"], autouse=True)
def path(request, monkeypatch):
    """Every test runs on both paths: the C kernels and the PyTorch ops."""
    if request.param == "torch":
        monkeypatch.setattr(fused_ops.native, "fused_ops_library", lambda: None)
    elif fused_ops.native.fused_ops_library() is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is here but the fused ops did not build")
        pytest.skip("no C compiler")
    return request.param


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


@pytest.mark.parametrize("rows,dim", [(1, 8), (7, 576), (513, 576), (300, 100)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm(rows, dim, with_residual, threads):
    g = torch.Generator().manual_seed(rows + dim)
    x, res, w = torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g), torch.randn(dim, generator=g)
    res_before = res.clone()
    out, h = fused_ops.add_rms_norm(x, res if with_residual else None, w, 1e-6)
    ref_h = (x.double() + res.double()) if with_residual else x.double()
    ref = ref_h / torch.sqrt(ref_h.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.testing.assert_close(h.double(), ref_h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    assert torch.equal(res, res_before)   # the old residual is not overwritten


@pytest.mark.parametrize("rows,n", [(1, 8), (5, 1536), (512, 1536), (33, 7)])
def test_silu_mul(rows, n, threads):
    g = torch.Generator().manual_seed(rows * n)
    gu = torch.randn(rows, 2 * n, generator=g) * 6   # well into both tails of silu
    gate, up = gu.double().chunk(2, dim=-1)
    torch.testing.assert_close(fused_ops.silu_mul(gu).double(), gate * torch.sigmoid(gate) * up,
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("rows,heads,rot,d", [(1, 15, 12, 64), (9, 5, 3, 8), (512, 15, 12, 64), (40, 4, 4, 6)])
def test_rope_in_place(rows, heads, rot, d, threads):
    """Only the first `rot` heads rotate; the rest (v) stay as they were."""
    g = torch.Generator().manual_seed(rows + heads)
    x = torch.randn(rows, heads, d, generator=g)
    ang = torch.rand(rows, 1, d // 2, generator=g, dtype=torch.float64) * 6
    cos = torch.cat((ang.cos(), ang.cos()), -1)
    sin = torch.cat((-ang.sin(), ang.sin()), -1)
    x1, x2 = x.double()[:, :rot, : d // 2], x.double()[:, :rot, d // 2:]
    c, s = ang.cos(), ang.sin()
    ref = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
    before = x.clone()
    y = fused_ops.rope_(x, rot, cos.float(), sin.float())
    assert y is x
    torch.testing.assert_close(x[:, :rot].double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(x[:, rot:], before[:, rot:])


def test_strided_input_takes_the_torch_path(path):
    """A view whose rows are not contiguous is rotated correctly whichever path is on."""
    big = torch.randn(6, 8, 16)
    x = big[:, :, :8]          # stride(1) != head_dim
    cos, sin = torch.ones(6, 1, 8), torch.zeros(6, 1, 8)
    before = x.clone()
    fused_ops.rope_(x, 8, cos, sin)
    torch.testing.assert_close(x, before)


def test_half_precision_uses_torch(path):
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    w = torch.ones(16, dtype=torch.bfloat16)
    out, h = fused_ops.add_rms_norm(x, None, w, 1e-6)
    assert out.dtype == torch.bfloat16 and h is x
    ref = x.float() / torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
