"""Where infer-bench keeps what it builds or downloads once per machine: $INFER_BENCH_CACHE
(default ~/.cache/infer-bench). model_store.py puts models under it, native.py compiled kernels.

A leaf module (no imports from the engine) so that both can use it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("INFER_BENCH_CACHE") or Path.home() / ".cache" / "infer-bench").expanduser()
