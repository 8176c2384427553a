"""The engine's native CPU kernels: compiled once from csrc/ with the system C compiler, loaded
with ctypes.

Data flow: `paged_attention.PagedAttention` asks `paged_decode_kernel()` for the fused paged
decode-attention kernel (csrc/paged_decode.c) when a step has float32 decode rows on the CPU, and
`paged_prefill_kernel()` for the prompt-attention kernel (csrc/paged_prefill.c) when it has
prefill rows; `fused_ops` asks `fused_ops_library()` for csrc/fused_ops.c. The engine calls
`load_all()` at start. The first load of each compiles its C file with `$CC` (default `cc`) at -O3 for this machine's CPU
(-march=native) into the cache ($INFER_BENCH_CACHE/native/<hash of source, compiler, flags and
CPU>/), once per machine; later calls and processes load the cached library. Compilation takes
a second or two per kernel and is done under a file lock, so concurrent processes (disaggregated workers,
parallel tests) compile it once. The kernels run their threads in torch's own OpenMP team
(csrc/parallel.h): they are built with -fopenmp and linked against the runtime torch loaded; where
that build fails they are built without OpenMP and run on the calling thread.

When there is no compiler, compilation fails, or INFER_BENCH_NATIVE=0, it returns None (with one
warning) and the engine uses its PyTorch paths: same results, slower. Why C and not a torch extension: no torch headers to compile against (seconds, not
a minute), and the same results with or without the optional pieces.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .cache_dir import cache_root

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# -ffast-math lets GCC vectorise expf through glibc's libmvec and reassociate the dot products.
# It is given to the compile step only: at link time GCC adds crtfastmath.o to the library, whose
# constructor turns on flush-to-zero for the whole process when the library loads, and torch's and
# Python's subnormal floats would silently become 0.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC"]
LDFLAGS = ["-shared"]
LIBS = ["-lm"]

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get("INFER_BENCH_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_tag() -> str:
    """What -march=native depends on: the CPU model and flags (a cache shared by machines must
    not hand one CPU a library built for another)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _compiler_id(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return cc


def openmp_runtime() -> Path | None:
    """The OpenMP runtime library torch loaded into this process (GNU libgomp, LLVM libomp or
    Intel libiomp5; all three serve the GOMP entry points GCC's -fopenmp code calls), from
    /proc/self/maps; None when there is none (or no /proc)."""
    import torch  # noqa: F401  (loads the runtime)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return None
    for prefix in ("libgomp", "libomp", "libiomp5"):
        for path in sorted(paths):
            name = Path(path).name
            if name.startswith(prefix) and ".so" in name:
                return Path(path)
    return None


def _compile_and_link(cc: str, src: Path, lib: Path, omp: Path | None) -> None:
    tmp = lib.with_name(f".{lib.stem}.{os.getpid()}.so")
    obj = tmp.with_suffix(".o")
    cflags = CFLAGS + (["-fopenmp"] if omp else [])
    # linked against torch's runtime by path: the library asks for the same name (its soname), so
    # the loader hands it the copy already in the process (one runtime, one thread team)
    link = [str(omp), f"-Wl,-rpath,{omp.parent}"] if omp else []
    try:
        for cmd in ([cc, *cflags, "-c", str(src), "-o", str(obj)],
                    [cc, *LDFLAGS, str(obj), "-o", str(tmp), *link, *LIBS]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip()[:500]}")
        os.replace(tmp, lib)
    finally:
        obj.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _build(name: str) -> Path:
    src = CSRC / f"{name}.c"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    omp = openmp_runtime()
    headers = "".join(h.read_text() for h in sorted(CSRC.glob("*.h")))
    key = hashlib.sha256("\0".join([src.read_text(), headers, cc, _compiler_id(cc),
                                    " ".join(CFLAGS + LDFLAGS + LIBS), str(omp), _cpu_tag(),
                                    sys.platform]).encode()).hexdigest()[:16]
    out_dir = cache_root() / "native" / key
    lib = out_dir / f"{name}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():  # another process built it while we waited
            return lib
        try:
            _compile_and_link(cc, src, lib, omp)
        except RuntimeError as e:
            if omp is None:
                raise
            log.info("native kernel %s: no OpenMP build (%s); building it single-threaded", name, e)
            _compile_and_link(cc, src, lib, None)
    return lib


def load(name: str) -> ctypes.CDLL | None:
    """The compiled csrc/<name>.c, or None when native kernels are off or cannot be built."""
    if name in _loaded:  # the per-call path: no lock once loaded (fused_ops calls this per op)
        return _loaded[name]
    with _lock:
        if name in _loaded:
            return _loaded[name]
        lib = None
        if enabled():
            try:
                lib = ctypes.CDLL(str(_build(name)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                log.warning("native kernel %s unavailable, using the PyTorch path: %s", name, e)
        _loaded[name] = lib
        return lib


def load_all() -> None:
    """Build (once per machine) and load every kernel now: the engine calls this at start, so no
    build lands inside a request's step."""
    for src in sorted(CSRC.glob("*.c")):
        load(src.stem)


def _function(lib_name: str, fn_name: str, argtypes: list, restype=ctypes.c_int):
    """csrc/<lib_name>.c's function fn_name with its C signature set, or None."""
    lib = load(lib_name)
    if lib is None:
        return None
    fn = getattr(lib, fn_name)
    if fn.argtypes is None:
        fn.argtypes = argtypes
        fn.restype = restype
    return fn


_P, _I32, _I64, _F32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float


def paged_decode_kernel():
    """csrc/paged_decode.c's paged_decode, or None."""
    return _function("paged_decode", "paged_decode", [_P, _P, _P, _P, _P, _P, _I32, _I32, _I64, _I64, _I32, _I32,
                                                      _I32, _I32, _F32, _I32])


def paged_prefill_kernel():
    """csrc/paged_prefill.c's paged_prefill, or None."""
    return _function("paged_prefill", "paged_prefill", [_P, _P, _P, _P, _P, _P, _P, _P, _I32, _I32, _I64, _I64,
                                                        _I64, _I32, _I32, _I32, _I32, _F32, _I32])


def fused_ops_library() -> ctypes.CDLL | None:
    """csrc/fused_ops.c with the signatures of add_rms_norm, silu_mul and rope set (they return
    nothing), or None."""
    lib = load("fused_ops")
    if lib is not None and lib.rope.argtypes is None:
        _function("fused_ops", "add_rms_norm", [_P, _P, _P, _P, _P, _I64, _I64, _F32, _I32], None)
        _function("fused_ops", "silu_mul", [_P, _P, _I64, _I64, _I32], None)
        _function("fused_ops", "rope", [_P, _P, _P, _I64, _I64, _I32, _I32, _I32], None)
    return lib
