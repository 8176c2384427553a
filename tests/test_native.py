"""The native-kernel loader: builds once into the cache, falls back to PyTorch when it cannot."""

from __future__ import annotations

import shutil

import pytest
import torch

from infer_bench.backends.engine import native, paged_attention
from infer_bench.backends.engine.paged_attention import KVCache, PagedAttention, SeqSlice

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded in this process yet."""
    monkeypatch.setenv("INFER_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    return tmp_path


@needs_cc
def test_builds_once_into_the_cache(fresh):
    assert native.paged_decode_kernel() is not None
    libs = list(fresh.glob("native/*/paged_decode.so"))
    assert len(libs) == 1
    mtime = libs[0].stat().st_mtime_ns
    native._loaded.clear()                       # a new process: loads, does not rebuild
    assert native.paged_decode_kernel() is not None
    assert libs[0].stat().st_mtime_ns == mtime


@needs_cc
def test_loading_keeps_subnormal_floats(fresh):
    """The library must not switch the process to flush-to-zero (GCC links crtfastmath.o into
    -ffast-math shared libraries; native.py compiles with it but links without)."""
    import sys

    assert native.paged_decode_kernel() is not None
    assert sys.float_info.min / 2 > 0
    assert (torch.tensor([1e-38]) / 1e3).item() > 0


def test_failing_compiler_falls_back(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with caplog.at_level("WARNING"):
        assert native.paged_decode_kernel() is None
    assert "using the PyTorch path" in caplog.text
    assert not list(fresh.glob("native/*/*.so"))


def test_disabled_by_env(fresh, monkeypatch):
    monkeypatch.setenv("INFER_BENCH_NATIVE", "0")
    assert native.paged_decode_kernel() is None


@needs_cc
def test_kernel_rejects_bad_arguments():
    """A context longer than its block table is refused (code -1), not read out of bounds."""
    fn = native.paged_decode_kernel()
    q, out = torch.randn(1, 2, 8), torch.empty(1, 2, 8)
    k = v = torch.zeros(2, 8, 8)
    table, lens = torch.zeros(1, 1, dtype=torch.int32), torch.tensor([5], dtype=torch.int32)
    rc = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), table.data_ptr(), lens.data_ptr(),
            1, 1, q.stride(0), k.stride(0), 2, 2, 8, 4, 1.0, 1)
    assert rc == -1


def test_engine_runs_without_the_kernel(fresh, monkeypatch):
    """With native kernels off, decode takes the PyTorch path and gives the same output."""
    monkeypatch.setenv("INFER_BENCH_NATIVE", "0")
    cache = KVCache(1, 8, 4, 2, 8)
    cache.kv.normal_()
    attn = PagedAttention(cache, [SeqSlice(1, 6, [3, 5])])
    assert attn.native_decode is None
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    out = attn.attend(0, q, k, v)
    keys = torch.cat([cache.kv[0, 0, :, 12:16], cache.kv[0, 0, :, 20:22]], 1).repeat_interleave(2, 0)
    vals = torch.cat([cache.kv[0, 1, :, 12:16], cache.kv[0, 1, :, 20:22]], 1).repeat_interleave(2, 0)
    ref = torch.softmax(q[0, :, None] @ keys.transpose(1, 2) / 8 ** 0.5, -1) @ vals
    torch.testing.assert_close(out[0], ref[:, 0], atol=1e-5, rtol=1e-5)
    assert paged_attention.native is native


def _omp_libraries_mapped() -> set[str]:
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    return {p for p in paths if p.rsplit("/", 1)[-1].startswith(("libgomp", "libiomp5", "libomp"))}


@needs_cc
@pytest.mark.skipif(native.openmp_runtime() is None, reason="torch loaded no OpenMP runtime here")
def test_kernels_share_torchs_openmp_runtime(fresh):
    """The kernels are linked against the runtime torch loaded: after loading them the process
    still maps exactly one OpenMP library (a second runtime would start its own spinning threads)."""
    before = _omp_libraries_mapped()
    assert native.paged_prefill_kernel() is not None and native.paged_decode_kernel() is not None
    assert native.load("fused_ops") is not None
    assert _omp_libraries_mapped() == before and len(before) == 1


@needs_cc
def test_without_openmp_the_kernels_run_on_one_thread(fresh, monkeypatch, caplog):
    """An OpenMP link that fails (here: a runtime path that does not exist) is retried without
    OpenMP; the kernel then runs its work on the calling thread, with the same results."""
    monkeypatch.setattr(native, "openmp_runtime", lambda: fresh / "no" / "libgomp.so.1")
    with caplog.at_level("INFO"):
        fn = native.paged_decode_kernel()
    assert fn is not None and "single-threaded" in caplog.text
    g = torch.Generator().manual_seed(0)
    cache = KVCache(1, 600, 16, 2, 64)
    cache.kv.normal_(generator=g)
    seqs = [SeqSlice(1, n, list(range(i * 150, i * 150 + 150))) for i, n in enumerate((2400, 17, 1000, 1))]
    q = torch.randn(4, 4, 64, generator=g)
    torch.set_num_threads(2)
    try:
        k, v = (cache.kv[0, j, :, :4].transpose(0, 1).clone() for j in (0, 1))
        out = PagedAttention(cache, seqs).attend(0, q, k, v)
    finally:
        torch.set_num_threads(1)
    for i, s in enumerate(seqs):
        slots = torch.tensor([b * 16 + o for b in s.block_table for o in range(16)][:s.context_len])
        keys = cache.kv[0, 0][:, slots].repeat_interleave(2, 0)
        vals = cache.kv[0, 1][:, slots].repeat_interleave(2, 0)
        ref = torch.softmax(q[i, :, None] @ keys.transpose(1, 2) / 8, -1) @ vals
        torch.testing.assert_close(out[i], ref[:, 0], atol=1e-5, rtol=1e-5)
